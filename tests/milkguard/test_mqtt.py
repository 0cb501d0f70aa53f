"""Every MilkGuard MQTT client: a password never leaves this machine in clear."""

from __future__ import annotations

import pytest

from milkguard.errors import BrokerError
from milkguard.mqtt import BrokerAddress, new_client


@pytest.mark.parametrize("host", ["broker.dairy.example", "192.168.10.20", "::ffff:10.0.0.1"])
def test_a_password_for_a_broker_on_another_host_needs_tls(host: str) -> None:
    address = BrokerAddress(host, 1883, username="stream", password="Xq7-mqtt-secret")

    with pytest.raises(BrokerError, match=r"set mqtt\.tls_ca") as refused:
        new_client(address, "stream", clean_session=True)
    assert "Xq7-mqtt-secret" not in str(refused.value)


@pytest.mark.parametrize(
    "address",
    [
        BrokerAddress("127.0.0.1", 1883, username="stream", password="local"),
        BrokerAddress("localhost", 1883, username="stream", password="local"),
        BrokerAddress("broker.dairy.example", 1883),  # anonymous: nothing to give away
    ],
)
def test_loopback_or_anonymous_clients_need_no_tls(address: BrokerAddress) -> None:
    assert new_client(address, "stream", clean_session=True) is not None

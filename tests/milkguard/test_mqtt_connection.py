"""The one MQTT connection factory against a real Mosquitto: verified TLS with a client
certificate and a password; every kind of failure explained as a typed error naming the setting
to fix; and after a broker restart, clients come back at instants of their own, not in lockstep."""

from __future__ import annotations

import random
import socket
import ssl
import time
from typing import Any

import pytest

from milkguard.backoff import Backoff
from milkguard.mqtt import (
    BrokerAddress,
    BrokerRefused,
    BrokerUnreachable,
    ConnectError,
    Connection,
    TlsFailed,
    UntrustedBroker,
    connect,
    connect_error,
)
from tests.edge import test_link
from tests.helpers import wait_until
from tests.servers import Mosquitto, TlsFiles, free_port

# TLS with client certificates required, and a password for user gw-1
tls_files = test_link.tls_files
secure_broker = test_link.secure_broker


def secure_address(port: int, files: TlsFiles, **changes: object) -> BrokerAddress:
    settings: dict[str, object] = {
        "host": "127.0.0.1",
        "port": port,
        "username": "gw-1",
        "password": "right",
        "tls_ca": files.ca,
        "tls_cert": files.client_cert,
        "tls_key": files.client_key,
        **changes,
    }
    return BrokerAddress(**settings)  # type: ignore[arg-type]


@pytest.mark.integration
def test_a_client_with_certificate_and_password_over_verified_tls_is_acknowledged(
    secure_broker: Mosquitto, tls_files: TlsFiles
) -> None:
    connection = connect(secure_address(secure_broker.port, tls_files), "svc-1")
    try:
        connection.publish("milkguard/v1/test", b"hello")
        assert connection.wait_acknowledged(10)
        assert connection.last_error is None
    finally:
        assert connection.close()


@pytest.mark.integration
def test_a_wrong_password_is_a_refusal_that_names_the_settings_not_the_password(
    secure_broker: Mosquitto, tls_files: TlsFiles
) -> None:
    address = secure_address(secure_broker.port, tls_files, password="wrong-Pa55")

    with pytest.raises(BrokerRefused, match=r"check mqtt\.username/mqtt\.password") as refused:
        connect(address, "svc-2")
    assert "wrong-Pa55" not in str(refused.value)
    assert "svc-2" in str(refused.value)


@pytest.mark.integration
def test_a_broker_whose_certificate_another_ca_signed_is_not_trusted(
    secure_broker: Mosquitto, tls_files: TlsFiles
) -> None:
    address = secure_address(secure_broker.port, tls_files, tls_ca=tls_files.other_ca)

    with pytest.raises(UntrustedBroker, match=r"mqtt\.tls_ca does not trust"):
        connect(address, "svc-3")


@pytest.mark.integration
def test_tls_towards_a_plaintext_port_fails_at_the_handshake(
    mosquitto: Mosquitto, tls_files: TlsFiles
) -> None:
    address = BrokerAddress("127.0.0.1", mosquitto.port, tls_ca=tls_files.ca)

    with pytest.raises(ConnectError, match="cannot reach the MQTT broker") as failed:
        connect(address, "svc-4")
    assert isinstance(failed.value, TlsFailed)


@pytest.mark.integration
def test_nothing_listening_is_explained() -> None:
    address = BrokerAddress("127.0.0.1", free_port())

    with pytest.raises(BrokerUnreachable, match="nothing accepts connections there"):
        connect(address, "svc-5")


def test_every_connect_failure_names_what_to_check() -> None:
    address = BrokerAddress("broker.plant", 8883)
    cases: list[tuple[BaseException, type[ConnectError], str]] = [
        (socket.gaierror(-2, "Name or service not known"), BrokerUnreachable, "mqtt.host"),
        (ConnectionRefusedError(111, "refused"), BrokerUnreachable, "mqtt.port"),
        (TimeoutError("timed out"), BrokerUnreachable, "timed out"),
        (ssl.SSLError(1, "wrong version number"), TlsFailed, "mqtt.tls_cert"),
    ]
    for exc, kind, hint in cases:
        error = connect_error(exc, address)
        assert isinstance(error, kind)
        assert "broker.plant:8883" in str(error)
        assert hint in str(error)
        assert error.__cause__ is exc


class Extreme(random.Random):
    """Draws always the low or always the high end: two clients whose delays differ by design."""

    def __init__(self, high: bool) -> None:
        super().__init__(0)
        self.high = high

    def uniform(self, a: float, b: float) -> float:
        return b if self.high else a


@pytest.mark.integration
def test_after_a_broker_restart_clients_reconnect_at_instants_of_their_own(
    mosquitto: Mosquitto,
) -> None:
    address = BrokerAddress("127.0.0.1", mosquitto.port)
    accepted: dict[str, list[float]] = {"early": [], "late": []}
    connections: list[Connection] = []
    for name, high in (("early", False), ("late", True)):
        connection = Connection(
            address,
            f"fleet-{name}",
            on_connect_extra=lambda _client, name=name: accepted[name].append(time.monotonic()),
            reconnect=Backoff(1.0, 8.0, rng=Extreme(high)),
        )
        connections.append(connection)
        connection.start(retry_first=False)
        connection.wait_connected(10)
    try:
        mosquitto.stop()
        mosquitto.start()
        wait_until(lambda: all(len(t) == 2 for t in accepted.values()), 30, "both back")
        # the first retry after the drop waits 1 s (low draw) or 2 s (high draw), where paho's
        # own reconnect would wait 1 s for both: a fleet spreads over the window instead of
        # knocking at one instant
        assert accepted["late"][1] - accepted["early"][1] >= 0.5
        assert [c.connects for c in connections] == [2, 2]
    finally:
        for connection in connections:
            connection.close(5)


@pytest.mark.integration
def test_a_message_not_acknowledged_by_hand_comes_again_in_the_persistent_session(
    mosquitto: Mosquitto,
) -> None:
    address = BrokerAddress("127.0.0.1", mosquitto.port)
    received: list[tuple[bytes, int]] = []

    def subscriber() -> Connection:
        return connect(
            address,
            "stream-manual",
            clean_session=False,
            manual_ack=True,
            on_message=lambda _c, _u, message: received.append((message.payload, message.mid)),
            on_connect_extra=lambda client: client.subscribe("milkguard/v1/test", qos=1),
        )

    first = subscriber()
    publisher = connect(address, "gateway-manual")
    publisher.publish("milkguard/v1/test", b"batch-1")
    assert publisher.close()
    wait_until(lambda: len(received) == 1, 10, "the batch")
    first.close()  # never acknowledged: the broker keeps it for the session

    second = subscriber()
    wait_until(lambda: len(received) == 2, 10, "the batch again")
    assert received[1][0] == b"batch-1"
    second.ack(received[1][1], second.session)
    second.close()

    third = subscriber()  # a redelivery of batch-1 would come first, as the session resumes
    publisher = connect(address, "gateway-manual")
    publisher.publish("milkguard/v1/test", b"batch-2")
    assert publisher.close()
    wait_until(lambda: len(received) == 3, 10, "the next batch")
    third.ack(received[2][1], third.session)
    third.close()
    assert [payload for payload, _ in received] == [b"batch-1", b"batch-1", b"batch-2"]


@pytest.mark.integration
def test_an_acknowledgement_for_a_connection_that_ended_does_not_acknowledge_its_successor(
    mosquitto: Mosquitto,
) -> None:
    # A broker restarted without its sessions numbers messages from 1 again: the id of a
    # message received before the restart now names another message, which an acknowledgement
    # meant for the first would make the broker forget before it is durable anywhere.
    address = BrokerAddress("127.0.0.1", mosquitto.port)
    received: list[tuple[bytes, int, int]] = []

    def subscriber() -> Connection:
        connection: Connection

        def on_message(_c: object, _u: object, message: Any) -> None:
            received.append((message.payload, message.mid, connection.session))

        connection = Connection(
            address,
            "stream-restarted",
            clean_session=False,
            manual_ack=True,
            on_message=on_message,
            on_connect_extra=lambda client: client.subscribe("milkguard/v1/test", qos=1),
            reconnect=Backoff(0.1, 0.5),
        )
        connection.start(retry_first=False)
        connection.wait_connected(10)
        return connection

    def publish(payload: bytes) -> None:
        publisher = connect(address, "gateway-restarted")
        publisher.publish("milkguard/v1/test", payload)
        assert publisher.close()

    first = subscriber()
    publish(b"before")
    wait_until(lambda: len(received) == 1, 10, "the batch before the restart")
    mosquitto.stop()
    mosquitto.start()
    wait_until(lambda: first.connected.is_set() and first.connects == 2, 30, "reconnected")
    publish(b"after")
    wait_until(lambda: len(received) == 2, 10, "the batch after the restart")
    (_, old_mid, old_session), (_, new_mid, new_session) = received
    assert new_session != old_session
    assert old_mid == new_mid  # the id names another message now
    assert not first.ack(old_mid, old_session)  # meant for the ended connection: not sent
    first.close()

    second = subscriber()  # the session resumes: what was not acknowledged comes again
    wait_until(lambda: len(received) == 3, 10, "the unacknowledged batch again")
    assert received[2][0] == b"after"
    assert second.ack(received[2][1], received[2][2])
    second.close()

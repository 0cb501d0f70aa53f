"""The bridge honours the MQTT TLS settings: against a Mosquitto configured by
``milkguard broker mosquitto-config`` it logs in as the stream over verified TLS and carries a
gateway's batch to Kafka; pointed at a plaintext port with ``tls_ca`` set it fails at the TLS
handshake, before any password is sent."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.publisher import GatewayPublisher
from milkguard import mqtt
from milkguard.contract.v1 import Reading, decode_batch
from milkguard.errors import BrokerError
from stream.bridge import Bridge, KafkaTarget
from tests.conftest import T0
from tests.kafka import consume, create_topics
from tests.milkguard.secured_brokers import PEOPLE, security_model, start_generated_mosquitto
from tests.servers import Tansu, TlsFiles, free_port, make_tls_files, stop

pytestmark = pytest.mark.integration


@pytest.fixture
def tls(tmp_path: Path) -> TlsFiles:
    return make_tls_files(tmp_path / "tls")


@pytest.fixture
def ports(tmp_path: Path, tls: TlsFiles) -> Iterator[tuple[int, int]]:
    """(TLS port, plaintext loopback port) of a Mosquitto started from the generated files."""
    security = security_model(tls)
    port = free_port()
    process = start_generated_mosquitto(tmp_path, security, port)
    assert security.local_port is not None
    try:
        yield port, security.local_port
    finally:
        stop(process)


def stream_over(port: int, ca: Path) -> mqtt.BrokerAddress:
    return mqtt.BrokerAddress(
        "127.0.0.1", port, username="stream", password=PEOPLE["stream"][0], tls_ca=ca
    )


def test_the_bridge_carries_a_batch_to_kafka_over_verified_tls(
    tansu: Tansu, tls: TlsFiles, ports: tuple[int, int]
) -> None:
    tls_port, _ = ports
    asyncio.run(create_topics(tansu.bootstrap, {"milkguard.batches": 1, "milkguard.deadletter": 1}))
    bridge = Bridge(stream_over(tls_port, tls.ca), KafkaTarget(tansu.bootstrap), "tls-bridge")
    stop_bridge = threading.Event()
    runner = threading.Thread(target=bridge.run, args=(stop_bridge,), daemon=True)
    runner.start()
    try:
        assert bridge.ready.wait(30)
        gateway = mqtt.BrokerAddress(
            "127.0.0.1",
            tls_port,
            username="gw-farm-01",
            password=PEOPLE["gw-farm-01"][0],
            tls_ca=tls.ca,
        )
        connection = mqtt.connect(gateway, "farm-01-tank-1")
        publisher = GatewayPublisher(connection, "farm-01", "tank-1", first_seq=1)
        publisher.publish([Reading("tank-1", "milk_temp", 4.0, "degC", T0)])
        assert publisher.drain(30)  # acknowledged only once Kafka has it
        connection.close()
        records = asyncio.run(consume(tansu.bootstrap, "milkguard.batches", 1))
    finally:
        stop_bridge.set()
        runner.join(timeout=30)
    assert [decode_batch(value).gateway for _, _, value in records] == ["tank-1"]


def test_a_bridge_told_to_use_tls_never_talks_plaintext(
    tansu: Tansu, tls: TlsFiles, ports: tuple[int, int]
) -> None:
    _, plaintext_port = ports
    bridge = Bridge(stream_over(plaintext_port, tls.ca), KafkaTarget(tansu.bootstrap), "b")
    with pytest.raises(BrokerError, match="cannot reach the MQTT broker"):
        bridge.run(threading.Event())
    assert not bridge.ready.is_set()


def test_a_bridge_trusting_another_ca_refuses_the_broker(
    tansu: Tansu, tls: TlsFiles, ports: tuple[int, int]
) -> None:
    tls_port, _ = ports
    bridge = Bridge(stream_over(tls_port, tls.other_ca), KafkaTarget(tansu.bootstrap), "b")
    with pytest.raises(BrokerError, match="CERTIFICATE_VERIFY_FAILED"):
        bridge.run(threading.Event())

"""The MQTT-to-Kafka bridge against a real Mosquitto and a real Kafka-protocol broker (tansu):
every valid batch lands once, keyed by its site and in its order; a bad payload lands in
the dead-letter topic with its reason; MQTT is acknowledged only once Kafka has the batch."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.publisher import GatewayPublisher
from milkguard import mqtt as mqtt_connect
from milkguard.backoff import Backoff
from milkguard.contract.v1 import Reading, decode_batch
from stream.bridge import Bridge, KafkaTarget, problem_of
from tests.conftest import T0
from tests.helpers import scrape, wait_until
from tests.kafka import consume, create_topics
from tests.servers import Mosquitto, Tansu, free_port, wait_for_port

pytestmark = pytest.mark.integration

TOPICS = {"milkguard.batches": 4, "milkguard.deadletter": 1}


@pytest.fixture
def bridge(mosquitto: Mosquitto, tansu: Tansu) -> Iterator[Bridge]:
    """A bridge from the test's Mosquitto to its tansu, running on a thread."""
    asyncio.run(create_topics(tansu.bootstrap, TOPICS))
    address = mqtt_connect.BrokerAddress(mosquitto.host, mosquitto.port)
    running = Bridge(address, KafkaTarget(tansu.bootstrap), "test-bridge")
    stop_bridge = threading.Event()
    runner = threading.Thread(target=running.run, args=(stop_bridge,), daemon=True)
    runner.start()
    assert running.ready.wait(30)
    yield running
    stop_bridge.set()
    runner.join(timeout=30)


def test_every_batch_lands_in_kafka_once_in_order_per_gateway(
    mosquitto: Mosquitto, tansu: Tansu, bridge: Bridge
) -> None:
    address = mqtt_connect.BrokerAddress(mosquitto.host, mosquitto.port)
    publishers = []
    for g in range(3):
        connection = mqtt_connect.connect(address, f"gw-{g}")
        publishers.append(GatewayPublisher(connection, "farm-01", f"gw-{g}", first_seq=1))
    try:
        for second in range(20):
            for g, publisher in enumerate(publishers):
                reading = Reading(f"tank-{g}", "milk_temp", 4.0, "degC", T0 + second * 1000)
                publisher.publish([reading])
        publishers[0].publish_raw(b"{not json")
        for publisher in publishers:
            assert publisher.drain(30)  # PUBACKed: Kafka has them
        records = asyncio.run(consume(tansu.bootstrap, "milkguard.batches", 60))
        letters = asyncio.run(consume(tansu.bootstrap, "milkguard.deadletter", 1))
    finally:
        for publisher in publishers:
            publisher.connection.close()

    assert len(records) == 60
    by_gateway: dict[str, list[int]] = {}
    for key, _, value in records:
        batch = decode_batch(value)
        assert key == batch.site.encode()
        by_gateway.setdefault(batch.gateway, []).append(batch.seq)
    assert sorted(by_gateway) == ["gw-0", "gw-1", "gw-2"]
    for gateway, seqs in by_gateway.items():
        assert seqs == list(range(1, 21)), gateway  # in order
    assert len({partition for _, partition, _ in records}) == 1  # one site, one partition
    (letter,) = letters
    assert letter[0] == b"farm-01"
    assert json.loads(letter[2])["reason"].startswith("not valid JSON")
    assert bridge.counters.acknowledged == 61


def test_the_bridge_acknowledges_a_batch_to_mqtt_only_once_kafka_has_it(
    mosquitto: Mosquitto, tansu: Tansu, bridge: Bridge
) -> None:
    # the gateway's PUBACK comes from the broker; the bridge's own PUBACK, to the broker, is
    # what keeps a batch in its persistent session until Kafka has it
    address = mqtt_connect.BrokerAddress(mosquitto.host, mosquitto.port)
    connection = mqtt_connect.connect(address, "gw-0")
    publisher = GatewayPublisher(connection, "farm-01", "gw-0", first_seq=1)
    try:
        publisher.publish([Reading("tank-0", "milk_temp", 4.0, "degC", T0)])
        wait_until(lambda: bridge.counters.acknowledged == 1, 30, "the first batch in Kafka")
        tansu.process.send_signal(signal.SIGSTOP)  # Kafka stops answering
        try:
            publisher.publish([Reading("tank-0", "milk_temp", 4.1, "degC", T0 + 1000)])
            wait_until(lambda: bridge.counters.received == 2, 30, "the second at the bridge")
            time.sleep(1)  # long enough for a wrong early acknowledgement to show
            assert bridge.counters.acknowledged == 1
        finally:
            tansu.process.send_signal(signal.SIGCONT)
        wait_until(lambda: bridge.counters.acknowledged == 2, 30, "the second in Kafka")
        records = asyncio.run(consume(tansu.bootstrap, "milkguard.batches", 2))
    finally:
        connection.close()
    assert [decode_batch(value).seq for _, _, value in records] == [1, 2]


def test_after_the_broker_restarts_the_bridge_never_acknowledges_an_id_of_the_old_connection(
    mosquitto: Mosquitto, tansu: Tansu, bridge: Bridge
) -> None:
    # Mosquitto restarted without its sessions numbers messages from 1 again: the id of a batch
    # Kafka confirms after the restart names another batch on the new connection, one Kafka
    # may not have yet; a PUBACK for it would make the broker forget that one
    address = mqtt_connect.BrokerAddress(mosquitto.host, mosquitto.port)
    connection = mqtt_connect.connect(address, "gw-0", reconnect=Backoff(0.1, 0.5))
    publisher = GatewayPublisher(connection, "farm-01", "gw-0", first_seq=1)
    try:
        tansu.process.send_signal(signal.SIGSTOP)  # Kafka holds the first batch unconfirmed
        try:
            publisher.publish([Reading("tank-0", "milk_temp", 4.0, "degC", T0)])
            wait_until(lambda: bridge.counters.received == 1, 30, "the first at the bridge")
            bridge.ready.clear()
            mosquitto.stop()
            mosquitto.start()
            wait_until(bridge.ready.is_set, 30, "the bridge subscribed again")
            wait_until(connection.connected.is_set, 30, "the gateway back")
            publisher.publish([Reading("tank-0", "milk_temp", 4.1, "degC", T0 + 1000)])
            wait_until(lambda: bridge.counters.received == 2, 30, "the second at the bridge")
        finally:
            tansu.process.send_signal(signal.SIGCONT)
        wait_until(
            lambda: bridge.counters.acknowledged + bridge.counters.stale_acks == 2, 30, "both"
        )
        records = asyncio.run(consume(tansu.bootstrap, "milkguard.batches", 2))
    finally:
        connection.close()
    assert bridge.counters.acknowledged == 1  # the second batch, on the connection it came on
    assert bridge.counters.stale_acks == 1  # the first: its connection ended
    assert [decode_batch(value).seq for _, _, value in records] == [1, 2]


def test_a_bridge_killed_before_kafka_confirmed_gets_the_batches_again_from_mqtt(
    tmp_path: Path, mosquitto: Mosquitto, tansu: Tansu
) -> None:
    asyncio.run(create_topics(tansu.bootstrap, TOPICS))
    metrics = free_port()
    environment = {
        **os.environ,
        "MILKGUARD_MQTT__BROKER": "external",
        "MILKGUARD_MQTT__PORT": str(mosquitto.port),
        "MILKGUARD_KAFKA__BOOTSTRAP_SERVERS": tansu.bootstrap,
        "MILKGUARD_METRICS__PORT": str(metrics),
    }
    command = [sys.executable, "-m", "milkguard", "bridge"]

    def start() -> subprocess.Popen[bytes]:
        process = subprocess.Popen(command, env=environment, stderr=subprocess.DEVNULL)
        wait_for_port(metrics, process)
        wait_until(lambda: scrape(metrics).get("milkguard_bridge_subscribed") == 1)
        return process

    def counter(name: str) -> float:
        return scrape(metrics).get(f"milkguard_bridge_{name}_total", -1)

    connection = mqtt_connect.connect(
        mqtt_connect.BrokerAddress(mosquitto.host, mosquitto.port), "gw-0"
    )
    publisher = GatewayPublisher(connection, "farm-01", "gw-0", first_seq=1)
    bridge = start()
    try:
        for second in range(5):
            publisher.publish([Reading("tank-0", "milk_temp", 4.0, "degC", T0 + second * 1000)])
        wait_until(lambda: counter("acknowledged") == 5, 30, "five batches in Kafka")
        tansu.process.send_signal(signal.SIGSTOP)  # Kafka stalls ...
        for second in range(5, 10):
            publisher.publish([Reading("tank-0", "milk_temp", 4.0, "degC", T0 + second * 1000)])
        wait_until(lambda: counter("received") == 10, 30, "five more at the bridge")
        bridge.kill()  # ... and the bridge dies before Kafka confirmed them
        bridge.wait(timeout=10)
        tansu.process.send_signal(signal.SIGCONT)
        bridge = start()  # same client id: the broker delivers the unacknowledged batches again
        wait_until(lambda: counter("acknowledged") >= 5, 30, "the five again, now in Kafka")
        bridge.send_signal(signal.SIGTERM)
        assert bridge.wait(timeout=30) == 0
    finally:
        if bridge.poll() is None:
            bridge.kill()
        connection.close()
    records = asyncio.run(consume(tansu.bootstrap, "milkguard.batches", 10))
    seqs = [decode_batch(value).seq for _, _, value in records]
    deduped = list(dict.fromkeys(seqs))  # the stream drops repeats by sequence number
    assert deduped == list(range(1, 11))


@pytest.mark.parametrize(
    "payload", [b'{"\xff":1}', b"[" * 100_000, b"\x00", b"", b'{"v":1}' * 10_000]
)
def test_the_bridge_check_turns_any_payload_into_a_reason_never_an_error(payload: bytes) -> None:
    reason, key = problem_of("milkguard/v1/gw/farm-01/gw-1/batch", payload)

    assert reason
    assert key == "farm-01"

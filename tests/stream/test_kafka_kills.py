"""``kill -9`` of ``milkguard bridge`` and ``milkguard worker`` mid-stream, again and again, over
real servers (Mosquitto, tansu for Kafka, VictoriaMetrics for the InfluxDB write API): what
was acknowledged is never lost, and after dropping repeats the outcome is the one an
uninterrupted run gives.

Kill points are random (seeded; the seed is in the failure message; MILKGUARD_KILL_SEED
repeats one) so that, run after run, kills land at other points: with batches in flight at
the bridge, before a worker's first checkpoint, between checkpoints, in a restarted worker's
backlog. The failure message says what the worker held when each kill came.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from edge.publisher import GatewayPublisher
from milkguard import mqtt as mqtt_connect
from milkguard.contract.v1 import Reading, decode_batch
from stream.engine import Engine
from stream.engine.deviation import deviation_record
from stream.ingest import Ingest
from stream.plan import load_plan
from stream.sinks.memory import MemoryDeadLetterSink, MemoryDeviationSink, MemoryTimeSeriesSink
from stream.worker import PartitionWork, sites_of_partition
from tests.conftest import T0
from tests.helpers import scrape, wait_until
from tests.kafka import commit_offsets, consume_all, consume_records, create_topics, produce
from tests.servers import (
    Mosquitto,
    Tansu,
    free_port,
    start_tansu,
    start_victoria_metrics,
    stop,
    wait_for_port,
)
from tests.stream.test_worker import FARMS, PARTITIONS, Rig, metric, plan_yaml, sent
from tests.stream.test_worker import records as worker_records

pytestmark = pytest.mark.integration

KILLS = 4


def seed() -> int:
    """A new seed each run unless MILKGUARD_KILL_SEED repeats one."""
    return int(os.environ.get("MILKGUARD_KILL_SEED") or random.SystemRandom().randrange(10**6))


# ---------------------------------------------------------------------------- the bridge

GATEWAYS = [("farm-01", "gw-1"), ("farm-01", "gw-2"), ("farm-02", "gw-1")]
ROUNDS = 400  # batches per gateway


class Bridges:
    """``milkguard bridge`` subprocesses, one at a time, from the test's Mosquitto to tansu."""

    def __init__(self, mosquitto: Mosquitto, tansu: Tansu, directory: Path) -> None:
        self.metrics = free_port()
        self.environment = {
            **{k: v for k, v in os.environ.items() if not k.startswith("MILKGUARD_")},
            "MILKGUARD_MQTT__BROKER": "external",
            "MILKGUARD_MQTT__HOST": mosquitto.host,
            "MILKGUARD_MQTT__PORT": str(mosquitto.port),
            "MILKGUARD_KAFKA__BOOTSTRAP_SERVERS": tansu.bootstrap,
            "MILKGUARD_METRICS__PORT": str(self.metrics),
            "MILKGUARD_DATA_DIR": str(directory / "var"),
        }
        self.directory = directory
        self.started = 0
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> subprocess.Popen[bytes]:
        """Start a bridge (the same MQTT client id every time: its persistent session)."""
        self.started += 1
        log = (self.directory / f"bridge-{self.started}.log").open("wb")
        self.process = process = subprocess.Popen(
            [sys.executable, "-m", "milkguard", "bridge"],
            env=self.environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.metrics, process)
        wait_until(lambda: self.counter("subscribed") == 1, 30, "the bridge subscribed")
        return process

    def counter(self, name: str) -> float:
        """A sample of the running bridge's metrics; -1 while it is not serving."""
        try:
            samples = scrape(self.metrics)
        except OSError:
            return -1
        return samples.get(
            f"milkguard_bridge_{name}", samples.get(f"milkguard_bridge_{name}_total", -1)
        )

    def kill(self) -> None:
        """SIGKILL: no goodbye to MQTT, nothing flushed."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)


def test_a_bridge_killed_again_and_again_mid_stream_gets_every_batch_into_kafka_in_order(
    tmp_path: Path, mosquitto: Mosquitto, tansu: Tansu
) -> None:
    rng = random.Random(chosen := seed())
    asyncio.run(create_topics(tansu.bootstrap, {"milkguard.batches": 4, "milkguard.deadletter": 1}))
    address = mqtt_connect.BrokerAddress(mosquitto.host, mosquitto.port)
    # as gateways publish: QoS 1, a persistent session (paho resends what the broker has not
    # acknowledged after a reconnect), a window of batches in flight, growing sequence numbers
    publishers = [
        GatewayPublisher(
            mqtt_connect.connect(address, f"{site}-{gateway}", clean_session=False),
            site,
            gateway,
            first_seq=1,
        )
        for site, gateway in GATEWAYS
    ]
    bridges = Bridges(mosquitto, tansu, tmp_path)
    published = threading.Event()

    def publish() -> None:
        for n in range(ROUNDS):
            for g, publisher in enumerate(publishers):
                stamp = T0 + n * 1000
                publisher.publish(
                    [Reading(f"tank-{g}", "milk_temp", 4.0 + n / 1000, "degC", stamp)]
                )
            time.sleep(0.02)  # ~150 batches/s: the stream goes on through every kill
        published.set()

    bridges.start()
    publishing = threading.Thread(target=publish, daemon=True)
    publishing.start()
    kills_mid_work = 0
    try:
        for _ in range(KILLS):
            wait_until(lambda: bridges.counter("received") > 0, 30, "the bridge taking batches")
            time.sleep(rng.uniform(0.05, 1.5))  # a random point of its work
            in_flight = bridges.counter("received") - bridges.counter("acknowledged")
            kills_mid_work += in_flight > 0
            bridges.kill()
            bridges.start()  # its session: the broker delivers what it had not acknowledged
        publishing.join(timeout=60)
        assert published.is_set(), "the publisher stalled"
        for publisher in publishers:
            assert publisher.drain(30), "the broker did not acknowledge every batch"

        def in_kafka() -> list[tuple[str, str, int]]:
            values = asyncio.run(consume_all(tansu.bootstrap, "milkguard.batches", quiet_s=1))
            return [(b.site, b.gateway, b.seq) for b in map(decode_batch, values)]

        landed: list[tuple[str, str, int]] = []

        def everything_landed() -> bool:
            landed[:] = in_kafka()
            return len(set(landed)) >= len(GATEWAYS) * ROUNDS

        wait_until(everything_landed, 60, f"every batch in Kafka (seed {chosen})")
        assert bridges.process is not None
        bridges.process.send_signal(signal.SIGTERM)
        assert bridges.process.wait(timeout=30) == 0
    finally:
        if bridges.process is not None and bridges.process.poll() is None:
            bridges.kill()
        for publisher in publishers:
            publisher.connection.close(5)

    for site, gateway in GATEWAYS:
        seqs = [seq for s, g, seq in landed if (s, g) == (site, gateway)]
        assert sorted(set(seqs)) == list(range(1, ROUNDS + 1)), (site, gateway, chosen)
        # in order: a batch lands only after every earlier one of its gateway has landed (a
        # repeat of older ones, redelivered after a kill, may come in between)
        highest = 0
        for position, seq in enumerate(seqs):
            assert seq <= highest + 1, f"{site}/{gateway} #{position}: {seq} after {highest}"
            highest = max(highest, seq)
    print(
        f"seed {chosen}: {len(landed) - len(set(landed))} repeats, {kills_mid_work} kills mid-work"
    )


# ---------------------------------------------------------------------------- the worker

MINUTES = 60  # of readings per farm, one a minute
WORKER_KILLS = 3
SESSION_TIMEOUT_S = 3  # a killed worker's partitions move on soon: restarts take seconds
PACE_S = 0.05  # between batches: about as long as the kills and restarts take
QUIET_FARM, QUIET_FROM, QUIET_UNTIL = "farm-03", 30, 36  # its gateway says nothing meanwhile


def kill_records() -> list[tuple[bytes, bytes, int]]:
    """The worker tests' batches (a warm spell per farm), with a gateway silent for six
    minutes: monitoring lost, opened and closed (interval 60 s, silence after 180 s)."""
    return [
        record
        for record in worker_records(MINUTES)
        if not (
            record[0] == QUIET_FARM.encode()
            and QUIET_FROM <= (record[2] - T0) // 60_000 < QUIET_UNTIL
        )
    ]


def reference_records(plan: Path, batches: list[tuple[bytes, bytes, int]]) -> dict[tuple, dict]:
    """Every deviation change an uninterrupted engine over the whole plan finds, by (id,
    change), as the records the worker publishes."""
    deviations = MemoryDeviationSink()
    ingest = Ingest(
        Engine(load_plan(plan)), MemoryTimeSeriesSink(), deviations, MemoryDeadLetterSink()
    )
    for _, payload, stamp in batches:
        ingest.handle_bridged(payload, stamp, "milkguard.batches")
    records = [msgspec.to_builtins(deviation_record(c)) for c in deviations.changes]
    return {(r["id"], r["change"]): r for r in records}


def published_records(rig: Rig) -> list[dict]:
    """Every deviation record on the deviations topic, repeats included."""
    values = asyncio.run(consume_all(rig.tansu.bootstrap, "milkguard.deviations"))
    return [json.loads(value)["record"] for value in values]


@pytest.fixture
def kill_rig(tmp_path: Path) -> Iterator[Rig]:
    """The worker tests' rig, with VictoriaMetrics keeping a point written twice once (as
    InfluxDB overwrites it): after a kill a restarted worker writes again what it judges again."""
    tansu = start_tansu()
    vm = start_victoria_metrics(tmp_path, overwrite=True)
    rig = Rig(tansu, vm, tmp_path / "plan.yaml", tmp_path)
    try:
        topics = ("milkguard.batches", "milkguard.deviations", "milkguard.deadletter")
        asyncio.run(create_topics(tansu.bootstrap, dict.fromkeys(topics, PARTITIONS)))
        rig.plan.write_text(plan_yaml())
        yield rig
    finally:
        stop(rig.vm.process)
        stop(tansu.process)


def test_a_worker_killed_again_and_again_writes_each_reading_once_and_the_same_deviations(
    kill_rig: Rig,
) -> None:
    rig = kill_rig
    rng = random.Random(chosen := seed())
    batches = kill_records()
    expected = reference_records(rig.plan, batches)
    kinds = sorted({(r["kind"], r["change"]) for r in expected.values()})
    assert kinds == [
        ("critical_limit", "closed"),
        ("critical_limit", "opened"),
        ("monitoring_lost", "closed"),
        ("monitoring_lost", "opened"),
    ]
    worker, port = rig.start_worker("worker-0", SESSION_TIMEOUT_S)
    # a steady stream all along: each kill lands wherever the worker is (restoring, taking
    # the backlog its predecessor left, judging live messages, in a checkpoint)
    producing = threading.Thread(
        target=asyncio.run,
        args=(produce(rig.tansu.bootstrap, "milkguard.batches", batches, pace_s=PACE_S),),
        daemon=True,
    )
    producing.start()
    seen: list[str] = []
    try:
        for k in range(WORKER_KILLS):
            seen.append(_kill_at_random(rig, worker, port, rng))
            worker, port = rig.start_worker(f"worker-{k + 1}", SESSION_TIMEOUT_S)
        producing.join(timeout=120)
        name = f"worker-{WORKER_KILLS}"
        try:
            wait_until(
                lambda: rig.alive(worker, name) and len(set(rig.readings_landed())) >= len(batches),
                60,
                "the readings",
            )
        except AssertionError as exc:
            raise AssertionError(
                f"{exc} (seed {chosen}, kills {seen}): missing {rig.missing_readings(batches)}"
            ) from exc
        wait_until(
            lambda: {(r["id"], r["change"]) for r in published_records(rig)} >= set(expected),
            30,
            f"every deviation change (seed {chosen}, kills {seen})",
        )
        wait_until(lambda: metric(port, "milkguard_worker_unacknowledged_messages") == 0, 30)
    finally:
        stop(worker)

    landed = rig.readings_landed()
    assert sorted(landed) == sorted(sent(batches)), (chosen, seen)  # each once, none invented
    published = published_records(rig)
    by_change: dict[tuple, dict] = {}
    for record in published:
        key = (record["id"], record["change"])
        # a change judged again after a kill is the same change: never another end or peak
        assert by_change.setdefault(key, record) == record, (chosen, seen)
    assert by_change == expected, (chosen, seen)  # no orphan, no false silence, none lost
    print(f"seed {chosen}: kills {seen}; {len(published) - len(by_change)} repeated changes")


def _kill_at_random(
    rig: Rig, worker: subprocess.Popen[bytes], port: int, rng: random.Random
) -> str:
    """SIGKILL the worker at a random moment once it judges messages; what it was doing."""
    wait_until(
        lambda: (
            rig.alive(worker, "the worker")
            and metric(port, "milkguard_worker_partitions") == PARTITIONS
        ),
        60,
        "the worker taking its partitions",
    )
    time.sleep(rng.uniform(0.0, 2.5))
    counters = scrape(port)
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=10)
    return (
        f"{counters.get('milkguard_worker_checkpoints_total', 0):g} checkpoints/"
        f"{counters.get('milkguard_worker_unacknowledged_messages', 0):g} unacked"
    )


# ---------------------------------------------------------------------------- the chain

CHAIN_ROUNDS = 200  # at least; one batch per farm each


def uninterrupted(plan_path: Path, records: list[tuple[int, int, int, bytes | None]]) -> set:
    """(id, change) of what one worker, never stopped, finds in the batches topic as it is:
    each partition judged in offset order by an engine of the plan's sites there."""
    plan = load_plan(plan_path)
    found = set()
    for partition in range(PARTITIONS):
        sites = sites_of_partition(plan, partition, PARTITIONS)
        work = PartitionWork.start(partition, plan.for_sites(sites), MemoryTimeSeriesSink(), None)
        for p, offset, stamp, value in records:
            if p == partition:
                work.take(value, offset, stamp, "milkguard.batches")
        found |= {(c.deviation.id, c.kind) for c in work.outputs.changes}
    return found


def test_the_chain_with_its_bridge_and_its_worker_killed_loses_no_reading_nor_deviation(
    tmp_path: Path, mosquitto: Mosquitto, kill_rig: Rig
) -> None:
    rig = kill_rig
    # live readings are judged once the partition's clock (the bridge's receive times) is past
    # them by the allowed lateness: seconds here, so the warm spells are judged in the test
    rig.plan.write_text(plan_yaml().replace("allowed_lateness_s: 60", "allowed_lateness_s: 5"))
    rng = random.Random(chosen := seed())
    address = mqtt_connect.BrokerAddress(mosquitto.host, mosquitto.port)
    publishers = [
        GatewayPublisher(
            mqtt_connect.connect(address, f"{farm}-gw-1", clean_session=False),
            farm,
            "gw-1",
            first_seq=1,
        )
        for farm in FARMS
    ]
    published: list[tuple[str, int]] = []
    killing = threading.Event()
    killing.set()

    def publish() -> None:  # live readings: farm k is warm from round 20 + 10k for 10 rounds
        n = 0
        while n < CHAIN_ROUNDS or killing.is_set():
            for k, publisher in enumerate(publishers):
                stamp = time.time_ns() // 1_000_000
                value = 8.0 if 20 + 10 * k <= n < 30 + 10 * k else 4.0
                publisher.publish([Reading("tank-1", "milk_temp", value, "degC", stamp)])
                published.append((publisher.site, stamp))
            n += 1
            time.sleep(0.05)

    bridges = Bridges(mosquitto, rig.tansu, tmp_path)
    bridges.start()
    worker, port = rig.start_worker("worker-0", SESSION_TIMEOUT_S)
    publishing = threading.Thread(target=publish, daemon=True)
    publishing.start()
    seen: list[str] = []
    try:
        for k in range(4):  # the bridge, the worker, the bridge, the worker
            if k % 2 == 0:
                wait_until(lambda: bridges.counter("received") > 0, 30, "the bridge at work")
                time.sleep(rng.uniform(0.05, 1.5))
                bridges.kill()
                bridges.start()
                seen.append("bridge")
            else:
                seen.append(f"worker {_kill_at_random(rig, worker, port, rng)}")
                worker, port = rig.start_worker(f"worker-{k}", SESSION_TIMEOUT_S)
        killing.clear()
        publishing.join(timeout=60)
        for publisher in publishers:
            assert publisher.drain(30), "the broker did not acknowledge every batch"
        try:
            wait_until(
                lambda: (
                    rig.alive(worker, "the last worker")
                    and set(rig.readings_landed()) >= set(published)
                ),
                60,
                "the readings",
            )
        except AssertionError as exc:
            missing = sorted(set(published) - set(rig.readings_landed()))
            raise AssertionError(f"{exc} (seed {chosen}, kills {seen}): {missing[:20]}") from exc
        records = asyncio.run(consume_records(rig.tansu.bootstrap, "milkguard.batches", 1))
        expected = uninterrupted(rig.plan, records)
        wait_until(
            lambda: {(r["id"], r["change"]) for r in published_records(rig)} >= expected,
            30,
            f"every deviation change (seed {chosen}, kills {seen})",
        )
    finally:
        stop(worker)
        if bridges.process is not None:
            stop(bridges.process)
        for publisher in publishers:
            publisher.connection.close(5)

    assert sorted(rig.readings_landed()) == sorted(published), (chosen, seen)  # each once
    changes = {(r["id"], r["change"]) for r in published_records(rig)}
    assert changes == expected, (chosen, seen)  # no orphan, no false silence, none lost
    assert len(expected) == 2 * len(FARMS)  # each farm's warm spell: opened, closed
    print(f"seed {chosen}: kills {seen}")


def test_a_worker_takes_again_what_the_committed_offsets_passed_over_unjudged(
    kill_rig: Rig,
) -> None:
    # what Faust leaves behind when it drops a message around a rebalance and commits the
    # next: committed offsets past messages no snapshot includes (here, no snapshot at all)
    rig = kill_rig
    batches = worker_records(10)
    asyncio.run(produce(rig.tansu.bootstrap, "milkguard.batches", batches))
    committed = dict.fromkeys(range(PARTITIONS), 5)
    asyncio.run(
        commit_offsets(rig.tansu.bootstrap, "milkguard-worker", "milkguard.batches", committed)
    )
    worker, port = rig.start_worker("worker-0", SESSION_TIMEOUT_S)
    try:
        wait_until(
            lambda: (
                rig.alive(worker, "worker-0") and len(set(rig.readings_landed())) >= len(batches)
            ),
            60,
            "the readings",
        )
        rewinds = metric(port, "milkguard_worker_rewinds_total")
    finally:
        stop(worker)

    assert sorted(rig.readings_landed()) == sorted(sent(batches))
    assert rewinds == PARTITIONS  # each partition sought back to its beginning

"""``milkguard worker`` against a real Kafka-protocol broker (tansu) and a real server of the
InfluxDB v2 write API (VictoriaMetrics), checked through their own APIs: every reading lands
once, every deviation the engine finds in one process is produced; two workers split the
partitions, and when one is killed the other takes its partitions over from the changelog with
no deviation lost (and, after dropping repeats by id and change, none twice)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from milkguard.contract.v1 import Batch, Reading, encode_batch
from stream.engine import Engine
from stream.ingest import Ingest
from stream.plan import LoadedPlan, load_plan
from stream.sinks.memory import MemoryDeadLetterSink, MemoryDeviationSink, MemoryTimeSeriesSink
from stream.worker import PartitionWork, partition_of
from tests.conftest import T0
from tests.helpers import scrape, wait_until
from tests.kafka import consume_all, create_topics, produce
from tests.servers import (
    Tansu,
    VictoriaMetrics,
    free_port,
    start_tansu,
    start_victoria_metrics,
    stop,
)

pytestmark = pytest.mark.integration

FARMS = [f"farm-{n:02d}" for n in range(1, 9)]
PARTITIONS = 4
MINUTES = 40  # of readings per farm, one a minute


def plan_yaml() -> str:
    assets = "\n".join(
        f"  {farm}.tank-1:\n    site: {farm}\n    id: tank-1\n    kind: bulk_tank\n"
        "    channels:\n      milk_temp: {unit: degC, interval_s: 60, ccp: true}"
        for farm in FARMS
    )
    rules = "\n".join(
        f"  - id: {farm}-tank-max-6\n    kind: critical_limit\n    ccp: CCP-FARM-1\n"
        f"    asset: {farm}.tank-1\n    channel: milk_temp\n    max: 6.0\n    severity: major\n"
        '    action: alert\n    source: "farm code: below 6 degC"'
        for farm in FARMS
    )
    return (
        "plan: worker-test\njurisdiction: company\nallowed_lateness_s: 60\n"
        f"assets:\n{assets}\nrules:\n{rules}\n"
    )


def records(minutes: int = MINUTES) -> list[tuple[bytes, bytes, int]]:
    """Batches as the bridge produces them: keyed by site, stamped with their receive time.

    Farm n's tank is warm (8 degC) from minute 5 + 2n to minute 8 + 2n: one deviation each,
    opened and closed. A batch per farm per minute, farms interleaved as they would arrive.
    """
    out = []
    for minute in range(minutes):
        for n, farm in enumerate(FARMS):
            ts = T0 + minute * 60_000
            warm = 5 + 2 * n <= minute < 8 + 2 * n
            reading = Reading("tank-1", "milk_temp", 8.0 if warm else 4.0, "degC", ts)
            batch = Batch(
                v=1, site=farm, gateway="gw-1", seq=minute + 1, sent_at=ts + 50, readings=[reading]
            )
            out.append((farm.encode(), encode_batch(batch), ts + 100))
    return out


def expected_changes(plan_path: Path, batches: list[tuple[bytes, bytes, int]]) -> set[tuple]:
    """(id, change) of every deviation change one engine over the whole plan finds."""
    deviations = MemoryDeviationSink()
    ingest = Ingest(
        Engine(load_plan(plan_path)),
        MemoryTimeSeriesSink(),
        deviations,
        MemoryDeadLetterSink(),
    )
    for _, payload, stamp in batches:
        ingest.handle_bridged(payload, stamp, "milkguard.batches")
    return {(c.deviation.id, c.kind) for c in deviations.changes}


@dataclass
class Rig:
    tansu: Tansu
    vm: VictoriaMetrics
    plan: Path
    directory: Path

    def start_worker(
        self, name: str, session_timeout_s: float = 6
    ) -> tuple[subprocess.Popen[bytes], int]:
        port = free_port()
        env = {
            **os.environ,
            "MILKGUARD_PLAN": str(self.plan),
            "MILKGUARD_DATA_DIR": str(self.directory / name),
            "MILKGUARD_KAFKA__BOOTSTRAP_SERVERS": self.tansu.bootstrap,
            "MILKGUARD_INFLUX__URL": self.vm.url,
            "MILKGUARD_INFLUX__TOKEN": "test-token",
            "MILKGUARD_INFLUX__ORG": "dairy",
            "MILKGUARD_INFLUX__BUCKET": "milkguard",
            "MILKGUARD_METRICS__PORT": str(port),
            "MILKGUARD_WORKER__SESSION_TIMEOUT_S": str(session_timeout_s),
            "MILKGUARD_WORKER__HEARTBEAT_INTERVAL_S": "1",
            "MILKGUARD_LOG_FORMAT": "json",
        }
        log = (self.directory / f"{name}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "milkguard", "worker"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        return process, port

    def alive(self, process: subprocess.Popen[bytes], name: str) -> bool:
        """True while the worker runs; its log in the failure once it has died."""
        if process.poll() is not None:
            pytest.fail(f"{name} exited with {process.returncode}:\n{self.log_of(name)}")
        return True

    def log_of(self, name: str) -> str:
        return (self.directory / f"{name}.log").read_text(errors="replace")[-4000:]

    def deviation_changes(self) -> list[tuple[str, str]]:
        values = asyncio.run(consume_all(self.tansu.bootstrap, "milkguard.deviations"))
        records = [envelope["record"] for envelope in map(json.loads, values)]  # signed
        return [(d["id"], d["change"]) for d in records]

    def missing_readings(self, batches: list[tuple[bytes, bytes, int]]) -> list[str]:
        """Each reading sent but not landed, as site, partition and minute."""
        missing = sorted(set(sent(batches)) - set(self.readings_landed()))
        return [
            f"{site} (partition {partition_of(site.encode(), PARTITIONS)}) "
            f"minute {(ts - T0) // 60_000}"
            for site, ts in missing
        ]

    def readings_landed(self) -> list[tuple[str, int]]:
        """(site, timestamp) of every reading point VictoriaMetrics holds, repeats included."""
        self.vm.flush_index()
        points: list[tuple[str, int]] = []
        for line in self.vm.export('{__name__="reading_value"}').splitlines():
            series = json.loads(line)
            points += [(series["metric"]["site"], ts) for ts in series["timestamps"]]
        return points


def sent(batches: list[tuple[bytes, bytes, int]]) -> list[tuple[str, int]]:
    """(site, timestamp) of every reading in ``batches`` (each batch has one, 100 ms older)."""
    return [(key.decode(), stamp - 100) for key, _, stamp in batches]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    tansu = start_tansu()
    rig = Rig(tansu, start_victoria_metrics(tmp_path), tmp_path / "plan.yaml", tmp_path)
    try:
        asyncio.run(
            create_topics(
                tansu.bootstrap,
                {
                    "milkguard.batches": PARTITIONS,
                    "milkguard.deviations": PARTITIONS,
                    "milkguard.deadletter": PARTITIONS,
                },
            )
        )
        rig.plan.write_text(plan_yaml())
        yield rig
    finally:
        stop(rig.vm.process)  # the one running now: a test may have restarted it
        stop(tansu.process)


def metric(port: int, name: str) -> float:
    """One sample of a worker's /metrics; 0 while it is not serving yet."""
    try:
        return scrape(port).get(name, 0.0)
    except OSError:
        return 0.0


def test_the_farms_spread_over_every_partition() -> None:
    assert {partition_of(farm.encode(), PARTITIONS) for farm in FARMS} == set(range(PARTITIONS))


def test_a_worker_writes_every_reading_once_and_produces_every_deviation(rig: Rig) -> None:
    batches = records()
    expected = expected_changes(rig.plan, batches)
    assert len(expected) == 2 * len(FARMS)  # each farm: one opened, one closed
    worker, port = rig.start_worker("worker-a")
    garbage = (b"farm-03", b'{"v": 1, "site": "farm-03"', T0)  # cut short on its way
    try:
        asyncio.run(produce(rig.tansu.bootstrap, "milkguard.batches", [*batches, garbage]))
        wait_until(
            lambda: rig.alive(worker, "worker-a") and len(rig.readings_landed()) >= len(batches),
            90,
            "the readings in VictoriaMetrics",
        )
        wait_until(lambda: len(set(rig.deviation_changes())) >= len(expected), 30, "deviations")
        wait_until(lambda: metric(port, "milkguard_worker_unacknowledged_messages") == 0)
        counters = scrape(port)
        letters = asyncio.run(consume_all(rig.tansu.bootstrap, "milkguard.deadletter"))
    finally:
        stop(worker)

    (letter,) = map(json.loads, letters)  # the bad payload, kept with its reason
    assert letter["reason"].startswith("not valid JSON")
    assert letter["payload"] == garbage[1].decode()
    assert counters["milkguard_payloads_rejected_total"] == 1

    assert sorted(rig.readings_landed()) == sorted(sent(batches))  # each, once
    assert sorted(rig.deviation_changes()) == sorted(expected)  # every one, and once
    assert counters["milkguard_readings_received_total"] == len(batches)
    assert counters["milkguard_worker_letters_sent_total"] == 1
    assert counters["milkguard_deviations_total{change=opened}"] == len(FARMS)
    assert counters["milkguard_worker_partitions"] == PARTITIONS
    assert counters["milkguard_sink_lines_written_total{sink=influxdb}"] >= len(batches)


def test_when_a_worker_is_killed_the_other_takes_over_and_no_deviation_is_lost(rig: Rig) -> None:
    batches = records()
    expected = expected_changes(rig.plan, batches)
    first, second = batches[: len(batches) // 3], batches[len(batches) // 3 :]
    a, port_a = rig.start_worker("worker-a")
    b, port_b = rig.start_worker("worker-b")
    try:

        def split() -> bool:
            held = [metric(port, "milkguard_worker_partitions") for port in (port_a, port_b)]
            return min(held) > 0 and sum(held) == PARTITIONS

        asyncio.run(produce(rig.tansu.bootstrap, "milkguard.batches", first))
        wait_until(split, 90, "two workers splitting the partitions")
        # the rest comes slowly: worker b dies while it holds work not yet made durable
        asyncio.run(_produce_and_kill(rig, second, b, port_b))
        wait_until(
            lambda: metric(port_a, "milkguard_worker_partitions") == PARTITIONS,
            90,
            "worker a taking over every partition",
        )
        try:
            wait_until(lambda: len(set(rig.readings_landed())) >= len(batches), 90, "the readings")
        except AssertionError as exc:  # which readings, and what a did: a loss is told from a stall
            raise AssertionError(
                f"{exc}: missing {rig.missing_readings(batches)}; worker a counted "
                f"{scrape(port_a)}\n{rig.log_of('worker-a')}"
            ) from exc
        wait_until(lambda: set(rig.deviation_changes()) >= expected, 60, "every deviation")
        restored = metric(port_a, "milkguard_worker_restored_total")
    finally:
        stop(a)
        stop(b)

    changes = rig.deviation_changes()
    assert set(changes) == expected  # none lost, none invented
    assert set(rig.readings_landed()) == set(sent(batches))  # every reading landed
    assert restored >= 1  # b's partitions carried on from their saved state


async def _produce_and_kill(
    rig: Rig, rest: list[tuple[bytes, bytes, int]], victim: subprocess.Popen[bytes], port: int
) -> None:
    """Produce ``rest`` slowly; kill ``victim`` once it has saved its state at least once and
    holds messages it took but has not made durable since."""
    producing = asyncio.create_task(
        produce(rig.tansu.bootstrap, "milkguard.batches", rest, pace_s=0.02)
    )

    def caught_mid_work() -> bool:
        counters = scrape(port)
        return bool(
            counters.get("milkguard_worker_checkpoints_total", 0) >= 1
            and counters.get("milkguard_worker_unacknowledged_messages", 0) > 0
        )

    while not await asyncio.to_thread(caught_mid_work):
        assert not producing.done(), "the victim never held work it had not made durable"
        await asyncio.sleep(0.01)
    os.kill(victim.pid, signal.SIGKILL)
    await asyncio.to_thread(victim.wait)
    await producing


def test_influxdb_down_for_a_minute_loses_nothing_and_holds_the_offsets(rig: Rig) -> None:
    batches = records()
    half = len(batches) // 2
    worker, port = rig.start_worker("worker-a")
    try:
        asyncio.run(produce(rig.tansu.bootstrap, "milkguard.batches", batches[:half]))
        wait_until(lambda: len(rig.readings_landed()) >= half, 90, "the first half landing")
        vm_port = int(rig.vm.url.rsplit(":", 1)[1])
        stop(rig.vm.process)
        down_since = time.monotonic()
        asyncio.run(produce(rig.tansu.bootstrap, "milkguard.batches", batches[half:]))
        wait_until(lambda: metric(port, "milkguard_sink_write_failures_total{sink=influxdb}") > 0)
        while time.monotonic() - down_since < 60:  # InfluxDB down for a minute
            rig.alive(worker, "worker-a")
            time.sleep(1)
        during = scrape(port)
        rig.vm = start_victoria_metrics(rig.directory, vm_port)
        wait_until(
            lambda: len(rig.readings_landed()) >= len(batches), 120, "the second half landing"
        )
        wait_until(lambda: metric(port, "milkguard_worker_unacknowledged_messages") == 0, 30)
    finally:
        stop(worker)

    assert sorted(rig.readings_landed()) == sorted(sent(batches))  # every one, once
    # while InfluxDB was down the worker held the messages unacknowledged (their offsets not
    # committed: a crash then would have left them in Kafka), the lines buffered, not dropped
    assert during["milkguard_worker_unacknowledged_messages"] == len(batches) - half
    assert during["milkguard_sink_buffered_lines{sink=influxdb}"] >= len(batches) - half


def test_a_partition_takes_a_tombstone_and_an_absurd_timestamp_without_stopping(
    demo_plan: LoadedPlan,
) -> None:
    work = PartitionWork.start(0, demo_plan, MemoryTimeSeriesSink(), None)
    batch = Batch(
        v=1,
        site="truck-07",
        gateway="gw",
        seq=1,
        sent_at=T0,
        readings=[Reading("comp-2", "temp", 4.0, "degC", T0)],
    )

    assert work.take(None, 0, T0, "milkguard.batches")
    assert work.take(b'{"\xff":1}', 1, 2**62, "milkguard.batches")  # year 146 million
    assert work.take(encode_batch(batch), 2, T0 + 1000, "milkguard.batches")

    counters = work.ingest.counters
    assert (counters.rejected_payloads, counters.batches) == (2, 1)
    assert work.clock_ms == T0 + 1000  # the absurd timestamp did not move the clock


def test_a_partition_whose_first_message_has_no_timestamp_takes_the_wall_clock(
    demo_plan: LoadedPlan,
) -> None:
    work = PartitionWork.start(0, demo_plan, MemoryTimeSeriesSink(), None)

    work.take(b"{}", 0, -1, "milkguard.batches")

    assert work.clock_ms >= T0

"""``kill -9`` of ``milkguard run`` loses nothing and repeats nothing.

A gateway publishes batches (QoS 1, a persistent session, growing sequence numbers) while the
runtime, a real subprocess, is killed with SIGKILL several times at random points and started
again. At the end, every reading is in the line-protocol files exactly once, and the deviation
changes, once repeats are dropped by (id, change), are those of an uninterrupted run over the
same data: none lost, none closed twice, no orphan, no false "monitoring lost".
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from edge.publisher import GatewayPublisher
from milkguard import mqtt as mqtt_connect
from milkguard.backoff import Backoff
from milkguard.contract.v1 import Reading
from stream.engine import iso_ms as iso
from tests.helpers import wait_until
from tests.servers import free_port, start_mosquitto, stop

pytestmark = pytest.mark.integration

SITE = "farm-01"
TANKS = 4
#: two gateways, two tanks each: after a restart one's backlog may come in before the other's
GATEWAYS = {"farm-01-gw-a": ("tank-1", "tank-2"), "farm-01-gw-b": ("tank-3", "tank-4")}
#: how long the runtime stays down after its first kill: longer than a channel's silence limit
#: and allowed lateness (3 s + 2 s), so the backlog must not be taken for silence
LONG_OUTAGE_S = 6.0
BATCHES = 2_000
SAMPLES_PER_BATCH = 3  # per tank: 12 readings a batch
BATCHES_PER_S = 250
KILLS = 3

PLAN = """\
plan: kill-test
title: four bulk tanks judged through kills of the runtime
jurisdiction: CN
assets:
{assets}
rules:
{rules}
"""
ASSET = """\
  tank-{n}:
    site: farm-01
    kind: bulk_tank
    description: bulk tank {n}
    channels:
      milk_temp: {{unit: degC, interval_s: 1, ccp: true}}
"""
RULE = """\
  - id: tank-{n}-max
    kind: critical_limit
    ccp: CCP-FARM-1
    asset: tank-{n}
    channel: milk_temp
    max: 6.0
    sustained_s: 5
    severity: major
    action: alert
    source: "CN farm code: bulk tank milk below 6 degC"
"""

#: fields of a deviation change that depend only on the data; ``detected`` and the clock's
#: offset are the stream's receive times, which a restart moves
JUDGED = ("change", "id", "status", "rule_id", "asset", "start", "end", "peak", "time_beyond_s")


def temperature(tank: int, second: int) -> float:
    """Cold, with a warm spell of 4 minutes every 10 (a different phase per tank): at any
    moment some deviation is likely open, to be carried through a kill."""
    return 8.5 if (second + tank * 97) % 600 < 240 else 3.8 + (second % 7) / 10


def batches(base_ms: int) -> Iterator[list[Reading]]:
    """The gateway's readings, batch by batch, stamped from ``base_ms`` one second apart."""
    for b in range(BATCHES):
        readings = []
        for s in range(b * SAMPLES_PER_BATCH, (b + 1) * SAMPLES_PER_BATCH):
            for n in range(1, TANKS + 1):
                value = temperature(n, s)
                readings.append(
                    Reading(f"tank-{n}", "milk_temp", value, "degC", base_ms + s * 1000)
                )
        yield readings


@dataclass
class Runtime:
    """``milkguard run`` as a subprocess, against a broker, keeping its data in ``data_dir``."""

    broker: Broker
    plan: Path
    data_dir: Path
    mode: str
    client_id: str
    process: subprocess.Popen[bytes] | None = None
    logs: list[Path] = field(default_factory=list)

    def start(self) -> None:
        env = {
            **os.environ,
            "MILKGUARD_MQTT__BROKER": self.mode,
            "MILKGUARD_MQTT__HOST": self.broker.host,
            "MILKGUARD_MQTT__PORT": str(self.broker.port),
            "MILKGUARD_MQTT__CLIENT_ID": self.client_id,
            "MILKGUARD_LOG_LEVEL": "INFO",
        }
        log = self.data_dir.parent / f"{self.data_dir.name}-{len(self.logs)}.log"
        self.logs.append(log)
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "milkguard", "run", "--no-simulators"),
                    *("--plan", str(self.plan), "--data-dir", str(self.data_dir)),
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        # the subscription is sent once connected: wait for it, so no batch precedes the session
        wait_until(lambda: b"stream.started" in log.read_bytes(), 30, "the runtime to start")
        time.sleep(0.3)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        """A clean stop (SIGTERM), as an operator's."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(timeout=30) == 0, self.logs[-1].read_text()[-3000:]

    def reading_lines(self) -> list[str]:
        found: list[str] = []
        for path in sorted(self.data_dir.glob("timeseries-*.lp")):
            found.extend(x for x in path.read_text().splitlines() if x.startswith("reading,"))
        return found

    def changes(self) -> list[dict[str, object]]:
        path = self.data_dir / "deviations.jsonl"
        if not path.exists():
            return []
        return [json.loads(x) for x in path.read_text().splitlines()]


def publish_all(broker: Broker, base_ms: int, done: threading.Event) -> None:
    """Publish as an edge agent does: QoS 1, a persistent session, a window of unacknowledged
    batches that paho resends after a reconnect, sequence numbers that only grow."""
    address = mqtt_connect.BrokerAddress(broker.host, broker.port)
    # With the runtime's own Mosquitto a kill takes the broker down too, and the gateway is
    # offline until it reconnects: one retrying for longer than a channel's silence limit plus
    # its allowed lateness (5 s here) would be silent for real, and its backlog would close a
    # "monitoring lost" that an uninterrupted run never opens. Gateways that must ride through
    # stream restarts retry quickly (edge: mqtt.reconnect_min_s/reconnect_max_s).
    connection = mqtt_connect.connect(
        address, "kill-test-gateway", clean_session=False, reconnect=Backoff(0.2, 1.0)
    )
    gateways = {
        GatewayPublisher(connection, SITE, name, first_seq=1, max_in_flight=50): tanks
        for name, tanks in GATEWAYS.items()
    }
    started = time.monotonic()
    for number, readings in enumerate(batches(base_ms)):
        for gateway, tanks in gateways.items():
            gateway.publish([r for r in readings if r.asset in tanks])
        ahead = number / BATCHES_PER_S - (time.monotonic() - started)
        if ahead > 0:
            time.sleep(ahead)
    assert connection.wait_acknowledged(30), "the broker did not acknowledge every batch"
    connection.close()
    done.set()


def run_through(runtime: Runtime, base_ms: int, kills: int) -> int:
    """Publish everything while killing the runtime ``kills`` times at random moments; stop it
    cleanly once every reading is stored. Returns the number of readings published."""
    runtime.start()
    done = threading.Event()
    publisher = threading.Thread(target=publish_all, args=(runtime.broker, base_ms, done))
    publisher.start()
    began = time.monotonic()
    chance = random.Random()
    publishing_s = BATCHES / BATCHES_PER_S
    moments = sorted(chance.uniform(0.05, 0.6) * publishing_s for _ in range(kills))
    for number, moment in enumerate(moments):
        time.sleep(max(0.0, moment - (time.monotonic() - began)))
        runtime.kill()
        written_after_checkpoint(runtime.data_dir)
        if number == 0:
            time.sleep(LONG_OUTAGE_S)
        runtime.start()
    publisher.join(timeout=60)
    assert done.is_set(), "the publisher did not finish"
    expected = BATCHES * SAMPLES_PER_BATCH * TANKS
    try:
        wait_until(lambda: len(runtime.reading_lines()) >= expected, 30, "every reading stored")
    except AssertionError:
        if not kills:
            raise  # an uninterrupted run must store everything; a killed one is judged below
    runtime.stop()
    return expected


def written_after_checkpoint(data_dir: Path) -> None:
    """What a kill between writing the files and saving the checkpoint leaves: lines (and
    judged history) the checkpoint does not count, whose batches the broker sends again."""
    for path in [*data_dir.glob("timeseries-*.lp"), data_dir / "deviations.jsonl"]:
        with path.open("a") as file:
            file.write("reading,site=farm-01 half-written\n")
    for journal in data_dir.glob("stream.checkpoint.history.*"):
        with journal.open("ab") as history:  # the judged history appended, then the kill
            history.write(b"\x10\x00\x00\x00half-written")


def judged(changes: list[dict[str, object]]) -> list[tuple[object, ...]]:
    return [tuple(c[k] for k in JUDGED) for c in changes]


@dataclass(frozen=True)
class Broker:
    """Where the runtime and the gateway meet."""

    host: str
    port: int


#: ``external``: a Mosquitto the test starts (the runtime connects to it). ``mosquitto``: the
#: runtime's own Mosquitto child at the port given, which dies with it (and saves its sessions);
#: the gateway reconnects and resends after each kill.
BROKER_MODES = ["external", "mosquitto"]


@pytest.mark.parametrize("mode", BROKER_MODES)
def test_kill_9_of_the_runtime_loses_no_reading_and_repeats_none(tmp_path: Path, mode: str) -> None:
    mosquitto = None
    if mode == "external":
        mosquitto = start_mosquitto(tmp_path, max_inflight_messages=1000)
        broker = Broker(mosquitto.host, mosquitto.port)
    else:
        broker = Broker("127.0.0.1", free_port())
    try:
        plan = tmp_path / "plan.yaml"
        plan.write_text(
            PLAN.format(
                assets="".join(ASSET.format(n=n) for n in range(1, TANKS + 1)),
                rules="".join(RULE.format(n=n) for n in range(1, TANKS + 1)),
            )
        )
        # the same event times in both runs (so the same deviation ids), all in the past
        span_s = BATCHES * SAMPLES_PER_BATCH
        base_ms = (time.time_ns() // 1_000_000 // 1000 - span_s - 600) * 1000
        calm = Runtime(broker, plan, tmp_path / "calm", mode, "calm-stream")
        expected = run_through(calm, base_ms, kills=0)
        killed = Runtime(broker, plan, tmp_path / "killed", mode, "killed-stream")
        run_through(killed, base_ms, kills=KILLS)
    finally:
        if mosquitto is not None:
            stop(mosquitto.process)

    lines = killed.reading_lines()
    repeated = {line: n for line, n in Counter(lines).items() if n > 1}
    lost = len(set(calm.reading_lines()) - set(lines))
    print(f"after {KILLS} kills: {lost} readings lost, {len(repeated)} stored twice")
    assert not repeated, f"{len(repeated)} readings stored more than once"
    assert sorted(lines) == sorted(calm.reading_lines()), "readings lost or changed"
    assert len(lines) == expected

    reference = judged(calm.changes())
    assert reference, "the data should open and close deviations"
    assert not any(str(c[3]).startswith("silence") for c in reference)
    seen: dict[tuple[object, object], tuple[object, ...]] = {}
    for change in judged(killed.changes()):
        first = seen.setdefault((change[1], change[0]), change)
        assert first == change, f"judged twice differently: {first} and {change}"
    assert sorted(seen.values(), key=repr) == sorted(reference, key=repr)


#: the late-backlog test's live seconds (cold), and its backlog (warm: 10 s above 6 degC)
LIVE_S = [*range(20), *range(30, 60)]
BACKLOG_S = list(range(20, 30))


def publish_seconds(
    broker: Broker, client_id: str, base_ms: int, seconds: list[int], first_seq: int
) -> None:
    """One batch per second of tank 1, as a store-and-forward gateway sends it (QoS 1; its
    sequence numbers grow in the order sent, the backlog's after the live data's)."""
    address = mqtt_connect.BrokerAddress(broker.host, broker.port)
    connection = mqtt_connect.connect(address, client_id, clean_session=False)
    gateway = GatewayPublisher(connection, SITE, "farm-01-gw-a", first_seq=first_seq)
    for second in seconds:
        value = 8.5 if second in BACKLOG_S else 3.8
        gateway.publish([Reading("tank-1", "milk_temp", value, "degC", base_ms + second * 1000)])
    assert connection.wait_acknowledged(30), "the broker did not acknowledge every batch"
    connection.close()


def late_backlog_run(runtime: Runtime, base_ms: int, *, kill: bool) -> list[tuple[object, ...]]:
    """Live data, a checkpoint, (a kill -9 and a restart), then the backlog; the changes of
    the tank's critical limit."""
    runtime.start()
    gateway = f"{runtime.client_id}-gw"
    publish_seconds(runtime.broker, gateway, base_ms, LIVE_S, first_seq=1)
    wait_until(lambda: len(runtime.reading_lines()) >= len(LIVE_S), 30, "the live data stored")
    time.sleep(1.5)  # judged, and a checkpoint saved after it
    if kill:
        runtime.kill()
        written_after_checkpoint(runtime.data_dir)
        runtime.start()
    publish_seconds(runtime.broker, gateway, base_ms, BACKLOG_S, first_seq=1 + len(LIVE_S))
    total = len(LIVE_S) + len(BACKLOG_S)
    wait_until(lambda: len(runtime.reading_lines()) >= total, 30, "the backlog stored")
    time.sleep(1.5)
    runtime.stop()
    return [c for c in judged(runtime.changes()) if c[3] == "tank-1-max"]


def test_a_kill_9_between_live_data_and_a_late_backlog_judges_it_as_without_the_kill(
    tmp_path: Path,
) -> None:
    """A bulk tank above 6 degC for 10 s (CN farm code: bulk milk below 6 degC; the plan's
    5 s sustained limit) during a link drop: the gateway sends its live data first and the
    backlog after. The runtime killed (SIGKILL) after the live data was checkpointed, with
    history written after that checkpoint, and started again, raises the same deviation,
    found late, as a runtime that ran through: the judged history came back from its journal,
    cut back to the checkpoint."""
    mosquitto = start_mosquitto(tmp_path, max_inflight_messages=1000)
    broker = Broker(mosquitto.host, mosquitto.port)
    try:
        plan = tmp_path / "plan.yaml"
        plan.write_text(PLAN.format(assets=ASSET.format(n=1), rules=RULE.format(n=1)))
        base_ms = (time.time_ns() // 1_000_000 // 1000 - 600) * 1000
        calm = late_backlog_run(
            Runtime(broker, plan, tmp_path / "calm", "external", "calm-late"), base_ms, kill=False
        )
        killed = Runtime(broker, plan, tmp_path / "killed", "external", "killed-late")
        after_kill = late_backlog_run(killed, base_ms, kill=True)
    finally:
        stop(mosquitto.process)

    assert [c[0] for c in calm] == ["opened", "closed"]
    assert (calm[1][5], calm[1][6]) == (iso(base_ms + 20_000), iso(base_ms + 30_000))
    assert after_kill == calm
    restarted = killed.logs[-1].read_text()
    assert "history=restored" in restarted

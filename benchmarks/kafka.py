"""``milkguard bench pipeline --kafka``, the workers' part: ``milkguard worker`` beside the plain
Faust agent a team would write (:mod:`benchmarks.plain_faust`), on the same data, in one run.

Each contender runs as its own processes, as deployed, against one Kafka (tansu, started on
127.0.0.1 unless ``bootstrap`` names a running cluster), and judges the same records: a fleet
of ``gateways`` farms (a gateway each, spread evenly over the partitions) of ``channels``
channels sampled at 1 Hz, each channel under a 6 degC maximum that about one channel in a
hundred breaches for 30 s now and then, produced as ``milkguard bridge`` produces them: one
record per MQTT message (``per_message`` readings), keyed by site, stamped with its receive
time. Both write line protocol to files (the worker's sink without InfluxDB, which the plain
agent uses too) and send deviations (alerts) to Kafka.

For each message size and contender: a fresh topic, the contender's processes started on it and
waited for until they hold every partition (Faust's start-up is not timed), then the records
produced as fast as Kafka takes them. The clock runs from the first reading the contender counts
(its ``/metrics``, polled every 100 ms) to the last: readings/s of judging, not of starting.
Runs are interleaved by message size, so the machine's load weighs on both contenders alike.

Three figures each. readings/s: over that whole window. Busy readings/s: leaving out the
polls in which nothing was counted; Faust's fetcher stalls now and then on a short backlog
(the broker holds a fetch of partitions with nothing new for up to 1.5 s, and the fetcher
sleeps 1 s once every partition's stream buffer is under pressure), and on runs of a few
seconds one such stall weighs more than the work. Readings per CPU-second: user + system time
of the contender's processes, every thread, over the window (Linux); on a machine shared with
other work it is the steadiest, as it leaves out time spent waiting for a core. The ratio to
the plain agent is given for each; the target (>= 2x per worker) is read on busy readings/s.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks.engine import LIMIT_DEGC, fleet_batch
from benchmarks.pipeline import bundled_tansu_command
from milkguard.errors import ConfigError
from milkguard.processes import free_port, stop, wait_for_port
from stream.worker import partition_of

T_START = 1_795_341_600_000
POLL_S = 0.1  # a scrape costs the contender a little CPU: not too often
WORKER = "milkguard worker"
PLAIN = "plain Faust agent"
DEVIATIONS_TOPIC = "bench.deviations"
DEADLETTER_TOPIC = "bench.deadletter"
ALERTS_TOPIC = "bench.plain-alerts"
#: per contender: (readings counted, partitions held), as each serves them on /metrics
_METRICS = {
    PLAIN: ("plain_readings_total", "plain_partitions"),
    WORKER: ("milkguard_readings_received_total", "milkguard_worker_partitions"),
}

#: (key, value, timestamp ms) of one Kafka record
Record = tuple[bytes, bytes, int]


# ---------------------------------------------------------------- the fleet


def farm_sites(gateways: int, partitions: int) -> list[str]:
    """A farm per gateway, named so that every partition gets as many farms.

    Consecutive names hash unevenly (``site-0`` to ``site-99`` put 26 / 23 / 21 / 30 % on four
    partitions): then one partition runs dry before the others, two workers split the work
    unevenly, and what is timed is the split, not the worker.
    """
    per_partition = -(-gateways // partitions)
    held = [0] * partitions
    names: list[str] = []
    number = 0
    while len(names) < gateways:
        name = f"farm-{number}"
        partition = partition_of(name.encode(), partitions)
        if held[partition] < per_partition:
            held[partition] += 1
            names.append(name)
        number += 1
    return names


def fleet_plan(sites: Sequence[str], channels: int) -> str:
    """The fleet's plan (YAML), a gateway and a tank per site: every channel under a critical
    limit and the silence rule."""
    lines = ["plan: bench-kafka", "jurisdiction: company", "allowed_lateness_s: 2", "assets:"]
    rules = []
    for gateway, site in enumerate(sites):
        lines += [
            f"  asset-{gateway}:",
            f"    site: {site}",
            "    kind: bulk_tank",
            "    channels:",
            *(
                f"      ch-{c}: {{unit: degC, interval_s: 1, silence_after_s: 60}}"
                for c in range(channels)
            ),
        ]
        rules += [
            f"  - {{id: max-{gateway}-{c}, kind: critical_limit, asset: asset-{gateway}, "
            f"channel: ch-{c}, max: {LIMIT_DEGC}, severity: major, action: alert, "
            "source: bench}"
            for c in range(channels)
        ]
    return "\n".join([*lines, "rules:", *rules]) + "\n"


def fleet_limits(sites: Sequence[str], channels: int) -> dict[str, float]:
    """The plan's limits as the plain agent's dict: ``site/asset/channel`` -> maximum."""
    return {
        f"{site}/asset-{g}/ch-{c}": LIMIT_DEGC
        for g, site in enumerate(sites)
        for c in range(channels)
    }


def fleet_records(
    sites: Sequence[str], channels: int, per_message: int, readings: int, seed: int = 7
) -> list[Record]:
    """At least ``readings`` readings of the fleet as the bridge produces them, in arrival
    order: one record per message of ``per_message`` readings (every channel, for
    ``per_message / channels`` seconds), keyed by site, stamped 50 ms after it was sent."""
    if per_message % channels:
        raise ConfigError(
            f"{per_message} readings per message is not a whole number of samples of "
            f"{channels} channels; use a multiple of {channels}"
        )
    samples = per_message // channels
    rng = random.Random(seed)
    values = [[4.2 + rng.random() for _ in range(channels)] for _ in sites]
    breaching: dict[tuple[int, int], int] = {}  # (gateway, channel) -> seconds left above
    records: list[Record] = []
    window = 0
    while len(records) * per_message < readings:
        for gateway, site in enumerate(sites):
            payload, sent_at = fleet_batch(
                rng,
                values[gateway],
                breaching,
                site=site,
                gateway=gateway,
                channels=channels,
                window=window,
                samples=samples,
            )
            records.append((site.encode(), payload, sent_at + 50))
        window += samples
    return records


def partition_shares(records: Sequence[Record], partitions: int) -> list[float]:
    """The share of the readings each partition gets (sites hash unevenly)."""
    counts = [0] * partitions
    for key, _, _ in records:
        counts[partition_of(key, partitions)] += 1
    return [count / len(records) for count in counts]


# ---------------------------------------------------------------- figures


@dataclass(frozen=True, slots=True)
class Measured:
    """One contender judging one topic."""

    contender: str
    processes: int
    per_message: int
    readings: int
    seconds: float  # from its first reading counted to its last
    busy_s: float  # the part of ``seconds`` in which readings were counted
    produce_s: float  # how long producing the records took (overlaps ``seconds``)
    busiest: float  # the share of the readings the busiest process judged (partitions split)
    cpu_s: float | None = None  # CPU time its processes used meanwhile (None: not on Linux)
    #: CPU time the broker (tansu, when started here) used meanwhile, serving the fetches (the
    #: records are all produced before the window opens)
    broker_cpu_s: float | None = None

    @property
    def per_cpu_s(self) -> float | None:
        """Readings judged per second of CPU: what the machine's other load does not change."""
        return self.readings / self.cpu_s if self.cpu_s else None

    @property
    def per_s(self) -> float:
        """Readings judged per second."""
        return self.readings / self.seconds if self.seconds > 0 else 0.0

    @property
    def per_busy_s(self) -> float:
        """Readings judged per second, stalls of the fetcher left out."""
        return self.readings / self.busy_s if self.busy_s > 0 else 0.0


@dataclass
class KafkaBench:
    """Every run of one benchmark, and where it ran."""

    partitions: int
    gateways: int
    channels: int
    shares: list[float]
    runs: list[Measured] = field(default_factory=list)
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def of(self, contender: str, processes: int, per_message: int) -> Measured | None:
        """The run of ``contender`` with ``processes`` at ``per_message``, if there was one."""
        wanted = (contender, processes, per_message)
        return next(
            (r for r in self.runs if (r.contender, r.processes, r.per_message) == wanted), None
        )

    def ratio(self, per_message: int, workers: int = 1, figure: str = "per_busy_s") -> float | None:
        """A worker's ``figure`` (``per_s``, ``per_busy_s``, ``per_cpu_s``) over the plain
        agent's, per process."""
        mine = self.of(WORKER, workers, per_message)
        plain = self.of(PLAIN, 1, per_message)
        if mine is None or plain is None:
            return None
        ours, theirs = getattr(mine, figure), getattr(plain, figure)
        if not ours or not theirs:
            return None
        # per CPU-second is per process already; the others are for all the worker processes
        return float(ours / theirs / (1 if figure == "per_cpu_s" else workers))

    def scaling(self, per_message: int, workers: int) -> float | None:
        """``workers`` workers' busy readings/s over one worker's."""
        many, one = self.of(WORKER, workers, per_message), self.of(WORKER, 1, per_message)
        if many is None or one is None or not one.per_busy_s:
            return None
        return many.per_busy_s / one.per_busy_s


def print_figures(bench: KafkaBench, console: Console) -> None:
    """The figures as a table, then the ratios against their targets and the machine.

    "produced in s" is how long the producer took to hand the timed records to Kafka: it
    overlaps the contender's window, and a contender as fast as it only waited for records."""
    table = Table(title="milkguard worker vs a plain Faust agent (same records, one run)")
    columns = (
        *("readings/msg", "contender", "procs", "readings", "s", "readings/s", "busy s"),
        *("busy readings/s", "per proc. vs plain", "readings/CPU-s", "vs plain"),
        *("cores: contender", "broker"),
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "contender" else "right")
    for run in bench.runs:
        mine = run.contender == WORKER
        busy = bench.ratio(run.per_message, run.processes) if mine else None
        cpu = bench.ratio(run.per_message, run.processes, "per_cpu_s") if mine else None
        table.add_row(
            str(run.per_message),
            run.contender,
            str(run.processes),
            f"{run.readings:,}",
            f"{run.seconds:.2f}",
            f"{run.per_s:,.0f}",
            f"{run.busy_s:.2f}",
            f"{run.per_busy_s:,.0f}",
            f"{busy:.2f}x" if busy is not None else "",
            f"{run.per_cpu_s:,.0f}" if run.per_cpu_s else "",
            f"{cpu:.2f}x" if cpu is not None else "",
            _cores(run.cpu_s, run.seconds),
            _cores(run.broker_cpu_s, run.seconds),
        )
    console.print(table)
    sizes = sorted({run.per_message for run in bench.runs})
    for size in sizes:
        ratio = bench.ratio(size)
        if ratio is not None:
            verdict = "met" if ratio >= 2 else "NOT met"
            others = [
                f"{figure:.2f}x {what}"
                for figure, what in (
                    (bench.ratio(size, 1, "per_s"), "over the whole window"),
                    (bench.ratio(size, 1, "per_cpu_s"), "per CPU-second"),
                )
                if figure is not None
            ]
            console.print(
                f"{size} readings/message: 1 worker = {ratio:.2f}x the plain agent busy "
                f"(target >= 2x: {verdict}; {', '.join(others)})"
            )
        workers = sorted({r.processes for r in bench.runs if r.contender == WORKER} - {1})
        for count in workers:
            scaling = bench.scaling(size, count)
            many = bench.of(WORKER, count, size)
            if scaling is not None and many is not None:
                # the busiest worker sets the pace: its share of the partitions bounds the gain
                console.print(
                    f"{size} readings/message: {count} workers = {scaling:.2f}x one worker "
                    f"(linear: {count}x; the busiest judged {many.busiest:.0%}, so at most "
                    f"{1 / many.busiest:.2f}x)"
                )
    shares = " / ".join(f"{share:.0%}" for share in bench.shares)
    console.print(
        f"{bench.gateways} gateways x {bench.channels} channels, {bench.partitions} partitions "
        f"(readings per partition {shares}); {os.cpu_count()} cores shared by tansu, the "
        f"producer and the contenders; Python {platform.python_version()}; load average "
        f"{_load(bench.load_before)} before, {_load(bench.load_after)} after"
    )


def _cores(cpu_s: float | None, seconds: float) -> str:
    """CPU time over wall time: how many cores it kept busy on average."""
    return f"{cpu_s / seconds:.2f}" if cpu_s is not None and seconds > 0 else ""


def _load(load: tuple[float, float, float]) -> str:
    return "/".join(f"{figure:.2f}" for figure in load)


# ---------------------------------------------------------------- running


@dataclass(frozen=True, slots=True)
class Options:
    """What to run: ``bench pipeline --kafka``'s options.

    ``sizes``: readings per message (a multiple of ``channels``); ``readings``: per size and
    contender (at least); ``workers``: how many ``milkguard worker`` processes, one run each;
    ``bootstrap``: a running Kafka (else tansu is started); ``plain=False`` runs the workers
    alone (to profile them).
    """

    sizes: tuple[int, ...] = (50, 500)
    readings: int = 300_000
    workers: tuple[int, ...] = (1, 2)
    gateways: int = 100
    channels: int = 50
    partitions: int = 4
    bootstrap: str | None = None
    plain: bool = True


def run(
    options: Options = Options(), progress: Callable[[str], None] = lambda step: None
) -> KafkaBench:
    """Every contender on every message size; see the module's description."""
    o = options
    if min(o.workers, default=0) < 1 or max(o.workers, default=0) > o.partitions:
        raise ConfigError(f"--workers must be between 1 and the {o.partitions} partitions")
    sites = farm_sites(o.gateways, o.partitions)
    data = {size: fleet_records(sites, o.channels, size, o.readings) for size in o.sizes}
    shares = partition_shares(data[o.sizes[0]], o.partitions)
    bench = KafkaBench(o.partitions, o.gateways, o.channels, shares)
    bench.load_before = os.getloadavg()
    contenders = [(PLAIN, 1)] if o.plain else []
    contenders += [(WORKER, count) for count in o.workers]
    with tempfile.TemporaryDirectory(prefix="milkguard-kbench-") as scratch, ExitStack() as stack:
        directory = Path(scratch)
        broker_pid: int | None = None
        if o.bootstrap is None:
            bootstrap, broker_pid = stack.enter_context(_tansu())
        else:
            bootstrap = o.bootstrap
        plan = directory / "plan.yaml"
        plan.write_text(fleet_plan(sites, o.channels))
        outputs = [DEVIATIONS_TOPIC, DEADLETTER_TOPIC, ALERTS_TOPIC]
        asyncio.run(_create_topics(bootstrap, outputs, o.partitions))
        limits = fleet_limits(sites, o.channels)
        rig = _Rig(directory, bootstrap, plan, o.partitions, limits, broker_pid)
        for size in o.sizes:
            for contender, processes in contenders:
                progress(f"{contender} x{processes}, {size} readings/message")
                measured = rig.measure(contender, processes, size, data[size], o.gateways)
                bench.runs.append(measured)
    bench.load_after = os.getloadavg()
    return bench


def main(options: Options = Options(), console: Console | None = None) -> KafkaBench:
    """Run the benchmark and print its figures (what ``bench pipeline --kafka`` calls)."""
    console = console or Console()
    with console.status("starting") as status:
        bench = run(options, progress=status.update)
    print_figures(bench, console)
    return bench


@dataclass
class _Rig:
    """Starts contenders on fresh topics of one Kafka and times them."""

    directory: Path
    bootstrap: str
    plan: Path
    partitions: int
    limits: dict[str, float]
    broker_pid: int | None = None  # tansu's, when started here: its CPU time is reported
    runs: int = 0

    def measure(
        self, contender: str, processes: int, per_message: int, records: list[Record], warm: int
    ) -> Measured:
        """Start ``processes`` of ``contender`` on a fresh topic; once they hold every partition,
        the first ``warm`` records (not timed: every partition's first message), then the rest,
        timed."""
        self.runs += 1
        name = f"bench-{self.runs}"
        topic = f"{name}.batches"
        asyncio.run(_create_topics(self.bootstrap, [topic], self.partitions))
        metric, held = _METRICS[contender]
        with ExitStack() as stack:
            started_processes = [
                stack.enter_context(self._start(contender, f"{name}-{n}", name, topic))
                for n in range(processes)
            ]
            ports = [port for port, _ in started_processes]
            pids = [pid for _, pid in started_processes]
            _wait_for_partitions(ports, held, self.partitions, processes)
            asyncio.run(_produce_timed(self.bootstrap, topic, records[:warm]))
            warmed = _wait_for_count(ports, metric, warm * per_message)
            started = time.perf_counter()
            produced = asyncio.run(_produce_timed(self.bootstrap, topic, records[warm:]))
            total = len(records) * per_message
            others = [self.broker_pid] if self.broker_pid else []
            window = _watch(ports, (pids, others), metric, (warmed, total), started)
        return Measured(
            contender,
            processes,
            per_message,
            window.readings,
            window.seconds,
            window.busy_s,
            produced,
            window.busiest,
            window.cpu_s,
            window.others_cpu_s[0] if self.broker_pid else None,
        )

    @contextmanager
    def _start(
        self, contender: str, name: str, group: str, topic: str
    ) -> Iterator[tuple[int, int]]:
        """A contender's process; its metrics port and PID."""
        port = free_port()
        env = {**os.environ}
        if contender == WORKER:
            command = [sys.executable, "-m", "milkguard", "worker"]
            env |= {
                "MILKGUARD_PLAN": str(self.plan),
                "MILKGUARD_DATA_DIR": str(self.directory / name),
                "MILKGUARD_KAFKA__BOOTSTRAP_SERVERS": self.bootstrap,
                "MILKGUARD_KAFKA__BATCHES_TOPIC": topic,
                "MILKGUARD_KAFKA__DEVIATIONS_TOPIC": DEVIATIONS_TOPIC,
                "MILKGUARD_KAFKA__DEADLETTER_TOPIC": DEADLETTER_TOPIC,
                "MILKGUARD_WORKER__GROUP": group,
                "MILKGUARD_WORKER__SESSION_TIMEOUT_S": "6",
                "MILKGUARD_WORKER__HEARTBEAT_INTERVAL_S": "1",
                "MILKGUARD_METRICS__PORT": str(port),
                "MILKGUARD_LOG_LEVEL": "WARNING",
            }
        else:
            config = self.directory / f"{name}.json"
            config.write_text(
                json.dumps(
                    {
                        "bootstrap": self.bootstrap,
                        "topic": topic,
                        "alerts_topic": ALERTS_TOPIC,
                        "group": group,
                        "partitions": self.partitions,
                        "metrics_port": port,
                        "data_dir": str(self.directory / name),
                        "limits": self.limits,
                    }
                )
            )
            command = [sys.executable, "-m", "benchmarks.plain_faust", str(config)]
            # the benchmarks are not installed with the product: run them from this checkout
            root = str(Path(__file__).resolve().parents[1])
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        log = self.directory / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(command, env=env, stdout=out, stderr=out)
        try:
            yield port, process.pid
        finally:
            crashed = process.poll()
            # what it did is measured: a slow clean stop (Faust takes seconds) is not waited for
            stop(process, timeout_s=2)
        if crashed is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise ConfigError(f"{contender} ({name}) exited with {crashed}: {tail}")


def _wait_for_partitions(ports: list[int], metric: str, partitions: int, processes: int) -> None:
    """Until the processes hold every partition between them, each at least one."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        held = [_scrape(port, metric) for port in ports]
        if sum(held) == partitions and min(held) > 0:
            # a group that just settled may still be joined by a late member: hold on once more
            time.sleep(0.5)
            if [_scrape(port, metric) for port in ports] == held:
                return
        time.sleep(0.2)
    raise ConfigError(
        f"{processes} process(es) did not take the {partitions} partitions within 2 minutes"
    )


@dataclass(frozen=True, slots=True)
class _Window:
    """What the processes counted while they were timed."""

    readings: int
    seconds: float
    busy_s: float
    busiest: float  # the busiest process's share of every reading counted
    cpu_s: float | None
    others_cpu_s: list[float | None]  # of each of the other processes watched


def _watch(
    ports: list[int],
    processes: tuple[list[int], list[int]],
    metric: str,
    counts: tuple[int, int],
    started: float,
) -> _Window:
    """Poll the processes' counts from ``warmed`` until they reach ``total`` (``counts``): the
    clock starts at the first count beyond ``warmed``; polls with no progress are left out of
    the busy time. ``processes``: the contender's PIDs, and others whose CPU time is told
    apart (the broker)."""
    warmed, total = counts
    pids, others = processes
    deadline = started + 600
    first: tuple[float, int, float | None] | None = None
    others_at_first: list[float | None] = [None] * len(others)
    busy = 0.0
    before, then = warmed, started
    while True:
        each = [_scrape(port, metric) for port in ports]
        count, now = sum(each), time.perf_counter()
        if first is None and count > warmed:
            first = (now, count, _cpu_s(pids))
            others_at_first = [_cpu_s([pid]) for pid in others]
        elif first is not None and count > before:
            busy += now - then
        before, then = count, now
        if count >= total:
            break
        if now > deadline:
            raise ConfigError(f"counted {count:,} of {total:,} readings in 10 min")
        time.sleep(POLL_S)
    cpu_at_end = _cpu_s(pids)
    others_at_end = [_cpu_s([pid]) for pid in others]
    assert first is not None
    at, counted, cpu_at_first = first
    if counted >= total:  # all of it between two polls: time it from the first produce
        at, counted, busy = started, warmed, now - started
    cpu = _spent(cpu_at_first, cpu_at_end)
    spent = [_spent(a, b) for a, b in zip(others_at_first, others_at_end, strict=True)]
    return _Window(total - counted, now - at, busy, max(each) / total, cpu, spent)


def _spent(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else after - before


def _cpu_s(pids: list[int]) -> float | None:
    """User and system CPU seconds the processes used so far (Linux); None elsewhere."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            return None
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    return total / ticks


def _wait_for_count(ports: list[int], metric: str, count: int) -> int:
    """Until the processes have counted ``count`` readings between them; what they counted."""
    deadline = time.monotonic() + 120
    while (counted := sum(_scrape(port, metric) for port in ports)) < count:
        if time.monotonic() > deadline:
            raise ConfigError(f"only {counted:,} of {count:,} warm-up readings counted in 2 min")
        time.sleep(POLL_S)
    return counted


def _scrape(port: int, name: str) -> int:
    """One sample of a process's ``/metrics``; 0 while it does not serve yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(name + " "):
            return int(float(line.split()[1]))
    return 0


@contextmanager
def _tansu() -> Iterator[tuple[str, int]]:
    """tansu (a Kafka-protocol broker, in memory) on 127.0.0.1; its bootstrap address and
    PID."""
    port = free_port()
    process = subprocess.Popen(
        bundled_tansu_command(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_port(port, process)
        yield f"127.0.0.1:{port}", process.pid
    finally:
        stop(process)


async def _create_topics(bootstrap: str, names: list[str], partitions: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: PLC0415

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1) for name in names])
    finally:
        await admin.close()


async def _produce_timed(bootstrap: str, topic: str, records: Sequence[Record]) -> float:
    """Produce ``records`` as fast as Kafka takes them (acks=all, as the bridge does); the
    seconds it took."""
    from aiokafka import AIOKafkaProducer  # noqa: PLC0415

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=1 << 20
    )
    await producer.start()
    started = time.perf_counter()
    try:
        for key, value, stamp in records:
            await producer.send(topic, value, key=key, timestamp_ms=stamp)
        await producer.flush()
    finally:
        await producer.stop()
    return time.perf_counter() - started

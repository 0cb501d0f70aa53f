"""``milkguard bench engine``: MilkGuard's ingest beside the plain loop a team would write.

Both do the same work on the same data, in one run, interleaved (so the machine's load weighs
on both alike):

MilkGuard
    :meth:`stream.ingest.Ingest.handle_many` as the runtime calls it: each call takes what a
    drained queue holds (``drain_messages`` messages), and advances the engine once. Topic
    check, msgspec decode and validation, duplicate windows, the rule engine (every channel
    under a critical limit and a silence rule, on event time with allowed lateness), line
    protocol for every reading, deviation changes to their sink. Sinks in memory.

plain loop
    What a competent team writes first: pydantic v2 parses the batch (``model_validate_json``,
    one model per reading), a dict of state per channel, a threshold check that opens and closes
    a deviation, and a line of line protocol per reading (an f-string). No duplicate windows,
    no event time, no silence: less work than MilkGuard does.

The fleet is the pipeline bench's: ``gateways`` gateways (5 per site) of ``channels`` channels
sampled at 1 Hz, each channel under a 6 degC maximum; values wander within it, and about one
channel in a hundred breaches it for a while. A gateway sends ``per_message`` readings per
message: every channel, for ``per_message / channels`` seconds. Payloads are encoded before any
clock starts; building the plan and the objects is not timed, nor is each gateway's first message
(both sides then know every channel: what is measured is a steady stream, as gateways send for
months). Best of ``repeat`` runs each, in CPU
seconds of this (single-threaded) process.
"""

from __future__ import annotations

import gc
import os
import platform
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from benchmarks.pipeline import GATEWAYS_PER_SITE
from benchmarks.pipeline import fleet_plan as pipeline_plan
from milkguard.contract.v1 import Batch, Reading, batch_topic, encode_batch
from milkguard.errors import ConfigError
from simulators.load import T_START
from stream.engine.core import Engine
from stream.ingest import Ingest
from stream.plan import CriticalLimit, LoadedPlan, parse_plan
from stream.sinks.memory import MemoryDeadLetterSink, MemoryDeviationSink, MemoryTimeSeriesSink

LIMIT_DEGC = 6.0  # the pipeline bench's critical limit
#: Messages a drained queue holds when the runtime judges it as one batch: a backlog's drain,
#: below the 500 the embedded runtime may take before it checkpoints (mqtt.max_unacknowledged).
DEFAULT_DRAIN_MESSAGES = 100

Message = tuple[str, bytes, int]


@dataclass(frozen=True, slots=True)
class Figures:
    """Both implementations at one message size."""

    per_message: int
    readings: int
    messages: int
    milkguard_rate: float
    plain_rate: float
    milkguard_changes: int
    plain_changes: int

    @property
    def ratio(self) -> float:
        """MilkGuard's readings/s over the plain loop's."""
        return self.milkguard_rate / self.plain_rate


# ---------------------------------------------------------------- the fleet


def fleet_plan(gateways: int, channels: int) -> LoadedPlan:
    """The pipeline bench's plan: every channel of every gateway's asset under a critical limit
    (and the silence rule)."""
    return parse_plan(pipeline_plan(gateways, channels).encode(), "bench-engine-plan.yaml")


def fleet_batch(
    rng: random.Random,
    values: list[float],
    breaching: dict[tuple[int, int], int],
    *,
    site: str,
    gateway: int,
    channels: int,
    window: int,
    samples: int,
) -> tuple[bytes, int]:
    """One message of gateway ``gw-{gateway}``: every channel for ``samples`` seconds from
    second ``window``, encoded, and when it was sent."""
    readings = [
        Reading(
            f"asset-{gateway}",
            f"ch-{channel}",
            next_value(rng, values, breaching, gateway, channel),
            "degC",
            T_START + second * 1000,
        )
        for second in range(window, window + samples)
        for channel in range(channels)
    ]
    sent_at = T_START + (window + samples) * 1000
    batch = Batch(
        v=1,
        site=site,
        gateway=f"gw-{gateway}",
        seq=window // samples + 1,
        sent_at=sent_at,
        readings=readings,
    )
    return encode_batch(batch), sent_at


def fleet_messages(
    gateways: int, channels: int, per_message: int, seconds: int, seed: int = 7
) -> list[Message]:
    """The fleet's messages in arrival order, each received as its gateway sends it."""
    if per_message % channels:
        raise ConfigError(
            f"{per_message} readings per message is not a whole number of samples of "
            f"{channels} channels; use a multiple of {channels}"
        )
    samples = per_message // channels
    if seconds < 2 * samples:
        # the first message of each gateway is not timed: it takes two to measure anything
        raise ConfigError(
            f"--seconds {seconds} is shorter than two messages of {per_message} readings "
            f"({2 * samples} s of {channels} channels at 1 Hz)"
        )
    rng = random.Random(seed)
    values = [[4.2 + rng.random() for _ in range(channels)] for _ in range(gateways)]
    breaching: dict[tuple[int, int], int] = {}  # (gateway, channel) -> seconds left above
    messages: list[Message] = []
    for window in range(0, seconds - samples + 1, samples):
        for gateway in range(gateways):
            site = f"load-{gateway // GATEWAYS_PER_SITE}"
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
            messages.append((batch_topic(site, f"gw-{gateway}"), payload, sent_at))
    return messages


def next_value(
    rng: random.Random,
    values: list[float],
    breaching: dict[tuple[int, int], int],
    gateway: int,
    channel: int,
) -> float:
    """A milk temperature wandering around 4.7 degC; now and then a breach of 30 s."""
    key = (gateway, channel)
    left = breaching.get(key, 0)
    if left:
        breaching[key] = left - 1
        return round(LIMIT_DEGC + 0.5 + rng.random(), 3)
    if rng.random() < 1 / 3000:  # about one channel in a hundred per 30 s
        breaching[key] = 30
    value = values[channel] + (4.7 - values[channel]) * 0.1 + rng.gauss(0, 0.02)
    values[channel] = value
    return round(value, 3)


# ---------------------------------------------------------------- MilkGuard


def drained(messages: Sequence[Message], bound: int) -> Iterator[Sequence[Message]]:
    """The messages as a runtime's drained queue hands them over: ``bound`` at a time (the
    embedded runtime takes what has arrived, up to the messages it may leave unacknowledged)."""
    for start in range(0, len(messages), bound):
        yield messages[start : start + bound]


def milkguard_run(
    loaded: LoadedPlan, warm: Sequence[Message], chunks: list[Sequence[Message]]
) -> Callable[[], int]:
    """A fresh ingest that has seen ``warm`` (not timed), and the timed run over the drained
    chunks; returns its deviation changes."""
    deviations = MemoryDeviationSink()
    ingest = Ingest(
        Engine(loaded), MemoryTimeSeriesSink(), deviations, MemoryDeadLetterSink(), dashboards=True
    )
    ingest.handle_many(warm)

    def run() -> int:
        for chunk in chunks:
            ingest.handle_many(chunk)
        return len(deviations.changes)

    return run


# ---------------------------------------------------------------- the plain loop


class PlainReading(BaseModel):
    """One reading, as the plain loop models it."""

    asset: str
    channel: str
    value: float
    unit: str
    ts: int


class PlainBatch(BaseModel):
    """One gateway's message, as the plain loop models it (unknown fields ignored)."""

    site: str
    gateway: str
    seq: int
    sent_at: int
    readings: list[PlainReading]


class PlainJudge:
    """The per-reading code a team writes first, shared by this benchmark's plain loop and the
    plain Faust agent (:mod:`benchmarks.plain_faust`): pydantic per message, a dict of state per
    channel, a threshold that opens and closes a deviation, an f-string line per reading."""

    def __init__(self, limits: dict[tuple[str, str, str], float]) -> None:
        self.limits = limits
        self.state: dict[tuple[str, str, str], dict[str, Any]] = {}

    def judge(self, payload: bytes) -> tuple[int, list[str], list[dict[str, Any]]]:
        """The message's reading count, its lines, and the deviation changes it made."""
        batch = PlainBatch.model_validate_json(payload)
        site, gateway = batch.site, batch.gateway
        lines: list[str] = []
        changes: list[dict[str, Any]] = []
        for r in batch.readings:
            key = (site, r.asset, r.channel)
            channel = self.state.get(key)
            if channel is None:
                channel = self.state[key] = {"open": None, "last": 0}
            limit = self.limits.get(key)
            if limit is not None:
                if r.value > limit and channel["open"] is None:
                    opened = {"key": list(key), "start": r.ts, "peak": r.value}
                    channel["open"] = opened
                    changes.append(opened)
                elif r.value <= limit and channel["open"] is not None:
                    changes.append({**channel["open"], "end": r.ts})
                    channel["open"] = None
            channel["last"] = r.ts
            lines.append(
                f"reading,site={site},asset={r.asset},channel={r.channel},unit={r.unit},"
                f"gateway={gateway} value={r.value} {r.ts}000000"
            )
        return len(batch.readings), lines, changes


def plain_run(
    loaded: LoadedPlan, warm: Sequence[Message], messages: Sequence[Message]
) -> Callable[[], int]:
    """The plain loop, with the plan's limits looked up once and ``warm`` seen (not timed);
    returns its deviation changes."""
    plan = loaded.plan
    limits: dict[tuple[str, str, str], float] = {}
    for rule in plan.rules:
        if isinstance(rule, CriticalLimit) and rule.max is not None:
            asset = plan.assets[rule.asset]
            limits[(asset.site, asset.id or rule.asset, rule.channel)] = rule.max
    judge = PlainJudge(limits).judge
    lines: list[str] = []
    deviations: list[dict[str, Any]] = []

    def run(messages: Sequence[Message] = messages) -> int:
        for _topic, payload, _received in messages:
            _, written, changes = judge(payload)
            lines.extend(written)
            deviations.extend(changes)
        return len(deviations)

    run(warm)
    return run


# ---------------------------------------------------------------- running


def _timed(make: Callable[[], Callable[[], int]], readings: int) -> tuple[float, int]:
    """Readings per CPU second of one run, and what it returned; building ``make`` is not
    timed. CPU time, not wall time: on a shared machine the wall clock also counts the time
    other processes had the core, which would favour whichever side ran in a quiet moment."""
    work = make()
    gc.collect()
    started = time.process_time()
    changes = work()
    return readings / (time.process_time() - started), changes


def run(
    *,
    gateways: int = 100,
    channels: int = 50,
    seconds: int = 60,
    sizes: Sequence[int] = (50, 500),
    drain_messages: int = DEFAULT_DRAIN_MESSAGES,
    repeat: int = 3,
) -> list[Figures]:
    """Both implementations at each message size, interleaved, best of ``repeat``."""
    loaded = fleet_plan(gateways, channels)
    data = {size: fleet_messages(gateways, channels, size, seconds) for size in sizes}
    best: dict[tuple[int, str], tuple[float, int]] = {}
    for _ in range(repeat):
        for size in sizes:
            # every gateway's first message is not timed: a steady stream is what is measured
            warm, messages = data[size][:gateways], data[size][gateways:]
            readings = len(messages) * size
            chunks = list(drained(messages, drain_messages))
            for name, make in (
                ("plain", lambda w=warm, m=messages: plain_run(loaded, w, m)),
                ("milkguard", lambda w=warm, c=chunks: milkguard_run(loaded, w, c)),
            ):
                rate, changes = _timed(make, readings)
                if rate > best.get((size, name), (0.0, 0))[0]:
                    best[(size, name)] = (rate, changes)
    return [
        Figures(
            per_message=size,
            readings=(len(data[size]) - gateways) * size,
            messages=len(data[size]) - gateways,
            milkguard_rate=best[(size, "milkguard")][0],
            plain_rate=best[(size, "plain")][0],
            milkguard_changes=best[(size, "milkguard")][1],
            plain_changes=best[(size, "plain")][1],
        )
        for size in sizes
    ]


def table(
    figures: Sequence[Figures], *, drain_messages: int, gateways: int, channels: int
) -> Table:
    """The figures as a rich table, with the machine and its load."""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    result = Table(
        title=f"engine + ingest vs a plain loop: {gateways:,} gateways x {channels} channels, "
        f"{drain_messages:,} messages judged as one batch",
        caption=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, load average {load}; "
        "best of each, CPU time, one core",
    )
    for column in (
        "readings/message",
        "readings",
        "MilkGuard readings/s",
        "plain loop readings/s",
        "ratio",
        "deviation changes (MilkGuard / plain)",
    ):
        result.add_column(column, justify="right")
    for f in figures:
        result.add_row(
            f"{f.per_message:,}",
            f"{f.readings:,}",
            f"{f.milkguard_rate:,.0f}",
            f"{f.plain_rate:,.0f}",
            f"{f.ratio:.2f}x",
            f"{f.milkguard_changes:,} / {f.plain_changes:,}",
        )
    return result


def main(
    *,
    gateways: int = 100,
    channels: int = 50,
    seconds: int = 60,
    sizes: Sequence[int] = (50, 500),
    drain_messages: int = DEFAULT_DRAIN_MESSAGES,
    repeat: int = 3,
    console: Console | None = None,
) -> list[Figures]:
    """Run the benchmark and print its table (what ``milkguard bench engine`` calls)."""
    for name, value in (
        ("--gateways", gateways),
        ("--channels", channels),
        ("--seconds", seconds),
        ("--drain-messages", drain_messages),
        ("--repeat", repeat),
    ):
        if value < 1:
            raise ConfigError(f"{name} {value} must be at least 1")
    console = console or Console()
    with console.status(f"benchmarking on {gateways * channels:,} channels ..."):
        figures = run(
            gateways=gateways,
            channels=channels,
            seconds=seconds,
            sizes=sizes,
            drain_messages=drain_messages,
            repeat=repeat,
        )
    console.print(
        table(figures, drain_messages=drain_messages, gateways=gateways, channels=channels)
    )
    return figures

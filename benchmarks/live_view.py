"""What the live view of ``milkguard run`` costs the engine thread, at 10,000 channels.

The engine thread's work is the runtime's: ``Ingest.handle`` of every message (batches of 500
readings, 1 % of the channels beyond their limit, so deviations are open), and once a second of
wall time the live view. On the same payloads, each run with a fresh engine:

  none    no view at all (the baseline)
  view    :class:`stream.live_view.LiveView`: the engine thread hands over a snapshot once a
          second, the view's own thread chooses the rows and draws them
  before  one frame of the previous view, every channel rendered on the engine thread, timed
          once at 1,000 channels (at 10,000 one frame takes many seconds on a busy machine)

Two figures of cost, because a shared machine's load moves throughput by more than the view
costs: the throughput of ``view`` against ``none`` (runs alternate, best of each), and a CPU
account that load moves little: the engine thread's CPU time in ``offer`` plus all the CPU time
of the view's thread (the most it can take from the engine through the GIL), per second of wall
time, i.e. as a share of an engine thread that has a whole core. The terminal is a console
writing to /dev/null with the size of a real one (120 x 50), so drawing costs what it costs on
screen.
"""

from __future__ import annotations

import gc
import os
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from milkguard.contract.v1 import Batch, Reading, batch_topic, encode_batch
from stream.engine.core import Engine
from stream.ingest import Ingest
from stream.live_view import LiveView, limits_by_channel
from stream.plan import LoadedPlan, Plan
from stream.sinks.memory import MemoryDeadLetterSink, MemoryDeviationSink, MemoryTimeSeriesSink

CHANNELS_PER_ASSET = 10
ASSETS_PER_GATEWAY = 5
SAMPLES_PER_BATCH = 10  # one batch per gateway per 10 s of 1 Hz samples: 500 readings
T_START = 1_795_341_600_000
FRAME_EVERY_S = 1.0


@dataclass(frozen=True, slots=True)
class LiveViewCost:
    """Figures of one measurement."""

    channels: int
    readings: int
    rate_none: float
    rate_view: float
    cpu_rate_none: float
    cpu_rate_view: float
    frames: int
    offer_median_ms: float
    offer_max_ms: float
    offer_cpu_s: float
    render_cpu_s: float
    view_wall_s: float
    before_channels: int
    before_frame_s: float
    load: tuple[float, float, float]

    @property
    def cost(self) -> float:
        """The share of engine throughput the view takes (0.03 = 3 %); noisy under load."""
        return 1 - self.rate_view / self.rate_none

    @property
    def direct_cost(self) -> float:
        """The loss of readings per engine-thread CPU second (GIL waits are not CPU time)."""
        return 1 - self.cpu_rate_view / self.cpu_rate_none

    @property
    def cpu_cost(self) -> float:
        """The view's CPU time (the engine thread's ``offer`` and the view's whole thread) per
        second of wall time: the most it can take from an engine thread that has a whole core,
        as the view's thread runs Python only while it holds the GIL."""
        return (self.offer_cpu_s + self.render_cpu_s) / self.view_wall_s

    def lines(self) -> list[str]:
        """The figures as printed."""
        load = ", ".join(f"{x:.2f}" for x in self.load)
        return [
            f"live view at {self.channels:,} channels, {self.readings:,} readings per run "
            f"(load average {load}, {os.cpu_count()} cores)",
            f"engine, no view:      {self.rate_none:,.0f} readings/s",
            f"engine, live view:    {self.rate_view:,.0f} readings/s "
            f"({self.frames} frames drawn on the view's thread)",
            f"throughput cost:      {self.cost:.1%} (noisy: the machine's load moves it more)",
            f"per engine CPU second: {self.cpu_rate_none:,.0f} without, "
            f"{self.cpu_rate_view:,.0f} with the view: {self.direct_cost:.1%} "
            "(offer() and what the view does to the engine's caches)",
            f"CPU account:          {self.cpu_cost:.2%} of a core, at most that of the engine "
            f"thread (offer {self.offer_cpu_s * 1000:.0f} ms + view thread "
            f"{self.render_cpu_s * 1000:.0f} ms in {self.view_wall_s:.1f} s; target < 5 %)",
            f"offer() per frame:    median {self.offer_median_ms:.2f} ms, "
            f"max {self.offer_max_ms:.2f} ms wall on the engine thread",
            f"before: one frame of all {self.before_channels:,} channels on the engine "
            f"thread took {self.before_frame_s * 1000:,.0f} ms",
        ]


def view_plan(channels: int) -> LoadedPlan:
    """Cold stores of ``CHANNELS_PER_ASSET`` temperature channels, each with a 2-6 degC band.

    Validated as a plan is, but built as data: parsing 10,000 rules of YAML takes half a minute.
    """
    assets = -(-channels // CHANNELS_PER_ASSET)
    channel = {"unit": "degC", "interval_s": 1, "silence_after_s": 60}
    data = {
        "plan": "live-view-bench",
        "jurisdiction": "company",
        "assets": {
            f"a{n}": {
                "site": f"s{n // ASSETS_PER_GATEWAY}",
                "kind": "cold_store",
                "channels": {f"t{c}": channel for c in range(CHANNELS_PER_ASSET)},
            }
            for n in range(assets)
        },
        "rules": [
            {
                "id": f"a{n}-t{c}",
                "kind": "critical_limit",
                "asset": f"a{n}",
                "channel": f"t{c}",
                "min": 2.0,
                "max": 6.0,
                "severity": "major",
                "action": "alert",
                "source": "bench",
            }
            for n in range(assets)
            for c in range(CHANNELS_PER_ASSET)
        ],
    }
    return LoadedPlan(plan=Plan.model_validate(data), path="live-view-bench", version="bench")


def view_payloads(channels: int, windows: int, seed: int = 1) -> list[tuple[str, bytes, int]]:
    """(topic, payload, received_ms) of every gateway's batches for ``windows`` x 10 s."""
    rng = random.Random(seed)
    assets = -(-channels // CHANNELS_PER_ASSET)
    gateways = -(-assets // ASSETS_PER_GATEWAY)
    hot = {rng.randrange(assets * CHANNELS_PER_ASSET) for _ in range(channels // 100)}
    messages = []
    for window in range(windows):
        first_s = window * SAMPLES_PER_BATCH
        sent_at = T_START + (first_s + SAMPLES_PER_BATCH) * 1000
        for gateway in range(gateways):
            readings = []
            for number in range(gateway * ASSETS_PER_GATEWAY, (gateway + 1) * ASSETS_PER_GATEWAY):
                for c in range(CHANNELS_PER_ASSET):
                    base = 7.5 if number * CHANNELS_PER_ASSET + c in hot else 4.0
                    readings += [
                        Reading(
                            f"a{number}",
                            f"t{c}",
                            round(base + rng.gauss(0, 0.3), 2),
                            "degC",
                            T_START + (first_s + s) * 1000,
                        )
                        for s in range(SAMPLES_PER_BATCH)
                    ]
            batch = Batch(
                v=1,
                site=f"s{gateway}",
                gateway=f"gw{gateway}",
                seq=window + 1,
                sent_at=sent_at,
                readings=readings,
            )
            messages.append(
                (batch_topic(f"s{gateway}", f"gw{gateway}"), encode_batch(batch), sent_at)
            )
    return messages


def _ingest(plan: LoadedPlan) -> Ingest:
    return Ingest(
        Engine(plan), MemoryTimeSeriesSink(), MemoryDeviationSink(), MemoryDeadLetterSink()
    )


def _run(
    plan: LoadedPlan,
    messages: list[tuple[str, bytes, int]],
    every_frame: Callable[[Ingest], None] | None,
) -> tuple[float, float]:
    """Readings per second of wall time and per second of the engine thread's CPU time over
    ``messages``, with ``every_frame`` once a second."""
    gc.collect()  # the previous run's engine is garbage now: do not let this run pay for it
    ingest = _ingest(plan)
    cpu = time.thread_time()
    start = time.perf_counter()
    next_frame = start + FRAME_EVERY_S
    for topic, payload, received_ms in messages:
        ingest.handle(topic, payload, received_ms)
        if every_frame is not None and time.perf_counter() >= next_frame:
            every_frame(ingest)
            next_frame = time.perf_counter() + FRAME_EVERY_S
    ingest.flush()
    wall = time.perf_counter() - start
    return ingest.counters.readings / wall, ingest.counters.readings / (time.thread_time() - cpu)


def _before_frame(plan: LoadedPlan, ingest: Ingest, channels: int, console: Console) -> float:
    """One frame of the previous view over ``channels`` channels: every one of them sorted and
    rendered on this thread."""
    limits = limits_by_channel(plan)
    latest = dict(list(ingest.latest.items())[:channels])
    live = Live(console=console, auto_refresh=False, transient=True)  # started outside the time
    live.start()
    started = time.perf_counter()
    breached = {
        (d.site, d.asset, channel)
        for d in ingest.engine.open_deviations()
        for channel in d.channels
    }
    table = Table(title="Live readings", title_justify="left", expand=False)
    for column in ("site", "asset", "channel", "value", "limit", "state"):
        table.add_column(column)
    for key in sorted(latest):
        reading = latest[key]
        limit = limits.get(key)
        state = "[bold red]DEVIATION[/]" if key in breached else "[green]ok[/]"
        table.add_row(
            Text(key[0]),
            Text(key[1]),
            Text(key[2]),
            Text(f"{reading.value:g} {reading.unit}"),
            Text(limit.text if limit else ""),
            state,
        )
    live.update(table, refresh=True)
    took = time.perf_counter() - started
    live.update("", refresh=False)
    live.stop()
    return took


def measure(
    channels: int = 10_000, windows: int = 4, repeat: int = 2, before_channels: int = 1_000
) -> LiveViewCost:
    """Interleaved runs without and with the view, best of ``repeat`` each (about 20 s on two
    busy cores at the defaults), and one frame of the previous view."""
    plan = view_plan(channels)
    messages = view_payloads(channels, windows)
    readings = channels * SAMPLES_PER_BATCH * windows
    rates_none: list[tuple[float, float]] = []  # (per wall second, per engine CPU second)
    rates_view: list[tuple[float, float]] = []
    offers: list[float] = []
    offer_cpu: list[float] = []
    view_wall = render_cpu = 0.0
    frames = 0
    with Path(os.devnull).open("w", encoding="utf-8") as devnull:
        console = Console(file=devnull, force_terminal=True, width=120, height=50)
        _run(plan, messages[: len(messages) // windows], None)  # warm up: imports, caches
        for turn in range(repeat * 2):
            # alternate which goes first, so a drift of the machine's load favours neither
            if turn % 2 == (turn // 2) % 2:
                rates_none.append(_run(plan, messages, None))
                continue
            with LiveView(console, limits_by_channel(plan)) as view:

                def frame(ingest: Ingest, view: LiveView = view) -> None:
                    began, cpu = time.perf_counter(), time.thread_time()
                    view.offer(ingest.latest, ingest.engine.open_deviations())
                    offer_cpu.append(time.thread_time() - cpu)
                    offers.append(time.perf_counter() - began)

                began = time.perf_counter()
                rates_view.append(_run(plan, messages, frame))
                view_wall += time.perf_counter() - began
            frames += view.rendered
            render_cpu += view.render_cpu_s
        filled = _ingest(plan)
        for message in messages:
            filled.handle(*message)
        before = _before_frame(plan, filled, before_channels, console)
    return LiveViewCost(
        channels=channels,
        readings=readings,
        rate_none=max(wall for wall, _ in rates_none),
        rate_view=max(wall for wall, _ in rates_view),
        cpu_rate_none=max(cpu for _, cpu in rates_none),
        cpu_rate_view=max(cpu for _, cpu in rates_view),
        frames=frames,
        offer_median_ms=statistics.median(offers) * 1000 if offers else 0.0,
        offer_max_ms=max(offers, default=0.0) * 1000,
        offer_cpu_s=sum(offer_cpu),
        render_cpu_s=render_cpu,
        view_wall_s=view_wall,
        before_channels=before_channels,
        before_frame_s=before,
        load=os.getloadavg(),
    )


def main(channels: int = 10_000, windows: int = 4, repeat: int = 2) -> None:
    """Measure and print (the CLI's ``bench live-view``)."""
    for line in measure(channels, windows, repeat).lines():
        print(line)


if __name__ == "__main__":
    main()

"""``milkguard bench ...``: benchmarks that print figures (never timed tests)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def add_commands(commands: Any) -> None:
    """The ``bench`` command group."""
    bench = commands.add_parser("bench", help="benchmarks that print figures")
    bench.set_defaults(handler=run_bench)
    bench_commands = bench.add_subparsers(dest="bench_command", required=True, metavar="WHAT")
    engine = bench_commands.add_parser(
        "engine",
        help="ingest at the runtime's cadence beside a plain pydantic loop, same data, one run",
        description="MilkGuard's ingest as the runtime calls it (drained queues of whole "
        "messages, one engine advance each, line protocol included) beside a plain loop a team "
        "would write (pydantic per reading, a dict per channel, a threshold, an f-string line), "
        "on the same fleet data in one interleaved run; readings/s of each and the ratio.",
    )
    engine.add_argument("--gateways", type=int, default=100)
    engine.add_argument("--channels", type=int, default=50, help="per gateway, at 1 Hz")
    engine.add_argument("--seconds", type=int, default=60, help="seconds of fleet data")
    engine.add_argument(
        "--sizes",
        type=_sizes,
        default=(50, 500),
        metavar="N,N",
        help="readings per message, comma-separated (default 50,500)",
    )
    engine.add_argument(
        "--drain-messages", type=int, default=100, help="messages judged per engine advance"
    )
    engine.add_argument("--repeat", type=int, default=3, help="interleaved rounds per size")
    bench_edge = bench_commands.add_parser(
        "edge",
        help="edge agent: memory and CPU at 50 channels x 1 Hz, and backlog drain after 24 h",
        description="Run the edge agent as its own process against Mosquitto on 127.0.0.1 "
        "(or --mqtt): its resident memory and CPU while sampling, then how fast it drains an "
        "outbox holding a day-long outage.",
    )
    bench_edge.add_argument("--channels", type=int, default=50)
    bench_edge.add_argument("--seconds", type=float, default=60.0, help="footprint run length")
    bench_edge.add_argument("--hours", type=float, default=24.0, help="outage to drain")
    bench_edge.add_argument(
        "--cap", type=float, default=50_000, help="drain.max_readings_per_s of the agent"
    )
    bench_edge.add_argument("--mqtt", metavar="HOST:PORT", help="use this broker instead")
    pipeline = bench_commands.add_parser(
        "pipeline",
        help="end to end: readings/s, and p50/p99 latency from publish to deviation",
        description="A fleet of gateways through the whole pipeline: a backlog published as "
        "fast as MQTT takes it (readings/s end to end), then the fleet paced at --rate with a "
        "probe whose deviations are timed from publish to where a consumer reads them. "
        "Embedded by default; --kafka: Mosquitto, milkguard bridge, Kafka, milkguard worker.",
    )
    pipeline.add_argument("--kafka", action="store_true", help="the scaled-out pipeline")
    pipeline.add_argument("--gateways", type=int, default=100)
    pipeline.add_argument(
        "--channels",
        type=int,
        help="per gateway, at 1 Hz (default 50, or 100 with --kafka); divides each batch size",
    )
    pipeline.add_argument(
        "--readings", type=int, default=500_000, help="published per batch size (throughput)"
    )
    pipeline.add_argument(
        "--batch-readings",
        type=int,
        nargs="+",
        default=[50, 500],
        metavar="N",
        help="readings per message, as gateways send them",
    )
    pipeline.add_argument("--window", type=int, default=100, help="publisher's in-flight window")
    pipeline.add_argument(
        "--backlog-s", type=float, default=60.0, help="seconds of fleet data (--kafka)"
    )
    pipeline.add_argument("--rate", type=float, default=10_000.0, help="paced readings/s")
    pipeline.add_argument("--seconds", type=float, default=10.0, help="of the paced phase")
    pipeline.add_argument("--workers", type=int, default=1, help="milkguard worker processes")
    pipeline.add_argument("--partitions", type=int, default=4, help="of the batches topic")
    pipeline.add_argument("--mqtt", metavar="HOST:PORT", help="a running broker (--kafka)")
    pipeline.add_argument("--bootstrap", metavar="HOST:PORT", help="a running Kafka (--kafka)")
    fuzz = bench_commands.add_parser(
        "fuzz",
        help="mutated payloads through the live ingest path and milkguard replay: 0 crashes",
        description="Generate mutated payloads from valid batches of a plan (truncated JSON, "
        "wrong types, invalid UTF-8, NaN, extreme numbers and timestamps, huge seq, odd ids, "
        "invented gateways, 10 MB payloads, ...), feed them through the live ingest path and "
        "the milkguard replay command, and check that nothing raised and every message and "
        "reading is counted. Exit status 1 when a crash or a broken count was found.",
    )
    fuzz.add_argument("--payloads", type=int, default=1_000_000)
    fuzz.add_argument("--seed", type=int, default=1)
    fuzz.add_argument("--plan", type=Path, help="HACCP plan (default: the example plant plan)")
    fuzz.add_argument(
        "--replay",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also through milkguard replay (default: on)",
    )
    fuzz.add_argument(
        "--crash-dir",
        type=Path,
        default=Path("fuzz-crashes"),
        help="where payloads that raised are saved",
    )
    fuzz.add_argument(
        "--skip", default="", metavar="CLASS,...", help="leave these mutation classes out"
    )


def run_bench(args: argparse.Namespace) -> int:
    """``milkguard bench engine | edge | pipeline | fuzz``."""
    if args.bench_command == "edge":
        return _bench_edge(args)
    if args.bench_command == "pipeline":
        return _bench_pipeline(args)
    if args.bench_command == "fuzz":
        return _bench_fuzz(args)
    return _bench_engine(args)


def _bench_edge(args: argparse.Namespace) -> int:
    from rich.progress import Progress  # noqa: PLC0415

    from benchmarks import edge as bench  # noqa: PLC0415

    console = Console()
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"footprint: {args.channels} channels at 1 Hz", total=1.0)
        used = bench.footprint(
            args.channels, args.seconds, args.mqtt, lambda f: progress.update(task, completed=f)
        )
        stages = {
            "fill": progress.add_task(f"storing a {args.hours:g} h backlog", total=1.0),
            "drain": progress.add_task("draining it", total=1.0),
        }
        drained = bench.drain(
            args.hours,
            args.channels,
            args.cap,
            args.mqtt,
            lambda stage, f: progress.update(stages[stage], completed=f),
        )
    table = Table(title=f"edge agent on {bench.machine()}")
    table.add_column("measure")
    table.add_column("figure", justify="right")
    table.add_column("target", justify="right")
    rss = f"{used.rss_peak_mb:.1f} MB peak, {used.rss_end_mb:.1f} MB at the end"
    table.add_row(f"resident memory, {used.channels} ch x 1 Hz", rss, "< 60 MB")
    table.add_row("CPU, share of one core", f"{used.cpu_percent:.2f} %", "")
    table.add_row(
        "readings at the broker", f"{used.readings_received:,} in {used.seconds:.0f} s", ""
    )
    table.add_row(
        f"backlog drain, {args.hours:g} h x {args.channels} ch",
        f"{drained.per_second:,.0f} readings/s",
        ">= 20,000/s",
    )
    table.add_row(
        "  backlog",
        f"{drained.readings:,} readings, {drained.outbox_mb:.0f} MB, "
        f"drained in {drained.drain_s:.1f} s (cap {drained.cap_per_s:,.0f}/s)",
        "",
    )
    table.add_row("  resident memory while draining", f"{drained.rss_peak_mb:.1f} MB peak", "")
    console.print(table)
    return 0


def _sizes(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of whole numbers (e.g. 50,500)"
        ) from None


def _bench_engine(args: argparse.Namespace) -> int:
    from benchmarks import engine  # noqa: PLC0415

    engine.main(
        gateways=args.gateways,
        channels=args.channels,
        seconds=args.seconds,
        sizes=args.sizes,
        drain_messages=args.drain_messages,
        repeat=args.repeat,
    )
    return 0


def _bench_fuzz(args: argparse.Namespace) -> int:
    from rich.progress import MofNCompleteColumn, Progress, TimeRemainingColumn  # noqa: PLC0415

    from benchmarks import fuzz  # noqa: PLC0415

    console = Console()
    columns = (*Progress.get_default_columns()[:2], MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        tasks: dict[str, Any] = {}

        def advance(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=total)
            progress.update(tasks[stage], completed=done, total=total)

        report = fuzz.run(
            args.payloads,
            seed=args.seed,
            plan=args.plan,
            replay=args.replay,
            crash_dir=args.crash_dir,
            progress=advance,
            skip=frozenset(name for name in args.skip.split(",") if name),
        )
    for table in report.tables():
        console.print(table)
    for problem in report.broken:
        console.print(f"[red]broken:[/] {escape(problem)}", highlight=False)
    if report.crashes.total:
        console.print(
            f"[red]{report.crashes.total:,} crashes[/]; payloads saved in "
            f"{escape(str(args.crash_dir))}",
            highlight=False,
        )
    return 0 if report.ok else 1


def _bench_pipeline(args: argparse.Namespace) -> int:
    from benchmarks import pipeline  # noqa: PLC0415

    status = pipeline.main(
        kafka=args.kafka,
        gateways=args.gateways,
        channels=args.channels,
        readings=args.readings,
        batch_readings=tuple(args.batch_readings),
        backlog_s=args.backlog_s,
        rate=args.rate,
        seconds=args.seconds,
        window=args.window,
        workers=args.workers,
        partitions=args.partitions,
        mqtt=args.mqtt,
        bootstrap=args.bootstrap,
    )
    if status != 0 or not args.kafka:
        return status
    from benchmarks import kafka as kafka_bench  # noqa: PLC0415

    # the workers beside a plain Faust agent on the same records: per worker, then two
    kafka_bench.main(
        kafka_bench.Options(
            sizes=tuple(args.batch_readings),
            readings=args.readings,
            workers=tuple(sorted({1, 2, args.workers})),
            gateways=args.gateways,
            channels=args.channels or 50,
            partitions=args.partitions,
            bootstrap=args.bootstrap,
        )
    )
    return 0

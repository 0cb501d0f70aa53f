"""``milkguard simulate | load``: scenarios on a simulated clock, and the load generator."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from milkguard import logs
from milkguard.errors import ConfigError
from milkguard_cli.common import output, progress_bar


def add_commands(commands: Any) -> None:
    """The ``simulate`` and ``load`` commands."""
    simulate = commands.add_parser(
        "simulate",
        help="run a simulator scenario: write its payloads as JSON lines, or check it",
        description="Simulate a scenario (farms, trucks, plant lines with faults) on a simulated "
        "clock. Deterministic for its seed. --check replays it through the rule engine and "
        "compares with the deviations it expects.",
    )
    simulate.add_argument("scenario", type=Path)
    simulate.add_argument("--output", type=Path, help="write payloads here (default: stdout)")
    simulate.add_argument(
        "--check", action="store_true", help="replay and compare with the expected deviations"
    )
    simulate.add_argument("--mqtt", metavar="HOST:PORT", help="publish to this broker instead")
    simulate.add_argument(
        "--speed", type=float, help="with --mqtt: times faster than real time (default: the file's)"
    )
    simulate.set_defaults(handler=run_simulate)

    load = commands.add_parser(
        "load",
        help="load generator: gateways x channels x rate to an MQTT broker, paced",
        description="Publish prepared batches of N gateways x channels at a sampling rate, "
        "paced to their schedule, and print the rate achieved (and whether it kept up).",
    )
    load.add_argument("--host", default="127.0.0.1")
    load.add_argument("--port", type=int, default=1883)
    load.add_argument("--gateways", type=int, default=100)
    load.add_argument("--channels", type=int, default=50)
    load.add_argument("--rate-hz", type=float, default=20.0)
    load.add_argument("--seconds", type=float, default=10.0)
    load.set_defaults(handler=run_load)


def run_simulate(args: argparse.Namespace) -> int:
    """``milkguard simulate``."""
    from simulators.check import check  # noqa: PLC0415
    from simulators.runner import simulate  # noqa: PLC0415
    from simulators.scenario import load_scenario  # noqa: PLC0415

    if args.check:
        logs.configure("ERROR")  # rejections a scenario provokes are in its verdict's counts
        return _show_verdict(check(args.scenario))
    scenario, _ = load_scenario(args.scenario)
    if args.mqtt:
        return _simulate_to_broker(scenario, args.mqtt, args.speed or scenario.speed)
    with output(args.output) as out:
        for payload in simulate(scenario):
            out.write(payload.decode() + "\n")
    return 0


def _simulate_to_broker(scenario: Any, where: str, speed: float) -> int:
    from milkguard import mqtt as mqtt_connect  # noqa: PLC0415
    from simulators.load import Message, publish_paced  # noqa: PLC0415
    from simulators.runner import simulate_timed  # noqa: PLC0415

    host, _, port = where.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--mqtt takes HOST:PORT, got {where!r}")
    start_ms = int(scenario.start.timestamp() * 1000)
    messages = [
        Message(o.topic, o.payload, 0, max(0.0, (o.send_ms - start_ms) / 1000))
        for o in simulate_timed(scenario)
    ]
    connection = mqtt_connect.connect(mqtt_connect.BrokerAddress(host, int(port)), "simulator")
    with progress_bar(len(messages), escape(f"{scenario.scenario} at {speed:g}x")) as advance:
        result = publish_paced(connection, messages, speed=speed, progress=lambda _: advance(1))
    connection.close()
    Console().print(f"published {result.messages:,} batches in {result.elapsed_s:.1f} s")
    if result.unacknowledged:
        Console(stderr=True).print(f"[red]{result.unacknowledged:,} batches not acknowledged[/]")
        return 1
    return 0


def run_load(args: argparse.Namespace) -> int:
    """``milkguard load``."""
    from milkguard import mqtt as mqtt_connect  # noqa: PLC0415
    from simulators.load import prepare, publish_paced  # noqa: PLC0415

    console = Console()
    with console.status("preparing payloads ..."):
        messages = prepare(args.gateways, args.channels, args.rate_hz, args.seconds)
    total = sum(m.readings for m in messages)
    connection = mqtt_connect.connect(mqtt_connect.BrokerAddress(args.host, args.port), "load")
    with progress_bar(total, "publishing readings") as advance:
        result = publish_paced(connection, messages, progress=advance)
    connection.close()
    for line in result.lines():
        console.print(line, highlight=False, markup=False)
    return 0 if result.kept_up else 1


def _show_verdict(verdict: Any) -> int:
    console = Console()
    # kinds and assets come from the scenario and the plan: text, not markup
    table = Table(title=escape(f"scenario {verdict.scenario}"), title_justify="left")
    for column in ("", "kind", "asset", "start h", "end h"):
        table.add_column(column)
    for _, found in verdict.matched:
        end = "open" if found.end_h is None else f"{found.end_h:.2f}"
        table.add_row(
            "[green]found[/]", Text(found.kind), Text(found.asset), f"{found.start_h:.2f}", end
        )
    for expected in verdict.missing:
        end = "open" if expected.end_h is None else f"{expected.end_h:.2f}"
        table.add_row(
            "[red]missing[/]",
            Text(expected.kind),
            Text(expected.asset),
            f"{expected.start_h:.2f}",
            end,
        )
    for found in verdict.unexpected:
        end = "open" if found.end_h is None else f"{found.end_h:.2f}"
        table.add_row(
            "[red]unexpected[/]", Text(found.kind), Text(found.asset), f"{found.start_h:.2f}", end
        )
    console.print(table)
    summary = verdict.summary
    console.print(
        f"{summary.batches:,} batches, {summary.readings:,} readings, {summary.duplicates:,} "
        f"duplicates, {summary.rejected:,} rejected, {summary.late:,} late",
        highlight=False,
    )
    console.print("[green]passed[/]" if verdict.passed else "[red]failed[/]")
    return 0 if verdict.passed else 1

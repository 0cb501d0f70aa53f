"""``milkguard edge run | check``: the gateway agent.

A gateway installs ``milkguard[edge]`` only: this module and what it imports must load nothing
of the stream or the alert service (``tests/milkguard_cli/test_gateway_imports.py`` checks).
"""

from __future__ import annotations

import argparse
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from milkguard import logs
from milkguard_cli.common import stop_on_signals

if TYPE_CHECKING:
    from edge.config import EdgeConfig


def add_commands(commands: Any) -> None:
    """The ``edge`` command group."""
    edge = commands.add_parser("edge", help="the edge agent for farm, truck and plant gateways")
    edge.set_defaults(handler=run_edge)
    edge_commands = edge.add_subparsers(dest="edge_command", required=True, metavar="ACTION")
    edge_run = edge_commands.add_parser(
        "run",
        help="sample sensors, store, and publish to the plant's broker",
        description="Run the edge agent: every source is sampled on its interval, every reading "
        "is stored on disk before it is sent, and sent in order when the link allows.",
    )
    edge_run.add_argument("--config", type=Path, required=True, help="edge config (YAML)")
    edge_run.add_argument(
        "--duration", type=float, metavar="SECONDS", help="stop by itself after this long"
    )
    edge_check = edge_commands.add_parser(
        "check",
        help="validate an edge config and read every source once",
        description="Validate the config and read each source once, showing what each channel "
        "reads now. Publishes nothing.",
    )
    edge_check.add_argument("--config", type=Path, required=True, help="edge config (YAML)")


def run_edge(args: argparse.Namespace) -> int:
    """``milkguard edge run`` and ``milkguard edge check``."""
    from edge.config import load_edge_config  # noqa: PLC0415 - only what a gateway needs

    config = load_edge_config(args.config)
    logs.register_secrets(config)  # the broker password never reaches a log line
    if args.edge_command == "check":
        return _check(config)
    from edge.agent import EdgeAgent  # noqa: PLC0415

    logs.configure(config.log_level, config.log_format)
    agent = EdgeAgent(config)
    stop = stop_on_signals()
    timer = threading.Timer(args.duration or 0, stop.set)
    timer.daemon = True
    if args.duration is not None:
        timer.start()
    try:
        agent.run(stop)
    finally:
        timer.cancel()
    return 0


def _check(config: EdgeConfig) -> int:
    from edge.agent import make_driver  # noqa: PLC0415
    from edge.drivers.base import DriverError  # noqa: PLC0415

    # every cell quotes the config or a driver's error (a command's stderr): text, not markup
    table = Table(title=escape(f"{config.site}/{config.gateway}: one read of every source"))
    for column in ("source", "driver", "asset/channel", "value", "local limits"):
        table.add_column(column)
    failed = 0
    for source in config.sources:
        try:
            driver = make_driver(source)
            try:
                values: list[float | None] = driver.read()
            finally:
                driver.close()
        except DriverError as exc:
            failed += 1
            table.add_row(
                Text(source.name), Text(source.driver), "", Text(exc.problem, style="red"), ""
            )
            continue
        for channel, value in zip(source.channels, values, strict=True):
            limits = channel.limits
            shown = (
                Text("no value", style="yellow")
                if value is None
                else Text(f"{value:g} {channel.unit}")
            )
            if value is not None and limits is not None and limits.breached(value):
                shown = Text(f"{value:g} {channel.unit} (alarm)", style="red")
            bounds = "" if limits is None else f"{_bound(limits.low)} .. {_bound(limits.high)}"
            table.add_row(
                Text(source.name),
                Text(source.driver),
                Text(f"{channel.asset}/{channel.channel}"),
                shown,
                bounds,
            )
    Console().print(table)
    return 1 if failed else 0


def _bound(limit: float | None) -> str:
    return "-" if limit is None else f"{limit:g}"

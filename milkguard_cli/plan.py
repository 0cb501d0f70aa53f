"""``milkguard plan check``: validate a HACCP plan and list its rules."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text


def add_commands(commands: Any) -> None:
    """The ``plan`` command group."""
    plan = commands.add_parser("plan", help="HACCP plan files")
    plan.set_defaults(handler=check_plan)
    plan_commands = plan.add_subparsers(dest="plan_command", required=True, metavar="ACTION")
    check = plan_commands.add_parser("check", help="validate a plan and list its rules")
    check.add_argument("path", type=Path)


def check_plan(args: argparse.Namespace) -> int:
    """``milkguard plan check``: validate a plan and list its rules."""
    from stream.plan import Htst, StorageAge, Uht, load_plan  # noqa: PLC0415

    path: Path = args.path
    loaded = load_plan(path)
    plan = loaded.plan
    console = Console()
    console.print(
        f"[green]ok[/] {escape(str(path))}: plan [bold]{escape(plan.plan)}[/] "
        f"({escape(plan.jurisdiction)}), version {escape(str(loaded.version))}, "
        f"{len(plan.assets)} assets, {len(plan.rules)} rules"
    )
    table = Table(title="Rules", title_justify="left")
    for column in ("rule", "kind", "ccp", "asset/channel", "limit", "severity", "action"):
        table.add_column(column)
    for rule in plan.rules:
        if isinstance(rule, Htst):
            channel = rule.indicating
        elif isinstance(rule, Uht):
            channel = rule.outlet
        elif isinstance(rule, StorageAge):
            channel = ""
        else:
            channel = rule.channel
        channels = plan.assets[rule.asset].channels
        unit = channels[channel].unit if channel else "h"
        cells = (
            rule.id,
            rule.kind,
            rule.ccp or "",
            f"{rule.asset}/{channel}",
            rule.describe(unit),
            rule.severity,
            rule.action,
        )
        table.add_row(*(Text(str(cell)) for cell in cells))  # the plan's words, not markup
    console.print(table)
    return 0

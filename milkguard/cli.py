"""The ``milkguard`` command.

    milkguard run [--config FILE] [--plan PLAN] [--no-simulators] ...   the stream service
    milkguard plan check PLAN                                           validate a HACCP plan
    milkguard contract schema [--output FILE]                           wire contract JSON Schema

Errors MilkGuard expects (bad settings, bad plan, missing broker) are printed without a traceback
and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from rich.console import Console
from rich.table import Table

from milkguard import __version__
from milkguard.errors import ConfigError, MilkGuardError

EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="milkguard",
        description="Live HACCP and cold-chain monitor for dairies.",
    )
    parser.add_argument("--version", action="version", version=f"milkguard {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run the stream: broker, HACCP engine, stores (and the demo fleet by default)",
        description="Run the stream service. With no settings: an embedded MQTT broker on "
        "127.0.0.1:1883, the demo HACCP plan, and simulators for a farm tank, a milk truck and "
        "an HTST line. Settings come from --config and MILKGUARD_* variables.",
    )
    run.add_argument("--config", type=Path, help="settings file (YAML)")
    run.add_argument("--plan", type=Path, help="HACCP plan file (YAML); overrides the settings")
    run.add_argument("--data-dir", type=Path, help="where local stores are written")
    run.add_argument(
        "--no-simulators",
        action="store_true",
        help="serve real edge agents only: no demo fleet",
    )
    run.add_argument(
        "--duration", type=float, metavar="SECONDS", help="stop by itself after this long"
    )

    plan = commands.add_parser("plan", help="HACCP plan files")
    plan_commands = plan.add_subparsers(dest="plan_command", required=True, metavar="ACTION")
    check = plan_commands.add_parser("check", help="validate a plan and list its rules")
    check.add_argument("path", type=Path)

    contract = commands.add_parser("contract", help="the wire contract for gateways")
    contract_commands = contract.add_subparsers(
        dest="contract_command", required=True, metavar="ACTION"
    )
    schema = contract_commands.add_parser("schema", help="print the JSON Schema of a payload")
    schema.add_argument("--output", type=Path, help="write to this file instead of stdout")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``milkguard`` console script."""
    args = _parser().parse_args(argv)
    err = Console(stderr=True)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "plan":
            return _plan_check(args.path)
        if args.command == "contract":
            return _schema(args.output)
    except MilkGuardError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True)
        return EXIT_USAGE
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    return EXIT_USAGE


def _run(args: argparse.Namespace) -> int:
    from milkguard import logs  # noqa: PLC0415 - keep `milkguard plan check` quick
    from milkguard.settings import load_settings  # noqa: PLC0415
    from stream.embedded import EmbeddedService  # noqa: PLC0415

    overrides: dict[str, object] = {}
    if args.plan is not None:
        overrides["plan"] = args.plan
    if args.data_dir is not None:
        overrides["data_dir"] = args.data_dir
    if args.no_simulators:
        overrides["simulators"] = False
    settings = load_settings(args.config, **overrides)
    logs.configure(settings.log_level, settings.log_format)
    import logging  # noqa: PLC0415

    logging.getLogger("milkguard").info("settings", extra={"settings": settings.redacted()})
    service = EmbeddedService(settings)
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()
        # a second Ctrl-C interrupts at once
        signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    service.run(stop, args.duration)
    return 0


def _plan_check(path: Path) -> int:
    from stream.plan import load_plan  # noqa: PLC0415

    loaded = load_plan(path)
    plan = loaded.plan
    console = Console()
    console.print(
        f"[green]ok[/] {path}: plan [bold]{plan.plan}[/] ({plan.jurisdiction}), "
        f"version {loaded.version}, {len(plan.assets)} assets, {len(plan.rules)} rules"
    )
    table = Table(title="Rules", title_justify="left")
    for column in ("rule", "kind", "ccp", "asset/channel", "limit", "severity", "action"):
        table.add_column(column)
    for rule in plan.rules:
        unit = plan.assets[rule.asset].channels[rule.channel].unit
        table.add_row(
            rule.id,
            rule.kind,
            rule.ccp or "",
            f"{rule.asset}/{rule.channel}",
            rule.describe(unit),
            rule.severity,
            rule.action,
        )
    console.print(table)
    return 0


def _schema(output: Path | None) -> int:
    from milkguard.contract import json_schema  # noqa: PLC0415

    text = json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
    if output is None:
        sys.stdout.write(text)
        return 0
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write the schema to {output}: {exc.strerror}") from exc
    return 0

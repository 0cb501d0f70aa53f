"""``milkguard run``: the stream service on one machine, with the demo fleet by default."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from milkguard import logs
from milkguard_cli.common import stop_on_signals


def add_commands(commands: Any) -> None:
    """The ``run`` command."""
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
    run.set_defaults(handler=run_stream)


def run_stream(args: argparse.Namespace) -> int:
    """``milkguard run``."""
    from milkguard_cli.settings import load_settings  # noqa: PLC0415 - keep other commands quick
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
    logging.getLogger("milkguard").info("settings", extra={"settings": settings.redacted()})
    demo_fleet = None
    if settings.simulators:
        from simulators.demo import DemoFleet  # noqa: PLC0415 - the demo only

        demo_fleet = DemoFleet
    service = EmbeddedService(settings, demo_fleet=demo_fleet)
    stop = stop_on_signals()
    service.run(stop, args.duration)
    return 0

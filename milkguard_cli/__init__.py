"""The ``milkguard`` command: the one place that puts every MilkGuard application together.

    milkguard run [--config FILE] [--plan PLAN] [--no-simulators] ...   the stream service
    milkguard edge run --config EDGE.yaml                               the gateway agent
    milkguard edge check --config EDGE.yaml                             validate, read once
    milkguard bridge | worker [--config FILE]                           the scaled-out stream
    milkguard replay --plan PLAN FILE.jsonl|-                          judge recorded payloads
    milkguard simulate SCENARIO | load ...                              simulators
    milkguard bench engine | edge | pipeline | fuzz                     benchmarks
    milkguard alerts ... | audit verify ...                             alerts and audit trail
    milkguard plan check PLAN                                           validate a HACCP plan
    milkguard contract schema [--output FILE]                           wire contract JSON Schema
    milkguard broker hash-password | mosquitto-config --out DIR         MQTT broker security
    milkguard stream public-key                                         the stream's signing key
    milkguard dashboards build | push | preview                         Grafana dashboards

One module per command group; nothing imports this package. Each module imports the
application it runs inside its handler, so that ``milkguard edge ...`` on a gateway loads
nothing of the stream or the alert service (and ``milkguard --help`` stays quick).

Errors MilkGuard expects (bad settings, bad plan, missing broker) are printed without a traceback
and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.text import Text

from milkguard import __version__, logs
from milkguard.errors import MilkGuardError
from milkguard_cli import (
    alerts,
    bench,
    broker,
    contract,
    dashboards,
    edge,
    plan,
    run,
    simulate,
    stream,
)

EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="milkguard",
        description="Live HACCP and cold-chain monitor for dairies.",
    )
    parser.add_argument("--version", action="version", version=f"milkguard {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run.add_commands(commands)
    edge.add_commands(commands)
    stream.add_runtime_commands(commands)
    simulate.add_commands(commands)
    broker.add_commands(commands)
    bench.add_commands(commands)
    alerts.add_commands(commands)
    plan.add_commands(commands)
    contract.add_commands(commands)
    stream.add_key_commands(commands)
    dashboards.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``milkguard`` console script."""
    args = _parser().parse_args(argv)
    err = Console(stderr=True)
    try:
        result: int = args.handler(args)
    except MilkGuardError as exc:
        # the message quotes files, commands and values: text, never markup; and no secret
        message = logs.mask(str(exc))
        err.print(
            Text.assemble(("error:", "bold red"), " ", message), highlight=False, soft_wrap=True
        )
        return EXIT_USAGE
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except BrokenPipeError:
        # the reader went away (e.g. `milkguard simulate ... | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return result

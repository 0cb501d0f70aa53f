"""``milkguard contract schema``: the wire contract for gateways, as JSON Schema."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from milkguard.errors import ConfigError


def add_commands(commands: Any) -> None:
    """The ``contract`` command group."""
    contract = commands.add_parser("contract", help="the wire contract for gateways")
    contract.set_defaults(handler=schema)
    contract_commands = contract.add_subparsers(
        dest="contract_command", required=True, metavar="ACTION"
    )
    found = contract_commands.add_parser("schema", help="print the JSON Schema of a payload")
    found.add_argument("--output", type=Path, help="write to this file instead of stdout")
    found.add_argument(
        "--records", action="store_true", help="the signed records the stream publishes instead"
    )


def schema(args: argparse.Namespace) -> int:
    """``milkguard contract schema``: the JSON Schema of a payload, or of the signed records."""
    from milkguard.contract import json_schema  # noqa: PLC0415
    from milkguard.contract.records import records_schema  # noqa: PLC0415

    output: Path | None = args.output
    found = records_schema() if args.records else json_schema()
    text = json.dumps(found, indent=2, sort_keys=True) + "\n"
    if output is None:
        sys.stdout.write(text)
        return 0
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write the schema to {output}: {exc.strerror}") from exc
    return 0

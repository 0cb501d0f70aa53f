"""``milkguard broker hash-password | mosquitto-config``: MQTT broker security."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from milkguard.errors import ConfigError


def add_commands(commands: Any) -> None:
    """The ``broker`` command group."""
    broker = commands.add_parser("broker", help="MQTT broker security: passwords, Mosquitto")
    broker.set_defaults(handler=run_broker)
    broker_commands = broker.add_subparsers(dest="broker_command", required=True, metavar="WHAT")
    hashing = broker_commands.add_parser(
        "hash-password",
        help="print the password_hash of an mqtt.security user (password read from stdin)",
        description="Read a password (prompted on a terminal, else the first line of standard "
        "input; never an argument, which others can see) and print its PBKDF2-SHA512 hash in "
        "the $7$ format both the embedded broker and Mosquitto 2.0 accept.",
    )
    hashing.add_argument("--iterations", type=int, default=None, help="PBKDF2 rounds")
    mosquitto = broker_commands.add_parser(
        "mosquitto-config",
        help="write mosquitto.conf, passwd and acl from mqtt.security",
        description="Generate a Mosquitto 2.0 configuration from the same security model the "
        "embedded broker enforces: users and password hashes, per-gateway ACL, TLS, "
        "persistence, and queues sized for an outage of the stream.",
    )
    mosquitto.add_argument("--config", type=Path, help="settings file (YAML)")
    mosquitto.add_argument("--out", type=Path, required=True, help="folder to write into")
    mosquitto.add_argument(
        "--bind",
        help="address of the TLS listener (default: mqtt.host; e.g. 0.0.0.0 when mqtt.host "
        "is where the services connect)",
    )
    mosquitto.add_argument("--port", type=int, help="port of that listener (default: mqtt.port)")
    mosquitto.add_argument(
        "--conf-dir", type=Path, help="where the files will live on the broker (default: --out)"
    )
    mosquitto.add_argument(
        "--persistence-dir", type=Path, default=Path("/var/lib/mosquitto"), help="its store"
    )
    mosquitto.add_argument(
        "--outage-hours", type=float, default=24.0, help="how long the stream may be away"
    )
    mosquitto.add_argument(
        "--gateways", type=int, help="count for the queue sizing (default: the gateway users)"
    )
    mosquitto.add_argument(
        "--batch-bytes", type=int, default=8192, help="size of a large batch, for the sizing"
    )


def run_broker(args: argparse.Namespace) -> int:
    """``milkguard broker hash-password | mosquitto-config``."""
    from milkguard import broker_security as security  # noqa: PLC0415

    if args.broker_command == "hash-password":
        if sys.stdin.isatty():
            import getpass  # noqa: PLC0415

            password = getpass.getpass("password: ")
        else:
            password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise ConfigError("no password given (type it, or pipe it on standard input)")
        iterations = args.iterations or security.HASH_ITERATIONS
        print(security.hash_password(password, iterations=iterations))
        return 0
    from milkguard_cli.settings import load_settings  # noqa: PLC0415

    settings = load_settings(args.config)
    model = settings.mqtt.security
    gateways = args.gateways
    if gateways is None:
        gateways = len(security.known_gateways(model))
    out = args.out
    try:
        files = security.mosquitto_files(
            model,
            args.bind or settings.mqtt.host,
            args.port or settings.mqtt.port,
            conf_dir=(args.conf_dir or out).absolute(),
            persistence_dir=args.persistence_dir,
            sizing=security.QueueSizing(
                gateways, outage_h=args.outage_hours, batch_bytes=args.batch_bytes
            ),
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            path = out / name
            path.write_text(text, encoding="utf-8")
            if name == "passwd":
                path.chmod(0o600)  # hashes only, but no reason to let others guess at them
    except OSError as exc:
        raise ConfigError(f"cannot write the Mosquitto files into {out}: {exc.strerror}") from exc
    Console(stderr=True).print(
        f"wrote {', '.join(sorted(files))} into {out} ({len(model.users)} users)", markup=False
    )
    return 0

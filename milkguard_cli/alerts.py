"""``milkguard alerts ...`` and ``milkguard audit ...``: signed reports and the audit trail."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from milkguard import logs
from milkguard.errors import ConfigError
from milkguard_cli.common import stop_on_signals

DEFAULT_KEY = Path("var/alerts/signing-key.pem")  # where milkguard alerts run keeps them
DEFAULT_DB = Path("var/alerts/audit.db")


def add_commands(commands: Any) -> None:
    """The ``alerts`` and ``audit`` command groups."""
    alerts = commands.add_parser("alerts", help="signed regulator reports")
    alerts.set_defaults(handler=run_alerts)
    what = alerts.add_subparsers(dest="alerts_command", required=True, metavar="WHAT")
    public = what.add_parser(
        "public-key",
        help="the public key to publish (the signing key is created if there is none)",
    )
    public.add_argument("--key", type=Path, default=DEFAULT_KEY, help="the private signing key")
    public.add_argument("--output", type=Path, help="write the PEM here (default: stdout)")
    report = what.add_parser(
        "report",
        help="sign a report of a critical deviation (JSON and HTML) and record it in the trail",
    )
    report.add_argument("deviation_id")
    report.add_argument("--deviations", type=Path, default=Path("var/deviations.jsonl"))
    report.add_argument("--key", type=Path, default=DEFAULT_KEY)
    report.add_argument("--db", type=Path, default=DEFAULT_DB, help="the audit trail")
    report.add_argument("--out", type=Path, default=Path("var/alerts/reports"))
    report.add_argument("--deadline-h", type=float, default=24.0, help="from detection")
    report.add_argument("--issuer", default="MilkGuard", help="who issues it (the dairy)")
    run = what.add_parser(
        "run",
        help="alert the right people of deviations: lifecycle, escalation, e-mail, webhooks",
        description="Subscribe to the deviations the stream publishes on MQTT (mqtt.*) and "
        "alert the recipients of alerts.* until Ctrl-C or SIGTERM.",
    )
    run.add_argument("--config", type=Path, help="settings file (YAML)")
    share = what.add_parser(
        "compliance", help="the share of critical deviations reported within the deadline"
    )
    share.add_argument("--deviations", type=Path, default=Path("var/deviations.jsonl"))
    share.add_argument("--reports", type=Path, default=Path("var/alerts/reports"))
    share.add_argument("--deadline-h", type=float, default=24.0)
    verify = what.add_parser("verify", help="check a report's signature")
    verify.add_argument("report", type=Path)
    verify.add_argument("--public-key", type=Path, action="append", required=True)

    audit = commands.add_parser("audit", help="the tamper-evident audit trail")
    audit.set_defaults(handler=run_audit)
    audit_what = audit.add_subparsers(dest="audit_command", required=True, metavar="WHAT")
    check = audit_what.add_parser(
        "verify",
        help="find any edit, insertion or deletion (read-only: creates nothing)",
        description="Check the audit trail read-only: every entry's hash and link, the signed "
        "head, the heads given with --head, and with --state the head verified last time. "
        "Exit 1 naming every problem: also for a missing file, missing tables, an empty trail "
        "or a missing head.",
    )
    check.add_argument(
        "--db",
        default=None,
        help="SQLite file or postgresql:// URL (default: MILKGUARD_ALERTS__DATABASE if set, "
        f"else {DEFAULT_DB})",
    )
    check.add_argument(
        "--state",
        type=Path,
        metavar="FILE",
        help="keep the head verified here (JSON, written only when the trail is intact); "
        "fail when a later trail is behind it or does not hold it",
    )
    check.add_argument("--public-key", type=Path, action="append", required=True)
    check.add_argument(
        "--head",
        action="append",
        default=[],
        metavar="N:HASH",
        help="a head handed out earlier (e.g. in a report) that the trail must still hold",
    )


def run_alerts(args: argparse.Namespace) -> int:
    """``milkguard alerts ...``."""
    from alerts.signing import Signer, Verifier  # noqa: PLC0415

    console = Console()
    if args.alerts_command == "public-key":
        pem = Signer.load_or_create(args.key).public_pem()
        if args.output is None:
            console.out(pem, end="", highlight=False)
        else:
            args.output.write_text(pem, encoding="utf-8")
        return 0
    if args.alerts_command == "run":
        return _run(args)
    if args.alerts_command == "compliance":
        return _compliance(args, console)
    if args.alerts_command == "verify":
        from alerts.reports import verify_file  # noqa: PLC0415

        report, problem = verify_file(args.report, Verifier.from_files(args.public_key))
        # a report's fields and the problem quote the file: shown as text, never as markup
        if problem is not None:
            console.print(
                Text.assemble(("NOT VALID", "bold red"), f" {args.report}: {problem}"),
                highlight=False,
            )
            return 1
        assert report is not None
        deviation = report["deviation"]
        console.print(
            Text.assemble(
                ("valid", "green"),
                f" {args.report}: deviation {deviation['id']} at "
                f"{deviation['site']}/{deviation['asset']} ({deviation['rule_id']}), issued "
                f"{report['issued_at']} by {report['issuer']}",
            ),
            highlight=False,
        )
        return 0
    return _report(args, console)


def _run(args: argparse.Namespace) -> int:
    from alerts.service import AlertService  # noqa: PLC0415
    from milkguard.settings import broker_address  # noqa: PLC0415
    from milkguard_cli.settings import load_settings  # noqa: PLC0415

    settings = load_settings(args.config)
    logs.configure(settings.log_level, settings.log_format)
    if not settings.alerts.recipients:
        raise ConfigError(
            "no alerts.recipients: say who is told (name, audience, email or webhook) in the "
            "settings file"
        )
    service = AlertService(
        settings.alerts, broker_address(settings), f"{settings.mqtt.client_id}-alerts"
    )
    service.run(stop_on_signals())
    return 0


def _compliance(args: argparse.Namespace, console: Console) -> int:
    from datetime import UTC, datetime  # noqa: PLC0415

    from rich.table import Table  # noqa: PLC0415

    from alerts.reports import compliance  # noqa: PLC0415

    found = compliance(_records(args.deviations), args.reports, args.deadline_h, datetime.now(UTC))
    table = Table(title=f"Critical deviations, reports due {args.deadline_h:g} h after detection")
    for column in ("critical", "reported in time", "reported late", "missing", "not yet due"):
        table.add_column(column, justify="right")
    table.add_row(
        *map(str, (found.critical, found.in_time, found.late, found.missing, found.pending))
    )
    console.print(table)
    share = found.share_in_time
    console.print(
        "reported within the deadline: "
        + ("n/a (none due yet)" if share is None else f"{share:.1%}"),
        highlight=False,
    )
    return 0


def _records(deviations: Path) -> list[dict[str, Any]]:
    """The change records of a deviations.jsonl file, naming the line of a bad one."""
    records = []
    try:
        with deviations.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"{deviations} line {number} is not JSON: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {deviations}: {exc.strerror}") from exc
    return records


def _report(args: argparse.Namespace, console: Console) -> int:
    from alerts.audit import AuditTrail  # noqa: PLC0415
    from alerts.reports import issue  # noqa: PLC0415
    from alerts.signing import Signer  # noqa: PLC0415

    deviation = _latest_change(args.deviations, args.deviation_id)
    signer = Signer.load_or_create(args.key)
    trail = AuditTrail(args.db, signer)
    try:
        path = issue(
            deviation,
            signer=signer,
            trail=trail,
            out_dir=args.out,
            deadline_h=args.deadline_h,
            issuer=args.issuer,
        )
    finally:
        trail.close()
    console.print(
        Text.assemble(
            ("signed", "green"), f" {path} and {path.with_suffix('.html')} (key {signer.key_id})"
        ),
        highlight=False,
    )
    return 0


def _latest_change(deviations: Path, deviation_id: str) -> dict[str, Any]:
    """The last change record of a deviation in a deviations.jsonl file."""
    found = [r for r in _records(deviations) if r.get("id") == deviation_id]
    if not found:
        raise ConfigError(f"no deviation {deviation_id!r} in {deviations}")
    return found[-1]


def run_audit(args: argparse.Namespace) -> int:
    """``milkguard audit verify``: exit 1 and name every problem when the trail was tampered
    with, is missing, empty or behind the head verified last time (``--state``)."""
    import os  # noqa: PLC0415
    import re  # noqa: PLC0415

    from alerts.audit import (  # noqa: PLC0415
        AuditTrail,
        TrailError,
        load_verified_head,
        save_verified_head,
    )
    from alerts.signing import Verifier  # noqa: PLC0415
    from milkguard.logs import mask, mask_url, register_secrets  # noqa: PLC0415

    heads = []
    for given in args.head:
        found = re.fullmatch(r"([0-9]{1,18}):([0-9a-f]{64})", given)
        if found is None:  # ASCII digits only: str.isdigit() also takes '²', which int() refuses
            raise ConfigError(f"--head {given!r}: expected N:HASH, e.g. 12:9f86d08...")
        heads.append((int(found[1]), found[2]))
    where = args.db or os.environ.get("MILKGUARD_ALERTS__DATABASE") or str(DEFAULT_DB)
    shown = mask_url(where) if "://" in where else where
    if "://" in where:
        register_secrets(where)  # libpq quotes a malformed URL's parts, password and all
    verifier = Verifier.from_files(args.public_key)
    last = load_verified_head(args.state) if args.state is not None else None
    if last is not None:
        heads.append((last.seq, last.hash))
    console = Console(highlight=False)
    try:
        trail = AuditTrail.open_read_only(where)
    except TrailError as exc:
        console.print(Text.assemble(("NOT VERIFIED", "bold red"), f" {shown}: {mask(str(exc))}"))
        return 1
    try:
        problems = trail.verify(verifier, heads)
        seq, digest = (0, "") if problems else trail.head()  # no head to read in a dropped trail
    finally:
        trail.close()
    if problems:
        console.print(
            Text.assemble(("TAMPERED", "bold red"), f" {shown}: {len(problems)} problem(s)")
        )
        for problem in problems:
            console.print(Text(f"  - {problem}"))
        if last is not None:
            console.print(
                Text(f"  (last verified: entry {last.seq} at {last.verified_at}, {args.state})")
            )
        return 1
    if args.state is not None:
        save_verified_head(args.state, seq, digest)
    console.print(Text.assemble(("intact", "green"), f" {shown}: {seq} entries, head {digest}"))
    return 0

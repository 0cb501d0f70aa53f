"""Regulator reports: one per critical deviation, signed with Ed25519, in JSON and readable HTML.

The JSON is the record: ``{"report": {...}, "signature": {"alg", "key_id", "value"}}``, the
signature over the report's RFC 8785 canonical JSON (standard tools check it too). The report
holds the deviation as the stream judged it (the schema of deviations.jsonl), when it was
issued against the deadline for reporting it, and the audit trail's head at issue, so the
regulator also holds a point the dairy's trail must keep containing. The HTML says the same
for people, and how to check it.
``milkguard alerts verify REPORT.json --public-key KEY.pem`` checks a report.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from alerts.audit import AuditTrail
from alerts.signing import Signer, Verifier
from milkguard.contract.records import DEVIATION_ID_PATTERN
from milkguard.errors import ConfigError

REPORT_FORMAT = "milkguard-deviation-report/1"

_DEVIATION_ID = re.compile(DEVIATION_ID_PATTERN)


def report_stem(deviation_id: object) -> str:
    """The file name (without suffix) of a deviation's report: its id, once checked.

    Only a deviation id (20 hex digits) names a file, so no message can choose where a report
    is written or which file is served.
    """
    if not isinstance(deviation_id, str) or _DEVIATION_ID.fullmatch(deviation_id) is None:
        shown = repr(deviation_id)[:80]
        raise ConfigError(
            f"deviation id {shown} is not 20 lowercase hex digits: it cannot name a report"
        )
    return deviation_id


def report_paths(reports: Path, name: str) -> tuple[Path, Path] | None:
    """``<deviation id>.json`` or ``.html`` in ``reports``, and its signed JSON record; None
    for any other name."""
    stem, _, suffix = name.rpartition(".")
    if suffix not in ("json", "html") or _DEVIATION_ID.fullmatch(stem) is None:
        return None
    return reports / f"{stem}.{suffix}", reports / f"{stem}.json"


def parse_iso(stamp: str) -> datetime:
    """An ISO 8601 UTC stamp of the deviation records."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def iso(moment: datetime) -> str:
    """ISO 8601 UTC with milliseconds, as everywhere in the records."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build_report(
    deviation: dict[str, Any],
    *,
    issued_at: datetime,
    deadline_h: float,
    audit_head: tuple[int, str],
    issuer: str,
) -> dict[str, Any]:
    """The report of one critical deviation (a change record of deviations.jsonl)."""
    if deviation.get("severity") != "critical":
        raise ConfigError(
            f"deviation {deviation.get('id')} is {deviation.get('severity')}, not critical: "
            "regulator reports are for critical deviations"
        )
    detected = parse_iso(deviation["detected"])
    due = detected + timedelta(hours=deadline_h)
    return {
        "format": REPORT_FORMAT,
        "deviation": deviation,
        "issuer": issuer,
        "issued_at": iso(issued_at),
        "due_by": iso(due),
        "within_deadline": issued_at <= due,
        "audit_head": {"seq": audit_head[0], "hash": audit_head[1]},
    }


def issue(
    deviation: dict[str, Any],
    *,
    signer: Signer,
    trail: AuditTrail,
    out_dir: Path,
    deadline_h: float,
    issuer: str,
    now: datetime | None = None,
) -> Path:
    """Sign and write ``<id>.json`` and ``<id>.html``, and record the issue in the trail."""
    report = build_report(
        deviation,
        issued_at=now or datetime.now(UTC),
        deadline_h=deadline_h,
        audit_head=trail.head(),
        issuer=issuer,
    )
    stem = report_stem(deviation.get("id"))  # before anything is signed, written or recorded
    signed = {"report": report, "signature": signer.sign(report).as_dict()}
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{stem}.json"
    path.write_text(json.dumps(signed, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    path.with_suffix(".html").write_text(render_html(signed), encoding="utf-8")
    trail.append(
        "report.issued",
        stem,
        issuer,
        {
            "report": path.name,
            "signature": signed["signature"]["value"],
            "due_by": report["due_by"],
        },
    )
    return path


def verify_file(path: Path, verifier: Verifier) -> tuple[dict[str, Any] | None, str | None]:
    """(the report, None) if ``path`` is a report signed by a known key, else (report?, why)."""
    try:
        signed = json.loads(path.read_bytes())
    except OSError as exc:
        return None, f"cannot read {path}: {exc.strerror}"
    except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8, huge integers, deep nesting
        return None, f"{path} is not JSON: {exc}"
    if not isinstance(signed, dict) or not {"report", "signature"} <= signed.keys():
        return None, f"{path} is not a signed report: it needs 'report' and 'signature'"
    report, signature = signed["report"], signed["signature"]
    if not isinstance(signature, dict):
        return None, f"{path}: 'signature' must be an object with alg, key_id and value"
    problem = verifier.problem(report, signature)
    if problem is None and not (
        isinstance(report, dict)
        and report.get("format") == REPORT_FORMAT
        and isinstance(report.get("deviation"), dict)
    ):
        # the same key signs the audit trail's head: a signature alone does not make a report
        return None, f"{path} is signed, but not a deviation report ({REPORT_FORMAT})"
    return report, problem


def clock_of(d: dict[str, Any]) -> str:
    """Which clock a deviation's times are on, in words, with each device's own times when they
    are on the stream's clock (a record written before ``time_base`` is on device time)."""
    if d.get("time_base", "device") == "device":
        offset = d.get("clock_offset_ms", 0)
        return f"device {d.get('device')}'s own clock (offset {offset:+d} ms to the stream's)"
    devices = []
    for times in d.get("clocks") or []:
        own = ", ".join(
            f"{name} {times[f'raw_{name}']}"
            for name in ("start", "detected", "end")
            if times.get(f"raw_{name}") is not None
        )
        devices.append(f"{times['device']} (offset {times['offset_ms']:+d} ms): {own}")
    if not devices:
        return "the stream's clock"
    return f"the stream's clock; on the devices' own clocks: {'; '.join(devices)}"


def causes_of(d: dict[str, Any]) -> str | None:
    """Why a time-sync deviation was raised, in words (None when the record names no cause)."""
    causes = d.get("causes") or []
    return " and ".join(str(c).replace("_", " ") for c in causes) or None


def render_html(signed: dict[str, Any]) -> str:
    """The report for people: what happened, the limit, the deadline, the signature."""
    report, signature = signed["report"], signed["signature"]
    d = report["deviation"]
    limit = d.get("limit") or {}
    bounds = " and ".join(
        part
        for part in (
            f"at least {limit['min']:g}" if limit.get("min") is not None else "",
            f"at most {limit['max']:g}" if limit.get("max") is not None else "",
        )
        if part
    )
    rows = [
        ("Deviation", d["id"]),
        ("Site / asset", f"{d['site']} / {d['asset']} ({', '.join(d.get('channels', []))})"),
        ("Rule", f"{d['rule_id']} ({d['kind']}), CCP {d.get('ccp') or '-'}"),
        ("Plan", f"{d['plan']} version {d['plan_version']}, jurisdiction {d['jurisdiction']}"),
        ("Limit", f"{bounds} {limit.get('unit', '')}: {limit.get('source', '')}"),
        # HTST: the product whose limit it was (during a changeover, maybe the one before)
        *(
            [("Product", f"{d['product']} ({d.get('product_class') or '-'} class)")]
            if d.get("product")
            else []
        ),
        ("Began", d["start"]),
        ("Detected", d["detected"]),
        ("Ended", d.get("end") or "still open at issue"),
        ("Times on", clock_of(d)),
        *([("Cause", cause)] if (cause := causes_of(d)) else []),
        ("Worst value", "-" if d.get("peak") is None else f"{d['peak']:g} {limit.get('unit', '')}"),
        ("Beyond the limit", f"{d['time_beyond_s']:g} s, {d['degree_minutes']:g} degree-minutes"),
        ("Action required", d["action"]),
        ("Issued", f"{report['issued_at']} by {report['issuer']}"),
        (
            "Reporting deadline",
            f"{report['due_by']} ({'met' if report['within_deadline'] else 'MISSED'})",
        ),
        (
            "Audit trail head",
            f"entry {report['audit_head']['seq']}, {report['audit_head']['hash']}",
        ),
        ("Signature", f"Ed25519, key {signature['key_id']}: {signature['value']}"),
    ]
    body = "\n".join(
        f"<tr><th>{html.escape(name)}</th><td>{html.escape(str(value))}</td></tr>"
        for name, value in rows
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Critical deviation {html.escape(d["id"])}</title>
<style>body{{font-family:sans-serif;max-width:52em;margin:2em auto}}
th{{text-align:left;padding-right:1em;vertical-align:top}}td,th{{padding:.3em}}</style>
</head><body>
<h1>Critical deviation report</h1>
<table>
{body}
</table>
<p>The JSON file of the same name is the signed record. Check it with
<code>milkguard alerts verify {html.escape(d["id"])}.json --public-key PUBLIC_KEY.pem</code>
using the dairy's published public key (id {html.escape(signature["key_id"])}), or with any
Ed25519 implementation over the RFC 8785 canonical JSON of its <code>report</code>.</p>
</body></html>
"""


@dataclass(frozen=True)
class Compliance:
    """How critical deviations were reported against their deadline."""

    critical: int
    in_time: int
    late: int
    missing: int  # deadline passed, no report
    pending: int  # no report yet, deadline not passed

    @property
    def share_in_time(self) -> float | None:
        """Reported within the deadline, of those whose deadline passed or that were reported."""
        judged = self.in_time + self.late + self.missing
        return self.in_time / judged if judged else None


def compliance(
    deviations: Iterable[dict[str, Any]], reports: Path, deadline_h: float, now: datetime
) -> Compliance:
    """Every critical deviation in ``deviations`` (change records) against the reports issued."""
    detected: dict[str, datetime] = {}
    for record in deviations:
        if record.get("severity") == "critical":
            detected.setdefault(str(record["id"]), parse_iso(record["detected"]))
    in_time = late = missing = pending = 0
    for deviation_id, when in detected.items():
        path = reports / f"{report_stem(deviation_id)}.json"
        if path.exists():
            report = json.loads(path.read_text(encoding="utf-8"))["report"]
            if report["within_deadline"]:
                in_time += 1
            else:
                late += 1
        elif now > when + timedelta(hours=deadline_h):
            missing += 1
        else:
            pending += 1
    return Compliance(len(detected), in_time, late, missing, pending)

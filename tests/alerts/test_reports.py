"""Regulator reports: a critical deviation yields a signed JSON and a readable HTML; anyone with
the published public key can check it; a changed report or another key is caught."""

from __future__ import annotations

import base64
import html
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from alerts.audit import AuditTrail
from alerts.delivery import compose
from alerts.lifecycle import Alert, Audience, Notice, State
from alerts.reports import compliance, issue, verify_file
from alerts.signing import Signer, Verifier
from milkguard.errors import ConfigError
from milkguard_cli import main
from tests.alerts.records import change

DEVIATION = {
    "change": "opened",
    "id": "5d0c1e2f3a4b5c6d7e8f",
    "status": "open",
    "kind": "htst_temperature",
    "plan": "htst-us",
    "plan_version": "9136772fa79621b1",
    "rule_id": "pmo-htst.temperature",
    "ccp": "CCP-PAST-1",
    "jurisdiction": "US",
    "severity": "critical",
    "action": "divert",
    "site": "plant-01",
    "asset": "htst-1",
    "channels": ["hold_temp"],
    "device": "plant-01-gw",
    "limit": {"min": 72.0, "max": None, "sustained_s": 0.0, "unit": "degC", "source": "PMO"},
    "start": "2026-11-22T10:00:10.000Z",
    "detected": "2026-11-22T10:00:10.000Z",
    "end": None,
    "peak": 71.4,
    "time_beyond_s": 0.0,
    "degree_minutes": 0.0,
    "detected_late": False,
    "clock_offset_ms": 0,
    "clock_synced": None,
}


def issued(
    tmp_path: Path, at: datetime, deviation: dict[str, Any] = DEVIATION
) -> tuple[Path, Signer, AuditTrail]:
    """A report of ``deviation`` issued ``at``, with the key and trail in ``tmp_path``."""
    signer = Signer.load_or_create(tmp_path / "key.pem")
    trail = AuditTrail(tmp_path / "audit.db", signer)
    trail.append("deviation.opened", deviation["id"], "stream", {"rule": deviation["rule_id"]})
    path = issue(
        deviation,
        signer=signer,
        trail=trail,
        out_dir=tmp_path / "reports",
        deadline_h=24,
        issuer="Dairy Co-op",
        now=at,
    )
    return path, signer, trail


@pytest.mark.parametrize("bad_id", ["/tmp/x/pwned", "../../escaped", "..", "a" * 20 + "/x"])
def test_a_path_like_deviation_id_writes_no_report_anywhere(tmp_path: Path, bad_id: str) -> None:
    out = tmp_path / "deep" / "reports"

    with pytest.raises(ConfigError, match="cannot name a report"):
        issued(
            tmp_path / "deep",
            datetime(2026, 11, 22, 12, 0, tzinfo=UTC),
            {**DEVIATION, "id": bad_id},
        )

    assert not out.exists()
    assert sorted(p.name for p in tmp_path.rglob("*") if p.suffix in (".json", ".html")) == []


def test_a_report_verifies_with_standard_tools_alone(tmp_path: Path) -> None:
    """The signature is over the RFC 8785 form of ``report``: no MilkGuard code needed."""
    path, signer, trail = issued(tmp_path, datetime(2026, 11, 22, 12, 0, tzinfo=UTC))
    signed = json.loads(path.read_text())
    public = serialization.load_pem_public_key(signer.public_pem().encode())
    assert isinstance(public, ed25519.Ed25519PublicKey)

    public.verify(base64.b64decode(signed["signature"]["value"]), rfc8785.dumps(signed["report"]))
    trail.close()


def test_a_report_is_signed_checkable_and_recorded_in_the_trail(tmp_path: Path) -> None:
    path, signer, trail = issued(tmp_path, datetime(2026, 11, 22, 12, 0, tzinfo=UTC))

    report, problem = verify_file(path, Verifier([signer.public_pem().encode()]))

    assert problem is None
    assert report is not None
    assert report["within_deadline"] is True
    assert report["due_by"] == "2026-11-23T10:00:10.000Z"
    assert report["audit_head"]["seq"] == 1  # the regulator now holds the trail's head
    assert [e.kind for e in trail.entries()] == ["deviation.opened", "report.issued"]
    page = path.with_suffix(".html").read_text()
    assert "plant-01 / htst-1" in page
    assert "milkguard alerts verify 5d0c1e2f3a4b5c6d7e8f.json" in page
    trail.close()


def test_a_late_report_says_the_deadline_was_missed(tmp_path: Path) -> None:
    path, _, trail = issued(tmp_path, datetime(2026, 11, 24, 12, 0, tzinfo=UTC))

    assert json.loads(path.read_text())["report"]["within_deadline"] is False
    assert "MISSED" in path.with_suffix(".html").read_text()
    trail.close()


def test_a_changed_report_or_another_key_is_caught(tmp_path: Path) -> None:
    path, signer, trail = issued(tmp_path, datetime(2026, 11, 22, 12, 0, tzinfo=UTC))
    verifier = Verifier([signer.public_pem().encode()])
    signed = json.loads(path.read_text())
    signed["report"]["deviation"]["peak"] = 72.1  # "it was within the limit after all"
    path.write_text(json.dumps(signed))

    _, problem = verify_file(path, verifier)
    assert problem is not None
    assert "changed after signing" in problem

    other = Signer.load_or_create(tmp_path / "other.pem")
    _, problem = verify_file(path, Verifier([other.public_pem().encode()]))
    assert problem is not None
    assert "not among the public keys given" in problem
    trail.close()


def test_only_critical_deviations_get_a_regulator_report(tmp_path: Path) -> None:
    signer = Signer.load_or_create(tmp_path / "key.pem")
    trail = AuditTrail(tmp_path / "audit.db", signer)
    with pytest.raises(ConfigError, match="is major, not critical"):
        issue(
            {**DEVIATION, "severity": "major"},
            signer=signer,
            trail=trail,
            out_dir=tmp_path,
            deadline_h=24,
            issuer="x",
        )
    trail.close()


def test_the_signing_key_is_private_to_its_owner(tmp_path: Path) -> None:
    Signer.load_or_create(tmp_path / "key.pem")

    assert (tmp_path / "key.pem").stat().st_mode & 0o777 == 0o600


def test_the_commands_issue_publish_and_verify(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    deviations = tmp_path / "deviations.jsonl"
    deviations.write_text(json.dumps({**DEVIATION, "peak": 70.0}) + "\n" + json.dumps(DEVIATION))
    key, public, db = tmp_path / "key.pem", tmp_path / "public.pem", tmp_path / "audit.db"
    reports = tmp_path / "reports"

    assert main(["alerts", "public-key", "--key", str(key), "--output", str(public)]) == 0
    assert (
        main(
            [
                "alerts",
                "report",
                DEVIATION["id"],
                "--deviations",
                str(deviations),
                "--key",
                str(key),
                "--db",
                str(db),
                "--out",
                str(reports),
            ]
        )
        == 0
    )
    report = reports / f"{DEVIATION['id']}.json"
    assert json.loads(report.read_text())["report"]["deviation"]["peak"] == 71.4  # the latest
    capsys.readouterr()
    assert main(["alerts", "verify", str(report), "--public-key", str(public)]) == 0
    assert "valid" in capsys.readouterr().out
    assert main(["audit", "verify", "--db", str(db), "--public-key", str(public)]) == 0
    report.write_text(report.read_text().replace("71.4", "72.4"))  # a changed peak
    assert main(["alerts", "verify", str(report), "--public-key", str(public)]) == 1
    assert "NOT VALID" in capsys.readouterr().out
    share = ["alerts", "compliance", "--deviations", str(deviations), "--reports", str(reports)]
    assert main(share) == 0
    printed = capsys.readouterr().out
    assert "reported within the deadline: " in printed  # in time or late: it depends on today
    assert "Critical deviations" in printed


def test_the_share_reported_in_time_counts_late_missing_and_pending(tmp_path: Path) -> None:
    _, _, trail = issued(tmp_path, datetime(2026, 11, 22, 12, 0, tzinfo=UTC))  # in time
    trail.close()
    late = {**DEVIATION, "id": "1a7e0000000000000000"}
    _, _, trail = issued(tmp_path, datetime(2026, 11, 24, 12, 0, tzinfo=UTC), late)
    records = [
        DEVIATION,
        {**DEVIATION, "change": "closed"},  # the same deviation, counted once
        late,
        {**DEVIATION, "id": "0155000000000000000a"},
        {**DEVIATION, "id": "2ece0000000000000000", "detected": "2026-11-24T11:00:00.000Z"},
        {**DEVIATION, "id": "3140000000000000000b", "severity": "minor"},
    ]

    found = compliance(records, tmp_path / "reports", 24, datetime(2026, 11, 24, 12, tzinfo=UTC))

    assert (found.critical, found.in_time, found.late, found.missing, found.pending) == (
        4,
        1,
        1,
        1,
        1,
    )
    assert found.share_in_time == pytest.approx(1 / 3)
    trail.close()


@pytest.mark.parametrize(
    "content",
    [
        b"\xff\xfe{}",  # not UTF-8
        b"[" * 100_000,  # nested past the parser's depth
        b'{"report": {}, "signature": "not an object"}',
        b'{"report": {}, "signature": {}, "n": ' + b"1" * 5000 + b"}",  # past int digits
        b'{"report": {"a": NaN}, "signature": {"alg": "Ed25519", "key_id": "x", "value": "y"}}',
    ],
    ids=["not-utf8", "deep", "signature-string", "huge-int", "nan"],
)
def test_a_crafted_report_file_is_not_valid_and_raises_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes
) -> None:
    signer = Signer.load_or_create(tmp_path / "key.pem")
    public = tmp_path / "public.pem"
    public.write_text(signer.public_pem())
    crafted = tmp_path / "report.json"
    crafted.write_bytes(content)

    assert main(["alerts", "verify", str(crafted), "--public-key", str(public)]) == 1
    assert "NOT VALID" in capsys.readouterr().out


def test_the_trails_signed_head_does_not_pass_for_a_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the dairy's key signs reports and the trail's head: a head is no report
    signer = Signer.load_or_create(tmp_path / "key.pem")
    public = tmp_path / "public.pem"
    public.write_text(signer.public_pem())
    head = {"seq": 3, "hash": "0" * 64}
    crafted = tmp_path / "report.json"
    crafted.write_text(json.dumps({"report": head, "signature": signer.sign(head).as_dict()}))

    assert main(["alerts", "verify", str(crafted), "--public-key", str(public)]) == 1
    assert "not a deviation report" in capsys.readouterr().out


def test_a_report_says_which_clock_its_times_are_on(tmp_path: Path) -> None:
    """A joined deviation's times are on the stream's clock: the report gives each gateway's
    own times and offset beside them; a record written before the field is on device time."""
    path, _, trail = issued(
        tmp_path / "joined", datetime(2026, 11, 22, 12, 0, tzinfo=UTC), change("closed")
    )
    joined = html.unescape(path.with_suffix(".html").read_text())
    old, _, old_trail = issued(tmp_path / "old", datetime(2026, 11, 22, 12, 0, tzinfo=UTC))
    trail.close()
    old_trail.close()

    assert (
        "the stream's clock; on the devices' own clocks: plant-01-gw (offset +40 ms): start "
        "2026-11-22T10:00:00.040Z, detected 2026-11-22T10:00:00.040Z, end "
        "2026-11-22T10:00:05.040Z" in joined
    )
    old_page = html.unescape(old.with_suffix(".html").read_text())
    assert "device plant-01-gw's own clock (offset +0 ms to the stream's)" in old_page


def test_a_time_sync_alert_names_its_causes() -> None:
    """A CCP gateway's clock in doubt: the alert says why, offset, own report or both."""
    record = {
        **change("opened"),
        "kind": "time_sync",
        "asset": "plant-01-gw",
        "channels": ["clock"],
        "time_base": "stream",
        "clocks": [],
        "causes": ["offset_beyond_tolerance", "gateway_unsynchronised"],
    }
    alert = Alert(
        id="plant-01/plant-01-gw/time-sync.plant-01-gw",
        site="plant-01",
        asset="plant-01-gw",
        rule_id="time-sync.plant-01-gw",
        severity="major",
        state=State.RAISED,
        level=0,
        raised_ms=0,
        due_ms=None,
        acknowledged_by=None,
        resolved_ms=None,
        reopened=0,
        deviations=[record["id"]],
        deviation=record,
    )

    text = compose(Notice("raised", Audience.OPERATOR, alert)).text

    assert "Cause: offset beyond tolerance and gateway unsynchronised" in text.splitlines()
    assert "Times on the stream's clock" in text.splitlines()


def test_a_report_names_the_product_whose_limit_was_breached(tmp_path: Path) -> None:
    """PMO: cream (fat >= 10 %) needs 75 degC; a dip during a changeover to milk breached
    cream's limit, and the report says so. A record without a product shows no such row."""
    cream = {
        **DEVIATION,
        "limit": {**DEVIATION["limit"], "min": 75.0},  # type: ignore[dict-item]
        "product": "cream",
        "product_class": "rich",
    }
    path, _, trail = issued(tmp_path / "cream", datetime(2026, 11, 22, 12, 0, tzinfo=UTC), cream)
    plain, _, plain_trail = issued(tmp_path / "plain", datetime(2026, 11, 22, 12, 0, tzinfo=UTC))
    trail.close()
    plain_trail.close()

    assert "<th>Product</th><td>cream (rich class)</td>" in path.with_suffix(".html").read_text()
    assert "<th>Product</th>" not in plain.with_suffix(".html").read_text()

"""The audit trail finds any edit, insertion or deletion: in the middle by the hash chain, at the
end by the signed head, a whole rollback by a head handed out earlier."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from alerts.audit import AuditTrail, entry_hash
from alerts.signing import Signer, Verifier, canonical
from milkguard_cli import main


@pytest.fixture
def signer(tmp_path: Path) -> Signer:
    return Signer.load_or_create(tmp_path / "key.pem")


@pytest.fixture
def verifier(signer: Signer) -> Verifier:
    return Verifier([signer.public_pem().encode()])


@pytest.fixture
def trail(tmp_path: Path, signer: Signer) -> Iterator[AuditTrail]:
    opened = AuditTrail(tmp_path / "audit.db", signer)
    for n in range(1, 6):
        opened.append("deviation.opened", f"dev-{n}", "stream", {"rule": "tank-max", "peak": n})
    yield opened
    opened.close()


def sql(trail: AuditTrail, statement: str, *args: object) -> None:
    """What someone with the database file and no key could do."""
    with sqlite3.connect(trail.path) as db:
        db.execute(statement, args)


def test_an_intact_trail_verifies_and_carries_on_after_a_restart(
    trail: AuditTrail, signer: Signer, verifier: Verifier
) -> None:
    assert trail.verify(verifier) == []
    trail.close()

    again = AuditTrail(trail.path, signer)
    entry = again.append("alert.acknowledged", "dev-1", "operator:li", {"note": "seen"})

    assert entry.seq == 6
    assert again.verify(verifier) == []
    again.close()


def test_an_edited_entry_is_found(trail: AuditTrail, verifier: Verifier) -> None:
    sql(trail, "UPDATE audit SET body = ? WHERE seq = 3", '{"peak":0,"rule":"tank-max"}')

    (problem,) = trail.verify(verifier)
    assert problem.startswith("entry 3 (deviation.opened, dev-3) does not match its hash")


def test_an_entry_edited_and_rehashed_breaks_the_link_of_the_next(
    trail: AuditTrail, verifier: Verifier
) -> None:
    entries = list(trail.entries())
    third = entries[2]
    forged = {**third.content(), "body": {"peak": 0, "rule": "tank-max"}}
    sql(
        trail,
        "UPDATE audit SET body = ?, hash = ? WHERE seq = 3",
        canonical(forged["body"]).decode(),
        entry_hash(forged),
    )

    (problem,) = trail.verify(verifier)
    assert problem.startswith("entry 4 does not follow the entry before it")


def test_a_deleted_entry_is_found(trail: AuditTrail, verifier: Verifier) -> None:
    sql(trail, "DELETE FROM audit WHERE seq = 2")

    problems = trail.verify(verifier)
    assert "entries 2 to 2 are missing (deleted)" in problems
    assert any(p.startswith("entry 3 does not follow") for p in problems)


def test_an_inserted_entry_is_found(trail: AuditTrail, verifier: Verifier) -> None:
    second = list(trail.entries())[1]
    for seq in (5, 4, 3):  # make room after entry 2
        sql(trail, "UPDATE audit SET seq = ? WHERE seq = ?", seq + 1, seq)
    forged = {
        "seq": 3,
        "at": second.at,
        "kind": "alert.acknowledged",
        "subject": "dev-2",
        "actor": "operator:nobody",
        "body": {"note": "acknowledged in time"},
        "prev": second.hash,
    }
    stored = {**forged, "body": canonical(forged["body"]).decode()}
    sql(
        trail,
        "INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        *stored.values(),
        entry_hash(forged),
    )

    problems = trail.verify(verifier)
    assert problems  # the forged entry itself is well formed; the one it pushed down is not
    assert problems[0].startswith("entry 4 (deviation.opened, dev-3) does not match its hash")


def test_entries_deleted_from_the_end_are_caught_by_the_signed_head(
    trail: AuditTrail, verifier: Verifier
) -> None:
    sql(trail, "DELETE FROM audit WHERE seq >= 4")

    (problem,) = trail.verify(verifier)
    assert problem.startswith("the signed head is entry 5, but the trail ends at entry 3")


def test_a_head_signed_with_another_key_is_refused(
    trail: AuditTrail, verifier: Verifier, tmp_path: Path
) -> None:
    sql(trail, "DELETE FROM audit WHERE seq >= 4")
    forger = AuditTrail(trail.path, Signer.load_or_create(tmp_path / "forger.pem"))
    forger.append("deviation.closed", "dev-3", "forger", {})  # re-signs the head, wrong key

    (problem,) = trail.verify(verifier)
    assert problem.startswith("the head's signature is not valid: signed with key")
    forger.close()


def test_a_rollback_to_an_older_signed_state_is_caught_by_a_head_handed_out(
    trail: AuditTrail, signer: Signer, verifier: Verifier, tmp_path: Path
) -> None:
    old_copy = tmp_path / "old.db"
    with sqlite3.connect(trail.path) as source, sqlite3.connect(old_copy) as target:
        source.backup(target)
    handed_out = trail.append("report.issued", "dev-5", "qa:wang", {"report": "dev-5.json"})
    trail.close()
    for journal in ("-wal", "-shm"):
        Path(f"{trail.path}{journal}").unlink(missing_ok=True)
    old_copy.replace(trail.path)  # the whole database swapped for yesterday's copy
    rolled_back = AuditTrail(trail.path, signer)

    assert rolled_back.verify(verifier) == []  # consistent in itself...
    (problem,) = rolled_back.verify(verifier, [(handed_out.seq, handed_out.hash)])
    assert problem.startswith("the trail ends at entry 5, behind entry 6 handed out")
    rolled_back.close()


def test_audit_verify_exits_1_and_names_the_problem(
    trail: AuditTrail, signer: Signer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    public = tmp_path / "public.pem"
    public.write_text(signer.public_pem())
    argv = ["audit", "verify", "--db", str(trail.path), "--public-key", str(public)]

    assert main(argv) == 0
    assert "intact" in capsys.readouterr().out
    sql(trail, "UPDATE audit SET actor = 'someone else' WHERE seq = 1")
    assert main(argv) == 1
    assert "entry 1 (deviation.opened, dev-1) does not match its hash" in capsys.readouterr().out


def verify_command(
    db: Path | str, signer: Signer, tmp_path: Path, *extra: str
) -> tuple[list[str], Path]:
    public = tmp_path / "public.pem"
    public.write_text(signer.public_pem())
    return ["audit", "verify", "--db", str(db), "--public-key", str(public), *extra], public


@pytest.mark.parametrize(
    ("statements", "expected"),
    [
        (
            ["DELETE FROM audit", "DELETE FROM audit_head"],
            "the trail has no entries: it was emptied",
        ),
        (["DROP TABLE audit", "DROP TABLE audit_head"], "no audit and no audit_head table"),
    ],
    ids=["emptied", "dropped"],
)
def test_an_emptied_or_dropped_trail_fails_and_is_not_created_again(
    trail: AuditTrail,
    signer: Signer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    statements: list[str],
    expected: str,
) -> None:
    trail.close()
    for statement in statements:
        sql(trail, statement)
    with sqlite3.connect(trail.path) as db:
        tables = db.execute("SELECT name FROM sqlite_master ORDER BY name").fetchall()
    argv, _ = verify_command(trail.path, signer, tmp_path)

    assert main(argv) == 1
    assert expected in capsys.readouterr().out
    with sqlite3.connect(trail.path) as db:
        assert db.execute("SELECT name FROM sqlite_master ORDER BY name").fetchall() == tables


def test_a_missing_signed_head_is_reported(
    trail: AuditTrail, verifier: Verifier, tmp_path: Path
) -> None:
    sql(trail, "DELETE FROM audit_head")

    problems = AuditTrail.open_read_only(trail.path).verify(verifier)
    assert problems == ["the signed head is missing: it was deleted"]


def test_a_missing_trail_fails_and_nothing_is_created(
    signer: Signer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "var" / "alerts"
    argv, _ = verify_command(folder / "audit.db", signer, tmp_path)

    assert main(argv) == 1
    assert "the file is missing" in capsys.readouterr().out
    assert not (tmp_path / "var").exists()


def test_verifying_a_stopped_services_trail_writes_no_file(
    trail: AuditTrail, signer: Signer, tmp_path: Path
) -> None:
    trail.close()
    argv, _ = verify_command(trail.path, signer, tmp_path)
    before = {p.name for p in tmp_path.iterdir()}

    assert main(argv) == 0
    assert {p.name for p in tmp_path.iterdir()} == before  # no -wal, no -shm, nothing


def test_a_trail_rolled_back_behind_the_last_verified_head_fails_with_state(
    trail: AuditTrail, signer: Signer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "verified.json"
    argv, _ = verify_command(trail.path, signer, tmp_path, "--state", str(state))
    old_copy = tmp_path / "old.db"
    with sqlite3.connect(trail.path) as source, sqlite3.connect(old_copy) as target:
        source.backup(target)
    assert main(argv) == 0
    trail.append("report.issued", "dev-5", "qa:wang", {"report": "dev-5.json"})
    assert main(argv) == 0
    kept = json.loads(state.read_text())
    assert kept["seq"] == 6
    trail.close()
    for journal in ("-wal", "-shm"):
        Path(f"{trail.path}{journal}").unlink(missing_ok=True)
    old_copy.replace(trail.path)  # yesterday's copy: consistent in itself, signed, 5 entries
    capsys.readouterr()

    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "the trail ends at entry 5, behind entry 6" in out
    assert json.loads(state.read_text()) == kept  # a failed verification keeps the state


def test_a_trail_rewritten_from_the_verified_head_fails_with_state(
    trail: AuditTrail, signer: Signer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "verified.json"
    argv, _ = verify_command(trail.path, signer, tmp_path, "--state", str(state))
    assert main(argv) == 0
    # whoever holds the key rewrites entry 5 onwards: a chain intact in itself
    sql(trail, "DELETE FROM audit WHERE seq = 5")
    trail.append("deviation.opened", "dev-5", "stream", {"rule": "tank-max", "peak": 0})
    trail.append("deviation.opened", "dev-6", "stream", {"rule": "tank-max", "peak": 6})
    capsys.readouterr()

    assert main(argv) == 1
    assert "the trail no longer holds entry 5" in capsys.readouterr().out


def test_a_damaged_state_file_is_a_clear_error(
    trail: AuditTrail, signer: Signer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "verified.json"
    state.write_text("{not json")
    argv, _ = verify_command(trail.path, signer, tmp_path, "--state", str(state))

    assert main(argv) == 2
    assert "is not one MilkGuard wrote" in " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://milkguard:p%zzXq7-db-secret@127.0.0.1:1/alerts",  # a bad %-escape
        "postgresql://milkguard:Xq7-db-secret@[::1/alerts",  # an unclosed IPv6 host
    ],
)
def test_a_malformed_database_url_is_refused_without_showing_its_password(
    signer: Signer, tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str
) -> None:
    # libpq quotes the offending part of the URL in its error, password and all
    argv, _ = verify_command(url, signer, tmp_path)

    assert main(argv) == 1
    shown = capsys.readouterr()
    assert "NOT VERIFIED" in shown.out
    assert "Xq7-db-secret" not in shown.out + shown.err


@pytest.mark.parametrize(
    "statements",
    [
        ["UPDATE audit SET body = 'not json' WHERE seq = 2"],
        ["UPDATE audit SET body = '[1, 2]' WHERE seq = 2"],
        ["UPDATE audit SET seq = 'two' WHERE seq = 2"],
        ["UPDATE audit_head SET signature = 'not json'"],
        ["UPDATE audit_head SET signature = '[\"a\"]'"],
        ["UPDATE audit_head SET seq = 'five'"],
        ["DROP TABLE audit", "CREATE TABLE audit (seq INTEGER)", "INSERT INTO audit VALUES (1)"],
    ],
    ids=["body", "body-list", "seq-text", "head-json", "head-list", "head-seq", "columns"],
)
def test_a_trail_edited_into_odd_shapes_is_tampered_not_a_traceback(
    trail: AuditTrail,
    signer: Signer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    statements: list[str],
) -> None:
    trail.close()
    for statement in statements:
        sql(trail, statement)
    argv, _ = verify_command(trail.path, signer, tmp_path)

    assert main(argv) == 1
    assert "TAMPERED" in capsys.readouterr().out


@pytest.mark.parametrize(
    "content",
    [b"\xff\xfe{}", b"[" * 100_000, b'{"seq": "x", "hash": 1, "verified_at": 2}'],
    ids=["not-utf8", "deep", "wrong-types"],
)
def test_a_crafted_state_file_is_a_clear_error(
    trail: AuditTrail,
    signer: Signer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: bytes,
) -> None:
    state = tmp_path / "verified.json"
    state.write_bytes(content)
    argv, _ = verify_command(trail.path, signer, tmp_path, "--state", str(state))

    assert main(argv) == 2
    assert str(state) in " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize("head", ["²:" + "0" * 64, "1:" + "z" * 64, "1:" + "0" * 63 + "\n"])
def test_an_odd_head_argument_is_a_clear_error(
    trail: AuditTrail, signer: Signer, tmp_path: Path, capsys: pytest.CaptureFixture[str], head: str
) -> None:
    argv, _ = verify_command(trail.path, signer, tmp_path, "--head", head)

    assert main(argv) == 2
    assert "--head" in capsys.readouterr().err

"""The audit trail finds any edit, insertion or deletion: in the middle by the hash chain, at the
end by the signed head, a whole rollback by a head handed out earlier."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from alerts.audit import AuditTrail, entry_hash
from alerts.signing import Signer, Verifier, canonical
from milkguard.cli import main


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
    assert problem.startswith("the trail no longer holds entry 6")
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

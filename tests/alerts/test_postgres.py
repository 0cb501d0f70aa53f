"""Alerting on PostgreSQL, for a multi-node install: two alert services on one database (a
real PostgreSQL 15) each get every deviation change, yet the right people are told once, an
overdue alert escalates once, and the audit trail both write to stays one intact chain."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from alerts.audit import AuditTrail
from alerts.delivery import Outbox
from alerts.lifecycle import AlertBook, Audience
from alerts.settings import Recipient, SmtpSettings
from alerts.signing import Signer, Verifier
from tests.alerts.conftest import Smtp
from tests.alerts.records import change, dev
from tests.helpers import wait_until
from tests.servers import Postgres

pytestmark = pytest.mark.integration

MIN = 60_000
T = 1_795_341_600_000
HTST = "plant-01/htst-1/pmo-htst.temperature"


def node(url: str, signer: Signer, smtp: Smtp) -> tuple[AlertBook, Outbox, AuditTrail]:
    """One alert service's stores, on the shared database."""
    trail = AuditTrail(url, signer)
    people = [
        Recipient(name="li", audience=Audience.OPERATOR, email="li@plant"),
        Recipient(name="wang", audience=Audience.QA, email="wang@dairy"),
    ]
    outbox = Outbox(url, people, smtp=SmtpSettings(port=smtp.port))
    return AlertBook(url, trail=trail), outbox, trail


def test_two_nodes_on_one_database_tell_each_person_once(
    postgres: Postgres, smtp: Smtp, tmp_path: Path
) -> None:
    signer = Signer.load_or_create(tmp_path / "key.pem")
    (book_a, box_a, trail_a), (book_b, box_b, trail_b) = (
        node(postgres.url, signer, smtp) for _ in range(2)
    )

    for book, box in ((book_a, box_a), (book_b, box_b)):  # both nodes get the change
        box.queue(book.on_deviation(change("opened"), T), T)
    for box in (box_a, box_b):
        box.deliver_due(T)
    for book, box in ((book_a, box_a), (book_b, box_b)):  # both look for overdue alerts
        box.queue(book.due(T + 5 * MIN), T + 5 * MIN)
    for box in (box_a, box_b):
        box.deliver_due(T + 5 * MIN)
    book_b.acknowledge(HTST, "qa:wang", T + 6 * MIN)

    wait_until(lambda: len(smtp.received()) >= 2, 10, "the e-mails")
    subject = "[CRITICAL] {}: plant-01/htst-1 pmo-htst.temperature"
    assert smtp.received() == [
        ("li@plant", subject.format("raised")),
        ("wang@dairy", subject.format("escalated")),
    ]
    assert book_a.get(HTST).acknowledged_by == "qa:wang"  # type: ignore[union-attr]
    assert book_a.due(T + 60 * MIN) == book_b.due(T + 60 * MIN) == []
    kinds = [e.kind for e in trail_a.entries()]
    assert kinds == ["alert.raised", "alert.escalated", "alert.acknowledged"]
    assert trail_b.verify(Verifier([signer.public_pem().encode()])) == []
    for store in (book_a, box_a, trail_a, book_b, box_b, trail_b):
        store.close()


def test_a_node_restarted_carries_on_from_the_database(
    postgres: Postgres, smtp: Smtp, tmp_path: Path
) -> None:
    signer = Signer.load_or_create(tmp_path / "key.pem")
    book, box, trail = node(postgres.url, signer, smtp)
    book.on_deviation(change("opened"), T)
    for store in (book, box, trail):
        store.close()

    book, box, trail = node(postgres.url, signer, smtp)
    assert book.on_deviation(change("opened"), T + MIN) == []  # seen before the restart
    assert [n.event for n in book.due(T + 5 * MIN)] == ["escalated"]
    for store in (book, box, trail):
        store.close()


def test_two_nodes_escalating_at_the_same_moment_escalate_each_alert_once(
    postgres: Postgres, smtp: Smtp, tmp_path: Path
) -> None:
    signer = Signer.load_or_create(tmp_path / "key.pem")
    nodes = [node(postgres.url, signer, smtp) for _ in range(2)]
    for n in range(20):
        record = {**change("opened", dev(n)), "asset": f"htst-{n}"}
        nodes[0][0].on_deviation(record, T)
    start = threading.Barrier(2)
    told: list[list[str]] = [[], []]

    def escalate(which: int) -> None:
        start.wait()
        told[which] = [n.alert.id for n in nodes[which][0].due(T + 5 * MIN)]

    threads = [threading.Thread(target=escalate, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert sorted(told[0] + told[1]) == sorted(
        f"plant-01/htst-{n}/pmo-htst.temperature" for n in range(20)
    )
    for stores in nodes:
        for store in stores:
            store.close()


def test_audit_verify_reads_postgresql_read_only(
    postgres: Postgres, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from milkguard_cli import main  # noqa: PLC0415

    signer = Signer.load_or_create(tmp_path / "key.pem")
    public = tmp_path / "public.pem"
    public.write_text(signer.public_pem())
    argv = ["audit", "verify", "--db", postgres.url, "--public-key", str(public)]

    assert main(argv) == 1  # nothing there yet: no tables, and verifying creates none
    assert "no audit and no audit_head table" in capsys.readouterr().out
    trail = AuditTrail(postgres.url, signer)
    trail.append("deviation.opened", "dev-1", "stream", {"rule": "tank-max"})
    trail.close()
    state = tmp_path / "verified.json"

    assert main([*argv, "--state", str(state)]) == 0
    assert "intact" in capsys.readouterr().out
    assert '"seq": 1' in state.read_text()

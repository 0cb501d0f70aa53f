"""The alert lifecycle on its own (time is given): one alert per deviation, no repeats from
redelivery, escalation on time per severity, resolution, reopening, and a restart in the middle
that changes nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from alerts.audit import AuditTrail
from alerts.corrective import CorrectiveActionInput
from alerts.lifecycle import AlertBook, Audience, Notice, State
from alerts.signing import Signer, Verifier
from tests.alerts.records import DEV1, change, dev

MIN = 60_000
T = 1_795_341_600_000


def told(notices: list[Notice]) -> list[tuple[str, str]]:
    return [(n.event, str(n.audience)) for n in notices]


@pytest.fixture
def book(tmp_path: Path) -> Iterator[AlertBook]:
    opened = AlertBook(tmp_path / "alerts.db")
    yield opened
    opened.close()


def test_a_deviation_raises_one_alert_and_redelivery_repeats_nothing(book: AlertBook) -> None:
    assert told(book.on_deviation(change("opened"), T)) == [("raised", "operator")]
    assert book.on_deviation(change("opened"), T + 1000) == []  # delivered again
    (alert,) = book.all()
    assert alert.state == State.RAISED
    assert alert.id == "plant-01/htst-1/pmo-htst.temperature"


def test_an_old_opening_delivered_again_after_the_close_does_not_reopen(book: AlertBook) -> None:
    book.on_deviation(change("opened"), T)
    book.on_deviation(change("closed"), T + MIN)

    assert book.on_deviation(change("opened"), T + 2 * MIN) == []
    assert book.all()[0].state == State.RESOLVED


def test_an_unacknowledged_critical_alert_climbs_operator_qa_regulator(book: AlertBook) -> None:
    book.on_deviation(change("opened"), T)

    assert book.due(T + 5 * MIN - 1) == []
    assert told(book.due(T + 5 * MIN)) == [("escalated", "qa")]
    assert book.due(T + 5 * MIN + 1) == []  # once
    assert told(book.due(T + 10 * MIN)) == [("escalated", "regulator")]
    assert told(book.due(T + 15 * MIN)) == [("escalated", "regulator")]  # reminded, not dropped


def test_acknowledging_stops_the_escalation_but_does_not_resolve(book: AlertBook) -> None:
    book.on_deviation(change("opened"), T)
    alert = book.acknowledge("plant-01/htst-1/pmo-htst.temperature", "operator:li", T + MIN)

    assert alert.state == State.ACKNOWLEDGED
    assert alert.acknowledged_by == "operator:li"
    assert book.due(T + 60 * MIN) == []


def test_closing_resolves_and_tells_everyone_who_was_told(book: AlertBook) -> None:
    book.on_deviation(change("opened"), T)
    book.due(T + 5 * MIN)  # QA was told too

    notices = book.on_deviation(change("closed"), T + 6 * MIN)

    assert told(notices) == [("resolved", "operator"), ("resolved", "qa")]
    assert book.on_deviation(change("closed"), T + 7 * MIN) == []
    assert book.due(T + 60 * MIN) == []


def test_a_returning_deviation_reopens_its_alert_within_the_hour(book: AlertBook) -> None:
    book.on_deviation(change("opened", DEV1), T)
    book.on_deviation(change("closed", DEV1), T + MIN)

    assert told(book.on_deviation(change("opened", dev(2)), T + 10 * MIN)) == [
        ("reopened", "operator")
    ]
    (alert,) = book.all()
    assert (alert.reopened, alert.deviations) == (1, [DEV1, dev(2)])
    book.on_deviation(change("closed", dev(2)), T + 11 * MIN)
    assert told(book.on_deviation(change("opened", dev(3)), T + 3 * 60 * MIN)) == [
        ("raised", "operator")  # hours later: a new alert
    ]


def test_a_minor_alert_only_reaches_the_operator(book: AlertBook) -> None:
    book.on_deviation(change("opened", severity="minor"), T)

    assert told(book.due(T + 60 * MIN)) == [("escalated", "operator")]


def test_a_restart_in_the_middle_changes_nothing(tmp_path: Path) -> None:
    first = AlertBook(tmp_path / "alerts.db")
    first.on_deviation(change("opened"), T)
    first.close()

    again = AlertBook(tmp_path / "alerts.db")
    assert again.on_deviation(change("opened"), T + MIN) == []  # no repeat after the restart
    assert told(again.due(T + 5 * MIN)) == [("escalated", "qa")]  # due as before
    again.close()


def test_every_transition_is_in_the_audit_trail(tmp_path: Path) -> None:
    signer = Signer.load_or_create(tmp_path / "key.pem")
    trail = AuditTrail(tmp_path / "audit.db", signer)
    book = AlertBook(tmp_path / "alerts.db", trail=trail)
    alert_id = "plant-01/htst-1/pmo-htst.temperature"

    book.on_deviation(change("opened"), T)
    book.due(T + 5 * MIN)
    book.acknowledge(alert_id, "qa:wang", T + 6 * MIN, "diverting, checking the heater")
    book.on_deviation(change("closed"), T + 8 * MIN)

    entries = list(trail.entries())
    assert [(e.kind, e.actor) for e in entries] == [
        ("alert.raised", "stream"),
        ("alert.escalated", "policy"),
        ("alert.acknowledged", "qa:wang"),
        ("alert.resolved", "stream"),
    ]
    assert entries[1].body["audiences"] == [str(Audience.QA)]
    assert trail.verify(Verifier([signer.public_pem().encode()])) == []
    book.close()
    trail.close()


def test_a_corrective_action_is_recorded_signed_and_in_the_trail(tmp_path: Path) -> None:
    signer = Signer.load_or_create(tmp_path / "key.pem")
    trail = AuditTrail(tmp_path / "audit.db", signer)
    book = AlertBook(tmp_path / "alerts.db", trail=trail)
    alert_id = "plant-01/htst-1/pmo-htst.temperature"
    book.on_deviation(change("opened"), T)

    given = CorrectiveActionInput(
        cause="steam valve stuck half open",
        action_taken="valve replaced, line re-sanitized",
        disposition="re-pasteurize",
        lot="L-2026-11-22-A",
    )
    action = book.record_action(alert_id, given, "qa:wang", "qa", T + 30 * MIN)

    assert book.actions(alert_id) == [action]
    assert action.signed_at == "2026-11-22T10:30:00.000Z"
    assert action.deviation_id == DEV1
    last = list(trail.entries())[-1]
    assert (last.kind, last.actor) == ("corrective_action.recorded", "qa:wang")
    assert last.body["meaning"].startswith("I performed or verified this corrective action")
    assert last.body["disposition"] == "re-pasteurize"
    later = book.due(T + 48 * 60 * MIN)  # never acknowledged: it escalates, but the action is in
    assert "action_overdue" not in [n.event for n in later]
    book.close()
    trail.close()


def test_an_overdue_corrective_action_escalates_to_qa_once(book: AlertBook) -> None:
    alert_id = "plant-01/htst-1/pmo-htst.temperature"
    book.on_deviation(change("opened"), T)
    book.acknowledge(alert_id, "operator:li", T + MIN)
    book.on_deviation(change("closed"), T + 2 * MIN)

    assert book.due(T + 24 * 60 * MIN - 1) == []
    assert told(book.due(T + 24 * 60 * MIN)) == [("action_overdue", "qa")]
    assert book.due(T + 25 * 60 * MIN) == []


def test_a_corrective_action_must_say_cause_action_and_a_known_disposition() -> None:
    with pytest.raises(ValidationError, match="disposition"):
        CorrectiveActionInput(cause="probe", action_taken="fixed it", disposition="sell anyway")
    with pytest.raises(ValidationError, match="cause"):
        CorrectiveActionInput(cause="", action_taken="fixed it", disposition="hold")

"""Alerts reach the right people once: e-mail through a real SMTP server (aiosmtpd, its own
process), webhooks to a local HTTP receiver that checks the HMAC; retries, dead letters, quiet
hours that never hold back a critical alert, and a restart in the middle that sends nothing
twice."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from alerts.delivery import Outbox
from alerts.lifecycle import AlertBook, Audience
from alerts.settings import Recipient, SmtpSettings
from milkguard import mqtt as mqtt_connect
from tests.alerts.conftest import Smtp, http_server
from tests.alerts.records import DEV1, change
from tests.helpers import TopicRecorder, wait_until
from tests.servers import Mosquitto, free_port

pytestmark = pytest.mark.integration

MIN = 60_000
T = round(datetime(2026, 11, 22, 10, 0, tzinfo=UTC).timestamp() * 1000)
SECRET = "webhook-secret"
HTST_ALERT = "plant-01/htst-1/pmo-htst.temperature"


@dataclass
class Receiver:
    url: str
    bodies: list[dict[str, Any]] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)  # status codes to give, then 200


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    got = Receiver("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            expected = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
            if self.headers["X-MilkGuard-Signature"] != f"sha256={expected}":
                self.send_response(401)
            elif got.answers:
                self.send_response(got.answers.pop(0))
            else:
                got.bodies.append(json.loads(body))
                self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    with http_server(Handler) as port:
        got.url = f"http://127.0.0.1:{port}/hook"
        yield got


def people(receiver: Receiver) -> list[Recipient]:
    return [
        Recipient(name="li", audience=Audience.OPERATOR, sites=["plant-01"], email="li@plant"),
        Recipient(name="ops-2", audience=Audience.OPERATOR, sites=["plant-02"], email="o@p2"),
        Recipient(
            name="wang",
            audience=Audience.QA,
            email="wang@dairy",
            quiet_hours="22:00-06:00",
        ),
        Recipient(name="authority", audience=Audience.REGULATOR, webhook=receiver.url),
    ]


def outbox(path: Path, smtp: Smtp, receiver: Receiver) -> Outbox:
    return Outbox(
        path,
        people(receiver),
        smtp=SmtpSettings(port=smtp.port, sender="milkguard@dairy"),
        webhook_secret=SecretStr(SECRET),
        backoff_s=1.0,
    )


def test_the_right_people_get_the_right_message_once_through_a_restart(
    tmp_path: Path, smtp: Smtp, receiver: Receiver
) -> None:
    book, box = AlertBook(tmp_path / "alerts.db"), outbox(tmp_path / "out.db", smtp, receiver)
    box.queue(book.on_deviation(change("opened"), T), T)
    box.deliver_due(T)
    box.queue(book.due(T + 5 * MIN), T + 5 * MIN)  # not acknowledged: QA
    book.close()
    box.close()  # a restart, before the regulator's turn and with the change delivered again

    book, box = AlertBook(tmp_path / "alerts.db"), outbox(tmp_path / "out.db", smtp, receiver)
    box.queue(book.on_deviation(change("opened"), T + 6 * MIN), T + 6 * MIN)
    box.deliver_due(T + 6 * MIN)
    box.queue(book.due(T + 10 * MIN), T + 10 * MIN)  # still not acknowledged: the regulator
    box.deliver_due(T + 10 * MIN)
    box.queue(book.on_deviation(change("closed"), T + 11 * MIN), T + 11 * MIN)
    box.deliver_due(T + 11 * MIN)

    subject = "[CRITICAL] {}: plant-01/htst-1 pmo-htst.temperature"
    wait_until(lambda: len(smtp.received()) == 4, 10, "four e-mails")
    assert smtp.received() == sorted(
        [
            ("li@plant", subject.format("raised")),
            ("wang@dairy", subject.format("escalated")),  # quiet hours: critical goes through
            ("li@plant", subject.format("resolved")),
            ("wang@dairy", subject.format("resolved")),
        ]
    )
    assert [(b["event"], b["audience"]) for b in receiver.bodies] == [
        ("escalated", "regulator"),
        ("resolved", "regulator"),
    ]
    assert receiver.bodies[0]["deviation"]["peak"] == 71.2
    book.close()
    box.close()


def test_quiet_hours_hold_back_a_major_alert_until_they_end(
    tmp_path: Path, smtp: Smtp, receiver: Receiver
) -> None:
    night = round(datetime(2026, 11, 22, 23, 0, tzinfo=UTC).timestamp() * 1000)
    book, box = AlertBook(tmp_path / "alerts.db"), outbox(tmp_path / "out.db", smtp, receiver)
    box.queue(book.on_deviation(change("opened", severity="major"), night), night)
    box.queue(book.due(night + 15 * MIN), night + 15 * MIN)  # escalated to QA at 23:15

    box.deliver_due(night + 16 * MIN)
    wait_until(lambda: len(smtp.received()) == 1, 10)
    assert [to for to, _ in smtp.received()] == ["li@plant"]  # wang sleeps
    six = round(datetime(2026, 11, 23, 6, 0, tzinfo=UTC).timestamp() * 1000)
    box.deliver_due(six)
    wait_until(lambda: len(smtp.received()) == 2, 10, "wang's e-mail at 06:00")
    book.close()
    box.close()


def test_a_failing_webhook_is_retried_and_one_refused_is_dead_lettered(
    tmp_path: Path, smtp: Smtp, receiver: Receiver
) -> None:
    book, box = AlertBook(tmp_path / "alerts.db"), outbox(tmp_path / "out.db", smtp, receiver)
    box.queue(book.on_deviation(change("opened"), T), T)
    for minutes in (5, 10):
        box.queue(book.due(T + minutes * MIN), T + minutes * MIN)
    receiver.answers = [503, 503]

    box.deliver_due(T + 10 * MIN)  # 503
    box.deliver_due(T + 10 * MIN + 500)  # not due yet: the first retry waits 1-2 s
    box.deliver_due(T + 10 * MIN + 2000)  # 503 again
    box.deliver_due(T + 10 * MIN + 6000)  # delivered: the second retry waits 2-4 s
    assert [b["event"] for b in receiver.bodies] == ["escalated"]
    assert box.retried == 2

    receiver.answers = [400]
    box.queue(book.on_deviation(change("closed"), T + 20 * MIN), T + 20 * MIN)
    box.deliver_due(T + 20 * MIN)
    ((channel, target, reason),) = box.dead_letters()
    assert (channel, target) == ("webhook", receiver.url)
    assert reason.startswith("refused for good: HTTP 400")
    book.close()
    box.close()


def test_an_unreachable_mail_server_is_retried_then_dead_lettered(
    tmp_path: Path, receiver: Receiver
) -> None:
    dead_port = free_port()
    recipient = Recipient(name="li", audience=Audience.OPERATOR, email="li@plant")
    box = Outbox(
        tmp_path / "out.db",
        [recipient],
        smtp=SmtpSettings(port=dead_port, timeout_s=1),
        max_attempts=3,
        backoff_s=1.0,
    )
    book = AlertBook(tmp_path / "alerts.db")
    box.queue(book.on_deviation(change("opened"), T), T)

    for after_ms in (0, 2000, 6000):  # retries wait 1-2 s, then 2-4 s
        box.deliver_due(T + after_ms)

    ((channel, target, reason),) = box.dead_letters()
    assert (channel, target) == ("email", "li@plant")
    assert reason.startswith("failed 3 times, last:")
    # the alert's page says who was told, when, and what failed
    told = {(d.channel, d.status, d.queued_ms, d.sent_ms) for d in box.deliveries(HTST_ALERT)}
    assert told == {("console", "sent", T, T), ("email", "dead", T, None)}
    [mail] = [d for d in box.deliveries(HTST_ALERT) if d.channel == "email"]
    assert (mail.event, mail.recipient, mail.level) == ("raised", "li", 0)
    assert mail.error is not None
    assert mail.error.startswith("failed 3 times")
    assert box.deliveries("plant-01/htst-1") == []  # a prefix of the id is not the alert
    book.close()
    box.close()


def test_an_outbox_written_before_the_delivery_times_gains_them_empty(tmp_path: Path) -> None:
    import sqlite3  # noqa: PLC0415

    old = sqlite3.connect(tmp_path / "out.db")
    old.execute(
        "CREATE TABLE deliveries (key TEXT PRIMARY KEY, channel TEXT NOT NULL, target TEXT NOT "
        "NULL, subject TEXT NOT NULL, text TEXT NOT NULL, data TEXT NOT NULL, next_ms BIGINT "
        "NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, status TEXT NOT NULL DEFAULT "
        "'pending', error TEXT)"
    )
    old.execute(
        "INSERT INTO deliveries VALUES (?, 'console', 'li', 's', 't', '{}', ?, 1, 'sent', NULL)",
        (f"{HTST_ALERT}|raised|0|0|{T}|li|console", T),
    )
    old.commit()
    old.close()

    box = Outbox(tmp_path / "out.db", [])
    [told] = box.deliveries(HTST_ALERT)
    box.close()
    assert (told.recipient, told.status, told.queued_ms, told.sent_ms) == ("li", "sent", None, None)


def test_every_notice_goes_to_the_alert_topic_once(tmp_path: Path, mosquitto: Mosquitto) -> None:
    address = mqtt_connect.BrokerAddress(port=mosquitto.port)
    recorder = TopicRecorder(address, "milkguard/v1/alerts/#")
    connection = mqtt_connect.connect(address, "alert-service")
    box = Outbox(tmp_path / "out.db", [], mqtt=connection)
    book = AlertBook(tmp_path / "alerts.db")
    try:
        notices = book.on_deviation(change("opened"), T)
        box.queue(notices, T)
        box.queue(notices, T)  # the same notice again: queued once
        box.deliver_due(T)
        wait_until(lambda: len(recorder.messages) == 1, 10, "the notice on MQTT")
        box.deliver_due(T + MIN)
    finally:
        connection.close()
        recorder.close()
        book.close()
        box.close()

    ((topic, body),) = recorder.messages
    assert topic == "milkguard/v1/alerts/plant-01/htst-1"
    assert (body["event"], body["audience"], body["deviation"]["id"]) == (
        "raised",
        "operator",
        DEV1,
    )

"""Who is told, and telling them: e-mail over SMTP, webhooks signed with HMAC, the MQTT alert
topic, the console.

Routing: a notice goes to every recipient of its audience whose sites and severities match.
During a recipient's quiet hours a notice waits until they end, unless it is critical: quiet
hours never hold back a critical alert.

Delivery goes through an outbox in SQLite. A notice is queued once per recipient and channel
(keyed by alert, event, reopening and escalation level), so a notice produced twice, or again
after a restart, is sent once. Sending is retried with exponential backoff (the n-th retry
waits between ``backoff_s * 2**(n-1)`` and twice that, jittered so that messages that failed
together, e.g. while the mail server was down, are not all retried at one instant); a message
refused for good (a webhook's 4xx other than 408/429) or still failing after ``max_attempts``
is dead-lettered with the reason, and counted.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import logging
import smtplib
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from alerts.lifecycle import Notice
from alerts.reports import causes_of, clock_of
from alerts.settings import Recipient, SmtpSettings
from alerts.store import Database
from milkguard.backoff import Backoff
from milkguard.contract.v1 import alert_topic
from milkguard.logs import mask_url
from milkguard.mqtt import Connection

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Message:
    """What is said, whatever the channel."""

    subject: str
    text: str
    data: dict[str, Any]


def compose(notice: Notice) -> Message:
    """The message of a notice: a subject line people can sort by, the facts, the record."""
    alert, d = notice.alert, notice.alert.deviation
    subject = (
        f"[{alert.severity.upper()}] {notice.event}: {alert.site}/{alert.asset} {alert.rule_id}"
    )
    limit = d.get("limit") or {}
    cause = causes_of(d)
    text = "\n".join(
        [
            f"Alert {alert.id} was {notice.event} (you are told as {notice.audience}).",
            f"Deviation {d.get('id')}: {d.get('kind')} on {', '.join(d.get('channels', []))}",
            *([f"Cause: {cause}"] if cause else []),
            f"Limit: min {limit.get('min')} max {limit.get('max')} {limit.get('unit', '')}"
            f" ({limit.get('source', '')})",
            f"Began {d.get('start')}, detected {d.get('detected')}, ended {d.get('end') or '-'}",
            f"Times on {clock_of(d)}",
            f"Worst value: {d.get('peak')}; required action: {d.get('action')}",
        ]
    )
    data = {
        "event": notice.event,
        "audience": str(notice.audience),
        "alert": {"id": alert.id, "state": str(alert.state), "severity": alert.severity},
        "deviation": d,
    }
    return Message(subject, text, data)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    key TEXT PRIMARY KEY,
    channel TEXT NOT NULL,
    target TEXT NOT NULL,
    subject TEXT NOT NULL,
    text TEXT NOT NULL,
    data TEXT NOT NULL,
    next_ms BIGINT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL DEFAULT 'pending',
    error TEXT
);
"""

#: Columns added after the first release: an outbox written before them gains them, empty.
_ADDED_COLUMNS = (("queued_ms", "BIGINT"), ("sent_ms", "BIGINT"))

_EVENTS = frozenset({"raised", "escalated", "reopened", "resolved", "action_overdue"})


@dataclass(frozen=True)
class Delivery:
    """One message of an alert to one recipient on one channel, as the page shows it: who was
    told of what and when, or why not."""

    event: str
    level: int
    recipient: str  # a recipient's name, or the audience for the MQTT alert topic
    channel: str
    target: str  # as it may be shown: a webhook's URL masked
    status: str  # pending, sent, dead
    attempts: int
    queued_ms: int | None
    sent_ms: int | None
    next_ms: int | None
    error: str | None


@dataclass(frozen=True)
class _Pending:
    """One stored delivery, as its columns."""

    key: str
    channel: str
    target: str
    subject: str
    text: str
    data: str
    attempts: int


_LEASE_MS = 120_000  # a claimed delivery is another node's to retry after this


class Permanent(Exception):  # noqa: N818 - reads as what the failure is
    """The receiver refused the message for good: retrying cannot help."""


class Outbox:
    """Notices routed to recipients' channels, sent once, retried, dead-lettered."""

    def __init__(
        self,
        path: Path | str,
        recipients: list[Recipient],
        *,
        smtp: SmtpSettings | None = None,
        webhook_secret: SecretStr | None = None,
        mqtt: Connection | None = None,
        max_attempts: int = 8,
        backoff_s: float = 2.0,
    ) -> None:
        self.recipients = recipients
        self.smtp = smtp or SmtpSettings()
        self._secret = webhook_secret
        #: with a connection, every notice also goes to milkguard/v1/alerts/{site}/{asset}
        self.mqtt = mqtt
        self.max_attempts = max_attempts
        # "equal" jitter: the delay follows from the attempt count kept in the database, and
        # is never shorter than the plain doubling schedule
        self._retry = Backoff(backoff_s, backoff_s * 2**max_attempts, jitter="equal")
        self.sent = self.retried = self.dead = 0
        self._db = Database(path, _SCHEMA, "the alert outbox")
        self._add_columns()

    def _add_columns(self) -> None:
        if self._db.dialect == "postgresql":
            for name, kind in _ADDED_COLUMNS:  # IF NOT EXISTS: nodes starting together agree
                self._db.execute(f"ALTER TABLE deliveries ADD COLUMN IF NOT EXISTS {name} {kind}")
            return
        have = {row[1] for row in self._db.execute("PRAGMA table_info(deliveries)")}
        for name, kind in _ADDED_COLUMNS:
            if name not in have:
                self._db.execute(f"ALTER TABLE deliveries ADD COLUMN {name} {kind}")

    def deliveries(self, alert_id: str) -> list[Delivery]:
        """Every message of an alert, in the order queued: who was told, when, what failed."""
        prefix = f"{alert_id}|"
        rows = self._db.execute(
            "SELECT key, channel, target, status, attempts, queued_ms, sent_ms, next_ms, error "
            "FROM deliveries WHERE substr(key, 1, ?) = ? ORDER BY queued_ms, key",
            (len(prefix), prefix),
        )
        found = []
        for key, channel, target, status, attempts, queued, sent, next_ms, error in rows:
            # key: alert|event|reopened|level|raised_ms|recipient|channel (recipient may hold |)
            parts = key[len(prefix) :].split("|", 4)
            if len(parts) != 5 or parts[0] not in _EVENTS or not parts[2].isdigit():
                continue  # another alert's, whose id merely starts like this one's
            recipient = parts[4].rpartition("|")[0]
            found.append(
                Delivery(
                    event=parts[0],
                    level=int(parts[2]),
                    recipient=recipient,
                    channel=channel,
                    target=shown_target(channel, target),
                    status=status,
                    attempts=attempts,
                    queued_ms=queued,
                    sent_ms=sent,
                    next_ms=None if status != "pending" else next_ms,
                    error=error,
                )
            )
        return found

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def queue(self, notices: list[Notice], now_ms: int) -> int:
        """Route notices to recipients' channels (and, with an MQTT connection, each notice to
        its alert topic); returns how many deliveries were new."""
        now = datetime.fromtimestamp(now_ms / 1000, UTC)
        added = 0
        for notice in notices:
            message = compose(notice)
            alert = notice.alert
            stem = f"{alert.id}|{notice.event}|{alert.reopened}|{alert.level}|{alert.raised_ms}"
            deliveries: list[tuple[str, str, str, int]] = []  # (key, channel, target, when)
            if self.mqtt is not None:
                topic = alert_topic(alert.site, alert.asset)
                deliveries.append((f"{stem}|{notice.audience}|mqtt", "mqtt", topic, now_ms))
            for recipient in self.recipients:
                if not recipient.wants(notice):
                    continue
                quiet = recipient.quiet_until(now)
                held = quiet is not None and alert.severity != "critical"
                start_ms = round(quiet.timestamp() * 1000) if held and quiet else now_ms
                channels = [("console", recipient.name)]
                if recipient.email:
                    channels.append(("email", recipient.email))
                if recipient.webhook:
                    channels.append(("webhook", recipient.webhook.get_secret_value()))
                deliveries += [
                    (f"{stem}|{recipient.name}|{channel}", channel, target, start_ms)
                    for channel, target in channels
                ]
            for key, channel, target, when in deliveries:
                added += self._db.execute(
                    "INSERT INTO deliveries (key, channel, target, subject, text, data, next_ms, "
                    "queued_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (
                        key,
                        channel,
                        target,
                        message.subject,
                        message.text,
                        json.dumps(message.data),
                        when,
                        now_ms,
                    ),
                ).rowcount
        return added

    def deliver_due(self, now_ms: int) -> int:
        """Send what is due; returns how many were sent now."""
        rows = self._db.execute(
            "SELECT key, channel, target, subject, text, data, attempts, next_ms FROM deliveries "
            "WHERE status = 'pending' AND next_ms <= ? ORDER BY next_ms",
            (now_ms,),
        ).fetchall()
        sent = 0
        for row in rows:
            pending = _Pending(*row[:7])
            key, channel, target = pending.key, pending.channel, pending.target
            # claim it for a lease: another node (or this one, restarted) sending the same
            # delivery now would find it taken; if this node dies, the lease runs out
            claimed = self._db.execute(
                "UPDATE deliveries SET next_ms = ? WHERE key = ? AND status = 'pending' "
                "AND next_ms = ?",
                (now_ms + _LEASE_MS, key, row[7]),
            ).rowcount
            if not claimed:
                continue
            try:
                self._send(pending)
            except Permanent as exc:
                self._dead(key, f"refused for good: {exc}")
                continue
            except (OSError, smtplib.SMTPException) as exc:
                failed = pending.attempts + 1
                if failed >= self.max_attempts:
                    self._dead(key, f"failed {failed} times, last: {exc}")
                    continue
                self.retried += 1
                wait = round(self._retry.delay(failed) * 1000)
                self._db.execute(
                    "UPDATE deliveries SET attempts = ?, next_ms = ?, error = ? WHERE key = ?",
                    (failed, now_ms + wait, str(exc), key),
                )
                log.warning(
                    "alert.delivery_failed",
                    extra={
                        "channel": channel,
                        "target": shown_target(channel, target),
                        "error": str(exc),
                        "retry_in_ms": wait,
                    },
                )
                continue
            self._db.execute(
                "UPDATE deliveries SET status = 'sent', attempts = ?, sent_ms = ? WHERE key = ?",
                (pending.attempts + 1, now_ms, key),
            )
            self.sent += 1
            sent += 1
        return sent

    def dead_letters(self) -> list[tuple[str, str, str]]:
        """(channel, target, reason) of every message given up on (the target in full: this is
        for the operator's own tools, not for logs)."""
        return list(
            self._db.execute(
                "SELECT channel, target, error FROM deliveries WHERE status = 'dead' ORDER BY key"
            )
        )

    def _dead(self, key: str, reason: str) -> None:
        self.dead += 1
        self._db.execute(
            "UPDATE deliveries SET status = 'dead', error = ? WHERE key = ?", (reason, key)
        )
        log.error("alert.dead_letter", extra={"delivery": key, "reason": reason})

    def _send(self, pending: _Pending) -> None:
        if pending.channel == "console":
            log.warning("alert", extra={"to": pending.target, "subject": pending.subject})
        elif pending.channel == "email":
            self._email(pending.target, pending.subject, pending.text)
        elif pending.channel == "mqtt":
            self._publish(pending.target, pending.data)
        else:
            self._webhook(pending.target, pending.key, pending.data)

    def _publish(self, topic: str, data: str) -> None:
        assert self.mqtt is not None
        self.mqtt.publish(topic, data.encode())
        if not self.mqtt.wait_acknowledged(self.smtp.timeout_s):
            raise OSError(f"the MQTT broker did not acknowledge the notice on {topic}")

    def _email(self, to: str, subject: str, text: str) -> None:
        smtp = self.smtp
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = smtp.sender, to, subject
        message.set_content(text)
        with smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout_s) as server:
            if smtp.starttls:
                server.starttls()
            if smtp.username and smtp.password:
                server.login(smtp.username, smtp.password.get_secret_value())
            server.send_message(message)

    def _webhook(self, url: str, key: str, data: str) -> None:
        body = data.encode()
        headers = {"Content-Type": "application/json", "X-MilkGuard-Delivery": key}
        if self._secret is not None:
            digest = hmac.new(self._secret.get_secret_value().encode(), body, hashlib.sha256)
            headers["X-MilkGuard-Signature"] = f"sha256={digest.hexdigest()}"
        shown = mask_url(url, hide_path=True)
        url = _basic_auth(url, headers)
        try:
            request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
            with urllib.request.urlopen(request, timeout=10):  # noqa: S310 - configured URL
                return
        except urllib.error.HTTPError as exc:
            if 400 <= exc.code < 500 and exc.code not in (408, 429):
                raise Permanent(f"HTTP {exc.code} from {shown}") from None
            raise OSError(f"HTTP {exc.code} from {shown}") from None
        except (OSError, http.client.HTTPException) as exc:
            # urllib's errors may quote the URL or a part of it: say what failed without it
            reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None)
            raise OSError(f"{reason or type(exc).__name__} from {shown}") from None
        except ValueError:
            raise Permanent(f"webhook URL {shown} cannot be used") from None


def _basic_auth(url: str, headers: dict[str, str]) -> str:
    """``https://user:password@host/...`` as HTTP basic authentication (urllib would take the
    user part for the host): the header is set, the URL returned without it."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None:
        return url
    user = urllib.parse.unquote(parts.username)
    password = urllib.parse.unquote(parts.password or "")
    headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def shown_target(channel: str, target: str) -> str:
    """A delivery's target as it may be logged: a webhook's URL masked, others as they are."""
    return mask_url(target, hide_path=True) if channel == "webhook" else target

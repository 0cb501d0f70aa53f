"""``milkguard alerts run``: deviations in from MQTT, alerts out to the people who must act.

It subscribes to every deviation change the stream publishes (``milkguard/v1/deviations/#``,
QoS 1, a persistent session, so changes published while it is down wait for it), drives the
alert lifecycle, publishes every notice on ``milkguard/v1/alerts/{site}/{asset}`` and hands it
to the outbox (e-mail, webhooks, console). Once a second it escalates what is overdue and sends
what is due. Everything lives in SQLite under ``alerts.directory``: a restart, even a kill,
changes nothing but the delay.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time

from alerts.audit import AuditTrail
from alerts.delivery import Outbox
from alerts.lifecycle import AlertBook, Audience, Escalation, Notice
from alerts.signing import Signer
from milkguard import mqtt as mqtt_connect
from milkguard.contract.v1 import TOPIC_ROOT
from milkguard.mqtt import BrokerAddress
from milkguard.settings import AlertSettings

log = logging.getLogger(__name__)

DEVIATION_SUBSCRIPTION = f"{TOPIC_ROOT}/deviations/#"


def alert_topic(site: str, asset: str) -> str:
    """Where notices of an asset's alerts are published."""
    return f"{TOPIC_ROOT}/alerts/{site}/{asset}"


class AlertService:
    """The lifecycle, the outbox and the trail, fed from MQTT."""

    def __init__(self, settings: AlertSettings, broker: BrokerAddress, client_id: str) -> None:
        directory = settings.directory
        escalation = settings.escalation
        operator, qa, regulator = Audience.OPERATOR, Audience.QA, Audience.REGULATOR
        policy = {
            "critical": Escalation(
                (operator, qa, regulator), escalation.critical_s, escalation.critical_action_s
            ),
            "major": Escalation((operator, qa), escalation.major_s, escalation.major_action_s),
            "minor": Escalation((operator,), escalation.minor_s),
        }
        self.trail = AuditTrail(
            directory / "audit.db", Signer.load_or_create(directory / "key.pem")
        )
        self.book = AlertBook(
            directory / "alerts.db",
            policy=policy,
            reopen_within_s=settings.reopen_within_s,
            trail=self.trail,
        )
        self.outbox = Outbox(
            directory / "outbox.db",
            settings.recipients,
            smtp=settings.smtp,
            webhook_secret=settings.webhook_secret,
            max_attempts=settings.max_attempts,
        )
        self._broker = broker
        self._client_id = client_id
        self._incoming: queue.Queue[bytes] = queue.Queue(maxsize=10_000)
        self.subscribed = threading.Event()
        self.rejected = 0

    def run(self, stop: threading.Event) -> None:
        """Until ``stop``: take deviation changes, escalate, deliver."""

        def subscribe(client: object) -> None:
            client.on_subscribe = lambda *_: self.subscribed.set()  # type: ignore[attr-defined]
            client.subscribe(DEVIATION_SUBSCRIPTION, qos=1)  # type: ignore[attr-defined]

        connection = mqtt_connect.connect(
            self._broker,
            self._client_id,
            clean_session=False,
            on_message=lambda client, userdata, message: self._incoming.put(bytes(message.payload)),
            on_connect_extra=subscribe,
        )
        try:
            while not stop.is_set():
                self._take(connection, timeout_s=1.0)
                now = _now_ms()
                self._tell(connection, self.book.due(now), now)
                self.outbox.deliver_due(now)
        finally:
            connection.close()
            self.book.close()
            self.outbox.close()
            self.trail.close()

    def _take(self, connection: mqtt_connect.Connection, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                payload = self._incoming.get(timeout=left)
            except queue.Empty:
                return
            try:
                change = json.loads(payload)
                notices = self.book.on_deviation(change, _now_ms())
            except (ValueError, KeyError, TypeError) as exc:
                self.rejected += 1
                log.error("alerts.bad_deviation", extra={"error": repr(exc)})
                continue
            self._tell(connection, notices, _now_ms())
            self.outbox.deliver_due(_now_ms())

    def _tell(self, connection: mqtt_connect.Connection, notices: list[Notice], now: int) -> None:
        if not notices:
            return
        for notice in notices:
            alert = notice.alert
            body = {
                "event": notice.event,
                "audience": str(notice.audience),
                "alert": alert.id,
                "state": str(alert.state),
                "severity": alert.severity,
                "deviation": alert.deviation.get("id"),
            }
            connection.publish(alert_topic(alert.site, alert.asset), json.dumps(body).encode())
        self.outbox.queue(notices, now)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000

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
from pathlib import Path
from typing import Any

from alerts.audit import AuditTrail
from alerts.delivery import Outbox
from alerts.lifecycle import AlertBook, Audience, Escalation, Notice
from alerts.reports import issue
from alerts.signing import Signer
from milkguard import mqtt as mqtt_connect
from milkguard.contract.v1 import TOPIC_ROOT
from milkguard.mqtt import BrokerAddress
from milkguard.settings import AlertSettings

log = logging.getLogger(__name__)

DEVIATION_SUBSCRIPTION = f"{TOPIC_ROOT}/deviations/#"


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
        shared = settings.database.get_secret_value() if settings.database else None

        def where(name: str) -> Path | str:
            return shared or directory / name

        self.signer = Signer.load_or_create(directory / "signing-key.pem")
        self.trail = AuditTrail(where("audit.db"), self.signer)
        self.book = AlertBook(
            where("alerts.db"),
            policy=policy,
            reopen_within_s=settings.reopen_within_s,
            trail=self.trail,
        )
        self.outbox = Outbox(
            where("outbox.db"),
            settings.recipients,
            smtp=settings.smtp,
            webhook_secret=settings.webhook_secret,
            max_attempts=settings.max_attempts,
        )
        self._settings = settings
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
        self.outbox.mqtt = connection  # notices to the alert topic go through the outbox too
        web = self._serve_api()
        try:
            while not stop.is_set():
                self._take(timeout_s=1.0)
                now = _now_ms()
                self._tell(self.book.due(now), now)
                self.outbox.deliver_due(now)
        finally:
            if web is not None:
                web.should_exit = True
                self._web_thread.join(timeout=10)
            connection.close()
            self.book.close()
            self.outbox.close()
            self.trail.close()

    def _serve_api(self) -> Any:
        """The HTTP API and the operators' page, in a thread, if ``alerts.http_port`` is set."""
        settings = self._settings
        if settings.http_port is None:
            return None
        import uvicorn  # noqa: PLC0415

        from alerts.api import create_app  # noqa: PLC0415

        app = create_app(settings.users, self.book, self.trail, settings.directory / "reports")
        config = uvicorn.Config(
            app, host=settings.http_host, port=settings.http_port, log_level="warning"
        )
        server = uvicorn.Server(config)
        self._web_thread = threading.Thread(target=server.run, name="alerts-http", daemon=True)
        self._web_thread.start()
        log.info("alerts.http", extra={"url": f"http://{settings.http_host}:{settings.http_port}/"})
        return server

    def _take(self, timeout_s: float) -> None:
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
            self._tell(notices, _now_ms())
            self.outbox.deliver_due(_now_ms())

    def _tell(self, notices: list[Notice], now: int) -> None:
        for notice in notices:
            alert = notice.alert
            if notice.event in ("raised", "reopened") and alert.severity == "critical":
                self._report(alert.deviation)
        self.outbox.queue(notices, now)

    def _report(self, deviation: dict[str, Any]) -> None:
        """Each critical deviation yields a signed regulator report as soon as it is raised."""
        settings = self._settings
        try:
            path = issue(
                deviation,
                signer=self.signer,
                trail=self.trail,
                out_dir=settings.directory / "reports",
                deadline_h=settings.report_deadline_h,
                issuer=settings.issuer,
            )
        except (KeyError, ValueError) as exc:
            failed = {"deviation": deviation.get("id"), "error": repr(exc)}
            log.error("alerts.report_failed", extra=failed)
            return
        log.info("alerts.report_issued", extra={"report": str(path)})


def _now_ms() -> int:
    return time.time_ns() // 1_000_000

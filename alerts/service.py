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
import socket
import ssl
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
from milkguard.errors import ConfigError
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
        """The HTTP API and the operators' page, in a thread, if ``alerts.http_port`` is set.

        The port is bound here, before the thread starts, so that a taken port or a bad
        certificate is a :class:`ConfigError` the command reports (exit status 2), not a
        failure lost in the server's thread.
        """
        settings = self._settings
        if settings.http_port is None:
            return None
        import uvicorn  # noqa: PLC0415

        from alerts.api import create_app  # noqa: PLC0415
        from alerts.gate import FailedLogins  # noqa: PLC0415

        host, port = settings.http_host, settings.http_port
        logins = FailedLogins(
            allowed=settings.failed_logins_allowed, max_lockout_s=settings.lockout_max_s
        )
        app = create_app(
            settings.users,
            self.book,
            self.trail,
            settings.directory / "reports",
            max_body_bytes=settings.max_body_bytes,
            logins=logins,
        )
        tls: dict[str, Any] = {}
        if settings.tls_cert is not None and settings.tls_key is not None:
            tls = {"ssl_certfile": str(settings.tls_cert), "ssl_keyfile": str(settings.tls_key)}
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            log_config=None,  # uvicorn's records go through MilkGuard's handler: one format, masked
            **tls,
        )
        try:
            if settings.tls_cert is not None:
                # an encrypted key fails here, where OpenSSL would otherwise ask on the terminal
                probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                probe.load_cert_chain(settings.tls_cert, settings.tls_key, password=lambda: b"")
            config.load()  # reads the certificate and key now
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise ConfigError(
                f"cannot serve the alerts API over HTTPS with alerts.tls_cert {settings.tls_cert} "
                f"and alerts.tls_key {settings.tls_key}: {exc}. Give a PEM certificate and its "
                "unencrypted private key."
            ) from exc
        listening = _bind(host, port)
        server = uvicorn.Server(config)
        failure: list[BaseException] = []

        def serve() -> None:
            try:
                server.run(sockets=[listening])
            except BaseException as exc:  # uvicorn exits with SystemExit
                failure.append(exc)
            finally:
                listening.close()

        self._web_thread = threading.Thread(target=serve, name="alerts-http", daemon=True)
        self._web_thread.start()
        deadline = time.monotonic() + 30
        while not server.started and self._web_thread.is_alive():
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
        if not server.started:
            server.should_exit = True
            raise ConfigError(
                f"the alerts API did not start on {host}:{port}: "
                f"{failure[0] if failure else 'it did not become ready within 30 s'}"
            )
        scheme = "https" if tls else "http"
        log.info(
            "alerts.http",
            extra={"url": f"{scheme}://{host}:{port}/", "max_body_bytes": settings.max_body_bytes},
        )
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


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket for the API, or a :class:`ConfigError` naming the port and the fix."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listening = socket.socket(family, socket.SOCK_STREAM)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # not a LISTENING one
    try:
        listening.bind((host, port))
    except OSError as exc:
        listening.close()
        raise ConfigError(
            f"cannot serve the alerts API on {host}:{port}: {exc.strerror or exc}. Set another "
            "port (alerts.http_port in the settings file, or MILKGUARD_ALERTS__HTTP_PORT), or "
            "stop what listens there."
        ) from exc
    listening.set_inheritable(True)
    return listening


def _now_ms() -> int:
    return time.time_ns() // 1_000_000

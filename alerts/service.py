"""``milkguard alerts run``: deviations in from MQTT, alerts out to the people who must act.

It subscribes to every deviation change the stream publishes (``milkguard/v1/deviations/#``,
QoS 1, a persistent session, so changes published while it is down wait for it), drives the
alert lifecycle, publishes every notice on ``milkguard/v1/alerts/{site}/{asset}`` and hands it
to the outbox (e-mail, webhooks, console). Once a second it escalates what is overdue and sends
what is due. Everything lives in SQLite under ``alerts.directory``: a restart, even a kill,
changes nothing but the delay.

Only what a configured stream key signed is believed (``alerts.stream_keys``): every other
message is dead-lettered with its reason (:mod:`alerts.deadletters`), counted and logged, and
raises nothing. A change applied before is a counted duplicate; an ``opened`` after its
deviation's ``closed`` is counted as stale and changes nothing.

With ``alerts.devices.enabled`` (the default) the same connection also subscribes, read-only and
at QoS 0, to the gateways' retained status and their batches, kept in a bounded in-memory
window for the device page (:mod:`alerts.devices`). QoS 0 on the persistent session: a broker
queues nothing of them while the service is away (Mosquitto with ``queue_qos0_messages
false``, as generated; amqtt delivers at the subscription's QoS), so the deviations' session
costs the broker no batches. Not a second connection: where Mosquitto makes the user name the
client id (``use_username_as_clientid``), a second one would take over, and with a clean
session wipe, the session the deviations wait in.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import msgspec

from alerts.audit import AuditTrail
from alerts.deadletters import MAX_KEPT_BYTES, DeadLetterStore, clip
from alerts.delivery import Outbox
from alerts.devices import DeviceWindow
from alerts.lifecycle import AlertBook, Audience, Escalation, Notice, Taken
from alerts.live import LiveHub
from alerts.reports import issue
from alerts.settings import AlertSettings
from alerts.signing import Signer
from milkguard import mqtt as mqtt_connect
from milkguard.broker_security import is_loopback
from milkguard.contract.v1 import TOPIC_ROOT, deviation_topic
from milkguard.errors import ConfigError
from milkguard.mqtt import BrokerAddress
from milkguard.signing import MAX_ENVELOPE_BYTES, UntrustedRecord, Verifier, unseal

log = logging.getLogger(__name__)

DEVIATION_SUBSCRIPTION = f"{TOPIC_ROOT}/deviations/#"
#: what the device page reads (the alerts role may read both), at QoS 0
DEVICE_SUBSCRIPTIONS = (f"{TOPIC_ROOT}/gw/+/+/status", f"{TOPIC_ROOT}/gw/+/+/batch")
_GATEWAY_TOPICS = f"{TOPIC_ROOT}/gw/"


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
        if not settings.stream_keys:
            raise ConfigError(
                "alerts.stream_keys is empty: the alert service believes only deviations signed "
                "by a stream key it is given. On the stream's host run `milkguard stream "
                "public-key --output stream.pem` (with the stream's settings), copy stream.pem "
                "here and set alerts.stream_keys: [path/to/stream.pem]"
            )
        self.verifier = Verifier.from_files(settings.stream_keys, refuse_test_keys=True)
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
        self.dead_letters = DeadLetterStore(where("deadletters.db"))
        shown = settings.devices
        self.devices = (
            DeviceWindow(
                window_s=shown.window_h * 3600,
                bucket_s=shown.bucket_s,
                max_gateways=shown.max_gateways,
                max_channels=shown.max_channels,
            )
            if shown.enabled
            else None
        )
        window = self.devices
        self._topics = [(DEVIATION_SUBSCRIPTION, 1)]
        if window is not None:
            self._topics += [(topic, 0) for topic in DEVICE_SUBSCRIPTIONS]
        self.hub = LiveHub(
            self.book, devices_version=(lambda: window.version) if window is not None else None
        )
        # (topic, payload, size, digest): an oversized payload waits as its prefix and digest only
        self._incoming: queue.Queue[tuple[str, bytes, int, str | None]] = queue.Queue(10_000)
        self.subscribed = threading.Event()
        self.rejected = 0  # dead-lettered
        self.duplicates = 0  # applied before, delivered again
        self.stale = 0  # older than what was applied for the deviation

    def run(self, stop: threading.Event) -> None:
        """Until ``stop``: take deviation changes, escalate, deliver."""

        window = self.devices
        topics = self._topics

        def subscribe(client: object) -> None:
            client.on_subscribe = self._on_subscribe  # type: ignore[attr-defined]
            client.subscribe(topics)  # type: ignore[attr-defined]

        def receive(client: object, userdata: object, message: Any) -> None:
            topic, payload = mqtt_connect.topic_of(message), bytes(message.payload)
            if window is not None and topic.startswith(_GATEWAY_TOPICS):
                # a view: decoded here, never queued
                window.take(topic, payload, retained=bool(message.retain))
            else:
                self._receive(topic, payload)

        connection = mqtt_connect.connect(
            self._broker,
            self._client_id,
            clean_session=False,
            on_message=receive,
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
                self.hub.close()  # open event streams end, so the server can stop
                web.should_exit = True
                self._web_thread.join(timeout=10)
            connection.close()
            self.book.close()
            self.outbox.close()
            self.trail.close()
            self.dead_letters.close()
            counted = {"dead_lettered": self.rejected, "duplicates": self.duplicates}
            live = {
                "live_streams_opened": self.hub.opened,
                "live_streams_refused": self.hub.refused,
                "live_slow_clients_dropped": self.hub.dropped_slow,
            }
            seen = self.devices.counters() if self.devices is not None else {}
            shown = {f"devices_{name}": count for name, count in seen.items()}
            log.info("alerts.stopped", extra={**counted, "stale": self.stale, **live, **shown})

    def _on_subscribe(
        self, client: object, userdata: object, mid: int, codes: Any, *_: Any
    ) -> None:
        """SUBACK: the deviations are granted, or nothing works; the gateways' topics, refused
        by an ACL generated before the alerts role could read them, only leave the device
        page empty, and say so."""
        refused = [
            topic for (topic, _), code in zip(self._topics, codes, strict=False) if code.is_failure
        ]
        if refused:
            log.warning(
                "alerts.subscription_refused",
                extra={
                    "topics": refused,
                    "fix": "regenerate the broker's ACL (`milkguard broker mosquitto-config`): "
                    "the alerts role reads the gateways' status and batches; or set "
                    "alerts.devices.enabled: false",
                },
            )
        self.subscribed.set()

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
        from alerts.http_protocol import HeadDeadlineProtocol  # noqa: PLC0415 - imports uvicorn

        host, port = settings.http_host, settings.http_port
        if settings.tls_cert is None and not is_loopback(host):
            raise ConfigError(
                f"alerts.http_host is {host}, reachable from the network, but the API has no "
                "TLS: bearer tokens would cross it in clear. Set alerts.tls_cert and "
                "alerts.tls_key (PEM), or alerts.http_host: 127.0.0.1 behind a TLS proxy"
            )
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
            outbox=self.outbox,
            devices=self.devices,
            grafana_url=str(settings.grafana_url) if settings.grafana_url else None,
            hub=self.hub,
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
            # uvicorn believes X-Forwarded-For from 127.0.0.1 by default: without a proxy any
            # local client could pick a new address per request and never be locked out
            proxy_headers=settings.behind_proxy,
            http=HeadDeadlineProtocol,  # a client trickling its headers is cut off
            timeout_graceful_shutdown=5,  # a live page's stream never "completes" by itself
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
                topic, payload, size, digest = self._incoming.get(timeout=left)
            except queue.Empty:
                return
            if digest is not None:
                detail = f"{size} bytes, more than {MAX_ENVELOPE_BYTES} for an envelope"
                self._dead_letter(topic, "too_large", detail, payload, size=size, digest=digest)
                continue
            notices = self.take(topic, payload)
            if notices:
                self._tell(notices, _now_ms())
                self.outbox.deliver_due(_now_ms())

    def take(self, topic: str, payload: bytes) -> list[Notice]:
        """One message from the deviations topic: believed if signed and valid, else kept aside."""
        try:
            record = unseal(payload, self.verifier).record
        except UntrustedRecord as exc:
            self._dead_letter(topic, exc.reason, exc.detail, payload)
            return []
        expected = deviation_topic(record.site, record.asset)
        if topic != expected:  # signed, but replayed where it does not belong
            self._dead_letter(topic, "wrong_topic", f"a change of {expected}", payload)
            return []
        taken, notices = self.book.take(msgspec.to_builtins(record), _now_ms())
        if taken != Taken.APPLIED:
            if taken == Taken.DUPLICATE:
                self.duplicates += 1
            else:
                self.stale += 1
            log.info(
                f"alerts.deviation_{taken}",
                extra={"deviation": record.id, "change": record.change, "topic": topic},
            )
        return notices

    def _receive(self, topic: str, payload: bytes) -> None:
        """paho's thread: queue one message (blocking while the queue is full)."""
        size, digest = len(payload), None
        if size > MAX_ENVELOPE_BYTES:  # memory stays bounded: keep what a dead letter keeps
            digest = hashlib.sha256(payload).hexdigest()
            payload = payload[:MAX_KEPT_BYTES]
        self._incoming.put((topic, payload, size, digest))

    def _dead_letter(
        self,
        topic: str,
        reason: str,
        detail: str,
        payload: bytes,
        *,
        size: int | None = None,
        digest: str | None = None,
    ) -> None:
        self.rejected += 1
        self.dead_letters.add(
            topic, reason, detail, payload, now_ms=_now_ms(), size=size, sha256=digest
        )
        log.warning(
            "alerts.dead_letter",
            extra={"topic": clip(topic), "reason": reason, "detail": clip(detail)},
        )

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
        except (KeyError, ValueError, ConfigError) as exc:
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

"""The one way every MilkGuard service talks MQTT: the gateway's link, the stream's source and
outbox, the Kafka bridge, the alert service and the simulators all connect through
:class:`Connection` (:func:`connect` for those that must fail fast at start).

What every connection gets: MQTT 3.1.1; TLS with the broker's certificate verified against
``tls_ca`` (chain and host name) and an optional client certificate; a username and password,
never sent in clear to a broker on another host; a clean or persistent session; paho's manual
acknowledgement when asked; a last will refreshed before each connect; reconnects with a jittered
:class:`~milkguard.backoff.Backoff`; and failures explained the same way everywhere, as typed
errors (:class:`BrokerUnreachable`, :class:`UntrustedBroker`, :class:`TlsFailed`,
:class:`BrokerRefused`) that name the setting to fix.

Reconnects are ours, not paho's: paho 2.2's ``loop_forever`` waits ``min_delay`` and doubles it
(``Client._reconnect_wait``) with no jitter, so a fleet that lost its broker at one instant would
knock again at the same instants. The network thread here runs paho's ``loop()`` and, when the
link drops, waits a delay drawn by the connection's own backoff before ``reconnect()``.

paho is an optional dependency (extras ``edge``, ``stream``, ``simulators``); it is imported when
a connection is made, so the base package and the wire contract stay importable without it.

Two paho behaviours shape this module:

- A QoS 1 message published while the link is down is queued by paho and sent after the
  reconnect, but its ``MQTTMessageInfo`` then reports failure (``wait_for_publish`` raises). So
  acknowledgements are tracked here through ``on_publish``, by message id.
- ``on_message`` must be in place before the first CONNACK: a broker holding a persistent
  session delivers the queued messages at once, and paho acknowledges them whether or not a
  handler is there to see them.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from milkguard.backoff import Backoff
from milkguard.broker_security import is_loopback
from milkguard.errors import BrokerError, ExtraMissing

log = logging.getLogger(__name__)

MessageHandler = Callable[[Any, Any, Any], None]


@dataclass(frozen=True, slots=True)
class SettingNames:
    """Where a service's user sets each part of its broker address, so that every failure
    names the setting to fix (the gateway's file spells TLS ``mqtt.tls.ca``, the stream's
    settings ``mqtt.tls_ca``)."""

    host: str = "mqtt.host"
    port: str = "mqtt.port"
    credentials: str = "mqtt.username/mqtt.password"
    ca: str = "mqtt.tls_ca"
    tls: str = "mqtt.tls_ca, mqtt.tls_cert and mqtt.tls_key"
    client_cert: str = "mqtt.tls_cert/mqtt.tls_key"


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """How to reach a broker; the password is never part of ``repr``."""

    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None  # a client certificate, with its key, when the broker asks
    tls_key: Path | None = None
    keepalive_s: int = 30
    names: SettingNames = SettingNames()

    def __repr__(self) -> str:
        tls = self.tls_ca is not None
        return f"BrokerAddress({self.host}:{self.port}, user={self.username!r}, tls={tls})"

    @property
    def where(self) -> str:
        """host:port, as errors show it."""
        return f"{self.host}:{self.port}"


class PublishRefused(BrokerError):  # noqa: N818 - reads as what happened
    """paho refused to queue a message (its outgoing queue is full)."""


class ConnectError(BrokerError):
    """A connection attempt failed; the message says why and which setting to check.

    ``ConnectError`` (a :class:`BrokerError`)
     ├── :class:`BrokerUnreachable`: nothing listening, unknown host, no answer, closed early
     ├── :class:`TlsFailed`: the TLS handshake failed
     │    └── :class:`UntrustedBroker`: the broker's certificate is not signed by ``tls_ca``
     └── :class:`BrokerRefused`: the broker answered CONNECT with a refusal (credentials, ACL)
    """


class BrokerUnreachable(ConnectError):  # noqa: N818 - reads as what happened
    """No MQTT session could be opened at that address."""


class TlsFailed(ConnectError):  # noqa: N818 - reads as what happened
    """The TLS handshake with the broker failed."""


class UntrustedBroker(TlsFailed):
    """The broker's certificate does not verify against the configured CA."""


class BrokerRefused(ConnectError):  # noqa: N818 - reads as what happened
    """The broker refused the client: a wrong password, an unknown user, an ACL."""


class AckTracker:
    """Message ids published with QoS 1 and not yet acknowledged by the broker.

    The broker's PUBACK can be handled on paho's thread before ``publish`` has returned the id
    to us, so an early acknowledgement is remembered until the id is added.
    """

    def __init__(self) -> None:
        self._pending: set[int] = set()
        self._early: set[int] = set()
        self._changed = threading.Condition()

    def __len__(self) -> int:
        with self._changed:
            return len(self._pending)

    def added(self, mid: int) -> None:
        """A message with this id was handed to paho."""
        with self._changed:
            if mid in self._early:
                self._early.discard(mid)
            else:
                self._pending.add(mid)

    def acknowledged(self, mid: int) -> None:
        """The broker acknowledged this id (called from paho's thread)."""
        with self._changed:
            if mid in self._pending:
                self._pending.discard(mid)
            else:
                self._early.add(mid)
            self._changed.notify_all()

    def wait_below(self, limit: int, timeout_s: float | None = None) -> bool:
        """Wait until fewer than ``limit`` messages await acknowledgement."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self._pending) < limit, timeout_s)


@dataclass(frozen=True, slots=True)
class Will:
    """The message the broker publishes for us if we vanish without a DISCONNECT.

    ``payload`` is called before every connect: a will carries the state of now, not of the
    start (the gateway's status, say).
    """

    topic: str
    payload: Callable[[], bytes]
    retain: bool = True


@dataclass(slots=True)
class _Attempt:
    """What the broker answered to one connection attempt (set on the network thread)."""

    accepted: bool = False
    refusal: BrokerRefused | None = None


class Connection:
    """A paho client and the network thread that we own, which connects, keeps the session up
    and reconnects with a jittered backoff, so shutdown can drain through it.

    ``on_connect_extra(client)`` runs after every accepted (re)connect (e.g. to subscribe
    again); ``on_acknowledged(mid)`` on the network thread for every PUBACK. ``connected`` is
    set once the loop pass that handled the CONNACK is over: paho has queued its resends of the
    messages in flight by then, so nothing published afterwards overtakes them.
    """

    def __init__(
        self,
        address: BrokerAddress,
        client_id: str,
        *,
        clean_session: bool = True,
        manual_ack: bool = False,
        on_message: MessageHandler | None = None,
        on_connect_extra: Callable[[Any], None] | None = None,
        on_acknowledged: Callable[[int], None] | None = None,
        will: Will | None = None,
        max_inflight: int = 100,
        max_queued: int = 100_000,
        reconnect: Backoff | None = None,
    ) -> None:
        client = new_client(address, client_id, clean_session=clean_session, manual_ack=manual_ack)
        client.max_inflight_messages_set(max_inflight)
        client.max_queued_messages_set(max_queued)
        self.client = client
        self.address = address
        self.client_id = client_id
        self.acks = AckTracker()
        #: set while a session is up (see the class's description)
        self.connected = threading.Event()
        self.connects = 0
        # which connection is current: a received message's id means nothing on another (see
        # :meth:`ack`); moved on, under the lock, before each attempt opens a socket
        self._current = 0
        self._session_lock = threading.Lock()
        self.failed_attempts = 0
        #: why the latest attempt failed; None once a connect was accepted
        self.last_error: ConnectError | None = None
        self._paho = paho_module()
        self._reconnect = reconnect if reconnect is not None else Backoff(1.0, 30.0)
        self._will = will
        self._on_connect_extra = on_connect_extra
        self._on_acknowledged = on_acknowledged
        self._stopping = threading.Event()
        self._settled = threading.Event()  # the first attempt was accepted or failed
        self._attempt = _Attempt()
        self._retry_first = True
        self.thread = threading.Thread(target=self._run, name=f"mqtt-{client_id}", daemon=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        if on_message is not None:
            client.on_message = on_message
        only_the_network_thread_writes(client)

    def __repr__(self) -> str:
        return f"Connection({self.client_id!r}, {self.address!r}, {self._reconnect!r})"

    def start(self, *, retry_first: bool = True) -> None:
        """Connect in the background and keep the session up. With ``retry_first`` false, a
        first attempt that fails ends the thread (see :meth:`wait_connected`)."""
        self._retry_first = retry_first
        self.thread.start()

    def wait_connected(self, timeout_s: float) -> None:
        """Wait for the first attempt; raise its :class:`ConnectError` (and stop) if it failed."""
        if not self._settled.wait(timeout_s):
            self.disconnect()
            self.join(timeout_s)
            raise BrokerUnreachable(
                f"cannot reach the MQTT broker at {self.address.where}: it did not answer "
                f"within {timeout_s:g} s; is {self.address.names.host} right, and is the link up?"
            )
        if not self.connected.is_set() and self.last_error is not None:
            self.disconnect()
            self.join(timeout_s)
            raise self.last_error

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> int:
        """Publish with QoS 1; its message id. Queued by paho while the link is down and sent
        after the reconnect; :class:`PublishRefused` only when paho's queue is full."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        # NO_CONN and CONN_LOST leave the message queued for the reconnect: not a refusal
        if info.rc == self._paho.MQTT_ERR_QUEUE_SIZE:
            raise PublishRefused(
                f"MQTT client {self.client_id!r} could not queue a message for {topic!r}: "
                f"{self._paho.error_string(info.rc)}"
            )
        self.acks.added(info.mid)
        return int(info.mid)

    @property
    def session(self) -> int:
        """The number of the current connection (1 for the first attempt, +1 for each
        reconnect). Read it in ``on_message`` and hand it to :meth:`ack` with the message id."""
        return self._current

    def ack(self, mid: int, session: int) -> bool:
        """Acknowledge a QoS 1 message received on connection ``session`` (with ``manual_ack``):
        the broker forgets it. MQTT wants acknowledgements in the order the messages came.

        False, and nothing sent, when that connection has ended: message ids are per
        connection, and a broker that restarted without its sessions (or one that took over)
        numbers messages from 1 again, so the id may now name another message, one not yet
        durable anywhere. The broker sends the unacknowledged message again to the next
        connection; consumers drop the repeat (by sequence number).
        """
        with self._session_lock:
            if session != self._current:
                return False
            # under the lock: a reconnect cannot begin between the check and the queueing, and
            # paho's reconnect() drops a PUBACK queued before it
            self.client.ack(mid, 1)
            return True

    def wait_acknowledged(self, timeout_s: float) -> bool:
        """Wait until the broker acknowledged everything published so far."""
        return self.acks.wait_below(1, timeout_s)

    def disconnect(self) -> None:
        """Send DISCONNECT (no last will) and stop reconnecting; the network thread ends once it
        is out (see :meth:`join`)."""
        self._stopping.set()
        self.client.disconnect()

    def join(self, timeout_s: float = 10.0) -> None:
        """Wait for the network thread to end."""
        if self.thread.is_alive():
            self.thread.join(timeout_s)

    def close(self, timeout_s: float = 10.0) -> bool:
        """Wait for acknowledgements, disconnect, end the thread. False if some were not acked."""
        acked = self.wait_acknowledged(timeout_s)
        self.disconnect()
        self.join(timeout_s)
        return acked

    # ------------------------------------------------------------------ the network thread

    def _run(self) -> None:
        first = True
        while not self._stopping.is_set():
            failed = not self._session(first)
            if first and failed and not self._retry_first:
                self._settled.set()  # wait_connected raises last_error
                return
            first = False
            if self._stopping.wait(self._reconnect.next()):
                return

    def _session(self, first: bool) -> bool:
        """One attempt and, once accepted, the session until it ends; False if not accepted."""
        client, address = self.client, self.address
        attempt = self._attempt = _Attempt()
        if self._will is not None:
            client.will_set(self._will.topic, self._will.payload(), qos=1, retain=self._will.retain)
        with self._session_lock:  # acknowledgements for the connection that ended stop here
            self._current += 1
        try:
            if first:  # connect() keeps the address for every reconnect()
                client.connect(address.host, address.port, keepalive=address.keepalive_s)
            else:
                client.reconnect()
        except (OSError, ValueError) as exc:
            self._failed(connect_error(exc, address))
            return False
        rc = self._paho.MQTT_ERR_SUCCESS
        while rc == self._paho.MQTT_ERR_SUCCESS:
            rc = client.loop(timeout=1.0)
            if (
                attempt.accepted
                and not self.connected.is_set()
                and rc == self._paho.MQTT_ERR_SUCCESS
            ):
                self.connected.set()
                self._settled.set()
        self.connected.clear()
        if attempt.accepted:
            self._reconnect.reset()  # a session that worked: the next drop backs off afresh
            return True
        if attempt.refusal is not None:
            self._failed(attempt.refusal)
        elif not self._stopping.is_set():
            names = address.names
            hint = (
                f"does this port expect TLS? Then set {names.ca}"
                if address.tls_ca is None
                else f"check {names.client_cert} if it requires client certificates"
            )
            self._failed(
                BrokerUnreachable(
                    f"cannot reach the MQTT broker at {address.where}: it closed the "
                    f"connection before accepting it; {hint}"
                )
            )
        return False

    def _failed(self, error: ConnectError) -> None:
        self.failed_attempts += 1
        # the same reason again and again (a broker down for an hour) is logged once
        repeated = self.last_error is not None and str(error) == str(self.last_error)
        log.log(
            logging.DEBUG if repeated else logging.ERROR,
            "mqtt.connect_failed",
            extra={"client_id": self.client_id, "reason": str(error)},
        )
        self.last_error = error

    def _on_connect(
        self, client: Any, userdata: object, flags: Any, reason: Any, props: object
    ) -> None:
        if reason.is_failure:
            self._attempt.refusal = BrokerRefused(
                f"the MQTT broker at {self.address.where} refused client {self.client_id!r}: "
                f"{reason}; check {self.address.names.credentials} and the broker's ACL"
            )
            return
        self._attempt.accepted = True
        self.connects += 1
        if self.last_error is not None:
            log.info(
                "mqtt.reconnected",
                extra={"client_id": self.client_id, "after_failures": self.failed_attempts},
            )
        self.last_error = None
        if self._on_connect_extra is not None:
            self._on_connect_extra(client)
        log.info(
            "mqtt.connected",
            extra={
                "client_id": self.client_id,
                "broker": repr(self.address),
                "session_present": bool(getattr(flags, "session_present", False)),
            },
        )

    def _on_disconnect(
        self, client: Any, userdata: object, flags: object, reason: Any, props: object
    ) -> None:
        if reason.is_failure and self.connected.is_set() and not self._stopping.is_set():
            log.warning(
                "mqtt.link_lost", extra={"client_id": self.client_id, "reason": str(reason)}
            )

    def _on_publish(
        self, client: Any, userdata: object, mid: int, reason: Any, props: object
    ) -> None:
        self.acks.acknowledged(mid)
        if self._on_acknowledged is not None:
            self._on_acknowledged(mid)


def only_the_network_thread_writes(client: Any) -> None:
    """Make ``publish`` from any thread only queue the packet and wake the network loop.

    Without a thread started by ``loop_start``, paho's ``publish`` writes to the socket from the
    calling thread while the loop thread may be writing too: the two interleave bytes of
    different packets (paho 2.2, ``_packet_queue`` and ``_packet_write``), and the broker can
    acknowledge a corrupted message. A write-registration hook, even one that does nothing,
    tells paho an event loop owns the socket; the loop's select is woken through paho's socket
    pair and writes the packet itself. The loop must have made that pair: paho's ``loop()``
    does, ``loop_forever()`` does not.
    """
    client.on_socket_register_write = lambda _client, _userdata, _sock: None


def topic_of(message: Any) -> str:
    """The topic of a received message, even when its bytes are not UTF-8.

    paho's ``MQTTMessage.topic`` decodes strictly, and an exception in ``on_message`` ends
    paho's network thread: one message from a broker that lets a bad topic through would stop
    the service. Undecodable bytes are escaped instead, so the message is dead-lettered with a
    topic that shows what came.
    """
    raw: bytes = message._topic  # paho keeps the raw bytes only here
    return raw.decode("utf-8", "backslashreplace")


def paho_module() -> Any:
    """``paho.mqtt.client``, or :class:`ExtraMissing` naming the extra to install."""
    try:
        import paho.mqtt.client as mqtt  # noqa: PLC0415 - optional part, imported when used
    except ImportError as exc:
        raise ExtraMissing("Talking MQTT", "edge", "paho-mqtt") from exc
    return mqtt


def new_client(
    address: BrokerAddress, client_id: str, *, clean_session: bool, manual_ack: bool = False
) -> Any:
    """A paho client set up as every MilkGuard client is: MQTT 3.1.1, the credentials, and TLS
    with the broker's certificate verified (chain and host name) whenever ``tls_ca`` is set.

    Not connected yet. Raises :class:`BrokerError` naming the file when a TLS file is unusable,
    or when a password would cross the network in clear (another host, no ``tls_ca``).
    """
    if address.password and address.tls_ca is None and not is_loopback(address.host):
        raise BrokerError(
            f"refusing to send mqtt.password to the MQTT broker at {address.host}:"
            f"{address.port} in clear: set mqtt.tls_ca to the CA of the broker's certificate "
            "(and use its TLS port), or reach it through 127.0.0.1"
        )
    paho = paho_module()
    client = paho.Client(
        paho.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean_session,
        protocol=paho.MQTTv311,
        manual_ack=manual_ack,
    )
    if address.username is not None:
        client.username_pw_set(address.username, address.password)
    if address.tls_ca is not None:
        client.tls_set_context(tls_context(address))
    return client


def tls_context(address: BrokerAddress) -> ssl.SSLContext:
    """A client TLS context trusting ``tls_ca`` only, checking the host name, TLS 1.2 or later,
    with the client certificate loaded when one is configured."""
    try:
        context = ssl.create_default_context(cafile=str(address.tls_ca))
        if address.tls_cert is not None:
            context.load_cert_chain(str(address.tls_cert), str(address.tls_key))
    except (OSError, ssl.SSLError) as exc:
        raise BrokerError(
            f"cannot use the MQTT TLS files (mqtt.tls_ca {address.tls_ca}, mqtt.tls_cert "
            f"{address.tls_cert}, mqtt.tls_key {address.tls_key}): {exc}"
        ) from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def connect(
    address: BrokerAddress,
    client_id: str,
    *,
    clean_session: bool = True,
    manual_ack: bool = False,
    on_message: MessageHandler | None = None,
    on_connect_extra: Callable[[Any], None] | None = None,
    will: Will | None = None,
    timeout_s: float = 10.0,
    max_inflight: int = 100,
    max_queued: int = 100_000,
    reconnect: Backoff | None = None,
) -> Connection:
    """A connected :class:`Connection`, for services that must not start without their broker.

    The first attempt fails fast with a :class:`ConnectError` saying why; once connected, a
    lost link is reconnected in the background with a jittered backoff (1-30 s by default).
    """
    connection = Connection(
        address,
        client_id,
        clean_session=clean_session,
        manual_ack=manual_ack,
        on_message=on_message,
        on_connect_extra=on_connect_extra,
        will=will,
        max_inflight=max_inflight,
        max_queued=max_queued,
        reconnect=reconnect,
    )
    connection.start(retry_first=False)
    connection.wait_connected(timeout_s)
    return connection


def connect_error(exc: BaseException, address: BrokerAddress) -> ConnectError:
    """What a failed connection attempt means for the person fixing it, as a typed error."""
    where, names = address.where, address.names
    cannot = f"cannot reach the MQTT broker at {where}"
    error: ConnectError
    if isinstance(exc, ssl.SSLCertVerificationError):
        error = UntrustedBroker(
            f"{cannot}: TLS: it presented a certificate that {names.ca} does not trust "
            f"({exc.verify_message}, {exc.reason}); check the CA file and the broker's host name"
        )
    elif isinstance(exc, ssl.SSLError) or (
        address.tls_ca is not None and isinstance(exc, ConnectionResetError)
    ):  # a plaintext listener resets the connection at our TLS ClientHello
        why = getattr(exc, "reason", None) or exc
        error = TlsFailed(
            f"{cannot}: TLS handshake failed ({why}); check {names.tls} and that this port "
            "speaks TLS"
        )
    elif isinstance(exc, ConnectionRefusedError):
        error = BrokerUnreachable(
            f"{cannot}: nothing accepts connections there; is the broker running, are "
            f"{names.host} and {names.port} right?"
        )
    elif isinstance(exc, socket.gaierror):
        error = BrokerUnreachable(
            f"{cannot}: cannot resolve host {address.host!r} ({exc.strerror}); check "
            f"{names.host} and DNS"
        )
    elif isinstance(exc, TimeoutError | socket.timeout):
        error = BrokerUnreachable(f"{cannot}: no answer (timed out); the link may be down")
    else:
        error = BrokerUnreachable(f"{cannot}: {exc}")
    error.__cause__ = exc
    return error

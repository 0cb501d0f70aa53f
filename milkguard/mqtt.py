"""MQTT connections made the same way everywhere: auth, TLS, clear errors, reconnects, and
acknowledgements tracked by message id.

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
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from milkguard.broker_security import is_loopback
from milkguard.errors import BrokerError, ExtraMissing

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

log = logging.getLogger(__name__)

MessageHandler = Callable[[Any, Any, Any], None]


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

    def __repr__(self) -> str:
        tls = self.tls_ca is not None
        return f"BrokerAddress({self.host}:{self.port}, user={self.username!r}, tls={tls})"


class PublishRefused(BrokerError):  # noqa: N818 - reads as what happened
    """paho refused to queue a message (its outgoing queue is full)."""


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


class Connection:
    """A paho client and the network thread that we own, so shutdown can drain through it."""

    def __init__(self, client: mqtt.Client, thread: threading.Thread, client_id: str) -> None:
        self.client = client
        self.client_id = client_id
        self.thread = thread
        self.acks = AckTracker()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish with QoS 1; queued by paho while the link is down, sent after reconnect."""
        paho = paho_module()
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            raise PublishRefused(
                f"MQTT client {self.client_id!r} could not queue a message for {topic!r}: "
                f"{paho.error_string(info.rc)}"
            )
        self.acks.added(info.mid)

    def wait_acknowledged(self, timeout_s: float) -> bool:
        """Wait until the broker acknowledged everything published so far."""
        return self.acks.wait_below(1, timeout_s)

    def disconnect(self) -> None:
        """Send DISCONNECT; the network thread ends once it is out (see :meth:`join`)."""
        self.client.disconnect()

    def join(self, timeout_s: float = 10.0) -> None:
        """Wait for the network thread to end."""
        self.thread.join(timeout_s)

    def close(self, timeout_s: float = 10.0) -> bool:
        """Wait for acknowledgements, disconnect, end the thread. False if some were not acked."""
        acked = self.wait_acknowledged(timeout_s)
        self.disconnect()
        self.join(timeout_s)
        return acked


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
    on_message: MessageHandler | None = None,
    on_connect_extra: Callable[[Any], None] | None = None,
    timeout_s: float = 10.0,
    max_inflight: int = 100,
    max_queued: int = 100_000,
    manual_ack: bool = False,
) -> Connection:
    """A connected client whose network loop runs in a thread of ours.

    ``on_connect_extra(client)`` runs after every (re)connect, e.g. to subscribe again.
    ``manual_ack``: received QoS 1 messages are acknowledged only by ``client.ack(mid, 1)``,
    once what they carried is durable (from any thread: the network thread writes).
    Raises :class:`BrokerError` with the broker's reason when the first connect fails.
    """
    client = new_client(address, client_id, clean_session=clean_session, manual_ack=manual_ack)
    client.max_inflight_messages_set(max_inflight)
    client.max_queued_messages_set(max_queued)
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    connected = threading.Event()
    outcome: dict[str, Any] = {}

    def on_connect(
        client: Any, userdata: object, flags: object, reason: Any, props: object
    ) -> None:
        outcome["reason"] = reason
        if not reason.is_failure:
            if on_connect_extra is not None:
                on_connect_extra(client)
            log.info("mqtt.connected", extra={"client_id": client_id, "broker": repr(address)})
        connected.set()

    def on_disconnect(
        client: Any, userdata: object, flags: object, reason: Any, props: object
    ) -> None:
        if reason.is_failure:
            log.warning("mqtt.disconnected", extra={"client_id": client_id, "reason": str(reason)})

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    if on_message is not None:
        client.on_message = on_message
    try:
        client.connect(address.host, address.port, keepalive=address.keepalive_s)
    except (OSError, ssl.SSLError) as exc:
        raise BrokerError(
            f"cannot reach the MQTT broker at {address.host}:{address.port}: {exc}. "
            "Is it running, and are mqtt.host/mqtt.port right?"
        ) from exc
    thread = threading.Thread(target=client.loop_forever, name=f"mqtt-{client_id}", daemon=True)
    connection = Connection(client, thread, client_id)
    client.on_publish = lambda _c, _u, mid, _r, _p: connection.acks.acknowledged(mid)
    only_the_network_thread_writes(client)
    # loop_forever does not create the socket pair that wakes its select on a publish (only
    # loop() and loop_start() do, paho 2.2); one loop() here, before the thread exists, does
    client.loop(timeout=0)
    thread.start()
    if not connected.wait(timeout_s):
        connection.disconnect()
        raise BrokerError(
            f"the MQTT broker at {address.host}:{address.port} did not answer within {timeout_s} s"
        )
    reason = outcome["reason"]
    if reason.is_failure:
        connection.disconnect()
        raise BrokerError(
            f"the MQTT broker at {address.host}:{address.port} refused client {client_id!r}: "
            f"{reason}. Check mqtt.username/mqtt.password and the broker's ACL."
        )
    return connection

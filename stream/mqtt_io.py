"""The stream's MQTT side: a source of gateway batches and sinks that publish back.

The source subscribes with QoS 1 and a persistent session (clean_session false), so a broker that
keeps sessions (Mosquitto) holds batches for the stream while it restarts. paho calls
``on_message`` from its network thread; messages go into a bounded queue that the engine thread
drains, all it holds at once (:class:`Handoff`). A full queue blocks paho's thread, which stops
reading the socket: backpressure reaches the broker instead of memory growing.

Acknowledgements are manual: paho sends no PUBACK when ``on_message`` returns; the runtime calls
:meth:`MqttBatchSource.acknowledge` once a checkpoint holds what the messages carried
(:mod:`stream.checkpoint`), in the order they came, as MQTT requires. Until then the broker
keeps them, and sends them again to the next session if the stream dies.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import msgspec

from milkguard import mqtt as mqtt_connect
from milkguard.contract.v1 import (
    BATCH_SUBSCRIPTION,
    STATUS_SUBSCRIPTION,
    deadletter_topic,
    deviation_topic,
)
from milkguard.signing import Signer
from stream.engine.deviation import DeviationChange
from stream.errors import NotAcknowledged
from stream.signed import sealed_change
from stream.sinks.base import DeadLetter

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

log = logging.getLogger(__name__)

#: How long the first connection may take before the stream gives up with the reason.
CONNECT_TIMEOUT_S = 10.0


class Message(NamedTuple):
    """One MQTT message as the engine thread receives it, with what acknowledges it."""

    topic: str
    payload: bytes
    received_ms: int
    mid: int = 0  # paho's message id; 0 for QoS 0 (nothing to acknowledge)
    session: int = 0  # which connection it came on: a message id means nothing on another


class Handoff:
    """A bounded queue between one producing thread and one draining thread, drained whole.

    ``queue.Queue`` takes its lock and signals a condition for every item on both sides; at
    thousands of messages a second, paho's thread and the engine thread then contend for that
    lock (and the GIL) once per message: ``Queue.put`` alone was 1-8 % of the stream's GIL
    time in profiles at 50 readings per message. Here the taker takes everything waiting (up to
    a limit) under one lock, and each side wakes the other only when it may be waiting: the
    queue was empty, or full.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: deque[Message] = deque()
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Message) -> None:
        """Append ``item``; wait while the queue is full (the producer's backpressure)."""
        with self._lock:
            items = self._items
            while len(items) >= self.size:
                self._not_full.wait()
            items.append(item)
            if len(items) == 1:
                self._not_empty.notify()

    def take(self, limit: int, wait_s: float) -> list[Message]:
        """Up to ``limit`` items, oldest first, waiting up to ``wait_s`` for the first one."""
        with self._lock:
            items = self._items
            if not items and wait_s > 0:
                self._not_empty.wait(wait_s)
            if not items:
                return []
            was_full = len(items) >= self.size
            if len(items) <= limit:
                taken = list(items)
                items.clear()
            else:
                taken = [items.popleft() for _ in range(limit)]
            if was_full:
                self._not_full.notify()
            return taken


class MqttBatchSource:
    """Subscribes to every gateway's batches and status and queues them for the engine
    thread."""

    def __init__(
        self, address: mqtt_connect.BrokerAddress, client_id: str, queue_size: int
    ) -> None:
        self.queue = Handoff(queue_size)
        self._address = address
        self._client_id = client_id
        self.connection: mqtt_connect.Connection | None = None
        #: set once the broker confirmed the subscription: batches published now reach us
        self.subscribed = threading.Event()
        #: acknowledgements not sent because the connection they were for has ended (the
        #: broker sends those messages again; the duplicate windows drop them)
        self.stale_acks = 0

    def start(self) -> None:
        """Connect and subscribe (again after every reconnect)."""

        def subscribe(client: mqtt.Client) -> None:
            client.on_subscribe = lambda *_: self.subscribed.set()
            # the gateways' retained statuses come at every subscription, then as they change
            client.subscribe([(BATCH_SUBSCRIPTION, 1), (STATUS_SUBSCRIPTION, 1)])

        # made before it connects: a persistent session's messages arrive right after the
        # CONNACK, and each is tagged with the connection's session number for its PUBACK
        self.connection = mqtt_connect.Connection(
            self._address,
            self._client_id,
            clean_session=False,
            on_message=self._on_message,
            on_connect_extra=subscribe,
            manual_ack=True,
        )
        self.connection.start(retry_first=False)
        self.connection.wait_connected(CONNECT_TIMEOUT_S)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        # blocks while the queue is full: paho stops reading the socket, the broker holds on
        topic = mqtt_connect.topic_of(msg)
        mid = msg.mid if msg.qos > 0 else 0
        received_ms = time.time_ns() // 1_000_000
        session = self.connection.session if self.connection is not None else 0  # never None
        self.queue.put(Message(topic, bytes(msg.payload), received_ms, mid, session))

    def take(self, limit: int, wait_s: float) -> list[Message]:
        """Up to ``limit`` queued messages, waiting up to ``wait_s`` for the first one."""
        return self.queue.take(limit, wait_s)

    def acknowledge(self, messages: list[Message]) -> None:
        """Send the PUBACKs of ``messages`` (in their order) that their connection still
        waits for. paho queues them and its network thread writes them."""
        connection = self.connection
        if connection is None:
            return
        for message in messages:
            if message.mid and not connection.ack(message.mid, message.session):
                self.stale_acks += 1

    def stop(self, handle: Callable[[Message], None]) -> None:
        """Disconnect, handing every message already received to ``handle``.

        paho may be blocked on a full queue when asked to stop, so the queue is drained until
        its network thread has ended; then what is left in the queue.
        """
        connection = self.connection
        if connection is not None:
            connection.disconnect()
            while connection.thread.is_alive():
                for message in self.queue.take(self.queue.size, 0.05):
                    handle(message)
        for message in self.queue.take(self.queue.size, 0):
            handle(message)


class MqttOutbox:
    """A connection of its own for what the stream publishes (deviations, dead letters).

    Separate from the source's so the source can disconnect (keeping its persistent session)
    while deviations judged during the final drain are still published. While the broker is
    down paho queues messages (bounded); ``flush`` reports what is not yet acknowledged.
    Everything published here is also in the local JSONL files.
    """

    def __init__(self, address: mqtt_connect.BrokerAddress, client_id: str) -> None:
        self.connection = mqtt_connect.connect(address, client_id)
        self.refused = 0

    def publish(self, topic: str, payload: bytes) -> None:
        """Publish with QoS 1; a message paho cannot even queue is counted and logged."""
        try:
            self.connection.publish(topic, payload)
        except mqtt_connect.PublishRefused as exc:
            self.refused += 1
            log.error("mqtt.outbox_refused", extra={"topic": topic, "error": str(exc)})

    def flush(self, timeout_s: float = 0.25) -> None:
        """Wait briefly for acknowledgements; raise :class:`NotAcknowledged` if some are missing."""
        if not self.connection.wait_acknowledged(timeout_s):
            raise NotAcknowledged(
                f"{len(self.connection.acks)} MQTT messages from {self.connection.client_id!r} "
                "are not acknowledged yet; paho resends them after a reconnect"
            )

    def close(self, timeout_s: float = 10.0) -> None:
        """Wait for acknowledgements, then disconnect; log what was never acknowledged."""
        if not self.connection.close(timeout_s):
            log.error(
                "mqtt.outbox_unacknowledged",
                extra={
                    "client_id": self.connection.client_id,
                    "messages": len(self.connection.acks),
                    "kept_in": "deviations.jsonl / deadletter.jsonl",
                },
            )


class MqttDeviationSink:
    """Publishes each deviation change (QoS 1) on ``milkguard/v1/deviations/{site}/{asset}``,
    in an envelope signed with the stream's key (the alert service believes nothing else)."""

    def __init__(self, outbox: MqttOutbox, signer: Signer) -> None:
        self._outbox = outbox
        self._signer = signer
        self.unpublishable = 0

    def emit(self, change: DeviationChange) -> None:
        """Sign and publish the change; one outside the wire contract is counted and logged."""
        d = change.deviation
        topic = deviation_topic(d.site, d.asset)
        try:
            payload = sealed_change(change, self._signer)
        except msgspec.ValidationError as exc:  # kept in deviations.jsonl all the same
            self.unpublishable += 1
            log.error("deviation.unpublishable", extra={"topic": topic, "error": str(exc)})
            return
        self._outbox.publish(topic, payload)

    def flush(self) -> None:
        """Wait for the broker's acknowledgements."""
        self._outbox.flush()

    def close(self) -> None:
        """The outbox is shared and closed by its owner."""


class MqttDeadLetterSink:
    """Republishes rejected payloads, with their reason, on the gateway's dead-letter topic."""

    def __init__(self, outbox: MqttOutbox) -> None:
        self._outbox = outbox
        self._encoder = msgspec.json.Encoder()

    def reject(self, letter: DeadLetter) -> None:
        """Publish the letter."""
        topic = deadletter_topic(letter.site or "_unknown", letter.gateway or "_unknown")
        self._outbox.publish(topic, self._encoder.encode(letter))

    def flush(self) -> None:
        """Wait for the broker's acknowledgements."""
        self._outbox.flush()

    def close(self) -> None:
        """The outbox is shared and closed by its owner."""

"""The stream's MQTT side: a source of gateway batches and sinks that publish back.

The source subscribes with QoS 1 and a persistent session (clean_session false), so a broker that
keeps sessions (Mosquitto) holds batches for the stream while it restarts. paho calls
``on_message`` from its network thread; messages go into a bounded queue that the engine thread
drains. A full queue blocks paho's thread, which stops reading the socket: backpressure reaches
the broker instead of memory growing.
"""

from __future__ import annotations

import logging
import queue
import time
from typing import TYPE_CHECKING, NamedTuple

import msgspec

from milkguard import mqtt as mqtt_connect
from milkguard.contract.v1 import BATCH_SUBSCRIPTION, deadletter_topic, deviation_topic
from stream.engine.deviation import DeviationChange, deviation_to_json
from stream.sinks.base import DeadLetter

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

log = logging.getLogger(__name__)


class Message(NamedTuple):
    """One MQTT message as the engine thread receives it."""

    topic: str
    payload: bytes
    received_ms: int


class MqttBatchSource:
    """Subscribes to every gateway's batches and queues them for the engine thread."""

    def __init__(
        self, address: mqtt_connect.BrokerAddress, client_id: str, queue_size: int
    ) -> None:
        self.queue: queue.Queue[Message] = queue.Queue(maxsize=queue_size)
        self._address = address
        self._client_id = client_id
        self.client: mqtt.Client | None = None

    def start(self) -> None:
        """Connect and subscribe (again after every reconnect)."""

        def subscribe(client: mqtt.Client) -> None:
            client.subscribe(BATCH_SUBSCRIPTION, qos=1)

        self.client = mqtt_connect.connect(
            self._address, self._client_id, clean_session=False, on_connect_extra=subscribe
        )
        self.client.on_message = self._on_message

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        self.queue.put(Message(msg.topic, bytes(msg.payload), time.time_ns() // 1_000_000))

    def stop(self) -> None:
        """Stop receiving; what is already queued stays for the engine thread to drain."""
        if self.client is not None:
            mqtt_connect.disconnect(self.client)


class MqttOutbox:
    """A client of its own for what the stream publishes; ``flush`` waits for the broker's acks.

    Separate from the source's client so the source can disconnect (keeping its persistent
    session) while deviations judged during the final drain are still published.
    """

    def __init__(self, address: mqtt_connect.BrokerAddress, client_id: str) -> None:
        self.client = mqtt_connect.connect(address, client_id)
        self._pending: list[mqtt.MQTTMessageInfo] = []

    def publish(self, topic: str, payload: bytes) -> None:
        """Publish with QoS 1."""
        self._pending.append(self.client.publish(topic, payload, qos=1))

    def flush(self, timeout_s: float = 10.0) -> None:
        """Wait until the broker acknowledged everything published so far."""
        deadline = time.monotonic() + timeout_s
        for info in self._pending:
            info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            if not info.is_published():
                raise TimeoutError(
                    f"the MQTT broker did not acknowledge message {info.mid} within {timeout_s} s"
                )
        self._pending.clear()

    def close(self) -> None:
        """Flush, then disconnect."""
        try:
            self.flush()
        finally:
            mqtt_connect.disconnect(self.client)


class MqttDeviationSink:
    """Publishes each deviation change (QoS 1) on ``milkguard/v1/deviations/{site}/{asset}``."""

    def __init__(self, outbox: MqttOutbox) -> None:
        self._outbox = outbox
        self._encoder = msgspec.json.Encoder()

    def emit(self, change: DeviationChange) -> None:
        """Publish the change."""
        d = change.deviation
        self._outbox.publish(
            deviation_topic(d.site, d.asset), self._encoder.encode(deviation_to_json(change))
        )

    def flush(self) -> None:
        """Wait for the broker's acknowledgements."""
        self._outbox.flush()

    def close(self) -> None:
        """The outbox is shared and closed by its owner."""
        self._outbox.flush()


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
        self._outbox.flush()

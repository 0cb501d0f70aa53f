"""Publishing batches as a gateway does: the wire contract, growing sequence numbers, QoS 1.

Used by the simulators now; the edge agent puts its durable outbox in front of it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from milkguard.contract.v1 import Batch, Event, Reading, batch_topic, encode_batch

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt


class GatewayPublisher:
    """Publishes a gateway's readings and events as v1 batches with QoS 1.

    In-flight messages are capped (paho stalls when thousands of QoS 1 messages await their
    PUBACK at once); ``publish`` waits for a free slot, which is the backpressure a gateway needs.
    """

    def __init__(
        self,
        client: mqtt.Client,
        site: str,
        gateway: str,
        *,
        first_seq: int | None = None,
        max_in_flight: int = 50,
    ) -> None:
        self.site = site
        self.gateway = gateway
        self.topic = batch_topic(site, gateway)
        # No stored counter yet: seed from the clock so the sequence keeps growing across restarts.
        self.seq = first_seq if first_seq is not None else time.time_ns() // 1_000_000
        self.client = client
        self._capacity = max_in_flight
        self._slots = threading.BoundedSemaphore(max_in_flight)
        client.on_publish = self._on_publish

    def publish(
        self,
        readings: Sequence[Reading],
        events: Sequence[Event] = (),
        *,
        sent_at: int | None = None,
    ) -> int:
        """Publish one batch; returns its sequence number."""
        seq = self.seq
        self.seq += 1
        batch = Batch(
            v=1,
            site=self.site,
            gateway=self.gateway,
            seq=seq,
            sent_at=sent_at if sent_at is not None else time.time_ns() // 1_000_000,
            readings=list(readings),
            events=list(events),
        )
        self.publish_raw(encode_batch(batch))
        return seq

    def publish_raw(self, payload: bytes) -> None:
        """Publish bytes as they are on this gateway's batch topic (tests send bad ones)."""
        self._slots.acquire()
        info = self.client.publish(self.topic, payload, qos=1)
        if info.rc != 0:
            self._slots.release()
            raise ConnectionError(f"publish to {self.topic} failed: rc={info.rc}")

    def _on_publish(
        self, client: mqtt.Client, userdata: object, mid: int, reason: object, props: object
    ) -> None:
        self._slots.release()

    def drain(self, timeout_s: float = 10.0) -> bool:
        """Wait until every published batch is acknowledged by the broker."""
        deadline = time.monotonic() + timeout_s
        acquired = 0
        try:
            while acquired < self._capacity:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._slots.acquire(timeout=remaining):
                    return False
                acquired += 1
            return True
        finally:
            for _ in range(acquired):
                self._slots.release()

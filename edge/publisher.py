"""Publishing batches as a gateway does: the wire contract, growing sequence numbers, QoS 1.

Used by the simulators now; the edge agent puts its durable outbox in front of it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from milkguard.contract.v1 import Batch, Event, Reading, batch_topic, encode_batch
from milkguard.mqtt import Connection


class GatewayPublisher:
    """Publishes a gateway's readings and events as v1 batches with QoS 1.

    At most ``max_in_flight`` batches await the broker's acknowledgement; ``publish`` waits for
    a free place (paho stalls when thousands of QoS 1 messages are in flight at once). While the
    link is down paho queues batches and sends them after the reconnect, so a batch is never
    published twice under two sequence numbers.
    """

    def __init__(
        self,
        connection: Connection,
        site: str,
        gateway: str,
        *,
        first_seq: int | None = None,
        max_in_flight: int = 50,
    ) -> None:
        self.connection = connection
        self.site = site
        self.gateway = gateway
        self.topic = batch_topic(site, gateway)
        # No stored counter yet: seed from the clock so the sequence keeps growing across restarts.
        self.seq = first_seq if first_seq is not None else time.time_ns() // 1_000_000
        self._max_in_flight = max_in_flight

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
        self.connection.acks.wait_below(self._max_in_flight)
        self.connection.publish(self.topic, payload)

    def drain(self, timeout_s: float = 10.0) -> bool:
        """Wait until every published batch is acknowledged by the broker."""
        return self.connection.wait_acknowledged(timeout_s)

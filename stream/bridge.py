"""``milkguard bridge``: gateways' batches from MQTT into Kafka, at least once, in order.

Each valid batch, and each valid gateway status (the gateways' retained status topics, marked
with the Kafka header ``milkguard-status-topic`` holding its MQTT topic, so workers store it as a
``gateway`` point), is produced to the batches topic keyed by its site, so every batch of a
gateway lands in one partition, in the order the gateway sent it, and all the gateways of a
site land in the same one: a site's rules (cleaning windows, transport, silence of every
channel) are judged by one engine (:mod:`stream.worker`), which needs all of its batches.

The MQTT PUBACK for a batch is sent only once Kafka has acknowledged it (paho's manual
acknowledgement), so a bridge that dies in between leaves the batch with the broker, which
delivers it again; the stream drops the copy by sequence number. MQTT requires PUBACKs in the
order the PUBLISHes came, so they are released from the head of a FIFO as Kafka confirms. An
invalid payload goes to the dead-letter topic with its reason (and is acknowledged once that is
in Kafka). While Kafka is slow the bounded queue fills and MQTT reads wait: backpressure to the
broker, nothing dropped.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import msgspec

from milkguard.contract.v1 import (
    BATCH_SUBSCRIPTION,
    STATUS_SUBSCRIPTION,
    parse_batch_topic,
    parse_status_topic,
    read_batch,
    read_status,
)
from milkguard.errors import BrokerError, ExtraMissing
from milkguard.mqtt import BrokerAddress, Connection, topic_of
from stream.engine.deviation import iso_ms
from stream.settings import STATUS_HEADER
from stream.sinks.base import DeadLetter

log = logging.getLogger(__name__)

#: How long the first MQTT connection may take before the bridge gives up with the reason.
CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class KafkaTarget:
    """Where and how to produce."""

    bootstrap_servers: str
    batches_topic: str = "milkguard.batches"
    deadletter_topic: str = "milkguard.deadletter"
    security: dict[str, Any] | None = None  # aiokafka security_protocol, sasl_*, ssl_context


@dataclass(slots=True)
class BridgeCounters:
    """What the bridge did, for metrics."""

    received: int = 0
    produced: int = 0
    rejected: int = 0
    acknowledged: int = 0
    #: PUBACKs not sent because the connection their message came on had ended (the broker
    #: sends the message again; the stream drops the repeat by sequence number)
    stale_acks: int = 0


def problem_of(topic: str, payload: bytes) -> tuple[str | None, str]:
    """(None, key) for a valid batch or gateway status on its own topic, else (reason, key)."""
    status_route = parse_status_topic(topic)
    if status_route is not None:
        status = read_status(payload)
        if isinstance(status, str):
            return status, status_route[0]
        if (status.site, status.gateway) != status_route:
            return f"status of {status.site}/{status.gateway} on topic {topic!r}", status_route[0]
        return None, status_route[0]
    route = parse_batch_topic(topic)
    key = route[0] if route else topic  # the site: see the module's description
    batch = read_batch(payload)  # never raises: any byte sequence is a batch or a reason
    if isinstance(batch, str):
        return (batch if batch.startswith("not ") else f"invalid: {batch}"), key
    if route is None or (batch.site, batch.gateway) != route:
        return f"payload of {batch.site}/{batch.gateway} on topic {topic!r}", key
    return None, key


class Bridge:
    """MQTT subscription in, Kafka producer out; run with :meth:`run` until ``stop`` is set."""

    def __init__(
        self, mqtt: BrokerAddress, kafka: KafkaTarget, client_id: str, queue_size: int = 10_000
    ) -> None:
        self.mqtt = mqtt
        self.kafka = kafka
        self.client_id = client_id
        self.counters = BridgeCounters()
        # (topic, payload, message id, the connection's session number)
        self._incoming: queue.Queue[tuple[str, bytes, int, int]] = queue.Queue(maxsize=queue_size)
        self.ready = threading.Event()

    def run(self, stop: threading.Event) -> None:
        """Bridge until ``stop``; then finish what is in flight and disconnect."""
        asyncio.run(self._run(stop))

    async def _run(self, stop: threading.Event) -> None:
        try:
            from aiokafka import AIOKafkaProducer  # noqa: PLC0415
        except ImportError as exc:
            raise ExtraMissing("The Kafka bridge", "kafka", "aiokafka") from exc
        producer = AIOKafkaProducer(
            bootstrap_servers=self.kafka.bootstrap_servers,
            acks="all",
            linger_ms=5,
            **(self.kafka.security or {}),
        )
        try:
            await producer.start()
        except Exception as exc:  # aiokafka's KafkaConnectionError and friends
            await producer.stop()
            raise BrokerError(
                f"cannot reach Kafka at {self.kafka.bootstrap_servers}: {exc}. "
                "Check kafka.bootstrap_servers and the security settings."
            ) from exc
        try:
            connection = self._connect()
        except BrokerError:  # says why: wrong password, untrusted CA, nothing listening ...
            await producer.stop()
            raise
        pending: deque[tuple[int, int, asyncio.Future[Any]]] = deque()
        try:
            while not stop.is_set() or not self._incoming.empty() or pending:
                await self._take(producer, pending)
                while pending and pending[0][2].done():
                    mid, session, done = pending.popleft()
                    done.result()  # a Kafka failure ends the bridge: the broker redelivers
                    if connection.ack(mid, session):
                        self.counters.acknowledged += 1
                    else:  # the id may name another message on the new connection
                        self.counters.stale_acks += 1
                if stop.is_set() and self._incoming.empty() and pending:
                    await asyncio.wait([f for _, _, f in pending])
                await asyncio.sleep(0 if pending else 0.005)
        finally:
            connection.disconnect()
            connection.join()
            await producer.stop()

    async def _take(
        self, producer: Any, pending: deque[tuple[int, int, asyncio.Future[Any]]]
    ) -> None:
        for _ in range(1000):
            try:
                topic, payload, mid, session = self._incoming.get_nowait()
            except queue.Empty:
                return
            reason, key = problem_of(topic, payload)
            if reason is None:
                # a status goes with its site's batches, in order, marked by its MQTT topic
                headers = [(STATUS_HEADER, topic.encode())] if topic.endswith("/status") else None
                future = await producer.send(
                    self.kafka.batches_topic, payload, key=key.encode(), headers=headers
                )
                self.counters.produced += 1
            else:
                letter = msgspec.json.encode(  # bounded: huge payloads cannot fill the topic
                    DeadLetter.of_payload(
                        payload,
                        received_at=iso_ms(time.time_ns() // 1_000_000),
                        topic=topic,
                        reason=reason,
                    )
                )
                future = await producer.send(self.kafka.deadletter_topic, letter, key=key.encode())
                self.counters.rejected += 1
                log.warning("bridge.rejected", extra={"topic": topic, "reason": reason})
            pending.append((mid, session, future))

    def _connect(self) -> Connection:
        # TLS (verified) and credentials as every MilkGuard client: the password never
        # crosses the network in clear when mqtt.tls_ca is set
        def subscribe(client: Any) -> None:
            client.on_subscribe = lambda *_: self.ready.set()
            client.subscribe([(BATCH_SUBSCRIPTION, 1), (STATUS_SUBSCRIPTION, 1)])

        def on_message(c: Any, u: object, message: Any) -> None:
            self.counters.received += 1
            # blocks the network thread while the queue is full: backpressure to the broker;
            # the session number goes with the id: the PUBACK is only for that connection
            item = (topic_of(message), bytes(message.payload), message.mid, connection.session)
            self._incoming.put(item)

        # made before it connects: a persistent session's messages arrive right after CONNACK
        connection = Connection(
            self.mqtt,
            self.client_id,
            clean_session=False,
            manual_ack=True,
            on_message=on_message,
            on_connect_extra=subscribe,
        )
        connection.start(retry_first=False)
        connection.wait_connected(CONNECT_TIMEOUT_S)
        return connection

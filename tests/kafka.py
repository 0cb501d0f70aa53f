"""Kafka plumbing for tests: topics, producing as the bridge does, consuming what landed."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence


async def create_topics(bootstrap: str, topics: dict[str, int]) -> None:
    """Create ``topics`` (name: partitions). Produce-only topics would otherwise be
    auto-created with tansu's default of 4 partitions."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: PLC0415

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, n, 1) for name, n in topics.items()])
    finally:
        await admin.close()


async def produce(
    bootstrap: str, topic: str, records: Sequence[tuple[bytes, bytes, int]], pace_s: float = 0.0
) -> None:
    """(key, value, timestamp ms) records, in order, acknowledged by every replica."""
    from aiokafka import AIOKafkaProducer  # noqa: PLC0415

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key, value, stamp in records:
            await producer.send(topic, value, key=key, timestamp_ms=stamp)
            if pace_s:
                await asyncio.sleep(pace_s)
        await producer.flush()
    finally:
        await producer.stop()


async def consume(
    bootstrap: str, topic: str, count: int, timeout_s: float = 30.0
) -> list[tuple[bytes, int, bytes]]:
    """(key, partition, value) of the first ``count`` records, in offset order per partition."""
    from aiokafka import AIOKafkaConsumer  # noqa: PLC0415

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    records: list[tuple[bytes, int, bytes]] = []
    try:
        while len(records) < count:
            batch = await asyncio.wait_for(consumer.getmany(timeout_ms=500), timeout_s)
            for part, messages in batch.items():
                records += [(m.key, part.partition, m.value) for m in messages]
    finally:
        await consumer.stop()
    return records


async def consume_all(bootstrap: str, topic: str, quiet_s: float = 2.0) -> list[bytes]:
    """Every value in ``topic`` so far: read until nothing new came for ``quiet_s``."""
    records = await consume_records(bootstrap, topic, quiet_s)
    return [value for *_, value in records if value is not None]


async def consume_records(
    bootstrap: str, topic: str, quiet_s: float = 2.0
) -> list[tuple[int, int, int, bytes | None]]:
    """(partition, offset, timestamp ms, value) of every record in ``topic`` so far, in offset
    order per partition: read until nothing new came for ``quiet_s``."""
    from aiokafka import AIOKafkaConsumer  # noqa: PLC0415

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    records: list[tuple[int, int, int, bytes | None]] = []
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=round(quiet_s * 1000))
            if not batch:
                return records
            for part, messages in batch.items():
                records += [(part.partition, m.offset, m.timestamp, m.value) for m in messages]
    finally:
        await consumer.stop()


async def commit_offsets(bootstrap: str, group: str, topic: str, offsets: dict[int, int]) -> None:
    """Commit ``offsets`` (partition: next offset to read) for consumer group ``group``."""
    from aiokafka import AIOKafkaConsumer, TopicPartition  # noqa: PLC0415
    from aiokafka.structs import OffsetAndMetadata  # noqa: PLC0415

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in offsets]
        consumer.assign(partitions)
        await consumer.commit(
            {tp: OffsetAndMetadata(offsets[tp.partition], "") for tp in partitions}
        )
    finally:
        await consumer.stop()

"""``milkguard worker``: the rule engine on Kafka, as faust-streaming workers.

Partitions. The bridge keys every batch by its site, so all of a site's gateways land in one
partition of the batches topic, each in its order. Every rule judges the assets of one site, so
a partition is judged by one engine compiled for the plan's sites that hash to it (the murmur2
partitioner every Kafka producer uses by default): a site judged elsewhere is never "silent"
here. Workers of one ``worker.group`` split the partitions; Faust moves them on a rebalance.

Durability. Every ``worker.checkpoint_s`` the worker makes its work durable, in this order:

1. the deviation changes and dead letters it produced are confirmed by Kafka;
2. the InfluxDB lines it produced are written (retried with backoff while InfluxDB is down);
3. per partition, a snapshot of the engine, the duplicate windows and the offset of the last
   message taken goes to the changelog of a Faust table (restored on whichever worker gets the
   partition next);
4. the messages are acknowledged, so Faust commits their offsets.

A worker that dies anywhere in between leaves its partitions to another (or to itself,
restarted), which restores the last snapshot and takes the messages after it again: those at
or below the snapshot's offset are skipped, the others are judged again exactly as before (a
partition's clock is its messages' Kafka timestamps, the bridge's receive times), so a change
may be produced twice, with the same deviation id: consumers drop repeats by (id, change).
Nothing is lost. A rebalance that revokes a partition from a live worker checkpoints it first.

Late readings. The snapshot in the changelog is the engine's light one: it leaves out the
judged history the late path retains (up to 10 MB, far beyond a Kafka record's size, sent every
checkpoint). So a partition restored on another worker (or this one, restarted) has no history
before its restore point: a late reading older than what its channel had judged at that point
is counted ``late_beyond_bound`` and stored, never judged on half its context; late readings
newer than it are judged as ever. (A changelog journal like ``milkguard run``'s would keep
them: :mod:`stream.journal`.)

Position. The snapshot's offset, not the committed one, says where a partition goes on: its
next message must be the one right after (a partition with no snapshot starts at the
beginning of the topic). Faust does not deliver every message after the committed offset to
the agent around a rebalance or a start (measured here with kill -9 tests: a message dropped
before the agent, or acknowledged unseen, and the commit of the next checkpoint passing over
it). A partition whose next message is not the expected one is paused, sought back to the
expected offset once the messages already fetched have passed (at the next tick), and
resumed; what came out of order is taken again after. An expected offset that Kafka's
retention has already deleted is logged as an error and passed over: those readings are gone.
The batches topic must hold every offset (the bridge produces without transactions; no
compaction).

Backpressure. InfluxDB lines wait in a bounded buffer; once it is full the agent stops taking
messages until InfluxDB confirms some, so Faust stops fetching: Kafka, not memory, holds the
backlog.

Time. A partition with no message for ``worker.tick_s`` is moved on by the wall time since its
last message, so a gateway gone quiet is found silent; a partition still working through a
backlog is never ticked, so a backlog does not look like silence.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import zlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from milkguard.broker_security import known_gateways
from milkguard.errors import ConfigError, ExtraMissing
from stream.counts import StreamCounts, counts_of
from stream.dashboard_series import DEFAULT_LIMITS_EVERY_MS
from stream.engine.core import Engine, SnapshotMismatch
from stream.engine.deviation import DeviationChange
from stream.errors import InfluxWriteError
from stream.ingest import DEFAULT_FUTURE_TOLERANCE_MS, Ingest
from stream.plan import LoadedPlan, load_plan
from stream.settings import STATUS_HEADER, StreamSettings
from stream.signed import load_stream_signer, sealed_change
from stream.sinks.base import DeadLetter, TimeSeriesSink
from stream.sinks.files import LineProtocolFileSink

log = logging.getLogger(__name__)

#: 2: the engine's snapshot zlib-compressed (1: as it is; still read)
STATE_FORMAT = 2
#: Every checkpoint sends each changed partition's snapshot to Kafka: compressed (11x on the
#: bench's 1,250 channels a partition, 0.6 ms) it costs the socket and the broker far less
STATE_COMPRESSION = 1
#: how long a paused partition waits for the messages fetched before its pause to go by
REWIND_SETTLE_S = 0.5
#: (value, offset, timestamp in ms, topic) of one message of the batches topic
KafkaMessage = tuple[bytes | None, int, int, str]
#: At most this many messages are judged as one batch (10,000 readings of 50-reading messages,
#: 100,000 of 500-reading ones: a fraction of a second between two looks at the event loop,
#: where the checkpoint and tick timers run)...
TAKE_MESSAGES = 200
#: ...or what arrived within this long: the latency a batch may add to a quiet stream.
TAKE_WITHIN_S = 0.01
_ENCODER = msgspec.json.Encoder()


def partition_of(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives ``key`` (murmur2, as in the Java client)."""
    from aiokafka.partitioner import murmur2  # noqa: PLC0415

    hashed: int = murmur2(key)
    return (hashed & 0x7FFFFFFF) % partitions


def sites_of_partition(plan: LoadedPlan, partition: int, partitions: int) -> set[str]:
    """The plan's sites whose batches land in ``partition``."""
    return {s for s in plan.sites if partition_of(s.encode(), partitions) == partition}


class _State(msgspec.Struct):
    """What a partition's changelog entry holds."""

    format: int
    offset: int  # the last message the snapshot includes
    engine: bytes  # compressed from format 2
    windows: dict[str, tuple[int, list[tuple[int, int]]]]
    clock_ms: int  # the partition's clock: the newest message timestamp taken


class _Outputs:
    """Deviation changes and dead letters of one partition, until they are sent to Kafka."""

    def __init__(self) -> None:
        self.changes: list[DeviationChange] = []
        self.letters: list[DeadLetter] = []

    def emit(self, change: DeviationChange) -> None:
        self.changes.append(change)

    def reject(self, letter: DeadLetter) -> None:
        self.letters.append(letter)

    def flush(self) -> None:
        """Sent by the worker, not here."""

    def close(self) -> None:
        """Nothing held beyond the worker's lists."""


@dataclass
class PartitionWork:
    """One partition: its engine and ingest, and what is not yet durable."""

    number: int
    ingest: Ingest
    outputs: _Outputs
    offset: int = -1  # the last message taken (or that the restored snapshot includes)
    anchored: bool = True  # the offset is known: the next message must follow it
    clock_ms: int = -1
    quiet_since: float = field(default_factory=time.monotonic)
    unacked: list[Any] = field(default_factory=list)  # Faust events
    dirty: bool = False
    baseline: StreamCounts = field(default_factory=StreamCounts)  # counted before this process

    @classmethod
    def start(
        cls,
        number: int,
        plan: LoadedPlan,
        timeseries: TimeSeriesSink,
        saved: bytes | None,
        *,
        future_tolerance_ms: int = DEFAULT_FUTURE_TOLERANCE_MS,
        known_gateways: Collection[tuple[str, str]] = (),
        limits_every_ms: int = DEFAULT_LIMITS_EVERY_MS,
    ) -> PartitionWork:
        """A partition's work, carrying on from its saved state when there is one."""
        outputs = _Outputs()
        engine: Engine | None = None
        state: _State | None = None
        if saved is not None:
            try:
                state = _read_state(saved)
            except (msgspec.DecodeError, msgspec.ValidationError, zlib.error) as exc:
                log.warning("worker.state_discarded", extra={"partition": number, "why": str(exc)})
        if state is not None:
            try:
                # a light snapshot (format 2, see the module): no history before it
                engine = Engine.restore(plan, state.engine, history=None)
            except SnapshotMismatch as exc:
                # another plan: a fresh engine, but from the saved position (what the snapshot
                # includes is stored already; judging it again would only repeat it)
                log.warning("worker.engine_discarded", extra={"partition": number, "why": str(exc)})
        ingest = Ingest(
            engine or Engine(plan),
            timeseries,
            outputs,
            outputs,
            future_tolerance_ms=future_tolerance_ms,
            known_gateways=known_gateways,
            dashboards=True,
            limits_every_ms=limits_every_ms,
        )
        # an unreadable snapshot leaves the position to the committed offset, as before it
        work = cls(number, ingest, outputs, baseline=counts_of(ingest), anchored=saved is None)
        if state is not None:
            ingest.restore_windows(state.windows)
            work.offset, work.clock_ms, work.anchored = state.offset, state.clock_ms, True
        return work

    def follows(self, offset: int) -> bool:
        """Whether the message at ``offset`` may be taken now: the next one, or one the saved
        state includes. False when messages before it have not reached this work."""
        return self.following([offset]) == 1

    def following(self, offsets: Sequence[int]) -> int:
        """How many of ``offsets``, taken in order, may be taken now: all up to the first one
        that messages before it have not reached (see :meth:`follows`)."""
        last, anchored = self.offset, self.anchored
        for count, offset in enumerate(offsets):
            if anchored and offset > last + 1:
                return count
            last, anchored = max(last, offset), True
        return len(offsets)

    def take(self, payload: bytes | None, offset: int, timestamp_ms: int, origin: str) -> bool:
        """Judge one message; False if the saved state already includes it (see
        :meth:`take_many`)."""
        return self.take_many([(payload, offset, timestamp_ms, origin)])[0]

    def take_many(self, messages: Sequence[KafkaMessage]) -> list[bool]:
        """Judge messages of this partition, in offset order, as one batch (the engine advances
        once, to the partition's clock); for each, False if the saved state already includes it.

        Total, like ingest: a message without a value (a tombstone) is judged as an empty
        payload (dead-lettered), and a timestamp further ahead of the wall clock than the future
        tolerance, or a missing one, does not move the partition's clock (it would make every
        later message late).
        """
        fresh: list[tuple[bytes, int, str]] = []
        taken: list[bool] = []
        wall_ms = time.time_ns() // 1_000_000
        horizon = wall_ms + self.ingest.future_tolerance_ms
        for payload, offset, timestamp_ms, origin in messages:
            if offset <= self.offset:
                taken.append(False)
                continue
            if 0 <= timestamp_ms <= horizon:
                self.clock_ms = max(self.clock_ms, timestamp_ms)
            elif self.clock_ms < 0:
                self.clock_ms = wall_ms  # no usable time yet: now is the best guess
            fresh.append((payload or b"", self.clock_ms, origin))
            self.offset, self.anchored = offset, True
            taken.append(True)
        if fresh:
            self.ingest.handle_bridged_many(fresh)
            self.quiet_since = time.monotonic()
            self.dirty = True
        return taken

    def counts(self) -> StreamCounts:
        """What this process counted on the partition."""
        return counts_of(self.ingest).less(self.baseline)

    def tick(self, now: float) -> None:
        """Move a quiet partition's clock on by the wall time since its last message."""
        if self.clock_ms < 0:
            return
        self.ingest.tick(self.clock_ms + round((now - self.quiet_since) * 1000))
        self.dirty = True

    def state(self) -> bytes:
        """The snapshot for the changelog."""
        snapshot = _State(
            format=STATE_FORMAT,
            offset=self.offset,
            # light: the late path's history stays out of a record sent every checkpoint
            engine=zlib.compress(self.ingest.engine.snapshot(history=False), STATE_COMPRESSION),
            windows=self.ingest.windows(),
            clock_ms=self.clock_ms,
        )
        return msgspec.msgpack.encode(snapshot)


def _read_state(saved: bytes) -> _State:
    """A changelog entry, its engine snapshot uncompressed."""
    state = msgspec.msgpack.decode(saved, type=_State)
    if state.format == STATE_FORMAT:
        state.engine = zlib.decompress(state.engine)
    elif state.format != 1:
        raise msgspec.ValidationError(
            f"state format {state.format} is not one this worker reads (1 or {STATE_FORMAT}): "
            "written by a newer MilkGuard"
        )
    return state


@dataclass(slots=True)
class WorkerCounters:
    """What the worker did beyond what ingest and the engines count."""

    skipped: int = 0  # messages the restored state already included
    rewinds: int = 0  # partitions sought back because a message had not reached the agent
    checkpoints: int = 0
    restored: int = 0  # partitions carried on from a saved state
    deviations_sent: int = 0
    deviations_unpublishable: int = 0  # outside the wire contract: logged, never sent unsigned
    letters_sent: int = 0


class Worker:
    """The Faust app: one agent over the batches topic, one table of partition states."""

    def __init__(
        self,
        settings: StreamSettings,
        plan: LoadedPlan,
        partitions: int,
        timeseries: TimeSeriesSink,
        influx: Any = None,  # the InfluxDBSink when writing to InfluxDB, for flush_through
    ) -> None:
        try:
            import faust  # noqa: PLC0415
        except ImportError as exc:
            raise ExtraMissing("milkguard worker", "kafka", "faust-streaming") from exc
        self.settings = settings
        self.plan = plan
        self.partitions = partitions
        self.timeseries = timeseries
        self.influx = influx
        self.counters = WorkerCounters()
        self.signer = load_stream_signer(settings)  # every deviation sent is signed with it
        self.work: dict[int, PartitionWork] = {}
        self.retired = StreamCounts()  # counted on partitions since revoked
        self.ready = False
        kafka, worker = settings.kafka, settings.worker
        self.app = faust.App(
            worker.group,
            broker=[f"kafka://{server}" for server in kafka.bootstrap_servers.split(",")],
            broker_credentials=_credentials(settings),
            store="memory://",
            web_enabled=False,
            topic_partitions=partitions,
            topic_replication_factor=kafka.replication_factor,
            topic_allow_declare=True,
            consumer_auto_offset_reset="earliest",
            broker_session_timeout=worker.session_timeout_s,
            broker_heartbeat_interval=worker.heartbeat_interval_s,
            consumer_max_fetch_size=worker.fetch_partition_bytes,
            broker_commit_every=10_000,
            # offsets are only acknowledged by a checkpoint: commit soon after each one
            broker_commit_interval=worker.checkpoint_s / 4,
            producer_acks=-1,
            table_standby_replicas=0,
        )
        self.batches = self.app.topic(
            kafka.batches_topic, key_type=bytes, value_type=bytes, value_serializer="raw"
        )
        self.deviations = self.app.topic(
            kafka.deviations_topic, partitions=partitions, value_serializer="raw"
        )
        self.deadletter = self.app.topic(
            kafka.deadletter_topic, partitions=partitions, value_serializer="raw"
        )
        self.table = self.app.Table(
            "partition-state",
            partitions=partitions,
            key_type=int,  # the partition (json on the wire)
            value_type=bytes,  # the state, msgpack (raw on the wire)
        )
        self._lock = asyncio.Lock()  # the partitions' work: taking, ticking, snapshotting
        self._checkpointing = asyncio.Lock()  # states reach the changelog in the order taken
        self._checkpointing_messages = 0  # taken by the checkpoint under way, not yet acked
        self._rewinding: dict[int, tuple[Any, float]] = {}  # partition: (its TP, paused at)
        self.app.agent(self.batches, name="judge")(self._judge)
        self.app.timer(worker.tick_s)(self._tick)
        self.app.timer(worker.checkpoint_s)(self._checkpoint_all)
        # mode's signal stubs want a positional-only sender; a bound method works the same
        self.app.on_partitions_revoked.connect(self._on_revoked)  # type: ignore[arg-type]

    def assigned(self) -> set[int]:
        """The partitions of the batches topic this worker holds now."""
        topic = self.settings.kafka.batches_topic
        return {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == topic}

    def unacknowledged(self) -> int:
        """Messages taken but not yet made durable (so their offsets are not committed)."""
        pending = sum(len(work.unacked) for work in list(self.work.values()))
        return pending + self._checkpointing_messages

    def counts(self) -> StreamCounts:
        """Ingest and engine counters of every partition this process judged."""
        total = self.retired
        for work in list(self.work.values()):
            total = total.plus(work.counts())
        return total

    # ------------------------------------------------------------------ the agent

    async def _judge(self, stream: Any) -> None:
        """Judge what has arrived as one batch per partition.

        Up to ``TAKE_MESSAGES`` messages are taken at once (fewer when no more came within
        ``TAKE_WITHIN_S``); each partition's share is handed to its ingest in offset order and
        its engine is moved once, so a backlog costs one release per batch, not per message.
        Nothing is acknowledged here: a checkpoint does it once the outputs are durable.
        """
        async for events in stream.noack_take(TAKE_MESSAGES, within=TAKE_WITHIN_S):
            async with self._lock:
                # Faust's own rule for a message it hands out, checked again under the lock
                # (which a revocation's checkpoint holds): one taken before a rebalance, or
                # during one, is judged by its partition's next owner, from the changelog
                generation = self.app.consumer_generation_id
                current = self.app.flow_control.is_active()
                by_partition: dict[int, list[Any]] = {}
                for event in events:
                    if current and event.message.generation_id == generation:
                        by_partition.setdefault(event.message.partition, []).append(event)
                for number, taken in by_partition.items():
                    work = self._work_of(number)
                    self._take_all(work, taken)
                    await self._send_outputs(work)
            if self.influx is not None:
                while self.influx.saturated:  # backpressure: stop taking until InfluxDB catches up
                    await asyncio.sleep(0.05)

    def _take_all(self, work: PartitionWork, events: list[Any]) -> None:
        """Judge a partition's messages as one batch; those taken wait for a checkpoint. From
        the first one that does not follow the last taken, none is taken: the partition is
        rewound, and they come again, in order (they are not acknowledged)."""
        messages: list[KafkaMessage] = []
        for event in events:
            message = event.message
            stamp = _stamp_ms(message.timestamp)
            origin = _status_topic(message.headers) or message.topic
            messages.append((message.value, message.offset, stamp, origin))
        following = work.following([offset for _, offset, _, _ in messages])
        for event, taken in zip(
            events[:following], work.take_many(messages[:following]), strict=True
        ):
            if taken:
                work.unacked.append(event)
            else:
                self.counters.skipped += 1
                event.ack()
        if following < len(events):
            self._rewind(work, events[following].message)

    def _work_of(self, partition: int) -> PartitionWork:
        work = self.work.get(partition)
        if work is None:
            plan = self.plan.for_sites(sites_of_partition(self.plan, partition, self.partitions))
            saved = self.table.data.get(partition)
            tolerance_ms = round(self.settings.future_tolerance_h * 3_600_000)
            work = PartitionWork.start(
                partition,
                plan,
                self.timeseries,
                saved,
                future_tolerance_ms=tolerance_ms,
                known_gateways=known_gateways(self.settings.mqtt.security),
                limits_every_ms=round(self.settings.limits_every_s * 1000),
            )
            self.work[partition] = work
            if saved is not None:
                self.counters.restored += 1
            log.info(
                "worker.partition_taken",
                extra={
                    "partition": partition,
                    "sites": len(plan.sites),
                    "restored_offset": work.offset,
                },
            )
            self.ready = True
        return work

    async def _send_outputs(self, work: PartitionWork) -> None:
        outputs = work.outputs
        for change in outputs.changes:
            d = change.deviation
            try:
                sealed = sealed_change(change, self.signer)
            except msgspec.ValidationError as exc:
                self.counters.deviations_unpublishable += 1
                log.error("deviation.unpublishable", extra={"deviation": d.id, "error": str(exc)})
                continue
            await self.deviations.send(key=d.site.encode(), value=sealed)
            self.counters.deviations_sent += 1
        for letter in outputs.letters:
            await self.deadletter.send(
                key=(letter.site or "unknown").encode(), value=_ENCODER.encode(letter)
            )
        self.counters.letters_sent += len(outputs.letters)
        outputs.changes.clear()
        outputs.letters.clear()

    def _rewind(self, work: PartitionWork, message: Any) -> None:
        """A message came before the ones between the last taken and it: pause the partition;
        :meth:`_seek_rewound` seeks it back once what was fetched already has gone by."""
        work.quiet_since = time.monotonic()  # not quiet: its messages are on their way
        if work.number in self._rewinding:
            return  # fetched before the pause
        from faust.types import TP  # noqa: PLC0415 - the optional extra, loaded by __init__

        # Faust's own type: its set of active partitions asserts it (aiokafka's would crash
        # the fetcher once resumed)
        tp = TP(message.topic, message.partition)
        self.app.consumer.pause_partitions({tp})
        self._rewinding[work.number] = (tp, time.monotonic())
        self.counters.rewinds += 1
        log.warning(
            "worker.rewinding",
            extra={"partition": work.number, "expected": work.offset + 1, "got": message.offset},
        )

    async def _seek_rewound(self, now: float) -> None:
        """Seek each paused partition back to its next message and resume it. Seeking while
        Faust still hands over messages fetched before would be undone by them (it drops
        offsets below the last it handed over), hence the pause first and the wait."""
        consumer = self.app.consumer
        for number, (tp, paused_at) in list(self._rewinding.items()):
            work = self.work.get(number)
            if work is None or now - paused_at < REWIND_SETTLE_S:
                continue
            expected = work.offset + 1
            try:
                earliest = (await consumer.earliest_offsets(tp)).get(tp, 0)
            except Exception as exc:  # aiokafka's errors: Kafka unreachable; the next tick retries
                log.warning("worker.rewind_failed", extra={"partition": number, "error": repr(exc)})
                continue
            if expected < earliest:
                log.error(
                    "worker.deleted_before_judged",
                    extra={
                        "partition": number,
                        "offsets": f"{expected}-{earliest - 1}",
                        "why": "Kafka's retention deleted them while no worker took them; "
                        "keep the batches topic longer than the longest outage",
                    },
                )
                work.offset, expected = earliest - 1, earliest
            await consumer.seek(tp, expected)
            consumer.resume_partitions({tp})
            del self._rewinding[number]

    # ------------------------------------------------------------------ time

    async def _tick(self) -> None:
        now = time.monotonic()
        quiet_for = self.settings.worker.tick_s
        async with self._lock:
            await self._seek_rewound(now)
            for work in list(self.work.values()):
                if work.number in self._rewinding:
                    continue  # its messages are on their way: not quiet
                if now - work.quiet_since >= quiet_for:
                    work.tick(now)
                    await self._send_outputs(work)

    # ------------------------------------------------------------------ durability

    async def _checkpoint_all(self) -> None:
        await self.checkpoint(set(self.work))

    async def checkpoint(self, partitions: set[int]) -> None:
        """Make the work of ``partitions`` durable (see the module's description)."""
        async with self._checkpointing:
            await self._checkpoint(partitions)

    async def _checkpoint(self, partitions: set[int]) -> None:
        async with self._lock:
            chosen = [self.work[p] for p in sorted(partitions) if p in self.work]
            chosen = [work for work in chosen if work.dirty]
            if not chosen:
                return
            states = {work.number: work.state() for work in chosen}
            events = {work.number: work.unacked for work in chosen}
            for work in chosen:
                work.unacked, work.dirty = [], False
            self._checkpointing_messages = sum(len(taken) for taken in events.values())
            mark = self.influx.added if self.influx is not None else 0
            # the lines so far, taken out here: those of messages judged while the disk works
            # wait for the next checkpoint
            files = self.timeseries if isinstance(self.timeseries, LineProtocolFileSink) else None
            lines = files.detach() if files is not None else []
        if self.influx is not None:
            await self.app.producer.flush()  # 1. deviations and dead letters are in Kafka
            await self._influx_through(mark)  # 2. lines are in InfluxDB
        elif files is not None:
            # 1 and 2 at once: Kafka's acknowledgements and the disk's fsync, the write on a
            # thread so the loop goes on judging (and fetching) meanwhile
            await asyncio.gather(self.app.producer.flush(), asyncio.to_thread(files.write, lines))
        else:
            await self.app.producer.flush()
            self.timeseries.flush()
        sent = [  # 3. the states, in each partition's changelog
            self.table.send_changelog(number, number, state) for number, state in states.items()
        ]
        for number, state in states.items():
            self.table.data[number] = state
        await self.app.producer.flush()
        await asyncio.gather(*sent)
        for taken in events.values():  # 4. the offsets may be committed
            for event in taken:
                event.ack()
        self._checkpointing_messages = 0
        self.counters.checkpoints += 1

    async def _influx_through(self, mark: int) -> None:
        influx = self.influx
        while influx.settled < mark:
            try:
                await asyncio.to_thread(influx.flush_through, mark)
            except InfluxWriteError:
                await asyncio.sleep(max(0.05, influx.retry_in_s))

    async def _on_revoked(self, sender: Any, *args: Any, signal: Any, **_: Any) -> None:
        revoked: set[Any] = args[0]
        mine = {tp.partition for tp in revoked if tp.topic == self.settings.kafka.batches_topic}
        if not mine:
            return
        try:
            await asyncio.wait_for(self.checkpoint(mine), timeout=5.0)
        except Exception as exc:  # any failure: the next owner repeats the work instead
            log.warning("worker.revoke_checkpoint_failed", extra={"error": repr(exc)})
        for number in mine:
            self._rewinding.pop(number, None)  # the next owner seeks anew
            work = self.work.pop(number, None)
            if work is not None:
                self.retired = self.retired.plus(work.counts())
        log.info("worker.partitions_revoked", extra={"partitions": sorted(mine)})


def _status_topic(headers: object) -> str | None:
    """The MQTT topic of a gateway status the bridge forwarded (its header), else None."""
    if not headers:
        return None
    pairs = headers.items() if isinstance(headers, dict) else headers
    for name, value in pairs:  # type: ignore[attr-defined]
        if name == STATUS_HEADER and isinstance(value, bytes):
            return value.decode("utf-8", errors="replace")
    return None


def _stamp_ms(timestamp: object) -> int:
    """A Kafka message's timestamp in ms; -1 (no time) when it is missing or not a number."""
    if not isinstance(timestamp, int | float) or not math.isfinite(timestamp):
        return -1
    return round(timestamp * 1000)


def _credentials(settings: StreamSettings) -> Any:
    """Faust broker credentials from the Kafka security settings (None for PLAINTEXT)."""
    import faust  # noqa: PLC0415

    kafka = settings.kafka
    options = kafka.client_options()
    ssl_context = options.get("ssl_context")
    if kafka.security_protocol.startswith("SASL"):
        assert kafka.sasl_password is not None
        return faust.SASLCredentials(
            username=kafka.sasl_username,
            password=kafka.sasl_password.get_secret_value(),
            mechanism=kafka.sasl_mechanism,
            ssl_context=ssl_context,
        )
    if ssl_context is not None:
        return faust.SSLCredentials(ssl_context)
    return None


async def topic_partitions(settings: StreamSettings) -> int:
    """How many partitions the batches topic has; a clear error if it does not exist."""
    from aiokafka import AIOKafkaConsumer  # noqa: PLC0415
    from aiokafka.errors import KafkaError  # noqa: PLC0415

    kafka = settings.kafka
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap_servers, **kafka.client_options())
    try:
        await consumer.start()
    except KafkaError as exc:
        raise ConfigError(
            f"cannot reach Kafka at {kafka.bootstrap_servers}: {exc}. "
            "Check kafka.bootstrap_servers (MILKGUARD_KAFKA__BOOTSTRAP_SERVERS)."
        ) from exc
    try:
        await consumer.topics()  # fetches the cluster's metadata
        found = consumer.partitions_for_topic(kafka.batches_topic)
    finally:
        await consumer.stop()
    if not found:
        raise ConfigError(
            f"topic {kafka.batches_topic!r} does not exist on {kafka.bootstrap_servers}; "
            f"create it with as many partitions as workers may ever run, e.g. "
            f"kafka-topics.sh --create --topic {kafka.batches_topic} --partitions 12"
        )
    return len(found)


def build_worker(settings: StreamSettings) -> Worker:
    """A worker for ``settings``: the plan loaded, the partition count asked of Kafka, InfluxDB
    (or, without ``influx.*``, line protocol files in ``data_dir``) as the time-series store."""
    plan = load_plan(settings.plan)
    partitions = asyncio.run(topic_partitions(settings))
    influx = settings.influx
    if influx.enabled:
        from stream.sinks.influx import InfluxDBSink  # noqa: PLC0415

        sink = InfluxDBSink.from_settings(influx, settings.data_dir)
        return Worker(settings, plan, partitions, sink, sink)
    log.warning(
        "worker.no_influx",
        extra={"writing_to": str(settings.data_dir), "fix": "set influx.url, token, org, bucket"},
    )
    return Worker(settings, plan, partitions, LineProtocolFileSink(settings.data_dir))


def run_worker(worker: Worker) -> int:
    """Run until SIGTERM or Ctrl-C (Faust's own signal handling), serving metrics if asked."""
    from faust.worker import Worker as FaustWorker  # noqa: PLC0415

    metrics = worker.settings.metrics
    server = None
    if metrics.port is not None:
        from stream.metrics import MetricsServer, WorkerCollector  # noqa: PLC0415

        server = MetricsServer(WorkerCollector(worker), metrics.host, metrics.port)
    level = worker.settings.log_level.lower()
    faust_worker = FaustWorker(worker.app, loglevel=level, quiet=True)
    # Faust's terminal spinner puts the root logger at DEBUG to spin on every record: every
    # library's debug call is then formatted and handled (aiokafka describes each request it
    # sends), a few per cent of the worker's time
    faust_worker.spinner = None
    try:
        faust_worker.execute_from_commandline()
    except SystemExit as exit_:
        return int(exit_.code or 0)
    finally:
        worker.timeseries.close()
        if server is not None:
            server.__exit__(None, None, None)

"""A worker judges what has arrived as one batch per partition (one engine advance): the
verdicts, the stored readings and the counters are those of the same messages one by one, and
messages a restored state already includes are skipped in a batch as they are alone."""

from __future__ import annotations

import zlib
from pathlib import Path

import msgspec

from milkguard.contract.v1 import Batch, Reading, encode_batch
from stream.engine.core import Engine
from stream.engine.deviation import DeviationChange
from stream.plan import load_plan
from stream.sinks.memory import MemoryTimeSeriesSink
from stream.worker import STATE_FORMAT, KafkaMessage, PartitionWork, _State
from tests.conftest import T0
from tests.stream.test_worker import FARMS, plan_yaml, records


def _messages() -> list[KafkaMessage]:
    return [
        (value, offset, stamp, "milkguard.batches")
        for offset, (_, value, stamp) in enumerate(records())
    ]


def _verdict(change: DeviationChange) -> tuple[object, ...]:
    d = change.deviation
    return (d.id, change.kind, d.start_ms, d.end_ms, d.peak, d.time_beyond_s)


def _work(tmp_path: Path) -> tuple[PartitionWork, MemoryTimeSeriesSink]:
    path = tmp_path / "plan.yaml"
    path.write_text(plan_yaml())
    lines = MemoryTimeSeriesSink()
    return PartitionWork.start(0, load_plan(path), lines, None), lines


def test_a_batch_gives_the_verdicts_and_lines_of_its_messages_one_by_one(tmp_path: Path) -> None:
    alone, alone_lines = _work(tmp_path)
    batched, batched_lines = _work(tmp_path)
    messages = _messages()

    taken_alone = [alone.take(*message) for message in messages]
    taken_batched = []
    for start in range(0, len(messages), 37):  # batches that cut across minutes and farms
        taken_batched += batched.take_many(messages[start : start + 37])

    assert taken_alone == taken_batched == [True] * len(messages)
    # the same changes (when they were detected moves with the advance, not what they say)
    changes = sorted(map(_verdict, alone.outputs.changes))
    assert len(changes) == 16  # each of the 8 farms: one opened, one closed
    assert sorted(map(_verdict, batched.outputs.changes)) == changes
    assert sorted(batched_lines.pending) == sorted(alone_lines.pending)
    assert batched.counts() == alone.counts()
    assert (batched.offset, batched.clock_ms) == (alone.offset, alone.clock_ms)


def test_a_batch_skips_what_the_restored_state_already_includes(tmp_path: Path) -> None:
    first, _ = _work(tmp_path)
    messages = _messages()
    first.take_many(messages[:100])
    path = tmp_path / "plan.yaml"
    restored = PartitionWork.start(0, load_plan(path), MemoryTimeSeriesSink(), first.state())

    taken = restored.take_many(messages[90:110])

    assert taken == [False] * 10 + [True] * 10
    assert restored.offset == 109
    assert restored.counts().messages == 10


def test_a_batch_is_taken_up_to_the_first_message_that_does_not_follow(tmp_path: Path) -> None:
    first, _ = _work(tmp_path)
    first.take_many(_messages()[:11])  # offsets 0-10
    path = tmp_path / "plan.yaml"
    restored = PartitionWork.start(0, load_plan(path), MemoryTimeSeriesSink(), first.state())

    # 9 and 10 are in the snapshot, 11 and 12 follow; 13 never reached the worker
    assert restored.following([9, 10, 11, 12, 14, 15]) == 4
    assert restored.following([14]) == 0
    assert restored.take_many(_messages()[9:13]) == [False, False, True, True]
    assert restored.follows(13)
    assert not restored.follows(14)


def test_a_state_saved_before_its_engine_was_compressed_is_restored(tmp_path: Path) -> None:
    first, _ = _work(tmp_path)
    first.take_many(_messages()[:100])
    saved = msgspec.msgpack.decode(first.state(), type=_State)
    assert saved.format == STATE_FORMAT
    older = msgspec.structs.replace(saved, format=1, engine=zlib.decompress(saved.engine))
    path = tmp_path / "plan.yaml"

    restored = PartitionWork.start(
        0, load_plan(path), MemoryTimeSeriesSink(), msgspec.msgpack.encode(older)
    )

    assert restored.offset == 99
    # the changelog's snapshot is light: restored, the engine is the light snapshot's (the
    # judged history before it lost, as on any restore from the changelog)
    light = first.ingest.engine.snapshot(history=False)
    expected = Engine.restore(first.ingest.engine.plan, light)
    assert restored.ingest.engine.snapshot() == expected.snapshot()


def test_a_state_of_a_newer_format_is_discarded_not_misread(tmp_path: Path) -> None:
    first, _ = _work(tmp_path)
    first.take_many(_messages()[:100])
    saved = msgspec.msgpack.decode(first.state(), type=_State)
    newer = msgspec.structs.replace(saved, format=STATE_FORMAT + 1)
    path = tmp_path / "plan.yaml"

    restored = PartitionWork.start(
        0, load_plan(path), MemoryTimeSeriesSink(), msgspec.msgpack.encode(newer)
    )

    assert restored.offset == -1  # left to the committed offset, as with no state
    assert not restored.anchored


def test_a_partition_restored_from_its_changelog_counts_older_late_readings_beyond_the_bound(
    tmp_path: Path,
) -> None:
    """The changelog's snapshot leaves out the judged history (a Kafka record sent every
    checkpoint must stay small). A bulk tank reading above 6 degC that reaches a partition late,
    stamped before the partition's restore point, is judged found late where the partition was
    not moved, and counted beyond the bound (stored, never judged on half its context) where it
    was restored from its changelog."""
    messages = _messages()[:100]
    stayed, _ = _work(tmp_path)
    stayed.take_many(messages)
    moved, _ = _work(tmp_path)
    moved.take_many(messages)
    restored = PartitionWork.start(
        0, load_plan(tmp_path / "plan.yaml"), MemoryTimeSeriesSink(), moved.state()
    )
    ts = T0 + 2 * 60_000 + 30_000  # between minutes 2 and 3, long judged
    backlog = Batch(
        v=1,
        site=FARMS[0],
        gateway="gw-1",
        seq=1000,
        sent_at=ts,
        readings=[Reading("tank-1", "milk_temp", 8.5, "degC", ts)],
    )
    late: KafkaMessage = (encode_batch(backlog), 100, messages[-1][2] + 1000, "milkguard.batches")

    stayed.take_many([late])
    restored.take_many([late])

    found = [c for c in stayed.outputs.changes if c.deviation.start_ms == ts]
    assert found
    assert found[0].deviation.detected_late
    assert not [c for c in restored.outputs.changes if c.deviation.start_ms == ts]
    assert restored.ingest.engine.counters.late_beyond_bound == 1
    changelog = msgspec.msgpack.decode(moved.state(), type=_State)
    engine_state = msgspec.msgpack.decode(zlib.decompress(changelog.engine))
    assert all(column == b"" for column in engine_state["late"][0])  # no history in it

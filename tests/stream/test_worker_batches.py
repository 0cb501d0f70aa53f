"""A worker judges what has arrived as one batch per partition (one engine advance): the
verdicts, the stored readings and the counters are those of the same messages one by one, and
messages a restored state already includes are skipped in a batch as they are alone."""

from __future__ import annotations

import zlib
from pathlib import Path

import msgspec

from stream.engine.deviation import DeviationChange
from stream.plan import load_plan
from stream.sinks.memory import MemoryTimeSeriesSink
from stream.worker import STATE_FORMAT, KafkaMessage, PartitionWork, _State
from tests.stream.test_worker import plan_yaml, records


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
    assert restored.ingest.engine.snapshot() == first.ingest.engine.snapshot()


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

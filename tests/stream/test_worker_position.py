"""Where a partition of ``milkguard worker`` goes on: right after the last message it took or
its snapshot includes, whatever offset Faust hands over (the kill tests found Faust skipping
one around a rebalance)."""

from __future__ import annotations

from pathlib import Path

import pytest

from milkguard.contract.v1 import Batch, Reading, encode_batch
from stream.plan import LoadedPlan, load_plan
from stream.sinks.memory import MemoryTimeSeriesSink
from stream.worker import PartitionWork
from tests.conftest import T0
from tests.stream.test_worker import plan_yaml


def batch(seq: int) -> bytes:
    reading = Reading("comp-2", "temp", 4.0, "degC", T0 + seq * 1000)
    return encode_batch(
        Batch(v=1, site="truck-07", gateway="gw", seq=seq, sent_at=T0, readings=[reading])
    )


def saved_at(plan: LoadedPlan, offset: int) -> bytes:
    """The snapshot of a partition that took batches 1..offset+1 at offsets 0..offset."""
    work = PartitionWork.start(0, plan, MemoryTimeSeriesSink(), None)
    for n in range(offset + 1):
        work.take(batch(n + 1), n, T0 + n * 1000, "milkguard.batches")
    return work.state()


def test_a_partition_without_a_snapshot_starts_at_the_beginning(demo_plan: LoadedPlan) -> None:
    work = PartitionWork.start(0, demo_plan, MemoryTimeSeriesSink(), None)

    assert work.follows(0)
    assert not work.follows(3)  # offsets 0-2 never reached it


def test_a_restored_partition_takes_only_the_message_after_its_snapshot(
    demo_plan: LoadedPlan,
) -> None:
    work = PartitionWork.start(0, demo_plan, MemoryTimeSeriesSink(), saved_at(demo_plan, 10))

    assert work.follows(5)  # included in the snapshot: skipped by take
    assert not work.take(batch(6), 5, T0, "milkguard.batches")
    assert work.follows(11)
    assert not work.follows(12)
    assert work.take(batch(12), 11, T0 + 11_000, "milkguard.batches")
    assert work.follows(12)


def test_an_unreadable_snapshot_leaves_the_position_to_the_committed_offset(
    demo_plan: LoadedPlan,
) -> None:
    work = PartitionWork.start(0, demo_plan, MemoryTimeSeriesSink(), b"\xc1 not msgpack")

    assert work.follows(57)
    work.take(batch(1), 57, T0, "milkguard.batches")
    assert not work.follows(59)


def test_a_snapshot_of_another_plan_keeps_its_position_and_its_duplicate_windows(
    demo_plan: LoadedPlan, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "plan.yaml").write_text(plan_yaml())
    other = load_plan(tmp_path / "plan.yaml")

    work = PartitionWork.start(0, other, MemoryTimeSeriesSink(), saved_at(demo_plan, 10))

    assert "worker.engine_discarded" in caplog.messages  # a fresh engine for the new plan
    assert (work.offset, work.follows(11), work.follows(12)) == (10, True, False)
    work.take(batch(11), 11, T0 + 11_000, "milkguard.batches")  # seq 11 again, at a new offset
    assert work.ingest.counters.duplicates == 1

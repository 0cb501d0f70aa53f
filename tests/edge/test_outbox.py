"""The edge outbox keeps every sample through restarts, kill -9 and a full disk, in order."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from edge.outbox import Outbox
from milkguard.contract.v1 import MilkingStart, Reading, decode_batch
from tests.conftest import T0


def reading(i: int) -> Reading:
    return Reading("tank-1", "milk_temp", 4.0 + i / 1000, "degC", T0 + i * 1000)


def outbox(path: Path, **options: object) -> Outbox:
    return Outbox(path / "outbox.db", site="farm-01", gateway="farm-01-gw", **options)  # type: ignore[arg-type]


def test_samples_are_sealed_into_numbered_batches_and_forgotten_once_acknowledged(
    tmp_path: Path,
) -> None:
    box = outbox(tmp_path)
    box.add([reading(i) for i in range(5)], [MilkingStart(asset="tank-1", ts=T0)])
    first = box.seal(sent_at=T0 + 10_000, max_readings=3)
    second = box.seal(sent_at=T0 + 10_000)

    assert first is not None
    assert second is not None
    assert (first.seq, second.seq) == (1, 2)
    # a call's readings are stored before its events: 3, then the other 2 and the event
    assert [r.ts for r in decode_batch(first.payload).readings] == [T0, T0 + 1000, T0 + 2000]
    rest = decode_batch(second.payload)
    assert ([r.ts for r in rest.readings], len(rest.events)) == ([T0 + 3000, T0 + 4000], 1)
    assert [s.seq for s in box.unsent()] == [1, 2]

    box.acknowledged(1)
    assert [s.seq for s in box.unsent()] == [2]
    assert box.backlog() == (0, 1)


def test_a_restart_resends_unacknowledged_batches_with_their_numbers(tmp_path: Path) -> None:
    box = outbox(tmp_path)
    box.add([reading(i) for i in range(3)])
    sealed = box.seal(sent_at=T0)
    box.add([reading(3)])
    box.close()

    again = outbox(tmp_path)
    (resend,) = again.unsent()
    assert sealed is not None
    assert (resend.seq, resend.payload) == (sealed.seq, sealed.payload)
    following = again.seal(sent_at=T0)
    assert following is not None
    assert following.seq == sealed.seq + 1
    assert [r.ts for r in decode_batch(following.payload).readings] == [T0 + 3000]


def test_every_sample_stored_before_a_kill_9_is_there_after_it(tmp_path: Path) -> None:
    writer = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parents[2])!r})
        from pathlib import Path
        from edge.outbox import Outbox
        from milkguard.contract.v1 import Reading
        box = Outbox(Path({str(tmp_path)!r}) / "outbox.db", site="farm-01", gateway="gw")
        i = 0
        while True:
            box.add([Reading("tank-1", "milk_temp", 4.0, "degC", {T0} + i * 1000)])
            if i % 7 == 6:
                box.seal(sent_at={T0}, max_readings=5)
            print(i, flush=True)
            i += 1
        """
    )
    process = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    stored = -1
    for line in process.stdout:
        stored = int(line)
        if stored >= 300:
            break
    os.kill(process.pid, signal.SIGKILL)  # mid-write: no chance to close anything
    process.wait()

    box = Outbox(tmp_path / "outbox.db", site="farm-01", gateway="gw")
    kept: list[int] = []
    for sealed in box.unsent(limit=10_000):
        kept.extend((r.ts - T0) // 1000 for r in decode_batch(sealed.payload).readings)
    while (rest := box.seal(sent_at=T0, max_readings=10_000)) is not None:
        kept.extend((r.ts - T0) // 1000 for r in decode_batch(rest.payload).readings)
    assert kept[: stored + 1] == list(range(stored + 1))  # all of them, in order, once
    assert len(kept) == len(set(kept))


def test_when_full_the_oldest_batches_go_first_and_are_counted(tmp_path: Path) -> None:
    box = outbox(tmp_path, max_bytes=4_000)
    for start in range(0, 400, 20):
        box.add([reading(i) for i in range(start, start + 20)])
        box.seal(sent_at=T0)

    assert box.counters.dropped_readings > 0
    assert box.size_bytes < 4_000 + 2_000  # bounded (one batch of slack)
    newest = decode_batch(box.unsent(limit=1000)[-1].payload)
    assert newest.readings[-1].ts == T0 + 399_000  # the newest kept


def test_refuse_new_keeps_what_is_stored_and_counts_what_it_refused(tmp_path: Path) -> None:
    box = outbox(tmp_path, max_bytes=2_000, when_full="refuse_new")
    accepted = [box.add([reading(i) for i in range(s, s + 20)]) for s in range(0, 200, 20)]

    assert accepted[0] is True
    assert accepted[-1] is False
    assert box.counters.refused_readings > 0
    assert box.nearly_full


def test_when_full_and_nothing_is_sealed_the_oldest_samples_go_first(tmp_path: Path) -> None:
    # offline, the agent does not seal: the policy must still make room, not refuse everything
    box = outbox(tmp_path, max_bytes=3_000)
    for start in range(0, 400, 10):
        assert box.add([reading(i) for i in range(start, start + 10)])

    assert box.counters.dropped_readings > 0
    assert box.size_bytes <= 3_000 + 1_000  # bounded (one add of slack)
    kept = box.seal(sent_at=T0, max_readings=10_000)
    assert kept is not None
    timestamps = [r.ts for r in decode_batch(kept.payload).readings]
    assert timestamps[-1] == T0 + 399_000
    assert timestamps == sorted(timestamps)
    assert len(timestamps) + box.counters.dropped_readings == 400


def test_acknowledging_several_batches_forgets_them_together(tmp_path: Path) -> None:
    box = outbox(tmp_path)
    for i in range(4):
        box.add([reading(i)])
        box.seal(sent_at=T0)
    assert box.pending == 0

    box.acknowledged(1, 2, 4)

    assert [s.seq for s in box.unsent()] == [3]
    assert box.counters.acknowledged == 3


def test_a_disk_nearly_full_before_the_bound_makes_room_by_the_policy(tmp_path: Path) -> None:
    box = outbox(tmp_path)
    box.add([reading(i) for i in range(100)])
    box.min_free_bytes = 10**18  # more than any disk has: always "low"

    assert box.add([reading(i) for i in range(100, 110)])

    assert 10 <= box.counters.dropped_readings < 30  # about what came in, not everything
    kept = box.seal(sent_at=T0, max_readings=1000)
    assert kept is not None
    assert decode_batch(kept.payload).readings[-1].ts == T0 + 109_000


def test_a_stored_sample_the_contract_refuses_is_set_aside_not_blocking(tmp_path: Path) -> None:
    box = outbox(tmp_path)
    # a gateway clock at 1970 would stamp this; it must not block every batch after it
    box.add([Reading("tank-1", "milk_temp", 4.0, "degC", 1_000), reading(1)])

    sealed = box.seal(sent_at=T0)

    assert sealed is not None
    assert [r.ts for r in decode_batch(sealed.payload).readings] == [T0 + 1000]
    assert box.counters.rejected_samples == 1
    assert box.pending == 0

"""The late path's judged history kept apart from the snapshot, in a journal (issue 14, point 1).

A late HTST breach (PMO Appendix H: product forwarded below the legal temperature is held) must
be judged after a restart exactly as without it. The engine's light snapshot, taken every
second, leaves the retained history out; a runtime appends the history records the engine hands
it to a journal and gives them back at restore.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from stream.engine import Engine
from stream.engine.history import decode
from tests.stream.engine.scenario import Scenario
from tests.stream.engine.test_late import (
    HTST_PLAN,
    backlog,
    htst,
    live_htst,
    the_pmo_backlog,
)


class Journal:
    """A runtime's journal, in memory: records appended, begun again at a whole one."""

    def __init__(self) -> None:
        self.records: list[bytes] = []
        self.begun = 0  # whole records taken

    def take(self, engine: Engine) -> None:
        taken = engine.take_history()
        if taken.whole:
            self.records = []
            self.begun += 1
        if taken.record:
            self.records.append(taken.record)


@pytest.fixture
def line() -> Scenario:
    return Scenario(HTST_PLAN)


def restarted_light(line: Scenario, journal: Journal | None) -> None:
    """The checkpoint's order: the journal written, then the light snapshot; then a restart."""
    if journal is not None:
        journal.take(line.engine)
    light = line.engine.snapshot(history=False)
    history = journal.records if journal is not None else None
    line.engine = Engine.restore(line.engine.plan, light, history=history)


def test_a_restart_from_a_light_snapshot_and_its_journal_judges_the_backlog_the_same(
    line: Scenario,
) -> None:
    """PMO Appendix H: the dip in forward flow (10 to 12 s) in a backlog sent after later live
    data is held. A stream restarted between the live data and the backlog, from a snapshot
    without the history and the journal of it, raises the same deviation, found late, as one
    that ran through."""
    through = Scenario(HTST_PLAN)
    the_pmo_backlog(through)
    through.finish()

    journal = Journal()
    live_htst(line, range(10))
    journal.take(line.engine)  # a checkpoint between: the journal has two records
    live_htst(line, range(13, 33))
    restarted_light(line, journal)
    backlog(line, "plant-01", [r for s in (10, 11, 12) for r in htst(s, 71.5)], 33)
    line.finish()

    assert line.of("htst_temperature") == through.of("htst_temperature")
    assert line.of("htst_temperature")[0].deviation.detected_late


def test_a_light_snapshot_restored_without_its_journal_counts_the_older_backlog_beyond_bound(
    line: Scenario,
) -> None:
    """Without the history (a worker's partition, a journal lost), a late reading older than
    what its channel had judged at the snapshot cannot be judged on its full context: it is
    counted beyond the bound and stored, never judged on half of it, and nothing is raised."""
    live_htst(line, range(10))
    live_htst(line, range(13, 33))
    restarted_light(line, None)
    backlog(line, "plant-01", [r for s in (10, 11, 12) for r in htst(s, 71.5)], 33)
    line.finish()

    assert line.of("htst_temperature") == []
    assert line.engine.counters.late_beyond_bound == 6
    assert line.engine.counters.late_judged == 0


def test_the_light_snapshot_holds_no_history_and_the_full_one_all_of_it(line: Scenario) -> None:
    """The snapshot a runtime writes every second does not grow with the history retained."""
    live_htst(line, range(30))
    full: Any = msgspec.msgpack.decode(line.engine.snapshot())
    light: Any = msgspec.msgpack.decode(line.engine.snapshot(history=False))

    retained_full, retained_light = full["late"][0], light["late"][0]
    assert len(retained_full[1]) == 60 * 8  # 60 readings' timestamps
    assert all(column == b"" for column in retained_light)
    assert light["late"][4] is False


def test_the_journal_gives_back_the_same_releases_through_let_go_and_compaction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Replaying the journal keeps the releases in the order the live engine kept them, so the
    oldest are let go the same way and a late reading is judged (or counted beyond the bound)
    the same: the restored engine's full snapshot is the live one's, byte for byte, with the
    cap and the journal's begin-again small enough to happen many times; so is an engine
    restored from one record of everything retained."""
    monkeypatch.setattr("stream.engine.late._RETAINED_READINGS", 40)
    monkeypatch.setattr("stream.engine.late._JOURNAL_CAPS", 2)
    live = Scenario(HTST_PLAN)
    journal = Journal()
    for second in range(200):
        live.send("plant-01", htst(second, 72.5 if second % 17 else 71.0))
        if second % 7 == 0:
            journal.take(live.engine)
        if second % 50 == 49:  # a backlog: judged late, kept too
            backlog(live, "plant-01", htst(second - 3.5, 71.0), second + 1)
    journal.take(live.engine)
    light = live.engine.snapshot(history=False)

    restored = Engine.restore(live.engine.plan, light, history=journal.records)
    # one record of everything retained (an archive file's header) gives back the same
    whole = [live.engine.history_record()]
    from_whole = Engine.restore(live.engine.plan, light, history=whole)

    assert journal.begun > 3
    assert restored.snapshot() == live.engine.snapshot()
    assert from_whole.snapshot() == live.engine.snapshot()


def test_a_history_record_keeps_each_release_and_whether_it_is_sorted(line: Scenario) -> None:
    """One record per checkpoint holds the releases since the last, each as it was kept."""
    live_htst(line, range(3))
    first = line.engine.take_history()
    live_htst(line, range(3, 5))
    second = line.engine.take_history()

    assert first.whole
    assert (first.readings, second.readings, second.whole) == (6, 4, False)
    releases = decode(second.record)
    assert [(len(r.rows), in_order) for r, in_order in releases] == [(2, True), (2, True)]
    assert line.engine.take_history().record == b""

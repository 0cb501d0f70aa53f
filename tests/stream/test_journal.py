"""The engine's judged history in a journal beside the checkpoint (issue 14, point 1).

PMO Appendix H: product forwarded below the legal temperature during a link drop is held, even
when the gateway sends that backlog after its live data. The stream must raise the same
deviation, found late, whether or not it was restarted (or killed) between the live data and
the backlog; and it must do so without writing the whole judged history at every checkpoint.
These tests run the checkpoint discipline as ``milkguard run`` wires it: outputs and the
journal durable, then the checkpoint (a light engine snapshot, the journal's size), then the
acknowledgement; a restart cuts the journal back to the checkpoint and restores from both.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest

from stream.checkpoint import (
    CHECKPOINT_FORMAT,
    Checkpoint,
    Checkpointer,
    CheckpointFile,
    file_names,
    file_paths,
    positions_of,
    restore_files,
)
from stream.engine import DeviationChange, Engine
from stream.journal import HistoryJournal
from tests.stream.engine.scenario import Scenario, at
from tests.stream.engine.test_late import HTST_PLAN, htst


class Stream:
    """An engine run with the live runtime's checkpoint discipline, in ``home``."""

    def __init__(self, home: Path, plan: str = HTST_PLAN) -> None:
        self.home = home
        self.line = Scenario(plan)
        self.store = CheckpointFile(home / "stream.checkpoint")
        self.journal = HistoryJournal(self.store.path)
        saved = self.store.load()
        if saved is not None:
            restore_files([self.journal], file_paths(saved.files, home))
            engine = Engine.restore(
                self.line.engine.plan, saved.engine, history=self.journal.records
            )
            self.line.engine = engine
        self.checkpointer: Checkpointer[int] = Checkpointer(
            self.store,
            make_durable=self.journal.durable_after(lambda: None, self.engine),
            state=self.state,
            acknowledge=lambda _: None,
            on_saved=self.journal.saved,
        )

    @property
    def engine(self) -> Engine:
        return self.line.engine

    def state(self) -> Checkpoint:
        return Checkpoint(
            format=CHECKPOINT_FORMAT,
            plan_version=self.engine.plan.version,
            engine=self.engine.snapshot(history=False),
            windows={},
            files=file_names(positions_of([self.journal]), self.home),
        )

    def live(self, seconds: range, temp: float = 72.5) -> None:
        for second in seconds:
            self.line.send("plant-01", htst(second, temp))

    def backlog(self, seconds: list[int], temp: float, received_s: float) -> None:
        readings = [r for s in seconds for r in htst(s, temp)]
        self.line.send("plant-01", readings, received=at(received_s))

    def checkpoint(self) -> None:
        assert self.checkpointer.checkpoint()

    def generations(self) -> list[str]:
        return sorted(p.name for p in self.home.glob("stream.checkpoint.history.*"))


def htst_changes(stream: Stream | Scenario) -> list[DeviationChange]:
    line = stream.line if isinstance(stream, Stream) else stream
    return line.of("htst_temperature")


def ran_through() -> Scenario:
    """The PMO backlog judged by a stream that ran through: live 0-9 s and 13-32 s, then the
    dip below 72 degC (10-12 s) in forward flow."""
    through = Scenario(HTST_PLAN)
    for second in [*range(10), *range(13, 33)]:
        through.send("plant-01", htst(second, 72.5))
    through.send("plant-01", [r for s in (10, 11, 12) for r in htst(s, 71.5)], received=at(33))
    through.finish()
    return through


def test_a_restart_between_live_data_and_the_backlog_judges_it_as_a_stream_that_ran_through(
    tmp_path: Path,
) -> None:
    """PMO Appendix H: the dip is held, found late, from its first sample below 72 degC to the
    first back within, whether the stream restarted from its checkpoint and journal between
    the live data and the backlog or not."""
    first = Stream(tmp_path)
    first.live(range(10))
    first.checkpoint()
    first.live(range(13, 33))
    first.checkpoint()
    del first  # stopped: only the checkpoint and the journal carry on

    again = Stream(tmp_path)
    again.backlog([10, 11, 12], 71.5, received_s=33)
    again.line.finish()

    assert htst_changes(again) == htst_changes(ran_through())
    assert htst_changes(again)[0].deviation.detected_late


def test_history_written_after_the_checkpoint_is_cut_back_and_judged_again_once(
    tmp_path: Path,
) -> None:
    """A crash after the journal was written and before the checkpoint was saved: the restart
    cuts the journal back to the checkpoint, whose readings the source sends again; the
    restored engine holds exactly the history of the checkpoint, so the backlog is judged once,
    as without the crash."""
    first = Stream(tmp_path)
    first.live(range(10))
    first.checkpoint()
    checkpointed = first.engine.snapshot()
    first.live(range(13, 33))
    first.journal.flush(first.engine)  # outputs durable, then the crash: no checkpoint
    saved = first.store.load()
    assert saved is not None
    assert first.journal.path.stat().st_size > saved.files[first.journal.path.name]

    again = Stream(tmp_path)
    assert again.engine.snapshot() == checkpointed
    again.live(range(13, 33))  # the source sends what was not acknowledged again
    again.backlog([10, 11, 12], 71.5, received_s=33)
    again.line.finish()

    assert htst_changes(again) == htst_changes(ran_through())


def test_the_checkpoint_does_not_grow_with_the_history_and_the_journal_grows_with_new_readings(
    tmp_path: Path,
) -> None:
    """Per checkpoint, what is written is the light snapshot (the same size however long the
    history) and the readings judged since the last checkpoint."""
    stream = Stream(tmp_path)
    stream.live(range(10))
    stream.checkpoint()
    small = stream.store.path.stat().st_size
    written = stream.journal.written
    stream.live(range(10, 1010))
    stream.checkpoint()
    thousand = stream.journal.written - written
    written = stream.journal.written
    stream.live(range(1010, 1020))
    stream.checkpoint()

    assert stream.store.path.stat().st_size < small + 256
    assert stream.journal.written - written < thousand / 20


def test_the_journal_begins_again_with_what_is_retained_and_a_crash_at_any_step_keeps_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past twice the retained cap, the journal begins a new generation with only what is
    retained. Until a checkpoint naming it is saved, the old generation stays (a crash before
    restores from it); once saved, the old one is deleted; a generation no saved checkpoint
    names is deleted at the next checkpoint."""
    monkeypatch.setattr("stream.engine.late._RETAINED_READINGS", 40)
    stream = Stream(tmp_path)
    stream.live(range(5))
    stream.checkpoint()
    assert stream.generations() == ["stream.checkpoint.history.000001"]
    stream.live(range(5, 50))
    stream.journal.flush(stream.engine)  # the new generation written, then the crash
    assert stream.generations() == [
        "stream.checkpoint.history.000001",
        "stream.checkpoint.history.000002",
    ]
    checkpointed = Stream(tmp_path).engine.snapshot()

    again = Stream(tmp_path)  # restores from generation 1, as its checkpoint says
    assert again.engine.snapshot() == checkpointed
    again.live(range(5, 50))
    again.checkpoint()
    assert again.generations() == ["stream.checkpoint.history.000002"]
    live = again.engine.snapshot()

    assert Stream(tmp_path).engine.snapshot() == live


def test_a_damaged_journal_restores_without_history_and_judges_nothing_on_half_its_context(
    tmp_path: Path,
) -> None:
    """A journal whose record does not match its checksum is not used: the engine restores
    from the checkpoint without history, and the backlog older than the restart is counted
    beyond the bound (stored, never judged on half its context)."""
    first = Stream(tmp_path)
    first.live(range(10))
    first.live(range(13, 33))
    first.checkpoint()
    path = first.journal.path
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))

    again = Stream(tmp_path)
    assert again.journal.lost is not None
    again.backlog([10, 11, 12], 71.5, received_s=33)
    again.line.finish()
    again.checkpoint()

    assert htst_changes(again) == []
    assert again.engine.counters.late_beyond_bound == 6
    assert again.generations() == ["stream.checkpoint.history.000002"]


def test_a_disk_full_while_appending_to_the_journal_saves_no_checkpoint_and_loses_no_history(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The journal is an output like the others: if it cannot be written, the checkpoint is
    not saved (nothing acknowledged), and the next checkpoint writes the history it missed."""
    stream = Stream(tmp_path)
    stream.live(range(10))
    stream.checkpoint()
    stream.live(range(10, 20))
    real_fsync = os.fsync
    calls = {"n": 0}

    def failing_once(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_once)
    saved = stream.store.path.read_bytes()
    assert not stream.checkpointer.checkpoint()
    assert stream.store.path.read_bytes() == saved
    time.sleep(Checkpointer.RETRY_S)
    stream.checkpoint()
    live = stream.engine.snapshot()

    assert Stream(tmp_path).engine.snapshot() == live


def test_a_checkpoint_without_a_journal_from_an_older_release_keeps_its_history(
    tmp_path: Path,
) -> None:
    """A checkpoint saved before the journal holds a full snapshot: the restart keeps that
    history and begins a journal with it, so the next restart has it too."""
    first = Stream(tmp_path)
    first.live(range(10))
    first.live(range(13, 33))
    first.store.save(
        Checkpoint(
            format=CHECKPOINT_FORMAT,
            plan_version=first.engine.plan.version,
            engine=first.engine.snapshot(),  # full, as releases before the journal wrote it
            windows={},
            files={},
        )
    )
    again = Stream(tmp_path)
    again.checkpoint()
    del again

    third = Stream(tmp_path)
    third.backlog([10, 11, 12], 71.5, received_s=33)
    third.line.finish()
    assert htst_changes(third) == htst_changes(ran_through())

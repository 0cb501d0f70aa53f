"""The checkpoint discipline: outputs durable, then state saved, then the source acknowledged;
and the local files cut back to a checkpoint's sizes, so what comes again is written once."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import msgspec
import pytest

from stream.checkpoint import (
    CHECKPOINT_FORMAT,
    Checkpoint,
    Checkpointer,
    CheckpointFile,
    file_names,
    file_paths,
    restore_files,
)
from stream.errors import NotWritten, SinkError
from stream.sinks import files as files_module
from stream.sinks.base import DeadLetter
from stream.sinks.files import JsonlDeadLetterSink, JsonlDeviationSink, LineProtocolFileSink


def _checkpoint(files: dict[str, int] | None = None) -> Checkpoint:
    return Checkpoint(
        format=CHECKPOINT_FORMAT, plan_version="v1", engine=b"e", windows={}, files=files or {}
    )


class _Steps:
    def __init__(self) -> None:
        self.order: list[str] = []
        self.acked: list[int] = []
        self.refuse = False

    def durable(self) -> None:
        self.order.append("durable")
        if self.refuse:
            raise SinkError("InfluxDB down")

    def state(self) -> Checkpoint:
        self.order.append("state")
        return _checkpoint()

    def acknowledge(self, tokens: list[int]) -> None:
        self.order.append("ack")
        self.acked.extend(tokens)


def test_a_checkpoint_makes_outputs_durable_then_saves_state_then_acknowledges_in_order(
    tmp_path: Path,
) -> None:
    steps = _Steps()
    store = CheckpointFile(tmp_path / "stream.checkpoint")
    checkpointer = Checkpointer(
        store, make_durable=steps.durable, state=steps.state, acknowledge=steps.acknowledge
    )
    checkpointer.taken([3, 1, 2])
    assert checkpointer.checkpoint()
    assert steps.order == ["durable", "state", "ack"]
    assert steps.acked == [3, 1, 2]
    assert store.load() == _checkpoint()


def test_nothing_is_acknowledged_or_saved_while_an_output_is_not_durable(tmp_path: Path) -> None:
    steps = _Steps()
    steps.refuse = True
    now = [0.0]
    store = CheckpointFile(tmp_path / "stream.checkpoint")
    checkpointer = Checkpointer(
        store,
        make_durable=steps.durable,
        state=steps.state,
        acknowledge=steps.acknowledge,
        clock=lambda: now[0],
    )
    checkpointer.taken([1])
    assert not checkpointer.checkpoint()
    assert steps.acked == []
    assert store.load() is None
    assert checkpointer.unacknowledged == 1
    steps.refuse = False
    assert not checkpointer.checkpoint()  # too soon after a failure: not even tried
    assert steps.order == ["durable"]
    now[0] += Checkpointer.RETRY_S
    assert checkpointer.checkpoint()
    assert steps.acked == [1]


def test_a_checkpoint_is_due_when_the_in_flight_window_nearly_fills_or_the_period_ends(
    tmp_path: Path,
) -> None:
    now = [0.0]
    steps = _Steps()
    checkpointer = Checkpointer(
        CheckpointFile(tmp_path / "c"),
        make_durable=steps.durable,
        state=steps.state,
        acknowledge=steps.acknowledge,
        every_s=1.0,
        max_unacked=3,
        clock=lambda: now[0],
    )
    assert not checkpointer.due()  # nothing taken
    checkpointer.taken([1, 2])
    assert not checkpointer.due()
    checkpointer.taken([3])
    assert checkpointer.due()
    checkpointer.checkpoint()
    checkpointer.taken([4])
    now[0] = 1.5
    assert checkpointer.due()


def test_an_unreadable_checkpoint_starts_fresh(tmp_path: Path) -> None:
    path = tmp_path / "stream.checkpoint"
    path.write_bytes(b"\x00not msgpack")
    assert CheckpointFile(path).load() is None


def test_file_names_are_relative_to_the_data_directory_and_absolute_elsewhere(
    tmp_path: Path,
) -> None:
    inside, outside = tmp_path / "var" / "deviations.jsonl", tmp_path / "out.lp"
    named = file_names({inside: 10, outside: 20}, tmp_path / "var")
    assert named == {"deviations.jsonl": 10, str(outside.resolve()): 20}
    assert file_paths(named, tmp_path / "var") == {inside: 10, outside.resolve(): 20}


def test_line_protocol_written_after_a_checkpoint_is_cut_back_even_across_a_new_day(
    tmp_path: Path,
) -> None:
    day = ["2026-12-01"]
    sink = LineProtocolFileSink(tmp_path, day=lambda: day[0])
    sink.add(["a 1", "b 2"])
    sink.flush()
    saved = sink.positions()
    sink.add(["c 3"])  # after the checkpoint: will come again
    sink.flush()
    day[0] = "2026-12-02"
    sink.add(["d 4"])
    sink.flush()
    sink.close()
    restarted = LineProtocolFileSink(tmp_path, day=lambda: day[0])
    cut = restarted.restore(saved)
    assert (tmp_path / "timeseries-2026-12-01.lp").read_text() == "a 1\nb 2\n"
    assert not (tmp_path / "timeseries-2026-12-02.lp").exists()
    assert cut == {
        tmp_path / "timeseries-2026-12-01.lp": 4,
        tmp_path / "timeseries-2026-12-02.lp": 4,
    }


def test_a_file_shorter_than_its_checkpoint_is_left_alone(tmp_path: Path) -> None:
    sink = JsonlDeviationSink(tmp_path / "deviations.jsonl")
    (tmp_path / "deviations.jsonl").write_text("x\n")
    assert sink.restore({tmp_path / "deviations.jsonl": 100}) == {}
    assert (tmp_path / "deviations.jsonl").read_text() == "x\n"


def test_the_dead_letters_daily_budget_is_not_handed_out_again_by_a_restart(
    tmp_path: Path,
) -> None:
    letter = DeadLetter.of_payload(
        b"x" * 100, received_at="2026-12-01T10:00:00.000Z", topic="t", reason="bad"
    )  # about 300 bytes a line: two fit in the day's budget, not three
    sink = JsonlDeadLetterSink(tmp_path / "deadletter.jsonl", daily_budget_bytes=700)
    sink.reject(letter)
    sink.reject(letter)
    assert sink.compacted == 0
    restarted = JsonlDeadLetterSink(tmp_path / "deadletter.jsonl", daily_budget_bytes=700)
    restarted.restore_budget(sink.budget_used())
    restarted.reject(letter)
    assert restarted.compacted == 1


def test_a_hostile_checkpoint_cuts_no_file_outside_the_stores(tmp_path: Path) -> None:
    # the checkpoint names the files a restart truncates: one written by someone else must
    # not make the stream cut anything but its own stores
    data_dir, elsewhere = tmp_path / "data", tmp_path / "etc"
    data_dir.mkdir()
    elsewhere.mkdir()
    victims = [elsewhere / "passwd", elsewhere / "timeseries-2026-12-01.lp", tmp_path / "x.jsonl"]
    for victim in victims:
        victim.write_text("keep me\n")
    files = (
        LineProtocolFileSink(data_dir),
        JsonlDeviationSink(data_dir / "deviations.jsonl"),
        JsonlDeadLetterSink(data_dir / "deadletter.jsonl"),
    )
    hostile = {
        str(victims[0]): 0,
        str(victims[1]): 0,
        "../x.jsonl": 0,
        "../etc/timeseries-2026-12-01.lp": 0,
        "deviations.jsonl/../../x.jsonl": 0,
    }
    restore_files(files, file_paths(hostile, data_dir))
    assert [victim.read_text() for victim in victims] == ["keep me\n"] * 3


def test_a_checkpoint_with_a_negative_size_or_wrong_types_is_not_used(tmp_path: Path) -> None:
    path = tmp_path / "stream.checkpoint"
    CheckpointFile(path).save(_checkpoint({"deviations.jsonl": -1}))  # encoded, not validated
    assert CheckpointFile(path).load() is None
    wrong = {"format": CHECKPOINT_FORMAT, "plan_version": 1, "engine": "e", "windows": [],
             "files": {"deviations.jsonl": "0"}}  # fmt: skip
    path.write_bytes(msgspec.msgpack.encode(wrong))
    assert CheckpointFile(path).load() is None
    path.write_bytes(msgspec.msgpack.encode(_checkpoint())[:-3])  # cut short
    assert CheckpointFile(path).load() is None


def test_day_files_from_before_a_checkpoint_taken_with_the_clock_behind_are_kept(
    tmp_path: Path,
) -> None:
    # a machine without a real-time clock starts at 1970 until NTP sets it: a checkpoint taken
    # then must not make the next start take every real day file for one begun after it
    history = tmp_path / "timeseries-2026-11-30.lp"
    history.write_text("old 1\n")
    day = ["1970-01-01"]
    sink = LineProtocolFileSink(tmp_path, day=lambda: day[0])
    sink.restore({})
    sink.add(["a 1"])
    sink.flush()
    saved = sink.positions()
    day[0] = "2026-12-01"  # NTP: the clock jumps forward
    sink.add(["b 2"])  # after the checkpoint: will come again
    sink.flush()
    sink.close()
    restarted = LineProtocolFileSink(tmp_path, day=lambda: day[0])
    restarted.restore(saved)
    assert history.read_text() == "old 1\n"
    assert not (tmp_path / "timeseries-2026-12-01.lp").exists()


def _fsync_fails_once(monkeypatch: pytest.MonkeyPatch, errno_: int = errno.ENOSPC) -> None:
    real = os.fsync
    failing = [True]

    def fsync(fd: int) -> None:
        if failing.pop() if failing else False:
            raise OSError(errno_, os.strerror(errno_))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_a_disk_full_at_fsync_acknowledges_nothing_and_writes_each_line_once_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = LineProtocolFileSink(tmp_path, day=lambda: "2026-12-01")
    sink.add(["a 1"])
    sink.flush()
    acked: list[int] = []
    checkpointer = Checkpointer(
        CheckpointFile(tmp_path / "stream.checkpoint"),
        make_durable=sink.flush,
        state=_checkpoint,
        acknowledge=acked.extend,
        every_s=0.0,
    )
    sink.add(["b 2", "c 3"])
    checkpointer.taken([1, 2])
    _fsync_fails_once(monkeypatch)
    assert not checkpointer.checkpoint()  # ENOSPC: the lines are not durable
    assert acked == []
    checkpointer._retry_at = 0.0  # the disk has room again
    assert checkpointer.checkpoint()
    assert acked == [1, 2]
    sink.close()
    assert (tmp_path / "timeseries-2026-12-01.lp").read_text() == "a 1\nb 2\nc 3\n"


def test_a_disk_full_while_saving_the_checkpoint_acknowledges_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = _Steps()
    store = CheckpointFile(tmp_path / "stream.checkpoint")
    store.save(_checkpoint({"deviations.jsonl": 1}))
    checkpointer = Checkpointer(
        store, make_durable=lambda: None, state=steps.state, acknowledge=steps.acknowledge
    )
    checkpointer.taken([7])
    _fsync_fails_once(monkeypatch)
    assert not checkpointer.checkpoint()
    assert steps.acked == []
    assert store.load() == _checkpoint({"deviations.jsonl": 1})  # the old one holds
    checkpointer._retry_at = 0.0
    assert checkpointer.checkpoint()
    assert steps.acked == [7]


def test_a_store_file_created_is_made_to_last_in_its_directory_before_a_checkpoint_counts_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # after a power cut a new file's name survives only once its directory was fsynced; a
    # checkpoint naming the file's size without that would point at a file that is gone
    synced: list[Path] = []
    real = files_module.fsync_directory
    monkeypatch.setattr(files_module, "fsync_directory", lambda d: (synced.append(d), real(d))[1])
    outputs = tmp_path / "elsewhere"  # a replay's output, away from its checkpoint
    sink = JsonlDeviationSink(outputs / "changes.jsonl")
    sink._out.append("{}")
    sink.flush()
    assert synced == [outputs]
    sink._out.append("{}")
    sink.flush()  # the name is durable already
    assert synced == [outputs]


def test_links_planted_in_the_data_directory_redirect_no_cut_and_no_checkpoint(
    tmp_path: Path,
) -> None:
    # a store or the checkpoint's partial file replaced by a link to a file elsewhere: the
    # stream (root, maybe) must neither cut nor overwrite what the link points at
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    victim = tmp_path / "passwd"
    victim.write_text("root:x:0:0\n")
    (data_dir / "deviations.jsonl").symlink_to(victim)
    (data_dir / "timeseries-2026-12-01.lp").symlink_to(victim)
    (data_dir / "stream.checkpoint.partial").symlink_to(victim)
    files = (
        LineProtocolFileSink(data_dir, day=lambda: "2026-12-01"),
        JsonlDeviationSink(data_dir / "deviations.jsonl"),
    )
    sizes = {"deviations.jsonl": 0, "timeseries-2026-12-01.lp": 0}
    restore_files(files, file_paths(sizes, data_dir))
    CheckpointFile(data_dir / "stream.checkpoint").save(_checkpoint())
    files[0].add(["m v=1 1"])
    with pytest.raises(NotWritten, match=r"timeseries-2026-12-01\.lp"):
        files[0].flush()  # nor is anything appended through the link
    assert victim.read_text() == "root:x:0:0\n"
    assert CheckpointFile(data_dir / "stream.checkpoint").load() == _checkpoint()


def test_the_engine_is_compressed_on_disk_and_a_checkpoint_from_before_still_reads(
    tmp_path: Path,
) -> None:
    """The engine's snapshot, written every second, goes to disk compressed; a checkpoint saved
    by a release before (format 1, the snapshot as it is) carries on all the same."""
    store = CheckpointFile(tmp_path / "stream.checkpoint")
    engine = b"held readings " * 1000
    saved = msgspec.structs.replace(_checkpoint(), engine=engine)
    store.save(saved)

    assert store.path.stat().st_size < len(engine) / 10
    assert store.load() == saved
    older = msgspec.structs.replace(saved, format=1)
    store.path.write_bytes(msgspec.msgpack.encode(older))
    assert store.load() == saved

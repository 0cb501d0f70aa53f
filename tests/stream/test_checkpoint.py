"""The checkpoint discipline: outputs durable, then state saved, then the source acknowledged;
and the local files cut back to a checkpoint's sizes, so what comes again is written once."""

from __future__ import annotations

from pathlib import Path

from stream.checkpoint import (
    CHECKPOINT_FORMAT,
    Checkpoint,
    Checkpointer,
    CheckpointFile,
    file_names,
    file_paths,
)
from stream.errors import SinkError
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

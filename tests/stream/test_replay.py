"""``milkguard replay``: recorded payloads in, deviations out, the same every time."""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from milkguard.contract.v1 import Batch, Reading, count_readings, encode_batch
from milkguard.errors import ConfigError
from stream.errors import SinkError
from stream.plan import load_plan
from stream.replay import replay, replay_resumable
from stream.settings import demo_plan_path
from tests.conftest import T0


def recording(tmp_path: Path) -> Path:
    """A truck compartment warming past 6 degC for 30 s, a duplicate, a broken line."""
    lines = []
    for seq, second in enumerate(range(0, 60)):
        temp = 8.0 if 10 <= second < 40 else 4.0
        readings = [
            Reading("comp-1", "temp", temp, "degC", T0 + second * 1000),
            Reading("comp-2", "temp", 4.0, "degC", T0 + second * 1000),
        ]
        batch = Batch(
            v=1,
            site="truck-07",
            gateway="truck-07-gw",
            seq=seq,
            sent_at=T0 + second * 1000,
            readings=readings,
        )
        lines.append(encode_batch(batch))
    lines.insert(20, lines[19])  # a redelivered batch
    lines.insert(5, b'{"v": 1, "site": "truck-07"')  # cut off
    path = tmp_path / "truck.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def run_replay(path: Path) -> tuple[str, object]:
    out = io.StringIO()
    with path.open("rb") as source:
        summary = replay(load_plan(demo_plan_path()), source, out, name=path.name)
    return out.getvalue(), summary


def test_a_recorded_breach_comes_out_as_its_deviation_with_event_times(tmp_path: Path) -> None:
    text, summary = run_replay(recording(tmp_path))

    changes = [json.loads(line) for line in text.splitlines()]
    limit = [c for c in changes if c["kind"] == "critical_limit"]
    assert [(c["change"], c["asset"]) for c in limit] == [
        ("opened", "comp-1"),
        ("closed", "comp-1"),
    ]
    assert limit[0]["start"] == "2026-11-22T10:00:10.000Z"
    assert limit[0]["detected"] == "2026-11-22T10:00:25.000Z"
    assert limit[1]["end"] == "2026-11-22T10:00:40.000Z"
    assert summary.duplicates == 1  # type: ignore[attr-defined]
    assert summary.rejected == 1  # type: ignore[attr-defined]
    assert "truck.jsonl:6" in summary.first_rejections[0].topic  # type: ignore[attr-defined]


def test_the_same_input_gives_the_same_output(tmp_path: Path) -> None:
    path = recording(tmp_path)

    assert run_replay(path)[0] == run_replay(path)[0]


@pytest.mark.e2e
def test_replay_reads_standard_input_and_writes_standard_output(tmp_path: Path) -> None:
    path = recording(tmp_path)

    result = subprocess.run(
        [sys.executable, "-m", "milkguard", "replay", "--plan", str(demo_plan_path()), "-"],
        input=path.read_bytes(),
        capture_output=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == run_replay(path)[0]
    assert b"1 rejected, 1 duplicate batches" in result.stderr


def test_hostile_lines_are_dead_lettered_and_replay_exits_0(tmp_path: Path) -> None:
    good = encode_batch(
        Batch(
            v=1,
            site="truck-07",
            gateway="truck-07-gw",
            seq=1,
            sent_at=T0,
            readings=[Reading("comp-2", "temp", 4.0, "degC", T0)],
        )
    )
    hostile = [
        b'{"\xff":1}',
        b"[" * 100_000,
        good.replace(b'"value":4.0', b'"value":1e308').replace(b'"seq":1', b'"seq":2'),
        good.replace(b'"seq":1', b'"seq":9223372036854775808'),
        good.replace(b'"ts":' + str(T0).encode(), b'"ts":4070908800000').replace(
            b'"seq":1', b'"seq":3'
        ),
    ]
    source = b"\n".join([*hostile, good]) + b"\n"

    result = subprocess.run(
        [sys.executable, "-m", "milkguard", "replay", "--plan", str(demo_plan_path()), "-"],
        input=source,
        capture_output=True,
        check=False,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr.decode()
    assert b"Traceback" not in result.stderr
    assert b"1 quarantined" in result.stderr


@settings(max_examples=100, deadline=None)
@given(
    lines=st.lists(
        st.binary(max_size=40)
        | st.sampled_from(
            [
                b'{"\xff":1}',
                b'{"v":1,"site":"truck-07","gateway":"g","seq":18446744073709551616,'
                b'"sent_at":1795341600000,"readings":[1,2]}',
                b'{"v":1,"site":"truck-07","gateway":"g","seq":1,"sent_at":4070908800000,'
                b'"readings":[{"asset":"comp-2","channel":"temp","value":1e308,"unit":"degC",'
                b'"ts":4070908800000}]}',
            ]
        ),
        max_size=10,
    )
)
def test_replay_of_any_lines_never_raises_and_counts_every_reading(lines: list[bytes]) -> None:
    data = b"\n".join(lines)
    fed = sum(count_readings(line.strip()) for line in data.split(b"\n") if line.strip())

    summary = replay(load_plan(demo_plan_path()), io.BytesIO(data), io.StringIO(), name="fuzz")

    assert (
        summary.readings + summary.readings_duplicate + summary.readings_in_rejected_payloads
        == (fed)
    )
    assert summary.lines == summary.batches + summary.duplicates + summary.rejected_payloads


def test_a_replay_without_a_dead_letter_file_keeps_only_the_first_rejections() -> None:
    # they are shown in the summary; keeping every one made memory grow with the file
    line = b'{"not":"a batch","pad":"' + b"x" * 30_000 + b'"}\n'
    source = io.BytesIO(line * 2_000)  # 60 MB of rejections, each kept whole in its letter
    plan = load_plan(demo_plan_path())
    tracemalloc.start()
    try:
        summary = replay(plan, source, io.StringIO(), name="many.jsonl")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < 20_000_000
    assert summary.rejected_payloads == 2_000
    assert len(summary.first_rejections) == 5
    assert [r.topic for r in summary.first_rejections] == [f"many.jsonl:{n}" for n in range(1, 6)]


@pytest.mark.parametrize("sent_ahead", [False, True], ids=["reading", "reading-and-sent-at"])
def test_one_batch_stamped_ahead_within_the_tolerance_does_not_move_the_replays_clock(
    sent_ahead: bool,
) -> None:
    # the replay's clock is the data's own, but not one batch's: moved an hour on, every
    # channel fell silent at once and every reading before the stamp was late
    lines = []
    for seq, second in enumerate(range(120)):
        temp = 9.0 if second >= 60 else 4.0  # comp-2 above 6 degC from 60 s
        readings = [Reading("comp-2", "temp", temp, "degC", T0 + second * 1000)]
        sent_at = T0 + second * 1000
        if second == 30:
            readings.append(Reading("comp-2", "temp", 4.0, "degC", T0 + 3_600_000))
            sent_at = T0 + 3_600_000 if sent_ahead else sent_at
        batch = Batch(
            v=1,
            site="truck-07",
            gateway="truck-07-gw",
            seq=seq,
            sent_at=sent_at,
            readings=readings,
        )
        lines.append(encode_batch(batch))
    out = io.StringIO()
    summary = replay(
        load_plan(demo_plan_path()), io.BytesIO(b"\n".join(lines)), out, name="ahead.jsonl"
    )

    changes = [json.loads(line) for line in out.getvalue().splitlines()]
    opened = [c for c in changes if c["change"] == "opened" and c["asset"] == "comp-2"]
    assert [c["start"] for c in opened if c["kind"] == "critical_limit"] == [
        "2026-11-22T10:01:00.000Z"
    ]
    # the outlier itself is judged at the end: a gap from the last real reading, not before
    lost = [c["start"] for c in opened if c["kind"] == "monitoring_lost"]
    assert all(start >= "2026-11-22T10:01:59.000Z" for start in lost)
    assert summary.late == 0


def test_the_replay_command_with_a_checkpoint_writes_what_a_plain_replay_writes(
    tmp_path: Path,
) -> None:
    path = recording(tmp_path)
    plain, _ = run_replay(path)
    output, checkpoint = tmp_path / "changes.jsonl", tmp_path / "replay.checkpoint"
    command = [
        *(sys.executable, "-m", "milkguard", "replay", str(path)),
        *("--plan", str(demo_plan_path()), "--output", str(output)),
        *("--checkpoint", str(checkpoint)),
    ]

    first = subprocess.run(command, capture_output=True, check=False, timeout=60)
    again = subprocess.run(command, capture_output=True, check=False, timeout=60)

    assert first.returncode == 0, first.stderr.decode()
    assert again.returncode == 0, again.stderr.decode()
    assert checkpoint.exists()
    assert output.read_text() == plain  # a finished replay run again adds nothing


def test_a_replay_checkpoint_of_standard_input_is_refused_with_why(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            *(sys.executable, "-m", "milkguard", "replay", "-", "--plan", str(demo_plan_path())),
            *("--output", str(tmp_path / "out.jsonl"), "--checkpoint", str(tmp_path / "c")),
        ],
        input=b"",
        capture_output=True,
        check=False,
        timeout=60,
    )

    assert done.returncode == 2
    assert b"needs the recording as a file" in done.stderr


def test_a_recording_shorter_than_its_checkpoints_offset_is_refused_with_why(
    tmp_path: Path,
) -> None:
    # rotated or replaced since the checkpoint: carrying on would replay nothing, or the middle
    # of another recording, and say it finished
    path = recording(tmp_path)
    output, checkpoint = tmp_path / "changes.jsonl", tmp_path / "replay.checkpoint"
    loaded = load_plan(demo_plan_path())
    replay_resumable(loaded, path, output, checkpoint, every_lines=10)
    path.write_bytes(path.read_bytes()[:1000])

    with pytest.raises(ConfigError, match=r"truck\.jsonl.*1,000 bytes.*checkpoint"):
        replay_resumable(loaded, path, output, checkpoint, every_lines=10)


def test_a_replay_whose_outputs_cannot_be_written_fails_instead_of_finishing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = recording(tmp_path)
    output, checkpoint = tmp_path / "changes.jsonl", tmp_path / "replay.checkpoint"

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(SinkError, match=r"changes\.jsonl"):
        replay_resumable(load_plan(demo_plan_path()), path, output, checkpoint, every_lines=10)

"""A replay killed with SIGKILL and run again with its checkpoint carries on where it was: its
outputs are those of one uninterrupted replay, byte for byte."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from milkguard.contract.v1 import Batch, Reading, encode_batch
from milkguard.errors import ConfigError
from stream.plan import load_plan
from stream.replay import check_resumable, replay_resumable
from stream.settings import demo_plan_path
from tests.conftest import T0
from tests.helpers import wait_until

pytestmark = pytest.mark.integration

SECONDS = 6_000


def recording(path: Path, *, backlog_after_s: int | None = None) -> Path:
    """A truck whose rear compartment warms for a minute every 20 minutes, with redelivered
    batches and a broken line now and then. ``backlog_after_s``: the warm minutes' rear
    readings reach the stream that long after it, as a store-and-forward gateway's backlog
    (sent after its live data, with the next sequence number)."""
    lines = []
    withheld: list[Reading] = []
    seq = 0
    for second in range(SECONDS):
        warm = second % 1200 < 60
        rear = Reading("comp-2", "temp", 8.0 if warm else 4.2, "degC", T0 + second * 1000)
        readings = [Reading("comp-1", "temp", 4.0 + (second % 5) / 10, "degC", rear.ts)]
        if warm and backlog_after_s is not None:
            withheld.append(rear)
        else:
            readings.append(rear)
        batches = [readings]
        if backlog_after_s is not None and second % 1200 == 60 + backlog_after_s:
            batches.append(withheld)
            withheld = []
        for sent in batches:
            seq += 1
            batch = Batch(
                v=1,
                site="truck-07",
                gateway="truck-07-gw",
                seq=seq,
                sent_at=T0 + second * 1000,
                readings=sent,
            )
            lines.append(encode_batch(batch))
        if second % 97 == 0:
            lines.append(lines[-1])  # redelivered
        if second % 331 == 0:
            lines.append(b'{"v": 1, "site": "truck-07"')  # cut off
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


RUN = """
import sys
from pathlib import Path
from stream.settings import demo_plan_path
from stream.plan import load_plan
from stream.replay import check_resumable, replay_resumable
out = Path(sys.argv[2])
replay_resumable(
    load_plan(demo_plan_path()), Path(sys.argv[1]), out / "deviations.jsonl",
    out / "replay.checkpoint", deadletter=out / "deadletter.jsonl", timeseries=out,
    every_lines=200,
)
"""


def outputs(directory: Path) -> dict[str, bytes]:
    # the checkpoint and its history journal are the replay's state, not its outputs
    kept = [p for p in sorted(directory.iterdir()) if not p.name.startswith("replay.checkpoint")]
    return {p.name: p.read_bytes() for p in kept}


def kill_mid_replay(source: Path, directory: Path, delay_s: float) -> int | None:
    """Start the replay, kill it ``delay_s`` after its next checkpoint; its exit status."""
    checkpoint = directory / "replay.checkpoint"
    before = checkpoint.read_bytes() if checkpoint.exists() else b""
    process = subprocess.Popen([sys.executable, "-c", RUN, str(source), str(directory)])

    def checkpointed() -> bool:
        return checkpoint.exists() and checkpoint.read_bytes() != before

    wait_until(lambda: checkpointed() or process.poll() is not None, 30, "a checkpoint")
    time.sleep(delay_s)
    process.send_signal(signal.SIGKILL)
    return process.wait(timeout=10)


def calm_and_killed(
    source: Path, home: Path
) -> tuple[dict[str, bytes], dict[str, bytes], list[int | None]]:
    """The outputs of an uninterrupted replay of ``source`` and of one killed three times at
    random moments and run again to its end; the killed runs' exit statuses."""
    calm, killed = home / "calm", home / "killed"
    calm.mkdir()
    killed.mkdir()
    subprocess.run([sys.executable, "-c", RUN, str(source), str(calm)], check=True)
    chance = random.Random()
    statuses = [kill_mid_replay(source, killed, chance.uniform(0, 0.3)) for _ in range(3)]
    subprocess.run([sys.executable, "-c", RUN, str(source), str(killed)], check=True)
    return outputs(calm), outputs(killed), statuses


def test_a_replay_killed_three_times_writes_what_an_uninterrupted_one_does(
    tmp_path: Path,
) -> None:
    source = recording(tmp_path / "truck.jsonl")
    expected, after_kills, statuses = calm_and_killed(source, tmp_path)

    assert -signal.SIGKILL in statuses  # (a replay may also have finished before its kill)
    assert expected["deviations.jsonl"].count(b'"opened"') >= 5
    assert expected["deadletter.jsonl"]
    assert after_kills == expected


def test_a_replay_killed_between_live_data_and_late_backlogs_judges_them_as_uninterrupted(
    tmp_path: Path,
) -> None:
    """GB 31605: raw milk in transport is kept at 2-6 degC (the plan: not above 6 degC for
    15 s). Each warm minute of the rear compartment reaches the stream 10 minutes late, after
    later live data; a replay killed (SIGKILL) three times, between live data and backlogs
    among other moments, raises each, found late, exactly as an uninterrupted one: its judged
    history comes back from the journal beside its checkpoint."""
    source = recording(tmp_path / "truck.jsonl", backlog_after_s=600)
    expected, after_kills, statuses = calm_and_killed(source, tmp_path)

    assert -signal.SIGKILL in statuses
    assert expected["deviations.jsonl"].count(b'"detected_late":true') >= 10  # 5 opened, closed
    assert after_kills == expected


def test_a_finished_replay_run_again_writes_nothing_more(tmp_path: Path) -> None:
    source = recording(tmp_path / "truck.jsonl")
    plan = load_plan(demo_plan_path())
    first = replay_resumable(plan, source, tmp_path / "d.jsonl", tmp_path / "r.checkpoint")
    written = (tmp_path / "d.jsonl").read_bytes()
    again = replay_resumable(plan, source, tmp_path / "d.jsonl", tmp_path / "r.checkpoint")
    assert (tmp_path / "d.jsonl").read_bytes() == written
    assert again.deviation_changes == first.deviation_changes
    assert again.readings == first.readings


def test_a_checkpoint_of_another_plan_is_refused(tmp_path: Path) -> None:
    source = recording(tmp_path / "truck.jsonl")
    replay_resumable(
        load_plan(demo_plan_path()), source, tmp_path / "d.jsonl", tmp_path / "r.checkpoint"
    )
    other = tmp_path / "other.yaml"
    other.write_text(demo_plan_path().read_text().replace("max: 6.0", "max: 7.0", 1))
    with pytest.raises(ConfigError, match="plan version"):
        replay_resumable(load_plan(other), source, tmp_path / "d.jsonl", tmp_path / "r.checkpoint")


def test_a_resumable_replay_needs_files_for_its_input_and_output(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not standard input"):
        check_resumable("-", tmp_path / "out.jsonl", tmp_path / "r.checkpoint")
    with pytest.raises(ConfigError, match="needs --output"):
        check_resumable("rec.jsonl", None, tmp_path / "r.checkpoint")
    assert check_resumable("rec.jsonl", tmp_path / "o", tmp_path / "c") == (
        Path("rec.jsonl"),
        tmp_path / "o",
    )

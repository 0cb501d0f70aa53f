"""``bench engine``: both sides do the same work on the same data, and the figures print."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
from rich.console import Console

from benchmarks.engine import drained, fleet_messages, fleet_plan, main, milkguard_run, plain_run
from milkguard.errors import ConfigError


def test_the_engine_benchmark_prints_both_sides_and_their_ratio() -> None:
    out = io.StringIO()

    figures = main(
        gateways=4,
        channels=5,
        seconds=20,
        sizes=(5, 50),
        repeat=1,
        console=Console(file=out, width=200),
    )

    printed = out.getvalue()
    assert [f.per_message for f in figures] == [5, 50]
    for label in ("MilkGuard readings/s", "plain loop readings/s", "ratio", "load average"):
        assert label in printed
    assert all(f.milkguard_rate > 0 and f.plain_rate > 0 for f in figures)


def test_both_sides_see_the_fleet_breach_its_limits() -> None:
    loaded = fleet_plan(20, 10)
    messages = fleet_messages(20, 10, 100, 120)

    warm, timed = messages[:20], messages[20:]

    ours = milkguard_run(loaded, warm, list(drained(timed, 10)))()
    theirs = plain_run(loaded, warm, timed)()

    assert ours > 0
    assert theirs > 0


def test_a_drained_queue_holds_whole_messages_up_to_its_bound() -> None:
    messages = fleet_messages(4, 5, 10, 20)

    chunks = list(drained(messages, 2))

    assert [m for chunk in chunks for m in chunk] == messages
    assert {len(chunk) for chunk in chunks} == {2}


def test_a_message_size_that_is_no_whole_number_of_samples_is_refused() -> None:
    with pytest.raises(ConfigError, match="multiple of 50"):
        fleet_messages(2, 50, 75, 10)


@pytest.mark.e2e
def test_the_command_runs_the_benchmark_with_its_options() -> None:

    result = subprocess.run(
        [
            *(sys.executable, "-m", "milkguard", "bench", "engine", "--gateways", "4"),
            *("--channels", "5", "--seconds", "20", "--sizes", "5,50", "--repeat", "1"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "COLUMNS": "200"},  # the table's labels whole, not wrapped
    )

    assert result.returncode == 0, result.stderr
    assert "plain loop readings/s" in result.stdout

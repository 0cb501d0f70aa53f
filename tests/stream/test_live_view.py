"""The live view of ``milkguard run``: open deviations first, then the channels nearest their
limits, bounded to the terminal with a count of what is not shown, drawn off the engine thread."""

from __future__ import annotations

import io
import threading

import pytest
from rich.console import Console

from milkguard.contract.v1 import Reading
from stream.engine.deviation import AppliedLimit, Deviation
from stream.live_view import ChannelLimit, Key, LiveView, Snapshot, select_rows
from tests.conftest import T0
from tests.helpers import wait_until

BAND = ChannelLimit("2-6 degC", 2.0, 6.0)


def reading(channel: str, value: float, ts: int = T0) -> Reading:
    return Reading("tank-1", channel, value, "degC", ts)


def deviation(channel: str, start_ms: int, kind: str = "critical_limit") -> Deviation:
    return Deviation(
        id=f"dev-{channel}",
        status="open",
        kind=kind,
        plan="p",
        plan_version="1",
        rule_id=f"r-{channel}",
        ccp="CCP1",
        jurisdiction="company",
        severity="major",
        action="alert",
        site="farm-01",
        asset="tank-1",
        channels=[channel],
        device="gw-1",
        limit=AppliedLimit(2.0, 6.0, 0, "degC", "test"),
        start_ms=start_ms,
        detected_ms=start_ms,
        end_ms=None,
        peak=None,
        time_beyond_s=0,
        degree_minutes=0,
    )


def key(channel: str) -> Key:
    return ("farm-01", "tank-1", channel)


def test_a_band_is_nearest_at_its_closer_limit_and_negative_beyond_it() -> None:
    assert BAND.nearness(4.0) == 0.5
    assert BAND.nearness(5.0) == 0.25
    assert BAND.nearness(2.5) == 0.125
    assert BAND.nearness(7.0) < 0
    assert ChannelLimit(">= 72 degC", 72.0, None).nearness(73.44) == pytest.approx(0.02)


def test_deviations_come_first_then_the_channels_nearest_their_limits() -> None:
    latest = {
        key("calm"): reading("calm", 4.0),
        key("close"): reading("close", 5.8),
        key("warm"): reading("warm", 5.0),
        key("late-breach"): reading("late-breach", 6.5),
        key("early-breach"): reading("early-breach", 7.0),
        key("volume"): reading("volume", 4000.0, ts=T0 + 5),
        key("level"): reading("level", 80.0, ts=T0 + 9),
    }
    limits = {key(c): BAND for c in ("calm", "close", "warm", "late-breach", "early-breach")}
    deviations = [deviation("late-breach", T0 + 100), deviation("early-breach", T0)]

    selection = select_rows(Snapshot(latest, deviations), limits, room=10)

    assert [row.key[2] for row in selection.rows] == [
        "early-breach",
        "late-breach",
        "close",
        "warm",
        "calm",
        "level",  # no limit: the most recently heard first
        "volume",
    ]
    assert [row.state for row in selection.rows[:3]] == ["deviation", "deviation", "ok"]
    assert selection.rows[-1].state == "recorded"
    assert (selection.hidden, selection.hidden_deviations) == (0, 0)


def test_rows_are_bounded_and_what_is_left_out_is_counted() -> None:
    latest = {key(f"t{n}"): reading(f"t{n}", 4.0 + n / 1000) for n in range(1_000)}
    limits = dict.fromkeys(latest, BAND)
    deviations = [deviation(f"t{n}", T0 + n) for n in range(3)]

    few = select_rows(Snapshot(latest, deviations), limits, room=2)
    some = select_rows(Snapshot(latest, deviations), limits, room=5)

    assert [row.key[2] for row in few.rows] == ["t0", "t1"]
    assert (few.hidden, few.hidden_deviations) == (998, 1)
    assert [row.key[2] for row in some.rows] == ["t0", "t1", "t2", "t999", "t998"]
    assert (some.hidden, some.hidden_deviations) == (995, 0)


def test_a_silent_channel_in_deviation_is_shown_without_a_value() -> None:
    selection = select_rows(
        Snapshot({}, [deviation("gone", T0, kind="monitoring_lost")]), {}, room=5
    )

    (row,) = selection.rows
    assert (row.key[2], row.reading, row.state) == ("gone", None, "deviation")


def test_the_view_draws_on_its_own_thread_what_the_engine_thread_offered() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120, height=16)
    latest = {key(f"t{n}"): reading(f"t{n}", 4.0) for n in range(50)}
    latest[key("[bold]odd")] = reading("[bold]odd", 5.9)  # gateway text, never markup
    drawn_on: list[str] = []

    class Recording(LiveView):
        def rows_that_fit(self) -> int:
            drawn_on.append(threading.current_thread().name)
            return super().rows_that_fit()

    with Recording(console, dict.fromkeys(latest, BAND)) as view:
        view.offer(latest, [deviation("t7", T0)])
        wait_until(lambda: view.rendered >= 1, 10, "a frame")

    text = out.getvalue()
    assert drawn_on == ["live-view"]
    assert "DEVIATION critical_limit" in text
    assert "[bold]odd" in text
    assert "more channels not shown" in text


def test_a_console_that_is_no_terminal_gets_no_view(demo_plan: object) -> None:
    console = Console(file=io.StringIO(), force_terminal=False)

    assert LiveView.for_terminal(console, demo_plan) is None  # type: ignore[arg-type]

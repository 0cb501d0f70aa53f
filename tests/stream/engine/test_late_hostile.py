"""Late readings from a hostile or broken gateway (issue 14, point 1: no verdict is ever unsaid,
duplicated or reopened; what falls beyond the bound is counted).

A gateway that replays old readings one per message, or a sensor flapping across its limit for
an hour, must neither duplicate a deviation already raised nor make each late message cost the
whole retained history.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, given, settings

from milkguard.contract.v1 import Reading
from stream.engine import late
from tests.stream.engine.scenario import Scenario, at
from tests.stream.engine.test_late import HTST_PLAN
from tests.stream.engine.test_late_properties import Script, records, run, scripts

LIMIT_PLAN = """
plan: room
jurisdiction: EU
allowed_lateness_s: 0
assets:
  cold-room:
    site: dairy-01
    kind: room
    late_judge_s: 3600
    channels:
      temp: {unit: degC, interval_s: 1}
rules:
  - id: room-6
    kind: critical_limit
    asset: cold-room
    channel: temp
    max: 6.0
    severity: major
    action: alert
    source: "EU 853/2004 Annex III IX: dairy products at the temperature the operator set, 6 degC"
"""


def room(seconds: float, temp: float) -> Reading:
    return Reading("cold-room", "temp", temp, "degC", at(seconds))


def test_a_late_reading_inside_an_old_deviation_of_a_flapping_sensor_duplicates_nothing() -> None:
    """EU 853/2004 (Annex III IX), the plan's 6 degC limit: a sensor flapping across the limit
    every second raises one deviation per excursion. A late reading inside the first of them,
    an hour's worth of deviations later but within ``late_judge_s``, is inside a deviation
    already raised: it adds nothing (no second deviation for the same seconds)."""
    line = Scenario(LIMIT_PLAN)
    for second in range(400):
        line.send("dairy-01", [room(second, 7.0 if second % 2 == 0 else 5.0)])
    raised = [c for c in line.changes if c.kind == "opened"]
    assert len(raised) == 200
    first = raised[0].deviation
    assert (first.start_ms, first.end_ms) == (at(0), None)

    line.send("dairy-01", [room(0.5, 7.2)], received=at(400))
    line.finish()

    opened = [c.deviation for c in line.changes if c.kind == "opened"]
    assert len(opened) == 200, "a deviation for seconds 0 to 1 raised a second time"
    assert [d for d in opened if d.detected_late] == []
    assert line.engine.counters.late == 1


def test_late_readings_one_per_message_keep_the_history_searched_small() -> None:
    """A gateway sending its backlog one reading per message: each late message is judged
    against the retained history, which stays in a few pieces (a late batch searches a
    handful of them, not one per earlier message)."""
    line = Scenario(LIMIT_PLAN)
    for second in range(0, 3000, 2):
        line.send("dairy-01", [room(second, 4.0)])
    for k in range(600):
        line.send("dairy-01", [room(3000 + 2 * k, 4.0)])
        line.send("dairy-01", [room(2 * k + 1, 4.0)], received=at(3000 + 2 * k))
    assert line.engine.counters.late_judged == 600
    assert len(line.engine._late._releases) <= 40
    assert line.changes == []


@contextmanager
def judged_over(window_after_ms: int | None) -> Iterator[None]:
    """The late path's first window past the late readings (None: the whole history)."""
    saved_after, saved_bounds = late._WINDOW_AFTER_MS, late.LateJudge._window_bounds
    if window_after_ms is None:
        late.LateJudge._window_bounds = lambda self, oldest, newest, rules: (-(2**62), 2**62, 0)  # type: ignore[method-assign]
    else:
        late._WINDOW_AFTER_MS = window_after_ms
    try:
        yield
    finally:
        late._WINDOW_AFTER_MS, late.LateJudge._window_bounds = saved_after, saved_bounds  # type: ignore[method-assign]


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(scripts())
def test_a_backlog_judged_over_a_window_of_history_is_judged_as_over_all_of_it(
    script: Script,
) -> None:
    """Judging a late batch over the history around it (and again over all of it when a rule
    is still engaged at the window's end) gives the very records judging it over the whole
    retained history gives: the window only saves work."""
    with judged_over(None):
        whole = records(run(script))
    with judged_over(0):  # the narrowest window: every edge and every second run exercised
        narrow = records(run(script))
    assert narrow == whole
    assert records(run(script)) == whole


def test_a_late_reading_whose_valve_state_was_let_go_is_not_judged_on_a_guess(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PMO Appendix H: below 72 degC the flow-diversion device must divert; a temperature is
    judged with the valve state of its instant. The valve reported "diverted" once, at start-up
    (it reports its changes), and the retained history has let that report go: a late 70 degC
    reading is not judged as if the flow went forward (a false critical deviation); it is
    counted as not re-judged."""
    monkeypatch.setattr("stream.engine.late._RETAINED_READINGS", 40)
    line = Scenario(HTST_PLAN)  # the valve silent after its one report: a gap, nothing else
    line.send("plant-01", [Reading("htst-1", "fdd_forward", 0, "state", at(0))])
    for second in range(1, 80):
        line.send("plant-01", [Reading("htst-1", "hold_temp", 70.0, "degC", at(second))])

    line.send("plant-01", [Reading("htst-1", "hold_temp", 69.0, "degC", at(70.5))], received=at(80))
    line.finish()

    assert line.of("htst_temperature") == []
    assert line.engine.counters.late_unrejudged == 1

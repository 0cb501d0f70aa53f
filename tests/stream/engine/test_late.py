"""Late readings judged at their own event time (issue 14, point 1), as the regulations expect.

The PMO (Appendix H, HTST) requires product that passed forward below the legal temperature to be
held; EU 853/2004 (Annex III, Section IX) and the plan's room limits require a sustained
excursion to be reported. A store-and-forward gateway that sends its live data first and its
backlog after a link drop must not hide either: the breach is reported, flagged found late.
"""

from __future__ import annotations

import pytest

from milkguard.contract.v1 import CipEnd, CipStart, Reading
from stream.engine import DeviationChange, Engine
from tests.stream.engine.scenario import Scenario, at
from tests.stream.engine.test_htst import PLAN as HTST_FULL_PLAN
from tests.stream.engine.test_htst import sample as full_sample
from tests.stream.engine.test_uht import PLAN as UHT_PLAN

HTST_PLAN = """
plan: htst
jurisdiction: US
allowed_lateness_s: 0
assets:
  htst-1:
    site: plant-01
    kind: htst
    channels:
      hold_temp: {unit: degC, interval_s: 1, ccp: true}
      fdd_forward: {unit: state, interval_s: 1, ccp: true}
rules:
  - id: past
    kind: htst
    ccp: CCP-PAST-1
    asset: htst-1
    indicating: hold_temp
    flow_diversion: fdd_forward
    legal: {temp_c: 72.0, hold_s: 15}
    source: "PMO Appendix H: HTST 72 degC for 15 s"
"""

ROOM_PLAN = """
plan: room
jurisdiction: EU
allowed_lateness_s: 0
assets:
  cold-room:
    site: dairy-01
    kind: room
    {late}
    channels:
      temp: {{unit: degC, interval_s: 60}}
rules:
  - id: room-6
    kind: critical_limit
    asset: cold-room
    channel: temp
    max: 6.0
    sustained_s: 1200
    severity: major
    action: alert
    suspend_during_cleaning: true
    source: "EU 853/2004 Annex III IX: dairy products at the temperature the operator set, 6 degC"
"""


def htst(seconds: float, temp: float, forward: int = 1) -> list[Reading]:
    """One second of the pasteurizer: valve state and indicating thermometer."""
    return [
        Reading("htst-1", "fdd_forward", forward, "state", at(seconds)),
        Reading("htst-1", "hold_temp", temp, "degC", at(seconds)),
    ]


def room(seconds: float, temp: float) -> Reading:
    return Reading("cold-room", "temp", temp, "degC", at(seconds))


def backlog(line: Scenario, site: str, readings: list[Reading], seconds: float) -> None:
    """The gateway's stored readings, sent when its link is back (received at ``seconds``)."""
    line.send(site, readings, received=at(seconds))


def live_htst(line: Scenario, seconds: range, temp: float = 72.5) -> None:
    for second in seconds:
        line.send("plant-01", htst(second, temp))


def opened_and_closed(line: Scenario, kind: str) -> tuple[DeviationChange, DeviationChange]:
    opened, closed = line.of(kind)
    assert (opened.kind, closed.kind) == ("opened", "closed")
    assert opened.deviation.id == closed.deviation.id
    return opened, closed


@pytest.fixture
def line() -> Scenario:
    return Scenario(HTST_PLAN)


def the_pmo_backlog(line: Scenario) -> None:
    """Forward flow below 72 degC for 3 s (10 to 12 s) during a link drop: the gateway sends
    its live data first (13 to 32 s) and the 3 s backlog 20 s later."""
    live_htst(line, range(10))
    live_htst(line, range(13, 33))
    backlog(line, "plant-01", [r for s in (10, 11, 12) for r in htst(s, 71.5)], 33)


def test_a_backlogged_htst_dip_in_forward_flow_is_one_deviation_found_late(
    line: Scenario,
) -> None:
    """PMO Appendix H: product pasteurized below 72 degC in forward flow is a critical deviation
    and the product forwarded in that interval is held. The breach reached the stream after
    live data of later seconds: it is raised once, flagged found late, from its first sample
    below the limit to the first sample back within it."""
    the_pmo_backlog(line)
    line.finish()

    opened, closed = opened_and_closed(line, "htst_temperature")
    deviation = closed.deviation
    assert (deviation.start_ms, deviation.end_ms) == (at(10), at(13))  # product to hold
    assert opened.deviation.detected_late
    assert deviation.detected_late
    assert (deviation.severity, deviation.ccp, deviation.peak) == ("critical", "CCP-PAST-1", 71.5)
    assert line.engine.counters.late_judged == 6
    assert line.engine.counters.late_beyond_bound == 0


def test_a_backlogged_dip_while_the_valve_diverted_is_the_device_doing_its_job(
    line: Scenario,
) -> None:
    """PMO: below the legal temperature the flow-diversion device must divert; when it did (at
    the same instants, in the backlog) there is no deviation."""
    live_htst(line, range(10))
    live_htst(line, range(13, 33))
    backlog(line, "plant-01", [r for s in (10, 11, 12) for r in htst(s, 71.5, forward=0)], 33)
    line.finish()

    assert line.of("htst_temperature") == []


def test_a_late_reading_inside_a_deviation_already_raised_adds_nothing(line: Scenario) -> None:
    """A deviation raised live (10 to 13 s, with 11 s missing) is not reopened, changed or
    duplicated by the missing second arriving later: no verdict is unsaid."""
    live_htst(line, range(10))
    line.send("plant-01", htst(10, 71.5))
    line.send("plant-01", htst(12, 71.0))
    live_htst(line, range(13, 20))
    said = list(line.of("htst_temperature"))
    backlog(line, "plant-01", htst(11, 70.0), 25)
    line.finish()

    assert line.of("htst_temperature") == said
    assert [c.kind for c in said] == ["opened", "closed"]
    assert said[1].deviation.peak == 71.0  # the late, lower value changes no published record


def test_a_backlog_showing_a_breach_began_before_the_live_one_adds_the_seconds_before(
    line: Scenario,
) -> None:
    """The live data resumed while the temperature was still low (a deviation from 13 s); the
    backlog shows it was low from 10 s. The published deviation stays as it is; the seconds
    10 to 13 are a deviation of their own, found late, so their product is held too."""
    live_htst(line, range(10))
    line.send("plant-01", htst(13, 71.8))
    live_htst(line, range(14, 33))
    said = list(line.of("htst_temperature"))
    backlog(line, "plant-01", [r for s in (10, 11, 12) for r in htst(s, 71.5)], 33)
    line.finish()

    assert line.of("htst_temperature")[:2] == said
    _, closed = line.of("htst_temperature")[2:]
    assert (closed.deviation.start_ms, closed.deviation.end_ms) == (at(10), at(13))
    assert closed.deviation.detected_late


def test_the_same_backlog_sent_twice_raises_once(line: Scenario) -> None:
    """At-least-once delivery: the backlog delivered again (or a late duplicate of a reading
    judged) changes nothing."""
    the_pmo_backlog(line)
    backlog(line, "plant-01", [r for s in (10, 11, 12) for r in htst(s, 71.5)], 40)
    backlog(line, "plant-01", htst(20, 60.0), 41)  # same channel and time as one judged
    line.finish()

    assert [c.kind for c in line.of("htst_temperature")] == ["opened", "closed"]


def test_a_restart_between_live_data_and_backlog_judges_it_the_same(line: Scenario) -> None:
    """The snapshot keeps the judged history: a stream restarted after the live data and before
    the backlog raises the same deviation as one that ran through."""
    through = Scenario(HTST_PLAN)
    the_pmo_backlog(through)
    through.finish()

    live_htst(line, range(10))
    live_htst(line, range(13, 33))
    restarted = Engine.restore(line.engine.plan, line.engine.snapshot())
    line.engine = restarted
    backlog(line, "plant-01", [r for s in (10, 11, 12) for r in htst(s, 71.5)], 33)
    line.finish()

    assert line.of("htst_temperature") == through.of("htst_temperature")


def room_scenario(late: str = "") -> Scenario:
    return Scenario(ROOM_PLAN.format(late=late))


def test_a_sustained_room_excursion_completed_only_by_the_backlog_is_raised() -> None:
    """A cold room above 6 degC for 20 min is a deviation (the plan's sustained limit). Live
    data showed 4 min above it; the backlog shows the 24 min before: one deviation from the
    first sample above (60 s) to the first back within (1800 s), found late."""
    cold = room_scenario()
    cold.send("dairy-01", [room(0, 4.0)])
    for second in range(1560, 1800, 60):
        cold.send("dairy-01", [room(second, 7.0)])
    cold.send("dairy-01", [room(1800, 5.0)])
    assert cold.of("critical_limit") == []
    backlog(cold, "dairy-01", [room(s, 7.0) for s in range(60, 1560, 60)], 1900)
    cold.finish()

    _, closed = opened_and_closed(cold, "critical_limit")
    assert (closed.deviation.start_ms, closed.deviation.end_ms) == (at(60), at(1800))
    assert closed.deviation.detected_late


def test_a_backlog_that_makes_an_ongoing_excursion_sustained_opens_it_once() -> None:
    """The room is still above 6 degC when the backlog shows it has been for over 20 min: the
    deviation opens found late, and the live stream closes it when the room is back, once."""
    cold = room_scenario()
    cold.send("dairy-01", [room(0, 4.0)])
    for second in range(1560, 1800, 60):
        cold.send("dairy-01", [room(second, 7.0)])
    backlog(cold, "dairy-01", [room(s, 7.0) for s in range(60, 1560, 60)], 1800)
    assert [c.kind for c in cold.of("critical_limit")] == ["opened"]
    for second in range(1800, 2100, 60):
        cold.send("dairy-01", [room(second, 7.5)])
    cold.send("dairy-01", [room(2100, 5.0)])
    cold.finish()

    opened, closed = opened_and_closed(cold, "critical_limit")
    assert (closed.deviation.start_ms, closed.deviation.end_ms) == (at(60), at(2100))
    assert opened.deviation.detected_late
    assert closed.deviation.peak == 7.5


def test_a_reading_later_than_the_bound_is_counted_not_judged() -> None:
    """``late_judge_s`` bounds how far back a late reading is judged: older ones are counted
    (``late_beyond_bound``) and only stored."""
    cold = room_scenario("late_judge_s: 600")
    cold.send("dairy-01", [room(0, 4.0)])
    for second in range(1560, 1860, 60):
        cold.send("dairy-01", [room(second, 5.0)])
    backlog(cold, "dairy-01", [room(s, 9.0) for s in range(60, 1560, 60)], 1900)
    cold.finish()

    assert cold.of("critical_limit") == []
    counters = cold.engine.counters
    # within 600 s of the judged 1800 s: 1200 s to 1500 s, 6 minutes above, not sustained
    assert (counters.late_judged, counters.late_beyond_bound) == (6, 19)


def test_late_readings_inside_a_cleaning_window_are_suspended_like_on_time_ones() -> None:
    """A rule suspended during cleaning (CIP) judges nothing inside the window, however late the
    readings come."""
    cold = room_scenario()
    cold.engine.submit_events(
        "dairy-01", [CipStart(asset="cold-room", ts=at(30)), CipEnd(asset="cold-room", ts=at(1700))]
    )
    cold.send("dairy-01", [room(0, 4.0)])
    for second in range(1560, 1800, 60):
        cold.send("dairy-01", [room(second, 7.0)])
    cold.send("dairy-01", [room(1800, 5.0)])
    backlog(cold, "dairy-01", [room(s, 30.0) for s in range(60, 1560, 60)], 1900)
    cold.finish()

    assert cold.of("critical_limit") == []


def test_a_plan_can_turn_late_judging_off() -> None:
    """``late_judge_s: 0``: late readings are counted and stored, never judged, as before."""
    line = Scenario(
        HTST_PLAN.replace("allowed_lateness_s: 0", "allowed_lateness_s: 0\nlate_judge_s: 0")
    )
    the_pmo_backlog(line)
    line.finish()

    assert line.of("htst_temperature") == []
    assert line.engine.counters.late_beyond_bound == 6


def uht(seconds: float, outlet: float) -> list[Reading]:
    return [
        Reading("uht-1", "flow", 6000.0, "L/h", at(seconds)),
        Reading("uht-1", "outlet_temp", outlet, "degC", at(seconds)),
    ]


def test_a_backlogged_uht_parcel_below_the_lethality_is_found_late() -> None:
    """EU 853/2004: UHT product must be commercially sterile; a parcel whose F0 fell below the
    plan's 3 min, sent in a backlog after later live data, is a deviation found late, and its
    F0 is kept for the record like an on-time one's."""
    line = Scenario(UHT_PLAN)
    for second in [*range(10), *range(12, 30)]:
        line.send("plant-01", uht(second, 140.0))
    backlog(line, "plant-01", [r for s in (10, 11) for r in uht(s, 135.0)], 30)
    line.finish()

    _, closed = opened_and_closed(line, "uht_lethality")
    assert (closed.deviation.start_ms, closed.deviation.end_ms) == (at(10), at(12))
    assert closed.deviation.detected_late
    late_f0 = [d for d in line.engine.derived if d.ts in (at(10), at(11))]
    assert [d.quantity for d in late_f0] == ["f0_min", "f0_min"]


def test_a_late_reading_older_than_the_retained_history_is_counted_not_judged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The retained history is bounded in memory: a late reading that would need history no
    longer kept is counted beyond the bound rather than judged on half its context."""
    monkeypatch.setattr("stream.engine.late._RETAINED_READINGS", 40)
    line = Scenario(HTST_PLAN)
    the_pmo_backlog(line)  # 60 readings judged live: the oldest releases let go
    line.finish()

    assert line.of("htst_temperature") == []
    assert line.engine.counters.late_beyond_bound == 6


def test_a_backlogged_flow_surge_and_a_recorder_above_the_indicating_are_found_late() -> None:
    """PMO Appendix H: the fastest particle must be held 15 s (a flow surge that shortens it is
    a deviation, the lot held), and the recording thermometer must not read above the
    indicating one. Both, in a backlog sent after later live data, are raised found late, with
    the flow-diversion state and the indicating temperature of their own instants."""
    line = Scenario(HTST_FULL_PLAN)

    def second(at_s: int, flow: float, recorder: float) -> list[Reading]:
        return [
            full_sample(at_s, "fdd_forward", 1),
            full_sample(at_s, "hold_temp", 73.0),
            full_sample(at_s, "recorder_temp", recorder),
            full_sample(at_s, "flow", flow),
        ]

    for at_s in [*range(5), *range(7, 20)]:
        line.send("plant-01", second(at_s, 10_000, 72.8))
    backlog(line, "plant-01", [*second(5, 11_000, 73.5), *second(6, 11_000, 73.5)], 20)
    line.finish()

    _, surge = opened_and_closed(line, "htst_holding_time")
    assert (surge.deviation.start_ms, surge.deviation.end_ms) == (at(5), at(7))
    assert surge.deviation.detected_late
    assert surge.deviation.action == "hold_lot"
    _, recorder = opened_and_closed(line, "htst_recorder")
    assert (recorder.deviation.start_ms, recorder.deviation.end_ms) == (at(5), at(7))
    assert recorder.deviation.detected_late

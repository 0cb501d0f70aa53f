"""Gaps in monitoring, as HACCP and the PMO treat them: a CCP recorder that stops leaves the
product since its last record unaccounted for, and that product must be held.

Codex Alimentarius CXC 1-1969 (HACCP principle 4, monitoring; principle 5, corrective action for
product made while a CCP was not under control) and the PMO (Appendix H: the recording
thermometer is the CCP's record) ask the same question of a gap: since when is the product
unmonitored? From the last record. The start-up grace is the plan's: the time the service gives
its gateways to be heard from after it starts or restarts, before their silence counts.
"""

from __future__ import annotations

from milkguard.contract.v1 import Reading
from stream.engine import DeviationChange, Engine
from stream.plan import load_plan
from stream.settings import demo_plan_path
from tests.stream.engine.scenario import Scenario, at

PLAN = """
plan: gaps
jurisdiction: US
allowed_lateness_s: 2
startup_grace_s: 30
assets:
  htst-1:
    site: plant-01
    kind: htst
    channels:
      recorder_temp: {unit: degC, interval_s: 1, ccp: true, silence_after_s: 5}
      flow: {unit: L/h, interval_s: 1, silence_after_s: 5}
rules:
  - id: recorder-min-72
    kind: critical_limit
    ccp: CCP-HTST-1
    asset: htst-1
    channel: recorder_temp
    min: 72.0
    severity: critical
    action: hold_lot
    source: "PMO: 72 degC for 15 s"
"""


def recorder(line: Scenario, points: list[tuple[float, float]]) -> None:
    line.samples("plant-01", "htst-1", "recorder_temp", "degC", points)


def both(line: Scenario, seconds: range, temp: float = 72.5) -> None:
    """Both channels, one batch a second."""
    for second in seconds:
        line.send(
            "plant-01",
            [
                Reading("htst-1", "recorder_temp", temp, "degC", at(second)),
                Reading("htst-1", "flow", 9000.0, "L/h", at(second)),
            ],
        )


def lost(line: Scenario, kind: str = "opened") -> list[DeviationChange]:
    """The "monitoring lost" changes of one kind."""
    return [c for c in line.of("monitoring_lost") if c.kind == kind]


def recorder_lost(line: Scenario) -> list[DeviationChange]:
    """The recorder's "monitoring lost" changes."""
    return [c for c in line.of("monitoring_lost") if c.deviation.channels == ["recorder_temp"]]


def recorder_gap_seen_by_the_timer() -> Scenario:
    """Records every second to 20 s, the recorder silent until 31 s, the stream's clock ticking
    meanwhile (its flow channel keeps reporting)."""
    line = Scenario(PLAN)
    both(line, range(0, 21))
    for second in range(21, 31):
        line.samples("plant-01", "htst-1", "flow", "L/h", [(second, 9000.0)])
    recorder(line, [(31, 72.5)])
    line.finish()
    return line


def recorder_gap_seen_at_the_next_sample() -> Scenario:
    """The same gap, with no tick in it: the stream hears nothing until the sample at 31 s
    (the flow meter, silent from 20 s too, is found silent at that moment)."""
    line = Scenario(PLAN)
    both(line, range(0, 21))
    recorder(line, [(31, 72.5)])
    line.finish()
    return line


# --- the gap record ---------------------------------------------------------------------------


def test_a_recorder_that_stops_holds_the_product_since_its_last_record() -> None:
    """PMO / HACCP: the recorder's last record is at 20 s; its silence limit is 5 s. The record
    says monitoring was lost from 20 s (the product since must be held), that the stream knew at
    25 s (the limit passed), and that the recorder came back at 31 s."""
    line = recorder_gap_seen_by_the_timer()

    opened, closed = line.of("monitoring_lost")  # the flow meter reported throughout
    assert (opened.kind, closed.kind) == ("opened", "closed")
    gap = opened.deviation
    assert (gap.start_ms, gap.detected_ms, gap.end_ms) == (at(20), at(25), None)
    assert gap.time_beyond_s == 5.0  # from the last record to the deadline
    assert (gap.severity, gap.channels) == ("critical", ["recorder_temp"])
    assert gap.limit.sustained_s == 5.0
    assert (closed.deviation.end_ms, closed.deviation.time_beyond_s) == (at(31), 11.0)
    assert closed.deviation.id == gap.id


def test_a_gap_seen_only_at_the_next_sample_is_the_same_record_with_the_same_id() -> None:
    """The same gap, found when the recorder's next sample arrives (no timer ran in it): one
    gap, one record, whichever way the stream learns of it."""
    timed = recorder_lost(recorder_gap_seen_by_the_timer())
    seen_late = recorder_lost(recorder_gap_seen_at_the_next_sample())

    assert [c.kind for c in seen_late] == ["opened", "closed"]
    assert [(c.kind, c.deviation) for c in seen_late] == [(c.kind, c.deviation) for c in timed]


def test_a_sample_beyond_the_critical_limit_is_still_the_last_record() -> None:
    """A recorder that last showed 70 degC (below the 72 degC minimum) and then stopped: the
    breach holds the product from 20 s, and monitoring was lost after that record, not from the
    last sample within the limit: the gap starts at 20 s, the breach stays open."""
    line = Scenario(PLAN)
    both(line, range(0, 20))
    both(line, range(20, 21), temp=70.0)
    for second in range(21, 40):
        line.samples("plant-01", "htst-1", "flow", "L/h", [(second, 9000.0)])

    (breach,) = line.of("critical_limit")
    (gap,) = lost(line)
    assert breach.deviation.start_ms == at(20)
    assert (gap.deviation.start_ms, gap.deviation.detected_ms) == (at(20), at(25))
    assert [d.kind for d in line.engine.open_deviations()] == ["critical_limit", "monitoring_lost"]


# --- a quiet first minute ---------------------------------------------------------------------


def test_the_demo_plan_with_no_gateways_raises_nothing_in_its_first_minute() -> None:
    """`milkguard run --no-simulators` on the demo plan, no gateway connected: the plan's
    default start-up grace is 60 s, so its first minute passes without a "monitoring lost"
    (before, eight were raised within seconds, five of them critical)."""
    engine = Engine(load_plan(demo_plan_path()))
    changes: list[DeviationChange] = []
    for tick in range(0, 60_001, 200):  # the runtime ticks five times a second
        engine.advance(at(0) + tick, changes)

    assert changes == []
    assert engine.open_deviations() == []


def test_a_channel_never_heard_from_is_unmonitored_from_the_end_of_the_grace() -> None:
    """The demo plan's channels, none heard from for ten minutes: each raises "monitoring lost"
    once, from the service's start plus the 60 s grace, detected when its silence limit (3 s)
    passed after that, and the record says why it starts there."""
    engine = Engine(load_plan(demo_plan_path()))
    changes: list[DeviationChange] = []
    for tick in range(0, 600_001, 200):
        engine.advance(at(0) + tick, changes)

    assert {c.kind for c in changes} == {"opened"}
    # one per channel, once; not the receiving bay's, whose silence limit is a day
    assert len(changes) == 10
    assert sum(c.deviation.severity == "critical" for c in changes) == 5  # the CCP channels
    for change in changes:
        gap = change.deviation
        assert (gap.kind, gap.start_ms, gap.detected_ms) == ("monitoring_lost", at(60), at(63))
        assert "never heard from" in gap.limit.source
        assert "60 s start-up grace (startup_grace_s)" in gap.limit.source


def test_a_gateway_heard_within_the_grace_is_judged_from_its_own_samples() -> None:
    """A gateway that connects 20 s after the start and reports every second raises nothing;
    its other channel, never heard from, raises once the grace and its limit have passed."""
    line = Scenario(PLAN)
    line.idle_until(0)  # the service starts
    for second in range(20, 60):
        recorder(line, [(second, 72.5)])

    (gap,) = lost(line)
    assert gap.deviation.channels == ["flow"]
    assert (gap.deviation.start_ms, gap.deviation.detected_ms) == (at(30), at(35))
    assert gap.deviation.severity == "minor"  # not a CCP channel


def test_a_first_sample_after_the_grace_and_the_limit_shows_the_gap_since_the_grace() -> None:
    """No tick between the start and a channel's first sample, 40 s later: the gap it shows is
    the one the timer would have raised (from the grace's end, 30 s), opened and closed."""
    line = Scenario(PLAN)
    line.idle_until(0)
    recorder(line, [(40, 72.5)])
    line.finish()

    opened, closed = recorder_lost(line)
    assert (opened.deviation.start_ms, opened.deviation.detected_ms) == (at(30), at(35))
    assert closed.deviation.end_ms == at(40)
    assert "never heard from" in opened.deviation.limit.source


# --- restarts ---------------------------------------------------------------------------------


def restarted(line: Scenario, at_seconds: float) -> None:
    """The service is stopped and started again from its saved state at ``at_seconds``."""
    line.engine = Engine.restore(line.engine.plan, line.engine.snapshot())
    line.engine.excuse_outage(at(at_seconds))


def test_a_silence_open_before_a_restart_stays_the_same_deviation() -> None:
    """The recorder stopped at 20 s and its gap was raised; the service restarts at 60 s: the
    gap is restored, not raised again, and it closes at the recorder's next sample with the
    id it opened with."""
    line = Scenario(PLAN)
    both(line, range(0, 21))
    for second in range(21, 60):
        line.samples("plant-01", "htst-1", "flow", "L/h", [(second, 9000.0)])
    (before,) = lost(line)

    restarted(line, 60)
    for second in range(60, 200):
        line.samples("plant-01", "htst-1", "flow", "L/h", [(second, 9000.0)])
    assert lost(line) == [before]  # nothing raised again: not after the grace either
    assert [d.id for d in line.engine.open_deviations()] == [before.deviation.id]

    recorder(line, [(200, 72.5)])
    line.finish()
    (closed,) = lost(line, "closed")
    assert (closed.deviation.id, closed.deviation.end_ms) == (before.deviation.id, at(200))
    assert closed.deviation.start_ms == at(20)


def test_a_backlog_within_the_grace_after_a_restart_raises_nothing() -> None:
    """Records to 20 s; the service is down from 21 s to 60 s while its gateway keeps its
    readings; 10 s after the restart the broker delivers them: the record has no gap."""
    line = Scenario(PLAN)
    both(line, range(0, 21))
    restarted(line, 60)
    line.idle_until(69)
    for second in range(21, 80):
        line.send(
            "plant-01",
            [
                Reading("htst-1", "recorder_temp", 72.5, "degC", at(second)),
                Reading("htst-1", "flow", 9000.0, "L/h", at(second)),
            ],
            received=at(max(second, 70)),
        )
    line.finish()

    assert line.of("monitoring_lost") == []


def test_a_gap_across_a_restart_is_the_gap_an_uninterrupted_service_records() -> None:
    """The recorder stops at 20 s and the service restarts at 22 s, before its limit passed:
    it raises nothing during the grace, then the very record an uninterrupted service raised
    (same start, detected, id): one gap, one id."""
    steady = Scenario(PLAN)
    both(steady, range(0, 21))
    steady.idle_until(200)

    line = Scenario(PLAN)
    both(line, range(0, 21))
    restarted(line, 22)
    line.idle_until(22 + 30)  # the grace
    assert line.of("monitoring_lost") == []
    line.idle_until(200)

    assert {c.deviation.channels[0] for c in lost(line)} == {"recorder_temp", "flow"}
    assert [c.deviation for c in lost(line)] == [c.deviation for c in lost(steady)]


def test_a_channel_never_heard_from_before_a_restart_is_given_the_grace_again() -> None:
    """A flow meter not heard from when the service restarts at 22 s (within its first grace):
    its silence counts from the restart plus the grace, raised once, at 52 s; the recorder,
    heard throughout, raises nothing."""
    line = Scenario(PLAN)
    recorder(line, [(second, 72.5) for second in range(0, 20)])
    restarted(line, 22)
    recorder(line, [(second, 72.5) for second in range(22, 200)])
    line.finish()

    (gap,) = line.of("monitoring_lost")
    assert gap.deviation.channels == ["flow"]
    assert (gap.deviation.start_ms, gap.deviation.detected_ms) == (at(52), at(57))


def test_a_service_restarting_faster_than_its_grace_still_raises_the_gap() -> None:
    """PMO Appendix H: the recording thermometer is the official record; product processed while
    it records nothing is held. The recorder stops at 20 s; the service then restarts every
    25 s (a crash loop, each start shorter than its grace plus the silence limit): a channel
    silent across restarts keeps the grace of the first restart, so the gap is raised (from
    the last sample, 20 s) once that grace and the limit passed, in the second run."""
    line = Scenario(PLAN)
    both(line, range(0, 21))
    restart, raised_in = 22.0, []
    while restart < 300:
        restarted(line, restart)
        line.idle_until(restart + 24)
        if recorder_lost(line) and not raised_in:
            raised_in.append(restart)
        restart += 25
    assert raised_in == [47.0]  # the run after the first restart's grace (22 + 30 s) ended
    gaps = recorder_lost(line)
    assert [c.kind for c in gaps] == ["opened"], "the crash loop hid the recorder's gap"
    assert gaps[0].deviation.start_ms == at(20)
    assert gaps[0].deviation.detected_ms == at(25)

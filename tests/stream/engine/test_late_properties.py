"""Late readings, as properties: whatever a gateway's backlog holds and however often it comes,
no verdict is unsaid, none is said twice, and a restart changes nothing (issue 14, point 1).

A HACCP record is evidence: once a deviation is published, later data may add a deviation found
late, never close, change or remove a published one, nor raise the same breach again.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from milkguard.contract.v1 import CipEnd, CipStart, Reading
from stream.engine import DeviationChange, Engine
from stream.engine.deviation import deviation_to_json
from stream.plan import parse_plan
from tests.stream.engine.scenario import at

PLAN = parse_plan(
    b"""
plan: late-properties
jurisdiction: company
allowed_lateness_s: 0
assets:
  room-1:
    site: dairy-01
    kind: room
    channels:
      temp: {unit: degC, interval_s: 10}
  htst-1:
    site: dairy-01
    kind: htst
    channels:
      hold_temp: {unit: degC, interval_s: 10, ccp: true}
      fdd_forward: {unit: state, interval_s: 10, ccp: true}
rules:
  - id: room-max
    kind: critical_limit
    asset: room-1
    channel: temp
    max: 6.0
    sustained_s: 30
    severity: major
    action: alert
    suspend_during_cleaning: true
    source: "plan: room at most 6 degC, 30 s"
  - id: room-min
    kind: critical_limit
    asset: room-1
    channel: temp
    min: 2.0
    severity: critical
    action: alert
    source: "plan: never below 2 degC"
  - id: room-step
    kind: rate_of_change
    asset: room-1
    channel: temp
    max_per_min: 20.0
    severity: minor
    action: alert
    source: "plan: a room cannot change 20 degC a minute"
  - id: room-stuck
    kind: stuck_sensor
    asset: room-1
    channel: temp
    flat_for_s: 40
    severity: minor
    action: alert
    source: "plan: a live probe never repeats exactly for 40 s"
  - id: past
    kind: htst
    ccp: CCP-PAST-1
    asset: htst-1
    indicating: hold_temp
    flow_diversion: fdd_forward
    legal: {temp_c: 72.0, hold_s: 15}
    source: "PMO Appendix H: HTST 72 degC for 15 s"
""",
    "late-properties.yaml",
)

ROOM_VALUES = st.sampled_from([1.0, 4.0, 4.0, 5.0, 7.0, 9.0, 30.0])
HTST_VALUES = st.sampled_from([71.0, 72.5, 72.5, 73.0])


@dataclass(frozen=True)
class Script:
    """Readings, the ones the gateway sends live (in time order) and its backlog (after)."""

    live: list[list[Reading]]
    backlog: list[list[Reading]]
    cleaning: tuple[int, int] | None


@st.composite
def scripts(draw: st.DrawFn) -> Script:
    live: list[list[Reading]] = []
    stored: list[list[Reading]] = []
    second = 0
    for _ in range(draw(st.integers(2, 30))):
        second += draw(st.sampled_from([5, 10, 10, 10, 20]))
        batch = [Reading("room-1", "temp", draw(ROOM_VALUES), "degC", at(second))]
        if draw(st.booleans()):
            batch += [
                Reading(
                    "htst-1", "fdd_forward", draw(st.sampled_from([0, 1, 1])), "state", at(second)
                ),
                Reading("htst-1", "hold_temp", draw(HTST_VALUES), "degC", at(second)),
            ]
        # the link drops: this second waits in the gateway's store
        (stored if draw(st.integers(0, 2)) == 0 else live).append(batch)
    # the store is sent in any order of its seconds, in one or two messages (a second's
    # readings stay together: a gateway samples and stores them as one)
    stored = draw(st.permutations(stored))
    cut = draw(st.integers(0, len(stored)))
    parts = [[r for batch in part for r in batch] for part in (stored[:cut], stored[cut:])]
    cleaning = None
    if draw(st.integers(0, 3)) == 0:
        begin = draw(st.integers(0, second))
        cleaning = (begin, begin + draw(st.integers(10, 100)))
    return Script(live, [part for part in parts if part], cleaning)


def run(
    script: Script, *, backlog_twice: bool = False, restart_at: int | None = None
) -> list[DeviationChange]:
    engine = Engine(PLAN)
    out: list[DeviationChange] = []
    if script.cleaning is not None:
        begin, end = script.cleaning
        engine.submit_events(
            "dairy-01", [CipStart(asset="room-1", ts=at(begin)), CipEnd(asset="room-1", ts=at(end))]
        )
    steps = [*script.live, *script.backlog]
    if backlog_twice:
        steps += script.backlog
    newest = max((r.ts for batch in script.live for r in batch), default=at(0))
    for index, batch in enumerate(steps):
        if index == restart_at:
            engine = Engine.restore(PLAN, engine.snapshot())
        received = max(r.ts for r in batch)
        if index >= len(script.live):  # the backlog comes 20 s after the last live data
            received = max(newest, received) + 20_000
        engine.submit("dairy-01", "gw-1", batch, received)
        engine.advance(received, out)
    engine.flush(out)
    return out


def records(changes: list[DeviationChange]) -> list[dict[str, object]]:
    return [deviation_to_json(c) for c in changes]


def rule_of(change: DeviationChange) -> tuple[str, str, str]:
    d = change.deviation
    return (d.site, d.asset, d.rule_id)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(scripts())
def test_no_verdict_is_unsaid_and_none_is_said_twice(script: Script) -> None:
    """Each deviation opens once and closes at most once, after it opened; a published open
    record is never changed by what comes later; no two deviations of a rule that late readings
    re-judge overlap."""
    changes = run(script)
    opened: dict[str, DeviationChange] = {}
    closed: dict[str, DeviationChange] = {}
    for change in changes:
        key = change.deviation.id
        if change.kind == "opened":
            assert key not in opened
            opened[key] = change
        else:
            assert key in opened
            assert key not in closed
            closed[key] = change
            before, after = opened[key].deviation, change.deviation
            assert (after.start_ms, after.rule_id, after.kind) == (
                before.start_ms,
                before.rule_id,
                before.kind,
            )
    spans: dict[tuple[str, str, str], list[tuple[int, float]]] = {}
    for key, change in opened.items():
        end = closed[key].deviation.end_ms if key in closed else None
        spans.setdefault(rule_of(change), []).append(
            (change.deviation.start_ms, float("inf") if end is None else end)
        )
    for rule, intervals in spans.items():
        if rule[2].startswith("silence."):
            continue  # gaps are not re-judged by late readings (their own issue, point 4)
        intervals.sort()
        for (_, first_end), (second_start, _) in pairwise(intervals):
            assert first_end <= second_start, rule


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(scripts())
def test_every_breach_a_sample_alone_decides_is_in_a_deviation(script: Script) -> None:
    """A critical limit with no sustained duration, and the PMO's HTST temperature in forward
    flow, are decided by one sample: every such sample, sent live or in the backlog, lies in a
    deviation of its rule (from its start to the first sample back within the limit)."""
    changes = run(script)
    spans: dict[str, list[tuple[int, float]]] = {}
    ends = {c.deviation.id: c.deviation.end_ms for c in changes if c.kind == "closed"}
    for change in changes:
        if change.kind == "opened":
            end = ends.get(change.deviation.id)
            spans.setdefault(change.deviation.rule_id, []).append(
                (change.deviation.start_ms, float("inf") if end is None else end)
            )
    readings = [r for batch in [*script.live, *script.backlog] for r in batch]
    forward = {r.ts: r.value for r in readings if r.channel == "fdd_forward"}

    def cleaning(ts: int) -> bool:  # the room's limits are suspended while it is cleaned
        return script.cleaning is not None and at(script.cleaning[0]) <= ts < at(script.cleaning[1])

    for reading in readings:
        if reading.channel == "temp" and reading.value < 2.0 and not cleaning(reading.ts):
            rule = "room-min"
        elif reading.channel == "hold_temp" and reading.value < 72.0 and forward[reading.ts]:
            rule = "past.temperature"
        else:
            continue
        assert any(s <= reading.ts <= e for s, e in spans.get(rule, ())), (rule, reading)


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(scripts())
def test_the_same_backlog_delivered_twice_raises_once(script: Script) -> None:
    """At-least-once delivery: the backlog sent again changes nothing."""
    assert records(run(script, backlog_twice=True)) == records(run(script))


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(scripts(), st.integers(0, 40))
def test_a_restart_anywhere_judges_the_backlog_the_same(script: Script, restart_at: int) -> None:
    """The snapshot keeps the retained history and the late readings not yet judged: a stream
    restarted between any two batches says exactly what one that ran through says."""
    assert records(run(script, restart_at=restart_at)) == records(run(script))

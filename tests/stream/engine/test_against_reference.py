"""Property: the fast engine says exactly what the plain reference says, on random streams with
duplicates, reordering within the lateness, late readings, gaps, flat lines, spikes, idle time
and restarts from snapshots."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from milkguard.contract.v1 import CipEnd, CipStart, Event, Reading
from stream.engine import DeviationChange, Engine
from stream.plan import parse_plan
from tests.conftest import T0
from tests.stream.engine.reference import ReferenceEngine, change_key

PLAN = parse_plan(
    b"""
plan: property
jurisdiction: company
allowed_lateness_s: 5
silence_factor: 3
assets:
  tank-1:
    site: farm-01
    kind: bulk_tank
    channels:
      temp: {unit: degC, interval_s: 2, ccp: true}
      level: {unit: L, interval_s: 2}
  comp-1:
    site: truck-07
    kind: truck_compartment
    allowed_lateness_s: 0
    channels:
      temp: {unit: degC, interval_s: 1}
rules:
  - {id: tank-max, kind: critical_limit, asset: tank-1, channel: temp, max: 6.0,
     sustained_s: 4, severity: major, action: alert, source: test plan}
  - {id: tank-band, kind: critical_limit, asset: tank-1, channel: temp, min: 1.0, max: 8.0,
     severity: critical, action: hold_lot, source: test plan}
  - {id: tank-stuck, kind: stuck_sensor, asset: tank-1, channel: temp, flat_for_s: 6,
     severity: major, action: alert, source: test plan}
  - {id: tank-rate, kind: rate_of_change, asset: tank-1, channel: temp, max_per_min: 30,
     severity: minor, action: alert, source: test plan}
  - {id: comp-max, kind: critical_limit, asset: comp-1, channel: temp, max: 6.0,
     sustained_s: 2, severity: major, action: reject_load, source: test plan}
  - {id: comp-stuck, kind: stuck_sensor, asset: comp-1, channel: temp, flat_for_s: 3,
     severity: major, action: alert, source: test plan}
""",
    "property.yaml",
)

CHANNELS = [
    ("farm-01", "tank-1", "temp", "degC"),
    ("farm-01", "tank-1", "level", "L"),
    ("truck-07", "comp-1", "temp", "degC"),
]
# few distinct values, so flat lines, breaches and spikes all happen often
VALUES = st.sampled_from([0.5, 3.0, 3.0, 4.0, 5.5, 6.5, 7.0, 9.0])


@dataclass(frozen=True)
class Batch:
    site: str
    readings: tuple[tuple[int, str, str, str, float], ...]  # (offset ms, asset, channel, unit, v)
    received_delay_ms: int
    events: tuple[tuple[str, int], ...] = ()  # (cip_start or cip_end, offset ms), for tank-1


@dataclass(frozen=True)
class Step:
    batch: Batch | None  # None: time passes with no data
    clock_ms: int
    restart: bool


@st.composite
def steps(draw: st.DrawFn) -> list[Step]:
    result: list[Step] = []
    cursor = 0
    for _ in range(draw(st.integers(1, 40))):
        cursor += draw(st.sampled_from([0, 500, 1000, 1000, 2000, 9000]))
        site = draw(st.sampled_from(["farm-01", "truck-07"]))
        options = [c for c in CHANNELS if c[0] == site]
        readings = []
        for _ in range(draw(st.integers(0, 6))):
            _, asset, channel, unit = draw(st.sampled_from(options))
            # jitter back in time (reordering, sometimes beyond the lateness) or forward
            offset = cursor + draw(st.sampled_from([0, 0, 0, 500, 1000, -1000, -3000, -8000]))
            readings.append((max(0, offset), asset, channel, unit, draw(VALUES)))
        events: list[tuple[str, int]] = []
        if site == "farm-01" and draw(st.integers(0, 5)) == 0:
            kind = draw(st.sampled_from(["cip_start", "cip_end"]))
            events.append((kind, max(0, cursor + draw(st.sampled_from([0, -1000, 500])))))
        batch = Batch(
            site,
            tuple(readings),
            draw(st.sampled_from([0, 0, 200, 4000, 30_000])),
            tuple(events),
        )
        duplicate = draw(st.booleans()) and draw(st.booleans())
        idle = draw(st.sampled_from([None, None, None, 3000, 12_000]))
        result.append(Step(batch, cursor, restart=draw(st.booleans()) and duplicate))
        if duplicate:
            result.append(Step(batch, cursor, restart=False))
        if idle is not None:
            cursor += idle
            result.append(Step(None, cursor, restart=False))
    return result


def run_both(script: list[Step]) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    fast = Engine(PLAN)
    reference = ReferenceEngine(PLAN)
    out: list[DeviationChange] = []
    for step in script:
        if step.restart:
            fast = Engine.restore(PLAN, fast.snapshot())
        now = T0 + step.clock_ms
        if step.batch is not None:
            readings = [Reading(a, c, v, u, T0 + ts) for ts, a, c, u, v in step.batch.readings]
            received = now + step.batch.received_delay_ms
            events: list[Event] = [
                (CipStart if kind == "cip_start" else CipEnd)(asset="tank-1", ts=T0 + ts)
                for kind, ts in step.batch.events
            ]
            fast.submit_events(step.batch.site, events)
            reference.submit_events(
                step.batch.site, [(k, "tank-1", T0 + ts) for k, ts in step.batch.events]
            )
            fast.submit(step.batch.site, f"{step.batch.site}-gw", readings, received)
            reference.submit(step.batch.site, f"{step.batch.site}-gw", readings, received)
            now = received
        fast.advance(now, out)
        reference.advance(now)
    fast.flush(out)
    reference.flush()
    assert (fast.counters.late, fast.counters.judged, fast.counters.duplicates) == (
        reference.late,
        reference.judged,
        reference.duplicates,
    )
    return [change_key(c) for c in out], reference.changes


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(steps())
def test_the_fast_engine_agrees_with_the_reference(script: list[Step]) -> None:
    fast, reference = run_both(script)

    assert fast == reference


def test_the_generator_reaches_every_rule_kind() -> None:
    """The property means little if the random streams never breach anything."""
    kinds: set[str] = set()

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(steps())
    def collect(script: list[Step]) -> None:
        fast, _ = run_both(script)
        kinds.update(str(change[1]) for change in fast)

    collect()
    assert kinds >= {"critical_limit", "stuck_sensor", "rate_of_change", "monitoring_lost"}

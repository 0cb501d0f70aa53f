"""Property: the fast engine says exactly what the plain reference says, on random streams with
duplicates, reordering within the lateness, late readings, gaps, flat lines, spikes, idle time
and restarts from snapshots; for the per-channel kinds, and for the kinds driven by events or
judged over several channels together (cooling, milk age, transport, HTST, UHT)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from milkguard.contract.v1 import (
    CipEnd,
    CipStart,
    Delivery,
    Event,
    MilkingEnd,
    MilkingStart,
    Pickup,
    ProductChange,
    Reading,
)
from stream.engine import DeviationChange, Engine
from stream.plan import LoadedPlan, parse_plan
from tests.conftest import T0
from tests.stream.engine.reference import ChangeKey, ReferenceEngine, change_key, same_changes

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

# A farm tank cooled after milkings and blended by later ones, its milk's age, a truck
# compartment's trip, an HTST pasteurizer and a UHT line, on seconds rather than hours so the
# random streams reach every deadline. The tube of the HTST holds the fastest particle 15 s at
# about 10 553 L/h (turbulent, k = 1.25); the UHT's gives F0 3 at about 137 degC and 3000 L/h.
EVENT_PLAN = parse_plan(
    b"""
plan: property-events
jurisdiction: company
allowed_lateness_s: 2
silence_factor: 10
assets:
  tank-1:
    site: farm-01
    kind: bulk_tank
    channels:
      temp: {unit: degC, interval_s: 2, ccp: true}
  comp-1:
    site: truck-07
    kind: truck_compartment
    allowed_lateness_s: 1
    channels:
      temp: {unit: degC, interval_s: 2}
  past-1:
    site: plant-01
    kind: htst
    channels:
      hold_temp: {unit: degC, interval_s: 1, ccp: true}
      recorder_temp: {unit: degC, interval_s: 1}
      flow: {unit: L/h, interval_s: 1}
      fdd: {unit: state, interval_s: 1, ccp: true}
  uht-1:
    site: plant-01
    kind: uht
    channels:
      outlet: {unit: degC, interval_s: 1, ccp: true}
      flow: {unit: L/h, interval_s: 1}
rules:
  - id: tank-cool
    kind: cooling
    asset: tank-1
    channel: temp
    deadlines:
      - {after: first_milking_start, reach_max: 10.0, within_s: 8}
      - {after: milking_end, reach_max: 4.0, within_s: 6}
    blend_max: 10.0
    suspend_during_cleaning: false
    severity: major
    action: alert
    source: "test plan: <= 10 degC 8 s after the first milking, <= 4 degC 6 s after each"
  - {id: tank-hot, kind: critical_limit, asset: tank-1, channel: temp, max: 12.0,
     severity: major, action: alert, source: test plan}
  - {id: tank-age, kind: storage_age, asset: tank-1, max_age_s: 20, source: test plan}
  - {id: load-age, kind: storage_age, asset: comp-1, max_age_s: 30, source: test plan}
  - {id: trip, kind: transport, asset: comp-1, channel: temp, max_transit_s: 15,
     exposure_above: 4.0, max_exposure_degree_minutes: 0.3, severity: major,
     action: reject_load, source: test plan}
  - {id: comp-max, kind: critical_limit, asset: comp-1, channel: temp, max: 7.0,
     sustained_s: 2, severity: major, action: reject_load, source: test plan}
  - id: past
    kind: htst
    asset: past-1
    indicating: hold_temp
    recorder: recorder_temp
    flow: flow
    flow_diversion: fdd
    holding_tube: {diameter_m: 0.0483, length_m: 30}
    legal: {temp_c: 72.0, hold_s: 15}
    source: "PMO: HTST 72 degC for 15 s; +3 degC for fat >= 10 %"
  - id: sterile
    kind: uht
    asset: uht-1
    outlet: outlet
    flow: flow
    holding_tube: {diameter_m: 0.025, length_m: 10}
    min_f0: 3.0
    source: "test plan: F0 >= 3 min"
""",
    "property-events.yaml",
)

# per channel: (site, asset, channel, unit) and values near its limits
EVENT_CHANNELS = {
    "farm-01": [(("tank-1", "temp", "degC"), [3.0, 4.0, 4.5, 9.0, 10.0, 11.0, 13.0])],
    "truck-07": [(("comp-1", "temp", "degC"), [3.0, 4.0, 5.0, 6.5, 8.0])],
    "plant-01": [
        (("past-1", "hold_temp", "degC"), [71.0, 72.0, 73.0, 74.9, 75.0, 76.0]),
        (("past-1", "recorder_temp", "degC"), [71.5, 72.5, 74.0, 75.5]),
        (("past-1", "flow", "L/h"), [0.0, 8000.0, 10552.0, 10553.0, 11000.0, 13000.0]),
        (("past-1", "fdd", "state"), [0.0, 1.0, 1.0]),
        (("uht-1", "outlet", "degC"), [130.0, 136.0, 137.0, 138.0, 140.0]),
        (("uht-1", "flow", "L/h"), [0.0, 2000.0, 3000.0, 4000.0]),
    ],
}


def pickup(ts: int) -> Pickup:
    """The truck loads farm-01's tank into its compartment."""
    return Pickup(
        asset="truck-7",
        ts=ts,
        load_id="L1",
        compartment="comp-1",
        volume_l=1000,
        source_site="farm-01",
        source_asset="tank-1",
    )


def delivery(ts: int) -> Delivery:
    """The compartment's load arrives at the plant."""
    return Delivery(
        asset="truck-7",
        ts=ts,
        load_id="L1",
        compartment="comp-1",
        volume_l=1000,
        destination_site="plant-01",
    )


# the events each site's gateway sends, by what they do to the rules
EVENTS: dict[str, list[Callable[[int], Event]]] = {
    "farm-01": [
        lambda ts: MilkingStart(asset="tank-1", ts=ts),
        lambda ts: MilkingEnd(asset="tank-1", ts=ts),
    ],
    "truck-07": [pickup, delivery],
    "plant-01": [
        lambda ts: ProductChange(asset="past-1", ts=ts, product="milk", fat_pct=3.5),
        lambda ts: ProductChange(asset="past-1", ts=ts, product="cream", fat_pct=12.0),
        lambda ts: ProductChange(
            asset="past-1", ts=ts, product="mix", fat_pct=3.5, total_solids_pct=20.0
        ),
    ],
}


@dataclass(frozen=True)
class Batch:
    """What one gateway sends at once."""

    site: str
    readings: tuple[Reading, ...]
    received_delay_ms: int
    events: tuple[Event, ...] = ()


@dataclass(frozen=True)
class Step:
    batch: Batch | None  # None: time passes with no data
    clock_ms: int
    restart: bool


def _then(
    draw: st.DrawFn, result: list[Step], batch: Batch, cursor: int, idle_ms: int | None
) -> int:
    """The batch, maybe once more (a gateway resending it, maybe to a restarted stream), then
    maybe some idle time; returns the clock after it."""
    duplicate = draw(st.booleans()) and draw(st.booleans())
    result.append(Step(batch, cursor, restart=draw(st.booleans()) and duplicate))
    if duplicate:
        result.append(Step(batch, cursor, restart=False))
    if idle_ms is not None:
        cursor += idle_ms
        result.append(Step(None, cursor, restart=False))
    return cursor


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
            readings.append(Reading(asset, channel, draw(VALUES), unit, T0 + max(0, offset)))
        events: list[Event] = []
        if site == "farm-01" and draw(st.integers(0, 5)) == 0:
            kind = draw(st.sampled_from([CipStart, CipEnd]))
            at = T0 + max(0, cursor + draw(st.sampled_from([0, -1000, 500])))
            events.append(kind(asset="tank-1", ts=at))
        batch = Batch(
            site,
            tuple(readings),
            draw(st.sampled_from([0, 0, 200, 4000, 30_000])),
            tuple(events),
        )
        cursor = _then(
            draw, result, batch, cursor, draw(st.sampled_from([None] * 3 + [3000, 12_000]))
        )
    return result


@st.composite
def event_steps(draw: st.DrawFn) -> list[Step]:
    """Readings of the event plan's channels, within and beyond the lateness, and its events in
    time order (each at least 0.5 s after the one before, a little ahead of or behind the
    readings)."""
    result: list[Step] = []
    cursor = 0
    last_event = -1000
    for _ in range(draw(st.integers(1, 45))):
        cursor += draw(st.sampled_from([0, 500, 1000, 1000, 2000, 5000]))
        site = draw(st.sampled_from(["farm-01", "truck-07", "plant-01", "plant-01"]))
        readings = []
        for _ in range(draw(st.integers(0, 5))):
            (asset, channel, unit), values = draw(st.sampled_from(EVENT_CHANNELS[site]))
            offset = cursor + draw(st.sampled_from([0, 0, 0, 500, -500, -1000, -2500]))
            value = draw(st.sampled_from(values))
            readings.append(Reading(asset, channel, value, unit, T0 + max(0, offset)))
        events: list[Event] = []
        if draw(st.integers(0, 2)) == 0:
            at = max(last_event + 500, cursor + draw(st.sampled_from([0, 500, -500, -1500])))
            last_event = at
            events.append(draw(st.sampled_from(EVENTS[site]))(T0 + at))
        batch = Batch(
            site, tuple(readings), draw(st.sampled_from([0, 0, 200, 3000, 25_000])), tuple(events)
        )
        cursor = _then(
            draw, result, batch, cursor, draw(st.sampled_from([None] * 3 + [4000, 16_000]))
        )
    return result


def run_both(
    script: list[Step], plan: LoadedPlan = PLAN
) -> tuple[list[list[ChangeKey]], list[list[ChangeKey]]]:
    """The changes of the engine and of the reference, one list per advance (and the flush)."""
    fast = Engine(plan)
    reference = ReferenceEngine(plan)
    out: list[DeviationChange] = []
    fast_steps: list[list[ChangeKey]] = []
    reference_steps: list[list[ChangeKey]] = []

    def said() -> None:
        done = sum(len(s) for s in fast_steps)
        fast_steps.append([change_key(c) for c in out[done:]])
        done = sum(len(s) for s in reference_steps)
        reference_steps.append(reference.changes[done:])

    for step in script:
        if step.restart:
            fast = Engine.restore(plan, fast.snapshot())
        now = T0 + step.clock_ms
        if step.batch is not None:
            batch = step.batch
            received = now + batch.received_delay_ms
            fast.submit_events(batch.site, list(batch.events))
            reference.submit_events(batch.site, list(batch.events))
            fast.submit(batch.site, f"{batch.site}-gw", list(batch.readings), received)
            reference.submit(batch.site, f"{batch.site}-gw", list(batch.readings), received)
            now = received
        fast.advance(now, out)
        reference.advance(now)
        said()
    fast.flush(out)
    reference.flush()
    said()
    assert (fast.counters.late, fast.counters.judged, fast.counters.duplicates) == (
        reference.late,
        reference.judged,
        reference.duplicates,
    )
    return fast_steps, reference_steps


def _in_order(changes: list[ChangeKey]) -> list[ChangeKey]:
    """One advance's changes in a fixed order: which rule the engine judges first at one
    instant (a valve before a thermometer, channel rules before event rules) is its own."""
    return sorted(changes, key=lambda c: tuple(str(field) for field in c))


SETTINGS = settings(
    deadline=None,
    derandomize=True,  # the same examples on every run, in CI too
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@settings(SETTINGS, max_examples=300)
@given(steps())
def test_the_fast_engine_agrees_with_the_reference(script: list[Step]) -> None:
    fast, reference = run_both(script)

    for index, (mine, theirs) in enumerate(zip(fast, reference, strict=True)):
        why = same_changes(mine, theirs)
        assert why is None, f"advance {index}: {why}"


@settings(SETTINGS, max_examples=200)
@given(event_steps())
def test_the_event_driven_kinds_agree_with_the_reference(script: list[Step]) -> None:
    """Cooling deadlines and blend limit, milk age, transit time and exposure, HTST temperature
    with the valve, holding time, recorder and the rich product's +3 degC, and UHT F0 per
    parcel: at every advance the engine opens and closes what the reference does (kind, rule,
    start, detection, end, device, late flag; peaks and degree-minutes within float
    tolerance)."""
    fast, reference = run_both(script, EVENT_PLAN)

    for index, (mine, theirs) in enumerate(zip(fast, reference, strict=True)):
        why = same_changes(_in_order(mine), _in_order(theirs))
        assert why is None, f"advance {index}: {why}"


def _kinds_reached(strategy: st.SearchStrategy[list[Step]], plan: LoadedPlan) -> set[str]:
    kinds: set[str] = set()

    @settings(SETTINGS, max_examples=80, suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(script: list[Step]) -> None:
        fast, _ = run_both(script, plan)
        kinds.update(str(change[1]) for changes in fast for change in changes)

    collect()
    return kinds


def test_the_generator_reaches_every_rule_kind() -> None:
    """The property means little if the random streams never breach anything."""
    assert _kinds_reached(steps(), PLAN) >= {
        "critical_limit",
        "stuck_sensor",
        "rate_of_change",
        "monitoring_lost",
    }


def test_the_event_generator_reaches_every_event_driven_kind() -> None:
    """Every deviation the event-driven rules can raise is raised by some random stream."""
    assert _kinds_reached(event_steps(), EVENT_PLAN) >= {
        "cooling_deadline",
        "blend_temperature",
        "storage_age",
        "transit_time",
        "temperature_exposure",
        "htst_temperature",
        "htst_holding_time",
        "htst_recorder",
        "uht_lethality",
    }

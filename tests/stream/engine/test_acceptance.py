"""Raw milk in a silo from acceptance until processing, as the law states it.

EU 853/2004 Annex III Section IX Chapter II Part I: on acceptance at a processing establishment,
raw milk is quickly cooled to and kept at 6 degC or less until processed, unless processing
begins within 4 h of acceptance. PMO Section 7, Item 17p: raw milk maintained at 7 degC (45 degF)
or less until processed. The clock starts at the receipt into the silo; a run drawing from the
silo (run_start sources) is processing.
"""

from __future__ import annotations

import pytest

from milkguard.contract.records import DeviationKind
from milkguard.contract.v1 import (
    Draw,
    Event,
    Reading,
    Receipt,
    RunStart,
    SiloEmptied,
    SiloTransfer,
)
from milkguard.errors import PlanError
from stream.engine import DeviationChange, Engine
from stream.engine.acceptance import AcceptanceMachine
from stream.engine.compile import compile_plan
from stream.engine.deviation import deviation_record
from stream.engine.kinds import PlanContext
from stream.plan import parse_plan
from tests.stream.engine.scenario import Scenario, at

HOUR = 3600

PLAN = """
plan: acceptance
extends: {profile}
allowed_lateness_s: 0
silence_factor: 1000
assets:
  silo-1:
    site: plant-01
    kind: silo
    channels:
      temp: {{unit: degC, interval_s: 600}}
  silo-2:
    site: plant-01
    kind: silo
    channels:
      temp: {{unit: degC, interval_s: 600}}
rules: {rules}
"""


def plant(profile: str = "eu-853", rules: str = "[]") -> Scenario:
    return Scenario(PLAN.format(profile=profile, rules=rules))


def events(scenario: Scenario, *sent: Event) -> None:
    scenario.engine.submit_events("plant-01", list(sent))


def receipt(hours: float, silo: str = "silo-1", load: str = "L1") -> Receipt:
    return Receipt(
        asset="bay-1", ts=at(hours * HOUR), load_id=load, destination=silo, volume_l=20_000
    )


def run(hours: float, *silos: str) -> RunStart:
    return RunStart(
        asset="htst-1",
        ts=at(hours * HOUR),
        run_id="R1",
        sources=tuple(Draw(silo=s) for s in silos or ("silo-1",)),
    )


def temps(scenario: Scenario, points: list[tuple[float, float]], silo: str = "silo-1") -> None:
    """Silo temperatures at (hours after T0, degC)."""
    scenario.samples("plant-01", silo, "temp", "degC", [(h * HOUR, v) for h, v in points])


def every_10_min(start_h: float, end_h: float, value: float) -> list[tuple[float, float]]:
    steps = round((end_h - start_h) * 6)
    return [(start_h + i / 6, value) for i in range(steps + 1)]


def windows(scenario: Scenario) -> list[DeviationChange]:
    return scenario.of("acceptance_window")


def test_a_silo_above_6_degrees_processed_within_4_hours_of_acceptance_raises_nothing() -> None:
    """853/2004: processing begins within 4 h of acceptance: the 6 degC limit does not apply,
    not during the window, nor while the run draws from the silo after it."""
    eu = plant()
    events(eu, receipt(0))
    temps(eu, every_10_min(0, 3.5, 8.0))
    events(eu, run(3.75))
    temps(eu, every_10_min(3 + 4 / 6, 6, 8.0))
    eu.idle_until(8 * HOUR)
    eu.finish()

    assert windows(eu) == []


def test_a_silo_not_processed_within_4_hours_raises_from_acceptance_plus_4_hours() -> None:
    """853/2004: not processed within 4 h, and above 6 degC at the window's end: a deviation
    from acceptance + 4 h, whatever cooler samples came within the window, until processing."""
    eu = plant()
    events(eu, receipt(1))
    temps(eu, [(1, 9.0), (2, 5.0), (3, 5.5), (4, 7.0), (4.5, 8.0), (5, 8.5)])
    events(eu, run(5.25))
    temps(eu, [(5.5, 8.0)])

    opened, closed = windows(eu)
    deviation = closed.deviation
    assert opened.kind == "opened"
    assert deviation.rule_id == "eu-853.silo-1.reception-max"
    assert (deviation.start_ms, deviation.end_ms) == (at(5 * HOUR), at(5.25 * HOUR))
    assert deviation.peak == 8.5
    assert deviation.limit.max == 6.0
    assert deviation.limit.sustained_s == 4 * HOUR
    assert deviation.action == "hold_lot"


def test_cooled_before_the_window_ends_then_warming_opens_at_the_first_warm_sample() -> None:
    """Cold at the window's end meets the law; warming again while unprocessed does not: the
    deviation starts at the first sample above 6 degC after the window, and closes when the
    milk is cold again (the time above stays in the record)."""
    eu = plant()
    events(eu, receipt(0))
    temps(eu, [(0, 9.0), (3.5, 5.8), (4, 5.9), (4.5, 6.4), (5, 7.0), (5.5, 5.5)])

    _opened, closed = windows(eu)
    assert closed.deviation.start_ms == at(4.5 * HOUR)
    assert closed.deviation.end_ms == at(5.5 * HOUR)
    assert closed.deviation.peak == 7.0
    # 0.4 degC for 30 min, then 1.0 degC for 30 min
    assert closed.deviation.degree_minutes == pytest.approx(0.4 * 30 + 1.0 * 30)


def test_a_second_receipt_into_unprocessed_milk_keeps_the_oldest_window() -> None:
    """Milk added to a silo whose milk is unprocessed mixes with it: the window is the oldest
    accepted milk's, not the newest load's."""
    eu = plant()
    events(eu, receipt(0, load="L1"))
    temps(eu, every_10_min(0, 3, 7.5))
    events(eu, receipt(3, load="L2"))
    temps(eu, every_10_min(3 + 1 / 6, 5, 7.5))

    (opened,) = windows(eu)
    assert opened.deviation.start_ms == at(4 * HOUR)


def test_a_receipt_after_processing_began_starts_a_new_window() -> None:
    """Processing began: the milk then in the silo is processed; a load received after it is
    new milk with its own 4 h."""
    eu = plant()
    events(eu, receipt(0, load="L1"))
    events(eu, run(2))
    events(eu, receipt(3, load="L2"))
    temps(eu, every_10_min(0, 8, 7.5))

    (opened,) = windows(eu)
    assert opened.deviation.start_ms == at(7 * HOUR)


def test_a_transfer_carries_the_window_to_the_destination_silo() -> None:
    """Milk pumped into another silo keeps its acceptance time: the destination's 4 h run from
    the receipt into the first silo, not from the transfer."""
    eu = plant()
    events(eu, receipt(0, silo="silo-1"))
    events(
        eu,
        SiloTransfer(asset="silo-1", ts=at(1 * HOUR), destination="silo-2", volume_l=20_000),
        SiloEmptied(asset="silo-1", ts=at(1.5 * HOUR), reason="transferred"),
    )
    for point in every_10_min(0, 5, 8.0):
        temps(eu, [point], silo="silo-1")
        temps(eu, [point], silo="silo-2")

    (opened,) = windows(eu)
    assert opened.deviation.asset == "silo-2"
    assert opened.deviation.start_ms == at(4 * HOUR)


def test_an_emptied_silo_has_no_window() -> None:
    """Emptied before the window ended: no milk is left to keep cold."""
    eu = plant()
    events(eu, receipt(0))
    events(eu, SiloEmptied(asset="silo-1", ts=at(2 * HOUR), reason="discarded"))
    temps(eu, every_10_min(0, 6, 9.0))

    assert windows(eu) == []


def test_emptying_ends_a_deviation_open_on_the_milk() -> None:
    eu = plant()
    events(eu, receipt(0))
    temps(eu, every_10_min(0, 4.5, 9.0))
    events(eu, SiloEmptied(asset="silo-1", ts=at(5 * HOUR), reason="discarded"))
    temps(eu, every_10_min(4 + 4 / 6, 6, 9.0))

    _opened, closed = windows(eu)
    assert (closed.deviation.start_ms, closed.deviation.end_ms) == (at(4 * HOUR), at(5 * HOUR))


def test_pmo_unprocessed_milk_above_7_degrees_is_a_deviation_at_once() -> None:
    """PMO Item 17p: raw milk at or below 7 degC until processed: no window, the first sample
    above 7 degC after acceptance opens it, the first at or below closes it."""
    pmo = plant("us-pmo")
    events(pmo, receipt(1))
    temps(pmo, [(1, 6.5), (1.5, 7.5), (2, 7.8), (2.5, 6.8), (3, 7.2)])
    events(pmo, run(3.5))
    temps(pmo, [(4, 9.0)])  # processing began: no longer judged

    _first_open, first_closed, _second_open, second_closed = windows(pmo)
    assert first_closed.deviation.rule_id == "us-pmo.silo-1.silo-max"
    assert (first_closed.deviation.start_ms, first_closed.deviation.end_ms) == (
        at(1.5 * HOUR),
        at(2.5 * HOUR),
    )
    assert (second_closed.deviation.start_ms, second_closed.deviation.end_ms) == (
        at(3 * HOUR),
        at(3.5 * HOUR),
    )


def test_pmo_milk_accepted_into_a_warm_silo_is_a_deviation_from_acceptance() -> None:
    pmo = plant("us-pmo")
    events(pmo, receipt(0))  # the silo's events are known from here on
    events(pmo, SiloEmptied(asset="silo-1", ts=at(0.5 * HOUR)))
    temps(pmo, [(0.75, 8.0)])  # an empty silo's probe: no milk to judge
    events(pmo, receipt(1, load="L2"))
    temps(pmo, [(1.25, 8.0), (1.5, 6.0)])

    _opened, closed = windows(pmo)
    assert (closed.deviation.start_ms, closed.deviation.end_ms) == (at(1 * HOUR), at(1.5 * HOUR))


def test_the_window_end_fires_with_no_data_on_the_last_temperature_seen() -> None:
    """The silo's thermometer stops reporting at 8 degC: the timer gives the verdict at
    acceptance + 4 h on the device's clock, with no sample then."""
    eu = plant()
    events(eu, receipt(0))
    temps(eu, every_10_min(0, 1, 8.0))
    eu.idle_until(3.9 * HOUR)
    assert windows(eu) == []

    eu.idle_until(4 * HOUR)

    (opened,) = windows(eu)
    assert opened.deviation.start_ms == at(4 * HOUR)
    assert opened.deviation.detected_ms == at(4 * HOUR)
    assert opened.deviation.peak == 8.0


def test_no_temperature_at_all_is_left_to_monitoring_lost() -> None:
    """No sample at all: nothing to judge the milk by; the channel's silence is the record."""
    eu = plant()
    events(eu, receipt(0))
    eu.idle_until(10 * HOUR)

    assert windows(eu) == []


def test_a_window_survives_a_restart_mid_window() -> None:
    eu = plant()
    events(eu, receipt(0))
    temps(eu, every_10_min(0, 2, 8.0))
    eu.engine = Engine.restore(eu.engine.plan, eu.engine.snapshot())
    temps(eu, every_10_min(2 + 1 / 6, 5, 8.0))

    (opened,) = windows(eu)
    assert opened.deviation.start_ms == at(4 * HOUR)


def test_a_run_in_time_survives_a_restart() -> None:
    eu = plant()
    events(eu, receipt(0))
    temps(eu, every_10_min(0, 2, 8.0))
    events(eu, run(3))
    eu.engine = Engine.restore(eu.engine.plan, eu.engine.snapshot())
    temps(eu, every_10_min(2 + 1 / 6, 6, 8.0))

    assert windows(eu) == []


def test_a_silo_without_silo_events_falls_back_to_6_degrees_sustained_for_4_hours() -> None:
    """A plant that sends no receipts or runs: acceptance is unknown, so the window counts from
    the excursion's first sample above 6 degC, and no run can excuse it."""
    eu = plant()
    temps(eu, every_10_min(0, 5, 7.0))

    (opened,) = windows(eu)
    assert opened.deviation.rule_id == "eu-853.silo-1.reception-max.no-silo-events"
    assert opened.deviation.start_ms == at(0)
    assert opened.deviation.detected_ms == at(4 * HOUR)


def test_the_first_silo_event_ends_the_fallback() -> None:
    eu = plant()
    temps(eu, every_10_min(0, 5, 7.0))
    events(eu, receipt(5.5))
    temps(eu, every_10_min(5 + 5 / 6, 10, 7.0))

    _fallback_open, fallback_closed, window_open = windows(eu)
    assert fallback_closed.deviation.end_ms == at(5.5 * HOUR)
    assert window_open.deviation.rule_id == "eu-853.silo-1.reception-max"
    assert window_open.deviation.start_ms == at(5.5 * HOUR + 4 * HOUR)


def test_the_deviation_kind_is_in_the_published_record_contract() -> None:
    eu = plant()
    events(eu, receipt(0))
    temps(eu, every_10_min(0, 5, 8.0))

    (opened,) = windows(eu)
    record = deviation_record(opened)
    assert record.kind == "acceptance_window"
    assert "acceptance_window" in DeviationKind.__args__  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (
            "{id: w, kind: acceptance_window, asset: silo-1, channel: temp, max: 6.0,"
            " within_s: -1, severity: major, action: hold_lot, source: company}",
            "within_s: Input should be greater than or equal to 0",
        ),
        (
            "{id: w, kind: acceptance_window, asset: silo-1, channel: temp,"
            " within_s: 3600, severity: major, action: hold_lot, source: company}",
            "max: Field required",
        ),
        (
            "{id: w, kind: acceptance_window, asset: silo-1, channel: level, max: 6.0,"
            " within_s: 3600, severity: major, action: hold_lot, source: company}",
            "names channel 'level' of asset 'silo-1', which has only: temp",
        ),
        (
            "{id: w, kind: acceptance_window, asset: silo-1, channel: temp, max: 6.0,"
            " within_s: 21600, severity: major, action: hold_lot, source: company}",
            "rule 'w': max 6 within 21600 s is looser than the legal max 6 within 14400 s",
        ),
        (
            "{id: w, kind: acceptance_window, asset: silo-1, channel: temp, max: 8.0,"
            " within_s: 3600, severity: major, action: hold_lot, source: company}",
            "rule 'w': max 8 within 3600 s is looser than the legal max 6",
        ),
    ],
)
def test_a_bad_acceptance_rule_is_refused_with_its_field(rule: str, message: str) -> None:
    text = PLAN.format(profile="eu-853", rules=f"\n  - {rule}")

    with pytest.raises(PlanError) as refused:
        parse_plan(text.encode(), "plant.yaml")
    assert message in str(refused.value)


def test_a_stricter_company_window_is_added_to_the_legal_one() -> None:
    rule = (
        "\n  - {id: company, kind: acceptance_window, asset: silo-1, channel: temp, max: 5.0,"
        " within_s: 7200, severity: minor, action: alert, source: company HACCP plan}"
    )
    loaded = parse_plan(PLAN.format(profile="eu-853", rules=rule).encode(), "plant.yaml")

    kinds = [(r.id, r.kind) for r in loaded.plan.rules if r.asset == "silo-1"]
    assert kinds == [
        ("eu-853.silo-1.reception-max", "acceptance_window"),
        ("company", "acceptance_window"),
    ]


def test_a_run_reported_after_the_verdict_that_began_in_time_ends_it_where_it_began() -> None:
    """The line's gateway reports the run late: the timer had already opened the deviation at
    acceptance + 4 h. Processing began in time, so the record cannot stand as a breach of time:
    it ends where it began, flagged found late (a record once published is never unsaid)."""
    eu = plant()
    events(eu, receipt(0))
    temps(eu, every_10_min(0, 1, 8.0))
    eu.idle_until(4.5 * HOUR)
    events(eu, run(3.5))
    temps(eu, [(4.75, 8.0)])

    opened, closed = windows(eu)
    assert opened.deviation.start_ms == at(4 * HOUR)
    assert closed.deviation.end_ms == at(4 * HOUR)
    assert closed.deviation.detected_late


def test_a_late_silo_reading_is_counted_as_not_rejudged() -> None:
    """A reading that comes after its channel was judged past it is stored and counted, as for
    the other kinds driven by events and timers (cooling, storage age): the window's verdict
    is not taken again on it."""
    eu = plant()
    events(eu, receipt(0))
    temps(eu, every_10_min(0, 2, 5.0))
    eu.send(
        "plant-01",
        [Reading("silo-1", "temp", 9.0, "degC", at(1.25 * HOUR))],
        received=at(2 * HOUR),
    )

    assert eu.engine.counters.late_unrejudged == 1
    assert windows(eu) == []


def test_a_state_without_the_fields_added_later_restores_to_their_defaults() -> None:
    """Snapshots keep this rule's state by rule id; a state that lacks a field (written before
    the field existed) takes its default rather than failing the restart."""
    loaded = parse_plan(PLAN.format(profile="eu-853", rules="[]").encode(), "plant.yaml")
    compiled = compile_plan(loaded, PlanContext(loaded, {}, []))
    machine = next(b.machine for b in compiled.rules if isinstance(b.machine, AcceptanceMachine))
    machine.restore({"windows": [[at(0), at(4 * HOUR), at(2 * HOUR), False]]})

    assert machine.state()["windows"] == [[at(0), at(4 * HOUR), at(2 * HOUR), False]]
    assert machine.state()["silo_events"] is False
    assert machine.open_deviations == []

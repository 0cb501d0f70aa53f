"""Raw milk at receipt at the plant, as the PMO states it, with the thermometer's tolerance.

PMO Section 7, Item 17p: raw milk maintained at 7 degC (45 degF) or less until processed; the
plant takes each load's temperature at receipt. A receiving-bay thermometer reads within its
stated accuracy: a reading above 7 degC by no more than that cannot tell a warm load from the
instrument, so it asks for a check with a calibrated thermometer (minor advisory); beyond it,
the load is a deviation (major, reject the load).
"""

from __future__ import annotations

import math

import pytest

from milkguard.contract.records import DeviationKind
from milkguard.contract.v1 import CipStart, Reading, Receipt
from stream.engine import DeviationChange, Engine
from stream.engine.compile import compile_plan
from stream.engine.deviation import deviation_record, deviation_to_json
from stream.engine.kinds import PlanContext
from stream.engine.machines import QuietBand, Sample
from stream.engine.receipt import ReceiptMachine
from stream.plan import parse_plan
from tests.stream.engine.scenario import Scenario, at

PLAN = """
plan: receipt
extends: us-pmo
allowed_lateness_s: 0
assets:
  bay-1:
    site: plant-01
    kind: receiving_bay
    channels:
      # one reading per load, taken at receipt; silence only when no truck comes for a day
      load_temp: {unit: degC, interval_s: 1800, silence_after_s: 86400, tolerance: 0.5}
"""


def bay_with(tolerance: str) -> ReceiptMachine:
    """The us-pmo receipt check compiled for the bay, its thermometer's tolerance as given."""
    raw = PLAN.replace("tolerance: 0.5", tolerance)
    loaded = parse_plan(raw.encode(), "receipt.yaml")
    compiled = compile_plan(loaded, PlanContext(loaded, {}, []))
    (machine,) = [b.machine for b in compiled.rules if isinstance(b.machine, ReceiptMachine)]
    return machine


def load(seconds: float, temp_c: float, *, cleaning: bool = False) -> Sample:
    """One load's temperature at receipt, as the engine hands it to the machine."""
    sample = Sample(at(seconds), temp_c, -1, 0.0, at(seconds), "bay-gw", late=False)
    if cleaning:
        sample.cleaning_since = at(seconds) - 1000
    return sample


@pytest.fixture
def bay() -> ReceiptMachine:
    """A receiving bay whose thermometer is accurate to +-0.5 degC."""
    return bay_with("tolerance: 0.5")


def test_a_load_at_6_5_degrees_is_received(bay: ReceiptMachine) -> None:
    """6.5 degC <= 7 degC: the load is within the PMO limit; nothing to record."""
    assert bay.on_sample("", load(0, 6.5)) == []
    assert bay.on_sample("", load(1, 7.0)) == []  # at the limit is within it


def test_a_load_at_7_4_degrees_within_the_tolerance_asks_for_a_calibrated_thermometer(
    bay: ReceiptMachine,
) -> None:
    """7.4 degC with a +-0.5 degC thermometer: above 7 degC, but within what the instrument
    cannot resolve. A minor advisory: verify with a calibrated thermometer, not a rejection."""
    opened, closed = bay.on_sample("", load(0, 7.4))

    advisory = opened.deviation
    assert (opened.kind, closed.kind) == ("opened", "closed")
    assert (advisory.kind, advisory.severity, advisory.action) == (
        "receipt_verification",
        "minor",
        "verify_thermometer",
    )
    assert advisory.limit.max == 7.0
    assert "verify with a calibrated thermometer" in advisory.limit.source
    assert "Item 17p" in advisory.limit.source
    assert advisory.peak == 7.4
    assert advisory.start_ms == closed.deviation.end_ms == at(0)


def test_a_load_at_8_degrees_beyond_the_tolerance_is_rejected(bay: ReceiptMachine) -> None:
    """8 degC > 7 degC + 0.5 degC: the load is out of the PMO limit whatever the instrument's
    error; a deviation with the plan's severity and action (reject the load)."""
    opened, closed = bay.on_sample("", load(0, 8.0))

    deviation = opened.deviation
    assert (deviation.kind, deviation.severity, deviation.action) == (
        "receipt_temperature",
        "major",
        "reject_load",
    )
    assert (deviation.peak, deviation.limit.max) == (8.0, 7.0)
    assert "beyond the thermometer's tolerance" in deviation.limit.source
    assert closed.deviation.status == "closed"
    assert closed.deviation.time_beyond_s == 0.0


def test_the_edge_of_the_tolerance_is_still_the_instruments_doubt(bay: ReceiptMachine) -> None:
    """7.5 degC is exactly 7 + 0.5: within the tolerance; 7.51 degC is beyond it."""
    assert bay.on_sample("", load(0, 7.5))[0].deviation.kind == "receipt_verification"
    assert bay.on_sample("", load(1, 7.51))[0].deviation.kind == "receipt_temperature"


def test_a_tolerance_of_a_tenth_is_not_blurred_by_float_addition() -> None:
    """7.0 + 0.1 is 7.1 as the plan's reader means it: a 7.1 degC load is within tolerance."""
    bay = bay_with("tolerance: 0.1")

    assert bay.on_sample("", load(0, 7.1))[0].deviation.kind == "receipt_verification"


def test_without_a_declared_tolerance_every_load_above_7_degrees_is_rejected() -> None:
    """A thermometer whose accuracy the plan does not state gives no benefit of the doubt."""
    bay = bay_with("ccp: false")

    assert bay.on_sample("", load(0, 7.1))[0].deviation.kind == "receipt_temperature"


def test_each_warm_load_is_its_own_record(bay: ReceiptMachine) -> None:
    """Two warm loads in a row are two rejections, each with its own id; nothing stays open."""
    first = bay.on_sample("", load(0, 9.0))
    second = bay.on_sample("", load(600, 9.5))

    assert first[0].deviation.id != second[0].deviation.id
    assert not bay.engaged
    assert bay.state() == {}


def test_readings_while_the_bay_is_cleaned_are_not_loads(bay: ReceiptMachine) -> None:
    """During cleaning in place the probe reads hot cleaning solution, not raw milk."""
    assert bay.on_sample("", load(0, 70.0, cleaning=True)) == []


def test_the_quiet_band_ends_at_the_limit(bay: ReceiptMachine) -> None:
    """The engine's screen may pass by readings at or below 7 degC: they change nothing."""
    assert bay.quiet_band() == QuietBand(lo=-math.inf, hi=7.0)


def test_receipt_records_are_publishable_under_the_records_contract(bay: ReceiptMachine) -> None:
    """Both kinds are deviation kinds of the signed records contract."""
    for temp_c in (7.4, 8.0):
        for change in bay.on_sample("", load(temp_c, temp_c)):
            record = deviation_record(change)
            assert record.kind in DeviationKind.__args__  # type: ignore[attr-defined]


def test_the_us_profile_checks_each_load_at_the_receiving_bay() -> None:
    """The us-pmo profile's receipt check on a plant's receiving bay, through the engine: loads
    at 6.5, 7.4 and 8 degC give nothing, a minor advisory, and a rejection."""
    bay = Scenario(PLAN)
    for seconds, temp_c in ((0, 6.5), (900, 7.4), (1800, 8.0), (2700, 6.8)):
        bay.send("plant-01", [Reading("bay-1", "load_temp", temp_c, "degC", at(seconds))])
    bay.finish()

    verdicts = [
        (c.kind, c.deviation.kind, c.deviation.severity, c.deviation.action, c.deviation.peak)
        for c in bay.changes
    ]
    assert verdicts == [
        ("opened", "receipt_verification", "minor", "verify_thermometer", 7.4),
        ("closed", "receipt_verification", "minor", "verify_thermometer", 7.4),
        ("opened", "receipt_temperature", "major", "reject_load", 8.0),
        ("closed", "receipt_temperature", "major", "reject_load", 8.0),
    ]
    assert bay.changes[2].deviation.rule_id == "us-pmo.bay-1.receipt-max"
    assert bay.changes[2].deviation.start_ms == at(1800)


def test_a_cleaned_bay_judges_no_load_through_the_engine() -> None:
    """cip_start on the bay: its probe's hot readings are not loads."""
    bay = Scenario(PLAN)
    bay.engine.submit_events("plant-01", [CipStart(asset="bay-1", ts=at(0))])
    bay.send("plant-01", [Reading("bay-1", "load_temp", 75.0, "degC", at(10))])
    bay.finish()

    assert bay.changes == []


def test_a_restarted_stream_judges_the_next_load_as_before() -> None:
    """The receipt check keeps nothing between loads: a snapshot restores, and the next warm
    load after the restart is rejected as it would have been."""
    bay = Scenario(PLAN)
    bay.send("plant-01", [Reading("bay-1", "load_temp", 6.5, "degC", at(0))])
    again = Engine.restore(bay.engine.plan, bay.engine.snapshot())
    out: list[DeviationChange] = []

    again.submit("plant-01", "gw", [Reading("bay-1", "load_temp", 8.0, "degC", at(900))], at(900))
    again.flush(out)

    assert [(c.kind, c.deviation.kind) for c in out] == [
        ("opened", "receipt_temperature"),
        ("closed", "receipt_temperature"),
    ]


def receipt(seconds: float, load_id: str, temp_c: float | None, **fields: str) -> Receipt:
    """A load received at bay-1 into silo-1, its temperature as the bay's thermometer took it."""
    values = {"asset": "bay-1", "destination": "silo-1", **fields}
    return Receipt(
        ts=at(seconds),
        load_id=load_id,
        volume_l=24_000.0,
        temperature_c=temp_c,
        truck="AB-123-CD",
        **values,
    )


def received(*receipts: Receipt, site: str = "plant-01") -> Scenario:
    """The us-pmo receipt check fed the plant gateway's receipt events, then the end of input."""
    bay = Scenario(PLAN)
    bay.engine.submit_events(site, list(receipts))
    bay.engine.advance(max(r.ts for r in receipts), bay.changes)
    bay.finish()
    return bay


def test_a_receipt_event_is_judged_as_its_load_at_the_bay() -> None:
    """PMO Item 17p, each load at receipt: receipts at 6.5, 7.4 and 8 degC at the bay give
    nothing, a minor advisory to verify the thermometer, and a rejection of the load; each
    record is the load's (start = end = the receipt's time, peak = its temperature) and names
    the load."""
    bay = received(
        receipt(0, "L-1", 6.5),
        receipt(900, "L-2", 7.4),
        receipt(1800, "L-3", 8.0),
    )

    verdicts = [
        (
            c.kind,
            c.deviation.kind,
            c.deviation.severity,
            c.deviation.action,
            c.deviation.peak,
            c.deviation.load_id,
            c.deviation.start_ms,
            c.deviation.end_ms,
        )
        for c in bay.changes
    ]
    assert verdicts == [
        (
            "opened",
            "receipt_verification",
            "minor",
            "verify_thermometer",
            7.4,
            "L-2",
            at(900),
            None,
        ),
        (
            "closed",
            "receipt_verification",
            "minor",
            "verify_thermometer",
            7.4,
            "L-2",
            at(900),
            at(900),
        ),
        ("opened", "receipt_temperature", "major", "reject_load", 8.0, "L-3", at(1800), None),
        ("closed", "receipt_temperature", "major", "reject_load", 8.0, "L-3", at(1800), at(1800)),
    ]
    rejection = bay.changes[2].deviation
    assert (rejection.rule_id, rejection.site, rejection.asset) == (
        "us-pmo.bay-1.receipt-max",
        "plant-01",
        "bay-1",
    )
    assert rejection.channels == ["load_temp"]
    assert rejection.limit.max == 7.0


def test_the_record_of_a_receipt_names_its_load_in_the_published_record() -> None:
    """The signed record carries the load's id; a record judged from a reading has none, so
    its JSON is as it always was."""
    by_event = received(receipt(0, "L-9", 9.0)).changes[0]
    by_reading = Scenario(PLAN)
    by_reading.send("plant-01", [Reading("bay-1", "load_temp", 9.0, "degC", at(0))])

    assert deviation_record(by_event).load_id == "L-9"
    assert "load_id" not in deviation_to_json(by_reading.changes[0])


def test_two_loads_received_at_the_same_moment_are_two_records() -> None:
    """Two compartments (or two trucks) at the bay in the same millisecond: each load has its
    own record and id, so neither hides the other."""
    bay = received(
        receipt(0, "L-1", 9.0, compartment="comp-1"),
        receipt(0, "L-1", 9.5, compartment="comp-2"),
        receipt(0, "L-2", 8.5),
    )

    opened = [c.deviation for c in bay.changes if c.kind == "opened"]
    assert [(d.load_id, d.peak) for d in opened] == [("L-1", 9.0), ("L-1", 9.5), ("L-2", 8.5)]
    assert len({d.id for d in opened}) == 3


def test_a_receipt_without_a_temperature_or_at_another_bay_or_site_is_not_judged() -> None:
    """The check judges the temperatures its bay reports: a receipt with none (the plant took
    it as a reading, or not at all), a receipt at bay-2, and one from another site's bay-1 give
    nothing."""
    bay = received(
        receipt(0, "L-1", None),
        receipt(60, "L-2", 12.0, asset="bay-2"),
    )
    elsewhere = received(receipt(0, "L-3", 12.0), site="plant-02")

    assert bay.changes == []
    assert elsewhere.changes == []


def test_a_warm_receipt_during_the_bays_cleaning_is_still_a_load() -> None:
    """Cleaning suspends the probe's readings (they read cleaning solution), not a load the
    plant reports received with its temperature."""
    bay = Scenario(PLAN)
    bay.engine.submit_events("plant-01", [CipStart(asset="bay-1", ts=at(0))])
    bay.engine.submit_events("plant-01", [receipt(10, "L-1", 9.0)])
    bay.idle_until(10)
    bay.finish()

    assert [(c.kind, c.deviation.kind) for c in bay.changes] == [
        ("opened", "receipt_temperature"),
        ("closed", "receipt_temperature"),
    ]


def test_a_receipts_record_waiting_in_a_snapshot_keeps_its_load() -> None:
    """A record judged from a receipt and not yet handed out when the stream snapshots comes
    back from the snapshot with its load."""
    bay = Scenario(PLAN)
    bay.engine.submit_events("plant-01", [receipt(0, "L-7", 9.0)])
    again = Engine.restore(bay.engine.plan, bay.engine.snapshot())
    out: list[DeviationChange] = []

    again.advance(at(0), out)

    assert [(c.kind, c.deviation.kind, c.deviation.load_id) for c in out] == [
        ("opened", "receipt_temperature", "L-7"),
        ("closed", "receipt_temperature", "L-7"),
    ]

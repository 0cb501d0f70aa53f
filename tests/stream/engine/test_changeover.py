"""Product in the equipment: after a product change the old product keeps reaching the
indicating thermometer until it has been pushed out, so its limits still apply.

PMO, Section 1 "Pasteurization": each product class has its pair (HTST: 72 degC for milk,
75 degC for a product with fat >= 10 %, eggnog 80 degC for 25 s); the holding time is the
fastest particle's (PMO Item 16p). The plan below declares 150 L between the product supply and
the indicating thermometer, the holding tube (110 L) included: the old product counts as gone
once twice that, 300 L, has passed in forward flow. At 18,000 L/h (5 L/s) that is 60 s after
the change; the holding time there is 17.6 s (turbulent, k = 1.25), at 12,000 L/h 26.4 s.
"""

from __future__ import annotations

import msgspec
import pytest

from milkguard.contract.records import DeviationRecord
from milkguard.contract.v1 import CipEnd, CipStart, ProductChange, Reading
from milkguard.errors import PlanError
from stream.engine import Engine
from stream.engine.compile import compile_plan
from stream.engine.deviation import DeviationChange, deviation_record
from stream.engine.htst import HtstMachine
from stream.engine.kinds import PlanContext
from stream.plan import parse_plan
from tests.stream.engine.scenario import Scenario, at

PLAN = """
plan: changeover
jurisdiction: US
allowed_lateness_s: 0
assets:
  htst-1:
    site: plant-01
    kind: htst
    channels:
      hold_temp: {unit: degC, interval_s: 1, ccp: true}
      flow: {unit: L/h, interval_s: 1}
      fdd_forward: {unit: state, interval_s: 1, ccp: true}
rules:
  - id: past
    kind: htst
    ccp: CCP-PAST-1
    asset: htst-1
    indicating: hold_temp
    flow: flow
    flow_diversion: fdd_forward
    holding_tube: {diameter_m: 0.0483, length_m: 60}
    changeover_volume_l: 150
    legal: {temp_c: 72.0, hold_s: 15}
    eggnog: {temp_c: 80.0, hold_s: 25}
    eggnog_products: [eggnog]
    source: "PMO Section 1, Pasteurization: HTST 72 degC 15 s; +3 degC for fat >= 10 %"
"""

CREAM = {"product": "cream", "fat_pct": 35.0}
WHOLE_MILK = {"product": "whole-milk", "fat_pct": 3.5}
EGGNOG = {"product": "eggnog", "fat_pct": 8.0, "sweetened": True}
FAST, SLOW = 18_000.0, 12_000.0  # L/h: 5 L/s, and 3.33 L/s


def change(seconds: float, product: dict[str, object]) -> ProductChange:
    return ProductChange(asset="htst-1", ts=at(seconds), **product)  # type: ignore[arg-type]


def second(t: float, temp: float | None, flow: float = FAST, forward: float = 1) -> list[Reading]:
    """The line's readings of one second (no temperature: that gateway sent none)."""
    readings = [
        Reading("htst-1", "fdd_forward", forward, "state", at(t)),
        Reading("htst-1", "flow", flow, "L/h", at(t)),
    ]
    if temp is not None:
        readings.append(Reading("htst-1", "hold_temp", temp, "degC", at(t)))
    return readings


def run(
    line: Scenario,
    temp: dict[int, float],
    *,
    until: int,
    start: int = 0,
    flow: dict[int, float] | None = None,
    forward: dict[int, float] | None = None,
) -> None:
    """One batch a second from ``start`` to ``until``: each channel's value from the table
    entry at or before that second."""
    for t in range(start, until + 1):
        line.send(
            "plant-01",
            second(
                t,
                _at(temp, t),
                _at(flow or {0: FAST}, t),
                _at(forward or {0: 1.0}, t),
            ),
        )


def _at(table: dict[int, float], t: int) -> float:
    return table[max(k for k in table if k <= t)]


def spans(line: Scenario, kind: str) -> list[tuple[str, int, int | None]]:
    return [(c.kind, c.deviation.start_ms, c.deviation.end_ms) for c in line.of(kind)]


@pytest.fixture
def line() -> Scenario:
    scenario = Scenario(PLAN)
    scenario.engine.submit_events("plant-01", [change(0, CREAM), change(10, WHOLE_MILK)])
    return scenario


def test_a_quick_drop_to_the_milk_setpoint_forwards_cream_until_it_has_left(
    line: Scenario,
) -> None:
    """Cream (75 degC) to whole milk at 10 s; the heater drops to 72.5 degC at 12 s, which is
    legal for milk, not for the cream still in the pipework and the tube. 300 L at 5 L/s have
    passed at 70 s: the deviation runs from 12 s to 70 s, against cream's 75 degC."""
    run(line, {0: 76.0, 12: 72.5}, until=80)

    assert spans(line, "htst_temperature") == [("opened", at(12), None), ("closed", at(12), at(70))]
    opened = line.of("htst_temperature")[0].deviation
    assert opened.limit.min == 75.0
    assert (opened.product, opened.product_class) == ("cream", "rich")
    assert line.of("htst_holding_time") == []


def test_the_same_drop_after_the_flush_is_lawful_milk(line: Scenario) -> None:
    run(line, {0: 76.0, 70: 72.5}, until=90)

    assert line.of("htst_temperature") == []


def test_a_flow_stop_during_the_changeover_moves_no_product_and_extends_it(
    line: Scenario,
) -> None:
    """100 L pass from 10 s to 30 s; the pump stops from 31 s to 50 s (the intervals either
    side of the stop count at the lower reading, 0); the other 200 L take 51 s to 91 s."""
    run(line, {0: 76.0, 12: 72.5}, flow={0: FAST, 31: 0.0, 51: FAST}, until=100)

    assert spans(line, "htst_temperature") == [("opened", at(12), None), ("closed", at(12), at(91))]


def test_a_divert_during_the_changeover_passes_no_product_to_the_flush(line: Scenario) -> None:
    """The valve diverts from 30 s to 39 s: the diverted product goes back to the balance tank
    and comes round again, so those intervals count nothing (95 L by 29 s; the other 205 L
    from 41 s: done at 81 s). Diverting ends the deviation; forward again below cream's
    75 degC opens another, until the flush is done."""
    run(line, {0: 76.0, 12: 72.5}, forward={0: 1.0, 30: 0.0, 40: 1.0}, until=90)

    assert spans(line, "htst_temperature") == [
        ("opened", at(12), None),
        ("closed", at(12), at(30)),
        ("opened", at(40), None),
        ("closed", at(40), at(81)),
    ]


def test_the_stricter_holding_time_of_the_old_product_applies_during_the_changeover() -> None:
    """Eggnog (80 degC, 25 s) to whole milk (72 degC, 15 s) at 10 s; at 12 s the pump speeds
    up to 18,000 L/h, a 17.6 s hold: milk's 15 s, not the eggnog's 25 s still in the tube.
    Passed: 3.33 L/s to 12 s, 5 L/s after: 300 L by 71 s. The product in that window is held,
    named as the eggnog it protected."""
    line = Scenario(PLAN)
    line.engine.submit_events("plant-01", [change(0, EGGNOG), change(10, WHOLE_MILK)])
    run(line, {0: 81.0}, flow={0: SLOW, 12: FAST}, until=80)

    assert spans(line, "htst_holding_time") == [
        ("opened", at(12), None),
        ("closed", at(12), at(71)),
    ]
    opened = line.of("htst_holding_time")[0].deviation
    assert (opened.limit.min, opened.product, opened.product_class) == (25.0, "eggnog", "eggnog")
    assert opened.action == "hold_lot"
    assert line.of("htst_temperature") == []


def test_temperature_and_holding_time_each_take_the_stricter_product() -> None:
    """A plant whose milk pair is 72 degC for 20 s and cream's 75 degC for 15 s: from milk to
    cream at 10 s, cream's temperature applies at once, while the milk still in the tube keeps
    its 20 s holding time until the flush is done (3.33 L/s to 12 s, then 5 L/s: 71 s). At
    18,000 L/h from 12 s the hold is 17.6 s; a dip to 74 degC at 20 s breaches cream's 75."""
    line = Scenario(
        PLAN.replace(
            "legal: {temp_c: 72.0, hold_s: 15}", "legal: {temp_c: 72.0, hold_s: 20}"
        ).replace(
            "    eggnog: {temp_c: 80.0, hold_s: 25}\n", "    rich: {temp_c: 75.0, hold_s: 15}\n"
        )
    )
    line.engine.submit_events("plant-01", [change(0, WHOLE_MILK), change(10, CREAM)])
    run(line, {0: 76.0, 20: 74.0, 21: 76.0}, flow={0: SLOW, 12: FAST}, until=80)

    assert spans(line, "htst_holding_time") == [
        ("opened", at(12), None),
        ("closed", at(12), at(71)),
    ]
    held = line.of("htst_holding_time")[0].deviation
    assert (held.limit.min, held.product) == (20.0, "whole-milk")
    assert spans(line, "htst_temperature") == [("opened", at(20), None), ("closed", at(20), at(21))]
    dip = line.of("htst_temperature")[0].deviation
    assert (dip.limit.min, dip.product) == (75.0, "cream")


def test_a_change_to_a_stricter_product_applies_at_once() -> None:
    """Whole milk to cream at 10 s at 73 degC: cream's 75 degC applies from the change (the
    milk left in the pipework is only over-pasteurized by it)."""
    line = Scenario(PLAN)
    line.engine.submit_events("plant-01", [change(0, WHOLE_MILK), change(10, CREAM)])
    run(line, {0: 73.0, 15: 76.0}, until=20)

    assert spans(line, "htst_temperature") == [("opened", at(10), None), ("closed", at(10), at(15))]
    assert line.of("htst_temperature")[0].deviation.product == "cream"


def test_a_restart_in_the_middle_of_a_changeover_keeps_the_volume_still_to_pass(
    line: Scenario,
) -> None:
    run(line, {0: 76.0, 12: 72.5}, until=40)
    line.engine = Engine.restore(line.engine.plan, line.engine.snapshot(history=False))
    run(line, {0: 72.5}, start=41, until=80)

    assert spans(line, "htst_temperature") == [("opened", at(12), None), ("closed", at(12), at(70))]


def test_a_snapshot_from_before_changeovers_restores() -> None:
    """A machine state saved before product ids and changeovers: (ts, class) pairs only."""
    loaded = parse_plan(PLAN.encode(), "p.yaml")
    (machine,) = [
        b.machine
        for b in compile_plan(loaded, PlanContext(loaded, {}, [])).rules
        if isinstance(b.machine, HtstMachine)
    ]
    saved = machine.state()
    for key in ("changeovers", "flush", "entered", "rinsed", "flow"):
        del saved[key]
    saved["product_since"] = [(at(0), "rich")]

    machine.restore(saved)

    assert machine.product_in_force(at(1)) == "rich"
    assert machine.protected(at(1)) == (("rich", ""), ("rich", ""))


def test_late_temperatures_inside_a_changeover_are_judged_against_the_old_product(
    line: Scenario,
) -> None:
    """The indicating thermometer's gateway sends 12 s to 20 s (72.5 degC) only after the
    live data up to 30 s (76 degC from 21 s): cream was still in the tube then, so those
    seconds are a deviation against 75 degC, found late."""
    run(line, {0: 76.0}, until=11)
    for t in range(12, 31):
        line.send("plant-01", second(t, 76.0 if t > 20 else None))
    line.send(
        "plant-01", [Reading("htst-1", "hold_temp", 72.5, "degC", at(t)) for t in range(12, 21)]
    )
    line.finish()

    opened, closed = line.of("htst_temperature")
    assert (opened.deviation.start_ms, closed.deviation.end_ms) == (at(12), at(21))
    assert closed.deviation.detected_late
    assert (closed.deviation.limit.min, closed.deviation.product) == (75.0, "cream")


def test_a_product_change_sent_after_its_readings_counts_its_flush_from_then_on() -> None:
    """The change from cream to whole milk at 10 s reaches the stream only after the readings
    up to 40 s (72.5 degC from 12 s, raised against cream's 75). What passed before the
    stream knew of the change cannot be told from one reading: the 300 L are counted from the
    last flow reading judged (40 s), so the deviation lasts until 100 s, not 70 s."""
    line = Scenario(PLAN)
    line.engine.submit_events("plant-01", [change(0, CREAM)])
    run(line, {0: 76.0, 12: 72.5}, until=40)
    line.engine.submit_events("plant-01", [change(10, WHOLE_MILK)])
    run(line, {0: 72.5}, start=41, until=110)

    assert spans(line, "htst_temperature") == [
        ("opened", at(12), None),
        ("closed", at(12), at(100)),
    ]
    assert line.of("htst_temperature")[0].deviation.product == "cream"


def test_cleaning_ends_a_changeover_and_the_first_product_after_it_applies_at_once() -> None:
    """Cream to whole milk at 10 s, dropped to 72.5 degC at 12 s; cleaning from 30 s to 40 s
    pushes all product out (the deviation ends at the cleaning's start). Whole milk comes back
    at 45 s at 72.5 degC: nothing weaker than milk was left, so milk's 72 degC applies."""
    line = Scenario(PLAN)
    line.engine.submit_events(
        "plant-01",
        [
            change(0, CREAM),
            change(10, WHOLE_MILK),
            CipStart(asset="htst-1", ts=at(30), program="alkaline"),
            CipEnd(asset="htst-1", ts=at(40)),
            change(45, WHOLE_MILK),
        ],
    )
    run(line, {0: 76.0, 12: 72.5}, until=60)

    assert spans(line, "htst_temperature") == [("opened", at(12), None), ("closed", at(12), at(30))]


def test_cream_after_cleaning_then_milk_is_a_changeover_again() -> None:
    """After cleaning, cream at 45 s is the first product (at once); cream to whole milk at
    60 s is a changeover like any other: 72.5 degC from 61 s is a deviation until 120 s."""
    line = Scenario(PLAN)
    line.engine.submit_events(
        "plant-01",
        [
            CipStart(asset="htst-1", ts=at(0), program="alkaline"),
            CipEnd(asset="htst-1", ts=at(40)),
            change(45, CREAM),
            change(60, WHOLE_MILK),
        ],
    )
    run(line, {0: 76.0, 61: 72.5}, until=130)

    assert spans(line, "htst_temperature") == [
        ("opened", at(61), None),
        ("closed", at(61), at(120)),
    ]


def test_the_record_names_the_product_and_records_without_one_are_unchanged(
    line: Scenario,
) -> None:
    run(line, {0: 76.0, 12: 72.5}, until=20)
    (opened,) = line.of("htst_temperature")

    published = msgspec.to_builtins(deviation_record(opened))
    assert (published["product"], published["product_class"]) == ("cream", "rich")

    plain = DeviationChange(
        "opened", msgspec.structs.replace(opened.deviation, product=None, product_class=None)
    )
    assert "product" not in msgspec.to_builtins(deviation_record(plain))
    assert msgspec.convert(published, DeviationRecord).product == "cream"


def test_without_a_changeover_volume_the_pair_switches_at_the_change() -> None:
    """A plan that does not declare the volume keeps the earlier behaviour."""
    line = Scenario(PLAN.replace("    changeover_volume_l: 150\n", ""))
    line.engine.submit_events("plant-01", [change(0, CREAM), change(10, WHOLE_MILK)])
    run(line, {0: 76.0, 12: 72.5}, until=30)

    assert line.of("htst_temperature") == []


def problems(text: str) -> str:
    with pytest.raises(PlanError) as caught:
        parse_plan(text.encode(), "plans/line.yaml")
    return "\n".join(caught.value.problems)


@pytest.mark.parametrize("volume", ["0", "-5", "60000"])
def test_a_changeover_volume_out_of_bounds_is_refused_naming_rule_and_value(volume: str) -> None:
    said = problems(PLAN.replace("changeover_volume_l: 150", f"changeover_volume_l: {volume}"))

    assert "rules[0].changeover_volume_l: rule 'past'" in said
    assert "above 0 and at most 50,000 L" in said
    assert f"(got: {volume})" in said


def test_a_changeover_volume_smaller_than_the_holding_tube_is_refused() -> None:
    said = problems(PLAN.replace("changeover_volume_l: 150", "changeover_volume_l: 50"))

    assert "rule 'past': changeover_volume_l (50 L) is less than the holding tube alone" in said
    assert "(109.9 L" in said


def test_a_changeover_volume_needs_the_flow_channel() -> None:
    without_flow = PLAN.replace("    flow: flow\n", "").replace(
        "    holding_tube: {diameter_m: 0.0483, length_m: 60}\n", ""
    )

    assert "changeover_volume_l (150 L) needs the flow channel" in problems(without_flow)


def test_a_uht_rule_refuses_a_changeover_volume_saying_why() -> None:
    uht = """
plan: uht
jurisdiction: EU
assets:
  uht-1:
    site: plant-01
    kind: uht
    channels:
      outlet: {unit: degC, interval_s: 1, ccp: true}
      flow: {unit: L/h, interval_s: 1}
rules:
  - id: sterile
    kind: uht
    asset: uht-1
    outlet: outlet
    flow: flow
    holding_tube: {diameter_m: 0.03, length_m: 20}
    changeover_volume_l: 80
    source: "EU 853/2004 Annex III Section IX: UHT"
"""

    assert "a uht rule takes no changeover_volume_l: its minimum F0" in problems(uht)

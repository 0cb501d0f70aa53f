"""The PMO's whole time-temperature table, judged on a pasteurizer that names its process class.

PMO Section 1, "Pasteurization": every particle heated to one of the table's temperatures and
held continuously at or above it for at least the corresponding time: batch (vat) 63 degC 30 min;
continuous flow HTST 72 degC 15 s, HHST 89 degC 1.0 s, 90 degC 0.5 s, 94 degC 0.1 s, 96 degC
0.05 s, 100 degC 0.01 s; +3 degC on the vat and HTST rows for fat >= 10 %, total solids >= 18 %,
added sweeteners or condensed products; eggnog 69 degC 30 min, 80 degC 25 s or 83 degC 15 s.
"Ultra-pasteurized": at or above 138 degC for at least 2 seconds.
"""

from __future__ import annotations

import math

import pytest

from milkguard.contract.v1 import ProductChange, Reading
from milkguard.errors import PlanError
from stream.engine.compile import compile_plan
from stream.engine.htst import HtstMachine, hold_shortfall_s
from stream.engine.kinds import PlanContext
from stream.plan import Htst, LoadedPlan, parse_plan
from tests.stream.engine.scenario import Scenario, at

TUBE = {"diameter_m": 0.0229, "length_m": 8.0}  # a 1-inch tube, 3.3 L


def plan(process_lines: str, tube: dict[str, float] = TUBE) -> str:
    """A plant under the us-pmo profile with one pasteurizer."""
    return f"""
plan: pmo-table
extends: us-pmo
allowed_lateness_s: 0
assets:
  past-1:
    site: plant-01
    kind: htst
    channels:
      hold_temp: {{unit: degC, interval_s: 1, ccp: true}}
      flow: {{unit: L/h, interval_s: 1}}
      fdd_forward: {{unit: state, interval_s: 1, ccp: true}}
rules:
  - id: past
    kind: htst
    ccp: CCP-PAST-1
    asset: past-1
    indicating: hold_temp
    flow: flow
    flow_diversion: fdd_forward
    holding_tube: {{diameter_m: {tube["diameter_m"]}, length_m: {tube["length_m"]}}}
{process_lines}
    source: "plant HACCP plan, CCP-PAST-1"
"""


def the_rule(loaded: LoadedPlan) -> Htst:
    (rule,) = [r for r in loaded.plan.rules if isinstance(r, Htst)]
    return rule


def flow_holding(hold_s: float, tube: dict[str, float] = TUBE) -> float:
    """The flow (L/h) at which the fastest particle is held ``hold_s`` seconds: t = V / (k Q),
    k = 1.25 in turbulent flow (every flow used here is: Re > 20000)."""
    volume_l = math.pi / 4 * tube["diameter_m"] ** 2 * tube["length_m"] * 1000
    flow_l_h = volume_l / (1.25 * hold_s) * 3600
    reynolds = 4 * 1010 * flow_l_h / 3.6e6 / (math.pi * tube["diameter_m"] * 0.7e-3)
    assert reynolds > 20_000
    return flow_l_h


def run(
    line: Scenario,
    points: list[tuple[float, str, float]],
    product: ProductChange | None = None,
) -> Scenario:
    """Forward flow from 0 s, then (seconds, channel, value) samples."""
    if product is not None:
        line.engine.submit_events("plant-01", [product])
    units = {"hold_temp": "degC", "flow": "L/h", "fdd_forward": "state"}
    line.send("plant-01", [Reading("past-1", "fdd_forward", 1, "state", at(0))])
    for seconds, channel, value in points:
        reading = Reading("past-1", channel, value, units[channel], at(seconds))  # type: ignore[arg-type]
        line.send("plant-01", [reading])
    line.finish()
    return line


def opened(line: Scenario, kind: str) -> list[tuple[float | None, float | None, str]]:
    """(peak, legal minimum, source) of each opened deviation of a kind."""
    return [
        (c.deviation.peak, c.deviation.limit.min, c.deviation.limit.source)
        for c in line.of(kind)
        if c.kind == "opened"
    ]


LAW = {
    # process: (milk, rich, eggnog) as (degC, s), PMO Section 1
    "vat": ((63.0, 1800), (66.0, 1800), (69.0, 1800)),
    "htst": ((72.0, 15), (75.0, 15), (80.0, 25)),
    "hhst-89": ((89.0, 1.0), (89.0, 1.0), (89.0, 1.0)),
    "hhst-90": ((90.0, 0.5), (90.0, 0.5), (90.0, 0.5)),
    "hhst-94": ((94.0, 0.1), (94.0, 0.1), (94.0, 0.1)),
    "hhst-96": ((96.0, 0.05), (96.0, 0.05), (96.0, 0.05)),
    "hhst-100": ((100.0, 0.01), (100.0, 0.01), (100.0, 0.01)),
    "up": ((138.0, 2.0), (138.0, 2.0), (138.0, 2.0)),
}


@pytest.mark.parametrize("process", sorted(LAW))
def test_each_process_class_takes_the_pmo_pairs_with_their_sources(process: str) -> None:
    """Every row of the PMO table, for plain, rich and eggnog products, each naming its source."""
    rule = the_rule(parse_plan(plan(f"    process: {process}").encode(), "p.yaml"))

    for product, (temp_c, hold_s) in zip(("milk", "rich", "eggnog"), LAW[process], strict=True):
        pair = rule.pair(product)  # type: ignore[arg-type]
        assert (pair.temp_c, pair.hold_s) == (temp_c, hold_s)
        assert pair.source is not None
        assert pair.source.startswith("PMO Section 1")
        assert f"{temp_c:g} degC" in pair.source


def test_hhst_89_degrees_1_second_at_its_pair_is_pasteurized() -> None:
    """PMO HHST: 89 degC (191 degF) for 1.0 second. At exactly 89 degC, with the tube holding
    the fastest particle exactly 1.0 s, the milk is pasteurized: no deviation."""
    line = run(
        Scenario(plan("    process: hhst-89")),
        [(0, "hold_temp", 89.0), (0, "flow", flow_holding(1.0)), (1, "hold_temp", 89.0)],
    )

    assert line.changes == []


def test_hhst_89_degrees_below_its_temperature_or_time_is_a_deviation() -> None:
    """PMO HHST 89 degC 1.0 s: 88.9 degC in forward flow is a critical deviation at the first
    sample; a flow surge holding the fastest particle 0.99 s is one too, the product held."""
    line = run(
        Scenario(plan("    process: hhst-89")),
        [
            (0, "hold_temp", 89.2),
            (0, "flow", flow_holding(1.0)),
            (1, "hold_temp", 88.9),
            (2, "hold_temp", 89.2),
            (3, "flow", flow_holding(0.99)),
            (4, "flow", flow_holding(1.0)),
        ],
    )

    ((peak, legal, source),) = opened(line, "htst_temperature")
    assert (peak, legal) == (88.9, 89.0)
    assert "89 degC (191 degF) for 1.0 second" in source
    ((held, legal_s, source_s),) = opened(line, "htst_holding_time")
    assert held == pytest.approx(0.99, abs=1e-6)
    assert legal_s == 1.0
    assert "1.0 second" in source_s
    (surge,) = [c for c in line.of("htst_holding_time") if c.kind == "opened"]
    assert surge.deviation.action == "hold_lot"
    assert surge.deviation.start_ms == at(3)


def test_hhst_94_degrees_a_tenth_of_a_second_judged_at_its_boundary() -> None:
    """PMO HHST: 94 degC (201 degF) for 0.1 seconds. A tube sized to exactly 0.1 s at 94.0 degC
    passes (the float division's last bit does not fail it); 0.099 s or 93.9 degC does not."""
    line = run(
        Scenario(plan("    process: hhst-94")),
        [
            (0, "hold_temp", 94.0),
            (0, "flow", flow_holding(0.1)),
            (1, "flow", flow_holding(0.099)),
            (2, "flow", flow_holding(0.1)),
            (3, "hold_temp", 93.9),
            (4, "hold_temp", 94.0),
        ],
    )

    ((held, legal_s, _),) = opened(line, "htst_holding_time")
    assert (held, legal_s) == (pytest.approx(0.099, abs=1e-6), 0.1)
    ((peak, legal, _),) = opened(line, "htst_temperature")
    assert (peak, legal) == (93.9, 94.0)


@pytest.mark.parametrize(("process", "hold_s"), [("hhst-96", 0.05), ("hhst-100", 0.01)])
def test_the_shortest_hhst_times_pass_at_their_pair_and_fail_a_microsecond_under(
    process: str, hold_s: float
) -> None:
    """PMO HHST 96 degC 0.05 s and 100 degC 0.01 s: holding times are judged to the
    microsecond, so exactly the legal time passes and 10 microseconds less fails."""
    tube = {"diameter_m": 0.0229, "length_m": 0.5}
    line = run(
        Scenario(plan(f"    process: {process}", tube)),
        [
            (0, "flow", flow_holding(hold_s, tube)),
            (1, "flow", flow_holding(hold_s - 0.00001, tube)),
        ],
    )

    ((held, legal_s, _),) = opened(line, "htst_holding_time")
    assert legal_s == hold_s
    assert held == pytest.approx(hold_s - 0.00001, abs=1e-6)
    assert held < hold_s  # shown to the microsecond, not rounded up to the legal time


def test_ultra_pasteurization_138_degrees_2_seconds() -> None:
    """PMO "Ultra-pasteurized" (21 CFR 131.3(c)): at or above 138 degC (280 degF) for at least
    2 seconds. 138.0 degC held 2.0 s passes; 137.9 degC, or 1.98 s, is a deviation."""
    line = run(
        Scenario(plan("    process: up")),
        [
            (0, "hold_temp", 138.0),
            (0, "flow", flow_holding(2.0)),
            (1, "hold_temp", 137.9),
            (2, "hold_temp", 138.0),
            (3, "flow", flow_holding(1.98)),
        ],
    )

    ((peak, legal, source),) = opened(line, "htst_temperature")
    assert (peak, legal) == (137.9, 138.0)
    assert "Ultra-pasteurized" in source
    ((held, legal_s, _),) = opened(line, "htst_holding_time")
    assert (held, legal_s) == (pytest.approx(1.98, abs=1e-6), 2.0)


def test_cream_on_htst_needs_75_degrees() -> None:
    """PMO HTST 72 degC 15 s, +3 degC (5 degF) for fat >= 10 %: cream at 75.0 degC passes,
    74.9 degC is a deviation judged against 75 degC and the footnote's source."""
    cream = ProductChange(asset="past-1", ts=at(0), product="cream", fat_pct=36.0)
    line = run(
        Scenario(plan("    process: htst")),
        [(0, "hold_temp", 75.0), (1, "hold_temp", 74.9), (2, "hold_temp", 75.0)],
        cream,
    )

    ((peak, legal, source),) = opened(line, "htst_temperature")
    assert (peak, legal) == (74.9, 75.0)
    assert "+ 3 degC (5 degF)" in source


@pytest.mark.parametrize(
    "product",
    [
        ProductChange(asset="past-1", ts=at(0), product="choc", fat_pct=1.0, sweetened=True),
        ProductChange(asset="past-1", ts=at(0), product="mix", fat_pct=8.0, total_solids_pct=18.0),
        ProductChange(asset="past-1", ts=at(0), product="cond", fat_pct=8.0, condensed=True),
    ],
)
def test_sweetened_high_solids_or_condensed_products_are_raised_too(
    product: ProductChange,
) -> None:
    """The same footnote: added sweeteners, total solids >= 18 %, or condensed: +3 degC."""
    line = run(Scenario(plan("    process: htst")), [(1, "hold_temp", 74.9)], product)

    ((_, legal, _),) = opened(line, "htst_temperature")
    assert legal == 75.0


def test_cream_on_hhst_keeps_the_hhst_pair_the_table_has_no_raised_row() -> None:
    """The PMO's +3 degC footnote marks only the vat and HTST rows: cream on an HHST system at
    89 degC 1.0 s is pasteurized; below 89 degC the record says why no raised row applied."""
    cream = ProductChange(asset="past-1", ts=at(0), product="cream", fat_pct=36.0)
    line = run(
        Scenario(plan("    process: hhst-89")),
        [(0, "hold_temp", 89.0), (1, "hold_temp", 88.9)],
        cream,
    )

    ((_, legal, source),) = opened(line, "htst_temperature")
    assert legal == 89.0
    assert "no +3 degC row" in source


def test_eggnog_on_htst_needs_80_degrees_and_25_seconds() -> None:
    """PMO eggnog proviso, HTST: 80 degC (175 degF) for 25 seconds. 79.9 degC is a deviation,
    and so is a fastest particle held 20 s, which plain milk's 15 s would pass."""
    eggnog = ProductChange(asset="past-1", ts=at(0), product="eggnog", fat_pct=8.0, sweetened=True)
    tube = {"diameter_m": 0.0483, "length_m": 60.0}
    line = run(
        Scenario(plan("    process: htst\n    eggnog_products: [eggnog]", tube)),
        [
            (0, "hold_temp", 80.0),
            (0, "flow", flow_holding(25.0, tube)),
            (1, "hold_temp", 79.9),
            (2, "hold_temp", 80.0),
            (3, "flow", flow_holding(20.0, tube)),
        ],
        eggnog,
    )

    ((_, legal, source),) = opened(line, "htst_temperature")
    assert legal == 80.0
    assert "eggnog" in source
    ((held, legal_s, _),) = opened(line, "htst_holding_time")
    assert (held, legal_s) == (pytest.approx(20.0, abs=1e-6), 25.0)


def test_eggnogs_other_htst_pair_may_be_the_rules_own() -> None:
    """PMO eggnog proviso: 83 degC (180 degF) for 15 seconds is the other HTST pair; a line run
    that way gives it, and takes its source from the table."""
    loaded = parse_plan(
        plan("    process: htst\n    eggnog: {temp_c: 83.0, hold_s: 15}").encode(), "p.yaml"
    )

    pair = the_rule(loaded).pair("eggnog")
    assert (pair.temp_c, pair.hold_s) == (83.0, 15)
    assert pair.source is not None
    assert "83 degC (180 degF) for 15 seconds" in pair.source


def test_vat_pasteurization_63_degrees_and_66_for_cream() -> None:
    """PMO batch (vat): 63 degC (145 degF), 66 degC for rich products. The vat's temperature is
    judged against the pair of the product in it (its 30 min hold is a batch time, no tube)."""
    cream = ProductChange(asset="past-1", ts=at(3), product="cream", fat_pct=36.0)
    line = run(
        Scenario(plan("    process: vat")),
        [
            (0, "hold_temp", 63.0),
            (1, "hold_temp", 62.9),
            (2, "hold_temp", 63.0),
            (3, "hold_temp", 65.9),
            (4, "hold_temp", 66.0),
        ],
        cream,
    )

    assert [(peak, legal) for peak, legal, _ in opened(line, "htst_temperature")] == [
        (62.9, 63.0),
        (65.9, 66.0),
    ]
    assert [c.kind for c in line.of("htst_temperature")] == ["opened", "closed"] * 2


def test_a_plants_own_pair_may_be_stricter_never_looser() -> None:
    """A plant may add stricter limits, never looser: 73 degC 16 s on HTST stands, 71 degC is
    refused with the law's pair and source."""
    stricter = parse_plan(
        plan("    process: htst\n    legal: {temp_c: 73.0, hold_s: 16}").encode(), "p.yaml"
    )
    assert the_rule(stricter).pair("milk").temp_c == 73.0
    assert the_rule(stricter).pair("rich").temp_c == 75.0  # the law's row for the rest

    with pytest.raises(PlanError, match=r"looser than the legal 72 degC 15 s .* 72 degC \(161"):
        parse_plan(plan("    process: htst\n    legal: {temp_c: 71.0, hold_s: 15}").encode(), "p")


def test_a_raise_beside_a_process_class_is_refused_as_doing_nothing() -> None:
    """The table has the rich products' pair: a raise beside it would be silently ignored."""
    raw = plan("    process: htst\n    rich_product_raise_c: 5.0")

    with pytest.raises(PlanError, match=r"rich_product_raise_c does nothing beside process"):
        parse_plan(raw.encode(), "p.yaml")


def test_a_process_class_needs_a_profile_with_the_table() -> None:
    """Without `extends`, a process class names nothing: the plan is refused, saying how."""
    raw = plan("    process: hhst-94").replace("extends: us-pmo", "jurisdiction: US")

    with pytest.raises(PlanError, match=r"process 'hhst-94' needs a pasteurization table"):
        parse_plan(raw.encode(), "p.yaml")


def test_an_old_plan_with_its_own_legal_pair_keeps_working() -> None:
    """`legal: {temp_c, hold_s}` with the rule's source, and +3 degC for rich products."""
    rule = the_rule(parse_plan(plan("    legal: {temp_c: 72.0, hold_s: 15}").encode(), "p"))

    assert (rule.pair("milk").temp_c, rule.pair("milk").source) == (
        72.0,
        "plant HACCP plan, CCP-PAST-1",
    )
    assert (rule.pair("rich").temp_c, rule.pair("eggnog").temp_c) == (75.0, 75.0)


@pytest.mark.parametrize(
    ("hold_s", "legal_s", "short"),
    [
        (0.09999999999999999, 0.1, 0.0),  # a float division's last bit is no shortfall
        (0.099, 0.1, 0.001),
        (0.01, 0.01, 0.0),
        (0.009999, 0.01, 0.000001),
        (math.inf, 0.01, 0.0),  # nothing flows
        (math.nan, 0.01, 0.0),
        (15.0, 15.0, 0.0),
    ],
)
def test_holding_time_shortfall_in_whole_microseconds(
    hold_s: float, legal_s: float, short: float
) -> None:
    assert hold_shortfall_s(hold_s, legal_s) == pytest.approx(short, abs=1e-12)


def test_a_snapshot_from_before_the_product_classes_restores_its_rich_products() -> None:
    """A state saved as (ts, rich) restores as the rich class: cream stays at 75 degC."""
    loaded = parse_plan(plan("    process: htst").encode(), "p.yaml")
    compiled = compile_plan(loaded, PlanContext(loaded, {}, []))
    (machine,) = [b.machine for b in compiled.rules if isinstance(b.machine, HtstMachine)]
    saved = machine.state()
    del saved["product_since"]
    saved["rich_since"] = [(at(0), True)]

    machine.restore(saved)

    assert machine.legal_pair(at(1)).temp_c == 75.0

"""UHT lethality per parcel: F0 = t_min * L(T) / 60 from the outlet temperature and the
residence time of the fastest particle, against the plan's minimum (3 min)."""

from __future__ import annotations

import pytest

from milkguard.contract.v1 import Reading
from stream.engine.htst import lethality_f0
from stream.plan import Uht
from tests.stream.engine.scenario import Scenario, at

PLAN = """
plan: uht
jurisdiction: EU
allowed_lateness_s: 0
assets:
  uht-1:
    site: plant-01
    kind: uht
    channels:
      outlet_temp: {unit: degC, interval_s: 1, ccp: true}
      flow: {unit: L/h, interval_s: 1}
rules:
  - id: sterile
    kind: uht
    ccp: CCP-UHT-1
    asset: uht-1
    outlet: outlet_temp
    flow: flow
    holding_tube: {diameter_m: 0.035, length_m: 12}
    min_f0: 3.0
    source: "commercial sterility: F0 >= 3 min (design 5-6)"
"""


def sample(seconds: float, channel: str, value: float) -> Reading:
    unit = "degC" if channel == "outlet_temp" else "L/h"
    return Reading("uht-1", channel, value, unit, at(seconds))  # type: ignore[arg-type]


RULE = Uht.model_validate(
    {
        "kind": "uht",
        "id": "u",
        "asset": "a",
        "outlet": "t",
        "flow": "f",
        "holding_tube": {"diameter_m": 0.035, "length_m": 12},
        "source": "test",
    }
)


def test_f0_follows_the_lethal_rate_at_the_outlet_and_the_fastest_residence() -> None:
    rule = RULE

    at_121 = lethality_f0(rule, 121.1, 6000)
    assert lethality_f0(rule, 131.1, 6000) == pytest.approx(at_121 * 10)  # z = 10 degC
    assert lethality_f0(rule, 121.1, 3000) > at_121  # half the flow, longer in the tube


def test_a_parcel_below_the_minimum_lethality_is_a_critical_deviation() -> None:
    line = Scenario(PLAN)
    # about 11.5 L of tube at 6000 L/h, turbulent: ~5.5 s for the fastest particle
    # F0 at 140 degC ~7.2 min; at 135 degC ~2.3 min
    for second, temp in enumerate([140.0, 140.0, 135.0, 140.0]):
        line.send("plant-01", [sample(second, "flow", 6000), sample(second, "outlet_temp", temp)])
    line.finish()

    opened, closed = line.of("uht_lethality")
    assert opened.deviation.start_ms == at(2)
    assert opened.deviation.severity == "critical"
    assert opened.deviation.peak is not None
    assert opened.deviation.peak < 3.0  # the F0 that parcel got
    assert closed.deviation.end_ms == at(3)


def test_every_parcel_s_f0_is_kept_as_a_derived_value() -> None:
    line = Scenario(PLAN)
    line.send("plant-01", [sample(0, "flow", 6000)])
    line.send("plant-01", [sample(1, "outlet_temp", 140.0), sample(2, "outlet_temp", 135.0)])
    line.finish()

    derived = line.engine.derived
    assert [(d.site, d.asset, d.rule_id, d.quantity, d.ts) for d in derived] == [
        ("plant-01", "uht-1", "sterile", "f0_min", at(1)),
        ("plant-01", "uht-1", "sterile", "f0_min", at(2)),
    ]
    assert derived[0].value > 3.0 > derived[1].value  # 140 degC sterile, 135 degC not


def test_no_verdict_before_the_flow_is_known() -> None:
    line = Scenario(PLAN)
    line.send("plant-01", [sample(0, "outlet_temp", 100.0)])
    line.finish()

    assert line.of("uht_lethality") == []

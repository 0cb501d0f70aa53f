"""The engine's arithmetic is total: any float a reading can carry gives a number, never an
error, and no infinity or NaN reaches a deviation record."""

from __future__ import annotations

import math

from milkguard.contract.v1 import Reading
from stream.engine.htst import fastest_particle_hold_s, lethality_f0
from tests.stream.engine.scenario import Scenario, at
from tests.stream.engine.test_uht import PLAN as UHT_PLAN
from tests.stream.engine.test_uht import RULE

EXTREMES = (0.0, -0.0, 5e-324, -5e-324, 1e-300, 1.0, 1e300, 1.7976931348623157e308, -1e308)


def test_an_outlet_temperature_beyond_3200_degc_gives_an_infinite_f0_not_an_overflow() -> None:
    assert lethality_f0(RULE, 3300.0, 6000.0) == math.inf
    assert lethality_f0(RULE, 1e308, 6000.0) == math.inf


def test_a_flow_too_small_to_divide_by_is_no_flow() -> None:
    assert fastest_particle_hold_s(RULE, 5e-324) == math.inf
    assert lethality_f0(RULE, 130.0, 5e-324) == math.inf


def test_every_extreme_pair_of_temperature_and_flow_gives_a_number() -> None:
    for temperature in (*EXTREMES, math.nan, math.inf, -math.inf):
        for flow in (*EXTREMES, math.nan, math.inf):
            f0 = lethality_f0(RULE, temperature, flow)
            assert not math.isnan(f0), (temperature, flow)
            assert not math.isnan(fastest_particle_hold_s(RULE, flow)), flow


def test_extreme_readings_through_the_engine_raise_nothing_and_record_only_finite_figures() -> None:
    line = Scenario(UHT_PLAN)
    second = 0
    for flow in (6000.0, 5e-324, 1e308, 0.0, 6000.0):
        for temperature in (140.0, 3300.0, 1e308, -1e308, 140.0):
            line.send(
                "plant-01",
                [
                    Reading("uht-1", "flow", flow, "L/h", at(second)),
                    Reading("uht-1", "outlet_temp", temperature, "degC", at(second)),
                ],
            )
            second += 1
    line.finish()

    for change in line.changes:
        d = change.deviation
        for figure in (d.peak, d.time_beyond_s, d.degree_minutes):
            assert figure is None or math.isfinite(figure), change
    assert all(math.isfinite(d.value) for d in line.engine.derived)

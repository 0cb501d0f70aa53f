"""The demo devices follow their heat balances, so the demo shows what it promises."""

from __future__ import annotations

from edge.drivers.physics import FarmBulkTank, TruckCompartment
from simulators.demo import DemoTimeline


def run_compartment(seconds: int, hatch: tuple[float, float]) -> list[float]:
    comp = TruckCompartment("comp-2")
    temps = []
    for t in range(seconds):
        comp.hatch_open = hatch[0] <= t < hatch[1]
        comp.step(1.0)
        temps.append(comp.temp_c)
    return temps


def test_a_shut_refrigerated_compartment_holds_the_cold_chain_all_day() -> None:
    temps = run_compartment(8 * 3600, hatch=(0, 0))

    assert min(temps) > 2.0
    assert max(temps) < 6.0


def test_the_open_hatch_breaches_6_degrees_for_longer_than_the_plan_tolerates_in_a_minute() -> None:
    line = DemoTimeline()
    temps = run_compartment(120, hatch=(line.hatch_opens_at_s, line.hatch_closes_at_s))
    above = [t for t, temp in enumerate(temps) if temp > 6.0]

    assert above, "the compartment never warmed past 6 degC"
    assert above[0] + 15 < 60  # the demo plan's 15 s sustain is reached within a minute
    assert temps[-1] < 6.0  # and the refrigeration pulls it back once the hatch is shut


def test_warm_milk_from_a_milking_is_cooled_back_below_4_degrees() -> None:
    tank = FarmBulkTank(milking=True, temp_c=3.5)
    temps = []
    for _ in range(3600):
        tank.step(1.0)
        temps.append(tank.temp_c)

    assert tank.volume_l > 4_000
    assert max(temps) < 4.5
    assert tank.compressor_on or temps[-1] < 4.0

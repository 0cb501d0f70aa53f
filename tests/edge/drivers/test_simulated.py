"""The simulated driver: the simulators' devices, sampled on a clock, with their faults."""

from __future__ import annotations

import pytest

from edge.drivers.simulated import QUANTITIES, SimulatedConfig, SimulatedDriver


def driver(
    model: str, quantities: list[str], **options: object
) -> tuple[SimulatedDriver, list[float]]:
    config = SimulatedConfig(
        name="sim",
        driver="simulated",
        model=model,  # type: ignore[arg-type]
        noise=0.0,
        channels=[
            {"quantity": q, "asset": "a-1", "channel": q.replace("_", "-"), "unit": "degC"}
            for q in quantities
        ],
        **options,  # type: ignore[arg-type]
    )
    now = [0.0]
    return SimulatedDriver(config, clock=lambda: now[0]), now


@pytest.mark.parametrize("model", sorted(QUANTITIES))
def test_every_model_reads_every_quantity_it_offers(model: str) -> None:
    sim, now = driver(model, list(QUANTITIES[model]))
    now[0] = 10.0
    values = sim.read()
    assert len(values) == len(QUANTITIES[model])
    assert all(v is not None for v in values)


def test_a_compartment_whose_hatch_opens_warms_past_the_cold_chain_limit() -> None:
    sim, now = driver("truck_compartment", ["temp_c", "hatch"], fault_after_s=60)
    readings = []
    for second in range(0, 600, 10):
        now[0] = float(second)
        readings.append(sim.read())
    assert readings[0] == [pytest.approx(4.0, abs=0.6), 0.0]
    assert readings[-1][1] == 1.0
    assert readings[-1][0] is not None
    assert readings[-1][0] > 6.0


def test_a_tank_whose_compressor_fails_does_not_cool_its_milk() -> None:
    sim, now = driver("farm_tank", ["temp_c"], fault_after_s=0, milking_for_s=3600)
    for second in range(0, 3600, 10):
        now[0] = float(second)
        (temp,) = sim.read()
    assert temp is not None
    assert temp > 6.0

"""Every scenario of the library, simulated and replayed through the rule engine, finds exactly
the deviations it expects, and nothing else: the library is the engine's acceptance suite."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulators.check import check
from simulators.runner import simulate
from simulators.scenario import load_scenario

LIBRARY = Path(__file__).parents[2] / "simulators" / "scenarios"
SCENARIOS = sorted(LIBRARY.glob("*.yaml"))


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_the_scenario_finds_what_it_expects_and_nothing_else(path: Path) -> None:
    verdict = check(path)

    assert verdict.missing == [], f"expected but not found: {verdict.missing}"
    assert verdict.unexpected == [], f"found but not expected: {verdict.unexpected}"


def test_a_scenario_gives_the_same_payloads_for_the_same_seed() -> None:
    scenario, _ = load_scenario(LIBRARY / "farm-outage-burst.yaml")

    assert list(simulate(scenario)) == list(simulate(scenario))


def test_the_library_has_healthy_and_faulty_days_for_farm_truck_and_plant() -> None:
    kinds = set()
    healthy = 0
    for path in SCENARIOS:
        scenario, _ = load_scenario(path)
        kinds.update(device.kind for device in scenario.devices)
        healthy += not scenario.expect
    assert kinds == {"farm_tank", "truck", "htst", "uht", "room", "can_line"}
    assert healthy >= 3
    assert len(SCENARIOS) >= 12

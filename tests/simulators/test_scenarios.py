"""Every scenario of the library, simulated and replayed through the rule engine, finds exactly
the deviations it expects, and nothing else: the library is the engine's acceptance suite."""

from __future__ import annotations

from pathlib import Path

import pytest

from milkguard.errors import ScenarioError
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
    assert kinds == {"farm_tank", "truck", "htst", "uht", "room", "can_line", "plant"}
    assert healthy >= 3
    assert len(SCENARIOS) >= 12


def test_an_inconsistent_scenario_is_refused_naming_each_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "scenario: bad\nplan: plan.yaml\nduration_h: 2\ndevices:\n"
        "  - {kind: farm_tank, site: farm-01, asset: tank-1, gateway: gw1,\n"
        "     faults: [{kind: stuck, channel: milk_tmp}, {kind: heater_dip}]}\n"
        "  - {kind: truck, site: truck-07, gateway: gw2, compartments: [comp-1],\n"
        "     pickups: [{at_h: 1, source_site: farm-09, source_asset: tank-1,"
        " compartment: comp-2}]}\n"
    )

    with pytest.raises(ScenarioError) as caught:
        load_scenario(bad)

    problems = caught.value.problems
    assert any("names channel 'milk_tmp'" in p for p in problems)
    assert any("a farm_tank cannot have a heater_dip" in p for p in problems)
    assert any("into 'comp-2', not one of its compartments" in p for p in problems)
    assert any("farm-09/tank-1, which is no farm_tank" in p for p in problems)


def test_a_scenario_whose_plan_is_missing_says_so(tmp_path: Path) -> None:
    lonely = tmp_path / "lonely.yaml"
    lonely.write_text(
        "scenario: lonely\nplan: nowhere.yaml\nduration_h: 1\ndevices:\n"
        "  - {kind: can_line, site: plant-01, asset: cans-1, gateway: gw}\n"
    )

    with pytest.raises(ScenarioError, match="plan: no file"):
        load_scenario(lonely)

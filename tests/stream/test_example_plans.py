"""The plans shipped as examples load, and say what they promise."""

from __future__ import annotations

from pathlib import Path

from milkguard.contract.v1 import Reading
from stream.plan import load_plan
from tests.stream.engine.scenario import Scenario, at

PLANS = Path(__file__).parents[2] / "stream" / "plans"


def test_the_example_plant_plan_uses_every_rule_kind_and_the_us_profile() -> None:
    loaded = load_plan(PLANS / "example-us-plant.yaml")

    kinds = {rule.kind for rule in loaded.plan.rules}
    assert kinds == {
        "critical_limit",
        "stuck_sensor",
        "rate_of_change",
        "cooling",
        "storage_age",
        "transport",
        "htst",
        "uht",
        "receipt_check",
        "acceptance_window",
    }
    assert loaded.plan.jurisdiction == "US"
    assert any(rule.id.startswith("us-pmo.") for rule in loaded.plan.rules)


def test_each_can_above_3_percent_oxygen_is_held_the_worst_can_reported() -> None:
    plant = Scenario((PLANS / "example-us-plant.yaml").read_bytes())
    cans = [1.2, 1.4, 3.6, 4.1, 1.3, 1.1]
    for number, oxygen in enumerate(cans):
        plant.send("plant-01", [Reading("cans-1", "o2", oxygen, "%O2", at(number * 2))])
    plant.finish()

    opened, closed = [c for c in plant.of("critical_limit") if c.deviation.asset == "cans-1"]
    assert opened.deviation.start_ms == at(4)  # the first can above the limit
    assert closed.deviation.peak == 4.1
    assert closed.deviation.end_ms == at(8)  # the next good can
    assert closed.deviation.action == "hold_lot"


def test_the_example_plant_rejects_a_load_received_at_8_degrees() -> None:
    """PMO Section 7, Item 17p at the example plant's intake (probe +-0.5 degC): 7.4 degC asks
    for a calibrated thermometer, 8 degC rejects the load."""
    plant = Scenario((PLANS / "example-us-plant.yaml").read_bytes())
    for seconds, temp_c in ((0, 6.5), (900, 7.4), (1800, 8.0)):
        plant.send("plant-01", [Reading("bay-1", "load_temp", temp_c, "degC", at(seconds))])
    plant.finish()

    opened = [c.deviation for c in plant.changes if c.kind == "opened"]
    assert [d.kind for d in opened if d.asset == "bay-1"] == [
        "receipt_verification",
        "receipt_temperature",
    ]

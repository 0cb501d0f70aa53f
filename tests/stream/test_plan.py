"""A HACCP plan file is validated at start; a bad one fails naming file, line, field, problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from milkguard.contract.v1 import Reading
from milkguard.errors import PlanError
from stream.plan import load_plan, parse_plan
from tests.conftest import T0
from tests.stream.engine.scenario import Scenario

GOOD = """\
plan: farm
jurisdiction: US
assets:
  tank-1:
    site: farm-01
    kind: bulk_tank
    channels:
      milk_temp: {unit: degC, interval_s: 60}
rules:
  - id: pmo-7c
    kind: critical_limit
    asset: tank-1
    channel: milk_temp
    max: 7.0
    sustained_s: 0
    severity: major
    action: alert
    source: "PMO: 7 degC within 2 h after milking"
"""


def problems(text: str) -> list[str]:
    with pytest.raises(PlanError) as caught:
        parse_plan(text.encode(), "plans/farm.yaml")
    assert caught.value.path == "plans/farm.yaml"
    assert "milkguard plan check plans/farm.yaml" in str(caught.value)
    return caught.value.problems


def test_a_good_plan_loads_with_a_version_hash_of_its_bytes(tmp_path: Path) -> None:
    path = tmp_path / "farm.yaml"
    path.write_text(GOOD)

    loaded = load_plan(path)

    assert loaded.plan.rules[0].max == 7.0
    assert len(loaded.version) == 16
    path.write_text(GOOD.replace("7.0", "6.0"))
    assert load_plan(path).version != loaded.version


def test_the_shipped_demo_plan_is_valid(demo_plan: object) -> None:
    assert demo_plan is not None


def test_a_wrong_value_is_reported_with_its_line_field_and_value() -> None:
    (problem,) = problems(GOOD.replace("max: 7.0", "max: seven"))

    assert problem.startswith("line 14: rules[0].max:")
    assert "'seven'" in problem


def test_a_start_up_grace_defaults_to_a_minute_and_a_negative_one_is_refused() -> None:
    assert parse_plan(GOOD.encode(), "plans/farm.yaml").plan.startup_grace_s == 60.0
    (problem,) = problems(GOOD.replace("jurisdiction: US", "jurisdiction: US\nstartup_grace_s: -5"))

    assert problem.startswith("line 3: startup_grace_s:")
    assert "-5" in problem


def test_an_unknown_action_lists_the_allowed_ones() -> None:
    (problem,) = problems(GOOD.replace("action: alert", "action: shout"))

    assert problem.startswith("line 17: rules[0].action:")
    assert "'divert', 'hold_lot', 'reject_load' or 'alert'" in problem


def test_a_rule_naming_an_undeclared_channel_names_the_channels_the_asset_has() -> None:
    (problem,) = problems(GOOD.replace("channel: milk_temp", "channel: milk_tmp"))

    assert "rule 'pmo-7c' names channel 'milk_tmp' of asset 'tank-1'" in problem
    assert "which has only: milk_temp" in problem


def test_a_limit_without_min_or_max_is_refused() -> None:
    (problem,) = problems(GOOD.replace("    max: 7.0\n", ""))

    assert "set min, max or both" in problem


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('source: "PMO: 7 degC within 2 h after milking"', "source: " + "x" * 1_001),
        ("action: alert", "action: alert\n    ccp: " + "x" * 1_001),
    ],
    ids=["source", "ccp"],
)
def test_text_longer_than_a_signed_record_holds_is_refused_at_load(old: str, new: str) -> None:
    # else every deviation of the rule would fall outside the records contract: logged as
    # unpublishable, and never signed nor sent to the alert service
    (problem,) = problems(GOOD.replace(old, new))

    assert "1000" in problem


def test_a_typo_in_a_key_is_refused_not_ignored() -> None:
    (problem,) = problems(GOOD.replace("sustained_s: 0", "sustain_s: 0"))

    assert "rules[0].sustain_s" in problem
    assert "Extra inputs are not permitted" in problem


def test_yaml_syntax_errors_give_line_and_column() -> None:
    (problem,) = problems("plan: farm\n assets: [\n")

    assert problem.startswith("line 2, column 8: YAML syntax error")


def test_a_missing_file_is_a_plan_error(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="cannot read the file"):
        load_plan(tmp_path / "absent.yaml")


def test_a_key_given_twice_is_refused_rather_than_the_last_one_winning() -> None:
    (problem,) = problems(GOOD.replace("    max: 7.0\n", "    max: 7.0\n    max: 70.0\n"))

    assert "key 'max' appears twice in one mapping (first on line 14)" in problem
    assert problem.startswith("line 15")


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_a_limit_that_could_never_fire_is_refused(value: str) -> None:
    (problem,) = problems(GOOD.replace("max: 7.0", f"max: {value}"))

    assert problem.startswith("line 14: rules[0].max: Input should be a finite number")


def test_two_farms_may_each_have_a_tank_1_under_different_plan_keys() -> None:
    two_farms = (
        GOOD.replace(
            "  tank-1:\n    site: farm-01\n",
            "  farm-01.tank-1:\n    site: farm-01\n    id: tank-1\n",
        )
        .replace("asset: tank-1", "asset: farm-01.tank-1")
        .replace(
            "rules:\n",
            "  farm-02.tank-1:\n    site: farm-02\n    id: tank-1\n    kind: bulk_tank\n"
            "    channels:\n      milk_temp: {unit: degC, interval_s: 60}\nrules:\n",
        )
    )
    farms = Scenario(two_farms)

    farms.send("farm-02", [Reading("tank-1", "milk_temp", 9.0, "degC", T0)])  # no rule there
    farms.send("farm-01", [Reading("tank-1", "milk_temp", 9.0, "degC", T0)])
    farms.finish()

    breached = [(c.deviation.site, c.deviation.asset) for c in farms.of("critical_limit")]
    assert breached == [("farm-01", "tank-1")]
    assert farms.engine.counters.unplanned == 0


def test_two_plan_assets_claiming_one_wire_asset_are_refused() -> None:
    doubled = GOOD.replace(
        "assets:\n",
        "assets:\n  tank-1-again:\n    site: farm-01\n    id: tank-1\n    kind: bulk_tank\n"
        "    channels:\n      milk_temp: {unit: degC, interval_s: 60}\n",
    )

    (problem,) = problems(doubled)
    assert "are both asset 'tank-1' of site 'farm-01'" in problem


def test_a_plan_split_by_site_keeps_each_site_s_assets_rules_and_version() -> None:
    loaded = load_plan(Path("simulators/scenarios/plans/route-two-farms-cn.yaml"))

    farm = loaded.for_sites({"farm-02"})
    truck = loaded.for_sites({"truck-07"})

    assert loaded.sites == ["farm-01", "farm-02", "truck-07"]
    assert list(farm.plan.assets) == ["farm-02.tank-1"]
    assert {rule.asset for rule in farm.plan.rules} == {"farm-02.tank-1"}
    assert {rule.asset for rule in truck.plan.rules} <= {"comp-1", "comp-2", "truck-07"}
    assert len(farm.plan.rules) + len(truck.plan.rules) + len(
        loaded.for_sites({"farm-01"}).plan.rules
    ) == len(loaded.plan.rules)
    # deviations keep the plan's version; a saved state names the part it was taken under
    assert farm.version == truck.version == loaded.version
    assert len({farm.state_version, truck.state_version, loaded.state_version}) == 3

"""A HACCP plan file is validated at start; a bad one fails naming file, line, field, problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from milkguard.errors import PlanError
from stream.plan import load_plan, parse_plan

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

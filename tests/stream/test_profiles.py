"""Jurisdiction profiles: legal limits a plant's plan extends, and may only make stricter."""

from __future__ import annotations

from pathlib import Path

import pytest

from milkguard.errors import PlanError
from stream.plan import CriticalLimit, load_plan, parse_plan
from tests.stream.engine.scenario import Scenario, at

PLANT = """
plan: plant-7
extends: {profile}
assets:
  tank-1:
    site: farm-01
    kind: bulk_tank
    channels:
      milk_temp: {{unit: degC, interval_s: 60}}
  comp-1:
    site: truck-07
    kind: truck_compartment
    channels:
      temp: {{unit: degC, interval_s: 10}}
  silo-1:
    site: plant-01
    kind: silo
    channels:
      temp: {{unit: degC, interval_s: 60}}
  uht-1:
    site: plant-01
    kind: uht
    channels:
      outlet_temp: {{unit: degC, interval_s: 1}}
  store-1:
    site: plant-01
    kind: cold_store
    channels:
      temp: {{unit: degC, interval_s: 60}}
rules: {rules}
"""


def plant(profile: str, rules: str = "[]") -> str:
    return PLANT.format(profile=profile, rules=rules)


@pytest.mark.parametrize(
    ("profile", "jurisdiction", "expected"),
    [
        (
            "us-pmo",
            "US",
            {
                "us-pmo.tank-1.cooling",
                "us-pmo.comp-1.transport-max",
                "us-pmo.silo-1.silo-max",
                "us-pmo.silo-1.silo-emptied",
                "us-pmo.store-1.storage-max",
            },
        ),
        (
            "cn-gb",
            "CN",
            {
                "cn-gb.tank-1.cooling",
                "cn-gb.tank-1.storage-age",
                "cn-gb.tank-1.tank-max",
                "cn-gb.comp-1.cold-chain",
                "cn-gb.uht-1.uht-min",
                "cn-gb.store-1.storage-band",
            },
        ),
        (
            "eu-853",
            "EU",
            {
                "eu-853.tank-1.tank-max",
                "eu-853.comp-1.transport-max",
                "eu-853.silo-1.reception-max",
                "eu-853.uht-1.uht-min",
            },
        ),
    ],
)
def test_each_profile_applies_its_legal_limits_to_the_assets_of_their_kind(
    profile: str, jurisdiction: str, expected: set[str]
) -> None:
    loaded = parse_plan(plant(profile).encode(), "plant.yaml")

    assert loaded.plan.jurisdiction == jurisdiction
    assert {rule.id for rule in loaded.plan.rules} == expected
    assert all(len(rule.source) > 10 for rule in loaded.plan.rules)  # every limit names its law


def test_a_stricter_company_limit_is_added_to_the_legal_one() -> None:
    rules = """
  - {id: company-6c, kind: critical_limit, asset: comp-1, channel: temp, max: 6.0,
     severity: minor, action: alert, source: "company HACCP plan"}"""
    loaded = parse_plan(plant("us-pmo", rules).encode(), "plant.yaml")

    maxima = sorted(
        r.max for r in loaded.plan.rules if isinstance(r, CriticalLimit) and r.asset == "comp-1"
    )
    assert maxima == [6.0, 10.0]


def test_a_company_limit_looser_than_the_law_is_refused() -> None:
    rules = """
  - {id: lenient, kind: critical_limit, asset: comp-1, channel: temp, max: 12.0,
     severity: minor, action: alert, source: "company HACCP plan"}"""

    with pytest.raises(PlanError, match="max 12 is looser than the legal 10"):
        parse_plan(plant("us-pmo", rules).encode(), "plant.yaml")


def test_the_legal_limit_judges_the_plants_readings() -> None:
    scenario = Scenario(plant("us-pmo"))
    scenario.samples("truck-07", "comp-1", "temp", "degC", [(0, 8.0), (10, 10.5), (20, 9.0)])
    scenario.finish()

    opened = scenario.of("critical_limit")[0]
    assert opened.deviation.rule_id == "us-pmo.comp-1.transport-max"
    assert opened.deviation.jurisdiction == "US"
    assert opened.deviation.start_ms == at(10)


def test_the_plan_version_covers_the_profile(tmp_path: Path) -> None:
    profile = tmp_path / "local-profile.yaml"
    profile.write_text(
        "profile: local\njurisdiction: company\ntemplates:\n  silo:\n"
        "    - {id: silo, kind: critical_limit, channel: temp, max: 7.0, severity: major,"
        " action: hold_lot, source: local rule}\n"
    )
    plan = tmp_path / "plant.yaml"
    plan.write_text(plant("local-profile.yaml"))
    first = load_plan(plan).version

    profile.write_text(profile.read_text().replace("max: 7.0", "max: 6.5"))

    assert load_plan(plan).version != first


def test_an_unknown_profile_lists_the_built_in_ones() -> None:
    with pytest.raises(PlanError, match=r"no such profile \(built in: cn-gb, eu-853, us-pmo\)"):
        parse_plan(plant("us-fda").encode(), "plant.yaml")


def test_a_jurisdiction_that_contradicts_the_profile_is_refused() -> None:
    text = plant("us-pmo").replace("extends: us-pmo", "extends: us-pmo\njurisdiction: EU")

    with pytest.raises(PlanError, match="differs from profile 'us-pmo'"):
        parse_plan(text.encode(), "plant.yaml")


def test_a_broken_template_is_reported_in_the_profile_file_with_its_line(tmp_path: Path) -> None:
    profile = tmp_path / "bad.yaml"
    profile.write_text(
        "profile: bad\njurisdiction: company\ntemplates:\n  silo:\n"
        "    - {id: silo, kind: critical_limit, channel: temp, severity: major,"
        " action: hold_lot, source: local rule}\n"
    )
    plan = tmp_path / "plant.yaml"
    plan.write_text(plant("bad.yaml"))

    with pytest.raises(PlanError) as caught:
        load_plan(plan)
    assert caught.value.path.endswith("bad.yaml")
    assert "set min, max or both" in str(caught.value)

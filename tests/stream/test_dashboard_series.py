"""What the dashboards draw beside the readings: the plan's limits as data, trucks' positions
joined from their two channels, and when each gateway was last heard from."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from milkguard.contract.v1 import Reading
from stream.dashboard_series import (
    SEEN_EVERY_MS,
    LimitLines,
    PositionJoin,
    SeenClock,
    plan_limits,
)
from stream.plan import LoadedPlan, load_plan, parse_plan
from stream.settings import StreamSettings
from tests.conftest import T0

PLANS = Path(__file__).parents[2] / "simulators" / "scenarios" / "plans"
US_PLANT = Path(__file__).parents[2] / "stream" / "plans" / "example-us-plant.yaml"


def limits_by_kind(plan: LoadedPlan) -> dict[tuple[str, str, str, str], float]:
    return {(x.asset, x.channel, x.kind, x.bound): x.value for x in plan_limits(plan)}


def test_an_htst_line_draws_the_pmo_legal_temperature_and_time_of_each_product_class() -> None:
    # PMO Section 1, HTST: 72 degC 15 s; +3 degC for rich products; eggnog 80 degC 25 s
    limits = limits_by_kind(load_plan(PLANS / "htst-us.yaml"))

    assert limits == {
        ("htst-1", "hold_temp", "legal_temperature", "min"): 72.0,
        ("htst-1", "hold_temp", "legal_temperature_rich", "min"): 75.0,
        ("htst-1", "hold_temp", "legal_temperature_eggnog", "min"): 80.0,
        ("htst-1", "holding_time_s", "legal_hold", "min"): 15.0,
        ("htst-1", "holding_time_s", "legal_hold_rich", "min"): 15.0,
        ("htst-1", "holding_time_s", "legal_hold_eggnog", "min"): 25.0,
    }


def test_a_farm_tank_draws_its_pmo_cooling_targets_and_blend_limit() -> None:
    # PMO: <= 10 degC within 4 h of the first milking's start, <= 7 degC within 2 h of the end
    # of each milking, and the blend <= 10 degC
    limits = limits_by_kind(load_plan(PLANS / "farm-us.yaml"))

    assert limits[("tank-1", "milk_temp", "cooling_reach_first_milking_start", "max")] == 10.0
    assert limits[("tank-1", "milk_temp", "cooling_reach_milking_end", "max")] == 7.0
    assert limits[("tank-1", "milk_temp", "blend", "max")] == 10.0


def test_receipt_uht_transport_and_critical_limits_each_give_their_bounds() -> None:
    plan = load_plan(US_PLANT)
    kinds = {(x.kind, x.bound) for x in plan_limits(plan)}
    uht = [x for x in plan_limits(plan) if x.kind == "f0"]

    assert {("receipt", "max"), ("f0", "min"), ("exposure_above", "max")} <= kinds
    assert ("critical_limit", "max") in kinds
    assert [(x.asset, x.channel, x.value) for x in uht] == [("uht-1", "f0_min", 3.0)]


def test_a_chinese_cold_chain_truck_draws_both_ends_of_its_2_to_6_degc_band() -> None:
    # GB 31605: raw milk transported at 2-6 degC
    limits = limits_by_kind(load_plan(PLANS / "route-two-farms-cn.yaml"))

    assert limits[("comp-1", "temp", "critical_limit", "min")] == 2.0
    assert limits[("comp-1", "temp", "critical_limit", "max")] == 6.0


def test_limits_are_written_at_the_first_judgement_and_again_in_every_interval() -> None:
    lines_of = LimitLines(load_plan(PLANS / "htst-us.yaml"), every_ms=300_000)
    written: list[list[str]] = []
    # T0 is on the 5-minute grid: each interval's points are stamped at its start
    for now in (T0 + 1_000, T0 + 2_000, T0 + 299_999, T0 + 300_000, T0 + 400_000, T0 + 600_500):
        lines: list[str] = []
        lines_of.due(now, lines)
        written.append(lines)

    assert [len(lines) for lines in written] == [6, 0, 0, 6, 0, 6]
    assert all(line.endswith(f" {T0}000000") for line in written[0])
    assert written[3][0].startswith("limit,site=plant-01,asset=htst-1,channel=hold_temp,")
    assert written[5][0].endswith(f" {T0 + 600_000}000000")


def fix(
    seconds: int, lat: float | None, lon: float | None, asset: str = "truck-07"
) -> list[Reading]:
    ts = T0 + seconds * 1000
    readings = [Reading("comp-1", "temp", 4.0, "degC", ts)]
    if lat is not None:
        readings.append(Reading(asset, "lat", lat, "deg", ts))
    if lon is not None:
        readings.append(Reading(asset, "lon", lon, "deg", ts))
    return readings


def positions(join: PositionJoin, *batches: list[Reading]) -> list[str]:
    lines: list[str] = []
    for readings in batches:
        join.lines("truck-07", "gw", readings, None, lines)
    return lines


def test_a_trucks_latitude_and_longitude_of_one_instant_make_one_position() -> None:
    join = PositionJoin(load_plan(PLANS / "route-two-farms-cn.yaml"))

    lines = positions(join, fix(0, 31.2, 121.4) + fix(30, 31.25, 121.45))

    assert join.sites == {"truck-07"}
    prefix = "position,site=truck-07,asset=truck-07,gateway=gw"
    assert lines == [
        f"{prefix} lat=31.2,lon=121.4 {T0}000000",
        f"{prefix} lat=31.25,lon=121.45 {T0 + 30_000}000000",
    ]


def test_halves_of_one_instant_in_two_batches_are_joined() -> None:
    join = PositionJoin(load_plan(PLANS / "route-two-farms-cn.yaml"))

    lines = positions(join, fix(0, 31.2, None), fix(0, None, 121.4))

    assert lines == [
        f"position,site=truck-07,asset=truck-07,gateway=gw lat=31.2,lon=121.4 {T0}000000"
    ]


def test_a_half_without_its_partner_of_the_same_instant_is_no_position() -> None:
    join = PositionJoin(load_plan(PLANS / "route-two-farms-cn.yaml"))

    lines = positions(join, fix(0, 31.2, None), fix(30, None, 121.4), fix(60, 95.0, 121.5))

    assert lines == []  # nor a latitude beyond the poles


def test_an_asset_without_both_channels_in_the_plan_is_not_joined() -> None:
    plan = parse_plan(
        b"""
plan: half-truck
jurisdiction: CN
assets:
  truck-07:
    site: truck-07
    kind: truck
    channels:
      lat: {unit: deg, interval_s: 30}
""",
        "half-truck.yaml",
    )
    join = PositionJoin(plan)

    assert join.sites == frozenset()
    assert positions(join, fix(0, 31.2, 121.4)) == []


def test_a_gateways_layout_is_looked_through_once_and_followed_while_it_holds() -> None:
    join = PositionJoin(load_plan(PLANS / "route-two-farms-cn.yaml"))
    first, second = fix(0, 31.2, 121.4), fix(30, 31.3, 121.5)
    layout = [(r.asset, r.channel, r.unit) for r in first]
    lines: list[str] = []

    join.lines("truck-07", "gw", first, layout, lines)
    join.lines("truck-07", "gw", second, layout, lines)

    assert [line.split(" ")[1] for line in lines] == ["lat=31.2,lon=121.4", "lat=31.3,lon=121.5"]


def test_a_gateway_is_seen_at_most_once_per_ten_seconds_of_receive_time() -> None:
    seen = SeenClock()
    lines: list[str] = []
    for received in (0, 2_000, 9_999, SEEN_EVERY_MS, 15_000, 20_500):
        seen.heard("farm-01", "gw", T0 + received, T0 + received - 800, lines)
    seen.heard("farm-01", "other-gw", T0 + 2_000, T0, lines)

    stamps = [line.rsplit(" ", 1)[1] for line in lines]
    assert stamps == [f"{T0 + ms}000000" for ms in (0, 10_000, 20_500, 2_000)]
    assert "lag_ms=800i" in lines[0]


@pytest.mark.parametrize("every_s", [0, -5, 86_401])
def test_a_limits_interval_outside_a_second_to_a_day_is_refused_naming_the_setting(
    every_s: float,
) -> None:
    with pytest.raises(ValidationError, match="limits_every_s"):
        StreamSettings(limits_every_s=every_s)

"""Silence, stuck sensors, implausible rates, lateness and restarts, as the plan states them."""

from __future__ import annotations

import pytest

from milkguard.contract.v1 import CipEnd, CipStart, Reading
from stream.engine import Engine
from tests.stream.engine.scenario import Scenario, at

PLAN = """
plan: channels
jurisdiction: company
allowed_lateness_s: 30
silence_factor: 3
assets:
  tank-1:
    site: farm-01
    kind: bulk_tank
    channels:
      milk_temp: {unit: degC, interval_s: 10, ccp: true}
rules:
  - id: tank-max-6
    kind: critical_limit
    ccp: CCP-FARM-1
    asset: tank-1
    channel: milk_temp
    max: 6.0
    sustained_s: 20
    severity: major
    action: alert
    source: "farm code: below 6 degC"
  - id: tank-probe-stuck
    kind: stuck_sensor
    asset: tank-1
    channel: milk_temp
    flat_for_s: 60
    severity: major
    action: alert
    source: "HACCP plan: a live probe never repeats exactly for a minute"
  - id: tank-probe-plausible
    kind: rate_of_change
    asset: tank-1
    channel: milk_temp
    max_per_min: 3.0
    severity: minor
    action: alert
    source: "HACCP plan: 6000 L of milk cannot change 3 degC in a minute"
"""


@pytest.fixture
def farm() -> Scenario:
    return Scenario(PLAN)


def tank(farm: Scenario, points: list[tuple[float, float]]) -> None:
    farm.samples("farm-01", "tank-1", "milk_temp", "degC", points)


# --- silence: monitoring lost -------------------------------------------------------------


def test_a_ccp_channel_silent_beyond_three_intervals_loses_monitoring_from_its_last_sample(
    farm: Scenario,
) -> None:
    tank(farm, [(0, 4.0), (10, 4.1)])
    farm.idle_until(10 + 40 + 30)  # no data: only the stream's clock moves

    (opened,) = farm.of("monitoring_lost")
    assert opened.kind == "opened"
    assert opened.deviation.start_ms == at(10)  # the last record: the product since is held
    assert opened.deviation.detected_ms == at(10 + 30)  # detected at last sample + 3 x 10 s
    assert opened.deviation.severity == "critical"  # a CCP channel

    tank(farm, [(95, 4.0)])
    farm.finish()
    closed = farm.of("monitoring_lost")[-1]
    assert (closed.kind, closed.deviation.end_ms) == ("closed", at(95))
    assert closed.deviation.time_beyond_s == 85.0  # from the last sample to the next


def test_a_gap_seen_only_when_data_resumes_is_still_a_loss_of_monitoring(farm: Scenario) -> None:
    tank(farm, [(0, 4.0), (10, 4.0), (100, 4.1)])
    farm.finish()

    changes = farm.of("monitoring_lost")
    assert [c.kind for c in changes] == ["opened", "closed"]
    assert (changes[0].deviation.start_ms, changes[1].deviation.end_ms) == (at(10), at(100))
    assert changes[0].deviation.detected_ms == at(40)


def test_a_gap_is_never_interpolated_into_compliance(farm: Scenario) -> None:
    # 5.0 before and after a 90 s hole: no reading says the milk stayed cold in between
    tank(farm, [(0, 5.0), (90, 5.0)])
    farm.finish()

    assert [c.kind for c in farm.of("monitoring_lost")] == ["opened", "closed"]


# --- stuck sensor ------------------------------------------------------------------------


def test_an_exact_flat_line_for_a_minute_is_unmonitored_from_where_it_began(
    farm: Scenario,
) -> None:
    tank(farm, [(0, 4.0), *[(s, 3.7) for s in range(10, 90, 10)], (90, 3.8)])
    farm.finish()

    opened, closed = farm.of("stuck_sensor")
    assert opened.deviation.start_ms == at(10)  # where 3.7 first appeared
    assert opened.deviation.detected_ms == at(70)  # 60 s of exactly 3.7
    assert closed.deviation.end_ms == at(90)
    assert closed.deviation.peak == 3.7


def test_a_live_probe_that_wobbles_is_not_stuck(farm: Scenario) -> None:
    tank(farm, [(s, 3.7 + (s // 10 % 2) * 0.01) for s in range(0, 200, 10)])
    farm.finish()

    assert farm.of("stuck_sensor") == []


# --- rate of change ----------------------------------------------------------------------


def test_a_spike_faster_than_physics_is_implausible_until_a_plausible_step(
    farm: Scenario,
) -> None:
    tank(farm, [(0, 4.0), (10, 4.1), (20, 9.0), (30, 4.2), (40, 4.3)])
    farm.finish()

    opened, closed = farm.of("rate_of_change")
    assert opened.deviation.start_ms == at(20)
    assert closed.deviation.end_ms == at(40)
    assert closed.deviation.peak == pytest.approx(4.9 * 6)  # 4.1 -> 9.0 in 10 s, per minute
    assert farm.of("critical_limit") == []  # 9.0 for one sample is not a sustained breach


# --- event time and lateness -------------------------------------------------------------


def test_readings_reordered_within_the_allowed_lateness_are_judged_at_their_timestamps(
    farm: Scenario,
) -> None:
    in_order, shuffled = Scenario(PLAN), Scenario(PLAN)
    points = [(0, 4.0), (10, 7.0), (20, 7.5), (30, 8.0), (40, 5.0), (50, 5.0)]
    tank(in_order, points)
    tank(shuffled, [points[i] for i in (0, 2, 1, 3, 5, 4)])
    in_order.finish()
    shuffled.finish()

    assert shuffled.changes == in_order.changes
    assert [c.kind for c in shuffled.of("critical_limit")] == ["opened", "closed"]
    assert shuffled.engine.counters.late == 0


def test_a_reading_behind_what_its_channel_judged_is_counted_and_reported(
    farm: Scenario,
) -> None:
    tank(farm, [(0, 4.0), (10, 4.0), (50, 4.0), (60, 4.0)])  # 10 s is judged once 50 s arrives
    tank(farm, [(5, 9.0)])

    assert farm.engine.counters.late == 1
    (notice,) = [n for n in farm.engine.take_notices() if n.kind == "late"]
    assert (notice.asset, notice.ts, notice.count) == ("tank-1", at(5), 1)


def test_a_breach_found_in_readings_that_arrived_late_is_flagged_as_detected_late(
    farm: Scenario,
) -> None:
    # the gateway buffered 20-40 s during an outage and sent them at 45 s, within the lateness
    tank(farm, [(0, 4.0), (10, 4.0)])
    late = [Reading("tank-1", "milk_temp", 8.0, "degC", at(s)) for s in (20, 30, 40)]
    farm.send("farm-01", late, received=at(75))
    farm.finish()

    opened = farm.of("critical_limit")[0]
    assert opened.deviation.detected_late


def test_a_silent_channel_releases_what_it_holds_once_it_is_idle(farm: Scenario) -> None:
    tank(farm, [(0, 9.0), (25, 9.0)])  # sustained 20 s breach, both samples held for lateness
    assert farm.of("critical_limit") == []

    farm.idle_until(25 + 31)  # idle for longer than the allowed lateness: judged now

    assert [c.kind for c in farm.of("critical_limit")] == ["opened"]


# --- restarts ----------------------------------------------------------------------------


def test_a_restart_mid_breach_opens_the_deviation_at_the_same_event_time(
    farm: Scenario,
) -> None:
    points = [(0, 4.0), (10, 7.0), (20, 7.5), (30, 8.0), (40, 8.0), (50, 5.0), (60, 5.0)]
    straight = Scenario(PLAN)
    tank(straight, points)
    straight.finish()

    tank(farm, points[:3])  # mid-breach: 10-20 s beyond, not yet sustained, some held
    snapshot = farm.engine.snapshot()
    restarted = Scenario(PLAN)
    restarted.engine = Engine.restore(farm.engine.plan, snapshot)
    restarted.changes = list(farm.changes)
    tank(restarted, points[3:])
    restarted.finish()

    assert restarted.changes == straight.changes
    assert restarted.engine.counters == straight.engine.counters


def test_a_snapshot_of_another_plan_version_is_refused(farm: Scenario) -> None:
    other = Scenario(PLAN.replace("max: 6.0", "max: 5.0"))

    with pytest.raises(ValueError, match="a changed plan starts from fresh state"):
        Engine.restore(other.engine.plan, farm.engine.snapshot())


# --- cleaning in place -------------------------------------------------------------------


def cip(farm: Scenario, kind: type[CipStart] | type[CipEnd], seconds: float) -> None:
    farm.engine.submit_events("farm-01", [kind(asset="tank-1", ts=at(seconds))])


def test_cleaning_in_place_suspends_the_product_limit_but_not_the_silence_check(
    farm: Scenario,
) -> None:
    tank(farm, [(0, 4.0), (10, 4.0)])
    cip(farm, CipStart, 15)
    tank(farm, [(20, 60.0), (30, 75.0), (40, 70.0)])  # hot cleaning solution, not milk
    farm.idle_until(40 + 40 + 30)  # and then the probe goes quiet during cleaning
    cip(farm, CipEnd, 150)
    tank(farm, [(160, 3.0)])
    farm.finish()

    assert farm.of("critical_limit") == []
    assert farm.of("rate_of_change") == []  # the jumps into and out of cleaning are cleaning
    assert [c.kind for c in farm.of("monitoring_lost")] == ["opened", "closed"]


def test_a_breach_open_when_cleaning_starts_ends_at_the_cleaning_start(farm: Scenario) -> None:
    tank(farm, [(0, 8.0), (10, 8.0), (20, 8.0), (30, 8.0)])
    cip(farm, CipStart, 35)
    tank(farm, [(40, 70.0)])
    farm.finish()

    opened, closed = farm.of("critical_limit")
    assert opened.deviation.start_ms == at(0)
    assert closed.deviation.end_ms == at(35)
    assert closed.deviation.degree_minutes == pytest.approx(2.0 * 35 / 60)


def test_a_cleaning_start_delivered_again_after_its_end_opens_no_second_window(
    farm: Scenario,
) -> None:
    cip(farm, CipStart, 15)
    cip(farm, CipEnd, 50)
    cip(farm, CipStart, 15)  # the bridge is at least once: the old start, once more
    tank(farm, [(0, 4.0), (10, 4.0), (60, 9.0), (70, 9.0), (80, 9.0), (90, 3.0)])
    farm.finish()

    opened, closed = farm.of("critical_limit")
    assert (opened.deviation.start_ms, closed.deviation.end_ms) == (at(60), at(90))


def test_an_event_for_readings_already_judged_is_counted_late(farm: Scenario) -> None:
    tank(farm, [(0, 4.0), (10, 4.0), (50, 4.0), (60, 4.0)])

    cip(farm, CipStart, 5)

    assert farm.engine.counters.late_events == 1

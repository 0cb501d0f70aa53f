"""HTST pasteurization as the PMO states it, judged over the pasteurizer's channels together."""

from __future__ import annotations

import pytest

from milkguard.contract.v1 import ProductChange, Reading
from stream.engine import Engine
from stream.engine.htst import fastest_particle_hold_s, fastest_to_mean
from stream.plan import Htst
from tests.stream.engine.scenario import Scenario, at

PLAN = """
plan: htst
jurisdiction: US
allowed_lateness_s: 0
assets:
  htst-1:
    site: plant-01
    kind: htst
    channels:
      hold_temp: {unit: degC, interval_s: 1, ccp: true}
      recorder_temp: {unit: degC, interval_s: 1}
      flow: {unit: L/h, interval_s: 1}
      fdd_forward: {unit: state, interval_s: 1, ccp: true}
rules:
  - id: past
    kind: htst
    ccp: CCP-PAST-1
    asset: htst-1
    indicating: hold_temp
    recorder: recorder_temp
    flow: flow
    flow_diversion: fdd_forward
    holding_tube: {diameter_m: 0.0483, length_m: 30}
    legal: {temp_c: 72.0, hold_s: 15}
    source: "PMO: HTST 72 degC for 15 s; +3 degC for fat >= 10 %"
"""


@pytest.fixture
def line() -> Scenario:
    return Scenario(PLAN)


def sample(seconds: float, channel: str, value: float) -> Reading:
    unit = {"hold_temp": "degC", "recorder_temp": "degC", "flow": "L/h", "fdd_forward": "state"}
    return Reading("htst-1", channel, value, unit[channel], at(seconds))  # type: ignore[arg-type]


def run(line: Scenario, *batches: list[Reading]) -> None:
    for batch in batches:
        line.send("plant-01", batch)
    line.finish()


def kinds(line: Scenario, kind: str) -> list[str]:
    return [c.kind for c in line.of(kind)]


def test_forward_flow_below_72_degrees_is_critical_at_the_first_sample(line: Scenario) -> None:
    run(
        line,
        [sample(0, "fdd_forward", 1), sample(0, "hold_temp", 72.5)],
        [sample(1, "hold_temp", 71.8)],
        [sample(2, "hold_temp", 72.3)],
    )

    opened, closed = line.of("htst_temperature")
    assert opened.deviation.start_ms == opened.deviation.detected_ms == at(1)
    assert (opened.deviation.severity, opened.deviation.action) == ("critical", "divert")
    assert opened.deviation.limit.min == 72.0
    assert closed.deviation.end_ms == at(2)
    assert closed.deviation.peak == 71.8


def test_below_72_degrees_while_diverted_is_the_diversion_device_doing_its_job(
    line: Scenario,
) -> None:
    run(line, [sample(0, "fdd_forward", 0), sample(0, "hold_temp", 71.0)])

    assert line.of("htst_temperature") == []


def test_a_switch_to_divert_ends_the_deviation_at_the_switch(line: Scenario) -> None:
    run(
        line,
        [sample(0, "fdd_forward", 1), sample(0, "hold_temp", 71.5)],
        [sample(0.4, "fdd_forward", 0), sample(1, "hold_temp", 71.0)],
    )

    assert kinds(line, "htst_temperature") == ["opened", "closed"]
    assert line.of("htst_temperature")[1].deviation.end_ms == at(0.4)


def test_the_diversion_state_is_joined_at_each_temperature_by_event_time(
    line: Scenario,
) -> None:
    # in the batch the temperature comes first, but the valve diverted half a second before it
    run(line, [sample(5.5, "hold_temp", 71.0), sample(5.0, "fdd_forward", 0)])

    assert line.of("htst_temperature") == []


def test_cream_raises_the_legal_minimum_by_3_degrees(line: Scenario) -> None:
    line.engine.submit_events(
        "plant-01", [ProductChange(asset="htst-1", ts=at(0), product="cream", fat_pct=35.0)]
    )
    run(line, [sample(0, "fdd_forward", 1), sample(1, "hold_temp", 74.0)])

    (opened,) = line.of("htst_temperature")
    assert opened.deviation.limit.min == 75.0


def test_a_flow_surge_shortening_the_holding_time_is_a_deviation_at_a_good_temperature(
    line: Scenario,
) -> None:
    run(
        line,
        [sample(0, "fdd_forward", 1), sample(0, "hold_temp", 73.0), sample(0, "flow", 10_000)],
        [sample(1, "flow", 11_000)],
        [sample(2, "flow", 10_000)],
    )

    opened, closed = line.of("htst_holding_time")
    assert opened.deviation.start_ms == at(1)
    assert opened.deviation.peak == pytest.approx(14.39, abs=0.01)  # seconds, fastest particle
    assert opened.deviation.action == "hold_lot"
    assert closed.deviation.end_ms == at(2)
    assert line.of("htst_temperature") == []
    holding = [(d.ts, round(d.value, 2)) for d in line.engine.derived]
    assert holding[1] == (at(1), 14.39)  # every flow sample's holding time is kept
    assert [d.quantity for d in line.engine.derived] == ["holding_time_s"] * 3


def test_the_recorder_must_not_read_above_the_indicating_thermometer(line: Scenario) -> None:
    run(
        line,
        [sample(0, "hold_temp", 72.6), sample(0, "recorder_temp", 72.4)],
        [sample(1, "hold_temp", 72.6), sample(1, "recorder_temp", 72.9)],
        [sample(2, "hold_temp", 72.6), sample(2, "recorder_temp", 72.5)],
    )

    opened, closed = line.of("htst_recorder")
    assert opened.deviation.peak == pytest.approx(0.3)  # degrees above the official reading
    assert opened.deviation.severity == "major"
    assert closed.deviation.end_ms == at(2)


def test_the_product_in_force_and_valve_state_survive_a_restart(line: Scenario) -> None:
    line.engine.submit_events(
        "plant-01", [ProductChange(asset="htst-1", ts=at(0), product="cream", fat_pct=35.0)]
    )
    line.send("plant-01", [sample(0, "fdd_forward", 1), sample(0, "hold_temp", 76.0)])
    restarted = Engine.restore(line.engine.plan, line.engine.snapshot())
    line.engine = restarted

    run(line, [sample(1, "hold_temp", 74.5)])

    (opened,) = line.of("htst_temperature")
    assert opened.deviation.limit.min == 75.0


def test_fastest_to_mean_velocity_follows_the_reynolds_number() -> None:
    assert fastest_to_mean(1000) == 2.0
    assert fastest_to_mean(4000) == pytest.approx(1.33)
    assert fastest_to_mean(50_000) == 1.25
    assert 1.25 < fastest_to_mean(10_000) < 1.33


def test_holding_time_is_tube_volume_over_k_times_flow() -> None:
    rule = Htst.model_validate(
        {
            "kind": "htst",
            "id": "p",
            "asset": "a",
            "indicating": "t",
            "flow": "f",
            "flow_diversion": "d",
            "holding_tube": {"diameter_m": 0.0483, "length_m": 30},
            "source": "PMO",
        }
    )
    volume_l = 3.14159265 / 4 * 0.0483**2 * 30 * 1000

    assert fastest_particle_hold_s(rule, 10_000) == pytest.approx(volume_l / (1.25 * 10_000 / 3600))
    assert fastest_particle_hold_s(rule, 0) == float("inf")


def test_a_silent_recorder_whose_last_reading_waited_is_monitoring_lost_when_due() -> None:
    """PMO: the recording thermometer's chart is a required record. Its channel is judged
    together with the indicating thermometer's, so its last reading waits while the indicating
    gateway's backlog (10 s behind) comes in; once judged, its silence since is still
    "monitoring lost", raised as soon as it is due, not whenever another channel next falls
    silent."""
    line = Scenario(PLAN.replace("allowed_lateness_s: 0", "allowed_lateness_s: 2"))
    line.engine.submit("plant-01", "recorder-gw", [sample(0, "recorder_temp", 73.0)], at(0))
    line.engine.advance(at(0), line.changes)
    for second in range(0, 4):  # the indicating thermometer's gateway, 10 s behind
        line.send("plant-01", [sample(second, "hold_temp", 75.0)], received=at(second + 10))

    # at 13 s: silent since its reading at 0 s, past its 3 s limit and the 2 s allowed lateness
    lost = [c.kind for c in line.of("monitoring_lost") if c.deviation.channels == ["recorder_temp"]]
    assert lost == ["opened"]

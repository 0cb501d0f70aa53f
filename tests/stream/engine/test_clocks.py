"""Device clocks: offsets estimated from each batch, time-sync faults on CCP gateways, and joins
across devices on corrected time."""

from __future__ import annotations

from milkguard.contract.v1 import Reading
from stream.engine import DeviationChange, Engine
from stream.plan import parse_plan
from tests.stream.engine.scenario import at

PLAN = parse_plan(
    b"""
plan: clocks
jurisdiction: US
allowed_lateness_s: 5
clock_tolerance_s: 2
assets:
  htst-1:
    site: plant-01
    kind: htst
    channels:
      hold_temp: {unit: degC, interval_s: 1, ccp: true}
      fdd_forward: {unit: state, interval_s: 1, ccp: true}
  room-1:
    site: plant-01
    kind: room
    channels:
      rh: {unit: '%RH', interval_s: 10}
rules:
  - id: past
    kind: htst
    asset: htst-1
    indicating: hold_temp
    flow_diversion: fdd_forward
    source: "PMO: 72 degC in forward flow"
""",
    "clocks.yaml",
)


def batch(
    engine: Engine, device: str, readings: list[Reading], *, offset_s: float, received_s: float
) -> None:
    """A batch from a gateway whose clock is ``offset_s`` ahead, received at ``received_s``."""
    received = at(received_s)
    engine.clock("plant-01", device, received + round(offset_s * 1000) - 40, received)
    engine.submit("plant-01", device, readings, received)


def test_a_ccp_gateway_ten_seconds_ahead_is_a_time_sync_fault_until_corrected() -> None:
    engine = Engine(PLAN)
    out: list[DeviationChange] = []
    # corrected at 4 s; recognized once the old differences leave the 32-batch window, since a
    # step down cannot be told from slow batches (a broker's backlog after a restart)
    for second in range(40):
        ahead = 10.0 if second < 4 else 0.0
        reading = Reading("htst-1", "hold_temp", 73.0, "degC", at(second + ahead))
        batch(engine, "htst-gw", [reading], offset_s=ahead, received_s=second)
        engine.advance(at(second), out)

    changes = [c for c in out if c.deviation.kind == "time_sync"]
    assert [c.kind for c in changes] == ["opened", "closed"]
    opened = changes[0].deviation
    assert (opened.asset, opened.channels) == ("htst-gw", ["clock"])
    assert opened.peak is not None
    assert 9.9 < opened.peak < 10.0  # the estimate: offset less the fastest batch's delay
    assert changes[1].deviation.end_ms == at(4 + 32 - 1)


def test_a_gateway_of_no_ccp_channel_is_not_held_to_the_tolerance() -> None:
    engine = Engine(PLAN)
    out: list[DeviationChange] = []
    for second in range(6):
        reading = Reading("room-1", "rh", 50.0, "%RH", at(second + 30))
        batch(engine, "room-gw", [reading], offset_s=30, received_s=second)
        engine.advance(at(second), out)

    assert [c for c in out if c.deviation.kind == "time_sync"] == []
    assert engine.offset_ms("room-gw") > 29_000


def test_a_join_across_two_gateways_uses_corrected_time() -> None:
    # the valve's gateway runs 5 s ahead: it diverted at true time 5 s (stamped 10 s); the
    # temperature gateway is right: 71 degC at true time 7 s, after the divert, so no deviation
    engine = Engine(PLAN)
    out: list[DeviationChange] = []
    for second in range(4):
        batch(
            engine,
            "valve-gw",
            [Reading("htst-1", "fdd_forward", 1, "state", at(second + 5))],
            offset_s=5,
            received_s=second,
        )
        batch(
            engine,
            "temp-gw",
            [Reading("htst-1", "hold_temp", 73.0, "degC", at(second))],
            offset_s=0,
            received_s=second,
        )
        engine.advance(at(second), out)
    batch(
        engine,
        "valve-gw",
        [Reading("htst-1", "fdd_forward", 0, "state", at(10))],
        offset_s=5,
        received_s=5,
    )
    batch(
        engine,
        "temp-gw",
        [Reading("htst-1", "hold_temp", 71.0, "degC", at(7))],
        offset_s=0,
        received_s=7,
    )
    engine.flush(out)

    assert [c for c in out if c.deviation.kind == "htst_temperature"] == []


def test_a_deviation_carries_the_clock_offset_it_was_judged_with() -> None:
    engine = Engine(PLAN)
    out: list[DeviationChange] = []
    for second in range(3):
        temp = 71.0 if second == 2 else 73.0
        batch(
            engine,
            "htst-gw",
            [Reading("htst-1", "hold_temp", temp, "degC", at(second + 1))],
            offset_s=1,
            received_s=second,
        )
        engine.advance(at(second), out)
    engine.flush(out)

    (opened,) = [c for c in out if c.deviation.kind == "htst_temperature" and c.kind == "opened"]
    assert 900 < opened.deviation.clock_offset_ms <= 1000


def test_detected_late_compares_arrival_and_sampling_on_the_same_clock() -> None:
    # a gateway 10 min behind, sending promptly: its data is on time, not late
    engine = Engine(PLAN)
    out: list[DeviationChange] = []
    for second in range(8):
        temp = 71.0 if second >= 5 else 73.0
        stamp = at(second - 600)
        batch(
            engine,
            "htst-gw",
            [Reading("htst-1", "hold_temp", temp, "degC", stamp)],
            offset_s=-600,
            received_s=second,
        )
        engine.advance(at(second), out)
    engine.flush(out)

    (opened,) = [c for c in out if c.deviation.kind == "htst_temperature" and c.kind == "opened"]
    assert not opened.deviation.detected_late
    assert opened.deviation.clock_offset_ms < -599_000


def test_a_ccp_gateway_reporting_its_clock_unsynchronised_is_a_time_sync_fault() -> None:
    # arrival times look fine, but the gateway's own time service has not locked: its offset
    # is unknown, and so is every timestamp it stamps
    engine = Engine(PLAN)
    out: list[DeviationChange] = []
    for second in range(10):
        synced = second >= 6
        reading = Reading("htst-1", "hold_temp", 73.0, "degC", at(second))
        received = at(second)
        engine.clock("plant-01", "htst-gw", received - 40, received, synced)
        engine.submit("plant-01", "htst-gw", [reading], received)
        engine.advance(received, out)

    changes = [c for c in out if c.deviation.kind == "time_sync"]
    assert [c.kind for c in changes] == ["opened", "closed"]
    assert changes[0].deviation.clock_synced is False
    assert changes[0].deviation.start_ms == at(2)  # after the estimate's first 3 batches
    assert changes[1].deviation.end_ms == at(6)


def test_a_gateway_clock_report_survives_a_snapshot() -> None:
    engine = Engine(PLAN)
    engine.clock("plant-01", "htst-gw", at(0), at(0), False)
    again = Engine.restore(PLAN, engine.snapshot())
    assert again._clocks["htst-gw"].synced is False

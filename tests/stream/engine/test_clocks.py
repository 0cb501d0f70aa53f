"""Device clocks: offsets estimated from each batch, time-sync faults on CCP gateways, and joins
across devices on corrected time."""

from __future__ import annotations

import msgspec
from cryptography.hazmat.primitives.asymmetric import ed25519

from milkguard.contract.v1 import Reading
from milkguard.signing import Signer, Verifier, seal, unseal
from stream.engine import DeviationChange, Engine
from stream.engine.clocks import DeviceClock
from stream.engine.deviation import DeviceTime, deviation_record
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
    assert opened.causes == ["offset_beyond_tolerance"]
    assert opened.time_base == "stream"  # judged on receive times


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
    assert [c.deviation.causes for c in changes] == [["gateway_unsynchronised"]] * 2


def test_a_time_sync_fault_names_both_causes_when_both_hold() -> None:
    """A CCP gateway that reports its clock unsynchronised, and whose clock then runs 10 s
    ahead: the deviation opened for the report closes naming both causes, in the record and
    on the wire."""
    engine = Engine(PLAN)
    out: list[DeviationChange] = []
    for second in range(8):
        ahead_ms = 10_000 if second >= 5 else 0
        received = at(second)
        engine.clock("plant-01", "htst-gw", received + ahead_ms - 40, received, False)
        reading = Reading("htst-1", "hold_temp", 73.0, "degC", received + ahead_ms)
        engine.submit("plant-01", "htst-gw", [reading], received)
        engine.advance(received, out)
    for second in range(8, 48):  # back in sync and locked: closes once the window forgets
        received = at(second)
        engine.clock("plant-01", "htst-gw", received - 40, received, True)
        engine.advance(received, out)

    opened, closed = [c for c in out if c.deviation.kind == "time_sync"]
    assert opened.deviation.causes == ["gateway_unsynchronised"]
    assert closed.deviation.causes == ["offset_beyond_tolerance", "gateway_unsynchronised"]
    assert deviation_record(closed).causes == closed.deviation.causes


def test_a_gateway_clock_report_survives_a_snapshot() -> None:
    engine = Engine(PLAN)
    engine.clock("plant-01", "htst-gw", at(0), at(0), False)
    again = Engine.restore(PLAN, engine.snapshot())
    assert again._clocks["htst-gw"].synced is False


# PMO Item 16p: the indicating thermometer is the official record of the temperature, and the
# flow-diversion device must divert any milk below the legal temperature. Joined across two
# gateways, a breach is judged, and stamped, on one clock: the stream's.
SKEWED = parse_plan(
    b"""
plan: skewed
jurisdiction: US
allowed_lateness_s: 5
clock_tolerance_s: 5
assets:
  htst-1:
    site: plant-01
    kind: htst
    channels:
      hold_temp: {unit: degC, interval_s: 1, ccp: true}
      fdd_forward: {unit: state, interval_s: 1, ccp: true}
  uht-1:
    site: plant-01
    kind: uht
    channels:
      outlet_temp: {unit: degC, interval_s: 1, ccp: true}
      flow: {unit: L/h, interval_s: 1}
  silo-1:
    site: plant-01
    kind: silo
    channels:
      temp: {unit: degC, interval_s: 1}
rules:
  - id: silo-cold
    kind: critical_limit
    asset: silo-1
    channel: temp
    max: 7.0
    severity: major
    action: alert
    source: "PMO: raw milk stored at 7 degC or less"
  - id: past
    kind: htst
    ccp: CCP-PAST-1
    asset: htst-1
    indicating: hold_temp
    flow_diversion: fdd_forward
    legal: {temp_c: 72.0, hold_s: 15}
    source: "PMO Item 16p: 72 degC in forward flow"
  - id: sterile
    kind: uht
    ccp: CCP-UHT-1
    asset: uht-1
    outlet: outlet_temp
    flow: flow
    holding_tube: {diameter_m: 0.035, length_m: 12}
    min_f0: 3.0
    source: "commercial sterility: F0 >= 3 min"
""",
    "skewed.yaml",
)
THERMOMETER_AHEAD_MS = 4000
KIND = "htst_temperature"


def exact_batch(engine: Engine, device: str, readings: list[Reading], offset_ms: int) -> None:
    """A batch sent the instant the stream receives it (no network delay: the estimated offset
    is the clock's true one), at the stream time of its first reading less ``offset_ms``."""
    received = readings[0].ts - offset_ms
    engine.clock("plant-01", device, received + offset_ms, received)
    engine.submit("plant-01", device, readings, received)


def pasteurize(dip: range, *, divert_at: int | None = None) -> list[DeviationChange]:
    """20 s of an HTST run: the thermometer's gateway is 4 s fast, the valve's in sync. The
    indicating thermometer reads 71.0 degC in the seconds of ``dip`` (stream time) and 73.0
    otherwise; the valve is forward until ``divert_at``."""
    engine = Engine(SKEWED)
    out: list[DeviationChange] = []
    for second in range(20):
        forward = 0 if divert_at is not None and second >= divert_at else 1
        exact_batch(
            engine, "valve-gw", [Reading("htst-1", "fdd_forward", forward, "state", at(second))], 0
        )
        temp = 71.0 if second in dip else 73.0
        stamped = at(second) + THERMOMETER_AHEAD_MS
        thermometer = [Reading("htst-1", "hold_temp", temp, "degC", stamped)]
        exact_batch(engine, "temp-gw", thermometer, THERMOMETER_AHEAD_MS)
        engine.advance(at(second), out)
    engine.flush(out)
    return [c for c in out if c.deviation.kind == KIND]


def test_a_dip_on_a_fast_thermometer_gateway_is_stamped_on_the_stream_clock() -> None:
    """PMO Item 16p, clocks within tolerance: the indicating thermometer's gateway runs 4 s fast,
    the valve's is in sync. Below 72 degC for 5 s in forward flow is one htst_temperature
    deviation of 5 s, from the first sample below to the first back above, on the stream's
    clock; found in time; the record keeps the thermometer gateway's own times and offset."""
    changes = pasteurize(range(5, 10))

    assert [c.kind for c in changes] == ["opened", "closed"]
    closed = changes[1].deviation
    assert (closed.start_ms, closed.detected_ms, closed.end_ms) == (at(5), at(5), at(10))
    assert closed.time_beyond_s == 5.0
    assert not closed.detected_late
    assert closed.time_base == "stream"
    assert closed.clocks == [
        DeviceTime("temp-gw", 4000, raw_start_ms=at(9), raw_detected_ms=at(9), raw_end_ms=at(14))
    ]
    assert changes[0].deviation.clocks == [
        DeviceTime("temp-gw", 4000, raw_start_ms=at(9), raw_detected_ms=at(9))
    ]


def test_a_divert_from_the_gateway_in_sync_ends_the_dip_at_the_right_instant() -> None:
    """PMO Item 16p: the flow-diversion device diverts at stream time 8 s, in the middle of a dip
    that began at 5 s on the fast thermometer gateway: the deviation lasts 3 s, 5 s to 8 s, and
    is not closed before it began (nor flagged late for it). The end is the valve gateway's
    instant, and the record says so, with that gateway's own time and offset."""
    changes = pasteurize(range(5, 10), divert_at=8)

    assert [c.kind for c in changes] == ["opened", "closed"]
    closed = changes[1].deviation
    assert (closed.start_ms, closed.end_ms, closed.time_beyond_s) == (at(5), at(8), 3.0)
    assert not closed.detected_late
    assert closed.clocks == [
        DeviceTime("temp-gw", 4000, raw_start_ms=at(9), raw_detected_ms=at(9)),
        DeviceTime("valve-gw", 0, raw_end_ms=at(8)),
    ]


def test_a_skewed_joined_record_validates_and_verifies_signed() -> None:
    """The wire record of a joined deviation carries each device's raw times and offset, is
    valid against the contract, and its signed envelope verifies."""
    closed = pasteurize(range(5, 10), divert_at=8)[1]
    signer = Signer(ed25519.Ed25519PrivateKey.generate())
    verifier = Verifier([signer.public_pem().encode()])

    record = unseal(seal(deviation_record(closed), signer), verifier)

    assert record.record.time_base == "stream"
    assert record.record.start == "2026-11-22T10:00:05.000Z"
    assert [msgspec.to_builtins(c) for c in record.record.clocks] == [
        {
            "device": "temp-gw",
            "offset_ms": 4000,
            "raw_start": "2026-11-22T10:00:09.000Z",
            "raw_detected": "2026-11-22T10:00:09.000Z",
            "raw_end": None,
        },
        {
            "device": "valve-gw",
            "offset_ms": 0,
            "raw_start": None,
            "raw_detected": None,
            "raw_end": "2026-11-22T10:00:08.000Z",
        },
    ]


def test_an_open_skewed_deviation_keeps_its_device_times_across_a_restart() -> None:
    """A dip open on the fast thermometer gateway when the stream restarts is closed by the
    valve's divert after it, with the raw start it was opened with."""
    engine = Engine(SKEWED)
    out: list[DeviationChange] = []
    for second in range(8):
        temp = 71.0 if second >= 5 else 73.0
        valve = [Reading("htst-1", "fdd_forward", 1, "state", at(second))]
        exact_batch(engine, "valve-gw", valve, 0)
        thermometer = [Reading("htst-1", "hold_temp", temp, "degC", at(second) + 4000)]
        exact_batch(engine, "temp-gw", thermometer, 4000)
        engine.advance(at(second), out)
    engine.flush(out)
    again = Engine.restore(SKEWED, engine.snapshot())
    exact_batch(again, "valve-gw", [Reading("htst-1", "fdd_forward", 0, "state", at(8))], 0)
    again.flush(out)

    closed = [c.deviation for c in out if (c.kind, c.deviation.kind) == ("closed", KIND)]
    assert [(d.start_ms, d.end_ms, d.time_base) for d in closed] == [(at(5), at(8), "stream")]
    assert closed[0].clocks == [
        DeviceTime("temp-gw", 4000, raw_start_ms=at(9), raw_detected_ms=at(9)),
        DeviceTime("valve-gw", 0, raw_end_ms=at(8)),
    ]


def test_a_uht_parcel_on_a_fast_outlet_gateway_is_stamped_on_the_stream_clock() -> None:
    """UHT: the outlet thermometer's gateway runs 3 s fast, the flowmeter's is in sync; a
    parcel below F0 3 min at stream time 2 s is a deviation from 2 s to 3 s on the stream's
    clock, the outlet gateway's own times kept."""
    engine = Engine(SKEWED)
    out: list[DeviationChange] = []
    for second, temp in enumerate([140.0, 140.0, 135.0, 140.0, 140.0]):
        exact_batch(engine, "flow-gw", [Reading("uht-1", "flow", 6000, "L/h", at(second))], 0)
        outlet = [Reading("uht-1", "outlet_temp", temp, "degC", at(second) + 3000)]
        exact_batch(engine, "outlet-gw", outlet, 3000)
        engine.advance(at(second), out)
    engine.flush(out)

    opened, closed = [c.deviation for c in out if c.deviation.kind == "uht_lethality"]
    assert (closed.start_ms, closed.end_ms, closed.time_base) == (at(2), at(3), "stream")
    assert closed.clocks == [
        DeviceTime("outlet-gw", 3000, raw_start_ms=at(5), raw_detected_ms=at(5), raw_end_ms=at(6))
    ]
    assert opened.time_base == "stream"


def test_a_rule_of_one_channel_stays_on_its_device_clock() -> None:
    """A limit on one channel is judged on its device's own clock (one device: its durations
    are right on it, and its times match the device's own chart); the record says so, with the
    offset to the stream's clock."""
    engine = Engine(SKEWED)
    out: list[DeviationChange] = []
    for second in range(6):
        temp = 8.0 if second in (2, 3) else 6.0
        silo = [Reading("silo-1", "temp", temp, "degC", at(second) + 3000)]
        exact_batch(engine, "silo-gw", silo, 3000)
        engine.advance(at(second), out)
    engine.flush(out)

    opened, closed = [c.deviation for c in out if c.deviation.kind == "critical_limit"]
    assert opened.time_base == "device"
    assert (closed.start_ms, closed.end_ms, closed.time_base) == (at(5), at(7), "device")
    assert (closed.clocks, closed.clock_offset_ms) == ([], 3000)


def test_a_reading_is_judged_with_the_offset_in_force_when_its_batch_came() -> None:
    # a faster batch after it moves the estimate, but not for readings already received: the
    # same offset whether the stream judged them before that batch or after
    clock = DeviceClock()
    clock.heard(at(1) + 100, at(1))
    clock.heard(at(2) + 300, at(2))

    assert [clock.offset_when(at(s)) for s in (1, 1.5, 2, 3)] == [100, 100, 300, 300]


def test_batches_received_in_one_millisecond_share_the_first_ones_offset() -> None:
    # a backlog sent at once: its readings cannot be told apart by receive time, so whichever of
    # its batches the stream had taken in when it judged one must not matter
    clock = DeviceClock()
    clock.heard(at(1) + 100, at(1))
    clock.heard(at(2) + 300, at(2))
    clock.heard(at(2) + 500, at(2))

    assert clock.offset_when(at(2)) == 300
    assert clock.offset_when(at(2) + 1) == 500
    assert clock.offset_ms == 500


def test_the_offsets_in_force_survive_a_snapshot() -> None:
    engine = Engine(PLAN)
    engine.clock("plant-01", "htst-gw", at(1) + 100, at(1))
    engine.clock("plant-01", "htst-gw", at(2) + 300, at(2))

    again = Engine.restore(PLAN, engine.snapshot())

    assert [again._clocks["htst-gw"].offset_when(at(s)) for s in (1, 2)] == [100, 300]


def test_one_gateways_readings_keep_its_own_order_when_its_estimate_moves() -> None:
    """PMO Item 16p: the valve diverts at 5 s, the thermometer reads 71.0 degC at 6 s, both
    stamped by one gateway. Its next batch shows its clock 10 s fast (a batch that travelled
    fast, or a clock stepped): the readings of that batch are corrected by the new estimate,
    but one clock stamped both, so the temperature is still judged after the divert: product
    diverted, no deviation."""
    engine = Engine(SKEWED)
    out: list[DeviationChange] = []
    for second in range(6):
        valve = 0 if second == 5 else 1
        readings = [
            Reading("htst-1", "fdd_forward", valve, "state", at(second)),
            Reading("htst-1", "hold_temp", 73.0, "degC", at(second)),
        ]
        exact_batch(engine, "plant-gw", readings, 0)
    received = at(6)
    engine.clock("plant-01", "plant-gw", received + 10_000, received)
    engine.submit(
        "plant-01", "plant-gw", [Reading("htst-1", "hold_temp", 71.0, "degC", at(6))], received
    )
    engine.flush(out)

    assert [c for c in out if c.deviation.kind == KIND] == []
    assert engine._clocks["plant-gw"].offset_when(received) == 10_000


def test_a_backlogged_dip_on_a_fast_thermometer_gateway_is_found_late_on_the_stream_clock() -> None:
    """PMO Appendix H and Item 16p: the thermometer's gateway, 4 s fast, loses its link for
    10-12 s (stream time) while the temperature is 71.5 degC in forward flow, and sends those
    readings after 20 s of live data. The breach is raised, found late, 10 s to 13 s on the
    stream's clock (the valve's gateway's), with the thermometer gateway's own times beside."""
    engine = Engine(SKEWED)
    out: list[DeviationChange] = []
    for second in [*range(10), *range(13, 33)]:
        valve = [Reading("htst-1", "fdd_forward", 1, "state", at(second))]
        exact_batch(engine, "valve-gw", valve, 0)
        thermometer = [Reading("htst-1", "hold_temp", 73.0, "degC", at(second) + 4000)]
        exact_batch(engine, "temp-gw", thermometer, 4000)
        engine.advance(at(second), out)
    backlog = [Reading("htst-1", "hold_temp", 71.5, "degC", at(s) + 4000) for s in (10, 11, 12)]
    engine.clock("plant-01", "temp-gw", at(33) + 4000, at(33))
    engine.submit("plant-01", "temp-gw", backlog, at(33))
    engine.flush(out)

    closed = [c.deviation for c in out if (c.kind, c.deviation.kind) == ("closed", KIND)]
    assert [(d.start_ms, d.end_ms, d.detected_late) for d in closed] == [(at(10), at(13), True)]
    assert closed[0].clocks == [
        DeviceTime("temp-gw", 4000, raw_start_ms=at(14), raw_detected_ms=at(14), raw_end_ms=at(17))
    ]

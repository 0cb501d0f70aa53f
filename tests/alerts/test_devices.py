"""The device page's window on the gateways: their last status, their channels' latest reading
and per-minute series, bounded whatever they send; payloads off the contract or on another
gateway's topic are refused and counted."""

from __future__ import annotations

from alerts.devices import DeviceWindow
from milkguard.contract.v1 import (
    Batch,
    ClockState,
    GatewayStatus,
    Reading,
    SourceState,
    encode_batch,
    encode_status,
)

NOW_S = 1_795_341_600.0
NOW = int(NOW_S * 1000)
STATUS = "milkguard/v1/gw/plant-01/gw-1/status"
BATCH = "milkguard/v1/gw/plant-01/gw-1/batch"


def batch(*readings: tuple[str, str, float, int], gateway: str = "gw-1") -> bytes:
    return encode_batch(
        Batch(
            v=1,
            site="plant-01",
            gateway=gateway,
            seq=1,
            sent_at=NOW,
            readings=[
                Reading(asset=a, channel=c, value=v, unit="degC", ts=ts) for a, c, v, ts in readings
            ],
        )
    )


def window(**options: float) -> DeviceWindow:
    return DeviceWindow(clock=lambda: NOW_S, **options)  # type: ignore[arg-type]


def test_a_status_shows_state_backlog_failing_sources_alarm_and_clock() -> None:
    devices = window()
    status = GatewayStatus(
        v=1,
        site="plant-01",
        gateway="gw-1",
        state="offline",
        ts=NOW - 5000,
        backlog=12,
        alarm=True,
        clock=ClockState(synced=False, offset_ms=-850.0, source="kernel"),
        sources={"probe-a": SourceState(ok=True), "probe-b": SourceState(False, 3, "timeout")},
    )
    assert devices.take(STATUS, encode_status(status))

    [shown] = devices.gateways(lambda site: True)
    assert (shown["state"], shown["backlog"], shown["alarm"]) == ("offline", 12, True)
    assert shown["failing"] == ["probe-b"]
    clock = {"synced": False, "offset_ms": -850.0, "error_ms": None, "source": "kernel"}
    assert shown["clock"] == clock
    assert (shown["status_ts"], shown["last_seen_ms"]) == (NOW - 5000, NOW - 5000)  # a will
    assert devices.gateways(lambda site: site == "plant-02") == []


def test_last_seen_is_when_the_gateway_spoke_not_when_the_broker_handed_over_its_state() -> None:
    devices = window()
    offline = GatewayStatus(v=1, site="plant-01", gateway="gw-1", state="offline", ts=NOW - 9000)
    online = GatewayStatus(v=1, site="plant-01", gateway="gw-1", state="online", ts=NOW - 5000)

    devices.take(STATUS, encode_status(online), retained=True)  # on subscribing
    assert devices.gateways(lambda site: True)[0]["last_seen_ms"] == NOW - 5000
    devices.take(STATUS, encode_status(offline))  # its last will, published by the broker
    assert devices.gateways(lambda site: True)[0]["last_seen_ms"] == NOW - 5000
    devices.take(BATCH, batch(("tank-1", "temp", 4.0, NOW - 60_000)))  # it speaks: now
    assert devices.gateways(lambda site: True)[0]["last_seen_ms"] == NOW


def test_readings_become_the_latest_value_and_per_bucket_min_max_last() -> None:
    devices = window(bucket_s=60, window_s=3600)
    early = (("tank-1", "temp", 4.0, NOW - 150_000), ("tank-1", "temp", 6.0, NOW - 130_000))
    devices.take(BATCH, batch(*early))
    devices.take(BATCH, batch(("tank-1", "temp", 5.0, NOW - 65_000), ("tank-1", "temp", 3.5, NOW)))
    devices.take(BATCH, batch(("tank-1", "temp", 9.0, NOW - 140_000)))  # late: not the latest

    found = devices.gateway("plant-01", "gw-1")
    assert found is not None
    [channel] = found["channels"]
    assert (channel["value"], channel["ts"]) == (3.5, NOW)
    series = channel["series"]
    minute = NOW // 60_000
    assert series["t"] == [(minute - 3) * 60.0, (minute - 2) * 60.0, minute * 60.0]
    assert series["min"] == [4.0, 5.0, 3.5]
    assert series["max"] == [9.0, 5.0, 3.5]
    assert series["last"] == [9.0, 5.0, 3.5]  # last taken, not latest stamped
    assert devices.latest("plant-01", "tank-1", "temp") == {
        "value": 3.5,
        "unit": "degC",
        "ts": NOW,
        "gateway": "gw-1",
    }


def test_buckets_older_than_the_window_fall_out() -> None:
    devices = window(bucket_s=60, window_s=180)  # three buckets
    devices.take(BATCH, batch(("tank-1", "temp", 1.0, NOW - 600_000)))
    devices.take(BATCH, batch(("tank-1", "temp", 2.0, NOW)))
    devices.take(BATCH, batch(("tank-1", "temp", 3.0, NOW - 400_000)))  # beyond: dropped

    found = devices.gateway("plant-01", "gw-1")
    assert found is not None
    assert found["channels"][0]["series"]["last"] == [2.0]


def test_gateways_and_channels_beyond_the_caps_are_counted_not_kept() -> None:
    devices = window(max_gateways=1, max_channels=2)
    devices.take(BATCH, batch(("a", "x", 1.0, NOW), ("a", "y", 1.0, NOW), ("a", "z", 1.0, NOW)))
    other = batch(("a", "x", 1.0, NOW), gateway="gw-2")
    devices.take("milkguard/v1/gw/plant-01/gw-2/batch", other)

    assert len(devices.gateways(lambda site: True)) == 1
    assert devices.counters()["channels_not_kept"] == 1
    assert devices.counters()["gateways_not_kept"] == 1


def test_payloads_off_the_contract_or_on_another_gateways_topic_are_refused() -> None:
    devices = window()
    assert not devices.take(BATCH, b'{"v": 1, "site": "plant-01"}')
    assert not devices.take(BATCH, b"\xff not json")
    assert not devices.take("milkguard/v1/gw/plant-01/gw-9/batch", batch(("a", "x", 1.0, NOW)))
    assert not devices.take("milkguard/v1/gw/plant-01/gw-1/other", batch(("a", "x", 1.0, NOW)))

    assert devices.refused == 3
    assert devices.gateways(lambda site: True) == []
    assert devices.version == 0

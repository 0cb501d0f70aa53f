"""Ingest of what the dashboards need: gateway status messages stored as ``gateway`` points
(hostile ones dead-lettered with the reason and counted like batches), and, with
``dashboards`` on, the plan's limits, trucks' positions and when each gateway was last seen."""

from __future__ import annotations

from pathlib import Path

import pytest

from milkguard.contract.v1 import (
    Batch,
    GatewayStatus,
    Reading,
    SourceState,
    batch_topic,
    encode_batch,
    encode_status,
    status_topic,
)
from stream.engine import Engine
from stream.ingest import Ingest
from stream.plan import load_plan
from stream.sinks.memory import MemoryDeadLetterSink, MemoryDeviationSink, MemoryTimeSeriesSink
from tests.conftest import T0

ROUTE = Path(__file__).parents[2] / "simulators" / "scenarios" / "plans" / "route-two-farms-cn.yaml"
SITE, GATEWAY = "truck-07", "truck-07-gw"
STATUS_TOPIC = status_topic(SITE, GATEWAY)


class Rig:
    def __init__(self, *, dashboards: bool = True, limits_every_ms: int = 300_000) -> None:
        self.series = MemoryTimeSeriesSink()
        self.deadletter = MemoryDeadLetterSink()
        self.ingest = Ingest(
            Engine(load_plan(ROUTE)),
            self.series,
            MemoryDeviationSink(),
            self.deadletter,
            dashboards=dashboards,
            limits_every_ms=limits_every_ms,
        )
        self.seq = 0

    def batch(self, received_ms: int, *readings: Reading) -> None:
        self.seq += 1
        payload = encode_batch(
            Batch(
                v=1,
                site=SITE,
                gateway=GATEWAY,
                seq=self.seq,
                sent_at=received_ms,
                readings=list(readings),
            )
        )
        self.ingest.handle(batch_topic(SITE, GATEWAY), payload, received_ms)

    def lines(self, measurement: str) -> list[str]:
        self.ingest.flush()
        return [line for line in self.series.lines if line.startswith(f"{measurement},")]

    def reasons(self) -> list[str]:
        return [letter.reason for letter in self.deadletter.letters]


def status(state: str = "online", ts: int = T0, **fields: object) -> GatewayStatus:
    return GatewayStatus(v=1, site=SITE, gateway=GATEWAY, state=state, ts=ts, **fields)  # type: ignore[arg-type]


def position_fix(seconds: int, temp: float = 4.0) -> list[Reading]:
    ts = T0 + seconds * 1000
    return [
        Reading("comp-1", "temp", temp, "degC", ts),
        Reading("truck-07", "lat", 31.2 + seconds / 10_000, "deg", ts),
        Reading("truck-07", "lon", 121.4, "deg", ts),
    ]


def test_a_gateway_status_is_one_gateway_point_at_its_own_time() -> None:
    rig = Rig()
    sources = {"probe-1": SourceState(ok=False, failures=3), "probe-2": SourceState(ok=True)}

    rig.ingest.handle(STATUS_TOPIC, encode_status(status(backlog=7, sources=sources)), T0 + 900)

    (line,) = rig.lines("gateway")
    assert line.startswith(f'gateway,site={SITE},gateway={GATEWAY} state="online",online=true,')
    assert "backlog=7i" in line
    assert 'failing_sources=1i,failing="probe-1"' in line
    assert line.endswith(f" {T0}000000")
    counters = rig.ingest.counters
    assert (counters.messages, counters.statuses, counters.batches) == (1, 1, 0)


def test_an_offline_last_will_made_at_connect_is_stamped_when_the_broker_sent_it() -> None:
    # the will's ts is the gateway's last connect; heartbeats came after it: the offline point
    # must come after them, or the last state a panel shows would still be "online"
    rig = Rig()
    rig.ingest.handle(STATUS_TOPIC, encode_status(status(ts=T0 + 60_000)), T0 + 60_050)
    rig.ingest.handle(STATUS_TOPIC, encode_status(status("offline", ts=T0)), T0 + 95_000)

    online, offline = rig.lines("gateway")
    assert online.endswith(f" {T0 + 60_000}000000")
    assert "online=false" in offline
    assert offline.endswith(f" {T0 + 95_000}000000")


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        (STATUS_TOPIC, b"{not json", "not valid JSON"),
        (STATUS_TOPIC, b"\xff\xfe", "not valid JSON"),
        (STATUS_TOPIC, b'{"v":1,"site":"truck-07"}', "not a gateway status"),
        (
            STATUS_TOPIC,
            encode_status(status()).replace(b'"v":1', b'"v":1,"extra":true'),
            "not a gateway status",
        ),
        (
            STATUS_TOPIC,
            encode_status(status()).replace(b'"backlog":0', b'"backlog":"many"'),
            "not a gateway status",
        ),
        (
            status_topic(SITE, "someone-else"),
            encode_status(status()),
            "the topic says site 'truck-07', gateway 'someone-else'",
        ),
        (STATUS_TOPIC, encode_status(status(ts=T0 + 3 * 3_600_000)), "ahead of its receive"),
        ("milkguard/v1/gw/truck-07/status", encode_status(status()), "not a status topic"),
    ],
)
def test_a_bad_status_is_dead_lettered_with_its_reason_and_counted_like_a_batch(
    topic: str, payload: bytes, reason: str
) -> None:
    rig = Rig()

    rig.ingest.handle(topic, payload, T0)

    (said,) = rig.reasons()
    assert reason in said
    assert rig.lines("gateway") == []
    counters = rig.ingest.counters
    assert counters.messages == counters.rejected_payloads == 1
    assert counters.readings_in_rejected_payloads == 0
    assert counters.statuses == 0


def test_every_message_is_counted_once_with_statuses_among_them() -> None:
    rig = Rig()
    rig.batch(T0, *position_fix(0))
    rig.ingest.handle(STATUS_TOPIC, encode_status(status()), T0)
    rig.ingest.handle(STATUS_TOPIC, b"[]", T0)

    c = rig.ingest.counters
    assert c.messages == c.batches + c.statuses + c.duplicates + c.rejected_payloads == 3


def test_a_status_the_bridge_forwarded_is_stored_by_its_mqtt_topic() -> None:
    rig = Rig()

    rig.ingest.handle_bridged_many([(encode_status(status(alarm=True)), T0 + 5, STATUS_TOPIC)])

    (line,) = rig.lines("gateway")
    assert "alarm=true" in line


def test_limits_positions_and_last_seen_are_written_beside_the_readings() -> None:
    rig = Rig(limits_every_ms=60_000)
    for second in range(0, 150, 30):
        rig.batch(T0 + second * 1000 + 200, *position_fix(second))

    limits = rig.lines("limit")
    positions = rig.lines("position")
    seen = rig.lines("seen")
    # written at the first judgement, then as the engine's clock enters each minute, stamped
    # at the minute's start
    assert sorted({line.rsplit(" ", 1)[1] for line in limits}) == [
        f"{T0 + ms}000000" for ms in (0, 60_000, 120_000)
    ]
    assert (
        "limit,site=truck-07,asset=comp-1,channel=temp,rule=cn-gb.comp-1.cold-chain,"
        f"kind=critical_limit,bound=max value=6.0 {T0}000000"
    ) in limits
    assert [line.rsplit(" ", 1)[1] for line in positions] == [
        f"{T0 + s * 1000}000000" for s in range(0, 150, 30)
    ]
    assert positions[0] == (
        f"position,site=truck-07,asset=truck-07,gateway={GATEWAY} lat=31.2,lon=121.4 {T0}000000"
    )
    assert len(seen) == 5  # batches 30 s apart: each one is 10 s after the last seen
    assert f"last_batch_ms={T0 + 200}i,lag_ms=200i" in seen[0]
    assert len(rig.lines("reading")) == 15  # the halves stay readings


def test_without_dashboards_only_readings_and_statuses_are_written() -> None:
    rig = Rig(dashboards=False)
    rig.batch(T0, *position_fix(0))
    rig.ingest.handle(STATUS_TOPIC, encode_status(status()), T0)

    rig.ingest.flush()
    measurements = {line.split(",", 1)[0] for line in rig.series.lines}
    assert measurements == {"reading", "gateway"}


def test_limits_are_written_again_by_the_clock_alone_when_no_data_comes() -> None:
    rig = Rig(limits_every_ms=60_000)
    rig.batch(T0, *position_fix(0))

    rig.ingest.tick(T0 + 59_000)
    rig.ingest.tick(T0 + 61_000)

    stamps = sorted({line.rsplit(" ", 1)[1] for line in rig.lines("limit")})
    assert stamps == [f"{T0}000000", f"{T0 + 60_000}000000"]

"""``milkguard run`` against a real Mosquitto and VictoriaMetrics (speaking the InfluxDB write
API): a gateway's retained status, taken at subscription, becomes a ``gateway`` point; a hostile
status is dead-lettered with its reason; the plan's limits, a truck's positions and when each
gateway was last seen are written beside the readings."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import pytest
from pydantic import SecretStr
from rich.console import Console

from edge.publisher import GatewayPublisher
from milkguard import mqtt as mqtt_connect
from milkguard.contract.v1 import GatewayStatus, Reading, SourceState, encode_status, status_topic
from milkguard.settings import MqttSettings
from stream.embedded import EmbeddedService
from stream.settings import InfluxSettings, StreamSettings
from tests.conftest import T0
from tests.helpers import wait_until
from tests.servers import Mosquitto, VictoriaMetrics

pytestmark = pytest.mark.integration

ROUTE = Path(__file__).parents[2] / "simulators" / "scenarios" / "plans" / "route-two-farms-cn.yaml"
SITE, GATEWAY = "truck-07", "truck-07-gw"
HOSTILE_SOURCE = 'probe "1",\n x=y\\'


def truck_fix(seconds: int, *, lon: bool = True) -> list[Reading]:
    ts = T0 + seconds * 1000
    readings = [
        Reading("comp-1", "temp", 4.0, "degC", ts),
        Reading("truck-07", "lat", 31.2 + seconds / 1000, "deg", ts),
    ]
    if lon:
        readings.append(Reading("truck-07", "lon", 121.4, "deg", ts))
    return readings


def exported(vm: VictoriaMetrics, name: str) -> list[dict[str, object]]:
    return [json.loads(row) for row in vm.export(name).splitlines()]


def test_gateway_status_limits_positions_and_last_seen_reach_the_store(
    mosquitto: Mosquitto, victoria_metrics: VictoriaMetrics, tmp_path: Path
) -> None:
    address = mqtt_connect.BrokerAddress(mosquitto.host, mosquitto.port)
    connection = mqtt_connect.connect(address, "test-truck-gw")
    now_ms = time.time_ns() // 1_000_000
    online = GatewayStatus(
        v=1,
        site=SITE,
        gateway=GATEWAY,
        state="online",
        ts=now_ms,
        backlog=5,
        alarm=True,
        sources={HOSTILE_SOURCE: SourceState(ok=False, failures=2), "ok": SourceState(ok=True)},
    )
    # retained before the stream runs: it gets it when it subscribes
    connection.publish(status_topic(SITE, GATEWAY), encode_status(online), retain=True)
    assert connection.wait_acknowledged(10)

    settings = StreamSettings(
        plan=ROUTE,
        data_dir=tmp_path / "var",
        simulators=False,
        mqtt=MqttSettings(broker="external", host=mosquitto.host, port=mosquitto.port),
        influx=InfluxSettings(
            url=victoria_metrics.url, token=SecretStr("token"), org="dairy", bucket="milkguard"
        ),
    )
    service = EmbeddedService(settings, Console(file=io.StringIO()))
    stop = threading.Event()
    thread = threading.Thread(target=service.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_until(
            lambda: service.ingest is not None and service.ingest.counters.statuses == 1,
            what="the retained status taken at subscription",
        )
        gateway = GatewayPublisher(connection, SITE, GATEWAY, first_seq=1)
        for seconds in (0, 30, 60):
            gateway.publish(truck_fix(seconds))
        gateway.publish(truck_fix(90, lon=False))  # half a position
        connection.publish(status_topic(SITE, "truck-08-gw"), b'{"v":1,"state":"on fire"}')
        assert gateway.drain()
        wait_until(
            lambda: (
                service.ingest is not None
                and service.ingest.counters.readings == 11
                and service.ingest.counters.rejected_payloads == 1
            ),
            what="the batches and the bad status",
        )
    finally:
        stop.set()
        thread.join(timeout=30)
        connection.close()
    assert not thread.is_alive()

    victoria_metrics.flush_index()
    (backlog,) = exported(victoria_metrics, "gateway_backlog")
    assert backlog["metric"] == {"__name__": "gateway_backlog", "site": SITE, "gateway": GATEWAY}
    assert backlog["values"] == [5]
    assert backlog["timestamps"] == [now_ms]
    (alarm,) = exported(victoria_metrics, "gateway_alarm")
    assert alarm["values"] == [1]
    (failing,) = exported(victoria_metrics, "gateway_failing_sources")
    assert failing["values"] == [1]

    (lats,) = exported(victoria_metrics, "position_lat")
    assert lats["metric"]["asset"] == "truck-07"
    assert lats["timestamps"] == [T0, T0 + 30_000, T0 + 60_000]  # not the half at 90 s
    (lons,) = exported(victoria_metrics, "position_lon")
    assert lons["values"] == [121.4, 121.4, 121.4]

    limits = exported(victoria_metrics, "limit_value")
    bounds = {
        (str(s["metric"]["asset"]), str(s["metric"]["kind"]), str(s["metric"]["bound"])): s[
            "values"
        ][0]
        for s in limits
    }
    assert bounds[("comp-1", "critical_limit", "max")] == 6.0  # GB 31605: 2-6 degC
    assert bounds[("comp-1", "critical_limit", "min")] == 2.0
    assert bounds[("tank-1", "cooling_reach_milking_end", "max")] == 4.0

    (seen,) = exported(victoria_metrics, "seen_lag_ms")
    assert seen["metric"]["gateway"] == GATEWAY
    assert 1 <= len(seen["values"]) <= 4  # at most one per 10 s of receive time

    # string fields are not kept by VictoriaMetrics: the local file has them, escaped
    lines = [
        line
        for path in (tmp_path / "var").glob("timeseries-*.lp")
        for line in path.read_text().splitlines()
    ]
    (status_line,) = [line for line in lines if line.startswith("gateway,")]
    assert 'state="online"' in status_line
    assert 'failing="probe \\"1\\",\\n x=y\\\\"' in status_line
    letters = [
        json.loads(line)
        for line in (tmp_path / "var" / "deadletter.jsonl").read_text().splitlines()
    ]
    (letter,) = letters
    assert letter["topic"] == status_topic(SITE, "truck-08-gw")
    assert letter["reason"].startswith("not a gateway status of wire contract v1")

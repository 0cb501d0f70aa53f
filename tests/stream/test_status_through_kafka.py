"""A gateway's status through the scaled-out path: Mosquitto, the bridge (which forwards the
retained status topics with the batches, marked by a header, and dead-letters a bad one), Kafka
(tansu), a worker, and VictoriaMetrics (the InfluxDB write API)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edge.publisher import GatewayPublisher
from milkguard import mqtt as mqtt_connect
from milkguard.contract.v1 import GatewayStatus, Reading, encode_status, status_topic
from stream.bridge import Bridge, KafkaTarget
from tests.conftest import T0
from tests.helpers import wait_until
from tests.kafka import consume_all, create_topics
from tests.servers import Mosquitto, Tansu, VictoriaMetrics, stop

pytestmark = pytest.mark.integration

ROUTE = Path(__file__).parents[2] / "simulators" / "scenarios" / "plans" / "route-two-farms-cn.yaml"
SITE, GATEWAY = "truck-07", "truck-07-gw"


def series(vm: VictoriaMetrics, name: str) -> list[dict[str, object]]:
    vm.flush_index()
    return [json.loads(row) for row in vm.export(name).splitlines()]


def test_a_worker_writes_the_status_the_bridge_forwarded(
    mosquitto: Mosquitto, tansu: Tansu, victoria_metrics: VictoriaMetrics, tmp_path: Path
) -> None:
    asyncio.run(
        create_topics(
            tansu.bootstrap,
            {"milkguard.batches": 1, "milkguard.deadletter": 1, "milkguard.deviations": 1},
        )
    )
    address = mqtt_connect.BrokerAddress(mosquitto.host, mosquitto.port)
    bridge = Bridge(address, KafkaTarget(tansu.bootstrap), "test-bridge")
    stop_bridge = threading.Event()
    runner = threading.Thread(target=bridge.run, args=(stop_bridge,), daemon=True)
    runner.start()
    assert bridge.ready.wait(30)
    env = {
        **os.environ,
        "MILKGUARD_PLAN": str(ROUTE),
        "MILKGUARD_DATA_DIR": str(tmp_path / "worker"),
        "MILKGUARD_KAFKA__BOOTSTRAP_SERVERS": tansu.bootstrap,
        "MILKGUARD_INFLUX__URL": victoria_metrics.url,
        "MILKGUARD_INFLUX__TOKEN": "test-token",
        "MILKGUARD_INFLUX__ORG": "dairy",
        "MILKGUARD_INFLUX__BUCKET": "milkguard",
        "MILKGUARD_WORKER__SESSION_TIMEOUT_S": "6",
        "MILKGUARD_WORKER__HEARTBEAT_INTERVAL_S": "1",
        "MILKGUARD_LOG_FORMAT": "json",
    }
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "milkguard", "worker"], env=env, stdout=log, stderr=log
    )
    connection = mqtt_connect.connect(address, "test-truck-gw")
    now_ms = time.time_ns() // 1_000_000
    try:
        status = GatewayStatus(
            v=1, site=SITE, gateway=GATEWAY, state="online", ts=now_ms, backlog=9
        )
        connection.publish(status_topic(SITE, GATEWAY), encode_status(status), retain=True)
        connection.publish(status_topic(SITE, "other-gw"), b"not a status")
        gateway = GatewayPublisher(connection, SITE, GATEWAY, first_seq=1)
        gateway.publish([Reading("comp-1", "temp", 4.0, "degC", T0)])
        assert gateway.drain(30)

        def landed() -> bool:
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            return bool(series(victoria_metrics, "gateway_backlog")) and bool(
                series(victoria_metrics, "limit_value")
            )

        wait_until(landed, 90, "the gateway point and the limits in VictoriaMetrics")
        letters = asyncio.run(consume_all(tansu.bootstrap, "milkguard.deadletter"))
    finally:
        stop(worker)
        stop_bridge.set()
        runner.join(timeout=30)
        connection.close()

    (backlog,) = series(victoria_metrics, "gateway_backlog")
    assert backlog["metric"] == {"__name__": "gateway_backlog", "site": SITE, "gateway": GATEWAY}
    assert backlog["values"] == [9]
    assert backlog["timestamps"] == [now_ms]
    (letter,) = map(json.loads, letters)  # the bridge refused the bad status, with the reason
    assert letter["topic"] == status_topic(SITE, "other-gw")
    assert letter["reason"].startswith("not valid JSON")
    assert bridge.counters.produced == 2  # the status and the batch

"""From sensor to deviation: the edge agent on a truck publishes through a real Mosquitto to
the stream service, survives a kill -9 on the way, and the stream judges every reading once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from tests.edge.conftest import GatewayRecorder
from tests.helpers import wait_until
from tests.servers import Mosquitto
from tests.stream.test_service_over_mosquitto import RunningService, service  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


def deviations(data_dir: Path) -> list[dict[str, object]]:
    path = data_dir / "deviations.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_a_truck_hatch_left_open_reaches_the_stream_as_one_deviation_through_a_kill_9(
    tmp_path: Path,
    mosquitto: Mosquitto,
    service: RunningService,  # noqa: F811
) -> None:
    recorder = GatewayRecorder(mosquitto.host, mosquitto.port, "edge-e2e-recorder")
    config = {
        "site": "truck-07",
        "gateway": "truck-07-gw",
        "data_dir": str(tmp_path / "edge"),
        "mqtt": {"host": mosquitto.host, "port": mosquitto.port},
        "batching": {"max_readings": 5, "max_delay_s": 0.5},
        "sources": [
            {
                "name": "compartments",
                "driver": "simulated",
                "model": "truck_compartment",
                "every_s": 0.25,
                "speed": 10,
                "noise": 0.0,
                "fault_after_s": 30,  # the hatch opens 3 s in
                "channels": [
                    {
                        "quantity": "temp_c",
                        "asset": "comp-2",
                        "channel": "temp",
                        "unit": "degC",
                        "limits": {"high": 6.0},
                    }
                ],
            }
        ],
    }
    config_file = tmp_path / "edge.yaml"
    config_file.write_bytes(msgspec.json.encode(config))
    command = [sys.executable, "-m", "milkguard", "edge", "run", "--config", str(config_file)]
    agent = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: service.counters()["readings"] >= 8, 30, "readings at the stream")
        os.kill(agent.pid, signal.SIGKILL)
        agent.wait(timeout=10)
        agent = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def opened() -> list[dict[str, object]]:
            return [
                d
                for d in deviations(service.data_dir)
                if d["rule_id"] == "cn-transport-max-comp-2" and d["change"] == "opened"
            ]

        wait_until(lambda: bool(opened()), 60, "the 2-6 °C deviation of comp-2")
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=30) == 0
    finally:
        if agent.poll() is None:
            agent.kill()

    unique = sum(len(b.readings) for b in recorder.deduped())
    wait_until(lambda: service.counters()["readings"] == unique, 30, "the stream to catch up")
    counters = service.counters()
    assert counters["rejected"] == 0
    assert counters["duplicates"] == recorder.raw_batches - len(recorder.deduped())
    (deviation,) = opened()
    assert deviation["asset"] == "comp-2"
    assert deviation["device"] == "truck-07-gw"
    recorder.close()

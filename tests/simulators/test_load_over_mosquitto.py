"""The load generator and scenario publishing, against a real Mosquitto: every batch arrives."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from milkguard import mqtt as mqtt_connect
from simulators.load import prepare, publish_paced
from simulators.runner import simulate
from simulators.scenario import load_scenario
from tests.helpers import TopicRecorder, wait_until
from tests.servers import Mosquitto

pytestmark = pytest.mark.integration

LIBRARY = Path(__file__).parents[2] / "simulators" / "scenarios"


def test_every_prepared_batch_reaches_the_broker_on_schedule(mosquitto: Mosquitto) -> None:
    address = mqtt_connect.BrokerAddress(mosquitto.host, mosquitto.port)
    recorder = TopicRecorder(address, "milkguard/v1/gw/#")
    messages = prepare(gateways=5, channels=4, rate_hz=10, seconds=2)
    connection = mqtt_connect.connect(address, "load-test")

    result = publish_paced(connection, messages, speed=4)
    connection.close()

    wait_until(lambda: len(recorder.payloads()) == len(messages), what="every batch")
    received = sum(len(body["readings"]) for body in recorder.payloads())
    recorder.close()
    assert received == result.readings == 5 * 4 * 10 * 2
    assert result.kept_up


@pytest.mark.e2e
def test_milkguard_load_prints_the_rate_it_achieved(mosquitto: Mosquitto) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "milkguard",
            "load",
            "--port",
            str(mosquitto.port),
            "--gateways",
            "4",
            "--channels",
            "5",
            "--rate-hz",
            "10",
            "--seconds",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert "published: 8 batches, 400 readings" in result.stdout
    assert "kept up" in result.stdout


@pytest.mark.e2e
def test_a_scenario_is_published_in_accelerated_time(mosquitto: Mosquitto) -> None:
    path = LIBRARY / "farm-stuck-probe.yaml"
    scenario, _ = load_scenario(path)
    expected = len(list(simulate(scenario)))
    recorder = TopicRecorder(
        mqtt_connect.BrokerAddress(mosquitto.host, mosquitto.port), "milkguard/v1/gw/#"
    )

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "milkguard",
            "simulate",
            str(path),
            "--mqtt",
            f"127.0.0.1:{mosquitto.port}",
            "--speed",
            "28800",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    wait_until(lambda: len(recorder.payloads()) == expected, what="every scenario batch")
    recorder.close()

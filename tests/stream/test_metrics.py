"""Prometheus scrapes what the stream saw: received, rejected, duplicates, late, deviations,
and the InfluxDB sink's writes and lag, live from a running `milkguard run`."""

from __future__ import annotations

import io
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from pydantic import SecretStr
from rich.console import Console

from edge.publisher import GatewayPublisher
from milkguard import mqtt as mqtt_connect
from milkguard.contract.v1 import Reading
from milkguard.settings import MqttSettings
from stream.embedded import EmbeddedService
from stream.settings import InfluxSettings, MetricsSettings, StreamSettings
from tests.conftest import T0
from tests.helpers import scrape, wait_until
from tests.servers import Mosquitto, VictoriaMetrics, free_port

pytestmark = pytest.mark.integration


def test_the_counters_of_a_running_stream_can_be_scraped(
    tmp_path: Path, mosquitto: Mosquitto, victoria_metrics: VictoriaMetrics
) -> None:
    port = free_port()
    settings = StreamSettings(
        data_dir=tmp_path / "var",
        simulators=False,
        mqtt=MqttSettings(broker="external", host=mosquitto.host, port=mosquitto.port),
        influx=InfluxSettings(
            url=victoria_metrics.url, token=SecretStr("t"), org="dairy", bucket="milk"
        ),
        metrics=MetricsSettings(port=port),
    )
    service = EmbeddedService(settings, Console(file=io.StringIO()))
    stop = threading.Event()
    thread = threading.Thread(target=service.run, args=(stop,), daemon=True)
    thread.start()
    wait_until(lambda: service.ingest is not None, what="the service to start")
    connection = mqtt_connect.connect(
        mqtt_connect.BrokerAddress(mosquitto.host, mosquitto.port), "metrics-truck"
    )
    truck = GatewayPublisher(connection, "truck-07", "truck-07-gw", first_seq=1)
    try:
        temps = [4.0, 6.5, 7.0, 7.5, 8.0, 5.0]
        for second, temp in enumerate(temps):
            truck.publish([Reading("comp-2", "temp", temp, "degC", T0 + second * 5_000)])
        truck.seq = 1  # the first batch again: a duplicate
        truck.publish([Reading("comp-2", "temp", 4.0, "degC", T0)])
        truck.publish_raw(b"{not json")
        truck.drain()

        wait_until(lambda: scrape(port).get("milkguard_payloads_rejected_total") == 1)
        wait_until(
            lambda: scrape(port).get("milkguard_sink_lines_written_total{sink=influxdb}", 0) > 0
        )
        metrics = scrape(port)
    finally:
        connection.close()
        stop.set()
        thread.join(timeout=30)

    assert metrics["milkguard_messages_received_total"] == 8
    assert metrics["milkguard_batches_received_total"] == 6
    assert metrics["milkguard_readings_received_total"] == 6
    assert metrics["milkguard_batches_duplicate_total"] == 1
    assert metrics["milkguard_deviations_total{change=opened}"] >= 1
    assert metrics["milkguard_sink_write_failures_total{sink=influxdb}"] == 0
    assert "milkguard_sink_buffered_lines{sink=influxdb}" in metrics
    # stopped: the port is released
    with pytest.raises(urllib.error.URLError):
        scrape(port)

"""The InfluxDB sink writes through influxdb-client to a real server speaking the v2 write API
(VictoriaMetrics), and keeps lines buffered while the server is down."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from milkguard.contract.v1 import Reading
from stream.lineprotocol import reading_line
from stream.sinks.influx import InfluxDBSink, InfluxWriteError
from tests.conftest import T0
from tests.servers import VictoriaMetrics, free_port, start_victoria_metrics, stop

pytestmark = pytest.mark.integration


def lines(count: int) -> list[str]:
    return [
        reading_line(
            "farm-01", "gw", Reading("tank-1", "milk_temp", 3.0 + i / 1000, "degC", T0 + i * 1000)
        )
        for i in range(count)
    ]


def exported_points(server: VictoriaMetrics) -> dict[int, float]:
    server.flush_index()
    points: dict[int, float] = {}
    for row in server.export('{__name__="reading_value"}').splitlines():
        series = json.loads(row)
        points.update(zip(series["timestamps"], series["values"], strict=True))
    return points


def test_every_line_lands_once_in_the_server(victoria_metrics: VictoriaMetrics) -> None:
    sink = InfluxDBSink(victoria_metrics.url, "token", "org", "bucket", batch_lines=1_000)
    sink.add(lines(2_500))
    sink.flush()
    sink.close()

    points = exported_points(victoria_metrics)
    assert len(points) == 2_500
    assert points[T0] == 3.0
    assert points[T0 + 2_499_000] == pytest.approx(5.499)
    assert sink.written == 2_500


def test_lines_stay_buffered_while_the_server_is_down_and_land_when_it_is_back(
    tmp_path: Path,
) -> None:
    port = free_port()
    sink = InfluxDBSink(f"http://127.0.0.1:{port}", "token", "org", "bucket", timeout_s=2)
    sink.add(lines(100))

    with pytest.raises(InfluxWriteError):
        sink.flush()
    assert sink.buffered == 100
    assert sink.failures == 1

    server = start_victoria_metrics_on(tmp_path, port)
    try:
        sink._next_try = 0.0  # skip the backoff wait rather than sleep in a test
        sink.flush()
        assert sink.buffered == 0
        assert len(exported_points(server)) == 100
    finally:
        sink.close()
        stop(server.process)


def start_victoria_metrics_on(directory: Path, port: int) -> VictoriaMetrics:
    server = start_victoria_metrics(directory, port=port)
    assert server.url.endswith(f":{port}")
    return server

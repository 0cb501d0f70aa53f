"""With InfluxDB configured, ``milkguard run`` acknowledges nothing InfluxDB has not confirmed:
while it is down the broker keeps the batches, and they reach it once it is back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import SecretStr

from stream.settings import InfluxSettings
from tests.helpers import wait_until
from tests.servers import Mosquitto, free_port, start_victoria_metrics, stop
from tests.stream.test_restarts_over_mosquitto import Stream, gateway, publish

pytestmark = pytest.mark.integration


def test_batches_are_acknowledged_only_once_influxdb_has_confirmed_their_lines(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    port = free_port()  # InfluxDB (VictoriaMetrics) will listen here, later
    stream = Stream(mosquitto, tmp_path / "var")
    stream.settings = stream.settings.model_copy(
        update={
            "influx": InfluxSettings(
                url=f"http://127.0.0.1:{port}", token=SecretStr("t"), org="dairy", bucket="milk"
            )
        }
    )
    service = stream.start()
    gw = gateway(mosquitto)
    publish(gw, 20)
    assert gw.drain()
    wait_until(lambda: service.ingest is not None and service.ingest.counters.batches == 20)
    stream.stop()  # InfluxDB never answered: nothing was acknowledged

    victoria = start_victoria_metrics(tmp_path, port)
    try:
        service = stream.start()
        wait_until(  # the broker sends the 20 batches again
            lambda: service.ingest is not None and service.ingest.counters.batches == 20,
            what="the batches InfluxDB had not confirmed",
        )
        stream.stop()
        victoria.flush_index()
        exported = [json.loads(line) for line in victoria.export("reading_value").splitlines()]
    finally:
        stop(victoria.process)
        gw.connection.close()

    stamps = sorted(t for series in exported for t in series["timestamps"])
    assert len(set(stamps)) == 20
    lines = [
        line
        for path in (tmp_path / "var").glob("timeseries-*.lp")
        for line in path.read_text().splitlines()
        if line.startswith("reading,")
    ]
    assert len(lines) == len(set(lines)) == 20  # cut back, then written once

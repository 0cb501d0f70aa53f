"""The InfluxDB sink writes through influxdb-client to a real server speaking the v2 write API
(VictoriaMetrics), keeps lines while the server is down, and sets aside what it refuses."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from milkguard.contract.v1 import Reading
from stream.errors import InfluxWriteError
from stream.lineprotocol import reading_line
from stream.sinks.influx import InfluxDBSink
from tests.conftest import T0
from tests.servers import VictoriaMetrics, free_port, start_victoria_metrics, stop


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


class Clock:
    """A clock the test moves, so backoff is checked without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.integration
def test_every_line_lands_once_in_the_server(
    victoria_metrics: VictoriaMetrics, tmp_path: Path
) -> None:
    sink = InfluxDBSink(
        victoria_metrics.url,
        "token",
        "org",
        "bucket",
        rejected_path=tmp_path / "rejected.lp",
        batch_lines=1_000,
    )
    assert sink.check_reachable()
    sink.add(lines(2_500))
    sink.flush()
    sink.close()

    points = exported_points(victoria_metrics)
    assert len(points) == 2_500
    assert points[T0] == 3.0
    assert points[T0 + 2_499_000] == pytest.approx(5.499)
    assert sink.written == 2_500


@pytest.mark.integration
def test_lines_stay_buffered_while_the_server_is_down_and_land_when_it_is_back(
    tmp_path: Path,
) -> None:
    port = free_port()
    clock = Clock()
    sink = InfluxDBSink(
        f"http://127.0.0.1:{port}",
        "token",
        "org",
        "bucket",
        rejected_path=tmp_path / "rejected.lp",
        max_buffer_lines=1_000,
        timeout_s=2,
        clock=clock,
    )
    assert not sink.check_reachable()
    sink.add(lines(1_000))

    with pytest.raises(InfluxWriteError, match="failed"):
        sink.flush()
    assert (sink.buffered, sink.failures, sink.saturated) == (1_000, 1, True)
    with pytest.raises(InfluxWriteError, match="backing off"):
        sink.flush()  # no second attempt before the backoff has passed
    assert sink.failures == 1

    server = start_victoria_metrics(tmp_path, port=port)
    try:
        clock.now += 1.0
        sink.flush()
        assert (sink.buffered, sink.saturated) == (0, False)
        assert len(exported_points(server)) == 1_000
    finally:
        sink.close()
        stop(server.process)


class RefusedError(Exception):
    """What influxdb-client's ApiException looks like to the sink: an HTTP status."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status


class RefusingWriteApi:
    def __init__(self, status: int) -> None:
        self.status = status
        self.calls = 0

    def write(self, **kwargs: object) -> None:
        self.calls += 1
        if self.calls == 1:
            raise RefusedError(self.status, "partial write: field type conflict")


def test_a_chunk_refused_for_good_is_set_aside_with_its_reason_and_the_rest_goes_on(
    tmp_path: Path,
) -> None:
    sink = InfluxDBSink(
        "http://127.0.0.1:9", "t", "o", "b", rejected_path=tmp_path / "rejected.lp", batch_lines=2
    )
    sink._write_api = RefusingWriteApi(400)
    sink.add(lines(4))

    sink.flush()

    assert (sink.rejected, sink.written, sink.buffered) == (2, 2, 0)
    text = (tmp_path / "rejected.lp").read_text().splitlines()
    assert text[0] == "# rejected by InfluxDB with HTTP 400: partial write: field type conflict"
    assert text[1:] == lines(2)


@pytest.mark.parametrize("status", [401, 403, 429, 503])
def test_a_status_that_can_pass_keeps_the_lines_for_a_retry(status: int, tmp_path: Path) -> None:
    sink = InfluxDBSink("http://127.0.0.1:9", "t", "o", "b", rejected_path=tmp_path / "rejected.lp")
    sink._write_api = RefusingWriteApi(status)
    sink.add(lines(3))

    with pytest.raises(InfluxWriteError):
        sink.flush()

    assert (sink.rejected, sink.buffered) == (0, 3)
    assert not (tmp_path / "rejected.lp").exists()


class HeldWriteApi:
    """Records every line written; the first write waits until the test lets it go on, as a
    write to a slow server does."""

    def __init__(self) -> None:
        self.written: list[str] = []
        self.first_started = threading.Event()
        self.first_may_end = threading.Event()

    def write(self, *, record: str, **kwargs: object) -> None:
        if not self.first_started.is_set():
            self.first_started.set()
            self.first_may_end.wait()
        self.written += record.split("\n")


def test_a_flush_begun_while_an_earlier_one_still_writes_loses_no_line(tmp_path: Path) -> None:
    """The worker flushes in a thread, and a checkpoint given up on (a rebalance's timeout)
    leaves its thread writing while the next checkpoint starts another: two writers of one
    buffer must not drop lines neither wrote."""
    sink = InfluxDBSink(
        "http://127.0.0.1:9", "t", "o", "b", rejected_path=tmp_path / "rejected.lp", batch_lines=4
    )
    api = HeldWriteApi()
    sink._write_api = api
    every = lines(20)
    sink.add(every[:10])
    slow = threading.Thread(target=sink.flush_through, args=(sink.added,))
    slow.start()
    assert api.first_started.wait(30)
    second = threading.Thread(target=sink.flush_through, args=(sink.added,))
    second.start()
    second.join(1.0)  # without a guard it is done by now; with one it waits for the first
    sink.add(every[10:])  # taken meanwhile
    api.first_may_end.set()
    slow.join()
    second.join()
    sink.flush()

    assert sorted(set(api.written)) == sorted(every)  # not one line dropped unwritten
    assert (sink.written, sink.buffered) == (len(every), 0)

"""``milkguard bench pipeline`` runs the real pipeline end to end and times every probe: each
probe reading's deviation change arrives where a consumer reads it, and the backlog is counted
in full. Figures are printed, never asserted (no timed assertions in tests)."""

from __future__ import annotations

import pytest

from milkguard_cli import main
from stream import pipeline_bench
from tests.servers import require_binary, tansu_binary

pytestmark = pytest.mark.integration

SMALL = {"gateways": 10, "channels": 10, "backlog_s": 10.0, "rate": 1000.0, "seconds": 2.0}


def test_the_embedded_pipeline_counts_the_backlog_and_times_every_probe() -> None:
    result = pipeline_bench.run(kafka=False, **SMALL)

    assert result.backlog_readings == 10 * 10 * 10
    assert result.probes == 20  # one every 100 ms for 2 s
    assert len(result.latencies_s) == result.probes  # every probe's deviation arrived
    assert all(latency > 0 for latency in result.latencies_s)


def test_the_kafka_pipeline_counts_the_backlog_and_times_every_probe() -> None:
    require_binary("mosquitto", "mosquitto")
    tansu_binary()

    result = pipeline_bench.run(kafka=True, workers=2, partitions=2, **SMALL)

    assert result.backlog_readings == 1000
    assert len(result.latencies_s) == result.probes == 20
    assert "2 milkguard worker process(es)" in result.mode


def test_the_command_prints_throughput_and_latency(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "pipeline", "--gateways", "5", "--channels", "10", "--backlog-s", "5"]

    assert main([*argv, "--rate", "500", "--seconds", "1"]) == 0

    printed = capsys.readouterr().out
    assert "readings/s end to end" in printed
    assert "p99" in printed
    assert "machine:" in printed

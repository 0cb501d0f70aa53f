"""``milkguard bench pipeline`` runs the real pipeline end to end beside raw Mosquitto on the
same batches and times every probe: each probe reading's deviation change arrives where a
consumer reads it, and every batch is counted in full on both sides. Figures are printed,
never asserted (no timed assertions in tests)."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from benchmarks import pipeline
from tests.servers import require_binary, tansu_binary

pytestmark = pytest.mark.integration

SMALL = {"gateways": 10, "channels": 10, "backlog_s": 10.0, "rate": 1000.0, "seconds": 2.0}


def test_milkguard_and_raw_mosquitto_carry_the_same_batches_and_every_probe_is_timed() -> None:
    require_binary("mosquitto", "mosquitto")

    result = pipeline.compare(gateways=4, channels=50, readings=4_000, rate=1000.0, seconds=2.0)

    assert [row.batch_readings for row in result.rows] == [50, 500]
    for row in result.rows:
        assert row.raw.readings == row.milkguard.readings == 4_000
        assert row.messages == 4_000 // row.batch_readings
        assert row.raw.seconds > 0
        assert row.milkguard.seconds > 0
    assert result.latency.probes == 20  # one every 100 ms for 2 s
    assert len(result.latency.latencies_s) == result.latency.probes  # every deviation arrived
    assert all(latency > 0 for latency in result.latency.latencies_s)


def test_the_kafka_pipeline_counts_the_backlog_and_times_every_probe() -> None:
    require_binary("mosquitto", "mosquitto")
    tansu_binary()

    result = pipeline.run(kafka=True, workers=2, partitions=2, **SMALL)

    assert result.backlog_readings == 1000
    assert len(result.latencies_s) == result.probes == 20
    assert "2 milkguard worker process(es)" in result.mode


def test_the_command_prints_both_throughputs_the_ratio_and_the_latency() -> None:
    require_binary("mosquitto", "mosquitto")
    out = io.StringIO()

    done = pipeline.main(
        gateways=2, readings=1_000, rate=500.0, seconds=1.0, console=Console(file=out, width=200)
    )

    assert done == 0
    printed = out.getvalue()
    assert "raw Mosquitto pub/sub, readings/s" in printed
    assert "MilkGuard end to end, readings/s" in printed
    assert "ratio (target >= 0.6)" in printed
    assert "p99 (target <= 20 ms)" in printed
    assert "machine:" in printed
    assert "load average" in printed

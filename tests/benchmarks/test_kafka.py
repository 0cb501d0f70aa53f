"""``bench pipeline --kafka``'s workers part runs ``milkguard worker`` processes and the plain
Faust agent on the same records over a real Kafka-protocol broker (tansu) and times each: every
reading is counted, the ratios are printed. Figures are printed, never asserted (no timed
assertions in tests)."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from benchmarks import kafka
from tests.servers import start_tansu, stop

pytestmark = pytest.mark.integration


def test_the_worker_and_the_plain_agent_judge_the_same_records_and_the_ratios_are_printed() -> None:
    tansu = start_tansu()
    out = io.StringIO()
    try:
        options = kafka.Options(
            sizes=(50,),
            readings=5_000,
            workers=(1, 2),
            gateways=10,
            partitions=2,
            bootstrap=tansu.bootstrap,
        )
        bench = kafka.main(options, console=Console(file=out, width=400))
    finally:
        stop(tansu.process)

    ran = [(run.contender, run.processes, run.per_message) for run in bench.runs]
    assert ran == [(kafka.PLAIN, 1, 50), (kafka.WORKER, 1, 50), (kafka.WORKER, 2, 50)]
    for run in bench.runs:  # timed from the first reading after the warm-up to the last
        assert 0 < run.readings <= 5_000 - 10 * 50
        assert run.seconds > 0
        assert 0 < run.busiest <= 1
    assert bench.runs[2].busiest < 1  # two workers split the partitions
    printed = out.getvalue()
    assert "50 readings/message: 1 worker = " in printed
    assert "2 workers = " in printed
    assert "load average" in printed

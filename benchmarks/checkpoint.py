"""What a checkpoint writes and costs: ``python -m benchmarks.checkpoint [SECONDS]``.

The engine bench's fleet (100 gateways x 50 channels at 1 Hz, messages of 500 readings) through
:meth:`stream.ingest.Ingest.handle_many`, one checkpoint per second of data as ``milkguard run``
takes them: the judged history appended to its journal (:mod:`stream.journal`), then the
checkpoint (a light engine snapshot, compressed) saved and fsynced in a temporary directory.
Beside it, the size and encoding time of the full snapshot (the history in it), which is what
every checkpoint wrote before the journal. Sinks otherwise in memory. Prints figures over the
second half of the run (the history is large by then); asserts nothing.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.engine import drained, fleet_messages, fleet_plan
from stream.checkpoint import (
    CHECKPOINT_FORMAT,
    Checkpoint,
    CheckpointFile,
    file_names,
    positions_of,
)
from stream.engine.core import Engine
from stream.ingest import Ingest
from stream.journal import HistoryJournal
from stream.sinks.memory import MemoryDeadLetterSink, MemoryDeviationSink, MemoryTimeSeriesSink

GATEWAYS, CHANNELS, PER_MESSAGE = 100, 50, 500
#: messages of 500 readings a checkpoint: 5,000 readings, one second of the fleet
PER_CHECKPOINT = GATEWAYS * CHANNELS // PER_MESSAGE


def main(seconds: int = 120) -> None:
    """Print the figures for ``seconds`` of the fleet's data."""
    loaded = fleet_plan(GATEWAYS, CHANNELS)
    messages = fleet_messages(GATEWAYS, CHANNELS, PER_MESSAGE, seconds)
    ingest = Ingest(
        Engine(loaded), MemoryTimeSeriesSink(), MemoryDeviationSink(), MemoryDeadLetterSink()
    )
    engine = ingest.engine
    rows: list[tuple[float, int, int]] = []  # seconds, checkpoint bytes, journal bytes
    with tempfile.TemporaryDirectory() as directory:
        home = Path(directory)
        store = CheckpointFile(home / "stream.checkpoint")
        journal = HistoryJournal(store.path)
        for chunk in drained(messages, PER_CHECKPOINT):
            ingest.handle_many(chunk)
            began, written = time.perf_counter(), journal.written
            journal.flush(engine)
            store.save(
                Checkpoint(
                    format=CHECKPOINT_FORMAT,
                    plan_version=loaded.version,
                    engine=engine.snapshot(history=False),
                    windows=ingest.windows(),
                    files=file_names(positions_of([journal]), home),
                )
            )
            journal.saved()
            took = time.perf_counter() - began
            rows.append((took, store.path.stat().st_size, journal.written - written))
        journal.close()
        begun = journal.begun
    began = time.perf_counter()
    full = engine.snapshot()
    full_s = time.perf_counter() - began
    late = rows[len(rows) // 2 :]
    print(f"{len(rows)} checkpoints, one a second of {GATEWAYS * CHANNELS:,} channels at 1 Hz")
    print(
        f"  each (second half): {statistics.median(r[1] for r in late):,.0f} B checkpoint + "
        f"{statistics.median(r[2] for r in late):,.0f} B journal (median), "
        f"{statistics.median(r[0] for r in late) * 1000:.1f} ms median, "
        f"{max(r[0] for r in late) * 1000:.1f} ms at most (with the fsyncs)"
    )
    print(f"  journal generations begun: {begun} (largest write {max(r[2] for r in rows):,} B)")
    print(f"  full snapshot (the history in it): {len(full):,} B, {full_s * 1000:.1f} ms to encode")
    print(f"  load average {os.getloadavg()}")


if __name__ == "__main__":
    main(*(int(arg) for arg in sys.argv[1:2]))

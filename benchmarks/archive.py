"""What the archive costs the live path: ``python -m benchmarks.archive [READINGS_PER_MESSAGE]``.

The engine bench's fleet (100 gateways x 50 channels at 1 Hz) through
:meth:`stream.ingest.Ingest.handle_many` in drains of 100 messages, as ``milkguard run`` hands
them over, with and without the archive; with it, the archive is written and fsynced every 500
messages, as a checkpoint does. Sinks otherwise in memory. Best of three runs each, interleaved,
in CPU seconds of this process (the kernel's share of the writes included) and wall seconds
(the fsyncs included). Prints figures; asserts nothing.
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.engine import drained, fleet_messages, fleet_plan
from stream.archive import ArchiveWriter
from stream.engine.core import Engine
from stream.ingest import Ingest
from stream.sinks.memory import MemoryDeadLetterSink, MemoryDeviationSink, MemoryTimeSeriesSink

GATEWAYS, CHANNELS, DRAIN, CHECKPOINT_EVERY = 100, 50, 100, 5


def main(per_message: int = 500) -> None:
    """Print the figures for messages of ``per_message`` readings."""
    loaded = fleet_plan(GATEWAYS, CHANNELS)
    seconds = max(60, 4 * per_message // CHANNELS)
    messages = fleet_messages(GATEWAYS, CHANNELS, per_message, seconds)
    warm, timed = messages[:GATEWAYS], messages[GATEWAYS:]
    chunks = list(drained(timed, DRAIN))

    def once(archived: bool, directory: Path) -> tuple[float, float, int]:
        archive = None
        if archived:
            archive = ArchiveWriter(directory, rotate_bytes=1 << 30, keep_days=1)
        ingest = Ingest(
            Engine(loaded),
            MemoryTimeSeriesSink(),
            MemoryDeviationSink(),
            MemoryDeadLetterSink(),
            archive=archive,
        )
        ingest.handle_many(warm)
        ingest.flush()
        gc.collect()
        cpu, wall = time.process_time(), time.perf_counter()
        for number, chunk in enumerate(chunks, start=1):
            ingest.handle_many(chunk)
            if number % CHECKPOINT_EVERY == 0:
                ingest.flush()
        ingest.flush()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        ingest.close()
        return cpu, wall, sum(p.stat().st_size for p in directory.glob("archive-*"))

    runs: dict[bool, list[tuple[float, float, int]]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as scratch:
        for attempt in range(3):
            for archived in (False, True):
                directory = Path(scratch) / f"{attempt}-{archived}"
                runs[archived].append(once(archived, directory))
    readings = len(timed) * per_message
    print(
        f"{len(timed):,} messages of {per_message} readings ({readings:,} readings), drains of "
        f"{DRAIN}, archive fsynced every {DRAIN * CHECKPOINT_EVERY} messages; "
        f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    base = min(r[0] for r in runs[False])
    for archived in (False, True):
        cpu = min(r[0] for r in runs[archived])
        wall = min(r[1] for r in runs[archived])
        size = runs[archived][0][2]
        print(
            f"archive {'on ' if archived else 'off'}: CPU {cpu:.3f} s "
            f"({readings / cpu:,.0f} readings/s, {cpu / base - 1:+.0%}), wall {wall:.3f} s, "
            f"archive {size / 1e6:,.1f} MB ({size / len(timed):,.0f} bytes a message)"
        )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 500)

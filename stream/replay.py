"""``milkguard replay``: judge recorded wire payloads (JSON lines) and write deviations.

Deterministic: the engine's clock is the data's own, so the same input always gives the same
output. A recorded batch has no receive time; it is taken as received at the replay clock
(:class:`stream.ingest.ReplayClock`: the newest ``sent_at`` so far, moved only forward and never
by one absurd stamp), and readings further ahead of that than the future tolerance are
quarantined, as live. The
output is one JSON object per deviation change, in the schema of ``deviation_to_json``
(README: "Deviation records").
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import msgspec
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from stream.engine.core import Engine
from stream.engine.deviation import DeviationChange, deviation_to_json
from stream.ingest import DEFAULT_FUTURE_TOLERANCE_MS, Ingest
from stream.plan import LoadedPlan
from stream.sinks.base import DeadLetter
from stream.sinks.files import JsonlDeadLetterSink, LineProtocolFileSink
from stream.sinks.memory import MemoryDeadLetterSink, MemoryTimeSeriesSink


class JsonLinesDeviationWriter:
    """Deviation changes to a text stream, one JSON object per line."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self._encoder = msgspec.json.Encoder()
        self.written = 0

    def emit(self, change: DeviationChange) -> None:
        """Write one change."""
        self._out.write(self._encoder.encode(deviation_to_json(change)).decode() + "\n")
        self.written += 1

    def flush(self) -> None:
        """Flush the stream."""
        self._out.flush()

    def close(self) -> None:
        """Flush; the stream belongs to the caller."""
        self._out.flush()


class _DiscardedSeries(MemoryTimeSeriesSink):
    """Replay without --timeseries: lines are not kept."""

    def flush(self) -> None:
        self.pending.clear()


class _FirstLetters(MemoryDeadLetterSink):
    """Replay without --deadletter: the first few letters, for the summary; not every one, or
    memory would grow with the file."""

    KEPT = 5

    def reject(self, letter: DeadLetter) -> None:
        if len(self.letters) < self.KEPT:
            self.letters.append(letter)


@dataclass(frozen=True, slots=True)
class ReplaySummary:
    """What a replay did."""

    lines: int
    batches: int
    readings: int
    deviation_changes: int
    rejected: int
    duplicates: int
    late: int
    first_rejections: list[DeadLetter]
    readings_duplicate: int = 0
    readings_in_rejected_payloads: int = 0
    readings_quarantined: int = 0
    events_quarantined: int = 0
    rejected_payloads: int = 0
    rejected_readings: int = 0
    capped: int = 0


def replay(
    loaded: LoadedPlan,
    source: IO[bytes],
    out: IO[str],
    *,
    name: str,
    deadletter: Path | None = None,
    timeseries: Path | None = None,
    progress_total: int | None = None,
    future_tolerance_ms: int = DEFAULT_FUTURE_TOLERANCE_MS,
) -> ReplaySummary:
    """Judge every payload of ``source``; write deviation changes to ``out``."""
    writer = JsonLinesDeviationWriter(out)
    rejected_memory = _FirstLetters()
    letters = JsonlDeadLetterSink(deadletter) if deadletter is not None else rejected_memory
    series = LineProtocolFileSink(timeseries) if timeseries is not None else _DiscardedSeries()
    ingest = Ingest(
        Engine(loaded),
        series,
        writer,
        letters,
        clock="event",
        future_tolerance_ms=future_tolerance_ms,
    )
    lines = 0
    with _progress(progress_total) as advance:
        for number, line in enumerate(_lines(source), start=1):
            lines = number
            ingest.handle_recorded(line, f"{name}:{number}")
            advance(len(line) + 1)
            if number % 10_000 == 0:
                ingest.flush()
    ingest.finish()
    ingest.close()
    counters = ingest.counters
    return ReplaySummary(
        lines=lines,
        batches=counters.batches,
        readings=counters.readings,
        deviation_changes=writer.written,
        rejected=counters.rejected_payloads + counters.rejected_readings,
        duplicates=counters.duplicates,
        late=ingest.engine.counters.late,
        first_rejections=rejected_memory.letters,
        readings_duplicate=counters.readings_duplicate,
        readings_in_rejected_payloads=counters.readings_in_rejected_payloads,
        readings_quarantined=counters.readings_quarantined,
        events_quarantined=counters.events_quarantined,
        rejected_payloads=counters.rejected_payloads,
        rejected_readings=counters.rejected_readings,
        capped=counters.capped,
    )


def _lines(source: IO[bytes]) -> Iterator[bytes]:
    for raw in source:
        line = raw.strip()
        if line:
            yield line


@contextmanager
def _progress(total: int | None) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr (bytes read) when it is a terminal and the size is known."""
    console = Console(stderr=True)
    if not total or not console.is_terminal:
        yield lambda size: None
        return
    columns = (TextColumn("replaying"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"))
    with Progress(*columns, TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task("replay", total=total)
        yield lambda size: bar.advance(task, size)


def open_source(path: str) -> tuple[IO[bytes], str, int | None]:
    """The input: a file, or ``-`` for standard input; with its name and size if known."""
    if path == "-":
        return sys.stdin.buffer, "stdin", None
    file = Path(path)
    return file.open("rb"), file.name, file.stat().st_size

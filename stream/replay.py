"""``milkguard replay``: judge recorded wire payloads (JSON lines) and write deviations.

Deterministic: the engine's clock is the data's own, so the same input always gives the same
output. A recorded batch has no receive time; it is taken as received at the replay clock
(:class:`stream.ingest.ReplayClock`: the newest ``sent_at`` so far, moved only forward and never
by one absurd stamp), and readings further ahead of that than the future tolerance are
quarantined, as live. The
output is one JSON object per deviation change, in the schema of ``deviation_to_json``
(README: "Deviation records").

:func:`replay_resumable` replays a file with the checkpoint discipline of the live runtime
(:mod:`stream.checkpoint`): every ``every_lines`` lines the outputs are fsynced and a checkpoint
(engine, duplicate windows, replay clock, counters, the outputs' sizes and the byte offset in the
input after the last line judged) is saved atomically. Run again with the same checkpoint after
a crash, it cuts the outputs back to the checkpoint's sizes and carries on at its offset: the
outputs are those of one uninterrupted replay, byte for byte. A finished replay run again
writes nothing more.
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

from milkguard.errors import ConfigError
from stream.checkpoint import (
    CHECKPOINT_FORMAT,
    Checkpoint,
    Checkpointer,
    CheckpointFile,
    PositionedFiles,
    file_names,
    file_paths,
    positions_of,
    restore_files,
)
from stream.engine.core import Engine, SnapshotMismatch
from stream.engine.deviation import DeviationChange, deviation_to_json
from stream.ingest import DEFAULT_FUTURE_TOLERANCE_MS, Ingest, IngestCounters
from stream.plan import LoadedPlan
from stream.sinks.base import DeadLetter
from stream.sinks.files import JsonlDeadLetterSink, JsonlDeviationSink, LineProtocolFileSink
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
    late_beyond_bound: int = 0  # of the late: older than late_judge_s, not judged
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
    return _summary(ingest, lines, writer.written, rejected_memory.letters)


def _summary(
    ingest: Ingest, lines: int, changes: int, first_rejections: list[DeadLetter]
) -> ReplaySummary:
    counters = ingest.counters
    return ReplaySummary(
        lines=lines,
        batches=counters.batches,
        readings=counters.readings,
        deviation_changes=changes,
        rejected=counters.rejected_payloads + counters.rejected_readings,
        duplicates=counters.duplicates,
        late=ingest.engine.counters.late,
        late_beyond_bound=ingest.engine.counters.late_beyond_bound,
        first_rejections=first_rejections,
        readings_duplicate=counters.readings_duplicate,
        readings_in_rejected_payloads=counters.readings_in_rejected_payloads,
        readings_quarantined=counters.readings_quarantined,
        events_quarantined=counters.events_quarantined,
        rejected_payloads=counters.rejected_payloads,
        rejected_readings=counters.rejected_readings,
        capped=counters.capped,
    )


class _CountedChanges(JsonlDeviationSink):
    """Deviation changes to a JSON-lines file, counted."""

    written = 0

    def emit(self, change: DeviationChange) -> None:
        super().emit(change)
        self.written += 1


def check_resumable(file: str, output: Path | None, checkpoint: Path) -> tuple[Path, Path]:
    """The input and output of a replay with ``--checkpoint``: a file (standard input cannot be
    read again from an offset) and an ``--output`` file (standard output cannot be cut back)."""
    if file == "-":
        raise ConfigError(
            f"--checkpoint {checkpoint} needs the recording as a file, not standard input: "
            "a resumed replay seeks to the byte where it stopped"
        )
    if output is None:
        raise ConfigError(
            f"--checkpoint {checkpoint} needs --output FILE: a resumed replay cuts its output "
            "back to the checkpoint, which standard output cannot be"
        )
    return Path(file), output


def replay_resumable(
    loaded: LoadedPlan,
    source: Path,
    output: Path,
    checkpoint: Path,
    *,
    deadletter: Path | None = None,
    timeseries: Path | None = None,
    future_tolerance_ms: int = DEFAULT_FUTURE_TOLERANCE_MS,
    every_lines: int = 10_000,
) -> ReplaySummary:
    """Replay ``source`` into ``output`` (deviation changes, JSON lines), carrying on from
    ``checkpoint`` when it exists (see the module). Raises :class:`ConfigError` when the
    checkpoint was made under another plan version, or ``source`` is shorter than where the
    checkpoint carries on (it was cut or replaced)."""
    # absolute, so the checkpoint names the same files whatever the working directory
    output, checkpoint = output.resolve(), checkpoint.resolve()
    deadletter = deadletter.resolve() if deadletter is not None else None
    timeseries = timeseries.resolve() if timeseries is not None else None
    store = CheckpointFile(checkpoint)
    saved = store.load()
    _check_carries_on(source, saved, checkpoint)  # before any output is cut back
    changes = _CountedChanges(output)
    rejected_memory = _FirstLetters()
    files: list[PositionedFiles] = [changes]
    letters: JsonlDeadLetterSink | _FirstLetters = rejected_memory
    if deadletter is not None:
        letters = JsonlDeadLetterSink(deadletter)
        files.append(letters)
    series: LineProtocolFileSink | _DiscardedSeries = _DiscardedSeries()
    if timeseries is not None:
        series = LineProtocolFileSink(timeseries)
        files.append(series)
    home = checkpoint.parent
    ingest = Ingest(
        _resumed_engine(loaded, saved, checkpoint),
        series,
        changes,
        letters,
        clock="event",
        future_tolerance_ms=future_tolerance_ms,
    )
    if saved is None:  # a replay from the start: the outputs start empty, as without a checkpoint
        sizes = {path: 0 for positioned in files for path in positioned.positions()}
    else:
        sizes = file_paths(saved.files, home)
    restore_files(files, sizes)
    offset, lines = _carry_on(ingest, changes, saved)
    if saved is not None and isinstance(letters, JsonlDeadLetterSink):
        letters.restore_budget(saved.extra)

    def state() -> Checkpoint:
        now, candidate = ingest.replay_clock.state()
        extra = {f"ingest.{k}": getattr(ingest.counters, k) for k in IngestCounters.__slots__}
        extra.update(lines=lines, changes=changes.written, clock_now=now)
        if candidate is not None:
            extra["clock_candidate"] = candidate
        if isinstance(letters, JsonlDeadLetterSink):
            extra.update(letters.budget_used())
        return Checkpoint(
            format=CHECKPOINT_FORMAT,
            plan_version=loaded.version,
            engine=ingest.engine.snapshot(),
            windows=ingest.windows(),
            files=file_names(positions_of(files), home),
            position=offset,
            extra=extra,
        )

    checkpointer: Checkpointer[int] = Checkpointer(
        store, make_durable=ingest.flush, state=state, acknowledge=lambda _: None
    )
    with source.open("rb") as data:
        data.seek(offset)
        for raw in data:
            offset += len(raw)
            line = raw.strip()
            if not line:
                continue
            lines += 1
            ingest.handle_recorded(line, f"{source.name}:{lines}")
            if lines % every_lines == 0:
                checkpointer.checkpoint()
    ingest.finish()
    checkpointer.checkpoint()
    ingest.close()
    return _summary(ingest, lines, changes.written, rejected_memory.letters)


def _check_carries_on(source: Path, saved: Checkpoint | None, checkpoint: Path) -> None:
    """Refuse a recording shorter than where ``saved`` carries on: cut or replaced since, it
    would replay nothing, or the middle of another recording, and say it finished."""
    size = source.stat().st_size
    if saved is not None and size < saved.position:
        raise ConfigError(
            f"{source} has {size:,} bytes, but checkpoint {checkpoint} carries on at byte "
            f"{saved.position:,}: the recording was cut or replaced since. Replay the recording "
            "the checkpoint was made from, or delete the checkpoint and the outputs to replay "
            "from the start"
        )


def _resumed_engine(loaded: LoadedPlan, saved: Checkpoint | None, checkpoint: Path) -> Engine:
    if saved is None:
        return Engine(loaded)
    try:
        return Engine.restore(loaded, saved.engine)
    except SnapshotMismatch as exc:
        raise ConfigError(
            f"checkpoint {checkpoint} was saved by a replay under plan version "
            f"{saved.plan_version}, not {loaded.version}: replay with the same plan, or "
            "delete the checkpoint and the outputs to replay from the start"
        ) from exc


def _carry_on(
    ingest: Ingest, changes: _CountedChanges, saved: Checkpoint | None
) -> tuple[int, int]:
    """Restore what the engine's snapshot does not hold; (byte offset, lines) to go on from."""
    if saved is None:
        return 0, 0
    extra = saved.extra
    ingest.restore_windows(saved.windows)
    ingest.replay_clock.restore(extra.get("clock_now", -1), extra.get("clock_candidate"))
    for name in IngestCounters.__slots__:
        setattr(ingest.counters, name, extra.get(f"ingest.{name}", 0))
    changes.written = extra.get("changes", 0)
    return saved.position, extra.get("lines", 0)


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

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
input after the last line judged) is saved atomically; the engine's judged history goes to a
journal beside it, as live (:mod:`stream.journal`). Run again with the same checkpoint after
a crash, it cuts the outputs back to the checkpoint's sizes and carries on at its offset: the
outputs are those of one uninterrupted replay, byte for byte. A finished replay run again
writes nothing more.
"""

from __future__ import annotations

import sys
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import msgspec
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from milkguard.contract.v1 import parse_batch_topic, parse_status_topic
from milkguard.errors import ConfigError
from stream.archive import (
    Bad,
    Header,
    Judge,
    Message,
    Record,
    Start,
    Tick,
    archive_files,
    bounded_lines,
    looks_like_archive,
    open_archive_file,
    read_records,
    resume,
    sized_lines,
)
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
from stream.engine.deviation import DeviationChange, deviation_to_json, iso_ms
from stream.ingest import DEFAULT_FUTURE_TOLERANCE_MS, Ingest, IngestCounters
from stream.journal import HistoryJournal
from stream.plan import LoadedPlan
from stream.sinks.base import DeadLetter, DeadLetterSink, DeviationSink, TimeSeriesSink
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
    #: what the reader of an archive noticed (a missing file, another plan version)
    notes: tuple[str, ...] = ()


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
    ingest: Ingest,
    lines: int,
    changes: int,
    first_rejections: list[DeadLetter],
    *,
    counters: IngestCounters | None = None,
    notes: tuple[str, ...] = (),
) -> ReplaySummary:
    counters = counters or ingest.counters
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
        notes=notes,
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
    journal = _journal(checkpoint, saved)
    ingest = Ingest(
        _resumed_engine(loaded, saved, checkpoint, journal.records),
        series,
        changes,
        letters,
        clock="event",
        future_tolerance_ms=future_tolerance_ms,
    )
    _cut_back(files, saved, home)
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
            engine=ingest.engine.snapshot(history=False),  # the history is in the journal
            windows=ingest.windows(),
            files=file_names(positions_of([*files, journal]), home),
            position=offset,
            extra=extra,
        )

    checkpointer: Checkpointer[int] = Checkpointer(
        store,
        make_durable=journal.durable_after(ingest.flush, ingest.engine),
        state=state,
        acknowledge=lambda _: None,
        on_saved=journal.saved,
    )
    with source.open("rb") as data:
        data.seek(offset)
        for raw, size in sized_lines(data):  # a line longer than any payload: its first bytes
            offset += size
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
    journal.close()
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


def _cut_back(files: list[PositionedFiles], saved: Checkpoint | None, home: Path) -> None:
    """The outputs cut back to the checkpoint's sizes, or emptied for a replay from the start
    (as without a checkpoint)."""
    if saved is None:
        sizes = {path: 0 for positioned in files for path in positioned.positions()}
    else:
        sizes = file_paths(saved.files, home)
    restore_files(files, sizes)


def _journal(checkpoint: Path, saved: Checkpoint | None) -> HistoryJournal:
    """The engine's judged history beside the checkpoint, cut back to it and read (before the
    engine restores)."""
    journal = HistoryJournal(checkpoint)
    if saved is not None:
        restore_files([journal], file_paths(saved.files, checkpoint.parent))
    return journal


def _resumed_engine(
    loaded: LoadedPlan, saved: Checkpoint | None, checkpoint: Path, history: list[bytes] | None
) -> Engine:
    if saved is None:
        return Engine(loaded)
    try:
        return Engine.restore(loaded, saved.engine, history=history)
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
    # a line longer than any archive record comes as its first bytes (dead-lettered as a
    # payload that is no batch), not held whole: a forged recording must not exhaust memory
    for raw in bounded_lines(source):
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


class _ArchiveReplay:
    """Hands an engine what an archive says the live service handed its own, in order.

    A file's header gives the state to start from (when it is the first file replayed, or the
    one before it is missing); a ``start`` record restarts the engine as the service did (from
    the snapshot of the state so far, or fresh); each drain of messages is judged as one, and
    each tick moves the clock. Lines that are not records are dead-lettered with their file
    and line; none stops the replay. Deviations still open at the end stay open, as live.
    """

    #: how far a receive time or tick may lie ahead of the one before it: beyond, the line is
    #: damaged or forged (a running service records a tick at least every few seconds, so only
    #: a ``start`` record, after an outage, may move time on by more)
    MAX_STEP_MS = 86_400_000

    def __init__(
        self,
        loaded: LoadedPlan,
        series: TimeSeriesSink,
        deviations: DeviationSink,
        letters: DeadLetterSink,
    ) -> None:
        self.loaded = loaded
        self._sinks = (series, deviations, letters)
        self.ingest: Ingest | None = None
        self._done = IngestCounters()  # of the ingests before a restart
        self._drain: list[tuple[str, bytes, int]] = []
        self._file = 0  # the number of the file being replayed
        self._last_ms = -1  # the time of the last record that had one
        self.lines = 0
        self._origin = ""  # the file and line of the record being replayed
        #: the header just read, while no record followed it (see :meth:`_header`)
        self._opening: tuple[Header, str] | None = None
        self.notes: list[str] = []

    def replay(self, records: Iterable[tuple[str, Record | Bad]], name: str) -> None:
        """Replay one archive file's records (with their origins, ``file:line``)."""
        for origin, record in records:
            self.lines += 1
            self._origin = origin
            if isinstance(record, Bad):
                self._reject(record)
            elif isinstance(record, Header):
                self._header(record, name)
                continue
            elif isinstance(record, Message):
                self._message(record)
            elif isinstance(record, Judge):
                self._judge()
            elif isinstance(record, Tick):
                self._tick(record)
            elif isinstance(record, Start):
                self._start(record)
            else:
                self._ingest().clocks_sent_from_ms = record.ms
            self._opening = None
        if self._drain:
            self.notes.append(f"{name} ends inside a drain: its last messages were judged alone")
            self._judge()

    def finish(self) -> tuple[Ingest, IngestCounters]:
        """Make the outputs durable; the last ingest and the counters of all of them."""
        ingest = self._ingest()
        ingest.flush()
        ingest.close()
        total = IngestCounters()
        for name in IngestCounters.__slots__:
            setattr(total, name, getattr(self._done, name) + getattr(ingest.counters, name))
        return ingest, total

    def _ingest(self) -> Ingest:
        if self.ingest is None:  # a first line that is no header: judge with the defaults
            self.ingest = self._new_ingest(Engine(self.loaded), DEFAULT_FUTURE_TOLERANCE_MS, [])
        return self.ingest

    def _new_ingest(
        self, engine: Engine, tolerance_ms: int, known: list[tuple[str, str]]
    ) -> Ingest:
        if self.ingest is not None:
            for name in IngestCounters.__slots__:
                kept = getattr(self._done, name) + getattr(self.ingest.counters, name)
                setattr(self._done, name, kept)
        series, deviations, letters = self._sinks
        self.ingest = Ingest(
            engine,
            series,
            deviations,
            letters,
            future_tolerance_ms=tolerance_ms,
            known_gateways=[tuple(pair) for pair in known],  # type: ignore[misc]
        )
        return self.ingest

    def _header(self, header: Header, name: str) -> None:
        before, self._file = self._file, header.file
        if header.plan_version != self.loaded.version:
            self.notes.append(
                f"{name} was written under plan {header.plan} version {header.plan_version}, "
                f"replayed under {self.loaded.version}: the verdicts may differ from live"
            )
        if self.ingest is not None and header.file == before + 1:
            # the state so far is the live one: carry on, as the service did at the rotation;
            # but a service that began this file as it started (its first record a ``start``)
            # restored the state its checkpoint held, which the header holds
            self._opening = (header, name)
            return
        if self.ingest is not None:
            self.notes.append(
                f"{name} is file {header.file} of its archive, but file {before} came before "
                "it: a file is missing; the replay carries on from this file's state"
            )
        self._from_header(header, name)

    def _from_header(self, header: Header, name: str) -> None:
        """Start from the state a file's header holds."""
        try:
            # a light snapshot with its history record (a file written before the record
            # existed holds the history in its snapshot, and an empty record)
            engine = Engine.restore(self.loaded, header.engine, history=[header.history])
        except Exception as exc:  # a damaged or forged header must not stop the replay
            self.notes.append(
                f"{name}: its header's engine state cannot be restored under this plan "
                f"({type(exc).__name__}: {exc}): the replay starts from a fresh engine"
            )
            engine = Engine(self.loaded)
        ingest = self._new_ingest(engine, header.future_tolerance_ms, header.known_gateways)
        ingest.restore_windows(header.windows)
        ingest.clocks_sent_from_ms = header.clocks_from

    def _in_step(self, ms: int, what: str, line: Record) -> bool:
        if self._last_ms < 0 or ms <= self._last_ms + self.MAX_STEP_MS:
            self._last_ms = ms
            return True
        self._refuse(
            line,
            f"{what} {ms} ({iso_ms(ms)}) is more than a day after the record before it "
            f"({iso_ms(self._last_ms)}), with no restart between: a damaged or forged line",
        )
        return False

    def _refuse(self, line: Record, why: str) -> None:
        """Dead-letter a record that decoded but cannot be replayed, naming its file and line."""
        origin = self._origin
        reason = f"archive {origin}: {why}; not replayed"
        self._reject(Bad(msgspec.json.encode(line), origin, reason))

    def _message(self, message: Message) -> None:
        if not self._in_step(message.received_ms, "receive time", message):
            return
        topic = message.topic
        if parse_batch_topic(topic) is None and parse_status_topic(topic) is None:
            self._refuse(
                message,
                f"topic {topic[:160]!r} is not a gateway batch topic nor a status topic "
                "(milkguard/v1/gw/{site}/{gateway}/batch or .../status)",
            )
            return
        self._drain.append((message.topic, message.raw(), message.received_ms))

    def _judge(self) -> None:
        drain, self._drain = self._drain, []
        if drain:
            self._ingest().handle_many(drain)

    def _tick(self, tick: Tick) -> None:
        if self._in_step(tick.now, "tick", tick):
            self._judge()  # none waits in a whole file: a tick follows a judge
            self._ingest().tick(tick.now)

    def _start(self, start: Start) -> None:
        self._last_ms = start.at  # after an outage of any length
        self._judge()
        if start.plan_version != self.loaded.version:
            self.notes.append(
                f"{self._origin}: the service started under plan version "
                f"{start.plan_version}, replayed under {self.loaded.version}: the verdicts "
                "may differ from live"
            )
        if self._opening is not None:
            self._from_header(*self._opening)
        before = self._ingest()
        restored = start.engine == "restored"
        engine = Engine(self.loaded)
        if restored:  # the service restored the state its checkpoint held: this state,
            # as the service restores it (a light snapshot, the history's releases as kept)
            engine = Engine.restore(
                self.loaded,
                before.engine.snapshot(history=False),
                history=[before.engine.history_record()],
            )
        resume(engine, restored, start.at)
        windows = before.windows() if start.windows == "restored" else {}
        ingest = self._new_ingest(engine, start.future_tolerance_ms, start.known_gateways)
        ingest.restore_windows(windows)

    def _reject(self, bad: Bad) -> None:
        self._ingest().reject_recorded(bad.line, bad.origin, max(self._last_ms, 0), bad.reason)


def archive_inputs(path: Path) -> list[Path]:
    """The archive files to replay: those of a directory in order, or the one file."""
    if path.is_dir():
        files = archive_files(path)
        if not files:
            raise ConfigError(
                f"{path} holds no archive files (archive-DAY-NUMBER.jsonl[.gz]): name the "
                "archive directory (archive.dir, default data_dir/archive) or a file"
            )
        return files
    return [path]


def is_archive(path: Path) -> bool:
    """True when ``path`` is an archive directory or file (judged by its first line)."""
    if path.is_dir():
        return True
    with open_archive_file(path) as data:
        # the header's first bytes say it; a forged first line may never end
        return looks_like_archive(data.readline(1024))


def replay_archive(
    loaded: LoadedPlan,
    files: list[Path],
    out: IO[str],
    *,
    deadletter: Path | None = None,
    timeseries: Path | None = None,
) -> ReplaySummary:
    """Replay archive files (in the order given) into ``out``: the deviation changes the live
    service wrote, line for line, when the plan is the one it ran."""
    writer = JsonLinesDeviationWriter(out)
    rejected_memory = _FirstLetters()
    letters = JsonlDeadLetterSink(deadletter) if deadletter is not None else rejected_memory
    series = LineProtocolFileSink(timeseries) if timeseries is not None else _DiscardedSeries()
    run = _ArchiveReplay(loaded, series, writer, letters)
    for path in files:
        try:
            run.replay(read_records(path), path.name)
        except (OSError, EOFError, zlib.error) as exc:  # a damaged gzip stream, a vanished file
            run.notes.append(f"{path}: read stopped early ({exc}); what came before is replayed")
    ingest, counters = run.finish()
    return _summary(
        ingest,
        run.lines,
        writer.written,
        rejected_memory.letters,
        counters=counters,
        notes=tuple(run.notes),
    )

"""Local file stores: line protocol for time series, JSON lines for deviations and dead letters.

Writes are buffered and made durable (write, flush, fsync) at each ``flush``. Each sink tells
its files' durable sizes (``positions``) for a runtime's checkpoint, and cuts its files back to a
checkpoint's sizes at start (``restore``): what was written after the checkpoint is judged and
written again, so every line is in the files once (:mod:`stream.checkpoint`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import msgspec

from stream.engine.deviation import DeviationChange, deviation_to_json
from stream.errors import NotWritten
from stream.sinks.base import DeadLetter, bounded, compacted

log = logging.getLogger(__name__)


def _utc_day() -> str:
    return datetime.now(tz=UTC).strftime("%Y-%m-%d")


def fsync_directory(directory: Path) -> None:
    """Make a rename, a new or a removed file in ``directory`` survive a power cut."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_size(path: Path) -> int:
    """The file's size in bytes, 0 when it does not exist."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def cut_back(sizes: Mapping[Path, int]) -> dict[Path, int]:
    """Cut each file back to its checkpointed size; return the bytes cut per file.

    What was written after the checkpoint comes again from the source and is written again, so
    it goes. A file shorter than its checkpointed size lost data some other way (deleted,
    rotated, restored from a backup): that is logged, and the file is left as it is.
    """
    cut: dict[Path, int] = {}
    for path, size in sizes.items():
        actual = durable_size(path)
        if path.is_symlink():
            # the checkpoint names the files it cuts: a link in a store's place must not make
            # the stream (root, maybe) cut the file it points at
            log.error(
                "checkpoint.file_is_a_link",
                extra={
                    "file": str(path),
                    "hint": "a store must be a plain file in the data directory; left uncut",
                },
            )
        elif actual > size:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
            try:
                os.ftruncate(fd, size)
                os.fsync(fd)
            finally:
                os.close(fd)
            cut[path] = actual - size
        elif actual < size:
            log.error(
                "checkpoint.file_shorter",
                extra={
                    "file": str(path),
                    "checkpointed_bytes": size,
                    "bytes": actual,
                    "hint": "the file was cut or replaced outside MilkGuard; what it lost is "
                    "not written again",
                },
            )
    return cut


class _DurableAppender:
    """Appends text lines to a file and fsyncs them on flush."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pending: list[str] = []
        self._file: IO[str] | None = None
        self._size = 0
        self._new = False  # created by this appender, its directory not yet fsynced

    @property
    def size(self) -> int:
        """Bytes of the file made durable (what a checkpoint records)."""
        return self._size if self._file is not None else durable_size(self.path)

    def append(self, line: str) -> None:
        self._pending.append(line)

    def extend(self, lines: Sequence[str]) -> None:
        self._pending.extend(lines)

    def flush(self) -> None:
        """Write and fsync what is pending; :class:`NotWritten` (all of it kept) if the disk
        refuses: what did reach the file is cut off, so the next flush writes each line once."""
        if not self._pending:
            return
        try:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._new = self._new or not self.path.exists()  # also after a failed try
                # never through a link: a store is a plain file of the data directory
                fd = os.open(
                    self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644
                )
                self._file = os.fdopen(fd, "a", encoding="utf-8")
                self._size = os.fstat(self._file.fileno()).st_size
            self._file.write("\n".join(self._pending) + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())
            if self._new:
                # a new file's name lasts a power cut only once its directory is fsynced; a
                # checkpoint counting its bytes must not name a file that may vanish
                fsync_directory(self.path.parent)
                self._new = False
            self._size = os.fstat(self._file.fileno()).st_size
        except OSError as exc:
            self._abandon()
            raise NotWritten(self.path, exc) from exc
        self._pending.clear()

    def _abandon(self) -> None:
        """Drop the open file and cut it back to its durable size (best effort: if that fails
        too, the restart cuts it back to the checkpoint)."""
        file, self._file = self._file, None
        if file is None:  # it did not even open: nothing of ours reached it
            return
        with contextlib.suppress(OSError):
            fd = os.dup(file.fileno())  # the file opened, not whatever the path names now
            try:
                with contextlib.suppress(OSError):
                    file.close()  # may write the rest of its buffer: cut below all the same
                os.ftruncate(fd, self._size)
            finally:
                os.close(fd)

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None


_DAY_FILE = re.compile(r"timeseries-\d{4}-\d{2}-\d{2}\.lp")


class LineProtocolFileSink:
    """Line protocol in ``DIR/timeseries-YYYY-MM-DD.lp``, one file per UTC day of writing."""

    def __init__(self, directory: Path, day: Callable[[], str] = _utc_day) -> None:
        self.directory = directory
        self._day = day
        self._current_day = ""
        self._appender: _DurableAppender | None = None
        self._pending: list[str] = []
        self._written: dict[Path, int] = {}  # day files flushed by this process: durable sizes
        # day files there before this process wrote any: a checkpoint names them all, so the
        # restart's "begun after the checkpoint" never takes an older file for a new one (a
        # clock that was behind at a checkpoint: a machine without a real-time clock at boot)
        self._found: dict[Path, int] | None = None
        self._writing = threading.Lock()  # one write at a time (see :meth:`write`)

    def positions(self) -> dict[Path, int]:
        """The durable size of today's file and of every day file this sink wrote to."""
        if self._found is None:
            self._found = self._day_files()
        return {
            **self._found,
            **self._written,
            self.path: self._written.get(self.path, durable_size(self.path)),
        }

    def _day_files(self) -> dict[Path, int]:
        if not self.directory.is_dir():
            return {}
        return {
            p: durable_size(p)
            for p in self.directory.glob("timeseries-*.lp")
            if _DAY_FILE.fullmatch(p.name)
        }

    def restore(self, sizes: Mapping[Path, int]) -> dict[Path, int]:
        """Cut the day files back to a checkpoint's sizes and remove day files begun after it
        (the day rolled over after the checkpoint); return the bytes cut per file."""
        mine = {
            p: n
            for p, n in sizes.items()
            if p.parent == self.directory and _DAY_FILE.fullmatch(p.name)
        }
        cut = cut_back(mine)
        if mine:
            newest = max(p.name for p in mine)
            for later in self.directory.glob("timeseries-*.lp"):
                if _DAY_FILE.fullmatch(later.name) and later.name > newest:
                    cut[later] = durable_size(later)
                    later.unlink()
            fsync_directory(self.directory)
        self._found = self._day_files()  # as cut back
        return cut

    @property
    def saturated(self) -> bool:
        """A local file takes whatever comes."""
        return False

    @property
    def path(self) -> Path:
        """The file written today."""
        return self.directory / f"timeseries-{self._day()}.lp"

    def add(self, lines: Sequence[str]) -> None:
        """Buffer lines for the next flush."""
        self._pending.extend(lines)

    def flush(self) -> None:
        """Append buffered lines to today's file and fsync it (:class:`NotWritten` if the disk
        refuses: every line is kept for the next flush, none written twice)."""
        self.write(self.detach())

    def detach(self) -> list[str]:
        """Take the buffered lines out, for :meth:`write`. Called on the thread that adds: a
        line added after it waits for the next flush, never half in a write."""
        lines, self._pending = self._pending, []
        return lines

    def write(self, lines: Sequence[str]) -> None:
        """Append ``lines`` to today's file and fsync it. Safe on another thread while lines
        are added (a runtime keeps judging while the disk works); writes run one at a time.
        :class:`NotWritten` if the disk refuses: the appender keeps the lines for the next
        write (with or without new ones), none written twice."""
        with self._writing:
            if lines:
                day = self._day()
                if self._appender is None or day != self._current_day:
                    if self._appender is not None:
                        self._appender.close()  # what yesterday's file still owes goes there
                    self._appender = _DurableAppender(self.directory / f"timeseries-{day}.lp")
                    self._current_day = day
                # handed over at once: an appender that fails keeps them for its next flush
                self._appender.extend(lines)
            if self._appender is None:
                return
            self._appender.flush()
            self._written[self._appender.path] = self._appender.size

    def close(self) -> None:
        """Flush and close the file."""
        self.flush()
        with self._writing:
            if self._appender is not None:
                self._appender.close()


class _JsonLinesFile:
    """A sink writing JSON lines to one file, with its position for checkpoints."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._out = _DurableAppender(path)

    def positions(self) -> dict[Path, int]:
        """The file's durable size."""
        return {self.path: self._out.size}

    def restore(self, sizes: Mapping[Path, int]) -> dict[Path, int]:
        """Cut the file back to a checkpoint's size; return the bytes cut."""
        return cut_back({p: n for p, n in sizes.items() if p == self.path})

    def flush(self) -> None:
        """Append and fsync."""
        self._out.flush()

    def close(self) -> None:
        """Flush and close."""
        self._out.close()


class JsonlDeviationSink(_JsonLinesFile):
    """Deviation changes as JSON lines (the schema of ``deviation_to_json``)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._encoder = msgspec.json.Encoder()

    def emit(self, change: DeviationChange) -> None:
        """Buffer one change."""
        self._out.append(self._encoder.encode(deviation_to_json(change)).decode())


#: Bytes of dead letters a file takes per day (of the letters' receive time) in full; beyond,
#: each letter is written compacted (:func:`stream.sinks.base.compacted`).
DEFAULT_DAILY_BUDGET_BYTES = 1024 * 1024 * 1024


_SPENT = "deadletter.spent."


class JsonlDeadLetterSink(_JsonLinesFile):
    """Dead letters as JSON lines, each with its reason and the original payload.

    Every letter is bounded (64 KiB of payload at most), and the file takes at most
    ``daily_budget_bytes`` of full letters per day: beyond, letters are compacted to a prefix
    and a hash, still one line each with their reason, so a flood cannot fill the disk and
    nothing goes unrecorded. ``compacted`` counts them.
    """

    def __init__(self, path: Path, daily_budget_bytes: int = DEFAULT_DAILY_BUDGET_BYTES) -> None:
        super().__init__(path)
        self._encoder = msgspec.json.Encoder()
        self._budget = daily_budget_bytes
        self._day = ""
        self._spent = 0
        #: letters written compacted because their day's budget was spent
        self.compacted = 0

    def budget_used(self) -> dict[str, int]:
        """Bytes of full letters taken on the current day, keyed ``deadletter.spent.DAY``, for
        a checkpoint: a restart does not hand out the day's budget again."""
        return {f"{_SPENT}{self._day}": self._spent} if self._day else {}

    def restore_budget(self, saved: Mapping[str, int]) -> None:
        """Carry on with what :meth:`budget_used` saved."""
        for key, spent in saved.items():
            if key.startswith(_SPENT):
                self._day, self._spent = key.removeprefix(_SPENT), spent

    def reject(self, letter: DeadLetter) -> None:
        """Buffer one letter, bounded, and compacted once the day's budget is spent."""
        line = self._encoder.encode(bounded(letter))
        day = letter.received_at[:10]
        if day != self._day:
            self._day, self._spent = day, 0
        if self._spent + len(line) > self._budget:
            if self._spent <= self._budget:  # the first letter over it, each day
                log.warning(
                    "deadletter.budget_spent",
                    extra={
                        "file": str(self.path),
                        "day": day,
                        "budget_bytes": self._budget,
                        "hint": "letters of this day keep a prefix and a hash of the payload",
                    },
                )
            line = self._encoder.encode(compacted(letter))
            self.compacted += 1
            self._spent = max(self._spent, self._budget + 1)
        else:
            self._spent += len(line)
        self._out.append(line.decode())

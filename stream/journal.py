"""The engine's judged history in a journal beside the checkpoint, written as it grows.

The late path keeps up to 250,000 judged readings so a late reading can be judged against what
came before it (:mod:`stream.engine.late`). That history stays out of the checkpoint's engine
snapshot (a light one, a few kilobytes: the checkpoint is replaced every second); it goes to
``CHECKPOINT.history.GENERATION`` instead, as the engine hands it over
(:meth:`stream.engine.Engine.take_history`):

- at each checkpoint, among the outputs made durable before it is saved, the history retained
  since the last one is appended as one record and fsynced, so a checkpoint writes in
  proportion to the readings judged since the last, not to the history;
- the checkpoint records the generation's durable size, and a restart cuts it back to that size
  like the other files (what came after is judged and written again), reads its records and
  hands them to :meth:`stream.engine.Engine.restore` with the light snapshot;
- when the engine hands over a ``whole`` record (at its first checkpoint, and when the journal
  holds more than twice what is retained), a new generation begins with it: written, fsynced
  and its directory fsynced before the checkpoint names it; the older generations are deleted
  only once a checkpoint naming the new one is saved. A crash at any step leaves the
  generation the saved checkpoint names intact; a generation it does not name is deleted.

A record on disk: its length and CRC-32 (little-endian, 4 bytes each), then the record. A
generation shorter than its checkpointed size, or with a record whose CRC does not match, is
lost: the engine restores without history (a late reading older than the restore point is
counted beyond the bound, never judged on half its context) and a new generation begins.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import struct
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

from stream.engine.history import History
from stream.errors import NotWritten
from stream.sinks.files import cut_back, durable_size, fsync_directory

log = logging.getLogger(__name__)

_FRAME = struct.Struct("<II")  # record length, CRC-32 of the record


class HistorySource(Protocol):
    """What the journal takes its records from (the engine)."""

    def take_history(self) -> History:
        """The history retained since the last call, or all of it (``whole``)."""


class HistoryJournal:
    """The engine's judged history beside a checkpoint (see the module); a positioned file."""

    def __init__(self, checkpoint: Path) -> None:
        self.directory = checkpoint.parent
        self._prefix = f"{checkpoint.name}.history."
        self._pattern = re.compile(re.escape(self._prefix) + r"(\d{6,})")
        self._generation = 0  # none yet: the first whole record begins one
        self._size = 0  # the generation's durable size
        self._fd: int | None = None
        self._pending: list[bytes] = []  # framed records not yet durable
        self._begin = False  # the pending records begin a new generation
        #: the records a restore read (None: no journal named, or it was lost: see ``lost``)
        self.records: list[bytes] | None = None
        #: why the history named by the checkpoint could not be read, if it could not
        self.lost: str | None = None
        #: bytes written, and generations begun, by this process
        self.written = 0
        self.begun = 0

    @property
    def path(self) -> Path:
        """The generation written to."""
        return self.directory / f"{self._prefix}{self._generation:06d}"

    # ------------------------------------------------------------ checkpoint and restore

    def positions(self) -> dict[Path, int]:
        """The generation's durable size (none before the first record is written)."""
        return {self.path: self._size} if self._generation else {}

    def restore(self, sizes: Mapping[Path, int]) -> dict[Path, int]:
        """Carry on from a checkpoint: its generation cut back to its size and read into
        ``records``; return the bytes cut."""
        named = [
            (int(match.group(1)), path, size)
            for path, size in sizes.items()
            if path.parent == self.directory and (match := self._pattern.fullmatch(path.name))
        ]
        if not named:
            return {}
        self._generation, path, size = max(named)
        cut = cut_back({path: size})
        self._size = size
        try:
            self.records = _read(path, size)
        except (OSError, ValueError) as exc:
            self.records, self.lost = None, f"{path}: {exc}"
            log.error(
                "journal.lost",
                extra={
                    "file": str(path),
                    "reason": str(exc),
                    "hint": "late readings older than the restart are counted beyond the bound; "
                    "a new journal begins at the next checkpoint",
                },
            )
        return cut

    def saved(self) -> None:
        """A checkpoint naming the current generation is saved: the older ones go (and any
        begun after a checkpoint that a crash then never saved)."""
        if not self._generation:
            return
        for path in self.directory.glob(f"{self._prefix}*"):
            if self._pattern.fullmatch(path.name) and path.name != self.path.name:
                try:
                    path.unlink()
                except OSError as exc:  # left for the next checkpoint to try again
                    log.warning("journal.not_deleted", extra={"file": str(path), "error": str(exc)})

    # ------------------------------------------------------------ writing

    def durable_after(
        self, outputs: Callable[[], None], engine: HistorySource
    ) -> Callable[[], None]:
        """A checkpointer's ``make_durable``: the outputs, then the history they led to."""

        def make_durable() -> None:
            outputs()
            self.flush(engine)

        return make_durable

    def flush(self, engine: HistorySource) -> None:
        """Take the engine's history since the last flush and make it durable (before the
        checkpoint). :class:`NotWritten` when the disk refuses: the records are kept for the
        next try, and the file holds none of them."""
        taken = engine.take_history()
        framed = [_frame(taken.record)] if taken.record else []
        if taken.whole:
            self._pending, self._begin = framed, True
        else:
            self._pending.extend(framed)
        if self._begin:
            self._begin_generation()
        elif self._pending:
            self._append()
        self._pending, self._begin = [], False

    def _begin_generation(self) -> None:
        """A new generation with the pending records; the current one stays until a
        checkpoint naming the new one is saved."""
        path = self.directory / f"{self._prefix}{self._generation + 1:06d}"
        data = b"".join(self._pending)
        try:
            # a leftover of a crash before a checkpoint named it: no checkpoint names it
            path.unlink(missing_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            try:
                _write_all(fd, data)
                os.fsync(fd)
            except OSError:
                os.close(fd)
                raise
            fsync_directory(self.directory)
        except OSError as exc:
            raise NotWritten(path, exc) from exc
        self._close()
        self._fd, self._generation, self._size = fd, self._generation + 1, len(data)
        self.written += len(data)
        self.begun += 1

    def _append(self) -> None:
        data = b"".join(self._pending)
        path = self.path
        try:
            if self._fd is None:
                self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW)
            _write_all(self._fd, data)
            os.fsync(self._fd)
        except OSError as exc:
            self._abandon()
            raise NotWritten(path, exc) from exc
        self._size += len(data)
        self.written += len(data)

    def _abandon(self) -> None:
        """Cut what reached the file back off (best effort: a restart cuts it back anyway)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, self._size)
            with contextlib.suppress(OSError):
                os.close(fd)

    def _close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        """Close the file (what is durable stays; the next start reads it)."""
        self._close()


def _frame(record: bytes) -> bytes:
    return _FRAME.pack(len(record), zlib.crc32(record)) + record


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read(path: Path, size: int) -> list[bytes]:
    """The records of a generation up to ``size``; ``ValueError`` when it is shorter or a
    record is damaged."""
    if size == 0:
        return []
    actual = durable_size(path)
    if actual < size:
        raise ValueError(f"{actual} bytes, but the checkpoint names {size}")
    with path.open("rb") as data:
        content = data.read(size)
    records: list[bytes] = []
    at = 0
    while at < size:
        if at + _FRAME.size > size:
            raise ValueError(f"a record is cut short at byte {at}")
        length, crc = _FRAME.unpack_from(content, at)
        record = content[at + _FRAME.size : at + _FRAME.size + length]
        if len(record) != length or zlib.crc32(record) != crc:
            raise ValueError(f"the record at byte {at} is damaged (length or CRC)")
        records.append(record)
        at += _FRAME.size + length
    return records


__all__ = ["HistoryJournal", "HistorySource"]

"""The checkpoint discipline every runtime follows: judge, make durable, checkpoint, acknowledge.

A runtime takes a bounded batch from its source, judges it as one batch, and hands the source's
tokens for it (MQTT message ids, a file's byte offset) to a :class:`Checkpointer`. Every
``every_s``, when ``max_unacked`` tokens wait, when the source has gone quiet, and at stop, the
checkpointer does, in this order:

1. ``make_durable()``: every output written and fsynced, or confirmed by its server (it raises
   when something is not, and then nothing below happens: the tokens wait for the next try);
2. ``state()``: a :class:`Checkpoint` (engine snapshot, duplicate windows, the byte sizes of the
   local files, the source position) saved atomically by :class:`CheckpointFile`;
3. ``acknowledge(tokens)``: the source may forget them (MQTT PUBACKs, in the order taken);
   before that, ``on_saved()`` tells the outputs the checkpoint is saved, so they may delete what
   only older checkpoints named (the history journal's earlier generation: :mod:`stream.journal`).

So after a crash anywhere, the last checkpoint is consistent with what the source still holds:
everything acknowledged is in it, and everything after it comes again. At start the runtime
restores the engine and windows, and cuts the local files back to the checkpointed sizes
(the sinks' ``restore``), so what comes again is written once. A change judged again has the same
deviation id (it is a hash of the plan version, rule, site, asset and start time), so a consumer
of published changes drops repeats by (id, change).

Pure orchestration: no MQTT, no files but the checkpoint's own, no clock but the one given.
"""

from __future__ import annotations

import logging
import os
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Annotated, Generic, Protocol, TypeVar

import msgspec

from stream.errors import NotWritten, SinkError
from stream.sinks.files import fsync_directory

log = logging.getLogger(__name__)

#: 2: the engine's snapshot zlib-compressed on disk (1: as it is; still read). The snapshot is
#: light (the late path's history is in the journal, :mod:`stream.journal`), but its held
#: readings and channel arrays still come to 590 KB on the benchmark fleet: 12 times less
#: compressed (zlib level 1, about 2 ms), written every second.
CHECKPOINT_FORMAT = 2
#: zlib level 1: most of the saving for a fraction of the time of the higher levels
_COMPRESSION = 1

Token = TypeVar("Token")


class Checkpoint(msgspec.Struct, frozen=True):
    """Everything a runtime needs to carry on exactly where its outputs end."""

    format: int
    plan_version: str
    engine: bytes  # Engine.snapshot(history=False) (compressed on disk only)
    windows: dict[str, tuple[int, list[tuple[int, int]]]]  # Ingest.windows()
    # file name in the data directory -> its durable size in bytes (a negative size, from a
    # damaged or forged checkpoint, makes it unreadable rather than a failed truncate)
    files: dict[str, Annotated[int, msgspec.Meta(ge=0)]]
    position: int = -1  # the source's own position when it has one (a replayed file's offset)
    extra: dict[str, int] = {}  # a runtime's small counters worth carrying on (budgets)


class PositionedFiles(Protocol):
    """A sink whose files a checkpoint records and a restart cuts back (the local file sinks)."""

    def positions(self) -> dict[Path, int]:
        """The durable size of each of its files."""

    def restore(self, sizes: Mapping[Path, int]) -> dict[Path, int]:
        """Cut its files back to ``sizes``; return the bytes cut per file."""


class CheckpointFile:
    """One checkpoint on disk, replaced atomically: a crash leaves the old one or the new one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._decoder = msgspec.msgpack.Decoder(Checkpoint)

    def load(self) -> Checkpoint | None:
        """The saved checkpoint; None when there is none or it cannot be read (logged)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            checkpoint = self._decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning(
                "checkpoint.unreadable",
                extra={"checkpoint": str(self.path), "reason": str(exc), "starting": "fresh"},
            )
            return None
        if checkpoint.format not in {1, CHECKPOINT_FORMAT}:
            log.warning(
                "checkpoint.other_format",
                extra={"checkpoint": str(self.path), "format": checkpoint.format},
            )
            return None
        engine = checkpoint.engine
        if checkpoint.format == CHECKPOINT_FORMAT:
            try:
                engine = zlib.decompress(engine)
            except zlib.error as exc:
                log.warning(
                    "checkpoint.unreadable",
                    extra={"checkpoint": str(self.path), "reason": str(exc), "starting": "fresh"},
                )
                return None
        return msgspec.structs.replace(checkpoint, format=CHECKPOINT_FORMAT, engine=engine)

    def save(self, checkpoint: Checkpoint) -> None:
        """Write, fsync, rename over the old one, fsync the directory (so the rename lasts).
        :class:`NotWritten` when the disk refuses (the old checkpoint stays in place)."""
        partial = self.path.with_name(self.path.name + ".partial")
        try:
            # a fresh file, never one found there: a link left in its place must not make the
            # stream write where it points
            partial.unlink(missing_ok=True)
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "wb") as out:
                out.write(_compressed(checkpoint))
                out.flush()
                os.fsync(out.fileno())
            partial.replace(self.path)
            fsync_directory(self.path.parent)
        except OSError as exc:
            raise NotWritten(self.path, exc) from exc


def _compressed(checkpoint: Checkpoint) -> bytes:
    engine = zlib.compress(checkpoint.engine, _COMPRESSION)
    return msgspec.msgpack.encode(
        msgspec.structs.replace(checkpoint, format=CHECKPOINT_FORMAT, engine=engine)
    )


def positions_of(files: Iterable[PositionedFiles]) -> dict[Path, int]:
    """The durable sizes of every file of ``files``, for a checkpoint."""
    return {path: size for positioned in files for path, size in positioned.positions().items()}


def restore_files(files: Iterable[PositionedFiles], sizes: Mapping[Path, int]) -> None:
    """Cut every file of ``files`` back to ``sizes`` (logging what was cut)."""
    for positioned in files:
        for path, cut in positioned.restore(sizes).items():
            log.info("checkpoint.file_cut", extra={"file": str(path), "bytes": cut})


def file_names(positions: Mapping[Path, int], home: Path) -> dict[str, int]:
    """Positions keyed for a checkpoint: names relative to ``home`` (the data directory, so it
    may move), absolute paths for files elsewhere."""
    named: dict[str, int] = {}
    for path, size in positions.items():
        try:
            named[str(path.relative_to(home))] = size
        except ValueError:
            named[str(path.resolve())] = size
    return named


def file_paths(files: Mapping[str, int], home: Path) -> dict[Path, int]:
    """The inverse of :func:`file_names`."""
    return {home / name: size for name, size in files.items()}


class Checkpointer(Generic[Token]):
    """Decides when to checkpoint and does it in the one safe order (see the module).

    ``every_s``: the longest a taken token waits for its acknowledgement while data flows;
    ``max_unacked``: a checkpoint as soon as this many tokens wait (an MQTT broker stops
    sending once its in-flight window of unacknowledged messages is full, so this must stay
    below that window or throughput collapses to one window per ``every_s``).
    """

    #: the least time between a failed attempt and the next
    RETRY_S = 0.2

    def __init__(
        self,
        store: CheckpointFile,
        *,
        make_durable: Callable[[], None],
        state: Callable[[], Checkpoint],
        acknowledge: Callable[[list[Token]], None],
        every_s: float = 1.0,
        max_unacked: int = 500,
        clock: Callable[[], float] = time.monotonic,
        on_saved: Callable[[], None] = lambda: None,
    ) -> None:
        self.store = store
        self._make_durable = make_durable
        self._state = state
        self._acknowledge = acknowledge
        self._on_saved = on_saved
        self.every_s = every_s
        self.max_unacked = max_unacked
        self._clock = clock
        self._unacked: list[Token] = []
        self._next = clock() + every_s
        self._retry_at = 0.0  # after a failed attempt: not before this
        self._dirty = False
        #: checkpoints saved, and attempts whose outputs were not all durable
        self.saved = 0
        self.failed = 0
        self._failing = 0  # failed attempts in a row

    @property
    def unacknowledged(self) -> int:
        """Tokens taken and not yet acknowledged."""
        return len(self._unacked)

    def taken(self, tokens: Iterable[Token]) -> None:
        """Tokens of a batch just judged (and anything else judged: a tick)."""
        self._unacked.extend(tokens)
        self._dirty = True

    def changed(self) -> None:
        """Something was judged without new tokens (the clock moved): checkpoint it too."""
        self._dirty = True

    def due(self) -> bool:
        """True when a checkpoint should happen now (period over, or the window nearly full)."""
        if not self._dirty:
            return False
        return len(self._unacked) >= self.max_unacked or self._clock() >= self._next

    def checkpoint(self) -> bool:
        """Make durable, save, acknowledge. False (tokens kept) when an output is not durable
        yet: nothing is acknowledged then. After a failure, calls within ``RETRY_S`` return False
        at once, so a caller in a tight loop does not hammer a store that is down."""
        now = self._clock()
        if now < self._retry_at:
            return False
        self._next = now + self.every_s
        try:
            self._make_durable()
            self.store.save(self._state())
        except SinkError as exc:
            self._retry_at = now + min(self.RETRY_S, self.every_s)
            self.failed += 1
            if self._failing == 0:  # once per outage, and once when it ends
                log.warning(
                    "checkpoint.waiting",
                    extra={"error": str(exc), "unacknowledged": len(self._unacked)},
                )
            self._failing += 1
            return False
        if self._failing:
            log.info("checkpoint.resumed", extra={"failed_attempts": self._failing})
            self._failing = 0
        tokens, self._unacked = self._unacked, []
        self._dirty = False
        self.saved += 1
        self._on_saved()
        if tokens:
            self._acknowledge(tokens)
        return True

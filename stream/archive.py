"""The archive: what the live service handed its engine, in order, so that a replay hands the
engine the same and gets the same deviation changes.

The engine's verdicts depend on the payloads, on their receive times, and on when its clock
moved: a drain of messages is judged with one advance to the newest receive time, and a quiet
stream moves the clock with the wall clock (silence, deadlines, idle watermarks). A recording of
payloads alone cannot say when; this archive does. ``milkguard run`` writes, per file, JSON lines
of these records (README: "The archive"):

``archive``
    the header, first line of every file: the format version, the file's number, the plan and
    its version, and the state to start from when the file is replayed alone (the engine's
    snapshot, the duplicate windows, the ingest settings that judge);
``start``
    the service started: how its engine began (restored from the checkpoint, or fresh) and at
    what time the outage was excused (:func:`resume`);
``message``
    one MQTT message taken from the broker, whatever it holds: topic, receive time, payload
    (text, or base64 when it is not UTF-8);
``judge``
    the messages since the last ``judge`` were judged as one drain (one advance);
``tick``
    the engine's clock moved with no data, to ``now``;
``clocks_from``
    batches sent before ``ms`` no longer count as evidence of a gateway's clock (-1: all do).

The archive is an output like the others (:mod:`stream.checkpoint`): written and fsynced before
the checkpoint, its current file's size in the checkpoint, cut back to it at restart, so after a
``kill -9`` it holds each acknowledged message once. Files rotate at a size and at each UTC day,
are compressed (gzip) once rotated, and are deleted after ``keep_days``.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, BinaryIO, Literal, cast

import msgspec

from stream.engine.core import Engine
from stream.errors import NotWritten
from stream.sinks.files import cut_back, durable_size, fsync_directory

log = logging.getLogger(__name__)

#: The archive's format version, in every file's header; a reader refuses other versions.
ARCHIVE_FORMAT = 1

#: The earliest and latest receive times an archive may hold (2000-01-01, 3000-01-01): a time
#: outside is a damaged or forged line, never a clock.
EARLIEST_MS = 946_684_800_000
LATEST_MS = 32_503_680_000_000

Stamp = Annotated[int, msgspec.Meta(ge=EARLIEST_MS, le=LATEST_MS)]
Windows = dict[str, tuple[int, list[tuple[int, int]]]]

_FILE = re.compile(r"archive-(\d{4}-\d{2}-\d{2})-(\d{6})\.jsonl(\.gz)?")


class Header(msgspec.Struct, frozen=True, tag="archive", tag_field="record"):
    """First line of every archive file."""

    format: int
    file: int
    created: str
    plan: str
    plan_version: str
    engine: bytes  # Engine.snapshot() when the file began (base64 in JSON)
    windows: Windows
    clocks_from: int
    future_tolerance_ms: int
    known_gateways: list[tuple[str, str]]


class Start(msgspec.Struct, frozen=True, tag="start", tag_field="record"):
    """The service started; its engine was restored from the checkpoint, or began fresh."""

    at: Stamp
    engine: Literal["restored", "fresh"]
    windows: Literal["restored", "fresh"]
    plan_version: str
    future_tolerance_ms: Annotated[int, msgspec.Meta(gt=0)]
    known_gateways: list[tuple[str, str]]


class Message(msgspec.Struct, frozen=True, tag="message", tag_field="record", omit_defaults=True):
    """One MQTT message as the service took it: a payload that decoded as a batch is kept as
    the JSON object it is (``batch``, its bytes unchanged: no escaping to pay on the live
    path), any other as text (``payload``), or base64 when it is not UTF-8."""

    received_ms: Stamp
    topic: str
    batch: msgspec.Raw = msgspec.Raw()
    payload: str = ""
    encoding: Literal["utf-8", "base64"] = "utf-8"

    def raw(self) -> bytes:
        """The payload's bytes, as the broker delivered them."""
        if self.batch:
            return bytes(self.batch)
        if self.encoding == "base64":
            return base64.b64decode(self.payload, validate=True)
        return self.payload.encode("utf-8")


class Judge(msgspec.Struct, frozen=True, tag="judge", tag_field="record"):
    """The messages since the last judge were judged as one drain."""


class Tick(msgspec.Struct, frozen=True, tag="tick", tag_field="record"):
    """The engine's clock moved with no data."""

    now: Stamp


class ClocksFrom(msgspec.Struct, frozen=True, tag="clocks_from", tag_field="record"):
    """Batches sent before ``ms`` say nothing of their gateway's clock (-1: every batch does)."""

    ms: Annotated[int, msgspec.Meta(ge=-1, le=LATEST_MS)]


Record = Header | Start | Message | Judge | Tick | ClocksFrom


@dataclass(frozen=True, slots=True)
class ArchiveState:
    """What a replay needs to start from the beginning of a file (its header)."""

    plan: str
    plan_version: str
    engine: bytes
    windows: Windows
    clocks_from: int
    future_tolerance_ms: int
    known_gateways: list[tuple[str, str]]


def _utc_day() -> str:
    return datetime.now(tz=UTC).strftime("%Y-%m-%d")


def file_number(path: Path) -> int | None:
    """The number of an archive file (plain or compressed); None for any other name."""
    match = _FILE.fullmatch(path.name)
    return int(match.group(2)) if match else None


def archive_files(directory: Path) -> list[Path]:
    """The archive's files in the order they were written; of a file both plain and compressed
    (a compression cut short), the plain one."""
    if not directory.is_dir():
        return []
    found: dict[int, Path] = {}
    for path in directory.iterdir():
        number = file_number(path)
        if number is not None and (number not in found or path.suffix != ".gz"):
            found[number] = path
    return [found[n] for n in sorted(found)]


class ArchiveWriter:
    """Writes the archive's records to rotated files; flushed (fsynced) at each checkpoint.

    ``rotate_bytes``: a file that reached this size is closed at the next flush and a new one
    begun, as is the file of an earlier UTC day. Closed files are gzipped on a thread of their
    own (the engine's loop does not wait for it), and files last written more than
    ``keep_days`` ago are deleted. The state each new file's header carries comes from
    ``state`` (bound by the ingest that records: :meth:`attach`).
    """

    def __init__(
        self,
        directory: Path,
        *,
        rotate_bytes: int,
        keep_days: float,
        compress: bool = True,
        day: Callable[[], str] = _utc_day,
    ) -> None:
        self.directory = directory
        self.rotate_bytes = rotate_bytes
        self.keep_days = keep_days
        self.compress = compress
        self._day = day
        self._state: Callable[[], ArchiveState] | None = None
        self._encoder = msgspec.json.Encoder()
        #: the records since the last flush, each with its newline: one growing buffer that
        #: the encoder writes into, so a flush of megabytes is one write and no join
        self._pending = bytearray()
        self._path: Path | None = None  # the file written to
        self._path_day = ""
        self._fd: int | None = None
        self._size = 0  # durable bytes of the file written to
        self._new = False  # created, its directory not yet fsynced
        self._compressing: threading.Thread | None = None
        #: records buffered since the service started, for its status
        self.records = 0

    def attach(self, state: Callable[[], ArchiveState]) -> None:
        """Where each new file's header takes the state to replay it from."""
        self._state = state

    # ------------------------------------------------------------------ records

    def messages(self, messages: Iterable[tuple[str, bytes, int]], batches: list[bool]) -> None:
        """One drain: each message (topic, payload, receive time), then the judge mark.

        ``batches`` says, per message, whether its payload decoded as a batch: such a payload
        is valid JSON, so it is written as it is, unescaped, when it is one object on one line
        (anything else a gateway sends could break the line or forge fields of the record)."""
        encode_into = self._encoder.encode_into
        pending = self._pending
        for (topic, payload, received_ms), decoded in zip(messages, batches, strict=True):
            if (
                decoded
                and payload[:1] == b"{"
                and payload[-1:] == b"}"
                and b"\n" not in payload
                and b"\r" not in payload
            ):
                record = Message(received_ms, topic, batch=msgspec.Raw(payload))
            else:
                try:
                    record = Message(received_ms, topic, payload=payload.decode("utf-8"))
                except UnicodeDecodeError:
                    text = base64.b64encode(payload).decode("ascii")
                    record = Message(received_ms, topic, payload=text, encoding="base64")
            encode_into(record, pending, -1)
            pending += b"\n"
        pending += b'{"record":"judge"}\n'
        self.records += 1

    def tick(self, now_ms: int) -> None:
        """The engine's clock moved with no data."""
        self._add(Tick(now_ms))

    def clocks_from(self, ms: int) -> None:
        """Batches sent before ``ms`` no longer count as clock evidence (-1: all count)."""
        self._add(ClocksFrom(ms))

    def start(self, record: Start) -> None:
        """The service started (after its engine was restored or made fresh)."""
        self._add(record)

    def _add(self, record: Record) -> None:
        self.begin()
        self._encoder.encode_into(record, self._pending, -1)
        self._pending += b"\n"
        self.records += 1

    def begin(self) -> None:
        """A file to write to, its header first: the state before the records that follow (call
        it before the engine takes what they record)."""
        if self._path is None:
            self._open_next()

    def _open_next(self) -> None:
        if self._state is None:
            raise RuntimeError("ArchiveWriter.attach() must come before the first record")
        numbers = [n for p in archive_files(self.directory) if (n := file_number(p)) is not None]
        number = max(numbers, default=0) + 1
        day = self._day()
        self._path = self.directory / f"archive-{day}-{number:06d}.jsonl"
        self._path_day = day
        self._size = 0
        self._new = True
        state = self._state()
        header = Header(
            format=ARCHIVE_FORMAT,
            file=number,
            created=datetime.now(tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            plan=state.plan,
            plan_version=state.plan_version,
            engine=state.engine,
            windows=state.windows,
            clocks_from=state.clocks_from,
            future_tolerance_ms=state.future_tolerance_ms,
            known_gateways=state.known_gateways,
        )
        self._pending[:0] = self._encoder.encode(header) + b"\n"

    # ------------------------------------------------------------------ durability

    def positions(self) -> dict[Path, int]:
        """The file written to and its durable size (a checkpoint records it)."""
        return {self._path: self._size} if self._path is not None else {}

    def restore(self, sizes: Mapping[Path, int]) -> dict[Path, int]:
        """Carry on from a checkpoint: its archive file cut back to its size (decompressed
        first if it was rotated and compressed since), later files deleted; returns the bytes
        cut per file. Without an archive file in the checkpoint nothing is cut: the next record
        begins a new file."""
        mine = {
            p: n
            for p, n in sizes.items()
            if p.parent == self.directory and file_number(p) is not None and p.suffix != ".gz"
        }
        if not mine or not self.directory.is_dir():
            # nothing archived at the checkpoint, or the directory is gone (moved, deleted by
            # hand): the next record begins a new file, numbered after any that are left
            return {}
        for partial in self.directory.glob("archive-*.partial"):
            partial.unlink()
        path = max(mine, key=lambda p: file_number(p) or 0)
        size = mine[path]
        number = file_number(path) or 0
        cut: dict[Path, int] = {}
        packed = path.with_name(path.name + ".gz")
        if packed.exists():
            if not path.exists():  # rotated and compressed after the checkpoint: unpack it
                _unpack(packed, path, size)
            packed.unlink()
        cut.update(cut_back({path: size}))
        for later in archive_files(self.directory):
            if (file_number(later) or 0) > number:
                cut[later] = durable_size(later)
                later.unlink()
        fsync_directory(self.directory)
        match = _FILE.fullmatch(path.name)
        self._path, self._path_day = path, match.group(1) if match else ""
        self._size = min(size, durable_size(path))
        return cut

    def flush(self) -> None:
        """Append what is buffered to the file and fsync it; then rotate if it is due.
        :class:`NotWritten` when the disk refuses (all of it kept for the next flush)."""
        if self._pending:
            self._write()
        if self._path is not None and (
            self._size >= self.rotate_bytes or self._path_day != self._day()
        ):
            self._rotate()

    def _write(self) -> None:
        assert self._path is not None
        data = self._pending
        try:
            if self._fd is None:
                self.directory.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(
                    self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644
                )
                self._size = os.fstat(self._fd).st_size
            written = 0
            # views released even when a write fails: the buffer must stay growable
            with memoryview(data) as whole:
                while written < len(data):
                    with whole[written:] as rest:
                        written += os.write(self._fd, rest)
            os.fsync(self._fd)
            if self._new:  # a checkpoint must not name a file whose name may vanish
                fsync_directory(self.directory)
                self._new = False
        except OSError as exc:
            self._abandon()
            raise NotWritten(self._path, exc) from exc
        self._size += len(data)
        self._pending = bytearray()

    def _abandon(self) -> None:
        """Cut what reached the file of a failed write off again (best effort: the restart
        cuts back to the checkpoint anyway) and drop the descriptor."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, self._size)
        with contextlib.suppress(OSError):
            os.close(fd)

    def _rotate(self) -> None:
        """Close the file, begin the next (its header written at once, so the checkpoint after
        this flush names it), compress the closed one and apply the retention."""
        closed = self._path
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._open_next()
        self._write()
        self._expire()
        if self.compress and closed is not None:
            self._compress_later(closed)

    def _compress_later(self, closed: Path) -> None:
        if self._compressing is not None:
            self._compressing.join()  # one at a time; a day's file takes seconds at most
        self._compressing = threading.Thread(
            target=_pack, args=(closed,), name=f"archive-gzip-{closed.name}", daemon=True
        )
        self._compressing.start()

    def _expire(self) -> None:
        """Delete closed files last written more than ``keep_days`` ago."""
        horizon = time.time() - self.keep_days * 86_400
        for path in archive_files(self.directory):
            if path == self._path:
                continue
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < horizon:
                    path.unlink()
                    log.info("archive.expired", extra={"file": str(path)})

    def close(self) -> None:
        """Flush, close the file, and wait for a compression under way."""
        try:
            self.flush()
        finally:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            if self._compressing is not None:
                self._compressing.join()
                self._compressing = None


def _pack(path: Path) -> None:
    """Gzip a closed archive file: the packed copy is complete and durable before the plain
    file goes, so a crash leaves one or the other whole (a reader prefers the plain one)."""
    packed = path.with_name(path.name + ".gz")
    partial = path.with_name(path.name + ".gz.partial")
    try:
        with path.open("rb") as source, partial.open("wb") as raw:
            with gzip.GzipFile(filename=path.name, mode="wb", fileobj=raw, compresslevel=6) as out:
                shutil.copyfileobj(source, out, 1 << 20)
            raw.flush()
            os.fsync(raw.fileno())
        partial.replace(packed)
        fsync_directory(path.parent)
        path.unlink()
        fsync_directory(path.parent)
    except OSError as exc:
        log.warning("archive.not_compressed", extra={"file": str(path), "reason": str(exc)})
        with contextlib.suppress(OSError):
            partial.unlink()


def _unpack(packed: Path, path: Path, size: int) -> None:
    """The first ``size`` bytes of a compressed archive file back as the plain file."""
    partial = path.with_name(path.name + ".partial")
    with gzip.open(packed, "rb") as source, partial.open("wb") as out:
        left = size
        while left > 0:
            chunk = source.read(min(left, 1 << 20))
            if not chunk:
                break
            out.write(chunk)
            left -= len(chunk)
        out.flush()
        os.fsync(out.fileno())
    partial.replace(path)


# ---------------------------------------------------------------------- reading


@dataclass(frozen=True, slots=True)
class Bad:
    """A line that is not a record of this format, and why (it goes to the dead-letter)."""

    line: bytes
    origin: str  # file:line
    reason: str


_decoder = msgspec.json.Decoder(Record)


def looks_like_archive(first_line: bytes) -> bool:
    """True when a file's first line is an archive header (else: bare payload lines)."""
    return first_line.lstrip().startswith(b'{"record":"archive"')


def open_archive_file(path: Path) -> BinaryIO:
    """An archive file (or any recording) for reading, gzipped or plain by its name."""
    if path.suffix == ".gz":
        return cast(BinaryIO, gzip.open(path, "rb"))
    return path.open("rb")


def read_records(path: Path) -> Iterator[tuple[str, Record | Bad]]:
    """Each line of an archive file (plain or gzipped): its origin ``file:line`` and its record,
    or :class:`Bad` with the reason. Never raises for what a line holds."""
    with open_archive_file(path) as lines:
        yield from records_of(lines, path.name)


def records_of(lines: Iterable[bytes], name: str) -> Iterator[tuple[str, Record | Bad]]:
    """Each non-blank line of ``lines`` (of the archive file ``name``): its origin
    ``name:line`` and its record, or :class:`Bad` with the reason naming the origin."""
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if line:
            origin = f"{name}:{number}"
            yield origin, _record(line, origin, number)


def _record(line: bytes, origin: str, number: int) -> Record | Bad:
    where = f"archive {origin}"
    try:
        record: Record = _decoder.decode(line)
    except UnicodeDecodeError as exc:
        return Bad(line, origin, f"{where}: not valid UTF-8 at byte {exc.start}")
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
        return Bad(
            line,
            origin,
            f"{where}: not a record of archive format {ARCHIVE_FORMAT} "
            f"({exc}); a damaged or hand-edited line",
        )
    if isinstance(record, Header):
        if record.format != ARCHIVE_FORMAT:
            return Bad(
                line,
                origin,
                f"{where}: archive format {record.format}, this replay "
                f"reads format {ARCHIVE_FORMAT}: replay with the release that wrote it",
            )
        if number != 1:
            return Bad(line, origin, f"{where}: a header in the middle of a file")
    if isinstance(record, Message) and not record.batch and record.encoding == "base64":
        try:
            base64.b64decode(record.payload, validate=True)
        except ValueError:
            return Bad(line, origin, f"{where}: payload is not valid base64")
    return record


def resume(engine: Engine, restored: bool, at_ms: int) -> None:
    """What a starting service does to its engine, live and in a replay of its ``start``
    record alike: a restored engine excuses the outage up to ``at_ms`` (the broker sends what
    it held before any channel can look silent)."""
    if restored:
        engine.excuse_outage(at_ms)

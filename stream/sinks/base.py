"""The ports the stream writes to. Each has a real adapter and an in-memory twin for tests.

Sinks buffer in ``add``/``emit``/``reject`` and make data durable in ``flush``, which the runtime
calls at least once a second and before it exits; a flush that fails raises, so the runtime
knows nothing was confirmed.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from typing import Protocol

import msgspec

from stream.engine.deviation import DeviationChange

#: A dead letter keeps a payload whole up to this many bytes; beyond it, its SHA-256, its length
#: and its first bytes, so a flood of huge payloads cannot fill the disk or the topics.
KEPT_PAYLOAD_BYTES = 64 * 1024
#: How much of a payload beyond :data:`KEPT_PAYLOAD_BYTES` is kept, to recognise it by.
KEPT_PREFIX_BYTES = 1024
#: How much of a payload a letter keeps once its file's daily budget is spent (:func:`compacted`).
COMPACT_PREFIX_BYTES = 256


class DeadLetter(msgspec.Struct, frozen=True):
    """A rejected payload or reading, kept with the reason so nothing is dropped silently.

    ``payload`` is the payload whole when it is at most :data:`KEPT_PAYLOAD_BYTES` long;
    otherwise only its first :data:`KEPT_PREFIX_BYTES` bytes, with ``truncated`` set,
    ``payload_bytes`` its full length and ``payload_sha256`` the hash of all of it. Build
    letters of raw payloads with :meth:`of_payload`, which applies that bound.
    """

    received_at: str
    topic: str
    reason: str
    payload: str
    encoding: str  # "utf-8" or "base64"
    site: str | None = None
    gateway: str | None = None
    seq: int | None = None
    truncated: bool = False
    payload_bytes: int | None = None
    payload_sha256: str | None = None

    @classmethod
    def of_payload(
        cls,
        payload: bytes,
        *,
        received_at: str,
        topic: str,
        reason: str,
        site: str | None = None,
        gateway: str | None = None,
        seq: int | None = None,
    ) -> DeadLetter:
        """A letter for a raw payload, bounded (see the class)."""
        size = len(payload)
        truncated = size > KEPT_PAYLOAD_BYTES
        kept = payload[:KEPT_PREFIX_BYTES] if truncated else payload
        text, encoding = printable(kept)
        return cls(
            received_at=received_at,
            topic=topic[:512],  # a topic is the client's choice too
            reason=reason,
            payload=text,
            encoding=encoding,
            site=site,
            gateway=gateway,
            # JSON and msgpack encoders refuse ints beyond 64 bits: a letter must always encode
            seq=seq if seq is not None and 0 <= seq < 2**63 else None,
            truncated=truncated,
            payload_bytes=size if truncated else None,
            payload_sha256=hashlib.sha256(payload).hexdigest() if truncated else None,
        )


def _raw(letter: DeadLetter) -> bytes:
    if letter.encoding == "base64":
        return base64.b64decode(letter.payload)
    return letter.payload.encode("utf-8", errors="surrogatepass")


def compacted(letter: DeadLetter) -> DeadLetter:
    """``letter`` with only the first :data:`COMPACT_PREFIX_BYTES` of its payload, its length
    and the SHA-256 of all of it: what a sink writes once its daily budget is spent, so a flood
    of large payloads still leaves one line per letter (the reason, the topic, the gateway, the
    hash to match it by) and cannot fill the disk."""
    raw = _raw(letter)
    if letter.truncated:  # its hash and length are of the whole payload already
        text, encoding = printable(raw[:COMPACT_PREFIX_BYTES])
        return msgspec.structs.replace(letter, payload=text, encoding=encoding)
    if len(raw) <= COMPACT_PREFIX_BYTES:
        return letter
    text, encoding = printable(raw[:COMPACT_PREFIX_BYTES])
    return msgspec.structs.replace(
        letter,
        payload=text,
        encoding=encoding,
        truncated=True,
        payload_bytes=len(raw),
        payload_sha256=hashlib.sha256(raw).hexdigest(),
    )


def bounded(letter: DeadLetter) -> DeadLetter:
    """``letter`` itself, or its bounded form when it was built around a payload too long to
    keep whole (a sink's last guard: every letter it writes has the bound)."""
    if letter.truncated or len(letter.payload) <= KEPT_PAYLOAD_BYTES * 4 // 3 + 4:
        return letter
    return DeadLetter.of_payload(
        _raw(letter),
        received_at=letter.received_at,
        topic=letter.topic,
        reason=letter.reason,
        site=letter.site,
        gateway=letter.gateway,
        seq=letter.seq,
    )


def printable(payload: bytes) -> tuple[str, str]:
    """``payload`` as text: itself when it is UTF-8, else base64."""
    try:
        return payload.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(payload).decode("ascii"), "base64"


class TimeSeriesSink(Protocol):
    """Receives readings, events and deviations as InfluxDB line protocol."""

    @property
    def saturated(self) -> bool:
        """True when the sink cannot take more until a flush succeeds (backpressure)."""

    def add(self, lines: Sequence[str]) -> None:
        """Buffer lines for the next flush."""

    def flush(self) -> None:
        """Make buffered lines durable; raise if that fails."""

    def close(self) -> None:
        """Flush and release resources."""


class DeviationSink(Protocol):
    """Receives deviations as they open and close."""

    def emit(self, change: DeviationChange) -> None:
        """Record one change."""

    def flush(self) -> None:
        """Make recorded changes durable."""

    def close(self) -> None:
        """Flush and release resources."""


class DeadLetterSink(Protocol):
    """Receives what the stream rejected."""

    def reject(self, letter: DeadLetter) -> None:
        """Record one rejection."""

    def flush(self) -> None:
        """Make recorded rejections durable."""

    def close(self) -> None:
        """Flush and release resources."""


class SinkGroup:
    """Flushes and closes several sinks in order, every one of them even when one fails.

    List the local file first, so it is flushed even when a remote store after it fails.
    """

    def __init__(self, sinks: Sequence[TimeSeriesSink | DeviationSink | DeadLetterSink]) -> None:
        self._all = list(sinks)

    def flush(self) -> None:
        """Flush every sink; the first failure is raised after the others were flushed."""
        self._each("flush")

    def close(self) -> None:
        """Close every sink; the first failure is raised after the others were closed."""
        self._each("close")

    def _each(self, method: str) -> None:
        failure: Exception | None = None
        for sink in self._all:
            try:
                getattr(sink, method)()
            except Exception as exc:  # re-raised below, after the other sinks
                failure = failure or exc
        if failure is not None:
            raise failure


class FanOutTimeSeriesSink(SinkGroup):
    """Sends lines to several time-series sinks (the local file, InfluxDB)."""

    def __init__(self, sinks: Sequence[TimeSeriesSink]) -> None:
        super().__init__(sinks)
        self._sinks = list(sinks)

    @property
    def saturated(self) -> bool:
        """True when any sink is saturated."""
        return any(sink.saturated for sink in self._sinks)

    def add(self, lines: Sequence[str]) -> None:
        """Buffer the lines in every sink."""
        for sink in self._sinks:
            sink.add(lines)


class FanOutDeviationSink(SinkGroup):
    """Sends each deviation change to several sinks (file, console, MQTT)."""

    def __init__(self, sinks: Sequence[DeviationSink]) -> None:
        super().__init__(sinks)
        self._sinks = list(sinks)

    def emit(self, change: DeviationChange) -> None:
        """Record the change in every sink."""
        for sink in self._sinks:
            sink.emit(change)


class FanOutDeadLetterSink(SinkGroup):
    """Sends each dead letter to several sinks (file, MQTT)."""

    def __init__(self, sinks: Sequence[DeadLetterSink]) -> None:
        super().__init__(sinks)
        self._sinks = list(sinks)

    def reject(self, letter: DeadLetter) -> None:
        """Record the letter in every sink."""
        for sink in self._sinks:
            sink.reject(letter)

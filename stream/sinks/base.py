"""The ports the stream writes to. Each has a real adapter and an in-memory twin for tests.

Sinks buffer in ``add``/``emit``/``reject`` and make data durable in ``flush``, which the runtime
calls at least once a second and before it exits; a flush that fails raises, so the runtime
knows nothing was confirmed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import msgspec

from stream.engine.deviation import DeviationChange


class DeadLetter(msgspec.Struct, frozen=True):
    """A rejected payload or reading, kept with the reason so nothing is dropped silently."""

    received_at: str
    topic: str
    reason: str
    payload: str
    encoding: str  # "utf-8" or "base64"
    site: str | None = None
    gateway: str | None = None
    seq: int | None = None


class TimeSeriesSink(Protocol):
    """Receives readings, events and deviations as InfluxDB line protocol."""

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


class FanOutTimeSeriesSink:
    """Sends lines to several time-series sinks; list the local file first, so it is flushed
    even when a remote store after it fails."""

    def __init__(self, sinks: Sequence[TimeSeriesSink]) -> None:
        self._sinks = list(sinks)

    def add(self, lines: Sequence[str]) -> None:
        """Buffer the lines in every sink."""
        for sink in self._sinks:
            sink.add(lines)

    def flush(self) -> None:
        """Flush every sink in order; the first failure is raised."""
        for sink in self._sinks:
            sink.flush()

    def close(self) -> None:
        """Close every sink, even if one fails; the first failure is raised."""
        errors: list[Exception] = []
        for sink in self._sinks:
            try:
                sink.close()
            except Exception as exc:  # re-raised below, after the other sinks
                errors.append(exc)
        if errors:
            raise errors[0]


class FanOutDeviationSink:
    """Sends each deviation change to several sinks (file, console, MQTT)."""

    def __init__(self, sinks: Sequence[DeviationSink]) -> None:
        self._sinks = list(sinks)

    def emit(self, change: DeviationChange) -> None:
        """Record the change in every sink."""
        for sink in self._sinks:
            sink.emit(change)

    def flush(self) -> None:
        """Flush every sink."""
        for sink in self._sinks:
            sink.flush()

    def close(self) -> None:
        """Close every sink."""
        for sink in self._sinks:
            sink.close()


class FanOutDeadLetterSink:
    """Sends each dead letter to several sinks (file, MQTT)."""

    def __init__(self, sinks: Sequence[DeadLetterSink]) -> None:
        self._sinks = list(sinks)

    def reject(self, letter: DeadLetter) -> None:
        """Record the letter in every sink."""
        for sink in self._sinks:
            sink.reject(letter)

    def flush(self) -> None:
        """Flush every sink."""
        for sink in self._sinks:
            sink.flush()

    def close(self) -> None:
        """Close every sink."""
        for sink in self._sinks:
            sink.close()

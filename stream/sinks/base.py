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

"""In-memory twins of the sinks, for unit tests of the stream with no server at all."""

from __future__ import annotations

from collections.abc import Sequence

from stream.engine.deviation import DeviationChange
from stream.sinks.base import DeadLetter


class MemoryTimeSeriesSink:
    """Keeps flushed lines in a list; ``pending`` holds what a crash would lose."""

    def __init__(self) -> None:
        self.pending: list[str] = []
        self.lines: list[str] = []
        self.saturated = False

    def add(self, lines: Sequence[str]) -> None:
        """Buffer lines."""
        self.pending.extend(lines)

    def flush(self) -> None:
        """Move buffered lines to ``lines``."""
        self.lines.extend(self.pending)
        self.pending.clear()

    def close(self) -> None:
        """Flush."""
        self.flush()


class MemoryDeviationSink:
    """Keeps every deviation change in a list."""

    def __init__(self) -> None:
        self.changes: list[DeviationChange] = []

    def emit(self, change: DeviationChange) -> None:
        """Keep the change."""
        self.changes.append(change)

    def flush(self) -> None:
        """Nothing to make durable."""

    def close(self) -> None:
        """Nothing to release."""


class MemoryDeadLetterSink:
    """Keeps every dead letter in a list."""

    def __init__(self) -> None:
        self.letters: list[DeadLetter] = []

    def reject(self, letter: DeadLetter) -> None:
        """Keep the letter."""
        self.letters.append(letter)

    def flush(self) -> None:
        """Nothing to make durable."""

    def close(self) -> None:
        """Nothing to release."""

"""Local file stores: line protocol for time series, JSON lines for deviations and dead letters.

Writes are buffered and made durable (write, flush, fsync) at each ``flush``; the embedded
runtime flushes every second and at exit, so a clean stop loses nothing and a power cut loses at
most the last second.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import msgspec

from stream.engine.deviation import DeviationChange, deviation_to_json
from stream.sinks.base import DeadLetter, bounded, compacted

log = logging.getLogger(__name__)


def _utc_day() -> str:
    return datetime.now(tz=UTC).strftime("%Y-%m-%d")


class _DurableAppender:
    """Appends text lines to a file and fsyncs them on flush."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pending: list[str] = []
        self._file: IO[str] | None = None

    def append(self, line: str) -> None:
        self._pending.append(line)

    def extend(self, lines: Sequence[str]) -> None:
        self._pending.extend(lines)

    def flush(self) -> None:
        if not self._pending:
            return
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
        self._file.write("\n".join(self._pending) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._pending.clear()

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None


class LineProtocolFileSink:
    """Line protocol in ``DIR/timeseries-YYYY-MM-DD.lp``, one file per UTC day of writing."""

    def __init__(self, directory: Path, day: Callable[[], str] = _utc_day) -> None:
        self.directory = directory
        self._day = day
        self._current_day = ""
        self._appender: _DurableAppender | None = None
        self._pending: list[str] = []

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
        """Append buffered lines to today's file and fsync it."""
        if not self._pending:
            return
        day = self._day()
        if self._appender is None or day != self._current_day:
            if self._appender is not None:
                self._appender.close()
            self._appender = _DurableAppender(self.directory / f"timeseries-{day}.lp")
            self._current_day = day
        self._appender.extend(self._pending)
        self._appender.flush()
        self._pending.clear()

    def close(self) -> None:
        """Flush and close the file."""
        self.flush()
        if self._appender is not None:
            self._appender.close()


class JsonlDeviationSink:
    """Deviation changes as JSON lines (the schema of ``deviation_to_json``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._out = _DurableAppender(path)
        self._encoder = msgspec.json.Encoder()

    def emit(self, change: DeviationChange) -> None:
        """Buffer one change."""
        self._out.append(self._encoder.encode(deviation_to_json(change)).decode())

    def flush(self) -> None:
        """Append and fsync."""
        self._out.flush()

    def close(self) -> None:
        """Flush and close."""
        self._out.close()


#: Bytes of dead letters a file takes per day (of the letters' receive time) in full; beyond,
#: each letter is written compacted (:func:`stream.sinks.base.compacted`).
DEFAULT_DAILY_BUDGET_BYTES = 1024 * 1024 * 1024


class JsonlDeadLetterSink:
    """Dead letters as JSON lines, each with its reason and the original payload.

    Every letter is bounded (64 KiB of payload at most), and the file takes at most
    ``daily_budget_bytes`` of full letters per day: beyond, letters are compacted to a prefix
    and a hash, still one line each with their reason, so a flood cannot fill the disk and
    nothing goes unrecorded. ``compacted`` counts them.
    """

    def __init__(self, path: Path, daily_budget_bytes: int = DEFAULT_DAILY_BUDGET_BYTES) -> None:
        self.path = path
        self._out = _DurableAppender(path)
        self._encoder = msgspec.json.Encoder()
        self._budget = daily_budget_bytes
        self._day = ""
        self._spent = 0
        #: letters written compacted because their day's budget was spent
        self.compacted = 0

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

    def flush(self) -> None:
        """Append and fsync."""
        self._out.flush()

    def close(self) -> None:
        """Flush and close."""
        self._out.close()

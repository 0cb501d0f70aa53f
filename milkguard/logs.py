"""Structured logs: one event per line, with its context as key=value pairs or as JSON.

Code logs an event name and its context: ``log.warning("payload.rejected", extra={"topic": t})``.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Literal

LogFormat = Literal["text", "json"]

# Attributes every LogRecord has; anything else on a record came from ``extra`` and is context.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


def _context(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and v is not None}


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(record.msecs):03d}Z"


class KeyValueFormatter(logging.Formatter):
    """``2026-11-22T10:00:00.123Z WARNING stream.ingest payload.rejected topic=... reason=...``."""

    def format(self, record: logging.LogRecord) -> str:
        """Render one record on one line."""
        parts = [_timestamp(record), record.levelname, record.name, record.getMessage()]
        for key, value in _context(record).items():
            text = str(value)
            if not text or any(c in text for c in ' "='):
                text = json.dumps(text, ensure_ascii=False)
            parts.append(f"{key}={text}")
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        """Render one record as a JSON object."""
        data: dict[str, object] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
        }
        data.update(_context(record))
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str, ensure_ascii=False)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time, so a live terminal view that redirects
    it (rich's Live) prints log lines above the view instead of through it."""

    @property
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass  # always the current sys.stderr


def configure(level: str = "INFO", fmt: LogFormat = "text") -> None:
    """Send MilkGuard's logs to stderr, one event per line."""
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # amqtt and paho narrate every packet at INFO; keep their warnings only
    for noisy in ("amqtt", "transitions", "paho"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

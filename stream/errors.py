"""Errors of the stream.

MilkGuardError
└── SinkError              a sink could not make data durable now; it is kept and retried
    ├── InfluxWriteError   InfluxDB refused or could not be reached
    ├── NotAcknowledged    the MQTT broker has not acknowledged what was published
    └── NotWritten         a local file (a store or the checkpoint) could not be written
"""

from __future__ import annotations

from milkguard.errors import MilkGuardError


class SinkError(MilkGuardError):
    """A sink could not make its data durable now; the data stays buffered for the next flush."""


class InfluxWriteError(SinkError):
    """A write to InfluxDB failed; the lines stay buffered."""


class NotAcknowledged(SinkError):  # noqa: N818 - reads as the state of the messages
    """Messages published to MQTT are not yet acknowledged by the broker."""


class NotWritten(SinkError):  # noqa: N818 - reads as the state of the file
    """A local file could not be written and fsynced (disk full, I/O error); what it was to
    hold is kept and written again at the next try."""

    def __init__(self, path: object, error: OSError) -> None:
        super().__init__(
            f"cannot write {path}: {error.strerror or error}. Free space on its disk (or fix "
            "the disk); nothing is acknowledged to the source until it is written"
        )
        self.path = path

"""Errors of the stream.

MilkGuardError
└── SinkError              a sink could not make data durable now; it is kept and retried
    ├── InfluxWriteError   InfluxDB refused or could not be reached
    └── NotAcknowledged    the MQTT broker has not acknowledged what was published
"""

from __future__ import annotations

from milkguard.errors import MilkGuardError


class SinkError(MilkGuardError):
    """A sink could not make its data durable now; the data stays buffered for the next flush."""


class InfluxWriteError(SinkError):
    """A write to InfluxDB failed; the lines stay buffered."""


class NotAcknowledged(SinkError):  # noqa: N818 - reads as the state of the messages
    """Messages published to MQTT are not yet acknowledged by the broker."""

"""Where the stream writes: time series, deviations and dead letters (ports and adapters)."""

from stream.sinks.base import (
    DeadLetter,
    DeadLetterSink,
    DeviationSink,
    FanOutDeadLetterSink,
    FanOutDeviationSink,
    FanOutTimeSeriesSink,
    SinkGroup,
    TimeSeriesSink,
)

__all__ = [
    "DeadLetter",
    "DeadLetterSink",
    "DeviationSink",
    "FanOutDeadLetterSink",
    "FanOutDeviationSink",
    "FanOutTimeSeriesSink",
    "SinkGroup",
    "TimeSeriesSink",
]

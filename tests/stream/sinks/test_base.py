"""A failing sink does not keep the others from making data durable."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from stream.sinks.base import FanOutTimeSeriesSink
from stream.sinks.memory import MemoryTimeSeriesSink


class Unreachable:
    """A remote store that is down."""

    saturated = False

    def add(self, lines: Sequence[str]) -> None:
        pass

    def flush(self) -> None:
        raise ConnectionError("down")

    def close(self) -> None:
        raise ConnectionError("down")


def test_a_failing_store_does_not_keep_the_others_from_flushing() -> None:
    before, after = MemoryTimeSeriesSink(), MemoryTimeSeriesSink()
    fan_out = FanOutTimeSeriesSink([before, Unreachable(), after])
    fan_out.add(["a v=1 1"])

    with pytest.raises(ConnectionError):
        fan_out.flush()

    assert before.lines == after.lines == ["a v=1 1"]


def test_close_reaches_every_store_and_reports_the_failure() -> None:
    local = MemoryTimeSeriesSink()
    fan_out = FanOutTimeSeriesSink([Unreachable(), local])
    fan_out.add(["a v=1 1"])

    with pytest.raises(ConnectionError):
        fan_out.close()

    assert local.lines == ["a v=1 1"]

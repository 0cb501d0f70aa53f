"""Feeding the engine as the stream does, on event time, for scenario tests."""

from __future__ import annotations

from milkguard.contract.v1 import Reading
from stream.engine import DeviationChange, Engine, UnitMismatch
from stream.plan import parse_plan
from tests.conftest import T0


def at(seconds: float) -> int:
    """Event time ``seconds`` after T0, in ms."""
    return T0 + round(seconds * 1000)


class Scenario:
    """An engine, and everything it said."""

    def __init__(self, plan: str | bytes) -> None:
        raw = plan.encode() if isinstance(plan, str) else plan
        self.engine = Engine(parse_plan(raw, "scenario.yaml"))
        self.changes: list[DeviationChange] = []

    def send(
        self,
        site: str,
        readings: list[Reading],
        *,
        device: str = "gw",
        received: int | None = None,
    ) -> list[UnitMismatch]:
        """One batch; the clock moves to its newest timestamp (or ``received``)."""
        newest = max((r.ts for r in readings), default=self.engine.now)
        routed = self.engine.submit(site, device, readings, received or newest)
        self.engine.advance(max(newest, received or 0), self.changes)
        return routed.mismatches

    def samples(
        self, site: str, asset: str, channel: str, unit: str, points: list[tuple[float, float]]
    ) -> None:
        """One batch per (seconds after T0, value)."""
        for seconds, value in points:
            self.send(site, [Reading(asset, channel, value, unit, at(seconds))])

    def idle_until(self, seconds: float) -> None:
        """Time passes with no data."""
        self.engine.advance(at(seconds), self.changes)

    def finish(self) -> None:
        """End of input: everything held is judged."""
        self.engine.flush(self.changes)

    def of(self, kind: str) -> list[DeviationChange]:
        """The changes of one rule kind."""
        return [c for c in self.changes if c.deviation.kind == kind]

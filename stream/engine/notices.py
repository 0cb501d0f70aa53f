"""What the engine tells its runtime besides deviations: counters and notices."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class EngineCounters:
    """What the engine saw, for metrics and the run summary."""

    events: int = 0
    late_events: int = 0
    unplanned_events: int = 0
    submitted: int = 0
    judged: int = 0
    unplanned: int = 0
    late: int = 0
    late_judged: int = 0  # late readings judged at their own time (stream.engine.late)
    late_beyond_bound: int = 0  # late readings older than late_judge_s: stored, not judged
    late_unrejudged: int = 0  # late readings of channels with rules not re-judged (cooling, trips)
    duplicates: int = 0
    opened: int = 0
    closed: int = 0


@dataclass(frozen=True, slots=True)
class Notice:
    """Something about the input that an operator should hear of, without a flood.

    ``unplanned``: the first reading of a channel the plan does not know.
    ``late``: a reading its channel's watermark had passed; sent for the 1st, 10th, 100th, ...
    of a channel, with the count so far.
    """

    kind: str
    site: str
    asset: str
    channel: str
    ts: int
    count: int = 1


def is_power_of_ten(n: int) -> bool:
    """1, 10, 100, ...: when a repeated notice is logged again (the first, then ever rarer)."""
    while n >= 10 and n % 10 == 0:
        n //= 10
    return n == 1

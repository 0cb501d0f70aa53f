"""The pure HACCP rule engine: readings and events in, deviations out; time is data."""

from stream.engine.deviation import (
    AppliedLimit,
    Deviation,
    DeviationChange,
    deviation_to_json,
    iso_ms,
)
from stream.engine.engine import EngineCounters, Notice, RuleEngine, UnitMismatch
from stream.engine.limits import CriticalLimitState, LimitSpec

__all__ = [
    "AppliedLimit",
    "CriticalLimitState",
    "Deviation",
    "DeviationChange",
    "EngineCounters",
    "LimitSpec",
    "Notice",
    "RuleEngine",
    "UnitMismatch",
    "deviation_to_json",
    "iso_ms",
]

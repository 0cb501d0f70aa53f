"""The pure HACCP rule engine: readings and events in, deviations out; time is data."""

from stream.engine.core import (
    Engine,
    EngineCounters,
    Notice,
    Routed,
    SnapshotMismatch,
    UnitMismatch,
)
from stream.engine.deviation import (
    AppliedLimit,
    Deviation,
    DeviationChange,
    deviation_to_json,
    iso_ms,
)
from stream.engine.machines import RuleSpec, Sample

__all__ = [
    "AppliedLimit",
    "Deviation",
    "DeviationChange",
    "Engine",
    "EngineCounters",
    "Notice",
    "Routed",
    "RuleSpec",
    "Sample",
    "SnapshotMismatch",
    "UnitMismatch",
    "deviation_to_json",
    "iso_ms",
]

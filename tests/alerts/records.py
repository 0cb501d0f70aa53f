"""Deviation change records as the stream writes them, for the alerting tests."""

from __future__ import annotations

from typing import Any


def change(kind: str, deviation_id: str = "dev-1", severity: str = "critical") -> dict[str, Any]:
    """A change of an HTST temperature deviation at plant-01, as deviations.jsonl has it."""
    return {
        "change": kind,
        "id": deviation_id,
        "status": "open" if kind == "opened" else "closed",
        "plan": "htst-us",
        "plan_version": "9136772fa79621b1",
        "ccp": "CCP-PAST-1",
        "jurisdiction": "US",
        "site": "plant-01",
        "asset": "htst-1",
        "rule_id": "pmo-htst.temperature",
        "severity": severity,
        "kind": "htst_temperature",
        "channels": ["hold_temp"],
        "limit": {"min": 72.0, "max": None, "unit": "degC", "source": "PMO"},
        "start": "2026-11-22T10:00:00.000Z",
        "detected": "2026-11-22T10:00:00.000Z",
        "end": None,
        "peak": 71.2,
        "time_beyond_s": 0.0,
        "degree_minutes": 0.0,
        "action": "divert",
        "device": "plant-01-gw",
    }

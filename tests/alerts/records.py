"""Deviation change records as the stream writes them, for the alerting tests."""

from __future__ import annotations

from typing import Any


def change(kind: str, deviation_id: str = "dev-1", severity: str = "critical") -> dict[str, Any]:
    """A change of an HTST temperature deviation at plant-01 (the fields alerting reads)."""
    return {
        "change": kind,
        "id": deviation_id,
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
        "action": "divert",
    }

"""Deviation change records as the stream writes them, and sealed as it publishes them, for the
alerting tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from milkguard.contract.records import DeviationRecord
from milkguard.signing import Signer, seal


def dev(n: int) -> str:
    """The id of test deviation ``n`` (20 hex digits, as the stream's ids are)."""
    return f"{n:020x}"


DEV1 = dev(1)


def change(kind: str, deviation_id: str = DEV1, severity: str = "critical") -> dict[str, Any]:
    """A change of an HTST temperature deviation at plant-01, as deviations.jsonl has it (on the
    stream's clock, as every joined rule's: the gateway's clock is 40 ms ahead)."""
    return {
        "change": kind,
        "id": deviation_id,
        "status": "open" if kind == "opened" else "closed",
        "kind": "htst_temperature",
        "plan": "htst-us",
        "plan_version": "9136772fa79621b1",
        "rule_id": "pmo-htst.temperature",
        "ccp": "CCP-PAST-1",
        "jurisdiction": "US",
        "severity": severity,
        "action": "divert",
        "site": "plant-01",
        "asset": "htst-1",
        "channels": ["hold_temp"],
        "device": "plant-01-gw",
        "limit": {"min": 72.0, "max": None, "sustained_s": 0.0, "unit": "degC", "source": "PMO"},
        "start": "2026-11-22T10:00:00.000Z",
        "detected": "2026-11-22T10:00:00.000Z",
        "end": None if kind == "opened" else "2026-11-22T10:00:05.000Z",
        "peak": 71.2,
        "time_beyond_s": 0.0,
        "degree_minutes": 0.0,
        "detected_late": False,
        "clock_offset_ms": 40,
        "clock_synced": None,
        "time_base": "stream",
        "clocks": [
            {
                "device": "plant-01-gw",
                "offset_ms": 40,
                "raw_start": "2026-11-22T10:00:00.040Z",
                "raw_detected": "2026-11-22T10:00:00.040Z",
                "raw_end": None if kind == "opened" else "2026-11-22T10:00:05.040Z",
            }
        ],
        "causes": [],
    }


def sealed(record: dict[str, Any], signer: Signer) -> bytes:
    """The change as the stream publishes it: in an envelope signed with ``signer``."""
    return seal(msgspec.convert(record, DeviationRecord), signer)


def stream_signer(directory: Path) -> tuple[Signer, Path]:
    """A stream's signer and its exported public key (``directory/stream.pem``)."""
    signer = Signer.load_or_create(directory / "stream-key.pem")
    public = directory / "stream.pem"
    public.write_text(signer.public_pem(), encoding="utf-8")
    return signer, public

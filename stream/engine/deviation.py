"""The deviation record: what a HACCP auditor needs to know about one breach of a limit.

Times are event-time milliseconds in memory; :func:`deviation_to_json` renders the stable JSON
schema (ISO 8601 UTC strings) that files, MQTT and later alerting read.

Which clock the times are on is part of the record (``time_base``). A rule that reads one
channel keeps its device's own timestamps (``device``): durations are right on any one clock,
and the times match the device's own trend and chart. A rule that joins channels of several
devices (HTST, UHT) is stamped on the stream's clock (``stream``: device time less that
device's estimated offset), so a duration between two devices' samples is right; ``clocks``
then keeps, per device whose sample set a time, the offset used and the same instants read on
that device's own clock. A time-sync deviation is on the stream's clock too (it is judged on
receive times) and names its ``causes``.
"""

from __future__ import annotations

import hashlib
import math
import sys
from datetime import UTC, datetime
from typing import Literal

import msgspec

from milkguard.contract.records import DeviationRecord

DeviationStatus = Literal["open", "closed"]
ChangeKind = Literal["opened", "closed"]
TimeBase = Literal["device", "stream"]
#: Why a time-sync deviation was raised (both may hold at once).
TimeSyncCause = Literal["offset_beyond_tolerance", "gateway_unsynchronised"]


class AppliedLimit(msgspec.Struct, frozen=True):
    """The limit as it was applied when the deviation was judged."""

    min: float | None
    max: float | None
    sustained_s: float
    unit: str
    source: str


class DeviceTime(msgspec.Struct, frozen=True):
    """A deviation's instants read on one device's own clock, for a deviation stamped on the
    stream's clock: each raw time is the stream's time plus ``offset_ms`` (None: that instant
    was not set by this device's sample)."""

    device: str
    offset_ms: int  # the device clock's estimated offset used (ahead: positive)
    raw_start_ms: int | None = None
    raw_detected_ms: int | None = None
    raw_end_ms: int | None = None


class Deviation(msgspec.Struct):
    """One breach of one rule on one asset, open until the channel is back within the limit."""

    id: str
    status: DeviationStatus
    kind: str  # the rule kind: critical_limit, stuck_sensor, rate_of_change, monitoring_lost
    plan: str
    plan_version: str
    rule_id: str
    ccp: str | None
    jurisdiction: str
    severity: str
    action: str
    site: str
    asset: str
    channels: list[str]
    device: str
    limit: AppliedLimit
    start_ms: int
    detected_ms: int
    end_ms: int | None
    peak: float | None  # the most extreme value (None for monitoring lost)
    time_beyond_s: float
    degree_minutes: float
    detected_late: bool = False  # found from readings that reached the stream late
    clock_offset_ms: int = 0  # the device clock's estimated offset when it was detected
    clock_synced: bool | None = None  # time sync: the gateway's own report (None: no report)
    time_base: TimeBase = "device"  # the clock start, detected and end are on
    clocks: list[DeviceTime] = msgspec.field(default_factory=list)  # time_base "stream" only
    causes: list[TimeSyncCause] = msgspec.field(default_factory=list)  # time sync only
    load_id: str | None = None  # a load judged from its receipt event: the load's id
    product: str | None = None  # HTST: the product whose limit was breached (its event's id)
    product_class: str | None = None  # HTST: that product's class (milk, rich, eggnog)
    #: the value of the sample that opened it (a CCP limit's: the excursion's first value);
    #: None when a timer or a clock opened it, and in snapshots written before it existed
    value: float | None = None


class DeviationChange(msgspec.Struct, frozen=True):
    """A deviation opened or closed; sinks receive these."""

    kind: ChangeKind
    deviation: Deviation


def deviation_id(plan_version: str, rule_id: str, site: str, asset: str, start_ms: int) -> str:
    """A stable id: the same breach judged by the same plan always gets the same id."""
    key = f"{plan_version}|{rule_id}|{site}|{asset}|{start_ms}".encode()
    return hashlib.sha256(key).hexdigest()[:20]


def iso_ms(epoch_ms: int) -> str:
    """Epoch milliseconds as ISO 8601 UTC with milliseconds: ``2026-11-22T10:00:00.120Z``."""
    moment = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{epoch_ms % 1000:03d}Z"


def _iso_or_none(epoch_ms: int | None) -> str | None:
    return iso_ms(epoch_ms) if epoch_ms is not None else None


def _finite(figure: float) -> float:
    """A figure as a signed record can carry it (RFC 8785 has no infinity or NaN): the largest
    finite float of its sign, or 0 for NaN. The engine's figures are finite; this keeps a
    deviation publishable should one ever not be, rather than drop or raise on it."""
    if math.isfinite(figure):
        return figure
    return 0.0 if math.isnan(figure) else math.copysign(sys.float_info.max, figure)


def deviation_to_json(change: DeviationChange) -> dict[str, object]:
    """The stable JSON form of a deviation change (one line of deviations.jsonl)."""
    d = change.deviation
    return {
        "change": change.kind,
        "id": d.id,
        "status": d.status,
        "kind": d.kind,
        "plan": d.plan,
        "plan_version": d.plan_version,
        "rule_id": d.rule_id,
        "ccp": d.ccp,
        "jurisdiction": d.jurisdiction,
        "severity": d.severity,
        "action": d.action,
        "site": d.site,
        "asset": d.asset,
        "channels": d.channels,
        "device": d.device,
        "limit": msgspec.to_builtins(d.limit),
        "start": iso_ms(d.start_ms),
        "detected": iso_ms(d.detected_ms),
        "end": _iso_or_none(d.end_ms),
        "peak": d.peak if d.peak is None or math.isfinite(d.peak) else None,
        "time_beyond_s": round(_finite(d.time_beyond_s), 3),
        "degree_minutes": round(_finite(d.degree_minutes), 4),
        "detected_late": d.detected_late,
        "clock_offset_ms": d.clock_offset_ms,
        "clock_synced": d.clock_synced,
        "time_base": d.time_base,
        "clocks": [_device_time_to_json(t) for t in d.clocks],
        "causes": list(d.causes),
        # only where a record names a load: every other line keeps the JSON it always had
        **({} if d.load_id is None else {"load_id": d.load_id}),
        # only when known: every other record reads as it always has
        **({"product": d.product} if d.product is not None else {}),
        **({"product_class": d.product_class} if d.product_class is not None else {}),
    }


def _device_time_to_json(times: DeviceTime) -> dict[str, object]:
    return {
        "device": times.device,
        "offset_ms": times.offset_ms,
        "raw_start": _iso_or_none(times.raw_start_ms),
        "raw_detected": _iso_or_none(times.raw_detected_ms),
        "raw_end": _iso_or_none(times.raw_end_ms),
    }


def deviation_record(change: DeviationChange) -> DeviationRecord:
    """The typed record of the wire contract (what the stream signs and publishes).

    Raises ``msgspec.ValidationError`` when the change falls outside the contract (an id or
    kind the contract does not know): such a change must not be published half-checked.
    """
    return msgspec.convert(deviation_to_json(change), DeviationRecord)

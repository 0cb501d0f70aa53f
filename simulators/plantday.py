"""A simulated plant day as the line protocol ``milkguard run`` writes, for the dashboards'
InfluxDB tests and their PNG previews.

Scenarios of the library run one after another on 2026-11-22 (UTC), each through the stream's
real path: payloads on their topics at their send times -> :class:`stream.ingest.Ingest` with
its rule engine -> the line protocol its time-series sink receives. The day holds a truck route
with an open hatch and one collecting from two farms (positions), three HTST runs (a heater dip
that diverts, cream under-pasteurized, a flow surge), and a UHT line with its powder room, can
line and cold store (a heater dip).

The measurements the dashboards add (``gateway``, ``seen``, ``limit``, ``position``, an
event's ``text``, a deviation's interval, limit, value and source) are made here by
:func:`dashboard_additions`, a stand-in written to the agreed schema until the stream writes
them itself; it is replaced by the stream's own writer then, and nothing else changes.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from simulators.check import feed
from simulators.runner import Outgoing
from simulators.scenario import load_scenario
from stream.engine.core import Engine
from stream.engine.deviation import DeviationChange
from stream.ingest import Ingest
from stream.lineprotocol import escape_tag, string_field
from stream.plan import (
    Cooling,
    CriticalLimit,
    Htst,
    LoadedPlan,
    Rule,
    Transport,
    Uht,
    load_plan,
)
from stream.replay import JsonLinesDeviationWriter
from stream.sinks.memory import MemoryDeadLetterSink, MemoryDeviationSink, MemoryTimeSeriesSink

#: The simulated day (UTC midnight).
DAY = datetime(2026, 11, 22, tzinfo=UTC)

#: (scenario, hour of the day it starts, hours it runs or None for the file's): one after
#: another, so no series overlaps itself. The day ends in a second flow surge, cut off while
#: its deviation is still open.
DAY_SCENARIOS: tuple[tuple[str, float, float | None], ...] = (
    ("route-hatch-open", 0.0, None),
    ("route-two-farms", 6.0, None),
    ("htst-heater-dip-diverts", 11.0, None),
    ("htst-cream-class", 12.0, None),
    ("htst-flow-surge", 13.0, None),
    ("plant-uht-heater-dip", 14.0, None),
    ("htst-flow-surge", 15.0, 0.55),
)

#: The hours of the day each dashboard's preview shows (where its assets ran).
PREVIEW_HOURS: dict[str, tuple[float, float]] = {
    "plant-overview": (0.0, 15.6),
    "farm-tank": (0.0, 11.0),
    "truck-load": (6.0, 11.0),
    "htst": (11.0, 14.0),
    "uht": (14.0, 15.0),
    "rooms-cans": (14.0, 15.0),
    "deviations": (0.0, 15.6),
}

_SCENARIOS = Path(__file__).parent / "scenarios"
_STATUS_EVERY_MS = 300_000
_SEEN_EVERY_MS = 10_000
_LIMITS_EVERY_MS = 300_000


@dataclass
class PlantDay:
    """The day's line protocol, and what the stream judged."""

    lines: list[str] = field(default_factory=list)
    changes: list[DeviationChange] = field(default_factory=list)
    start_ms: int = 0
    end_ms: int = 0


def simulate_plant_day(
    scenarios: Iterable[tuple[str, float, float | None]] = DAY_SCENARIOS,
) -> PlantDay:
    """Run each scenario from its hour of :data:`DAY` through ingest and collect its lines."""
    day = PlantDay(start_ms=_ms(DAY))
    for name, hour, hours in scenarios:
        scenario, plan_path = load_scenario(_SCENARIOS / f"{name}.yaml")
        changed: dict[str, object] = {"start": DAY + timedelta(hours=hour)}
        if hours is not None:
            changed["duration_h"] = hours
        scenario = scenario.model_copy(update=changed)
        plan = load_plan(plan_path)
        series = MemoryTimeSeriesSink()
        deviations = MemoryDeviationSink()
        ingest = Ingest(
            Engine(plan),
            series,
            _Both(deviations, JsonLinesDeviationWriter(io.StringIO())),
            MemoryDeadLetterSink(),
        )
        sent = feed(ingest, scenario)
        ingest.finish()
        series.flush()
        start = _ms(scenario.start)
        end = start + round(scenario.duration_h * 3_600_000)
        day.lines += series.lines
        day.lines += dashboard_additions(plan, sent, deviations.changes, start, end)
        day.changes += deviations.changes
        day.end_ms = max(day.end_ms, end)
    return day


class _Both:
    """Deviation changes to two sinks (the records kept for the additions, and the JSON lines
    the stream's replay writes)."""

    def __init__(self, first: MemoryDeviationSink, second: JsonLinesDeviationWriter) -> None:
        self._sinks = (first, second)

    def emit(self, change: DeviationChange) -> None:
        """Both sinks take the change."""
        for sink in self._sinks:
            sink.emit(change)

    def flush(self) -> None:
        """Both flush."""
        for sink in self._sinks:
            sink.flush()

    def close(self) -> None:
        """Both close."""
        for sink in self._sinks:
            sink.close()


def _ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


# --- stand-in for the stream's writer of the dashboard measurements (agreed schema) ----------


def dashboard_additions(
    plan: LoadedPlan,
    sent: list[Outgoing],
    changes: list[DeviationChange],
    start_ms: int,
    end_ms: int,
) -> list[str]:
    """The ``gateway``, ``seen``, ``limit`` and ``position`` points, each event's ``text`` and
    each deviation's interval fields, for one scenario's payloads, following the agreed
    schema line for line. A stand-in until the stream writes them (see the module's doc)."""
    lines: list[str] = []
    lines += _gateway_and_seen(sent, end_ms)
    lines += _limits(plan, start_ms, end_ms)
    lines += _positions_and_texts(sent)
    lines += [_deviation_fields(change) for change in changes]
    return lines


def _gateway_and_seen(sent: list[Outgoing], end_ms: int) -> list[str]:
    lines: list[str] = []
    last_status: dict[tuple[str, str], int] = {}
    last_seen: dict[tuple[str, str], int] = {}
    for outgoing in sent:
        batch = json.loads(outgoing.payload)
        if not isinstance(batch, dict) or "site" not in batch or "gateway" not in batch:
            continue  # a malformed payload of a fault scenario: dead-lettered, never seen
        key = (str(batch["site"]), str(batch["gateway"]))
        stamps = [int(r["ts"]) for r in batch.get("readings", []) if "ts" in r]
        stamps += [int(e["ts"]) for e in batch.get("events", []) if "ts" in e]
        newest = max(stamps, default=outgoing.send_ms)
        if outgoing.send_ms - last_status.get(key, -_STATUS_EVERY_MS) >= _STATUS_EVERY_MS:
            last_status[key] = outgoing.send_ms
            lines.append(_gateway_line(*key, outgoing.send_ms, online=True))
        if outgoing.send_ms - last_seen.get(key, -_SEEN_EVERY_MS) >= _SEEN_EVERY_MS:
            last_seen[key] = outgoing.send_ms
            lines.append(
                f"seen,site={key[0]},gateway={key[1]} last_batch_ms={outgoing.send_ms}i,"
                f"lag_ms={outgoing.send_ms - newest}i {outgoing.send_ms}000000"
            )
    # the scenario ends: each gateway's last will says offline
    lines += [_gateway_line(*key, end_ms, online=False) for key in last_status]
    return lines


def _gateway_line(site: str, gateway: str, stamp_ms: int, *, online: bool) -> str:
    state = "online" if online else "offline"
    flag = "true" if online else "false"
    return (
        f"gateway,site={site},gateway={gateway} state={string_field(state)},online={flag},"
        f"backlog=0i,outbox_bytes=0i,outbox_nearly_full=false,dropped_readings=0i,"
        f"refused_readings=0i,alarm=false,clock_offset_ms=0.0,clock_synced=true,"
        f'clock_source="ntp",failing_sources=0i,failing="" {stamp_ms}000000'
    )


def _limits(plan: LoadedPlan, start_ms: int, end_ms: int) -> list[str]:
    """Each channel's limits from the plan, written every 5 min of the scenario."""
    found: list[str] = []
    for rule in plan.plan.rules:
        asset = plan.plan.assets[rule.asset]
        for channel, kind, bound, value in _rule_limits(rule):
            found.append(
                f"limit,site={asset.site},asset={asset.id or rule.asset},"
                f"channel={escape_tag(channel)},rule={escape_tag(rule.id)},kind={kind},"
                f"bound={bound} value={float(value)!r} "
            )
    first = start_ms - start_ms % _LIMITS_EVERY_MS
    return [
        f"{prefix}{stamp}000000"
        for stamp in range(first, end_ms + 1, _LIMITS_EVERY_MS)
        for prefix in found
    ]


def _rule_limits(rule: Rule) -> list[tuple[str, str, str, float]]:
    """A rule's limits as (channel, kind, bound, value)."""
    if isinstance(rule, CriticalLimit):
        return [
            (rule.channel, rule.kind, bound, value)
            for bound, value in (("min", rule.min), ("max", rule.max))
            if value is not None
        ]
    if isinstance(rule, Htst):
        return [
            (rule.indicating, "legal_temperature", "min", rule.legal.temp_c),
            ("holding_time_s", "legal_hold", "min", rule.legal.hold_s),
        ]
    if isinstance(rule, Uht):
        return [("f0_min", "f0", "min", rule.min_f0)]
    if isinstance(rule, Cooling):
        # the strictest target of the deadlines counted from the same event
        reach: dict[str, float] = {}
        for deadline in rule.deadlines:
            reach[deadline.after] = min(
                reach.get(deadline.after, deadline.reach_max), deadline.reach_max
            )
        limits = [
            (rule.channel, f"cooling_reach_{after}", "max", value)
            for after, value in sorted(reach.items())
        ]
        if rule.blend_max is not None:
            limits.append((rule.channel, "blend", "max", rule.blend_max))
        return limits
    if isinstance(rule, Transport) and rule.exposure_above is not None:
        return [(rule.channel, "exposure_above", "max", rule.exposure_above)]
    return []


def _positions_and_texts(sent: list[Outgoing]) -> list[str]:
    lines: list[str] = []
    for outgoing in sent:
        batch = json.loads(outgoing.payload)
        if not isinstance(batch, dict) or "site" not in batch:
            continue
        site, gateway = batch["site"], batch["gateway"]
        halves: dict[tuple[str, int], dict[str, float]] = {}
        for reading in batch.get("readings", []):
            if reading.get("channel") in ("lat", "lon") and reading.get("unit") == "deg":
                key = (reading["asset"], int(reading["ts"]))
                halves.setdefault(key, {})[reading["channel"]] = float(reading["value"])
        for (asset, ts), half in sorted(halves.items()):
            if len(half) == 2:
                lines.append(
                    f"position,site={site},asset={asset},gateway={gateway} "
                    f"lat={half['lat']!r},lon={half['lon']!r} {ts}000000"
                )
        for event in batch.get("events", []):
            # the same series and time as the stream's event line: InfluxDB adds the field
            lines.append(
                f"event,site={site},asset={event['asset']},kind={event['kind']},"
                f"gateway={gateway} text={string_field(_event_text(event))} {event['ts']}000000"
            )
    return lines


def _event_text(event: dict[str, object]) -> str:
    kind = str(event["kind"])
    if kind == "product_change":
        return f"product_change: {event['product']} ({event['fat_pct']:g} % fat)"
    volume = event.get("volume_l")
    litres = f" {volume:,.0f} L" if isinstance(volume, int | float) else ""
    if kind == "pickup":
        return (
            f"pickup {event.get('load_id')}{litres} from {event.get('source_site')}/"
            f"{event.get('source_asset')} into {event.get('compartment')}"
        )
    if kind == "delivery":
        return f"delivery {event.get('load_id')}{litres} from {event.get('compartment')}"
    return kind


def _deviation_fields(change: DeviationChange) -> str:
    """The interval fields of a deviation line (same series and time as the stream's line)."""
    d = change.deviation
    bound = d.limit.min if d.limit.min is not None and d.limit.max is None else d.limit.max
    extra = f"limit={float(bound)!r}," if bound is not None else ""
    end = f"end_ms={d.end_ms}i," if d.end_ms is not None else ""
    return (
        f"deviation,site={d.site},asset={d.asset},rule={escape_tag(d.rule_id)},kind={d.kind},"
        f"severity={d.severity},change={change.kind} {extra}start_ms={d.start_ms}i,{end}"
        f"detected_ms={d.detected_ms}i,source={string_field(d.limit.source)} {d.start_ms}000000"
    )

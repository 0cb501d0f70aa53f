"""What the plant's dashboards draw beside the readings, made from the plan and the stream.

- ``limit`` points: every channel's critical limits as the plan states them, so a panel draws
  its threshold lines from data, written at the first judgement and again in every interval
  of ``limits_every_ms`` of the engine's clock, stamped at the interval's start (so any
  dashboard window that long holds them);
- ``position`` points: a vehicle's ``lat`` and ``lon`` channels (unit ``deg``) of one instant
  joined into one point (a half with no partner is no position; its reading is stored all
  the same);
- ``seen`` points: when each gateway was last heard from, at most once per
  :data:`SEEN_EVERY_MS` of receive time.

None of it is on a reading's path unless the plan gives a reason: positions are looked for only
in the batches of sites with an asset that has both channels (known once, from the plan), and
per gateway layout only once.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from milkguard.contract.v1 import Reading
from stream.lineprotocol import limit_prefix, position_line, seen_line
from stream.plan import (
    PRODUCT_CLASSES,
    Cooling,
    CriticalLimit,
    Htst,
    LoadedPlan,
    ReceiptCheck,
    Transport,
    Uht,
)

#: How often, in the engine's clock, the limits are written again by default.
DEFAULT_LIMITS_EVERY_MS = 300_000
#: At most one ``seen`` point per gateway per this much receive time.
SEEN_EVERY_MS = 10_000
#: Gateways whose last ``seen`` point is remembered: the runtime's caps on gateways, whose
#: duplicate windows are kept, are far below it. Beyond, a gateway gets no ``seen`` point.
MAX_SEEN_GATEWAYS = 20_000
#: The channels a position is joined from.
LATITUDE, LONGITUDE = "lat", "lon"


@dataclass(frozen=True, slots=True)
class Limit:
    """One bound of one limit on one channel, as a ``limit`` point carries it.

    ``channel`` is the channel the bound applies to, or the quantity the engine derives from
    the channels (``holding_time_s``, ``f0_min``: the ``derived`` measurement's). ``kind``:
    ``critical_limit``, ``legal_temperature`` (HTST, milk), ``legal_temperature_rich``,
    ``legal_temperature_eggnog``, ``legal_hold`` (and its ``_rich``/``_eggnog``),
    ``cooling_reach_<after>``, ``blend``, ``exposure_above``, ``receipt``, ``f0``.
    """

    site: str
    asset: str
    channel: str
    rule: str
    kind: str
    bound: str  # "min" or "max"
    value: float


def plan_limits(loaded: LoadedPlan) -> list[Limit]:
    """Every bound the plan's rules set on a channel (or a derived quantity), in rule order."""
    plan = loaded.plan
    limits: list[Limit] = []
    for rule in plan.rules:
        asset = plan.assets.get(rule.asset)
        if asset is None:  # a part of the plan (one worker's sites) keeps only its rules
            continue
        site, name = asset.site, asset.id or rule.asset
        limits.extend(
            Limit(site, name, channel, rule_id, kind, bound, value)
            for channel, rule_id, kind, bound, value in _bounds(rule)
        )
    return limits


def _bounds(rule: object) -> Iterator[tuple[str, str, str, str, float]]:
    """(channel, rule, kind, bound, value) of each bound a rule sets."""
    match rule:
        case CriticalLimit():
            if rule.min is not None:
                yield rule.channel, rule.id, "critical_limit", "min", rule.min
            if rule.max is not None:
                yield rule.channel, rule.id, "critical_limit", "max", rule.max
        case Htst():
            yield from _pasteurizer_bounds(rule)
        case Cooling():
            yield from _cooling_bounds(rule)
        case Transport() if rule.exposure_above is not None:
            yield rule.channel, rule.id, "exposure_above", "max", rule.exposure_above
        case ReceiptCheck():
            yield rule.channel, rule.id, "receipt", "max", rule.max
        case Uht():
            yield "f0_min", rule.id, "f0", "min", rule.min_f0


def _pasteurizer_bounds(rule: Htst) -> Iterator[tuple[str, str, str, str, float]]:
    """The legal temperature (on the indicating thermometer) and holding time (on the derived
    holding time, when the plan gives the flow) of each product class."""
    for product in PRODUCT_CLASSES:
        suffix = "" if product == "milk" else f"_{product}"
        pair = rule.pair(product)
        yield rule.indicating, rule.id, f"legal_temperature{suffix}", "min", pair.temp_c
        if rule.flow is not None:
            yield "holding_time_s", rule.id, f"legal_hold{suffix}", "min", pair.hold_s


def _cooling_bounds(rule: Cooling) -> Iterator[tuple[str, str, str, str, float]]:
    """The temperature each deadline must reach (the strictest of those counted from the same
    event) and the blend limit."""
    reach: dict[str, float] = {}
    for deadline in rule.deadlines:
        reach[deadline.after] = min(reach.get(deadline.after, math.inf), deadline.reach_max)
    for after, value in reach.items():
        yield rule.channel, rule.id, f"cooling_reach_{after}", "max", value
    if rule.blend_max is not None:
        yield rule.channel, rule.id, "blend", "max", rule.blend_max


class LimitLines:
    """The plan's limits as lines, formatted once; :meth:`due` says when to write them."""

    __slots__ = ("_next_ms", "every_ms", "prefixes")

    def __init__(self, loaded: LoadedPlan, every_ms: int = DEFAULT_LIMITS_EVERY_MS) -> None:
        self.every_ms = every_ms
        self.prefixes = [
            limit_prefix(
                limit.site,
                limit.asset,
                limit.channel,
                rule=limit.rule,
                kind=limit.kind,
                bound=limit.bound,
                value=limit.value,
            )
            for limit in plan_limits(loaded)
        ]
        self._next_ms = -1  # written at the first judgement

    def due(self, now_ms: int, lines: list[str]) -> None:
        """Add the limits to ``lines`` when the engine's clock ``now_ms`` has entered an
        interval of ``every_ms`` (counted from the epoch) they were not written in yet, stamped
        at the interval's start: the same points whether messages were judged one by one or
        drained together (unless a drain spans intervals: then only the last one's)."""
        if now_ms < self._next_ms or now_ms < 0 or not self.prefixes:
            return
        start_ms = now_ms - now_ms % self.every_ms
        stamp = f"{start_ms}000000"
        lines.extend(prefix + stamp for prefix in self.prefixes)
        self._next_ms = start_ms + self.every_ms


class PositionJoin:
    """Joins each vehicle's latitude and longitude readings of one instant into a point.

    Only assets with both channels in the plan, unit ``deg``, are joined. A gateway sends both
    channels in one batch; a half whose partner has not come yet waits (one per asset and
    channel, the newest) for the partner of the same timestamp in a later batch.
    """

    __slots__ = ("_assets", "_halves", "_layouts", "sites")

    def __init__(self, loaded: LoadedPlan) -> None:
        assets: set[tuple[str, str]] = set()
        for key, asset in loaded.plan.assets.items():
            channels = asset.channels
            if all(
                name in channels and channels[name].unit == "deg" for name in (LATITUDE, LONGITUDE)
            ):
                assets.add((asset.site, asset.id or key))
        self._assets = frozenset(assets)
        #: the sites with a vehicle: a batch of any other site is not looked at
        self.sites = frozenset(site for site, _ in assets)
        # per gateway: its layout (the engine's, the same object while it holds) and the
        # indices of the position channels' readings in it
        self._layouts: dict[tuple[str, str], tuple[object, list[int]]] = {}
        # (site, asset, channel): (ts, value) of a half waiting for its partner
        self._halves: dict[tuple[str, str, str], tuple[int, float]] = {}

    def lines(
        self,
        site: str,
        gateway: str,
        readings: list[Reading],
        layout: list[tuple[str, str, str]] | None,
        lines: list[str],
    ) -> None:
        """Add the positions a batch's readings (of a site in :attr:`sites`) make to ``lines``."""
        if layout is not None:
            cached = self._layouts.get((site, gateway))
            if cached is not None and cached[0] is layout:
                indices = cached[1]
            else:
                indices = [i for i, key in enumerate(layout) if self._joined(site, *key)]
                if cached is not None or len(self._layouts) < len(self._assets) * 16 + 64:
                    self._layouts[(site, gateway)] = (layout, indices)
            if not indices:
                return
            chosen = [readings[i] for i in indices]
        else:
            chosen = [r for r in readings if self._joined(site, r.asset, r.channel, r.unit)]
            if not chosen:
                return
        self._join(site, gateway, chosen, lines)

    def _joined(self, site: str, asset: str, channel: str, unit: str) -> bool:
        return unit == "deg" and channel in (LATITUDE, LONGITUDE) and (site, asset) in self._assets

    def _join(self, site: str, gateway: str, chosen: list[Reading], lines: list[str]) -> None:
        halves = self._halves
        pairs: dict[tuple[str, int], list[float | None]] = {}
        for reading in chosen:
            pair = pairs.setdefault((reading.asset, reading.ts), [None, None])
            pair[reading.channel == LONGITUDE] = reading.value
        for (asset, ts), pair in pairs.items():
            lat, lon = pair
            if lat is None or lon is None:
                have, missing = (LATITUDE, LONGITUDE) if lon is None else (LONGITUDE, LATITUDE)
                waiting = halves.get((site, asset, missing))
                if waiting is None or waiting[0] != ts:
                    half = lat if lon is None else lon
                    assert half is not None  # a pair holds at least the reading that made it
                    halves[(site, asset, have)] = (ts, half)
                    continue
                del halves[(site, asset, missing)]
                lat, lon = (lat, waiting[1]) if lon is None else (waiting[1], lon)
            if lat is not None and lon is not None and -90.0 <= lat <= 90.0:
                # a latitude beyond the poles is no place
                lines.append(position_line(site, asset, gateway, lat=lat, lon=lon, ts=ts))


class SeenClock:
    """When each gateway was last heard from, as ``seen`` points, at most one per gateway per
    :data:`SEEN_EVERY_MS` of receive time."""

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next: dict[tuple[str, str], int] = {}

    def heard(
        self, site: str, gateway: str, received_ms: int, newest_ms: int, lines: list[str]
    ) -> None:
        """A batch of the gateway's, received at ``received_ms``, its newest data stamped
        ``newest_ms``: a ``seen`` point when the last is :data:`SEEN_EVERY_MS` old."""
        route = (site, gateway)
        due = self._next.get(route)
        if due is None:
            if len(self._next) >= MAX_SEEN_GATEWAYS:
                return
        elif received_ms < due:
            return
        self._next[route] = received_ms + SEEN_EVERY_MS
        lines.append(seen_line(site, gateway, received_ms, newest_ms))

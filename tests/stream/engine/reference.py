"""A plain, per-reading reference of the engine's semantics, for property tests.

Written from the rules as documented, not from the fast engine: no numpy, no screening, no
machines; one dictionary of state per channel and one per rule, every reading judged one at a
time. The fast engine must say exactly what this says.

The rules driven by events or read over several channels are here too, each from its
documentation (the plan models' docstrings and the machine modules'): a tank's cooling deadlines
and blend limit, the age of the oldest milk in a tank or compartment (emptied by a take that
leaves no more than its heel, by the volumes the events report), a load's transit time and
temperature exposure, an HTST pasteurizer (temperature with the valve state of that instant and
the product in force, holding time from the flow, recorder against indicating) and a UHT line's
F0 per parcel. Events are taken in time order, as they come. The plant events (receipts, silo
transfers, silos emptied, the sources of a run) are ignored: no rule modelled here reads them
(the receipt check, which judges a receipt's temperature, is not modelled), so the fast engine
must say the same with them as without them.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

from milkguard.contract.v1 import (
    CipEnd,
    CipStart,
    Delivery,
    Event,
    MilkingEnd,
    MilkingStart,
    Pickup,
    ProductChange,
    Reading,
)
from stream.plan import (
    Cooling,
    CriticalLimit,
    Htst,
    LoadedPlan,
    RateOfChange,
    StorageAge,
    StuckSensor,
    Transport,
    Uht,
)

#: what a change is compared by
ChangeKey = tuple[Any, ...]


def _excursion_state() -> dict[str, Any]:
    return {
        "open": None,
        "breach_start": None,
        "peak": 0.0,
        "peak_excess": 0.0,
        "degree_ms": 0.0,
        "last_ts": 0,
        "last_excess": 0.0,
    }


@dataclass
class _Channel:
    row: int
    site: str
    asset: str
    channel: str
    unit: str
    silence_ms: int
    lateness_ms: int
    ccp: bool
    rules: list[dict[str, Any]] = field(default_factory=list)
    last_ts: int = -1
    last_value: float = 0.0
    run_start: int = 0
    newest: int = -1
    last_received: int = -1
    last_device: str = "unknown"
    held: list[tuple[int, float, int, str]] = field(default_factory=list)
    silence_open: dict[str, Any] | None = None
    cleaning: list[list[int]] = field(default_factory=list)  # shared by the asset's channels
    roles: list[tuple[_Line, str]] = field(default_factory=list)  # rules reading it with others
    coolings: list[_Cooling] = field(default_factory=list)
    trips: list[_Trip] = field(default_factory=list)


@dataclass
class _Deadline:
    """A cooling deadline: ``reach_max`` by ``due``, judged by the last sample from ``started``
    up to ``due``; a miss ends at ``until`` if the milk left before it reached the temperature."""

    after: str
    started: int
    due: int
    reach_max: float
    until: int = 2**62
    last_value: float | None = None
    missed: dict[str, Any] | None = None  # the open deviation of a miss


@dataclass
class _Cooling:
    """A bulk tank's cooling rule."""

    rule: Cooling
    channel: _Channel
    empty: bool = True  # no milking since the tank was emptied (or since monitoring began)
    deadlines: list[_Deadline] = field(default_factory=list)  # not yet judged
    missed: list[_Deadline] = field(default_factory=list)  # judged missed, still open
    later_milkings: list[list[int]] = field(default_factory=list)  # [start, end or _OPEN]
    blend: dict[str, Any] = field(default_factory=_excursion_state)


@dataclass
class _Age:
    """The oldest milk in a tank or compartment."""

    rule: StorageAge
    asset: str
    oldest: list[int] = field(default_factory=list)  # how old each lot of milk in it is
    open: dict[str, Any] | None = None


@dataclass
class _Books:
    """A tank's or compartment's volume, as its events report it (None: not known)."""

    heel_l: float
    volume: float | None = 0.0
    filling: bool = False  # a milking started whose volume has not come

    def take(self, volume: float) -> bool:
        """True when the take leaves no more than the heel (or the contents were unknown)."""
        held = None if self.filling else self.volume
        if held is None or held - volume <= self.heel_l:
            self.volume, self.filling = 0.0, False
            return True
        self.volume = held - volume
        return False


@dataclass
class _Trip:
    """A compartment's load from its first pickup to its delivery."""

    rule: Transport
    channel: _Channel
    loaded_since: int | None = None
    delivered_at: int | None = None
    seen: int = -1  # the newest sample judged while loaded
    degree_ms: float = 0.0
    last: tuple[int, float] | None = None  # the last sample's time and excess
    transit: dict[str, Any] | None = None
    exposure: dict[str, Any] | None = None


@dataclass
class _Line:
    """A pasteurizer (HTST) or a UHT line: channels judged together, in time order."""

    rule: Htst | Uht
    asset: str
    channels: list[_Channel] = field(default_factory=list)
    forward: bool = True  # the valve's state; never assume a divert before it says so
    indicating: float | None = None
    flow: float | None = None
    products: list[tuple[int, bool]] = field(default_factory=list)  # (since, rich)
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)


class ReferenceEngine:
    """The engine's semantics, the slow and obvious way."""

    def __init__(self, loaded: LoadedPlan) -> None:
        plan = loaded.plan
        self.plan_version = loaded.version
        self.changes: list[ChangeKey] = []
        self.late = 0
        self.duplicates = 0
        self.judged = 0
        self.now = -1
        self.started = -1
        self.grace_ms = round(plan.startup_grace_s * 1000)
        self.channels: dict[tuple[str, str, str, str], _Channel] = {}
        by_key: dict[tuple[str, str], _Channel] = {}
        self.cleaning: dict[tuple[str, str], list[list[int]]] = {}
        for key, asset in plan.assets.items():
            windows: list[list[int]] = []
            self.cleaning[(asset.site, asset.id or key)] = windows
            lateness = (
                asset.allowed_lateness_s
                if asset.allowed_lateness_s is not None
                else plan.allowed_lateness_s
            )
            for name, spec in asset.channels.items():
                silence_s = spec.silence_after_s or spec.interval_s * plan.silence_factor
                channel = _Channel(
                    row=len(self.channels),
                    site=asset.site,
                    asset=asset.id or key,
                    channel=name,
                    unit=spec.unit,
                    silence_ms=round(silence_s * 1000),
                    lateness_ms=round(lateness * 1000),
                    ccp=spec.ccp,
                    cleaning=windows,
                )
                self.channels[(asset.site, channel.asset, name, spec.unit)] = channel
                by_key[(key, name)] = channel
        self.coolings: dict[tuple[str, str], list[_Cooling]] = {}
        self.ages: dict[tuple[str, str], _Age] = {}
        self.trips: dict[tuple[str, str], list[_Trip]] = {}
        self.lines: dict[tuple[str, str], list[_Line]] = {}
        self.books = {
            (asset.site, asset.id or key): _Books(asset.heel_l)
            for key, asset in plan.assets.items()
        }
        for rule in plan.rules:
            asset = plan.assets[rule.asset]
            where = (asset.site, asset.id or rule.asset)
            if isinstance(rule, StorageAge):
                self.ages[where] = _Age(rule, where[1])
            elif isinstance(rule, Htst | Uht):
                line = _Line(rule, where[1])
                roles = (
                    {
                        "indicating": rule.indicating,
                        "flow_diversion": rule.flow_diversion,
                        "recorder": rule.recorder,
                        "flow": rule.flow,
                    }
                    if isinstance(rule, Htst)
                    else {"outlet": rule.outlet, "flow": rule.flow}
                )
                for role, name in roles.items():
                    if name is not None:
                        by_key[(rule.asset, name)].roles.append((line, role))
                        line.channels.append(by_key[(rule.asset, name)])
                self.lines.setdefault(where, []).append(line)
            elif isinstance(rule, Cooling):
                cooling = _Cooling(rule, by_key[(rule.asset, rule.channel)])
                cooling.channel.coolings.append(cooling)
                self.coolings.setdefault(where, []).append(cooling)
            elif isinstance(rule, Transport):
                trip = _Trip(rule, by_key[(rule.asset, rule.channel)])
                trip.channel.trips.append(trip)
                self.trips.setdefault(where, []).append(trip)
            else:
                state: dict[str, Any] = {"rule": rule, "open": None}
                if isinstance(rule, CriticalLimit):
                    state.update(_excursion_state())
                by_key[(rule.asset, rule.channel)].rules.append(state)

    # ----------------------------------------------------------------------------- input

    def submit_events(self, site: str, events: list[Event]) -> None:
        """A gateway's events, in time order."""
        for event in sorted(events, key=lambda e: e.ts):
            ts = event.ts
            if isinstance(event, CipStart | CipEnd):
                self._cip(site, event)
            elif isinstance(event, MilkingStart | MilkingEnd):
                self._milking(site, event)
            elif isinstance(event, Pickup):
                self._pickup(site, event)
            elif isinstance(event, Delivery):
                books = self.books.get((site, event.compartment))
                if books is not None and not books.take(event.volume_l):
                    continue  # milk left aboard: its age and its trip go on
                age = self.ages.get((site, event.compartment))
                if age is not None:
                    self._emptied(age, ts)
                for trip in self.trips.get((site, event.compartment), []):
                    self._delivered(trip, ts)
            elif isinstance(event, ProductChange):
                # the plan: fat >= 10 %, total solids >= 18 %, sweetened or condensed
                rich = (
                    event.fat_pct >= 10
                    or (event.total_solids_pct or 0) >= 18
                    or event.sweetened
                    or event.condensed
                )
                for line in self.lines.get((site, event.asset), []):
                    line.products.append((ts, rich))

    def _milking(self, site: str, event: MilkingStart | MilkingEnd) -> None:
        books = self.books.get((site, event.asset))
        if books is not None and isinstance(event, MilkingStart):
            books.filling = True
        elif books is not None and isinstance(event, MilkingEnd):
            books.filling = False
            if event.volume_l is None or books.volume is None:
                books.volume = None
            else:
                books.volume += event.volume_l
        if isinstance(event, MilkingStart):
            age = self.ages.get((site, event.asset))
            if age is not None:
                age.oldest.append(event.ts)  # its milk is as old as the milking
            for cooling in self.coolings.get((site, event.asset), []):
                self._milking_start(cooling, event.ts)
        else:
            for cooling in self.coolings.get((site, event.asset), []):
                self._milking_end(cooling, event.ts)

    def _cip(self, site: str, event: CipStart | CipEnd) -> None:
        windows = self.cleaning.get((site, event.asset))
        if windows is None:
            return
        last_end = windows[-1][1] if windows else -1
        if isinstance(event, CipStart) and last_end != _OPEN and last_end <= event.ts:
            windows.append([event.ts, _OPEN])
        elif (
            isinstance(event, CipEnd)
            and windows
            and windows[-1][1] == _OPEN
            and event.ts >= windows[-1][0]
        ):
            windows[-1][1] = event.ts

    def _pickup(self, site: str, event: Pickup) -> None:
        """The compartment takes the tank's oldest milk; the tank is emptied if the pickup left
        no more than its heel."""
        ts, source = event.ts, (event.source_site, event.source_asset)
        books = self.books.get(source)
        emptied = books is None or books.take(event.volume_l)
        if emptied:
            for cooling in self.coolings.get(source, []):
                self._tank_emptied(cooling, ts)
        tank = self.ages.get(source)
        oldest = min(tank.oldest) if tank is not None and tank.oldest else ts
        if tank is not None and emptied:
            self._emptied(tank, ts)
        into = self.books.get((site, event.compartment))
        if into is not None and into.volume is not None:
            into.volume += event.volume_l
        compartment = self.ages.get((site, event.compartment))
        if compartment is not None:
            compartment.oldest.append(oldest)
        for trip in self.trips.get((site, event.compartment), []):
            self._picked_up(trip, ts)

    def submit(self, site: str, device: str, readings: list[Reading], received: int) -> None:
        for reading in readings:
            channel = self.channels.get((site, reading.asset, reading.channel, reading.unit))
            if channel is None:
                continue
            if reading.ts <= channel.last_ts:
                self.late += 1
                continue
            channel.held.append((reading.ts, reading.value, received, device))
            channel.newest = max(channel.newest, reading.ts)
            channel.last_received = received

    def advance(self, now: int) -> None:
        self.now = max(self.now, now)
        if self.started < 0:
            self.started = self.now
        marks = {channel.row: self._mark(channel) for channel in self._by_row()}
        for lines in self.lines.values():
            for line in lines:
                # channels judged together wait for the slowest of them
                lowest = min(marks[c.row] for c in line.channels)
                for c in line.channels:
                    marks[c.row] = min(marks[c.row], lowest)
        # nothing is released before the clock reaches it (no device here reports a clock)
        self._judge_all(
            {
                channel.row: [h for h in channel.held if h[0] <= marks[channel.row]]
                for channel in self._by_row()
            },
            up_to=self.now,
        )
        for channel in self._by_row():
            # a channel never heard from is given the start-up grace
            unheard_from = self.started + self.grace_ms
            heard = channel.last_received if channel.last_received >= 0 else unheard_from
            if (
                channel.silence_open is None
                and self.now - heard > channel.silence_ms + channel.lateness_ms
                and (channel.newest <= channel.last_ts or channel.newest > self.now)
            ):
                # a gap starts at the last sample, and is detected when the limit passed
                base = channel.last_ts if channel.last_ts >= 0 else unheard_from
                self._open_silence(channel, base, channel.last_device)
        for coolings in self.coolings.values():
            for cooling in coolings:
                self._cooling_timer(cooling)
        for age in self.ages.values():
            if age.oldest and age.open is None and self.now >= min(age.oldest) + _ms(age.rule):
                self._too_old(age)
        for trips in self.trips.values():
            for trip in trips:
                self._trip_timer(trip)

    def flush(self) -> None:
        self._judge_all({c.row: list(c.held) for c in self._by_row()}, up_to=_OPEN)

    def _mark(self, channel: _Channel) -> int:
        """How far a channel's readings may be judged: its newest less the allowed lateness,
        or everything once it has received nothing for that long."""
        if self.now - channel.last_received >= channel.lateness_ms:
            return _OPEN
        return channel.newest - channel.lateness_ms

    def _by_row(self) -> list[_Channel]:
        return sorted(self.channels.values(), key=lambda c: c.row)

    # ----------------------------------------------------------------------------- judging

    def _judge_all(self, ready: dict[int, list[tuple[int, float, int, str]]], up_to: int) -> None:
        """Each channel's ready readings in time order; the channels a rule reads together
        merged in time order (at one instant, the valve first)."""
        together: list[tuple[int, int, int, _Channel, float, int, str]] = []
        for channel in self._by_row():
            readings = self._take(channel, [h for h in ready[channel.row] if h[0] <= up_to])
            if not channel.roles:
                for ts, value, received, device in readings:
                    self._sample(channel, ts, value, received, device)
                continue
            valve = any(role == "flow_diversion" for _, role in channel.roles)
            together.extend(
                (ts, 0 if valve else 1, channel.row, channel, value, received, device)
                for ts, value, received, device in readings
            )
        for ts, _, _, channel, value, received, device in sorted(together, key=lambda r: r[:3]):
            self._sample(channel, ts, value, received, device)

    def _take(
        self, channel: _Channel, ready: list[tuple[int, float, int, str]]
    ) -> list[tuple[int, float, int, str]]:
        """The ready readings out of the held ones, in time order, each instant once."""
        for item in ready:
            channel.held.remove(item)
        seen: set[int] = set()
        taken = []
        for item in sorted(ready, key=lambda h: h[0]):
            if item[0] in seen:
                self.duplicates += 1
                continue
            seen.add(item[0])
            self.judged += 1
            taken.append(item)
        return taken

    def _sample(self, channel: _Channel, ts: int, value: float, received: int, device: str) -> None:
        prev_ts, prev_value = channel.last_ts, channel.last_value
        if prev_ts < 0 or value != prev_value:
            channel.run_start = ts
        late = received - ts > channel.silence_ms
        cleaning = _cleaning_since(channel.cleaning, ts)
        prev_cleaning = prev_ts >= 0 and _cleaning_since(channel.cleaning, prev_ts) >= 0
        base = prev_ts if prev_ts >= 0 else self.started + self.grace_ms
        if channel.silence_open is None and ts - base > channel.silence_ms:
            self._open_silence(channel, base, device)
        if channel.silence_open is not None:
            self._close(channel.silence_open, ts, late)
            channel.silence_open = None
        for state in channel.rules:
            rule = state["rule"]
            suspended = rule.suspend_during_cleaning
            if isinstance(rule, CriticalLimit):
                if suspended and cleaning >= 0:
                    self._critical_suspended(state, cleaning, ts, late)
                else:
                    self._critical(channel, state, ts, value, device, late)
            elif isinstance(rule, StuckSensor):
                self._stuck(channel, state, ts, value, prev_ts, prev_value, device, late)
            elif isinstance(rule, RateOfChange):
                if suspended and (cleaning >= 0 or prev_cleaning):
                    if prev_ts >= 0 and state["open"] is not None:
                        self._close(state["open"], ts, late)
                        state["open"] = None
                else:
                    self._rate(channel, state, ts, value, prev_ts, prev_value, device, late)
        self._event_rules(channel, ts, value, device, late)
        channel.last_ts, channel.last_value, channel.last_device = ts, value, device

    def _event_rules(
        self, channel: _Channel, ts: int, value: float, device: str, late: bool
    ) -> None:
        """The rules that read this channel with events or with other channels."""
        for line, role in channel.roles:
            if isinstance(line.rule, Htst):
                self._pasteurizer(line, line.rule, role, ts, value, device, late)
            else:
                self._sterilizer(line, line.rule, role, ts, value, device, late)
        for cooling in channel.coolings:
            self._cooling_sample(cooling, ts, value, device, late)
        for trip in channel.trips:
            self._trip_sample(trip, ts, value)

    def _critical(
        self, channel: _Channel, s: dict[str, Any], ts: int, value: float, device: str, late: bool
    ) -> None:
        rule: CriticalLimit = s["rule"]
        excess = 0.0
        if rule.max is not None and value > rule.max:
            excess = value - rule.max
        elif rule.min is not None and value < rule.min:
            excess = rule.min - value
        sustained_ms = round(rule.sustained_s * 1000)
        what = ("critical_limit", rule.id, channel)
        self._excursion(s, what, ts, value, excess, device, late, sustained_ms)

    def _excursion(
        self,
        s: dict[str, Any],
        what: tuple[str, str, _Channel | tuple[str, str]],
        ts: int,
        value: float,
        excess: float,
        device: str,
        late: bool,
        sustained_ms: int = 0,
    ) -> None:
        """One sample of an excursion beyond a limit, ``excess`` how far beyond (0: within).

        Opens once the excursion has lasted ``sustained_ms`` (at once with 0), from its first
        sample; the peak is the value furthest beyond; degree-minutes hold each sample's excess
        until the next; it closes at the first sample within."""
        if s["breach_start"] is not None:
            s["degree_ms"] += s["last_excess"] * (ts - s["last_ts"])
        if excess > 0:
            if s["breach_start"] is None:
                s.update(breach_start=ts, peak=value, peak_excess=excess, degree_ms=0.0)
            elif excess > s["peak_excess"]:
                s.update(peak=value, peak_excess=excess)
            if s["open"] is None:
                if ts - s["breach_start"] >= sustained_ms:
                    kind, rule_id, channel = what
                    s["open"] = self._open(
                        kind, rule_id, channel, s["breach_start"], ts, s["peak"], device, late
                    )
                    s["open"]["degree_minutes"] = s["degree_ms"] / 60_000
            else:
                s["open"]["peak"] = s["peak"]
                s["open"]["degree_minutes"] = s["degree_ms"] / 60_000
        elif s["breach_start"] is not None:
            if s["open"] is not None:
                s["open"]["peak"] = s["peak"]
                s["open"]["degree_minutes"] = s["degree_ms"] / 60_000
                self._close(s["open"], ts, late)
                s["open"] = None
            s["breach_start"] = None
        s["last_ts"], s["last_excess"] = ts, excess

    def _critical_suspended(self, s: dict[str, Any], since: int, ts: int, late: bool) -> None:
        if s["breach_start"] is not None:
            ended = max(since, s["last_ts"])
            s["degree_ms"] += s["last_excess"] * (ended - s["last_ts"])
            if s["open"] is not None:
                s["open"]["peak"] = s["peak"]
                s["open"]["degree_minutes"] = s["degree_ms"] / 60_000
                self._close(s["open"], ended, late)
                s["open"] = None
            s["breach_start"] = None
        s["last_ts"], s["last_excess"] = ts, 0.0

    def _stuck(
        self,
        channel: _Channel,
        s: dict[str, Any],
        ts: int,
        value: float,
        prev_ts: int,
        prev_value: float,
        device: str,
        late: bool,
    ) -> None:
        rule: StuckSensor = s["rule"]
        flat = prev_ts >= 0 and value == prev_value
        if s["open"] is None:
            if flat and ts - channel.run_start >= round(rule.flat_for_s * 1000):
                s["open"] = self._open(
                    "stuck_sensor", rule.id, channel, channel.run_start, ts, value, device, late
                )
        elif not flat:
            self._close(s["open"], ts, late)
            s["open"] = None

    def _rate(
        self,
        channel: _Channel,
        s: dict[str, Any],
        ts: int,
        value: float,
        prev_ts: int,
        prev_value: float,
        device: str,
        late: bool,
    ) -> None:
        rule: RateOfChange = s["rule"]
        if prev_ts < 0:
            return
        step, span = abs(value - prev_value), ts - prev_ts
        per_min = step / span * 60_000
        implausible = step > rule.max_per_min / 60_000 * span
        if s["open"] is None:
            if implausible:
                s["open"] = self._open(
                    "rate_of_change", rule.id, channel, ts, ts, per_min, device, late
                )
        elif implausible:
            s["open"]["peak"] = max(s["open"]["peak"], per_min)
        else:
            self._close(s["open"], ts, late)
            s["open"] = None

    # ----------------------------------------------------------------------------- cooling

    def _milking_start(self, cooling: _Cooling, ts: int) -> None:
        first = cooling.empty
        cooling.empty = False
        if not first:
            cooling.later_milkings.append([ts, _OPEN])
            # bounded memory: the last 16 later milkings (8 days at two a day) are remembered; a
            # first sample older than those is not judged against the blend limit
            del cooling.later_milkings[:-16]
        for deadline in cooling.rule.deadlines:
            if deadline.after == "milking_start" or (
                deadline.after == "first_milking_start" and first
            ):
                cooling.deadlines.append(
                    _Deadline(
                        deadline.after, ts, ts + _ms_of(deadline.within_s), deadline.reach_max
                    )
                )

    def _milking_end(self, cooling: _Cooling, ts: int) -> None:
        if cooling.later_milkings and cooling.later_milkings[-1][1] == _OPEN:
            cooling.later_milkings[-1][1] = ts
        for deadline in cooling.rule.deadlines:
            if deadline.after == "milking_end":
                cooling.deadlines.append(
                    _Deadline(
                        deadline.after, ts, ts + _ms_of(deadline.within_s), deadline.reach_max
                    )
                )

    def _tank_emptied(self, cooling: _Cooling, ts: int) -> None:
        """A pickup took the milk: deadlines already due are still judged (a miss ends at the
        pickup), the others left with the milk; a miss still open ends here."""
        cooling.empty = True
        kept = [d for d in cooling.deadlines if d.due < ts]
        for deadline in kept:
            deadline.until = min(deadline.until, ts)
        cooling.deadlines = kept
        for deadline in cooling.missed:
            assert deadline.missed is not None
            self._close(deadline.missed, ts, False)
        cooling.missed = []

    def _cooling_sample(
        self, cooling: _Cooling, ts: int, value: float, device: str, late: bool
    ) -> None:
        for deadline in list(cooling.deadlines):
            if ts <= deadline.due:
                if ts >= deadline.started:  # a cold sample before the warm milk does not count
                    deadline.last_value = value
                continue
            cooling.deadlines.remove(deadline)  # a sample after the deadline: the verdict
            if not _met(deadline):
                self._missed(cooling, deadline, device, late)
        for deadline in list(cooling.missed):
            record = deadline.missed
            assert record is not None
            if ts >= deadline.until:
                self._close(record, deadline.until, late)  # the milk had left
            elif value <= deadline.reach_max:
                self._close(record, ts, late)
            else:
                if record["peak"] is None or value > record["peak"]:
                    record["peak"] = value
                continue
            cooling.missed.remove(deadline)
        limit = cooling.rule.blend_max
        if limit is not None:
            warm = any(start <= ts < end for start, end in cooling.later_milkings)
            excess = value - limit if warm and value > limit else 0.0
            what = ("blend_temperature", f"{cooling.rule.id}.blend", cooling.channel)
            self._excursion(cooling.blend, what, ts, value, excess, device, late)

    def _cooling_timer(self, cooling: _Cooling) -> None:
        """With no sample to judge by, the device's clock estimated from its last sample and
        how long ago it was received, less the lateness in which one may still come."""
        channel = cooling.channel
        if not (cooling.deadlines or cooling.missed) or channel.held:
            return
        device_now = self.now
        if channel.last_received >= 0 and channel.last_ts >= 0:
            device_now = channel.last_ts + (self.now - channel.last_received)
        device_now -= channel.lateness_ms
        for deadline in list(cooling.deadlines):
            if deadline.due < device_now:
                cooling.deadlines.remove(deadline)
                if not _met(deadline):
                    self._missed(cooling, deadline, channel.last_device, False)
        for deadline in list(cooling.missed):
            if device_now >= deadline.until:
                assert deadline.missed is not None
                self._close(deadline.missed, deadline.until, False)
                cooling.missed.remove(deadline)

    def _missed(self, cooling: _Cooling, deadline: _Deadline, device: str, late: bool) -> None:
        rule_id = f"{cooling.rule.id}.{deadline.after}"
        deadline.missed = self._open(
            "cooling_deadline",
            rule_id,
            cooling.channel,
            deadline.due,
            deadline.due,
            None,
            device,
            late,
        )
        cooling.missed.append(deadline)

    # ----------------------------------------------------------------------------- milk age

    def _too_old(self, age: _Age) -> None:
        due = min(age.oldest) + _ms(age.rule)
        age.open = self._open(
            "storage_age",
            age.rule.id,
            (age.asset, "milk"),
            due,
            due,
            age.rule.max_age_s / 3600,
            "unknown",
            False,
        )

    def _emptied(self, age: _Age, ts: int) -> None:
        """The milk left at ``ts``: too old by then is a deviation, whether or not the clock
        got to the deadline first."""
        if age.oldest and age.open is None and min(age.oldest) + _ms(age.rule) <= ts:
            self._too_old(age)
        age.oldest = []
        if age.open is not None:
            self._close(age.open, ts, False)
            age.open = None

    # ----------------------------------------------------------------------------- transport

    def _picked_up(self, trip: _Trip, ts: int) -> None:
        if trip.loaded_since is not None and trip.delivered_at is None:
            return  # a further pickup into the same load
        if trip.delivered_at is not None:
            self._trip_over(trip)
        trip.loaded_since, trip.degree_ms, trip.last = ts, 0.0, None

    def _delivered(self, trip: _Trip, ts: int) -> None:
        if trip.loaded_since is None:
            return
        limit = trip.rule.max_transit_s
        if (
            trip.delivered_at is None  # not a delivery said again
            and trip.transit is None
            and limit is not None
            and ts >= trip.loaded_since + _ms_of(limit)
        ):
            self._too_long(trip)  # too long on the road, whether or not the clock saw it
        trip.delivered_at = ts
        if trip.transit is not None:
            self._close(trip.transit, ts, False)
            trip.transit = None
        if trip.rule.exposure_above is None or trip.seen >= ts:
            self._trip_over(trip)

    def _trip_over(self, trip: _Trip) -> None:
        """The load's exposure verdict ends at its delivery."""
        assert trip.delivered_at is not None
        if trip.exposure is not None:
            self._close(trip.exposure, trip.delivered_at, False)
            trip.exposure = None
        trip.loaded_since = trip.delivered_at = None

    def _trip_sample(self, trip: _Trip, ts: int, value: float) -> None:
        above, allowed = trip.rule.exposure_above, trip.rule.max_exposure_degree_minutes
        if trip.loaded_since is None or above is None or allowed is None:
            return
        trip.seen = max(trip.seen, ts)
        if ts < trip.loaded_since:
            return
        if trip.delivered_at is not None and ts >= trip.delivered_at:
            self._trip_over(trip)
            return
        if trip.last is not None:
            trip.degree_ms += trip.last[1] * (ts - trip.last[0])
        trip.last = (ts, max(0.0, value - above))
        minutes = trip.degree_ms / 60_000
        if trip.exposure is None and minutes > allowed:
            where = (trip.channel.asset, trip.channel.channel)
            rule_id = f"{trip.rule.id}.exposure"
            trip.exposure = self._open(
                "temperature_exposure", rule_id, where, ts, ts, minutes, "unknown", False
            )
        elif trip.exposure is not None:
            trip.exposure["peak"] = minutes

    def _too_long(self, trip: _Trip) -> None:
        limit, loaded = trip.rule.max_transit_s, trip.loaded_since
        assert limit is not None
        assert loaded is not None
        due = loaded + _ms_of(limit)
        where = (trip.channel.asset, trip.channel.channel)
        rule_id = f"{trip.rule.id}.transit"
        trip.transit = self._open(
            "transit_time", rule_id, where, due, due, limit / 3600, "unknown", False
        )

    def _trip_timer(self, trip: _Trip) -> None:
        limit = trip.rule.max_transit_s
        if (
            limit is not None
            and trip.loaded_since is not None
            and trip.delivered_at is None
            and trip.transit is None
            and self.now >= trip.loaded_since + _ms_of(limit)
        ):
            self._too_long(trip)
        if trip.delivered_at is not None and not trip.channel.held:
            self._trip_over(trip)

    # ----------------------------------------------------------------------------- HTST, UHT

    def _pasteurizer(
        self, line: _Line, rule: Htst, role: str, ts: int, value: float, device: str, late: bool
    ) -> None:
        """PMO: forward flow below the legal temperature of the product in force, or held less
        than the legal time, is a deviation at once; diverting ends it. The recorder must not
        read above the indicating thermometer."""
        check = line.checks.setdefault
        temperature = check("temperature", _excursion_state())
        holding = check("holding", _excursion_state())
        recorder = check("recorder", _excursion_state())
        if role == "flow_diversion":
            line.forward = value >= 0.5  # 1 forward, 0 divert
            if not line.forward:  # what was below the limits no longer goes forward
                for state in (temperature, holding):
                    if state["breach_start"] is not None:
                        # no excess: it can only close, so it needs no name to open by
                        self._excursion(state, ("", "", ("", "")), ts, value, 0.0, device, late)
        elif role == "indicating":
            line.indicating = value
            legal = rule.legal.temp_c
            in_force = [rich for since, rich in sorted(line.products) if since <= ts]
            if in_force and in_force[-1]:
                legal += rule.rich_product_raise_c
            excess = legal - value if line.forward and value < legal else 0.0
            what = ("htst_temperature", f"{rule.id}.temperature", (line.asset, rule.indicating))
            self._excursion(temperature, what, ts, value, excess, device, late)
        elif role == "flow":
            hold = _fastest_hold_s(rule, value)
            short = rule.legal.hold_s - hold if line.forward and hold < rule.legal.hold_s else 0.0
            what = ("htst_holding_time", f"{rule.id}.holding_time", (line.asset, str(rule.flow)))
            self._excursion(holding, what, ts, hold, short, device, late)
        elif role == "recorder" and line.indicating is not None:
            above = value - line.indicating
            what = ("htst_recorder", f"{rule.id}.recorder", (line.asset, str(rule.recorder)))
            self._excursion(recorder, what, ts, above, max(above, 0.0), device, late)

    def _sterilizer(
        self, line: _Line, rule: Uht, role: str, ts: int, value: float, device: str, late: bool
    ) -> None:
        """Each parcel's F0 = t_min * 10^((T - 121.1) / 10) / 60 at the outlet temperature T,
        with the flow last read, at least ``min_f0``."""
        lethality = line.checks.setdefault("f0", _excursion_state())
        if role == "flow":
            line.flow = value
            return
        if line.flow is None:
            return
        hold = _fastest_hold_s(rule, line.flow)
        f0 = math.inf if math.isinf(hold) else hold * 10 ** ((value - 121.1) / 10) / 60
        short = rule.min_f0 - f0 if f0 < rule.min_f0 else 0.0
        what = ("uht_lethality", f"{rule.id}.f0", (line.asset, rule.outlet))
        self._excursion(lethality, what, ts, f0, short, device, late)

    # ----------------------------------------------------------------------------- records

    def _open_silence(self, channel: _Channel, start: int, device: str) -> None:
        rule_id = f"silence.{channel.asset}.{channel.channel}"
        channel.silence_open = self._open(
            "monitoring_lost",
            rule_id,
            channel,
            start,
            start + channel.silence_ms,
            None,
            device,
            False,
        )

    def _open(
        self,
        kind: str,
        rule_id: str,
        channel: _Channel | tuple[str, str],
        start: int,
        detected: int,
        peak: float | None,
        device: str,
        late: bool,
    ) -> dict[str, Any]:
        asset, name = (channel.asset, channel.channel) if isinstance(channel, _Channel) else channel
        record = {
            "kind": kind,
            "rule_id": rule_id,
            "asset": asset,
            "channel": name,
            "start": start,
            "detected": detected,
            "end": None,
            "peak": peak,
            "degree_minutes": 0.0,
            "device": device,
            "late": late,
        }
        self.changes.append(("opened", *_comparable(record)))
        return record

    def _close(self, record: dict[str, Any], end: int, late: bool) -> None:
        if end < record["start"]:  # data that came after a timer fired: never end before start
            end, late = record["start"], True
        record["end"] = end
        record["late"] = record["late"] or late
        self.changes.append(("closed", *_comparable(record)))


_OPEN = 2**62


def _ms(rule: StorageAge) -> int:
    return _ms_of(rule.max_age_s)


def _ms_of(seconds: float) -> int:
    return round(seconds * 1000)


def _met(deadline: _Deadline) -> bool:
    """The last sample from the milking to the deadline was at or below the temperature."""
    return deadline.last_value is not None and deadline.last_value <= deadline.reach_max


def _fastest_hold_s(rule: Htst | Uht, flow_l_h: float) -> float:
    """The fastest particle's time in the holding tube, V / (k Q), for a flow in L/h.

    k (fastest over mean velocity) by the Reynolds number Re = 4 rho Q / (pi D mu): 2.0 up to
    2100 (laminar), 1.33 at 4000, 1.25 from 20000 (turbulent), linear between."""
    tube = rule.holding_tube
    assert tube is not None
    if flow_l_h <= 0:
        return math.inf
    volume_l = math.pi / 4 * tube.diameter_m**2 * tube.length_m * 1000
    q_m3_s = flow_l_h / 1000 / 3600
    rho = rule.density_kg_l * 1000
    mu = rule.viscosity_mpa_s / 1000
    reynolds = 4 * rho * q_m3_s / (math.pi * tube.diameter_m * mu)
    points = [(2100.0, 2.0), (4000.0, 1.33), (20000.0, 1.25)]
    k = points[0][1] if reynolds <= points[0][0] else points[-1][1]
    for (re0, k0), (re1, k1) in itertools.pairwise(points):
        if re0 < reynolds <= re1:
            k = k0 + (reynolds - re0) / (re1 - re0) * (k1 - k0)
    return volume_l / (k * flow_l_h / 3600)


def _cleaning_since(windows: list[list[int]], ts: int) -> int:
    for start, end in windows:
        if start <= ts < end:
            return start
    return -1


def _comparable(record: dict[str, Any]) -> tuple[Any, ...]:
    peak = record["peak"]
    return (
        record["kind"],
        record["rule_id"],
        record["asset"],
        record["channel"],
        record["start"],
        record["detected"],
        record["end"],
        peak,
        record["degree_minutes"],
        record["device"],
        record["late"],
    )


def change_key(change: Any) -> ChangeKey:
    """What a fast engine's change is compared by."""
    d = change.deviation
    peak = d.peak
    return (
        change.kind,
        d.kind,
        d.rule_id,
        d.asset,
        d.channels[0],
        d.start_ms,
        d.detected_ms,
        d.end_ms,
        None if peak is None or math.isnan(peak) else peak,
        d.degree_minutes,
        d.device,
        d.detected_late,
    )


#: where a change's peak and degree-minutes sit in its key
_PEAK, _DEGREE_MINUTES = 8, 9


def same_changes(fast: list[ChangeKey], reference: list[ChangeKey]) -> str | None:
    """Why two lists of changes differ (None: they agree), comparing peaks and degree-minutes
    within float tolerance: the engine keeps derived values (holding times, F0, a recorder's
    lead) to a thousandth or finer and judges by them, the reference keeps them exact."""
    if len(fast) != len(reference):
        only_fast = [c for c in fast if c not in reference]
        only_reference = [c for c in reference if c not in fast]
        return f"engine only {only_fast}, reference only {only_reference}"
    for index, (mine, theirs) in enumerate(zip(fast, reference, strict=True)):
        exact = [i for i in range(len(mine)) if i not in (_PEAK, _DEGREE_MINUTES)]
        if [mine[i] for i in exact] != [theirs[i] for i in exact] or not (
            _close(mine[_PEAK], theirs[_PEAK], 1e-3)
            and _close(mine[_DEGREE_MINUTES], theirs[_DEGREE_MINUTES], 1e-9)
        ):
            return f"change {index}: engine {mine}, reference {theirs}"
    return None


def _close(a: float | None, b: float | None, tolerance: float) -> bool:
    if a is None or b is None:
        return a is b
    return a == b or math.isclose(a, b, rel_tol=1e-6, abs_tol=tolerance)

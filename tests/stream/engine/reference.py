"""A plain, per-reading reference of the engine's semantics, for property tests.

Written from the rules as documented, not from the fast engine: no numpy, no screening, no
machines; one dictionary of state per channel and one per rule, every reading judged one at a
time. The fast engine must say exactly what this says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from milkguard.contract.v1 import Reading
from stream.plan import CriticalLimit, LoadedPlan, RateOfChange, StuckSensor

#: what a change is compared by
ChangeKey = tuple[Any, ...]


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
        for rule in plan.rules:
            state: dict[str, Any] = {"rule": rule, "open": None}
            if isinstance(rule, CriticalLimit):
                state.update(breach_start=None, peak=0.0, peak_excess=0.0, degree_ms=0.0)
                state.update(last_ts=0, last_excess=0.0)
            by_key[(rule.asset, rule.channel)].rules.append(state)

    # ----------------------------------------------------------------------------- input

    def submit_events(self, site: str, events: list[tuple[str, str, int]]) -> None:
        """Events as (kind, asset, ts): cip_start and cip_end."""
        for kind, asset, ts in sorted(events, key=lambda e: e[2]):
            windows = self.cleaning.get((site, asset))
            if windows is None:
                continue
            last_end = windows[-1][1] if windows else -1
            if kind == "cip_start" and last_end != _OPEN and last_end <= ts:
                windows.append([ts, _OPEN])
            elif kind == "cip_end" and windows and windows[-1][1] == _OPEN and ts >= windows[-1][0]:
                windows[-1][1] = ts

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
        for channel in self._by_row():
            idle = self.now - channel.last_received >= channel.lateness_ms
            # nothing is released before the clock reaches it (no device here reports a clock)
            ready = [
                h
                for h in channel.held
                if (idle or h[0] <= channel.newest - channel.lateness_ms) and h[0] <= self.now
            ]
            self._judge(channel, ready)
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

    def flush(self) -> None:
        for channel in self._by_row():
            self._judge(channel, list(channel.held))

    def _by_row(self) -> list[_Channel]:
        return sorted(self.channels.values(), key=lambda c: c.row)

    # ----------------------------------------------------------------------------- judging

    def _judge(self, channel: _Channel, ready: list[tuple[int, float, int, str]]) -> None:
        for item in ready:
            channel.held.remove(item)
        seen: set[int] = set()
        for ts, value, received, device in sorted(ready, key=lambda h: h[0]):
            if ts in seen:
                self.duplicates += 1
                continue
            seen.add(ts)
            self.judged += 1
            self._sample(channel, ts, value, received, device)

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
        channel.last_ts, channel.last_value, channel.last_device = ts, value, device

    def _critical(
        self, channel: _Channel, s: dict[str, Any], ts: int, value: float, device: str, late: bool
    ) -> None:
        rule: CriticalLimit = s["rule"]
        excess = 0.0
        if rule.max is not None and value > rule.max:
            excess = value - rule.max
        elif rule.min is not None and value < rule.min:
            excess = rule.min - value
        if s["breach_start"] is not None:
            s["degree_ms"] += s["last_excess"] * (ts - s["last_ts"])
        if excess > 0:
            if s["breach_start"] is None:
                s.update(breach_start=ts, peak=value, peak_excess=excess, degree_ms=0.0)
            elif excess > s["peak_excess"]:
                s.update(peak=value, peak_excess=excess)
            if s["open"] is None:
                if ts - s["breach_start"] >= round(rule.sustained_s * 1000):
                    s["open"] = self._open(
                        "critical_limit",
                        rule.id,
                        channel,
                        s["breach_start"],
                        ts,
                        s["peak"],
                        device,
                        late,
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
        channel: _Channel,
        start: int,
        detected: int,
        peak: float | None,
        device: str,
        late: bool,
    ) -> dict[str, Any]:
        record = {
            "kind": kind,
            "rule_id": rule_id,
            "asset": channel.asset,
            "channel": channel.channel,
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
        None if peak is None else round(peak, 9),
        round(record["degree_minutes"], 9),
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
        None if peak is None or math.isnan(peak) else round(peak, 9),
        round(d.degree_minutes, 9),
        d.device,
        d.detected_late,
    )

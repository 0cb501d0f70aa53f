"""The rule engine: readings in, deviations out, on event time. Pure: time is data.

How it judges
-------------
The plan is compiled into a channel table: one row per (site, asset, channel, unit), with the
rules' limits and the channel's state (last sample, start of the current flat run, whether a
rule is engaged) in numpy arrays.

``submit`` routes a gateway's readings to rows and holds them. ``advance(now)`` releases, for each
channel, the held readings at or below its watermark: the newest timestamp seen on the channel
minus its allowed lateness (bounded out-of-orderness, per channel, in the device's own time, so a
device whose clock is off is not judged against the stream's). A channel that has received
nothing for its allowed lateness (in the stream's time, ``now``) is idle and releases everything
it holds. Released readings are sorted by channel and time, so readings that came out of order
within the allowed lateness are judged at their timestamps, in order. A reading older than what
its channel has already judged arrived too late: it is counted and reported, never judged out
of order (and still stored by the runtime).

Released readings are screened with vector checks: within the quiet band of every limit on the
channel, a plausible rate of change, no flat line near its limit, no gap near the silence limit,
and no rule engaged. A channel whose readings all pass only has its state row updated; the others
go, sample by sample, through the channel's rule machines (:mod:`stream.engine.machines`). Most
readings are quiet, which is what makes the engine fast.

``advance`` also fires timers: a channel that has received nothing for longer than its silence
limit (in the stream's time) opens a "monitoring lost" deviation, with no sample needed, starting
at its last sample plus the limit.

``now`` and each batch's receive time are data: the wall clock when live, the newest event time
seen when replaying a file. Calling ``advance`` every few thousand readings (or every ~100 ms)
amortizes the vector work; a replay calls it on a fixed count, so it is deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import chain, repeat
from operator import attrgetter
from typing import Any, NamedTuple

import msgspec
import numpy as np
import numpy.typing as npt

from milkguard.contract.v1 import (
    PLAUSIBLE,
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
from stream.engine.clocks import DeviceClock, TimeSyncMachine
from stream.engine.cooling import CoolingMachine
from stream.engine.deviation import Deviation, DeviationChange
from stream.engine.htst import Derived, HtstMachine, UhtMachine
from stream.engine.logistics import AgeMachine, TransportMachine
from stream.engine.machines import (
    CriticalLimitMachine,
    Machine,
    RateOfChangeMachine,
    RuleSpec,
    Sample,
    SilenceMachine,
    StuckSensorMachine,
    with_deviation,
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

JoinedMachine = HtstMachine | UhtMachine

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
B = npt.NDArray[np.bool_]

#: "never": a time span no flat line or gap reaches
_NEVER = np.int64(2**62)
SNAPSHOT_FORMAT = 1


class SnapshotMismatch(ValueError):  # noqa: N818 - reads as the condition
    """A snapshot was taken under another plan version or format."""


@dataclass(slots=True)
class EngineCounters:
    """What the engine saw, for metrics and the run summary."""

    events: int = 0
    late_events: int = 0
    unplanned_events: int = 0
    submitted: int = 0
    judged: int = 0
    unplanned: int = 0
    late: int = 0
    duplicates: int = 0
    opened: int = 0
    closed: int = 0


class Routed(NamedTuple):
    """What ``submit`` could not hold: readings in another unit than the plan's, readings of
    channels the plan does not know (whose ids the caller must still check before storing), and
    readings of planned channels it refused: implausible for their unit, or stamped beyond the
    horizon it was given (the caller says why, and dead-letters them).

    A named tuple, not a frozen dataclass: one is made per message, and a frozen dataclass sets
    each field through ``object.__setattr__`` (measured: 0.9 us against 0.2 us)."""

    mismatches: list[UnitMismatch]
    unplanned: list[Reading]
    refused: list[Reading]
    #: when every reading was held: the channel row of each, in order (read only), and the
    #: gateway's layout it matched (its channel keys; the same object while the layout holds)
    rows: I64 | None = None
    layout: list[tuple[str, str, str]] | None = None
    ts: list[int] | None = None  # and their timestamps and values
    values: list[float] | None = None
    newest: int = -1  # and the newest of those timestamps


_NOTHING_LEFT_OUT = Routed([], [], [])
_KEY = attrgetter("asset", "channel", "unit")


@dataclass(frozen=True, slots=True)
class UnitMismatch:
    """A reading whose unit is not the one the plan declares for its channel."""

    reading: Reading
    expected: str


@dataclass(frozen=True, slots=True)
class Notice:
    """Something about the input that an operator should hear of, without a flood.

    ``unplanned``: the first reading of a channel the plan does not know.
    ``late``: a reading its channel's watermark had passed; sent for the 1st, 10th, 100th, ...
    of a channel, with the count so far.
    """

    kind: str
    site: str
    asset: str
    channel: str
    ts: int
    count: int = 1


class _Layout(NamedTuple):
    """The channels a gateway sent in its last batch, in order."""

    signature: tuple[str, str, str]  # assets, channels and units, each joined with NUL
    keys: list[tuple[str, str, str]]  # (asset, channel, unit) of each reading
    rows: I64
    lowest: float  # plausible bounds every one of its channels shares
    highest: float


class _Columns(NamedTuple):
    """Readings as five aligned numpy columns."""

    rows: I64
    ts: I64
    values: F64
    received: I64
    devices: I64

    def take(self, mask: B | I64) -> _Columns:
        """The readings selected by a mask or an index array."""
        if mask.dtype == np.bool_:
            # a mask is found once, not per column: masks that interleave (a channel's oldest
            # reading released, the next ones held) index four times slower than positions
            mask = np.flatnonzero(mask)
        return _Columns(
            self.rows[mask],
            self.ts[mask],
            self.values[mask],
            self.received[mask],
            self.devices[mask],
        )

    def without(self, indices: I64) -> _Columns:
        """The readings less those at ``indices``."""
        keep = np.ones(len(self.rows), dtype=np.bool_)
        keep[indices] = False
        return self.take(keep)

    def merged(self, other: _Columns) -> _Columns:
        """Both sorted by channel and time, ``other`` of channels this one has none of: one set
        of columns sorted the same way, by insertion rather than sorting again."""
        # where each of ``other`` goes, once for all five columns (np.insert would redo it)
        placed = np.searchsorted(self.rows, other.rows) + np.arange(len(other.rows))
        mine = np.ones(len(self.rows) + len(other.rows), dtype=np.bool_)
        mine[placed] = False
        columns: list[Any] = []
        for own, added in zip(self, other, strict=True):
            column = np.empty(len(mine), dtype=own.dtype)
            column[mine] = own
            column[placed] = added
            columns.append(column)
        return _Columns(*columns)

    @staticmethod
    def join(parts: list[_Columns]) -> _Columns:
        """All parts, one after the other."""
        if len(parts) == 1:
            return parts[0]
        return _Columns(
            np.concatenate([p.rows for p in parts]),
            np.concatenate([p.ts for p in parts]),
            np.concatenate([p.values for p in parts]),
            np.concatenate([p.received for p in parts]),
            np.concatenate([p.devices for p in parts]),
        )


class _Held(msgspec.Struct, array_like=True):
    """Readings waiting for their channels' watermarks, as raw numpy arrays."""

    rows: bytes
    ts: bytes
    values: bytes
    received: bytes
    devices: bytes

    def arrays(self) -> _Columns:
        """The five columns as numpy views."""
        return _Columns(
            np.frombuffer(self.rows, dtype=np.int64),
            np.frombuffer(self.ts, dtype=np.int64),
            np.frombuffer(self.values, dtype=np.float64),
            np.frombuffer(self.received, dtype=np.int64),
            np.frombuffer(self.devices, dtype=np.int64),
        )

    @classmethod
    def of(cls, columns: _Columns) -> _Held:
        """Pack five columns."""
        return cls(
            columns.rows.tobytes(),
            columns.ts.tobytes(),
            columns.values.tobytes(),
            columns.received.tobytes(),
            columns.devices.tobytes(),
        )


class _AssetState(msgspec.Struct):
    """What the engine knows of one asset from its events: cleaning (CIP) windows so far."""

    rows: list[int]
    cleaning: list[list[int]] = msgspec.field(default_factory=list)  # [start, end or _OPEN]

    def cleaning_since(self, ts: int) -> int:
        """The start of the cleaning window ``ts`` falls in, or -1."""
        for start, end in reversed(self.cleaning):
            if start <= ts < end:
                return start
            if end <= ts:
                return -1
        return -1


class _Snapshot(msgspec.Struct):
    format: int
    plan_version: str
    now: int
    started: int
    arrays: dict[str, bytes]
    machines: list[tuple[int, int, dict[str, Any]]]
    silence: list[tuple[int, dict[str, Any]]]
    devices: list[str]
    held: _Held
    counters: dict[str, int]
    unplanned_seen: list[tuple[str, str, str]]
    assets: dict[str, _AssetState]
    joined: list[dict[str, Any]]
    cooling: list[dict[str, Any]]
    event_changes: list[DeviationChange]
    clocks: dict[str, tuple[list[int], bool]]
    ages: list[dict[str, Any]]
    transports: list[dict[str, Any]]
    time_sync: dict[str, tuple[str, dict[str, Any]]]
    clock_reports: dict[str, bool] = {}  # older snapshots lack it


class Engine:
    """Judges readings against a loaded HACCP plan, on event time."""

    def __init__(self, loaded: LoadedPlan, *, screen: bool = True) -> None:
        self.plan = loaded
        # screen=False sends every reading through the machines: the benchmark's "before"
        self._screen = screen
        self.counters = EngineCounters()
        self.notices: list[Notice] = []
        self._unplanned_seen: set[tuple[str, str, str]] = set()
        self._index: dict[str, dict[tuple[str, str, str], int]] = {}
        self._by_name: dict[tuple[str, str, str], str] = {}
        self._names: list[tuple[str, str, str]] = []
        self._keys: list[tuple[str, str, str]] = []
        self._assets: dict[tuple[str, str], _AssetState] = {}
        self._asset_of_row: list[_AssetState] = []
        self._joined_machines: list[JoinedMachine] = []
        self._joined_groups: list[I64] = []
        self._cooling: list[tuple[int, CoolingMachine]] = []
        self._cooling_of_row: dict[int, list[CoolingMachine]] = {}
        self._cooling_by_asset: dict[tuple[str, str], list[tuple[int, CoolingMachine]]] = {}
        self._event_changes: list[DeviationChange] = []  # from events, handed out by advance
        #: holding times and F0s computed while judging, for the runtime to store and clear
        self.derived: list[Derived] = []
        self._ages: dict[tuple[str, str], AgeMachine] = {}
        self._transports: list[tuple[int, TransportMachine]] = []
        self._transports_of_row: dict[int, list[TransportMachine]] = {}
        self._transport_by_asset: dict[tuple[str, str], list[tuple[int, TransportMachine]]] = {}
        self._clocks: dict[str, DeviceClock] = {}
        self._time_sync: dict[str, TimeSyncMachine] = {}
        self._htst_by_asset: dict[tuple[str, str], list[HtstMachine]] = {}
        self._joined_roles: dict[int, list[tuple[JoinedMachine, str]]] = {}
        self._machines: list[list[Machine]] = []
        self._silence: list[SilenceMachine] = []
        self._devices: list[str] = ["unknown"]
        self._device_codes: dict[str, int] = {"unknown": 0}
        self._layouts: dict[tuple[str, str], _Layout] = {}
        # readings of each submit since the last release: (rows, ts, values, received, device)
        self._incoming: list[tuple[I64, list[int], list[float], int, int]] = []
        self._held = _EMPTY_COLUMNS
        self._now = -1
        self._started = -1
        self._compile()

    # ---------------------------------------------------------------- compiling the plan

    def _compile(self) -> None:
        loaded = self.plan
        plan = loaded.plan
        lo: list[float] = []
        hi: list[float] = []
        rate: list[float] = []
        flat: list[int] = []
        silence: list[int] = []
        lateness: list[int] = []
        ccp: list[bool] = []
        plausible: list[tuple[float, float]] = []
        row_of: dict[tuple[str, str], int] = {}
        for key, asset in plan.assets.items():
            asset_id = asset.id or key
            late_s = (
                asset.allowed_lateness_s
                if asset.allowed_lateness_s is not None
                else plan.allowed_lateness_s
            )
            state = self._assets[(asset.site, asset_id)] = _AssetState(rows=[])
            for channel_id, channel in asset.channels.items():
                row = len(self._names)
                state.rows.append(row)
                self._asset_of_row.append(state)
                row_of[(key, channel_id)] = row
                wire_key = (asset_id, channel_id, channel.unit)
                self._index.setdefault(asset.site, {})[wire_key] = row
                self._keys.append(wire_key)
                self._by_name[(asset.site, asset_id, channel_id)] = channel.unit
                self._names.append((asset.site, asset_id, channel_id))
                silence_s = channel.silence_after_s or channel.interval_s * plan.silence_factor
                silence.append(round(silence_s * 1000))
                lateness.append(round(late_s * 1000))
                ccp.append(channel.ccp)
                lo.append(-math.inf)
                hi.append(math.inf)
                plausible.append(PLAUSIBLE[channel.unit])
                rate.append(math.inf)
                flat.append(int(_NEVER))
                self._machines.append([])
                spec = self._spec(
                    rule_id=f"silence.{asset_id}.{channel_id}",
                    kind="monitoring_lost",
                    ccp=None,
                    severity="critical" if channel.ccp else "minor",
                    action="alert",
                    site=asset.site,
                    asset=asset_id,
                    channel=channel_id,
                    unit=channel.unit,
                    source=f"plan {plan.plan}: a sample expected every {channel.interval_s:g} s",
                )
                self._silence.append(SilenceMachine(spec, silence[-1]))
        self._compile_rules(row_of, lo, hi, rate, flat)
        n = len(self._names)
        self._lo = np.array(lo, dtype=np.float64)
        self._hi = np.array(hi, dtype=np.float64)
        self._max_rate = np.array(rate, dtype=np.float64)
        self._flat_ms = np.array(flat, dtype=np.int64)
        self._silence_ms = np.array(silence, dtype=np.int64)
        self._lateness_ms = np.array(lateness, dtype=np.int64)
        self._ccp = np.array(ccp, dtype=np.bool_)
        bounds = np.array(plausible, dtype=np.float64).reshape(-1, 2)
        self._plausible_lo, self._plausible_hi = bounds[:, 0].copy(), bounds[:, 1].copy()
        self._allocate_state(n)

    def _compile_rules(
        self,
        row_of: dict[tuple[str, str], int],
        lo: list[float],
        hi: list[float],
        rate: list[float],
        flat: list[int],
    ) -> None:
        """One machine per rule, and each channel's quiet band: where no rule can act."""
        plan = self.plan.plan
        for rule in plan.rules:
            asset = plan.assets[rule.asset]
            if isinstance(rule, Htst | Uht):
                self._compile_joined(rule, row_of)
                continue
            if isinstance(rule, StorageAge):
                self._compile_age(rule, asset.site, asset.id or rule.asset)
                continue
            row = row_of[(rule.asset, rule.channel)]
            if isinstance(rule, Transport):
                self._compile_transport(rule, row, asset.site, asset.id or rule.asset)
                continue
            if isinstance(rule, Cooling):
                self._compile_cooling(rule, row, asset.site, asset.id or rule.asset)
                continue
            common = {
                "suspend_during_cleaning": rule.suspend_during_cleaning,
                "rule_id": rule.id,
                "kind": rule.kind,
                "ccp": rule.ccp,
                "severity": rule.severity,
                "action": rule.action,
                "site": asset.site,
                "asset": asset.id or rule.asset,
                "channel": rule.channel,
                "unit": asset.channels[rule.channel].unit,
                "source": rule.source,
            }
            machine: Machine
            if isinstance(rule, CriticalLimit):
                spec = self._spec(
                    **common,
                    minimum=rule.min,
                    maximum=rule.max,
                    sustained_ms=round(rule.sustained_s * 1000),
                )
                machine = CriticalLimitMachine(spec)
                if rule.min is not None:
                    lo[row] = max(lo[row], rule.min)
                if rule.max is not None:
                    hi[row] = min(hi[row], rule.max)
            elif isinstance(rule, StuckSensor):
                spec = self._spec(**common, flat_ms=round(rule.flat_for_s * 1000))
                machine = StuckSensorMachine(spec)
                flat[row] = min(flat[row], spec.flat_ms)
            elif isinstance(rule, RateOfChange):
                spec = self._spec(**common, max_per_ms=rule.max_per_min / 60_000)
                machine = RateOfChangeMachine(spec)
                rate[row] = min(rate[row], spec.max_per_ms)
            self._machines[row].append(machine)

    def _event_rule_spec(
        self, rule: StorageAge | Transport | Cooling, site: str, asset_id: str, channel: str
    ) -> RuleSpec:
        unit = "h"
        if channel:
            unit = self.plan.plan.assets[rule.asset].channels[channel].unit
        return self._spec(
            rule_id=rule.id,
            kind=rule.kind,
            ccp=rule.ccp,
            severity=rule.severity,
            action=rule.action,
            site=site,
            asset=asset_id,
            channel=channel or "milk",
            unit=unit,
            source=rule.source,
            suspend_during_cleaning=rule.suspend_during_cleaning,
        )

    def _compile_age(self, rule: StorageAge, site: str, asset_id: str) -> None:
        machine = AgeMachine(rule, self._event_rule_spec(rule, site, asset_id, ""))
        self._ages[(site, asset_id)] = machine

    def _compile_transport(self, rule: Transport, row: int, site: str, asset_id: str) -> None:
        machine = TransportMachine(rule, self._event_rule_spec(rule, site, asset_id, rule.channel))
        self._transports.append((row, machine))
        self._transports_of_row.setdefault(row, []).append(machine)
        self._transport_by_asset.setdefault((site, asset_id), []).append((row, machine))

    def _compile_cooling(self, rule: Cooling, row: int, site: str, asset_id: str) -> None:
        base = self._spec(
            rule_id=rule.id,
            kind="cooling_deadline",
            ccp=rule.ccp,
            severity=rule.severity,
            action=rule.action,
            site=site,
            asset=asset_id,
            channel=rule.channel,
            unit=self.plan.plan.assets[rule.asset].channels[rule.channel].unit,
            source=rule.source,
            suspend_during_cleaning=rule.suspend_during_cleaning,
        )
        machine = CoolingMachine(rule, base)
        self._cooling.append((row, machine))
        self._cooling_of_row.setdefault(row, []).append(machine)
        self._cooling_by_asset.setdefault((site, asset_id), []).append((row, machine))

    def _compile_joined(self, rule: Htst | Uht, row_of: dict[tuple[str, str], int]) -> None:
        """Rules that read several channels together: they are judged merged in time order."""
        asset = self.plan.plan.assets[rule.asset]
        asset_id = asset.id or rule.asset
        first = rule.indicating if isinstance(rule, Htst) else rule.outlet
        unit = asset.channels[first].unit
        base = self._spec(
            rule_id=rule.id,
            kind=rule.kind,
            ccp=rule.ccp,
            severity=rule.severity,
            action=rule.action,
            site=asset.site,
            asset=asset_id,
            channel=first,
            unit=unit,
            source=rule.source,
            suspend_during_cleaning=rule.suspend_during_cleaning,
        )
        machine: JoinedMachine
        if isinstance(rule, Htst):
            machine = HtstMachine(rule, base, unit, self.derived)
            self._htst_by_asset.setdefault((asset.site, asset_id), []).append(machine)
            roles = {
                "indicating": rule.indicating,
                "flow_diversion": rule.flow_diversion,
                "recorder": rule.recorder,
                "flow": rule.flow,
            }
        else:
            machine = UhtMachine(rule, base, self.derived)
            roles = {"outlet": rule.outlet, "flow": rule.flow}
        self._joined_machines.append(machine)
        group = sorted({row_of[(rule.asset, c)] for c in roles.values() if c is not None})
        self._joined_groups.append(np.array(group, dtype=np.int64))
        for role, channel in roles.items():
            if channel is not None:
                self._joined_roles.setdefault(row_of[(rule.asset, channel)], []).append(
                    (machine, role)
                )

    def _allocate_state(self, n: int) -> None:
        self._last_ts = np.full(n, -1, dtype=np.int64)
        self._newest = np.full(n, -1, dtype=np.int64)
        self._last_received = np.full(n, -1, dtype=np.int64)
        self._last_value = np.zeros(n, dtype=np.float64)
        self._run_start = np.zeros(n, dtype=np.int64)
        self._last_device = np.zeros(n, dtype=np.int64)
        self._late_count = np.zeros(n, dtype=np.int64)
        self._busy = np.zeros(n, dtype=np.bool_)
        self._silent = np.zeros(n, dtype=np.bool_)
        # rows a multi-channel rule reads: never screened, judged merged in time order
        self._joined = np.zeros(n, dtype=np.bool_)
        self._joined[list(self._joined_roles)] = True
        self._joined_rows = np.flatnonzero(self._joined)
        # channels holding readings, and the stream time before which none of them goes idle
        self._holding = np.zeros(n, dtype=np.bool_)
        self._next_idle = -1
        self._ahead_rows = _NO_ROWS  # channels holding a reading stamped ahead of the clock
        self._next_silence = -1  # the stream time before which no channel goes silent
        self._join_rank = np.ones(n, dtype=np.int64)
        for row, roles in self._joined_roles.items():
            if any(role == "flow_diversion" for _, role in roles):
                self._join_rank[row] = 0

    def _spec(self, **fields: Any) -> RuleSpec:
        plan = self.plan
        return RuleSpec(
            plan=plan.plan.plan,
            plan_version=plan.version,
            jurisdiction=plan.plan.jurisdiction,
            **fields,
        )

    # ---------------------------------------------------------------- input

    @property
    def channel_names(self) -> list[tuple[str, str, str]]:
        """(site, asset, channel) of each channel row (read only)."""
        return self._names

    @property
    def channel_keys(self) -> list[tuple[str, str, str]]:
        """(asset, channel, unit) of each channel row, as readings carry them (read only)."""
        return self._keys

    @property
    def now(self) -> int:
        """The engine's clock: the latest ``now`` it was advanced to (-1 before the first)."""
        return self._now

    def expected_unit(self, site: str, reading: Reading) -> str | None:
        """The unit the plan declares for a reading's channel, or None if the plan lacks it."""
        return self._by_name.get((site, reading.asset, reading.channel))

    def submit(
        self,
        site: str,
        device: str,
        readings: list[Reading],
        received_ms: int,
        horizon_ms: int | None = None,
    ) -> Routed:
        """Hold a gateway's readings until their channels' watermarks pass them.

        Returns what was not held: readings whose unit differs from the plan's (not judged: a
        value in another unit checked against the plan's limit would be a false verdict either
        way), readings of channels the plan does not know (counted, noticed once), and, when
        ``horizon_ms`` is given, readings of planned channels outside their unit's plausible
        bounds or stamped after ``horizon_ms`` (one vector step here, where the values are
        columns already, rather than a Python loop per reading at the boundary).
        """
        if not readings:
            return _NOTHING_LEFT_OUT
        count = len(readings)
        rows, layout, known = self._rows_of(site, device, readings)
        left_out = _NOTHING_LEFT_OUT
        if layout is None and not bool(rows.min() >= 0):
            rows_list, readings, left_out = self._route_misses(site, rows.tolist(), readings)
            count = len(readings)
            rows = np.array(rows_list, dtype=np.int64)
        # lists, not arrays, per batch: a drained queue's are made arrays at once at the release.
        # Comprehensions, not map(attrgetter): the interpreter reads a struct's field through
        # its slot directly, about twice as fast per reading (measured on Python 3.11)
        ts: list[int] = [r.ts for r in readings]
        values: list[float] = [r.value for r in readings]
        newest = max(ts, default=-1)
        if horizon_ms is not None and not (
            # the usual batch, in one step: within the bounds all of its channels share, and
            # finite (a sum of values this bounded is infinite or NaN only if one of them is)
            layout is not None
            and layout.lowest <= min(values)
            and max(values) <= layout.highest
            and newest <= horizon_ms
            and math.isfinite(sum(values))
        ):
            rows, ts, values, refused = self._refused(rows, ts, values, horizon_ms)
            if refused:
                left_out = Routed(
                    left_out.mismatches, left_out.unplanned, [readings[i] for i in refused]
                )
                count = len(rows)
        if not count:
            return left_out
        self.counters.submitted += count
        if not known:
            self._note_ccp(device, rows)
        code = self._device_codes.get(device)
        if code is None:
            if len(self._devices) >= _MAX_LAYOUTS:
                code = 0  # beyond this many gateway ids, further ones are named "unknown"
            else:
                code = self._device_codes[device] = len(self._devices)
                self._devices.append(device)
        # whether a reading is late, and when its channel was last heard from, are settled at
        # the next release in one vector step: nothing is judged in between, so it is the same
        self._incoming.append((rows, ts, values, received_ms, code))
        if left_out is _NOTHING_LEFT_OUT:
            keys = layout.keys if layout is not None else None
            return Routed([], [], [], rows, keys, ts, values, newest)
        return left_out

    def _refused(
        self, rows: I64, ts: list[int], values: list[float], horizon_ms: int
    ) -> tuple[I64, list[int], list[float], list[int]]:
        """The readings kept, and the indices of those refused: implausible for their unit, or
        stamped after ``horizon_ms``."""
        stamps, figures = np.array(ts, dtype=np.int64), np.array(values, dtype=np.float64)
        # written so that NaN is refused too: every comparison with it is False
        plausible = (figures >= self._plausible_lo[rows]) & (figures <= self._plausible_hi[rows])
        refused = ~plausible | (stamps > horizon_ms)
        if not refused.any():
            return rows, ts, values, []
        kept = ~refused
        return (
            rows[kept],
            stamps[kept].tolist(),
            figures[kept].tolist(),
            np.flatnonzero(refused).tolist(),
        )

    def _rows_of(
        self, site: str, device: str, readings: list[Reading]
    ) -> tuple[I64, _Layout | None, bool]:
        """The channel row of each reading (-1: none), the gateway's layout they match (None
        if not every reading has a row, or beyond the cap), and whether it was known already.

        A gateway mostly sends the same channels in the same order: its batch is compared
        with its last layout as three strings (assets, channels, units, each joined in C),
        which is cheaper than a key per reading. The plan's ids hold no NUL, so with the same
        number of readings, equal joined strings mean equal ids one by one.
        """
        signature = (
            "\0".join([r.asset for r in readings]),
            "\0".join([r.channel for r in readings]),
            "\0".join([r.unit for r in readings]),
        )
        layout = self._layouts.get((site, device))
        if (
            layout is not None
            and layout.signature == signature
            and len(layout.rows) == len(readings)
        ):
            return layout.rows, layout, True
        index = self._index.get(site, _NO_CHANNELS)
        keys = map(_KEY, readings)
        rows = np.fromiter(map(index.get, keys, repeat(-1)), np.int64, len(readings))
        if bool(rows.min() >= 0) and len(self._layouts) < _MAX_LAYOUTS:
            layout = self._layouts[(site, device)] = _Layout(
                signature,
                # the plan's own key tuples, not this batch's strings: shared, not copied
                [self._keys[r] for r in rows.tolist()],
                rows,
                float(self._plausible_lo[rows].max()),
                float(self._plausible_hi[rows].min()),
            )
            return rows, layout, False
        return rows, None, False

    def clock(
        self, site: str, device: str, sent_at: int, received_ms: int, synced: bool | None = None
    ) -> None:
        """One batch's clocks: the device's offset is re-estimated, and a CCP device whose clock
        is off by more than the plan's tolerance, or which reports its clock unsynchronised
        (``synced=False``), is a time-sync fault."""
        clock = self._clocks.get(device)
        if clock is None:
            if len(self._clocks) >= _MAX_LAYOUTS:
                return
            clock = self._clocks[device] = DeviceClock()
        clock.heard(sent_at, received_ms, synced)
        if not clock.serves_ccp:
            return
        change = self._time_sync_of(site, device).judge(clock, received_ms, device)
        if change is not None:
            self._event_changes.append(change)

    def _time_sync_of(self, site: str, device: str) -> TimeSyncMachine:
        machine = self._time_sync.get(device)
        if machine is None:
            spec = self._spec(
                rule_id=f"time-sync.{device}",
                kind="time_sync",
                ccp=None,
                severity="major",
                action="alert",
                site=site,
                asset=device,
                channel="clock",
                unit="s",
                source=f"plan {self.plan.plan.plan}: CCP gateway clocks within "
                f"{self.plan.plan.clock_tolerance_s:g} s",
            )
            tolerance = round(self.plan.plan.clock_tolerance_s * 1000)
            machine = self._time_sync[device] = TimeSyncMachine(spec, tolerance)
        return machine

    def offset_ms(self, device: str) -> int:
        """The device clock's estimated offset from the stream's (ahead: positive)."""
        clock = self._clocks.get(device)
        return clock.offset_ms if clock is not None else 0

    def submit_events(self, site: str, events: list[Event]) -> int:
        """Take a gateway's events into the state of their assets; returns how many name an
        asset the plan does not know (counted there, not here).

        Events apply in event-time order. One older than what its asset's channels have already
        judged still counts from now on, but cannot change verdicts already given: it is counted
        as a late event.
        """
        unknown = 0
        for event in sorted(events, key=_EVENT_TS):
            if isinstance(event, Pickup):
                self._pickup(site, event)
            elif isinstance(event, Delivery):
                self._delivery(site, event)
            asset = event.compartment if isinstance(event, Pickup | Delivery) else event.asset
            state = self._assets.get((site, asset)) or self._assets.get((site, event.asset))
            if state is None:
                unknown += 1
                self.counters.unplanned_events += 1
                continue
            self.counters.events += 1
            if event.ts <= int(self._last_ts[state.rows].max()):
                self.counters.late_events += 1
            self._apply(site, state, event)
        return unknown

    def _pickup(self, site: str, event: Pickup) -> None:
        """Milk from a farm tank into a compartment: the tank is emptied, the compartment takes
        the tank's oldest milk, and the load's trip starts."""
        source = (event.source_site, event.source_asset)
        changes = self._event_changes
        for _, cooling in self._cooling_by_asset.get(source, ()):
            changes.extend(cooling.emptied(event.ts, "unknown"))
        oldest = None
        tank = self._ages.get(source)
        if tank is not None:
            oldest = tank.oldest
            changes.extend(tank.emptied(event.ts))
        compartment = (site, event.compartment)
        age = self._ages.get(compartment)
        if age is not None:
            age.filled(event.ts, oldest)
        for row, transport in self._transport_by_asset.get(compartment, ()):
            changes.extend(transport.pickup(event.ts))
            self._busy[row] = self._busy[row] or transport.engaged

    def _delivery(self, site: str, event: Delivery) -> None:
        """The load arrived at the plant: the compartment is emptied, its trip ends."""
        compartment = (site, event.compartment)
        age = self._ages.get(compartment)
        if age is not None:
            self._event_changes.extend(age.emptied(event.ts))
        for _, transport in self._transport_by_asset.get(compartment, ()):
            self._event_changes.extend(transport.delivery(event.ts))

    def _apply(self, site: str, state: _AssetState, event: Event) -> None:
        """One event of a known asset, into the state of the rules it concerns."""
        if isinstance(event, CipStart):
            # A start stamped before the last window ended is an old event delivered again
            # (at least once): taking it would open a window overlapping the closed one.
            last_end = state.cleaning[-1][1] if state.cleaning else -1
            if last_end != _OPEN and last_end <= event.ts:
                state.cleaning.append([event.ts, _OPEN])
                del state.cleaning[:-_KEPT_WINDOWS]
        elif isinstance(event, CipEnd) and state.cleaning:
            window = state.cleaning[-1]
            if window[1] == _OPEN and event.ts >= window[0]:
                window[1] = event.ts
        elif isinstance(event, MilkingStart | MilkingEnd):
            age = self._ages.get((site, event.asset))
            if age is not None and isinstance(event, MilkingStart):
                age.filled(event.ts)
            for row, cooling in self._cooling_by_asset.get((site, event.asset), ()):
                if isinstance(event, MilkingStart):
                    cooling.milking_start(event.ts)
                else:
                    cooling.milking_end(event.ts)
                self._busy[row] = self._busy[row] or cooling.engaged
        elif isinstance(event, ProductChange):
            rich = (
                event.fat_pct >= _RICH_FAT_PCT
                or (event.total_solids_pct or 0.0) >= _RICH_SOLIDS_PCT
                or event.sweetened
                or event.condensed
            )
            for machine in self._htst_by_asset.get((site, event.asset), ()):
                machine.product_change(event.ts, rich)

    def _note_ccp(self, device: str, rows: I64) -> None:
        """A device that reports CCP channels has its clock held to the plan's tolerance."""
        if len(rows) and bool(self._ccp[rows].any()):
            clock = self._clocks.get(device)
            if clock is None and len(self._clocks) < _MAX_LAYOUTS:
                clock = self._clocks[device] = DeviceClock()
            if clock is not None:
                clock.serves_ccp = True

    def _route_misses(
        self, site: str, rows: list[int], readings: list[Reading]
    ) -> tuple[list[int], list[Reading], Routed]:
        kept_rows: list[int] = []
        kept: list[Reading] = []
        mismatches: list[UnitMismatch] = []
        unplanned: list[Reading] = []
        for row, reading in zip(rows, readings, strict=True):
            if row >= 0:
                kept_rows.append(row)
                kept.append(reading)
                continue
            name = (site, reading.asset, reading.channel)
            expected = self._by_name.get(name)
            if expected is not None:
                mismatches.append(UnitMismatch(reading, expected))
                continue
            self.counters.unplanned += 1
            unplanned.append(reading)
            if name not in self._unplanned_seen and len(self._unplanned_seen) < _MAX_NOTICED:
                self._unplanned_seen.add(name)
                self.notices.append(Notice("unplanned", *name, reading.ts))
        return kept_rows, kept, Routed(mismatches, unplanned, [])

    def _report_late(self, rows: I64, ts: I64) -> None:
        self.counters.late += len(rows)
        for row, stamp in zip(rows.tolist(), ts.tolist(), strict=True):
            self._late_count[row] += 1
            count = int(self._late_count[row])
            if is_power_of_ten(count):
                site, asset, channel = self._names[row]
                self.notices.append(Notice("late", site, asset, channel, stamp, count))

    # ---------------------------------------------------------------- judging

    def advance(self, now_ms: int, out: list[DeviationChange]) -> None:
        """Move the clock to ``now_ms``, judge what the watermarks release, fire timers."""
        self._now = max(self._now, now_ms)
        if self._started < 0:
            self._started = self._now
        for change in self._event_changes:
            self._record(change, out)
        self._event_changes = []
        self._release(out, everything=False)
        self._fire_silence(out)
        if self._cooling:
            self._fire_deadlines(out)
        for age in self._ages.values():
            self._record(age.fire_due(self._now), out)
        if self._transports:
            for row, transport in self._transports:
                self._record(transport.fire_due(self._now), out)
                for change in transport.trip_over(bool(self._holding[row])):
                    self._record(change, out)

    def flush(self, out: list[DeviationChange]) -> None:
        """Judge everything held, as at the end of a replayed file (every channel idle)."""
        self._release(out, everything=True)

    def _release(self, out: list[DeviationChange], *, everything: bool) -> None:
        """Judge the held readings the watermarks pass, and keep the rest held.

        Held readings stay sorted by channel and time between releases. A release looks only at
        the channels that may let readings go: those that received some (their watermark moved),
        those gone idle since (:attr:`_next_idle` says when one may), those holding a reading
        stamped ahead of the clock, and the channels rules read together. The others' readings
        stay where they are, unsorted again and their watermarks not recomputed.
        """
        fresh = self._take_fresh()
        held = self._held
        if everything:
            readings = _sorted(_Columns.join([held, fresh])) if len(held.rows) else fresh
            self._held = _EMPTY_COLUMNS
            self._holding[:] = False
            self._ahead_rows = _NO_ROWS
            if len(readings.rows):
                self._judge(readings, out)
            return
        due = self._due_rows(fresh)
        if not len(due):
            return
        held = self._held
        taken = self._held_of(due)
        # every held reading's channel due (a drained queue from every gateway, the usual
        # case): all of them are candidates, with no copy of the five columns
        part = held if len(taken) == len(held.rows) else held.take(taken)
        candidates = _sorted(_Columns.join([part, fresh])) if len(taken) else fresh
        self._holding[due] = False
        if not len(candidates.rows):
            return
        rows, ts = candidates.rows, candidates.ts
        marks = np.empty(len(self._names), dtype=np.int64)
        marks[due] = self._watermarks(due)
        ready = ts <= marks[rows]
        ahead = ts > self._now
        if ahead.any():
            # nothing is judged before the stream's clock reaches it on its device's clock:
            # an idle channel would otherwise release one reading stamped ahead (within the
            # future tolerance) at once, and every real reading before it would be late
            ready[ahead] &= ts[ahead] <= self._device_now(candidates.devices[ahead])
        kept = _EMPTY_COLUMNS
        if not ready.all():
            kept = candidates.take(~ready)
            candidates = candidates.take(ready)
            self._holding[kept.rows] = True
            soonest = self._last_received[kept.rows] + self._lateness_ms[kept.rows]
            self._next_idle = min(self._next_idle, int(soonest.min()))
        self._ahead_rows = np.unique(kept.rows[kept.ts > self._now]) if len(kept.rows) else _NO_ROWS
        self._keep_held(taken, kept)
        if len(candidates.rows):
            self._judge(candidates, out)

    def _held_of(self, due: I64) -> I64:
        """Where the held readings of the ``due`` channels are (held is sorted by channel:
        a binary search each)."""
        rows = self._held.rows
        if not len(rows):
            return _NO_ROWS
        if len(due) == len(self._names):
            return np.arange(len(rows), dtype=np.int64)  # every channel: no search needed
        return _ranges(
            np.searchsorted(rows, due, side="left"), np.searchsorted(rows, due, side="right")
        )

    def _keep_held(self, taken: I64, kept: _Columns) -> None:
        """Held readings once those at ``taken`` were released, with ``kept`` held back.

        Mostly a channel holds as many readings after a release as before (one came, one went):
        then the kept ones take the released ones' places, with no pass over everything held.
        """
        held = self._held
        if len(taken) == len(held.rows):
            self._held = kept  # all were taken: what stays is what was kept, sorted already
            return
        if len(kept.rows) == len(taken) and bool((held.rows[taken] == kept.rows).all()):
            for own, stays in zip(held, kept, strict=True):
                own[taken] = stays
            return
        rest = held.without(taken) if len(taken) else held
        if not len(rest.rows):
            self._held = kept
        elif len(kept.rows):
            self._held = rest.merged(kept)
        else:
            self._held = rest

    def _due_rows(self, fresh: _Columns) -> I64:
        """The channels (sorted) whose held readings a release must look at: see
        :meth:`_release`."""
        parts = [part for part in (self._ahead_rows, self._joined_rows) if len(part)]
        if len(fresh.rows):
            rows = fresh.rows
            ends = np.empty(len(rows), dtype=np.bool_)
            ends[-1] = True
            ends[:-1] = rows[1:] != rows[:-1]
            parts.append(rows[ends])
        if self._now >= self._next_idle:
            # the channels gone idle since, and when the next may (their arrivals only move on)
            waiting_until = np.where(self._holding, self._last_received + self._lateness_ms, _NEVER)
            idle = waiting_until <= self._now
            parts.append(np.flatnonzero(idle))
            self._next_idle = int(np.where(idle, _NEVER, waiting_until).min())
        if len(parts) == 1:
            return parts[0]  # sorted and unique already
        if not parts:
            return _NO_ROWS
        due = np.zeros(len(self._names), dtype=np.bool_)  # cheaper than sorting the union
        for part in parts:
            due[part] = True
        return np.flatnonzero(due)

    def _take_fresh(self) -> _Columns:
        """What came since the last release, sorted by channel and time: late readings counted
        and dropped, each channel's arrival and newest timestamp noted."""
        incoming, self._incoming = self._incoming, []
        if not incoming:
            return _EMPTY_COLUMNS
        sizes = [len(part[0]) for part in incoming]
        count = sum(sizes)
        fresh = _Columns(
            np.concatenate([part[0] for part in incoming]),
            np.fromiter(chain.from_iterable(part[1] for part in incoming), np.int64, count),
            np.fromiter(chain.from_iterable(part[2] for part in incoming), np.float64, count),
            np.repeat(np.array([part[3] for part in incoming], dtype=np.int64), sizes),
            np.repeat(np.array([part[4] for part in incoming], dtype=np.int64), sizes),
        )
        late = fresh.ts <= self._last_ts[fresh.rows]
        if late.any():
            self._report_late(fresh.rows[late], fresh.ts[late])
            fresh = fresh.take(~late)
        if not len(fresh.rows):
            return _EMPTY_COLUMNS
        # submits are in arrival order, so the last write per channel is the latest
        self._last_received[fresh.rows] = fresh.received
        # a receive time earlier than one before (a clock that went back) brings silence nearer
        silent_after = fresh.received + self._silence_ms[fresh.rows] + self._lateness_ms[fresh.rows]
        self._next_silence = min(self._next_silence, int(silent_after.min()) + 1)
        fresh = _sorted(fresh)
        rows = fresh.rows
        ends = np.empty(len(rows), dtype=np.bool_)
        ends[-1] = True
        ends[:-1] = rows[1:] != rows[:-1]
        ended = rows[ends]
        self._newest[ended] = np.maximum(self._newest[ended], fresh.ts[ends])
        return fresh

    def _device_now(self, codes: I64) -> I64:
        """The stream's clock on each device's clock: ahead by the least its recent batches
        showed (not the offset estimate, the most: one batch with a sent_at an hour fast must
        not let a reading an hour ahead through)."""
        unique, inverse = np.unique(codes, return_inverse=True)
        devices, clocks = self._devices, self._clocks
        ahead = []
        for code in unique.tolist():
            clock = clocks.get(devices[code]) if code < len(devices) else None
            ahead.append(max(min(clock.differences), 0) if clock and clock.differences else 0)
        return self._now + np.array(ahead, dtype=np.int64)[inverse]

    def _watermarks(self, rows: I64) -> I64:
        """The watermarks of ``rows`` (sorted, holding every channel of a rule that reads
        several): each channel's newest timestamp less its allowed lateness, or no limit when it
        has been idle that long. The channels one rule reads together share the lowest of theirs
        (on corrected time), so none is judged ahead of another's earlier samples."""
        idle = self._now - self._last_received[rows] >= self._lateness_ms[rows]
        marks = np.where(idle, _NEVER, self._newest[rows] - self._lateness_ms[rows])
        for group in self._joined_groups:
            at = np.searchsorted(rows, group)
            offsets = np.array(
                [self.offset_ms(self._devices[int(d)]) for d in self._last_device[group]],
                dtype=np.int64,
            )
            corrected = np.where(marks[at] == _NEVER, _NEVER, marks[at] - offsets)
            lowest = corrected.min()
            marks[at] = lowest if lowest == _NEVER else lowest + offsets
        return marks

    def _judge(self, readings: _Columns, out: list[DeviationChange]) -> None:
        """Judge readings sorted by channel, then time."""
        rows, ts = readings.rows, readings.ts
        n = len(rows)
        if n > 1:
            repeat = np.zeros(n, dtype=np.bool_)
            repeat[1:] = (rows[1:] == rows[:-1]) & (ts[1:] == ts[:-1])
            if repeat.any():
                # the same channel and timestamp twice (e.g. two gateways relaying one sensor)
                self.counters.duplicates += int(repeat.sum())
                readings = readings.take(~repeat)
                rows, ts = readings.rows, readings.ts
                n = len(rows)
        self.counters.judged += n
        quiet, starts, ends, run_start = self._screen_quiet(readings)
        if self._silent[rows[starts]].any():
            self._next_silence = -1  # heard from again: its silence can come again
        values, devices = readings.values, readings.devices
        if not self._screen:
            quiet[:] = False
        group_quiet = np.logical_and.reduceat(quiet, starts) & ~self._joined[rows[starts]]
        done = ends[group_quiet]
        done_rows = rows[done]
        self._last_ts[done_rows] = ts[done]
        self._last_value[done_rows] = values[done]
        self._run_start[done_rows] = run_start[done]
        self._last_device[done_rows] = devices[done]
        if not group_quiet.all():
            joined: list[int] = []
            for group in np.flatnonzero(~group_quiet).tolist():
                lo, hi = int(starts[group]), int(ends[group]) + 1
                if self._joined[rows[lo]]:
                    joined.extend(range(lo, hi))
                else:
                    self._judge_channel(int(rows[lo]), readings.take(np.arange(lo, hi)), out)
            if joined:
                self._judge_joined(readings.take(np.array(joined, dtype=np.int64)), out)

    def _screen_quiet(self, readings: _Columns) -> tuple[B, I64, I64, I64]:
        """Which readings can change no rule's state: within every limit's band, a plausible
        step, no flat line or gap near its limit, no rule engaged. Also where each channel's
        readings start and end, and where the flat line each reading belongs to began."""
        rows, ts, values = readings.rows, readings.ts, readings.values
        n = len(rows)
        first = np.empty(n, dtype=np.bool_)
        first[0] = True
        first[1:] = rows[1:] != rows[:-1]
        starts = np.flatnonzero(first)
        ends = np.append(starts[1:], n) - 1
        prev_ts = np.empty(n, dtype=np.int64)
        prev_ts[1:] = ts[:-1]
        prev_ts[starts] = self._last_ts[rows[starts]]
        prev_value = np.empty(n, dtype=np.float64)
        prev_value[1:] = values[:-1]
        prev_value[starts] = self._last_value[rows[starts]]
        seen = prev_ts >= 0
        # start of the exact flat line each sample belongs to
        fresh = ~seen | (values != prev_value)
        anchor = np.where(fresh, ts, self._run_start[rows])
        position = np.where(fresh | first, np.arange(n), 0)
        np.maximum.accumulate(position, out=position)
        run_start = anchor[position]
        base = np.where(seen, prev_ts, self._started)
        gap = ts - base
        with np.errstate(over="ignore", invalid="ignore"):  # an infinite step is implausible
            step = np.abs(values - prev_value)
        quiet = (
            (values >= self._lo[rows])
            & (values <= self._hi[rows])
            & ~self._busy[rows]
            & (gap <= self._silence_ms[rows])
            & (~seen | (step <= self._max_rate[rows] * (ts - prev_ts)))
            & ((ts - run_start) < self._flat_ms[rows])
        )
        return quiet, starts, ends, run_start

    def _judge_joined(self, readings: _Columns, out: list[DeviationChange]) -> None:
        """Channels read together by one rule: one sample at a time, in time order across them,
        so each sees the others' state as it was then. At equal times a valve's state comes
        first: a temperature is judged with the flow direction of that instant."""
        # on corrected time: two devices' clocks may disagree (estimated offsets, ahead positive)
        offsets = np.array([self.offset_ms(d) for d in self._devices], dtype=np.int64)
        corrected = readings.ts - offsets[readings.devices]
        order = np.lexsort((readings.rows, self._join_rank[readings.rows], corrected))
        for index in order.tolist():
            row = int(readings.rows[index])
            self._judge_channel(row, readings.take(np.array([index])), out)

    def _judge_channel(self, row: int, readings: _Columns, out: list[DeviationChange]) -> None:
        """The scalar path: one channel's samples, in order, through its rule machines."""
        stamps: list[int] = readings.ts.tolist()
        values: list[float] = readings.values.tolist()
        received: list[int] = readings.received.tolist()
        devices: list[int] = readings.devices.tolist()
        prev_ts = int(self._last_ts[row])
        prev_value = float(self._last_value[row])
        run_start = int(self._run_start[row])
        silence_ms = int(self._silence_ms[row])
        silence = self._silence[row]
        machines = self._machines[row]
        asset = self._asset_of_row[row]
        cleans = bool(asset.cleaning)
        for ts, value, got, code in zip(stamps, values, received, devices, strict=True):
            if prev_ts < 0 or value != prev_value:
                run_start = ts
            device = self._devices[code]
            offset = self.offset_ms(device)
            # how long after it was taken the stream got it, both on the stream's clock
            late = got - (ts - offset) > silence_ms
            sample = Sample(ts, value, prev_ts, prev_value, run_start, device, late)
            sample.offset_ms = offset
            if cleans:
                sample.cleaning_since = asset.cleaning_since(ts)
                sample.prev_cleaning = prev_ts >= 0 and asset.cleaning_since(prev_ts) >= 0
            base = prev_ts if prev_ts >= 0 else self._started
            if silence.open_deviation is None and ts - base > silence_ms:
                # the gap is seen only now (no timer ran in it): open it where it began
                self._record(silence.open_at(base + silence_ms, device), out)
            if silence.open_deviation is not None:
                self._record(silence.observe(sample), out)
            for machine in machines:
                self._record(machine.observe(sample), out)
            for joined, role in self._joined_roles.get(row, ()):
                for change in joined.observe(role, sample):
                    self._record(change, out)
            for cooling in self._cooling_of_row.get(row, ()):
                for change in cooling.observe(sample):
                    self._record(change, out)
            for transport in self._transports_of_row.get(row, ()):
                for change in transport.observe(sample):
                    self._record(change, out)
            prev_ts, prev_value = ts, value
        self._last_ts[row] = prev_ts
        self._last_value[row] = prev_value
        self._run_start[row] = run_start
        self._last_device[row] = devices[-1]
        self._silent[row] = False
        self._busy[row] = (
            any(machine.engaged for machine in machines)
            or any(cooling.engaged for cooling in self._cooling_of_row.get(row, ()))
            or any(transport.engaged for transport in self._transports_of_row.get(row, ()))
        )

    def _fire_deadlines(self, out: list[DeviationChange]) -> None:
        """Deadlines the device's clock has passed with no sample to judge them by.

        The device's clock is estimated from its last sample and how long ago the stream heard
        from it; a channel still holding readings waits for them to be judged first.
        """
        for row, machine in self._cooling:
            if not (machine.pending or machine.missed) or self._holding[row]:
                continue
            heard = int(self._last_received[row])
            last = int(self._last_ts[row])
            device_now = last + (self._now - heard) if heard >= 0 and last >= 0 else self._now
            # a sample in time may still arrive within the allowed lateness
            device_now -= int(self._lateness_ms[row])
            device = self._devices[int(self._last_device[row])]
            for change in machine.fire_due(device_now, device):
                self._record(change, out)
            self._busy[row] = self._busy[row] or machine.engaged

    def _record(self, change: DeviationChange | None, out: list[DeviationChange]) -> None:
        if change is None:
            return
        out.append(change)
        if change.kind == "opened":
            self.counters.opened += 1
        else:
            self.counters.closed += 1

    def _fire_silence(self, out: list[DeviationChange]) -> None:
        # silent in the stream's time: nothing received for longer than the limit
        if self._now < self._next_silence:
            return  # no channel can have gone silent yet: no need to look at each
        heard = np.where(self._last_received >= 0, self._last_received, self._started)
        # past the silence limit, and past the allowed lateness in which samples may still come
        silent_after = heard + self._silence_ms + self._lateness_ms
        waited = self._now > silent_after
        due = ~self._silent & waited
        # the next time one may: arrivals only move it later, and a channel heard from again
        # after its silence sets it back (see _judge_channel)
        self._next_silence = int(np.where(self._silent | due, _NEVER, silent_after + 1).min())
        if not due.any():
            return
        # a channel still holding samples is not silent; unless they are stamped ahead of the
        # clock (an outlier within the future tolerance), which must not mask a real silence
        holding = np.flatnonzero(due & (self._newest > self._last_ts))
        if len(holding):
            ahead = self._newest[holding] > self._device_now(self._last_device[holding])
            due[holding] = ahead
            if not ahead.all():
                # they may be judged and still be silent (their channel's readings wait for
                # another's): look again at the next advance
                self._next_silence = min(self._next_silence, self._now + 1)
            if not due.any():
                return
        # the deviation starts in the device's time: its last sample plus the limit
        begins = np.where(self._last_ts >= 0, self._last_ts, self._started) + self._silence_ms
        for row in np.flatnonzero(due).tolist():
            device = self._devices[int(self._last_device[row])]
            self._record(self._silence[row].open_at(int(begins[row]), device), out)
            self._silent[row] = True
            self._busy[row] = True

    # ---------------------------------------------------------------- state

    def excuse_outage(self, now_ms: int) -> None:
        """The stream was down until ``now_ms`` and restarts from a snapshot: a channel heard
        before is taken as heard at ``now_ms``, so what its gateway sent meanwhile (which the
        broker holds and sends first) comes in before the channel can look silent. A channel
        that stays silent still opens its "monitoring lost", with the same start (its last
        sample plus the limit), detected later by at most the outage."""
        heard = self._last_received >= 0
        self._last_received[heard] = np.maximum(self._last_received[heard], now_ms)

    def take_notices(self) -> list[Notice]:
        """The notices gathered since the last call."""
        notices, self.notices = self.notices, []
        return notices

    def open_deviations(self) -> list[Deviation]:
        """Deviations open now, e.g. to report at shutdown that they are still open."""
        found = [
            machine.open_deviation
            for machines in self._machines
            for machine in machines
            if machine.open_deviation is not None
        ]
        found.extend(s.open_deviation for s in self._silence if s.open_deviation is not None)
        found.extend(
            m.open_deviation
            for joined in self._joined_machines
            for m in joined.machines
            if m.open_deviation is not None
        )
        found.extend(d for _, cooling in self._cooling for d in cooling.open_deviations)
        found.extend(m.open_deviation for m in self._time_sync.values() if m.open_deviation)
        found.extend(
            age.deadline.open_deviation
            for age in self._ages.values()
            if age.deadline.open_deviation is not None
        )
        found.extend(d for _, transport in self._transports for d in transport.open_deviations)
        return found

    @property
    def held(self) -> int:
        """Readings waiting for their watermark."""
        return len(self._held.rows) + sum(len(part[0]) for part in self._incoming)

    def _merged_held(self) -> _Held:
        fresh = self._take_fresh()
        if len(fresh.rows):
            # fold what came since the last release in, without judging anything
            self._held = _sorted(_Columns.join([self._held, fresh]))
            self._holding[fresh.rows] = True
            self._next_idle = -1
            self._ahead_rows = np.unique(self._held.rows)
        return _Held.of(self._held)

    def snapshot(self) -> bytes:
        """Everything needed to carry on after a restart exactly as without it."""
        held = self._merged_held()  # first: folding incoming readings in updates the arrays
        arrays = {
            "last_ts": self._last_ts,
            "newest": self._newest,
            "last_received": self._last_received,
            "last_value": self._last_value,
            "run_start": self._run_start,
            "last_device": self._last_device,
            "late_count": self._late_count,
            "busy": self._busy,
            "silent": self._silent,
        }
        machines = [
            (row, slot, machine.state())
            for row, row_machines in enumerate(self._machines)
            for slot, machine in enumerate(row_machines)
            if machine.engaged or machine.open_deviation is not None
        ]
        silence = [
            (row, s.state()) for row, s in enumerate(self._silence) if s.open_deviation is not None
        ]
        state = _Snapshot(
            format=SNAPSHOT_FORMAT,
            plan_version=self.plan.state_version,
            now=self._now,
            started=self._started,
            arrays={name: array.tobytes() for name, array in arrays.items()},
            machines=machines,
            silence=silence,
            devices=self._devices,
            held=held,
            event_changes=self._event_changes,
            counters={k: getattr(self.counters, k) for k in EngineCounters.__slots__},
            unplanned_seen=sorted(self._unplanned_seen),
            assets={
                f"{site}/{asset}": state
                for (site, asset), state in self._assets.items()
                if state.cleaning
            },
            joined=[machine.state() for machine in self._joined_machines],
            cooling=[machine.state() for _, machine in self._cooling],
            clocks={d: (list(c.differences), c.serves_ccp) for d, c in self._clocks.items()},
            clock_reports={d: c.synced for d, c in self._clocks.items() if c.synced is not None},
            ages=[age.state() for age in self._ages.values()],
            transports=[transport.state() for _, transport in self._transports],
            time_sync={
                d: (m.spec.site, m.state()) for d, m in self._time_sync.items() if m.open_deviation
            },
        )
        return msgspec.msgpack.encode(state)

    @classmethod
    def restore(cls, loaded: LoadedPlan, data: bytes) -> Engine:
        """An engine that carries on from a snapshot taken under the same plan version."""
        state = msgspec.msgpack.decode(data, type=_Snapshot)
        if state.format != SNAPSHOT_FORMAT:
            raise SnapshotMismatch(f"snapshot format {state.format}, expected {SNAPSHOT_FORMAT}")
        if state.plan_version != loaded.state_version:
            raise SnapshotMismatch(
                f"snapshot of plan version {state.plan_version}, but the plan is now "
                f"{loaded.state_version}; a changed plan starts from fresh state"
            )
        try:
            return cls._restored(loaded, state)
        except SnapshotMismatch:
            raise
        except Exception as exc:  # it decoded, but does not fit: corrupt, or not ours
            raise SnapshotMismatch(
                f"snapshot does not fit plan {loaded.state_version} "
                f"({type(exc).__name__}: {exc}); starting from fresh state"
            ) from exc

    @classmethod
    def _restored(cls, loaded: LoadedPlan, state: _Snapshot) -> Engine:
        engine = cls(loaded)
        engine._now, engine._started = state.now, state.started
        for name, raw in state.arrays.items():
            current = getattr(engine, f"_{name}")
            current[:] = np.frombuffer(raw, dtype=current.dtype)
        for row, slot, machine_state in state.machines:
            engine._machines[row][slot].restore(with_deviation(machine_state))
        for row, silence_state in state.silence:
            engine._silence[row].restore(with_deviation(silence_state))
        engine._devices = list(state.devices)
        engine._device_codes = {name: code for code, name in enumerate(engine._devices)}
        held = state.held.arrays()  # read only (views of the snapshot's bytes): releases write
        engine._held = _sorted(
            _Columns(
                held.rows.copy(),
                held.ts.copy(),
                held.values.copy(),
                held.received.copy(),
                held.devices.copy(),
            )
        )
        engine._holding[engine._held.rows] = True
        engine._ahead_rows = np.unique(engine._held.rows)  # looked at once, at the next release
        engine._event_changes = list(state.event_changes)
        for machine, saved_joined in zip(engine._joined_machines, state.joined, strict=True):
            machine.restore(saved_joined)
        for (_, cooling), saved_cooling in zip(engine._cooling, state.cooling, strict=True):
            cooling.restore(saved_cooling)
        for age, saved_age in zip(engine._ages.values(), state.ages, strict=True):
            age.restore(saved_age)
        for (_, transport), saved_trip in zip(engine._transports, state.transports, strict=True):
            transport.restore(saved_trip)
        for device, (differences, serves_ccp) in state.clocks.items():
            clock = engine._clocks[device] = DeviceClock(serves_ccp=serves_ccp)
            clock.differences.extend(differences)
            clock.synced = state.clock_reports.get(device)
        for device, (site, saved_sync) in state.time_sync.items():
            engine._time_sync_of(site, device).restore(with_deviation(saved_sync))
        for name, saved in state.assets.items():
            site, asset = name.split("/", 1)
            engine._assets[(site, asset)].cleaning = saved.cleaning
        engine.counters = EngineCounters(**state.counters)
        engine._unplanned_seen = {tuple(name) for name in state.unplanned_seen}  # type: ignore[misc]
        return engine


def _sorted(readings: _Columns) -> _Columns:
    """Readings by channel, then time.

    One int64 key and a stable sort: readings arrive as runs already in order (a gateway's batch
    per channel, the held rest of the last release), which timsort merges in near-linear time.
    """
    rows, ts = readings.rows, readings.ts
    if len(rows) < 2:
        return readings
    span = ts - ts.min()
    if int(span.max()) >= _KEY_SPAN:
        # the contract's event times span 100 years, more than the key holds: sort on both
        return readings.take(np.lexsort((ts, rows)))
    key = (rows << 41) | span  # 2**41 ms is 69 years; rows stay below 2**22
    if not bool((key[1:] < key[:-1]).any()):
        return readings
    return readings.take(np.argsort(key, kind="stable"))


_KEY_SPAN = 2**41


_NO_ROWS = np.empty(0, dtype=np.int64)


def _ranges(first: I64, last: I64) -> I64:
    """The indices from each ``first`` up to its ``last`` (excluded), one range after the
    other."""
    lengths = last - first
    total = int(lengths.sum())
    if not total:
        return _NO_ROWS
    before = np.cumsum(lengths) - lengths  # where each range starts in the result
    indices: I64 = np.arange(total, dtype=np.int64) + np.repeat(first - before, lengths)
    return indices


_EMPTY_COLUMNS = _Columns(
    np.empty(0, dtype=np.int64),
    np.empty(0, dtype=np.int64),
    np.empty(0, dtype=np.float64),
    np.empty(0, dtype=np.int64),
    np.empty(0, dtype=np.int64),
)
_NO_CHANNELS: dict[tuple[str, str, str], int] = {}
_OPEN = 2**62  # the end of a cleaning window still going on
_KEPT_WINDOWS = 64  # cleaning windows remembered per asset (older ones are long judged)
_EVENT_TS = attrgetter("ts")
# product classes that raise the legal pasteurization minimum (PMO: +3 degC)
_RICH_FAT_PCT = 10.0
_RICH_SOLIDS_PCT = 18.0
_MAX_LAYOUTS = 20_000  # one per gateway; bounded so invented gateway ids cannot grow memory

# unplanned channels are noticed once each, up to this many (a gateway inventing ids is bounded)
_MAX_NOTICED = 10_000


def is_power_of_ten(n: int) -> bool:
    """1, 10, 100, ...: when a repeated notice is logged again (the first, then ever rarer)."""
    while n >= 10 and n % 10 == 0:
        n //= 10
    return n == 1

"""Snapshots: everything an engine needs to carry on after a restart exactly as without it.

The format is msgpack of :class:`_Snapshot`; it is the one the engine has always written
(``SNAPSHOT_FORMAT`` 1): the machines of the rule kinds it first knew keep their fields
(``machines``, ``joined``, ``cooling``, ``ages``, ``transports``), and the machines of every
kind registered since go in ``rules``, by rule id. A snapshot taken under another plan version
or format is refused with :class:`SnapshotMismatch`.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, NamedTuple

import msgspec
import numpy as np

from stream.engine.clocks import DeviceClock
from stream.engine.columns import HeldColumns
from stream.engine.compile import BoundRule
from stream.engine.deviation import DeviationChange
from stream.engine.devices import Devices
from stream.engine.judging import Judge
from stream.engine.late import LateJudge, LateState
from stream.engine.machines import SilenceMachine, with_deviation
from stream.engine.notices import EngineCounters
from stream.engine.routing import Router
from stream.engine.table import STATE_ARRAYS, AssetState, ChannelTable
from stream.engine.watermarks import Held
from stream.plan import LoadedPlan

SNAPSHOT_FORMAT = 1


class SnapshotMismatch(ValueError):  # noqa: N818 - reads as the condition
    """A snapshot was taken under another plan version or format."""


class _Snapshot(msgspec.Struct):
    format: int
    plan_version: str
    now: int
    started: int
    arrays: dict[str, bytes]
    machines: list[tuple[int, int, dict[str, Any]]]
    silence: list[tuple[int, dict[str, Any]]]
    devices: list[str]
    held: HeldColumns
    counters: dict[str, int]
    unplanned_seen: list[tuple[str, str, str]]
    assets: dict[str, AssetState]
    joined: list[dict[str, Any]]
    cooling: list[dict[str, Any]]
    event_changes: list[DeviationChange]
    clocks: dict[str, tuple[list[int], bool]]
    ages: list[dict[str, Any]]
    transports: list[dict[str, Any]]
    time_sync: dict[str, tuple[str, dict[str, Any]]]
    clock_reports: dict[str, bool] = {}  # older snapshots lack it
    heard_after: int = -1  # older snapshots lack it: a fresh run's
    rules: dict[str, dict[str, Any]] = {}  # kinds registered since the first format, by rule id
    late: LateState | None = None  # older snapshots lack it
    clock_estimates: dict[str, list[tuple[int, int]]] = {}  # older snapshots lack it


class EngineParts(NamedTuple):
    """What a snapshot is taken of."""

    plan: LoadedPlan
    table: ChannelTable
    held: Held
    judge: Judge
    devices: Devices
    router: Router
    assets: dict[tuple[str, str], AssetState]
    silence: list[SilenceMachine]
    counters: EngineCounters
    late: LateJudge


_LEGACY = ("joined", "cooling", "ages", "transports")


def _single_slots(rules: list[BoundRule]) -> list[tuple[int, int, BoundRule]]:
    """The single-channel rules as the first format numbered them: (row, slot in the row)."""
    slots: list[tuple[int, int, BoundRule]] = []
    per_row: dict[int, int] = {}
    for bound in rules:
        if bound.kind.snapshot == "machines":
            row = next(iter(bound.compiled.reads.values()))
            slot = per_row.get(row, 0)
            per_row[row] = slot + 1
            slots.append((row, slot, bound))
    slots.sort(key=lambda item: (item[0], item[1]))
    return slots


def encode(parts: EngineParts) -> bytes:
    """The snapshot of an engine's parts."""
    held = parts.held.merged()  # first: folding incoming readings in updates the arrays
    table, judge = parts.table, parts.judge
    machines = [
        (row, slot, bound.machine.state())
        for row, slot, bound in _single_slots(judge.rules)
        if bound.machine.engaged or bound.machine.open_deviations
    ]
    legacy: dict[str, list[dict[str, Any]]] = {name: [] for name in _LEGACY}
    rules: dict[str, dict[str, Any]] = {}
    for bound in judge.rules:
        field = bound.kind.snapshot
        if field in legacy:
            legacy[field].append(bound.machine.state())
        elif field != "machines":
            rules[bound.compiled.rule_id] = bound.machine.state()
    devices = parts.devices
    state = _Snapshot(
        format=SNAPSHOT_FORMAT,
        plan_version=parts.plan.state_version,
        now=table.now,
        started=table.started,
        heard_after=table.heard_after,
        arrays={name: getattr(table, name).tobytes() for name in STATE_ARRAYS},
        machines=machines,
        silence=[
            (row, s.state()) for row, s in enumerate(parts.silence) if s.open_deviation is not None
        ],
        devices=devices.names,
        held=held,
        event_changes=judge.event_changes,
        counters={f.name: getattr(parts.counters, f.name) for f in fields(EngineCounters)},
        unplanned_seen=sorted(parts.router.unplanned_seen),
        assets={
            f"{site}/{asset}": state
            for (site, asset), state in parts.assets.items()
            if state.cleaning
        },
        joined=legacy["joined"],
        cooling=legacy["cooling"],
        clocks={d: (list(c.differences), c.serves_ccp) for d, c in devices.clocks.items()},
        clock_reports={d: c.synced for d, c in devices.clocks.items() if c.synced is not None},
        ages=legacy["ages"],
        transports=legacy["transports"],
        time_sync={
            d: (m.spec.site, m.state()) for d, m in devices.time_sync.items() if m.open_deviation
        },
        rules=rules,
        late=parts.late.state(),
        clock_estimates={d: c.estimates for d, c in devices.clocks.items() if c.estimates},
    )
    return msgspec.msgpack.encode(state)


def decode(loaded: LoadedPlan, data: bytes) -> _Snapshot:
    """A snapshot's content, if it was taken under this plan version and format."""
    state = msgspec.msgpack.decode(data, type=_Snapshot)
    if state.format != SNAPSHOT_FORMAT:
        raise SnapshotMismatch(f"snapshot format {state.format}, expected {SNAPSHOT_FORMAT}")
    if state.plan_version != loaded.state_version:
        raise SnapshotMismatch(
            f"snapshot of plan version {state.plan_version}, but the plan is now "
            f"{loaded.state_version}; a changed plan starts from fresh state"
        )
    return state


def restore(parts: EngineParts, state: _Snapshot) -> None:
    """Take a snapshot's content back into a freshly compiled engine's parts."""
    table, judge, devices = parts.table, parts.judge, parts.devices
    table.now, table.started = state.now, state.started
    table.heard_after = state.heard_after
    for name, raw in state.arrays.items():
        current = getattr(table, name)
        current[:] = np.frombuffer(raw, dtype=current.dtype)
    slots = {(row, slot): bound for row, slot, bound in _single_slots(judge.rules)}
    for row, slot, machine_state in state.machines:
        slots[(row, slot)].machine.restore(with_deviation(machine_state))
    for row, silence_state in state.silence:
        parts.silence[row].restore(with_deviation(silence_state))
    devices.renamed(list(state.devices))
    parts.held.restore(state.held)
    judge.event_changes = list(state.event_changes)
    legacy = {
        "joined": state.joined,
        "cooling": state.cooling,
        "ages": state.ages,
        "transports": state.transports,
    }
    for name, saved_states in legacy.items():
        kept = [bound for bound in judge.rules if bound.kind.snapshot == name]
        for bound, saved in zip(kept, saved_states, strict=True):
            bound.machine.restore(saved)
    for bound in judge.rules:
        saved_rule = state.rules.get(bound.compiled.rule_id)
        if bound.kind.snapshot == "rules" and saved_rule is not None:
            bound.machine.restore(saved_rule)
    for device, (differences, serves_ccp) in state.clocks.items():
        clock = devices.clocks[device] = DeviceClock(serves_ccp=serves_ccp)
        clock.differences.extend(differences)
        clock.synced = state.clock_reports.get(device)
        clock.restore_estimates(state.clock_estimates.get(device, ()))
    for device, (site, saved_sync) in state.time_sync.items():
        devices.time_sync_of(site, device).restore(with_deviation(saved_sync))
    for name, saved_asset in state.assets.items():
        site, asset = name.split("/", 1)
        parts.assets[(site, asset)].cleaning = saved_asset.cleaning
    saved_counters = EngineCounters(**state.counters)
    for f in fields(EngineCounters):
        setattr(parts.counters, f.name, getattr(saved_counters, f.name))
    parts.router.unplanned_seen = {tuple(name) for name in state.unplanned_seen}  # type: ignore[misc]
    if state.late is not None:
        parts.late.restore(state.late)

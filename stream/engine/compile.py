"""Compiling a plan: the channel table, each channel's silence machine, and every rule's
machine through the registry of rule kinds (:mod:`stream.engine.registry`).

A channel's quiet band is the narrowest of the bands its rules' machines give; a rule that
reads several channels together makes them joined (never screened, judged merged in time
order, the roles the rule names first (e.g. a flow-diversion valve) first at equal times).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from milkguard.contract.v1 import PLAUSIBLE
from stream.engine.columns import I64
from stream.engine.kinds import Compiled, PlanContext, RuleKind, RuleMachine
from stream.engine.machines import ANYWHERE, NEVER_QUIET, SilenceMachine
from stream.engine.registry import RULE_KINDS
from stream.engine.table import AssetState, ChannelTable
from stream.plan import LoadedPlan


@dataclass(slots=True, eq=False)
class BoundRule:
    """A compiled rule with its kind."""

    compiled: Compiled
    kind: RuleKind

    @property
    def machine(self) -> RuleMachine:
        """The rule's machine."""
        return self.compiled.machine


@dataclass(slots=True, eq=False)
class CompiledPlan:
    """A plan, compiled: what the engine's parts are made from."""

    context: PlanContext
    table: ChannelTable
    #: site -> (asset, channel, unit) -> row
    index: dict[str, dict[tuple[str, str, str], int]]
    #: (site, asset, channel) -> the unit the plan declares
    by_name: dict[tuple[str, str, str], str]
    assets: dict[tuple[str, str], AssetState]
    silence: list[SilenceMachine]
    #: every rule, by stage, then in the plan's order
    rules: list[BoundRule]
    #: per row: the machines that read it, and as what role, in judging order
    of_row: list[list[tuple[RuleMachine, str]]] = field(default_factory=list)
    #: per (site, asset): the machines that take its events, in judging order
    by_asset: dict[tuple[str, str], list[BoundRule]] = field(default_factory=dict)
    #: the rules whose kinds have timers, in judging order
    timed: list[BoundRule] = field(default_factory=list)
    #: the rows each joined rule reads, sorted (they share the lowest watermark)
    joined_groups: list[I64] = field(default_factory=list)


def compile_plan(loaded: LoadedPlan, context: PlanContext) -> CompiledPlan:
    """The channel table and every machine of a loaded plan."""
    plan = loaded.plan
    names: list[tuple[str, str, str]] = []
    keys: list[tuple[str, str, str]] = []
    asset_of_row: list[AssetState] = []
    index: dict[str, dict[tuple[str, str, str], int]] = {}
    by_name: dict[tuple[str, str, str], str] = {}
    assets: dict[tuple[str, str], AssetState] = {}
    silence_ms: list[int] = []
    lateness: list[int] = []
    ccp: list[bool] = []
    plausible: list[tuple[float, float]] = []
    silence: list[SilenceMachine] = []
    grace_ms = round(plan.startup_grace_s * 1000)
    row_of = context.row_of
    for key, asset in plan.assets.items():
        asset_id = asset.id or key
        late_s = (
            asset.allowed_lateness_s
            if asset.allowed_lateness_s is not None
            else plan.allowed_lateness_s
        )
        state = assets[(asset.site, asset_id)] = AssetState(rows=[])
        for channel_id, channel in asset.channels.items():
            row = len(names)
            state.rows.append(row)
            asset_of_row.append(state)
            row_of[(key, channel_id)] = row
            wire_key = (asset_id, channel_id, channel.unit)
            index.setdefault(asset.site, {})[wire_key] = row
            keys.append(wire_key)
            by_name[(asset.site, asset_id, channel_id)] = channel.unit
            names.append((asset.site, asset_id, channel_id))
            silence_s = channel.silence_after_s or channel.interval_s * plan.silence_factor
            silence_ms.append(round(silence_s * 1000))
            lateness.append(round(late_s * 1000))
            ccp.append(channel.ccp)
            plausible.append(PLAUSIBLE[channel.unit])
            spec = context.spec(
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
            silence.append(SilenceMachine(spec, silence_ms[-1], grace_ms))
    n = len(names)
    rules = _compile_rules(loaded, context)
    wiring = _Wiring(n)
    for bound in rules:
        wiring.add(bound)
    bands = wiring.bands
    bounds = np.array(plausible, dtype=np.float64).reshape(-1, 2)
    table = ChannelTable(
        names=names,
        keys=keys,
        asset_of_row=asset_of_row,
        lo=np.array([b.lo for b in bands], dtype=np.float64),
        hi=np.array([b.hi for b in bands], dtype=np.float64),
        max_rate=np.array([b.max_per_ms for b in bands], dtype=np.float64),
        flat_ms=np.array([b.flat_ms for b in bands], dtype=np.int64),
        silence_ms=np.array(silence_ms, dtype=np.int64),
        lateness_ms=np.array(lateness, dtype=np.int64),
        ccp=np.array(ccp, dtype=np.bool_),
        plausible_lo=bounds[:, 0].copy(),
        plausible_hi=bounds[:, 1].copy(),
        joined=wiring.joined,
        join_rank=wiring.join_rank,
        grace_ms=grace_ms,
    )
    return CompiledPlan(
        context=context,
        table=table,
        index=index,
        by_name=by_name,
        assets=assets,
        silence=silence,
        rules=rules,
        of_row=wiring.of_row,
        by_asset=wiring.by_asset,
        timed=[bound for bound in rules if bound.kind.timers],
        joined_groups=wiring.joined_groups,
    )


class _Wiring:
    """Which machines read each row (and as what), the rows' quiet bands, which rows are
    joined, and which machines take each asset's events."""

    def __init__(self, n: int) -> None:
        self.bands = [ANYWHERE] * n
        self.of_row: list[list[tuple[RuleMachine, str]]] = [[] for _ in range(n)]
        self.by_asset: dict[tuple[str, str], list[BoundRule]] = {}
        self.joined = np.zeros(n, dtype=np.bool_)
        self.join_rank = np.ones(n, dtype=np.int64)
        self.joined_groups: list[I64] = []

    def add(self, bound: BoundRule) -> None:
        compiled = bound.compiled
        band = compiled.machine.quiet_band()
        for role, row in compiled.reads.items():
            self.of_row[row].append((compiled.machine, role))
            self.bands[row] = self.bands[row].narrowed(
                NEVER_QUIET if role in compiled.never_quiet else band
            )
            if compiled.joined:
                self.joined[row] = True
                first = compiled.first_roles
                if role in first:
                    # in the order named, all before the roles not named (rank 1 and on)
                    self.join_rank[row] = first.index(role)
                elif len(first) > 1:
                    self.join_rank[row] = len(first)
        if compiled.joined:
            group = sorted(set(compiled.reads.values()))
            self.joined_groups.append(np.array(group, dtype=np.int64))
        for where in compiled.assets:
            self.by_asset.setdefault(where, []).append(bound)


def _compile_rules(loaded: LoadedPlan, context: PlanContext) -> list[BoundRule]:
    """Each rule through its kind's compiler, ordered by stage, then as the plan lists them."""
    compiled: list[BoundRule] = []
    unique: dict[tuple[str, ...], int] = {}
    for rule in loaded.plan.rules:
        kind = RULE_KINDS.get(type(rule))
        if kind is None:
            raise TypeError(
                f"rule {rule.id!r} is of kind {rule.kind!r}, which no engine module registers "
                "(add it to stream/engine/registry.py)"
            )
        bound = BoundRule(kind.compile(rule, context), kind)
        key = bound.compiled.unique_key
        if key is not None and key in unique:
            compiled[unique[key]] = bound  # the later rule replaces the earlier, in its place
            continue
        if key is not None:
            unique[key] = len(compiled)
        compiled.append(bound)
    return sorted(compiled, key=lambda bound: bound.kind.stage)

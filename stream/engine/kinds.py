"""The rule-kind contract: what every rule machine does, and how a plan rule becomes one.

Every kind of rule in a plan (``stream.plan.Rule``) has a compiler, which turns one rule of
that kind and the plan around it into a :class:`Compiled` machine: the machine, the channel
rows it reads under which role, the assets whose events it takes, and whether its channels are
judged together in time order. The machine implements :class:`RuleMachine`: the engine drives
every machine through those few methods, in one loop, whatever the kind.

How to add a rule kind
----------------------
1. Its model: a pydantic class in ``stream/plan.py`` with ``kind: Literal["my_kind"]`` (and the
   ``id``, ``asset``, ``ccp``, ``severity``, ``action``, ``source`` every rule has), added to
   the ``Rule`` union there (one line: the union is discriminated on ``kind``).
2. One engine module, e.g. ``stream/engine/receipt.py``: the machine (a class meeting
   :class:`RuleMachine`; :class:`stream.engine.machines.Machine` gives a single-deviation
   machine most of it) and its compiler, ``compile_my_kind(rule, context) -> Compiled``.
3. One line in ``stream/engine/registry.py``: ``RuleKind(MyKind, MyMachine, compile_my_kind,
   stage=..., timers=...)``.
4. Its tests: a scenario test written like the regulation it checks, and the registry test
   that a plan with the kind compiles to the machine.
A machine whose deviations carry a new ``kind`` (e.g. ``receipt_temperature``) also needs that
name in the published record's ``DeviationKind`` (``milkguard/contract/records.py`` and
``records-v1.schema.json``): the stream refuses to sign and publish a record the contract does
not know.
The engine, its screen and its snapshots need no change: a machine says its quiet band (or
stays engaged while any sample could move it), and its state goes into the snapshot by rule id.
Late readings re-judge a kind whose machine also has ``fresh(derived)`` (a machine of the same
rule with no verdicts yet, see :mod:`stream.engine.late`); the others' late readings are counted
as not re-judged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from milkguard.contract.v1 import Event
from stream.engine.deviation import Deviation, DeviationChange
from stream.engine.machines import Derived, Handover, QuietBand, RuleSpec, Sample
from stream.plan import LoadedPlan


class RuleMachine(Protocol):
    """One rule's judgement, whatever its kind (bytewax's stateful-logic shape).

    Samples come to it one at a time, in time order per channel (across its channels, when its
    rule reads several together), and only when they could change its state: while it is not
    ``engaged``, samples inside its :meth:`quiet_band` go past it in bulk.
    """

    @property
    def engaged(self) -> bool:
        """True while any sample could change a verdict: every sample then comes here."""
        ...

    @property
    def open_deviations(self) -> list[Deviation]:
        """The deviations open on this rule now."""
        ...

    def on_sample(self, role: str, sample: Sample) -> Sequence[DeviationChange]:
        """Judge one sample of the channel the rule reads as ``role`` ("" for a rule of one
        channel)."""
        ...

    def on_event(self, event: Event, site: str, handover: Handover) -> Sequence[DeviationChange]:
        """Take an event of one of the rule's assets (milking, pickup, delivery, product
        change), in event-time order. ``site`` is the site of the gateway that sent it."""
        ...

    def on_timer(
        self, now: int, device_now: int, device: str, holding: bool
    ) -> Sequence[DeviationChange]:
        """Fire what is due with no sample to decide it: ``now`` is the stream's clock,
        ``device_now`` the estimate of the clock of the device reporting the rule's channel
        (less its allowed lateness), ``holding`` whether that channel still holds readings not
        judged yet (the rule's kind has ``timers``).

        Called on every advance, so a tick with nothing due must cost next to nothing; and a
        tick that returns no change must not make the machine ``engaged`` (the engine looks at
        engagement only after a timer that said something)."""
        ...

    def quiet_band(self) -> QuietBand:
        """Where no sample can move the machine while it is not engaged."""
        ...

    def state(self) -> dict[str, Any]:
        """What a snapshot must keep."""
        ...

    def restore(self, state: dict[str, Any]) -> None:
        """Take back a state made by :meth:`state`."""
        ...


@dataclass(slots=True)
class Compiled:
    """One plan rule, compiled."""

    rule_id: str
    machine: RuleMachine
    #: the channel rows it reads, and as what role ("" for a rule of one channel)
    reads: dict[str, int] = field(default_factory=dict)
    #: (site, asset) of the assets whose events it takes
    assets: tuple[tuple[str, str], ...] = ()
    #: read several channels merged in time order (they are then never screened)
    joined: bool = False
    #: of a joined rule, the roles judged first among samples of the same time, in this order
    #: (e.g. a valve's state, so a temperature is judged with the flow direction of that instant)
    first_roles: tuple[str, ...] = ()
    #: the roles at whose samples its derived values (holding times, F0s) are computed
    derived_at: tuple[str, ...] = ()
    #: the row whose device clock its timers run on (None: the stream's clock)
    home_row: int | None = None
    #: one machine per key: a later rule of the same key replaces the earlier one
    unique_key: tuple[str, ...] | None = None
    #: the roles whose every sample it must see, whatever its quiet band (a level gauge that
    #: feeds a tank's contents): their rows are never screened
    never_quiet: tuple[str, ...] = ()


class PlanRule(Protocol):
    """What every plan rule has, whatever its kind."""

    @property
    def id(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def asset(self) -> str: ...
    @property
    def ccp(self) -> str | None: ...
    @property
    def severity(self) -> str: ...
    @property
    def action(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def suspend_during_cleaning(self) -> bool: ...


@dataclass(slots=True)
class PlanContext:
    """What a compiler may know of the plan around a rule."""

    loaded: LoadedPlan
    #: (asset key in the plan, channel id) -> channel row
    row_of: dict[tuple[str, str], int]
    #: holding times and F0s computed while judging, for the runtime to store and clear
    derived: list[Derived]

    def spec(self, **fields: Any) -> RuleSpec:
        """A rule spec stamped with the plan's name, version and jurisdiction."""
        loaded = self.loaded
        return RuleSpec(
            plan=loaded.plan.plan,
            plan_version=loaded.version,
            jurisdiction=loaded.plan.jurisdiction,
            **fields,
        )

    def rule_spec(
        self, rule: PlanRule, *, channel: str, unit: str, kind: str | None = None
    ) -> RuleSpec:
        """The spec of a rule's machine on one of its channels (its fields as the plan gives
        them; ``kind`` when the deviation is named otherwise than the rule)."""
        site, asset_id = self.where(rule.asset)
        return self.spec(
            rule_id=rule.id,
            kind=kind or rule.kind,
            ccp=rule.ccp,
            severity=rule.severity,
            action=rule.action,
            site=site,
            asset=asset_id,
            channel=channel,
            unit=unit,
            source=rule.source,
            suspend_during_cleaning=rule.suspend_during_cleaning,
        )

    def where(self, asset_key: str) -> tuple[str, str]:
        """(site, asset id) of an asset named by its key in the plan."""
        asset = self.loaded.plan.assets[asset_key]
        return asset.site, asset.id or asset_key

    def unit(self, asset_key: str, channel: str) -> str:
        """The unit the plan declares for a channel."""
        return self.loaded.plan.assets[asset_key].channels[channel].unit


@dataclass(frozen=True, slots=True)
class RuleKind:
    """A registry entry: a plan model, its machine class and its compiler."""

    model: type[Any]
    machine: type[Any]
    compile: Callable[[Any, PlanContext], Compiled]
    #: the order in which the kinds take the same sample, event or timer tick (lowest first)
    stage: int
    #: whether the engine calls its :meth:`RuleMachine.on_timer` on each advance
    timers: bool = False
    #: where its states go in a snapshot: one of the fields the first snapshot format had for
    #: the kinds it knew ("machines", "joined", "cooling", "ages", "transports"), or "rules"
    #: (keyed by rule id) for every kind added since
    snapshot: str = "rules"

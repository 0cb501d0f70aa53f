"""Raw milk at receipt at the plant: a rule kind in one module.

The plan model is :class:`stream.plan.ReceiptCheck` (``kind: receipt_check``); this module
holds its machine, :class:`ReceiptMachine` (the rule-kind contract,
:class:`stream.engine.kinds.RuleMachine`), and its compiler, :func:`compile_receipt`, registered
in :mod:`stream.engine.registry` with one line.

What is judged, and why
-----------------------
A load's temperature at receipt reaches the check one of two ways, both from the plant's site
(a ``delivery`` event comes from the truck's gateway, on the truck's site, and carries no
temperature; no rule joins two sites):

- a reading of the rule's channel, e.g. the ``load_temp`` of a ``receiving_bay`` asset: one
  reading per load, sent by the plant's gateway;
- a ``receipt`` event whose ``asset`` is the rule's asset (the bay) and that carries
  ``temperature_c``: the same thermometer's figure, reported with the load it belongs to. The
  record then names the load (``load_id``) and its id is the load's, so two loads received at
  the same millisecond are two records. A receipt without a temperature is not judged (the
  plant took none, or reports it as a reading), nor is a receipt at another bay. A plant
  reports a load's temperature one way: as a reading or in its receipt event, not both.

Each temperature is judged on its own against ``max`` (PMO Section 7, Item 17p: raw milk
maintained at 7 degC (45 degF) or less until processed) and the thermometer's accuracy (the
channel's ``tolerance``, which applies to the event's figure too: it is the bay's thermometer):

- at or below ``max``: nothing (the engine's screen lets a reading pass without the machine);
- above ``max`` by no more than the tolerance: a minor ``receipt_verification`` advisory with the
  action ``verify_thermometer``: the reading cannot tell a warm load from the instrument's error,
  so a calibrated thermometer decides;
- beyond ``max`` + tolerance: a ``receipt_temperature`` deviation with the rule's severity and
  action (e.g. ``reject_load``).

A load is judged once: its record opens and closes at its reading or receipt (start = end = its
time, peak = its temperature), so two warm loads in a row are two records, each with its own id,
and the machine holds nothing between loads. A receipt event during the bay's cleaning is judged
all the same: it reports a load, not what the probe reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from milkguard.contract.v1 import Event, Receipt
from stream.engine.deviation import AppliedLimit, Deviation, DeviationChange, deviation_id
from stream.engine.kinds import Compiled, PlanContext
from stream.engine.machines import Handover, Machine, QuietBand, RuleSpec, Sample
from stream.plan import ReceiptCheck

#: the action of the advisory: what the receiving operator must do before the load is judged
VERIFY_ACTION = "verify_thermometer"


class _LoadRecord(Machine):
    """One load's verdict: a record opened and closed at its reading."""

    __slots__ = ()

    def record(self, sample: Sample, limit: AppliedLimit) -> list[DeviationChange]:
        """The load's record, opened and closed at once."""
        opened = self._opened(sample.ts, sample, sample.value, limit, value=sample.value)
        return [opened, self._closed(sample.ts, sample.late)]

    def record_load(
        self, receipt: Receipt, sample: Sample, limit: AppliedLimit
    ) -> list[DeviationChange]:
        """The record of a load judged from its receipt event, naming the load; its id is the
        load's (and compartment's), not only the bay's and the time's."""
        changes = self.record(sample, limit)
        spec = self.spec
        load = (
            receipt.load_id
            if receipt.compartment is None
            else f"{receipt.load_id}/{receipt.compartment}"
        )
        record_id = deviation_id(
            spec.plan_version, spec.rule_id, spec.site, f"{spec.asset}/load/{load}", sample.ts
        )
        for change in changes:  # the opened change holds a copy of the record it closes
            change.deviation.id = record_id
            change.deviation.load_id = receipt.load_id
        return changes


class ReceiptMachine:
    """A receipt channel's check: every reading is one load's temperature at receipt."""

    __slots__ = ("_beyond", "_verify", "_within", "rejection", "rule", "tolerance", "verification")

    def __init__(self, rule: ReceiptCheck, base: RuleSpec, tolerance: float) -> None:
        self.rule = rule
        self.tolerance = tolerance
        # rounded, so 7.0 + 0.1 is the 7.1 the plan's reader means, not 7.1000000000000005
        self._within = round(rule.max + tolerance, 9)
        self.verification = _LoadRecord(
            replace(
                base,
                kind="receipt_verification",
                severity="minor",
                action=VERIFY_ACTION,
                maximum=rule.max,
            )
        )
        self.rejection = _LoadRecord(replace(base, kind="receipt_temperature", maximum=rule.max))
        unit = base.unit
        self._verify = AppliedLimit(
            min=None,
            max=rule.max,
            sustained_s=0.0,
            unit=unit,
            source=f"{rule.source}; within the thermometer's tolerance (+-{tolerance:g} {unit}): "
            "verify with a calibrated thermometer",
        )
        self._beyond = AppliedLimit(
            min=None,
            max=rule.max,
            sustained_s=0.0,
            unit=unit,
            source=f"{rule.source}; beyond the thermometer's tolerance (+-{tolerance:g} {unit})",
        )

    @property
    def engaged(self) -> bool:
        """Never: each load is judged alone, nothing is held between readings."""
        return False

    @property
    def open_deviations(self) -> list[Deviation]:
        """None: every record is closed when it is made."""
        return []

    def quiet_band(self) -> QuietBand:
        """At or below the limit a load changes nothing: the screen may pass it by."""
        return QuietBand(hi=self.rule.max)

    def on_sample(self, role: str, sample: Sample) -> Sequence[DeviationChange]:
        """Judge one load's temperature at receipt (``role``: the rule's one channel, "")."""
        if sample.cleaning_since >= 0 and self.rule.suspend_during_cleaning:
            return []  # the bay's probe reads cleaning solution, not a load
        value = sample.value
        if not value > self.rule.max:
            return []
        if value <= self._within:
            return self.verification.record(sample, self._verify)
        return self.rejection.record(sample, self._beyond)

    def on_event(self, event: Event, site: str, handover: Handover) -> Sequence[DeviationChange]:
        """A receipt at the rule's bay with the load's temperature: judged as its reading
        would be, the record naming the load (see the module's text)."""
        spec = self.rejection.spec
        if (
            not isinstance(event, Receipt)
            or event.temperature_c is None
            or (site, event.asset) != (spec.site, spec.asset)
        ):
            return ()
        value = event.temperature_c
        if not value > self.rule.max:
            return ()
        # the event has no device of its own: the record names the bay that reported it
        sample = Sample(event.ts, value, -1, value, event.ts, event.asset, late=False)
        if value <= self._within:
            return self.verification.record_load(event, sample, self._verify)
        return self.rejection.record_load(event, sample, self._beyond)

    def on_timer(
        self, now: int, device_now: int, device: str, holding: bool
    ) -> Sequence[DeviationChange]:
        """No timers: each reading decides."""
        return ()

    def state(self) -> dict[str, Any]:
        """Nothing to keep: every record is closed when it is made."""
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        """Nothing to take back (see :meth:`state`)."""


def compile_receipt(rule: ReceiptCheck, context: PlanContext) -> Compiled:
    """A receipt check on one channel and the bay's receipt events, with the tolerance the
    plan declares for its thermometer."""
    unit = context.unit(rule.asset, rule.channel)
    tolerance = context.loaded.plan.assets[rule.asset].channels[rule.channel].tolerance
    base = context.rule_spec(rule, channel=rule.channel, unit=unit)
    # a thermometer whose accuracy the plan does not state gets no benefit of the doubt
    machine = ReceiptMachine(rule, base, tolerance or 0.0)
    return Compiled(
        rule.id,
        machine,
        reads={"": context.row_of[(rule.asset, rule.channel)]},
        # the bay's receipt events, which carry each load's temperature as well
        assets=(context.where(rule.asset),),
    )

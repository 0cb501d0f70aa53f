"""Compilers of the single-channel rules: critical limit, stuck sensor, rate of change.

Their machines live in :mod:`stream.engine.machines`, because the event-driven and joined kinds
build on them (an HTST's temperature check is a critical limit); each is a whole rule on its
own, one deviation at a time, and meets :class:`stream.engine.kinds.RuleMachine` through the
:class:`~stream.engine.machines.Machine` base. Their quiet bands are what the vector screen
checks: within the limits, steps no faster than the rate, flat lines shorter than the limit.
"""

from __future__ import annotations

from dataclasses import replace

from stream.engine.kinds import Compiled, PlanContext
from stream.engine.machines import (
    CriticalLimitMachine,
    RateOfChangeMachine,
    RuleSpec,
    StuckSensorMachine,
)
from stream.plan import CriticalLimit, RateOfChange, StuckSensor


def _channel_rule(
    rule: CriticalLimit | StuckSensor | RateOfChange, context: PlanContext
) -> tuple[RuleSpec, dict[str, int]]:
    """The rule's spec, and the row it reads."""
    unit = context.unit(rule.asset, rule.channel)
    row = context.row_of[(rule.asset, rule.channel)]
    return context.rule_spec(rule, channel=rule.channel, unit=unit), {"": row}


def compile_critical_limit(rule: CriticalLimit, context: PlanContext) -> Compiled:
    """A minimum and/or maximum on one channel."""
    spec, reads = _channel_rule(rule, context)
    spec = replace(
        spec, minimum=rule.min, maximum=rule.max, sustained_ms=round(rule.sustained_s * 1000)
    )
    return Compiled(rule.id, CriticalLimitMachine(spec), reads=reads)


def compile_stuck_sensor(rule: StuckSensor, context: PlanContext) -> Compiled:
    """An exact flat line on one channel."""
    spec, reads = _channel_rule(rule, context)
    spec = replace(spec, flat_ms=round(rule.flat_for_s * 1000))
    return Compiled(rule.id, StuckSensorMachine(spec), reads=reads)


def compile_rate_of_change(rule: RateOfChange, context: PlanContext) -> Compiled:
    """An implausible step on one channel."""
    spec, reads = _channel_rule(rule, context)
    spec = replace(spec, max_per_ms=rule.max_per_min / 60_000)
    return Compiled(rule.id, RateOfChangeMachine(spec), reads=reads)

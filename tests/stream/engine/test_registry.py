"""The registry of rule kinds: every kind a plan may name compiles, through its registered
compiler, to its registered machine, reading the channels the rule names.

The example plant plan (``stream/plans/example-us-plant.yaml``) has a rule of every kind.
"""

from __future__ import annotations

import ast
import math
from pathlib import Path
from typing import get_args

import pytest

from stream.engine.acceptance import AcceptanceMachine
from stream.engine.compile import BoundRule, compile_plan
from stream.engine.cooling import CoolingMachine
from stream.engine.htst import HtstMachine, UhtMachine
from stream.engine.kinds import PlanContext
from stream.engine.logistics import AgeMachine, TransportMachine
from stream.engine.machines import CriticalLimitMachine, RateOfChangeMachine, StuckSensorMachine
from stream.engine.receipt import ReceiptMachine
from stream.engine.registry import RULE_KINDS
from stream.plan import (
    AcceptanceWindow,
    Cooling,
    CriticalLimit,
    Htst,
    LoadedPlan,
    RateOfChange,
    ReceiptCheck,
    Rule,
    StorageAge,
    StuckSensor,
    Transport,
    Uht,
    load_plan,
)
from stream.settings import demo_plan_path

EXAMPLE_PLANT = "stream/plans/example-us-plant.yaml"
ENGINE = Path(__file__).resolve().parents[3] / "stream" / "engine"

#: each kind and the machine a rule of it must compile to
EXPECTED = {
    CriticalLimit: CriticalLimitMachine,
    StuckSensor: StuckSensorMachine,
    RateOfChange: RateOfChangeMachine,
    Cooling: CoolingMachine,
    StorageAge: AgeMachine,
    Transport: TransportMachine,
    Htst: HtstMachine,
    Uht: UhtMachine,
    ReceiptCheck: ReceiptMachine,
    AcceptanceWindow: AcceptanceMachine,
}


@pytest.fixture(scope="module")
def plant() -> LoadedPlan:
    return load_plan(EXAMPLE_PLANT)


def _compiled(loaded: LoadedPlan) -> tuple[dict[str, BoundRule], PlanContext]:
    context = PlanContext(loaded, {}, [])
    compiled = compile_plan(loaded, context)
    return {bound.compiled.rule_id: bound for bound in compiled.rules}, context


def test_every_kind_a_plan_may_name_is_registered() -> None:
    """A plan is validated against the ``Rule`` union: every member of it must have a
    compiler and a machine, or a valid plan would fail at start."""
    union = get_args(get_args(Rule)[0])

    assert set(union) == set(RULE_KINDS)
    assert set(union) == set(EXPECTED)


@pytest.mark.parametrize("model", EXPECTED, ids=lambda model: model.__name__)
def test_a_rule_compiles_to_the_machine_of_its_kind(plant: LoadedPlan, model: type) -> None:
    """Each rule of the kind becomes one machine of the registered class, reading the rows of
    the channels the rule names (none for a storage age, which events and the clock drive)."""
    rules, context = _compiled(plant)
    of_kind = [rule for rule in plant.plan.rules if isinstance(rule, model)]
    assert of_kind, f"the example plant plan has no {model.__name__} rule"

    for rule in of_kind:
        bound = rules[rule.id]
        assert bound.kind is RULE_KINDS[model]
        assert type(bound.machine) is EXPECTED[model]
        assert isinstance(bound.machine, bound.kind.machine)
        named = rule.channels if isinstance(rule, Htst | Uht) else []
        single = (
            CriticalLimit
            | StuckSensor
            | RateOfChange
            | Cooling
            | Transport
            | ReceiptCheck
            | AcceptanceWindow
        )
        if isinstance(rule, single):
            named = [rule.channel]
        expected_rows = {context.row_of[(rule.asset, channel)] for channel in named}
        assert set(bound.compiled.reads.values()) == expected_rows
        assert bound.compiled.joined == isinstance(rule, Htst | Uht)


def test_a_channel_quiet_band_is_the_narrowest_of_its_rules() -> None:
    """The screen lets a reading through without its machines only inside every limit on its
    channel: the demo plan's critical limits become the channel table's band."""
    loaded = load_plan(demo_plan_path())
    compiled = compile_plan(loaded, PlanContext(loaded, {}, []))
    table, context = compiled.table, compiled.context
    limits = [rule for rule in loaded.plan.rules if isinstance(rule, CriticalLimit)]
    assert limits
    for rule in limits:
        row = context.row_of[(rule.asset, rule.channel)]
        if rule.min is not None:
            assert table.lo[row] >= rule.min
        if rule.max is not None:
            assert table.hi[row] <= rule.max
    unruled = [row for row, machines in enumerate(compiled.of_row) if not machines]
    for row in unruled:
        assert table.lo[row] == -math.inf
        assert table.hi[row] == math.inf


def test_a_kind_nobody_registered_is_refused_by_name(
    plant: LoadedPlan, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model added to the plan's union without its registry line fails at start, saying
    which rule and where to register it."""
    monkeypatch.delitem(RULE_KINDS, StorageAge)

    with pytest.raises(TypeError, match=r"kind 'storage_age'.*stream/engine/registry.py"):
        compile_plan(plant, PlanContext(plant, {}, []))


def _kind_modules() -> set[str]:
    """The engine modules that hold a rule kind's compiler (and most often its machine)."""
    return {kind.compile.__module__ for kind in RULE_KINDS.values()}


def _engine_parts() -> dict[str, ast.Module]:
    """The engine's own parts, which drive every machine through the contract: every module of
    stream/engine but the registry and the kinds' modules."""
    parts = {}
    for path in sorted(ENGINE.glob("*.py")):
        name = f"stream.engine.{path.stem}"
        if name in _kind_modules() or name == "stream.engine.registry":
            continue
        parts[name] = ast.parse(path.read_text(), str(path))
    return parts


def test_the_engine_parts_import_no_rule_kind_module() -> None:
    """A rule kind is one module and one registry line: the engine's parts reach kinds only
    through the registry, so no part imports a kind's module (a part that did would need
    editing, or would break, when a kind is added, moved or removed)."""
    kinds = _kind_modules()
    found = []
    for name, tree in _engine_parts().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in kinds:
                found.append(f"{name} imports {node.module}")
            elif isinstance(node, ast.Import):
                found.extend(f"{name} imports {a.name}" for a in node.names if a.name in kinds)
    assert found == []


def test_the_engine_parts_name_no_role_of_a_rule(plant: LoadedPlan) -> None:
    """Which channel of a joined rule comes first at equal times (the flow-diversion valve,
    so a temperature is judged with the flow direction of that instant) is the rule's to say
    (``Compiled.first_roles``): no part of the engine names a role of any rule."""
    bound, _ = _compiled(plant)
    roles = {role for b in bound.values() for role in b.compiled.reads if role}
    assert "flow_diversion" in roles
    found = [
        f"{name} names {node.value!r}"
        for name, tree in _engine_parts().items()
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and node.value in roles
    ]
    assert found == []


def test_the_valve_is_judged_first_at_equal_times(plant: LoadedPlan) -> None:
    """A pasteurizer's temperature is judged with the flow-diversion device's position at that
    instant (PMO Appendix H, HTST controls): its rule ranks the valve first among samples of
    the same time, and the compiled table keeps that rank."""
    compiled = compile_plan(plant, PlanContext(plant, {}, []))
    htst = next(b for b in compiled.rules if isinstance(b.machine, HtstMachine))
    rank = {role: int(compiled.table.join_rank[row]) for role, row in htst.compiled.reads.items()}
    assert rank["flow_diversion"] < min(r for role, r in rank.items() if role != "flow_diversion")

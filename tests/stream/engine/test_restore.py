"""A snapshot file that is corrupt or hostile (it decodes, but does not fit the plan) gives a
:class:`SnapshotMismatch`, which the runtimes answer with fresh state; it never raises anything
else, so it cannot stop a runtime at start."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from milkguard.contract.v1 import Reading
from stream.engine import Engine
from stream.engine.core import SnapshotMismatch
from stream.plan import LoadedPlan
from tests.conftest import T0


def _saved(plan: LoadedPlan) -> dict[str, Any]:
    engine = Engine(plan)
    engine.submit("truck-07", "gw", [Reading("comp-2", "temp", 9.0, "degC", T0)], T0)
    engine.advance(T0 + 1_000, [])
    engine.clock("truck-07", "gw", T0, T0)
    state: dict[str, Any] = msgspec.msgpack.decode(engine.snapshot())
    return state


def _set(key: str, value: object) -> Callable[[dict[str, Any]], None]:
    def change(state: dict[str, Any]) -> None:
        state[key] = value

    return change


def _truncate_array(state: dict[str, Any]) -> None:
    state["arrays"]["last_ts"] = state["arrays"]["last_ts"][:5]


CORRUPTIONS = {
    "array-truncated": _truncate_array,
    "unknown-array": _set("arrays", {"nonsense": b"12345678"}),
    "machine-row-beyond-the-plan": _set("machines", [(10**6, 0, {})]),
    "silence-row-negative": _set("silence", [(-(10**6), {})]),
    "asset-not-in-the-plan": _set(
        "assets", {"nowhere/nothing": {"rows": [0], "cleaning": [[1, 2]]}}
    ),
    "asset-without-slash": _set("assets", {"nothing": {"rows": [0], "cleaning": [[1, 2]]}}),
    "unknown-counter": _set("counters", {"nonsense": 1}),
    "cooling-count-differs": _set("cooling", [{}] * 7),
    "time-sync-garbage": _set("time_sync", {"gw": ("truck-07", {"nonsense": 1})}),
}


@pytest.mark.parametrize("corrupt", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_a_corrupt_snapshot_is_a_mismatch_never_another_error(
    demo_plan: LoadedPlan, corrupt: Callable[[dict[str, Any]], None]
) -> None:
    state = _saved(demo_plan)
    corrupt(state)
    with pytest.raises(SnapshotMismatch, match="snapshot"):
        Engine.restore(demo_plan, msgspec.msgpack.encode(state))


def test_a_snapshot_of_the_first_format_without_rules_by_id_restores(
    demo_plan: LoadedPlan,
) -> None:
    """Snapshots written before rule kinds were registered have no ``rules`` field (the
    states of kinds added since, by rule id), nor the device clocks' estimates in force since
    each batch (``clock_estimates``): they restore, and carry on as they were."""
    state = _saved(demo_plan)
    del state["rules"], state["clock_estimates"]

    again = Engine.restore(demo_plan, msgspec.msgpack.encode(state))

    # as decoded: the fields added since (e.g. ``late``) come after ``rules`` when encoded
    assert msgspec.msgpack.decode(again.snapshot()) == {**state, "rules": {}, "clock_estimates": {}}

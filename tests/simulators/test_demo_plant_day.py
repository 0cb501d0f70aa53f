"""The demo fleet's plant day: the run draws from two silos, the truck's loads are received into
them at the bay with their temperatures, the run ends with what it took, the emptied silo is
cleaned; judged by the demo plan, it adds no deviation to the open hatch's, and no event names an
asset the plan does not know."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from milkguard.contract.v1 import Event, Reading, Receipt
from simulators.demo import DemoFleet
from stream.engine import DeviationChange, Engine
from stream.plan import load_plan
from stream.settings import demo_plan_path
from tests.conftest import T0


@dataclass
class Recorder:
    """A gateway's publisher that keeps what it is given."""

    batches: list[tuple[list[Reading], list[Event]]] = field(default_factory=list)

    def publish(self, readings: Sequence[Reading], events: Sequence[Event] = ()) -> None:
        """Keep one batch."""
        self.batches.append((list(readings), list(events)))


def demo_minutes(seconds: int) -> dict[str, Recorder]:
    """The demo fleet sampled once a second for ``seconds``, by gateway."""
    fleet = DemoFleet(None)  # type: ignore[arg-type] - never connected
    recorders = {gw.gateway: Recorder() for gw in fleet.gateways}
    for gw in fleet.gateways:
        gw.publisher = recorders[gw.gateway]  # type: ignore[assignment]
    fleet._opening_events(T0)
    for second in range(seconds):
        fleet._script(float(second), T0 + second * 1000)
        fleet._sample(T0 + second * 1000)
    return recorders


def test_the_plant_gateway_tells_a_plant_day_in_order() -> None:
    plant = demo_minutes(200)["plant-01-htst-gw"]
    events = [(e.ts - T0, type(e).__name__, e.asset) for _, batch in plant.batches for e in batch]

    assert events == [
        (0, "ProductChange", "htst-1"),
        (0, "RunStart", "htst-1"),
        (70_000, "Receipt", "bay-1"),
        (70_000, "Receipt", "bay-1"),
        (90_000, "RunEnd", "htst-1"),
        (90_000, "SiloEmptied", "silo-2"),
        (90_000, "CipStart", "silo-2"),
        (150_000, "CipEnd", "silo-2"),
    ]
    receipts = [e for _, batch in plant.batches for e in batch if isinstance(e, Receipt)]
    assert [(r.load_id, r.destination, r.compartment) for r in receipts] == [
        ("load-1", "silo-1", "comp-1"),
        ("load-2", "silo-2", "comp-2"),
    ]
    # the loads arrive cold: the open hatch's excursion was over long before the delivery
    assert all(r.temperature_c is not None and 2.0 < r.temperature_c < 6.0 for r in receipts)


def test_the_demo_plan_judges_the_plant_day_with_no_new_deviation() -> None:
    engine = Engine(load_plan(demo_plan_path()))
    changes: list[DeviationChange] = []
    recorders = demo_minutes(200)
    sites = {"farm-01-gw": "farm-01", "truck-07-gw": "truck-07", "plant-01-htst-gw": "plant-01"}
    for second in range(200):
        for gateway, recorder in recorders.items():
            readings, events = recorder.batches[second]
            engine.submit(sites[gateway], gateway, readings, T0 + second * 1000)
            engine.submit_events(sites[gateway], events)
        engine.advance(T0 + second * 1000, changes)

    assert [(c.kind, c.deviation.asset) for c in changes] == [
        ("opened", "comp-2"),
        ("closed", "comp-2"),
    ]
    assert engine.counters.unplanned_events == 0

"""A plant day scripted in a scenario: the plant gateway's receipts, transfers, runs and silos
emptied come out as the wire contract's events, at their times, in the script's order."""

from __future__ import annotations

from pathlib import Path

import pytest

from milkguard.contract.v1 import (
    CipEnd,
    CipStart,
    Draw,
    Receipt,
    RunEnd,
    RunStart,
    SiloEmptied,
    SiloTransfer,
    decode_batch,
)
from milkguard.errors import ScenarioError
from simulators.runner import simulate
from simulators.scenario import load_scenario

LIBRARY = Path(__file__).parents[2] / "simulators" / "scenarios"
HOUR = 3_600_000


def plant_events() -> list[object]:
    """The events the plant gateway of plant-silo-day publishes, in order."""
    scenario, _ = load_scenario(LIBRARY / "plant-silo-day.yaml")
    batches = [decode_batch(payload) for payload in simulate(scenario)]
    return [e for b in batches if b.gateway == "plant-01-mes-gw" for e in b.events]


def test_the_plant_day_publishes_its_script_as_events_at_their_times() -> None:
    events = plant_events()
    start = events[0].ts - HOUR // 2  # type: ignore[attr-defined]

    assert [type(e).__name__ for e in events] == [
        "Receipt",
        "Receipt",
        "Receipt",
        "SiloTransfer",
        "RunStart",
        "RunEnd",
        "SiloEmptied",
        "CipStart",
        "CipEnd",
    ]
    first, warm, third, transfer, run_start, run_end, emptied, cip, cip_end = events
    assert first == Receipt(
        asset="bay-1",
        ts=start + HOUR // 2,
        load_id="L-0412",
        destination="silo-1",
        volume_l=24_000.0,
        truck="AB-123-CD",
        compartment="comp-1",
        temperature_c=4.1,
    )
    assert isinstance(warm, Receipt)
    assert (warm.ts, warm.temperature_c) == (start + HOUR, 7.3)
    assert isinstance(third, Receipt)
    assert transfer == SiloTransfer(
        asset="silo-2",
        ts=start + 2 * HOUR,
        destination="silo-1",
        volume_l=4000.0,
        transfer_id="T-1",
    )
    assert run_start == RunStart(
        asset="htst-1",
        ts=start + 5 * HOUR // 2,
        run_id="R-1201",
        lot="LOT-20261122-A",
        sources=(Draw("silo-1", 40_000.0), Draw("silo-2", 14_000.0)),
    )
    # the end says what was taken: the planned volume where no other is given
    assert run_end == RunEnd(
        asset="htst-1",
        ts=start + 11 * HOUR // 2,
        run_id="R-1201",
        sources=(Draw("silo-1", 40_000.0), Draw("silo-2", 13_500.0)),
        lot="LOT-20261122-A",
        output_volume_l=53_200.0,
    )
    assert emptied == SiloEmptied(
        asset="silo-1", ts=start + 56 * HOUR // 10, reason="processed", volume_l=0.0
    )
    assert cip == CipStart(asset="silo-1", ts=emptied.ts, program="silo")
    assert cip_end == CipEnd(asset="silo-1", ts=start + 635 * HOUR // 100)


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        (
            "receipts: [{at_h: 1, bay: bay-1, silo: bay-1, load_id: L-1, volume_l: 100}]",
            "devices[0].receipts[0]: bay and silo are both 'bay-1'",
        ),
        (
            "transfers: [{at_h: 1, from_silo: silo-1, to_silo: silo-1, volume_l: 100}]",
            "devices[0].transfers[0]: from_silo and to_silo are both 'silo-1'",
        ),
        (
            "runs: [{start_h: 1, end_h: 2, line: htst-1, run_id: R-1,"
            " sources: [{silo: silo-1}, {silo: silo-1}]}]",
            "devices[0].runs[0]: sources name silo-1 more than once: name each silo once",
        ),
        (
            "runs: [{start_h: 2, end_h: 1, line: htst-1, run_id: R-1}]",
            "devices[0].runs[0]: ends (end_h) before it starts (start_h)",
        ),
        (
            "receipts: [{at_h: 1, bay: bay-1, silo: silo-1, load_id: L-1, volume_l: 100,"
            " temperature_c: 500}]",
            "devices.0.plant.receipts.0.temperature_c",
        ),
    ],
    ids=["receipt-into-bay", "transfer-into-itself", "silo-twice", "run-backwards", "hot-load"],
)
def test_a_plant_day_that_contradicts_itself_is_refused_naming_the_entry(
    tmp_path: Path, entry: str, problem: str
) -> None:
    bad = tmp_path / "bad.yaml"
    (tmp_path / "plan.yaml").write_text("plan: p\n")
    bad.write_text(
        "scenario: bad\nplan: plan.yaml\nduration_h: 2\ndevices:\n"
        f"  - {{kind: plant, site: plant-01, gateway: gw, {entry}}}\n"
    )

    with pytest.raises(ScenarioError) as caught:
        load_scenario(bad)

    assert any(problem in p for p in caught.value.problems), caught.value.problems

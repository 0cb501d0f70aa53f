"""A plant gateway's events through the stream, end to end: receipts into silos, a silo
transfer, a run drawing from two silos and a silo emptied go through ingest into the time
series as ``event`` lines, reach the engine (the bay's receipt check judges the warm load), and a
replay of the same recording says the same."""

from __future__ import annotations

import io
import json
from pathlib import Path

from milkguard.contract.v1 import (
    Batch,
    Draw,
    Event,
    Reading,
    Receipt,
    RunEnd,
    RunStart,
    SiloEmptied,
    SiloTransfer,
    batch_topic,
    encode_batch,
)
from stream.engine import Engine
from stream.ingest import Ingest
from stream.plan import LoadedPlan, parse_plan
from stream.replay import replay
from stream.sinks.memory import MemoryDeadLetterSink, MemoryDeviationSink, MemoryTimeSeriesSink
from tests.conftest import T0
from tests.stream.engine.test_receipt import PLAN as BAY_PLAN

SITE, GATEWAY = "plant-01", "plant-01-gw"

# the receipt check's bay, and two silos
PLAN = (
    BAY_PLAN.replace("plan: receipt", "plan: plant-day")
    + """
  silo-1:
    site: plant-01
    kind: silo
    channels:
      milk_temp: {unit: degC, interval_s: 60, silence_after_s: 86400}
  silo-2:
    site: plant-01
    kind: silo
    channels:
      milk_temp: {unit: degC, interval_s: 60, silence_after_s: 86400}
"""
)

MINUTE = 60_000


def plant_day() -> list[Event]:
    """Two loads into two silos (the second one warm), a transfer, a run from both, and the
    first silo emptied after it."""
    return [
        Receipt(
            asset="bay-1",
            ts=T0,
            load_id="L-1",
            destination="silo-1",
            volume_l=24_000.0,
            truck="AB-123-CD",
            compartment="comp-1",
            temperature_c=4.2,
        ),
        Receipt(
            asset="bay-1",
            ts=T0 + 30 * MINUTE,
            load_id="L-2",
            destination="silo-2",
            volume_l=18_000.0,
            truck="EF-456-GH",
            temperature_c=8.4,
        ),
        SiloTransfer(asset="silo-2", ts=T0 + 40 * MINUTE, destination="silo-1", volume_l=2_000.0),
        RunStart(
            asset="htst-1",
            ts=T0 + 60 * MINUTE,
            run_id="R-1",
            lot="LOT-A",
            sources=(Draw("silo-1", 20_000.0), Draw("silo-2", 10_000.0)),
        ),
        RunEnd(
            asset="htst-1",
            ts=T0 + 180 * MINUTE,
            run_id="R-1",
            lot="LOT-A",
            sources=(Draw("silo-1", 26_000.0), Draw("silo-2", 9_500.0)),
            output_volume_l=35_300.0,
        ),
        SiloEmptied(asset="silo-1", ts=T0 + 181 * MINUTE, reason="processed", volume_l=0.0),
    ]


def payloads() -> list[bytes]:
    """The plant gateway's recording: a batch per event, each with a silo temperature of its
    time, sent as it happened."""
    return [
        encode_batch(
            Batch(
                v=1,
                site=SITE,
                gateway=GATEWAY,
                seq=seq,
                sent_at=event.ts,
                readings=[Reading("silo-1", "milk_temp", 3.8, "degC", event.ts)],
                events=[event],
            )
        )
        for seq, event in enumerate(plant_day(), start=1)
    ]


def loaded() -> LoadedPlan:
    """The plant's plan: a receiving bay with the PMO receipt check, two silos."""
    return parse_plan(PLAN.encode(), "plant-day.yaml")


def test_a_plant_day_goes_through_ingest_into_the_series_and_the_engine() -> None:
    series, deviations, letters = (
        MemoryTimeSeriesSink(),
        MemoryDeviationSink(),
        MemoryDeadLetterSink(),
    )
    ingest = Ingest(Engine(loaded()), series, deviations, letters)
    for payload, event in zip(payloads(), plant_day(), strict=True):
        ingest.handle(batch_topic(SITE, GATEWAY), payload, event.ts)
    ingest.flush()

    assert letters.letters == []
    kinds = [
        line.split(",kind=")[1].split(",")[0] for line in series.lines if line.startswith("event,")
    ]
    assert kinds == [
        "receipt",
        "receipt",
        "silo_transfer",
        "run_start",
        "run_end",
        "silo_emptied",
    ]
    (run_end,) = [line for line in series.lines if ",kind=run_end," in line]
    assert r"\"output_volume_l\":35300.0" in run_end
    assert r"\"sources\":[{\"silo\":\"silo-1\",\"volume_l\":26000.0}" in run_end
    # the line is not planned: its runs reach the engine through the silos they draw from
    assert ingest.engine.counters.unplanned_events == 0
    assert ingest.engine.counters.events == 6
    verdicts = [(c.kind, c.deviation.kind, c.deviation.load_id) for c in deviations.changes]
    assert verdicts == [
        ("opened", "receipt_temperature", "L-2"),
        ("closed", "receipt_temperature", "L-2"),
    ]
    assert deviations.changes[0].deviation.start_ms == T0 + 30 * MINUTE


def test_a_replay_of_a_plant_day_says_the_same(tmp_path: Path) -> None:
    recording = tmp_path / "plant.jsonl"
    recording.write_bytes(b"\n".join(payloads()) + b"\n")
    out = io.StringIO()

    with recording.open("rb") as source:
        replay(loaded(), source, out, name=recording.name, deadletter=tmp_path / "dl.jsonl")

    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(r["change"], r["kind"], r["load_id"], r["start"]) for r in records] == [
        ("opened", "receipt_temperature", "L-2", "2026-11-22T10:30:00.000Z"),
        ("closed", "receipt_temperature", "L-2", "2026-11-22T10:30:00.000Z"),
    ]
    assert not (tmp_path / "dl.jsonl").exists() or (tmp_path / "dl.jsonl").read_text() == ""

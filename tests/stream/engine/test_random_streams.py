"""Verdicts do not depend on how the engine gets to them.

A HACCP record must be the same whichever shortcut the monitor took to reach it: the vector
screen that lets quiet readings past the rule machines in bulk, and a restart from a snapshot,
are the engine's business, never the auditor's. Each test feeds one seeded random stream of a
plan (readings in order, out of order within the allowed lateness, late, repeated; skewed and
unsynchronised gateway clocks; unplanned channels and units; every kind of event; the clock
advanced at random points, long silences) through two engines and compares everything they
say: deviation changes, open deviations, counters, notices and derived values.

The plans are the shipped ones and the simulator scenarios', which between them hold a rule of
every kind.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import Any

import msgspec
import pytest

from milkguard.contract import v1
from milkguard.contract.v1 import Reading
from stream.engine import DeviationChange, Engine
from stream.engine.deviation import deviation_to_json
from stream.plan import LoadedPlan, load_plan
from tests.conftest import T0

ROOT = Path(__file__).resolve().parents[3]
PLANS = sorted([*ROOT.glob("stream/plans/*.yaml"), *ROOT.glob("simulators/scenarios/plans/*.yaml")])
SEEDS = (1, 2)
STEPS = 300

#: a value near each unit's usual range, where no rule names a limit on the channel
USUAL = {"L/h": [2000.0, 20000.0], "state": [0.0, 1.0], "L": [0.0, 5000.0], "%RH": [50.0, 95.0]}
OTHER_UNIT = {"degC": "degF", "L/h": "L", "state": "%RH", "L": "L/h"}

Op = tuple[Any, ...]


def _limits_near(loaded: LoadedPlan, asset_key: str, unit: str) -> list[float]:
    """The figures the plan's rules on an asset name: where the interesting readings are."""
    found: list[float] = []
    for rule in loaded.plan.rules:
        if rule.asset != asset_key or unit != "degC":
            continue
        fields = rule.model_dump()
        for name in ("min", "max", "reach_max", "blend_max", "exposure_above"):
            if fields.get(name) is not None:
                found.append(float(fields[name]))
        found.extend(float(d["reach_max"]) for d in fields.get("deadlines") or [])
        if fields.get("legal"):
            found.extend([fields["legal"]["temp_c"], fields["legal"]["temp_c"] + 3])
        if fields.get("kind") == "uht":
            found.extend([135.0, 138.0, 141.0])
    return found


def _stream(loaded: LoadedPlan, seed: int) -> list[Op]:
    """A seeded random stream of batches, events and clock advances for a plan."""
    rnd = random.Random(seed)
    plan = loaded.plan
    channels = []
    lateness = plan.allowed_lateness_s
    for key, asset in plan.assets.items():
        lateness = max(lateness, asset.allowed_lateness_s or 0.0)
        for channel_id, channel in asset.channels.items():
            near = _limits_near(loaded, key, channel.unit) or USUAL.get(channel.unit, [4.0, 10.0])
            channels.append((asset.site, asset.id or key, channel_id, channel.unit, near))
    lateness_ms = round(lateness * 1000)
    intervals = sorted(
        round(c.interval_s * 1000) for a in plan.assets.values() for c in a.channels.values()
    )
    step = intervals[len(intervals) // 2]
    sites = sorted({c[0] for c in channels})
    by_kind: dict[str, list[tuple[str, str]]] = {}
    for key, asset in plan.assets.items():
        by_kind.setdefault(asset.kind, []).append((asset.site, asset.id or key))
    every_asset = [a for assets in by_kind.values() for a in assets]
    gateways = []
    for site in sites:
        gateways.append((site, f"gw-{site}", 0))
        skew = rnd.choice([1, -1]) * rnd.choice([500, 1500, 3000, 10_000, 120_000])
        gateways.append((site, f"gw-{site}-skew", skew))
    last: dict[tuple[str, str], float] = {}
    now = T0
    ops: list[Op] = []
    for _ in range(STEPS):
        roll = rnd.random()
        if roll < 0.55:
            site, gateway, skew = rnd.choice(gateways)
            mine = [c for c in channels if c[0] == site]
            readings = _readings(rnd, mine, last, now + skew, step, lateness_ms)
            sent = now + skew + rnd.choice([0, 0, 200, -200])
            horizon = now + rnd.choice([60_000, 3_600_000]) if rnd.random() < 0.5 else None
            synced = rnd.choice([None, None, None, True, False])
            ops.append(("batch", site, gateway, readings, now, horizon, sent, synced))
            if rnd.random() < 0.5:
                now += rnd.randint(0, step)
        elif roll < 0.6 and any(op[0] == "batch" for op in ops):
            ops.append(rnd.choice([op for op in ops if op[0] == "batch"]))  # sent again
        elif roll < 0.72:
            _, _, skew = rnd.choice(gateways)
            ts = now + skew - rnd.randint(0, lateness_ms * 5 if rnd.random() < 0.2 else step)
            ops.append(("events", *_event(rnd, by_kind, every_asset, sites, ts)))
        elif roll < 0.97:
            now += rnd.choice([0, 1, step, step * 3, lateness_ms + 1, lateness_ms * 3])
            if rnd.random() < 0.05:
                now += rnd.choice([900_000, 3_600_000 * rnd.randint(1, 40)])
            ops.append(("advance", now))
        else:
            ops.append(("flush",))
    ops.extend([("advance", now + 10_000), ("flush",), ("advance", now + 4_000_000)])
    return ops


def _readings(
    rnd: random.Random,
    mine: list[tuple[str, str, str, str, list[float]]],
    last: dict[tuple[str, str], float],
    device_now: int,
    step: int,
    lateness_ms: int,
) -> list[Reading]:
    """One gateway's batch: near the plan's limits, flat, wandering, out of order, late, or
    odd (another unit, an unplanned channel or asset, an implausible value)."""
    order = rnd.random()
    readings = []
    for _ in range(rnd.choice([1, 1, 2, 3, 5, 8])):
        _, asset, channel, unit, near = rnd.choice(mine)
        shape = rnd.random()
        if (asset, channel) in last and shape < 0.25:
            value = last[(asset, channel)]  # a flat line
        elif (asset, channel) in last and shape < 0.6:
            value = last[(asset, channel)] + rnd.gauss(0, rnd.choice([0.05, 0.5, 3.0]))
        else:
            value = rnd.choice(near) + rnd.gauss(0, rnd.choice([0.1, 1.0, 5.0]))
        value = float(rnd.random() < 0.8) if unit == "state" else round(value, 3)
        last[(asset, channel)] = value
        ts = device_now
        if order < 0.15:
            ts -= rnd.randint(0, lateness_ms)  # out of order, within the lateness
        elif order < 0.22:
            ts -= rnd.randint(lateness_ms, lateness_ms * 10 + 1)  # late
        else:
            ts -= rnd.randint(0, step)
        odd = rnd.random()
        if odd < 0.03:
            unit = OTHER_UNIT.get(unit, "degC")
        elif odd < 0.05:
            channel = f"unplanned-{rnd.randint(0, 3)}"
        elif odd < 0.06:
            asset = f"ghost-{rnd.randint(0, 2)}"
        elif odd < 0.065:
            value = rnd.choice([1e9, -1e9, 500.0])
        readings.append(Reading(asset, channel, value, unit, ts))
    return readings


def _event(
    rnd: random.Random,
    by_kind: dict[str, list[tuple[str, str]]],
    every_asset: list[tuple[str, str]],
    sites: list[str],
    ts: int,
) -> tuple[str, v1.Event]:
    """(the sending gateway's site, an event of any kind) for a random asset of the plan."""
    site, asset = rnd.choice(every_asset)
    tanks = by_kind.get("bulk_tank") or every_asset
    kind = rnd.choice(
        ["milking", "pickup", "delivery", "product", "run", "cip", "receipt", "silo", "emptied"]
    )
    event: v1.Event
    if kind == "milking":
        site, asset = rnd.choice(tanks)
        event = (
            v1.MilkingStart(asset=asset, ts=ts)
            if rnd.random() < 0.5
            else v1.MilkingEnd(asset=asset, ts=ts, volume_l=1000.0)
        )
    elif kind in ("pickup", "delivery"):
        site, compartment = rnd.choice(by_kind.get("truck_compartment") or every_asset)
        truck = rnd.choice([site, compartment])
        load, volume = f"L{rnd.randint(0, 4)}", round(rnd.uniform(100, 9000), 1)
        tank_site, tank = rnd.choice(tanks)
        event = (
            v1.Pickup(
                asset=truck,
                ts=ts,
                load_id=load,
                compartment=compartment,
                volume_l=volume,
                source_site=tank_site,
                source_asset=tank,
            )
            if kind == "pickup"
            else v1.Delivery(
                asset=truck,
                ts=ts,
                load_id=load,
                compartment=compartment,
                volume_l=volume,
                destination_site=rnd.choice(sites),
            )
        )
    elif kind == "product":
        event = v1.ProductChange(
            asset=asset,
            ts=ts,
            product=rnd.choice(["milk", "cream", "eggnog"]),
            fat_pct=round(rnd.uniform(0, 20), 1),
            sweetened=rnd.random() < 0.2,
        )
    elif kind == "run":
        # a line drawing from up to three of the plan's silos (or assets of any kind, or none)
        silos = by_kind.get("silo") or every_asset
        named = {rnd.choice(silos)[1] for _ in range(rnd.randint(0, 3))} - {asset}
        sources = tuple(v1.Draw(silo, round(rnd.uniform(0, 30_000), 1)) for silo in sorted(named))
        event = (
            v1.RunStart(asset=asset, ts=ts, run_id="r1", sources=sources)
            if rnd.random() < 0.5
            else v1.RunEnd(asset=asset, ts=ts, run_id="r1", sources=sources, output_volume_l=1.0)
        )
    elif kind in ("receipt", "silo"):
        # a load received at a bay (its temperature near the PMO's 7 degC at receipt, or none),
        # or milk moved between silos, into a silo of the site or one the plan does not know
        site, bay = rnd.choice(by_kind.get("receiving_bay") or every_asset)
        source = bay if kind == "receipt" else rnd.choice(by_kind.get("silo") or every_asset)[1]
        into = rnd.choice([*(a for s, a in by_kind.get("silo", []) if s == site), "silo-x"])
        into = into if into != source else "silo-y"
        volume = round(rnd.uniform(100, 30_000), 1)
        event = (
            v1.Receipt(
                asset=source,
                ts=ts,
                load_id=f"L{rnd.randint(0, 4)}",
                destination=into,
                volume_l=volume,
                temperature_c=rnd.choice([None, 4.0, 7.0, 7.3, 7.5, 7.6, 12.0]),
            )
            if kind == "receipt"
            else v1.SiloTransfer(asset=source, ts=ts, destination=into, volume_l=volume)
        )
    elif kind == "emptied":
        site, silo = rnd.choice(by_kind.get("silo") or every_asset)
        event = v1.SiloEmptied(asset=silo, ts=ts, reason="processed")
    else:
        event = (
            v1.CipStart(asset=asset, ts=ts) if rnd.random() < 0.5 else v1.CipEnd(asset=asset, ts=ts)
        )
    if rnd.random() < 0.05:
        event = msgspec.structs.replace(event, asset="ghost-asset")
    return site, event


def _said(engine: Engine, changes: list[DeviationChange]) -> dict[str, Any]:
    """Everything an engine said after an advance or a flush."""
    said = {
        "changes": [deviation_to_json(c) for c in changes],
        "open": sorted(json.dumps(msgspec.to_builtins(d)) for d in engine.open_deviations()),
        "counters": dataclasses.asdict(engine.counters),
        "notices": [dataclasses.asdict(n) for n in engine.take_notices()],
        "derived": [tuple(d) for d in engine.derived],
        "held": engine.held,
    }
    engine.derived.clear()
    return said


def _run(loaded: LoadedPlan, ops: list[Op], engine: Engine, start: int = 0) -> list[Any]:
    """Feed ``ops[start:]`` to an engine; what it said at each step."""
    said: list[Any] = []
    for op in ops[start:]:
        if op[0] == "batch":
            _, site, gateway, readings, now, horizon, sent, synced = op
            engine.clock(site, gateway, sent, now, synced)
            routed = engine.submit(site, gateway, readings, now, horizon)
            said.append((len(routed.mismatches), len(routed.unplanned), len(routed.refused)))
        elif op[0] == "events":
            said.append(engine.submit_events(op[1], [op[2]]))
        else:
            changes: list[DeviationChange] = []
            if op[0] == "advance":
                engine.advance(op[1], changes)
            else:
                engine.flush(changes)
            said.append(_said(engine, changes))
    return said


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("path", PLANS, ids=lambda path: path.stem)
def test_the_screen_changes_no_verdict(path: Path, seed: int) -> None:
    """The same stream judged with the vector screen and with every reading through the rule
    machines gives the same deviations, counters and notices."""
    loaded = load_plan(path)
    ops = _stream(loaded, seed)
    screened = _run(loaded, ops, Engine(loaded))
    unscreened = _run(loaded, ops, Engine(loaded, screen=False))
    assert screened == unscreened


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("path", PLANS, ids=lambda path: path.stem)
def test_a_restart_from_a_snapshot_changes_no_verdict(path: Path, seed: int) -> None:
    """An engine restored from a snapshot taken anywhere in the stream carries on exactly as
    the engine it was taken of."""
    loaded = load_plan(path)
    ops = _stream(loaded, seed)
    at = random.Random(seed).randrange(len(ops))
    running = Engine(loaded)
    _run(loaded, ops[:at], running)
    snapshot = running.snapshot()
    # taking a snapshot judges nothing, but reports the late readings it packs: the runtime
    # logs those notices with the checkpoint
    running.take_notices()
    restored = Engine.restore(loaded, snapshot)
    assert _run(loaded, ops, restored, start=at) == _run(loaded, ops, running, start=at)

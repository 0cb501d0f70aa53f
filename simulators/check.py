"""Checking a scenario: its payloads replayed through the rule engine must produce exactly the
deviations it expects (kind, asset, start and end within its tolerance), and nothing else."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from simulators.runner import Outgoing, simulate_timed
from simulators.scenario import Expected, Scenario, load_scenario
from stream.engine.core import Engine
from stream.ingest import Ingest
from stream.plan import load_plan
from stream.replay import JsonLinesDeviationWriter, ReplaySummary
from stream.sinks.memory import MemoryDeadLetterSink, MemoryTimeSeriesSink


@dataclass(frozen=True, slots=True)
class Found:
    """A deviation as the engine left it at the end of the scenario."""

    kind: str
    asset: str
    rule: str
    start_h: float
    end_h: float | None


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a scenario check found."""

    scenario: str
    matched: list[tuple[Expected, Found]]
    missing: list[Expected]
    unexpected: list[Found]
    summary: ReplaySummary

    @property
    def passed(self) -> bool:
        """Every expected deviation found, nothing else."""
        return not self.missing and not self.unexpected


TICK_MS = 60_000  # the stream's clock moves at least this often between arrivals


def feed(ingest: Ingest, scenario: Scenario) -> list[Outgoing]:
    """Give ``ingest`` the scenario's payloads as a live stream sees them: each at the time it
    arrives, on its topic, the clock ticking between arrivals (so an outage is silence, and a
    skewed gateway clock shows). The payloads, in that order."""
    sent: list[Outgoing] = []
    clock: int | None = None
    for outgoing in simulate_timed(scenario):
        while clock is not None and clock + TICK_MS < outgoing.send_ms:
            clock += TICK_MS
            ingest.tick(clock)
        clock = outgoing.send_ms if clock is None else max(clock, outgoing.send_ms)
        ingest.handle(outgoing.topic, outgoing.payload, outgoing.send_ms)
        sent.append(outgoing)
    return sent


def check(path: str | Path) -> Verdict:
    """Simulate the scenario at ``path`` and feed the rule engine what a live stream would see:
    each payload at the time it arrives, on its topic, with the clock ticking between
    arrivals (so an outage is silence, and a skewed gateway clock shows); then compare."""
    scenario, plan_path = load_scenario(path)
    out = io.StringIO()
    deadletters = MemoryDeadLetterSink()
    ingest = Ingest(
        Engine(load_plan(plan_path)),
        MemoryTimeSeriesSink(),
        JsonLinesDeviationWriter(out),
        deadletters,
    )
    feed(ingest, scenario)
    ingest.finish()
    counters = ingest.counters
    summary = ReplaySummary(
        lines=counters.messages,
        batches=counters.batches,
        readings=counters.readings,
        deviation_changes=len(out.getvalue().splitlines()),
        rejected=counters.rejected_payloads + counters.rejected_readings,
        duplicates=counters.duplicates,
        late=ingest.engine.counters.late,
        first_rejections=deadletters.letters[:5],
    )
    found = _final_deviations(out.getvalue(), scenario)
    matched: list[tuple[Expected, Found]] = []
    missing: list[Expected] = []
    for expected in scenario.expect:
        hit = next((f for f in found if _matches(expected, f, scenario.tolerance_min)), None)
        if hit is None:
            missing.append(expected)
        else:
            matched.append((expected, hit))
            found.remove(hit)
    return Verdict(scenario.scenario, matched, missing, found, summary)


def _final_deviations(jsonl: str, scenario: Scenario) -> list[Found]:
    latest: dict[str, dict[str, object]] = {}
    for line in jsonl.splitlines():
        change = json.loads(line)
        latest[str(change["id"])] = change
    start = scenario.start.timestamp()
    return [
        Found(
            kind=str(d["kind"]),
            asset=str(d["asset"]),
            rule=str(d["rule_id"]),
            start_h=_hours(str(d["start"]), start),
            end_h=_hours(str(d["end"]), start) if d["end"] is not None else None,
        )
        for d in latest.values()
    ]


def _hours(iso: str, start: float) -> float:
    moment = datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    return round((moment - start) / 3600, 4)


def _matches(expected: Expected, found: Found, tolerance_min: float) -> bool:
    tolerance_h = tolerance_min / 60
    if (expected.kind, expected.asset) != (found.kind, found.asset):
        return False
    if expected.rule is not None and expected.rule != found.rule:
        return False
    if abs(expected.start_h - found.start_h) > tolerance_h:
        return False
    if expected.end_h is None or found.end_h is None:
        return expected.end_h is None and found.end_h is None
    return abs(expected.end_h - found.end_h) <= tolerance_h

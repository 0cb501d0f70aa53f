"""Checking a scenario: its payloads replayed through the rule engine must produce exactly the
deviations it expects (kind, asset, start and end within its tolerance), and nothing else."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from simulators.runner import simulate
from simulators.scenario import Expected, Scenario, load_scenario
from stream.plan import load_plan
from stream.replay import ReplaySummary, replay


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


def check(path: str | Path) -> Verdict:
    """Simulate the scenario at ``path``, replay it, and compare with its expectations."""
    scenario, plan_path = load_scenario(path)
    source = io.BytesIO(b"\n".join(simulate(scenario)) + b"\n")
    out = io.StringIO()
    summary = replay(load_plan(plan_path), source, out, name=scenario.scenario)
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

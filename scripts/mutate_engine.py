"""Check that the reference property test catches a deliberate mistake in each rule kind.

Each mutation is one string replacement in the engine's source (found wherever the engine's
modules hold it, so it survives code moving between modules); the property test runs against
the mutated engine and must fail; the source is put back whatever happens. Not part of CI: it
runs the property test once per mutation (a few minutes in all).

    .venv/bin/python scripts/mutate_engine.py            # every mutation
    .venv/bin/python scripts/mutate_engine.py htst uht   # those whose name starts so
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
ENGINE = ROOT / "stream" / "engine"
TESTS = "tests/stream/engine/test_against_reference.py"


class Mutation(NamedTuple):
    name: str
    what: str  # the mistake, in the rule's words
    original: str
    mutated: str
    test: str  # the property that must catch it


EVENTS = "test_the_event_driven_kinds_agree_with_the_reference"
CHANNELS = "test_the_fast_engine_agrees_with_the_reference"
LATE = "test_late_readings_find_the_breaches_the_reference_finds_in_time"

MUTATIONS = [
    Mutation(
        "critical-limit",
        "a sustained limit opens one sample after the excursion lasted its time (>= becomes >)",
        "if ts - self._breach_start >= self.spec.sustained_ms:",
        "if ts - self._breach_start > self.spec.sustained_ms:",
        CHANNELS,
    ),
    Mutation(
        "cooling-deadline",
        "each cooling deadline 1 ms later than the plan says",
        "self.pending.append(_Pending(after, ts, ts + round(within_s * 1000), reach_max))",
        "self.pending.append(_Pending(after, ts, ts + round(within_s * 1000) + 1, reach_max))",
        EVENTS,
    ),
    Mutation(
        "cooling-blend",
        "the blend limit taken 1 degC higher than the plan says",
        "maximum=rule.blend_max,",
        "maximum=rule.blend_max + 1,",
        EVENTS,
    ),
    Mutation(
        "storage-age",
        "a pickup or delivery does not take the milk out (its age is not reset)",
        "self._fills = [(came, since) for came, since in self._fills if came > ts]",
        "self._fills = [(came, since) for came, since in self._fills if came >= 0]",
        EVENTS,
    ),
    Mutation(
        "storage-age-heel",
        "every pickup or delivery empties the tank, whatever milk it leaves (the books ignored)",
        "if remaining <= self.heel_l:",
        "if remaining <= self.heel_l + 1e12:",
        EVENTS,
    ),
    Mutation(
        "transit-time",
        "the transit time's deadline 1 ms later than the plan says",
        "due = self.loaded_since + round(limit_s * 1000)",
        "due = self.loaded_since + round(limit_s * 1000) + 1",
        EVENTS,
    ),
    Mutation(
        "transport-exposure",
        "exposure counted above the reference temperature plus 1 degC",
        "self._last_ts, self._last_excess = sample.ts, max(0.0, sample.value - reference)",
        "self._last_ts, self._last_excess = sample.ts, max(0.0, sample.value - reference - 1)",
        EVENTS,
    ),
    Mutation(
        "htst-valve",
        "the flow-diversion valve's state ignored for the temperature",
        "excess = legal - sample.value if self.forward and sample.value < legal else 0.0",
        "excess = legal - sample.value if sample.value < legal else 0.0",
        EVENTS,
    ),
    Mutation(
        "htst-rich-product",
        "the +3 degC for rich products dropped",
        "raised = round(milk.temp_c + self.rich_product_raise_c, 9)",
        "raised = round(milk.temp_c, 9)",
        EVENTS,
    ),
    Mutation(
        "htst-holding-time",
        "k of a turbulent flow taken as 1.2 instead of 1.25",
        "_K_LAMINAR, _K_TRANSITION, _K_TURBULENT = 2.0, 1.33, 1.25",
        "_K_LAMINAR, _K_TRANSITION, _K_TURBULENT = 2.0, 1.33, 1.2",
        EVENTS,
    ),
    Mutation(
        "htst-recorder",
        "the recorder allowed 0.5 degC above the indicating thermometer",
        "above = sample.value - self.indicating\n",
        "above = sample.value - self.indicating - 0.5\n",
        EVENTS,
    ),
    Mutation(
        "late-hidden",
        "a breach found in late readings is not published",
        "if end < first_late[opened.time_base]:",
        "if end < first_late[opened.time_base] or True:",
        LATE,
    ),
    Mutation(
        "late-flag",
        "a breach found in late readings is not flagged as found late",
        "change.deviation.detected_late = True",
        "change.deviation.detected_late = False",
        LATE,
    ),
    Mutation(
        "uht-f0",
        "F0 computed with z = 11 degC instead of 10",
        "exponent = (outlet_c - 121.1) / 10",
        "exponent = (outlet_c - 121.1) / 11",
        EVENTS,
    ),
]


def _holder(original: str) -> Path:
    """The one engine module (or the plan, which works out the legal pairs) that holds
    ``original``, exactly once."""
    sources = [*sorted(ENGINE.rglob("*.py")), ENGINE.parent / "plan.py"]
    found = [p for p in sources if original in p.read_text()]
    if len(found) != 1 or found[0].read_text().count(original) != 1:
        raise SystemExit(f"{original!r}: expected once in the engine, found in {found}")
    return found[0]


def run(mutation: Mutation) -> tuple[bool, str]:
    """Whether the property test failed on the mutated engine, and the failure's gist."""
    path = _holder(mutation.original)
    source = path.read_text()
    try:
        path.write_text(source.replace(mutation.original, mutation.mutated))
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                f"{TESTS}::{mutation.test}",
                "-x",
                "-q",
                "-p",
                "no:cacheprovider",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        path.write_text(source)
    # the last one is the shrunk example's (hypothesis reports the examples it tried first)
    gist = [line for line in result.stdout.splitlines() if "AssertionError: " in line]
    return result.returncode != 0, (gist[-1].strip()[:400] if gist else result.stdout[-300:])


def main(prefixes: list[str]) -> int:
    chosen = [m for m in MUTATIONS if not prefixes or m.name.startswith(tuple(prefixes))]
    survived = 0
    for mutation in chosen:
        caught, gist = run(mutation)
        survived += not caught
        print(f"{'caught ' if caught else 'SURVIVED'} {mutation.name}: {mutation.what}")
        print(f"         {mutation.test}: {gist}")
    return 1 if survived else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""``milkguard run --no-simulators`` with no gateway: a quiet start, one "monitoring lost" per
channel once the plan's start-up grace and the silence limit have passed, and restarts that
restore it rather than raise it again.

The plan's grace and silence limit are seconds here (the demo plan's are 60 s and 3 s; its
quiet first minute is checked on the engine in tests/stream/engine/test_gaps.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stream.engine.deviation import iso_ms
from tests.servers import free_port

pytestmark = pytest.mark.e2e

GRACE_S = 3
PLAN = f"""\
plan: quiet-start
jurisdiction: company
allowed_lateness_s: 0.5
startup_grace_s: {GRACE_S}
assets:
  tank-1:
    site: farm-01
    kind: bulk_tank
    channels:
      milk_temp: {{unit: degC, interval_s: 0.5, ccp: true, silence_after_s: 1}}
"""


def run(tmp_path: Path, duration_s: float) -> list[dict[str, object]]:
    """One run of the service over the same data directory; the deviation changes so far."""
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MILKGUARD_")}
    env.update(MILKGUARD_MQTT__PORT=str(free_port()), MILKGUARD_DATA_DIR=str(tmp_path / "var"))
    command = ["run", "--no-simulators", "--plan", str(plan), "--duration", str(duration_s)]
    result = subprocess.run(
        [sys.executable, "-m", "milkguard", *command],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    deviations = tmp_path / "var" / "deviations.jsonl"
    if not deviations.exists():
        return []
    return [json.loads(line) for line in deviations.read_text().splitlines()]


def test_a_fresh_start_without_gateways_is_quiet_and_a_restart_restores_the_gap(
    tmp_path: Path,
) -> None:
    """A CCP channel whose gateway never connects. The first run stops within the grace:
    nothing raised (before the grace, its 1 s silence limit raised it within two seconds). The
    second run starts over from the saved state and waits the grace again, then raises the
    channel's "monitoring lost" once, from the restart plus the grace, saying why it starts
    there. The third run restores that open deviation: it is not raised again."""
    assert run(tmp_path, duration_s=3) == []

    restarted_ms = time.time_ns() // 1_000_000
    (opened,) = run(tmp_path, duration_s=8)
    assert (opened["change"], opened["kind"], opened["severity"]) == (
        "opened",
        "monitoring_lost",
        "critical",
    )
    assert str(opened["start"]) >= iso_ms(restarted_ms + GRACE_S * 1000)
    assert opened["time_beyond_s"] == 1.0  # detected when the 1 s limit passed after it
    limit = opened["limit"]
    assert isinstance(limit, dict)
    said = f"never heard from: unmonitored from the service's start plus its {GRACE_S} s"
    assert said in str(limit["source"])

    assert run(tmp_path, duration_s=3) == [opened]  # restored, not raised again

"""Every deviation the engine opens can be signed: no figure it carries makes the signed record
fail (RFC 8785 refuses infinity and NaN), so none is lost on its way to the alert service."""

from __future__ import annotations

import math
from pathlib import Path

import msgspec
import pytest

from milkguard.contract.v1 import Reading
from milkguard.signing import Signer
from stream.engine import DeviationChange
from stream.plan import LoadedPlan
from stream.signed import sealed_change
from tests.stream.engine.scenario import Scenario, at


def _a_breach(plan: LoadedPlan) -> DeviationChange:
    line = Scenario(Path(plan.path).read_bytes())
    for second in range(0, 120, 5):
        line.send("truck-07", [Reading("comp-2", "temp", 9.0, "degC", at(second))])
    line.finish()
    return line.of("critical_limit")[0]


@pytest.mark.parametrize("figure", [math.inf, -math.inf, math.nan, 1e300])
def test_a_deviation_with_any_figure_is_signed_not_dropped_nor_raised(
    demo_plan: LoadedPlan, tmp_path: Path, figure: float
) -> None:
    change = _a_breach(demo_plan)
    d = change.deviation
    d.peak = d.time_beyond_s = d.degree_minutes = figure

    sealed = msgspec.json.decode(sealed_change(change, Signer.load_or_create(tmp_path / "k.pem")))

    record = sealed["record"]
    for name in ("peak", "time_beyond_s", "degree_minutes"):
        assert record[name] is None or math.isfinite(record[name]), name
    assert record["id"] == d.id

"""Line protocol as InfluxDB parses it: escaped tags, quoted strings, nanosecond timestamps."""

from __future__ import annotations

import math

from milkguard.contract.v1 import CipStart, Reading
from stream.engine.deviation import AppliedLimit, Deviation, DeviationChange
from stream.engine.htst import Derived
from stream.lineprotocol import (
    ReadingLines,
    derived_line,
    deviation_line,
    escape_tag,
    event_line,
    reading_line,
    string_field,
)
from tests.conftest import T0


def test_a_reading_is_one_line_with_tags_value_and_nanoseconds() -> None:
    line = reading_line("farm-01", "gw-1", Reading("tank-1", "milk_temp", 3.9, "degC", T0))

    assert line == (
        "reading,site=farm-01,asset=tank-1,channel=milk_temp,unit=degC,gateway=gw-1 "
        f"value=3.9 {T0}000000"
    )


def test_tag_values_escape_commas_equals_and_spaces() -> None:
    assert escape_tag("a b,c=d") == r"a\ b\,c\=d"


def test_string_fields_escape_quotes_and_backslashes() -> None:
    assert string_field('say "hi" \\ bye') == r'"say \"hi\" \\ bye"'


def test_an_event_keeps_its_details_as_json() -> None:
    line = event_line("plant-01", "gw", CipStart(asset="htst-1", ts=T0, program="alkaline"))

    assert line.startswith("event,site=plant-01,asset=htst-1,kind=cip_start,gateway=gw detail=")
    assert r"\"program\":\"alkaline\"" in line
    assert line.endswith(f" {T0}000000")


def test_a_derived_value_is_a_line_of_its_own_measurement() -> None:
    derived = Derived("plant-01", "uht-1", "sterile", "f0_min", T0, 5.25)

    assert derived_line(derived) == (
        f"derived,site=plant-01,asset=uht-1,rule=sterile,quantity=f0_min value=5.25 {T0}000000"
    )


def test_no_line_carries_a_non_finite_number() -> None:
    derived = Derived("plant-01", "htst-1", "p", "holding_time_s", T0, math.inf)
    limit = AppliedLimit(min=72.0, max=None, sustained_s=0.0, unit="degC", source="test")
    deviation = Deviation(
        id="d1",
        status="open",
        kind="critical_limit",
        plan="p",
        plan_version="1",
        rule_id="r",
        ccp=None,
        jurisdiction="US",
        severity="critical",
        action="alert",
        site="plant-01",
        asset="htst-1",
        channels=["hold_temp"],
        device="gw",
        limit=limit,
        start_ms=T0,
        detected_ms=T0,
        end_ms=None,
        peak=math.inf,
        time_beyond_s=1.0,
        degree_minutes=math.nan,
    )

    line = deviation_line(DeviationChange("opened", deviation))

    assert derived_line(derived) is None
    assert "inf" not in line
    assert "nan" not in line
    assert "time_beyond_s=1.0,open=true" in line


def test_reading_lines_are_the_lines_of_each_reading_batch_after_batch() -> None:
    lines = ReadingLines()
    first = [
        Reading("tank-1", "milk_temp", 3.9, "degC", T0),
        Reading("tank-1", "volume", 0.0, "L", T0),
        Reading("tank-1", "milk_temp", -0.0, "degC", T0 + 1000),
    ]
    changed = [Reading("tank-1", "volume", 4.0, "%", T0 + 2000), *first]

    for batch in (first, first, changed, first, list(reversed(first))):
        assert lines.lines("farm-01", "gw-1", batch) == [
            reading_line("farm-01", "gw-1", r) for r in batch
        ]


def test_reading_lines_take_a_layout_the_caller_routed_as_the_readings_keys() -> None:
    lines = ReadingLines()
    batch = [Reading("tank-1", "milk_temp", 3.9, "degC", T0)]
    layout = [("tank-1", "milk_temp", "degC")]

    lines.lines("farm-01", "gw-1", batch, layout)
    again = lines.lines(
        "farm-01", "gw-1", [Reading("tank-1", "milk_temp", 4.1, "degC", T0)], layout
    )

    assert again == [
        "reading,site=farm-01,asset=tank-1,channel=milk_temp,unit=degC,gateway=gw-1 "
        f"value=4.1 {T0}000000"
    ]

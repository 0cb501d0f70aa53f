"""Line protocol as InfluxDB parses it: escaped tags, quoted strings, nanosecond timestamps."""

from __future__ import annotations

import math

from milkguard.contract.v1 import (
    CipStart,
    ClockState,
    GatewayStatus,
    Pickup,
    ProductChange,
    Reading,
    SourceState,
)
from stream.engine.deviation import AppliedLimit, Deviation, DeviationChange
from stream.engine.htst import Derived
from stream.lineprotocol import (
    MAX_TEXT_CHARS,
    ReadingLines,
    derived_line,
    deviation_line,
    escape_tag,
    event_line,
    event_text,
    gateway_line,
    limit_prefix,
    position_line,
    reading_line,
    seen_line,
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
    deviation = a_deviation(
        status="open",
        limit=limit,
        end_ms=None,
        peak=math.inf,
        time_beyond_s=1.0,
        degree_minutes=math.nan,
        value=math.nan,
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


# ------------------------------------------------ what the dashboards draw beside the readings

#: A text a gateway or a plan may choose, with everything that could break a line or a field
HOSTILE = 'tank "A", \\ back=slash\nnext line\r\x00 end'


def fields_of(line: str) -> str:
    """The field set of a line: between the first unescaped space and the timestamp."""
    _, _, rest = line.partition(" ")  # tags here are ids (no escaped spaces)
    return rest.rsplit(" ", 1)[0]


def test_a_hostile_failing_source_name_stays_inside_its_quoted_field() -> None:
    status = GatewayStatus(
        v=1,
        site="farm-01",
        gateway="farm-01-gw",
        state="online",
        ts=T0,
        sources={HOSTILE: SourceState(ok=False, error="x"), "ok-probe": SourceState(ok=True)},
    )

    line = gateway_line(status, T0)

    assert "\n" not in line
    assert "\r" not in line
    assert line.endswith(f" {T0}000000")
    assert 'failing="tank \\"A\\", \\\\ back=slash\\nnext line\\r\x00 end"' in line
    assert "failing_sources=1i" in line


def test_a_failing_list_longer_than_the_text_bound_is_cut_well_below_influxdbs_64_kib() -> None:
    sources = {f"{'s' * 60}-{n:05d}": SourceState(ok=False) for n in range(2_000)}
    status = GatewayStatus(
        v=1, site="farm-01", gateway="gw", state="online", ts=T0, sources=sources
    )

    line = gateway_line(status, T0)

    failing = line.split("failing=", 1)[1].rsplit(" ", 1)[0]
    assert len(failing) == MAX_TEXT_CHARS + 2  # the quotes
    assert failing.endswith('..."')
    assert len(failing.encode()) < 64 * 1024
    assert "failing_sources=2000i" in line


def test_a_gateway_point_carries_its_state_outbox_alarm_and_clock() -> None:
    status = GatewayStatus(
        v=1,
        site="truck-07",
        gateway="truck-07-gw",
        state="offline",
        ts=T0,
        clock=ClockState(synced=False, offset_ms=-12.5, source="chrony"),
        backlog=42,
        outbox_bytes=8192,
        outbox_nearly_full=True,
        dropped_readings=3,
        refused_readings=1,
        alarm=True,
    )

    assert gateway_line(status, T0 + 5) == (
        'gateway,site=truck-07,gateway=truck-07-gw state="offline",online=false,backlog=42i,'
        "outbox_bytes=8192i,outbox_nearly_full=true,dropped_readings=3i,refused_readings=1i,"
        'alarm=true,clock_offset_ms=-12.5,clock_synced=false,clock_source="chrony",'
        f'failing_sources=0i,failing="" {T0 + 5}000000'
    )


def test_a_gateway_with_no_clock_report_has_no_offset_or_sync_field() -> None:
    status = GatewayStatus(v=1, site="s", gateway="g", state="online", ts=T0)

    line = gateway_line(status, T0)

    assert "clock_offset_ms" not in line
    assert "clock_synced" not in line
    assert 'clock_source="none"' in line


def test_seen_limit_and_position_lines() -> None:
    assert seen_line("farm-01", "gw", T0 + 1500, T0) == (
        f"seen,site=farm-01,gateway=gw last_batch_ms={T0 + 1500}i,lag_ms=1500i {T0 + 1500}000000"
    )
    prefix = limit_prefix(
        "plant-01",
        "htst-1",
        "hold_temp",
        rule="p 1",
        kind="legal_temperature",
        bound="min",
        value=72,
    )
    assert prefix + "1" == (
        r"limit,site=plant-01,asset=htst-1,channel=hold_temp,rule=p\ 1,kind=legal_temperature,"
        "bound=min value=72.0 1"
    )
    assert position_line("truck-07", "truck-07", "gw", lat=31.2, lon=121.4, ts=T0) == (
        f"position,site=truck-07,asset=truck-07,gateway=gw lat=31.2,lon=121.4 {T0}000000"
    )


def test_an_event_carries_a_short_line_for_annotations() -> None:
    pickup = Pickup(
        asset="truck-07",
        ts=T0,
        load_id="L-12",
        compartment="comp-1",
        volume_l=1200.0,
        source_site="farm-01",
        source_asset="tank-1",
    )
    cream = ProductChange(asset="htst-1", ts=T0, product="cream", fat_pct=35.0)

    assert event_text(pickup) == "pickup L-12 1,200 L from farm-01/tank-1 into comp-1"
    assert event_text(cream) == "product_change: cream (35 % fat)"
    assert 'text="product_change: cream (35 % fat)"' in event_line("plant-01", "gw", cream)


def test_a_hostile_event_note_is_escaped_in_both_fields() -> None:
    line = event_line("plant-01", "gw", CipStart(asset="htst-1", ts=T0, program=HOSTILE[:200]))

    assert "\n" not in line
    assert "\r" not in line
    assert 'text="cip_start: tank \\"A\\", \\\\ back=slash\\nnext line\\r\x00 end"' in line


def a_deviation(**changes: object) -> Deviation:
    limit = AppliedLimit(min=2.0, max=6.0, sustained_s=15.0, unit="degC", source=HOSTILE)
    deviation = Deviation(
        id="d1",
        status="closed",
        kind="critical_limit",
        plan="p",
        plan_version="1",
        rule_id="r",
        ccp=None,
        jurisdiction="CN",
        severity="major",
        action="reject_load",
        site="truck-07",
        asset="comp-2",
        channels=["temp"],
        device="gw",
        limit=limit,
        start_ms=T0,
        detected_ms=T0 + 15_000,
        end_ms=T0 + 30_000,
        peak=8.2,
        time_beyond_s=30.0,
        degree_minutes=1.0,
        value=6.4,
    )
    for name, value in changes.items():
        setattr(deviation, name, value)
    return deviation


def test_a_deviation_carries_its_interval_limit_first_value_and_source() -> None:
    line = deviation_line(DeviationChange(kind="closed", deviation=a_deviation()))
    fields = fields_of(line)

    assert "limit=6.0," in fields  # the bound the peak is beyond
    assert "value=6.4," in fields
    assert f"start_ms={T0}i," in fields
    assert f"end_ms={T0 + 30_000}i," in fields
    assert f"detected_ms={T0 + 15_000}i," in fields
    assert fields.endswith('source="tank \\"A\\", \\\\ back=slash\\nnext line\\r\x00 end"')
    assert "\n" not in line


def test_an_open_deviation_has_no_end_and_one_below_its_minimum_names_the_minimum() -> None:
    line = deviation_line(
        DeviationChange(kind="opened", deviation=a_deviation(end_ms=None, peak=1.1, value=1.5))
    )

    assert "end_ms=" not in line
    assert "limit=2.0," in line


def test_a_deviation_without_a_bound_or_value_leaves_those_fields_out() -> None:
    limit = AppliedLimit(min=None, max=None, sustained_s=0.0, unit="s", source="plan")
    line = deviation_line(
        DeviationChange(
            kind="opened", deviation=a_deviation(limit=limit, peak=None, value=None, end_ms=None)
        )
    )

    assert "limit=" not in line
    assert "value=" not in line
    assert 'source="plan"' in line


def test_a_legal_source_longer_than_the_text_bound_is_cut() -> None:
    limit = AppliedLimit(min=72.0, max=None, sustained_s=0.0, unit="degC", source="x" * 5_000)
    line = deviation_line(DeviationChange(kind="opened", deviation=a_deviation(limit=limit)))

    source = line.split("source=", 1)[1].rsplit(" ", 1)[0]
    assert len(source) == MAX_TEXT_CHARS + 2

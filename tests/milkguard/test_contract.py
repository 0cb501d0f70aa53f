"""Wire contract v1: what gateways may send, and what they are told when they get it wrong."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import typing
from pathlib import Path
from typing import get_args

import msgspec
import pytest

from milkguard.contract import (
    Batch,
    CipStart,
    Delivery,
    MilkingEnd,
    Pickup,
    ProductChange,
    Reading,
    batch_topic,
    decode_batch,
    encode_batch,
    is_valid_id,
    json_schema,
    parse_batch_topic,
)
from milkguard.contract.records import DeviationKind, DeviationRecord, records_schema
from milkguard.contract.v1 import PLAUSIBLE, Unit, count_readings, read_batch
from tests.alerts.records import change
from tests.conftest import T0

ROOT = Path(__file__).parents[2]
SCHEMA_FILE = ROOT / "milkguard" / "contract" / "wire-v1.schema.json"
RECORDS_SCHEMA_FILE = ROOT / "milkguard" / "contract" / "records-v1.schema.json"


def batch(**fields: object) -> dict[str, object]:
    data: dict[str, object] = {
        "v": 1,
        "site": "farm-01",
        "gateway": "farm-01-gw",
        "seq": 7,
        "sent_at": T0,
        "readings": [
            {"asset": "tank-1", "channel": "milk_temp", "value": 3.9, "unit": "degC", "ts": T0}
        ],
    }
    data.update(fields)
    return data


def rejection(data: dict[str, object]) -> str:
    with pytest.raises(msgspec.ValidationError) as caught:
        decode_batch(json.dumps(data))
    return str(caught.value)


def test_a_batch_round_trips_through_json_with_every_event_kind() -> None:
    events = [
        MilkingEnd(asset="tank-1", ts=T0, milking_id="am", volume_l=1200.0),
        Pickup(
            asset="truck-07",
            ts=T0,
            load_id="L1",
            compartment="comp-1",
            volume_l=5000.0,
            source_site="farm-01",
            source_asset="tank-1",
        ),
        Delivery(
            asset="truck-07",
            ts=T0,
            load_id="L1",
            compartment="comp-1",
            volume_l=5000.0,
            destination_site="plant-01",
        ),
        ProductChange(asset="htst-1", ts=T0, product="cream", fat_pct=35.0),
        CipStart(asset="htst-1", ts=T0, program="alkaline"),
    ]
    original = Batch(
        v=1,
        site="farm-01",
        gateway="gw",
        seq=1,
        sent_at=T0,
        readings=[Reading("tank-1", "milk_temp", 3.9, "degC", T0)],
        events=events,
    )

    assert decode_batch(encode_batch(original)) == original
    assert json.loads(encode_batch(original))["events"][1]["kind"] == "pickup"


def test_a_wrong_type_names_the_field_path() -> None:
    data = batch()
    data["readings"][0]["value"] = "cold"  # type: ignore[index]

    assert rejection(data) == "Expected `float`, got `str` - at `$.readings[0].value`"


def test_an_unknown_unit_is_refused() -> None:
    data = batch()
    data["readings"][0]["unit"] = "C"  # type: ignore[index]

    assert "at `$.readings[0].unit`" in rejection(data)


def test_a_timestamp_in_seconds_instead_of_milliseconds_is_refused() -> None:
    assert "at `$.sent_at`" in rejection(batch(sent_at=T0 // 1000))


def test_an_unknown_event_kind_is_refused() -> None:
    message = rejection(batch(events=[{"kind": "party", "asset": "tank-1", "ts": T0}]))

    assert message == "Invalid value 'party' - at `$.events[0].kind`"


def test_a_misspelt_field_is_refused_not_ignored() -> None:
    data = batch()
    data["readings"][0]["vlaue"] = 1.0  # type: ignore[index]

    assert "vlaue" in rejection(data)


def test_ids_with_topic_wildcards_or_spaces_are_refused() -> None:
    assert "at `$.site`" in rejection(batch(site="farm/+"))
    assert "at `$.gateway`" in rejection(batch(gateway="my gateway"))


def test_a_negative_sequence_number_is_refused() -> None:
    assert "at `$.seq`" in rejection(batch(seq=-1))


def test_topics_carry_the_version_site_and_gateway() -> None:
    topic = batch_topic("farm-01", "farm-01-gw")

    assert topic == "milkguard/v1/gw/farm-01/farm-01-gw/batch"
    assert parse_batch_topic(topic) == ("farm-01", "farm-01-gw")
    assert parse_batch_topic("milkguard/v2/gw/farm-01/gw/batch") is None
    assert parse_batch_topic("milkguard/v1/gw/farm-01/batch") is None


def test_the_committed_json_schema_matches_the_types() -> None:
    committed = json.loads(SCHEMA_FILE.read_text())

    assert committed == json.loads(json.dumps(json_schema())), (
        "wire-v1.schema.json is stale: run milkguard contract schema "
        "--output milkguard/contract/wire-v1.schema.json"
    )


def test_importing_the_contract_pulls_in_nothing_heavier_than_msgspec() -> None:
    code = (
        "import sys, milkguard.contract, milkguard.contract.records; "
        "heavy = {'pydantic', 'paho', 'numpy', 'influxdb_client', 'faust', 'amqtt', 'yaml', "
        "'rich'}; print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )

    assert result.stdout.strip() == "[]"


def test_the_schema_tells_device_makers_the_id_pattern_of_readings() -> None:
    reading = json_schema()["$defs"]["Reading"]  # type: ignore[index]

    assert reading["properties"]["asset"]["pattern"] == "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


def test_is_valid_id_refuses_what_would_break_topics_or_line_protocol() -> None:
    assert is_valid_id("tank-1.milk_temp")
    assert not any(is_valid_id(bad) for bad in ("", "a b", "a,b", "a=b", "a/b", "+", "-a"))


def test_every_unit_has_plausible_bounds_and_the_schema_publishes_them() -> None:
    assert set(PLAUSIBLE) == set(get_args(Unit))
    assert all(low < high for low, high in PLAUSIBLE.values())
    described = json_schema()["$defs"]["Reading"]["properties"]["value"]["description"]
    assert "degC -90..400" in described


@pytest.mark.parametrize(
    "payload",
    [b'{"\xff":1}', b"[" * 100_000, b'{"a":' * 50_000, b"\xc3", b"", b"1e999", b"null"],
)
def test_reading_a_batch_never_raises_it_gives_a_reason(payload: bytes) -> None:
    assert isinstance(read_batch(payload), str)


def test_readings_are_counted_in_any_payload_that_holds_a_readings_list() -> None:
    assert count_readings(b'{"readings":[1,"x",{"a":[]}],"v":"?"}') == 3
    assert count_readings(b'{"readings":{"a":1}}') == 0
    assert count_readings(b'[{"readings":[1]}]') == 0
    assert count_readings(b'{"\xff":1,"readings":[1]}') == 0  # not UTF-8: not JSON text


@pytest.mark.parametrize(
    "payload",
    [
        b'{"readings":[1,2],"clock":{"offset_ms":NaN}}',
        b'{"readings":[1,2],"x":-Infinity}',
        b'{"readings":[1,2],"site":"\\ud800"}',  # a lone surrogate escape
        b'{"readings":[1],"readings":[1,2]}',  # the last of duplicate keys, as for the batch
        b'{"readings":[1,2],"seq":' + b"9" * 10_000 + b"}",  # beyond what Python reads
    ],
    ids=["nan", "infinity", "lone-surrogate", "duplicate-key", "10000-digits"],
)
def test_readings_are_counted_as_the_standard_library_reads_them_where_parsers_disagree(
    payload: bytes,
) -> None:
    # a suite counting what it fed with json.loads must find every reading counted once
    try:
        expected = len(json.loads(payload)["readings"])
    except ValueError:
        expected = 0
    assert count_readings(payload) == expected
    assert count_readings(b"\xff") == 0


def test_the_committed_records_schema_matches_the_types() -> None:
    committed = json.loads(RECORDS_SCHEMA_FILE.read_text())

    assert committed == json.loads(json.dumps(records_schema())), (
        "records-v1.schema.json is stale: run milkguard contract schema --records "
        "--output milkguard/contract/records-v1.schema.json"
    )


def test_the_deviation_kinds_are_those_of_the_readme_and_of_the_engine() -> None:
    kinds = set(typing.get_args(DeviationKind))
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("Rule kinds so far", 1)[1].split("\n\n", 2)[1]  # the rule kinds table
    documented = set(re.findall(r"^\| `([a-z_]+)`", table, flags=re.MULTILINE))
    engine = ROOT / "stream" / "engine"
    emitted = {
        kind
        for source in engine.glob("*.py")
        for kind in re.findall(r'kind="([a-z_]+)"', source.read_text(encoding="utf-8"))
    } - {"opened", "closed", "stable"}  # change kinds, numpy's sort

    assert kinds == documented
    assert "htst_temperature" in emitted
    assert emitted <= kinds


def test_a_deviation_record_keeps_the_json_of_deviations_jsonl() -> None:
    record = change("opened")

    assert msgspec.to_builtins(msgspec.convert(record, DeviationRecord)) == record


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("id", "/tmp/x/pwned"),
        ("id", "5D0C1E2F3A4B5C6D7E8F"),
        ("kind", "party"),
        ("change", "reopened"),
        ("site", "plant/+"),
        ("start", "yesterday"),
        ("clock_offset_ms", 2**60),
        ("time_base", "gps"),
        ("causes", ["leap_second"]),
        ("clocks", [{"device": "gw-1", "offset_ms": 0, "raw_start": "yesterday"}]),
        ("clocks", [{"device": "gw-1", "offset_ms": 0, "raw_begin": None}]),
    ],
)
def test_a_deviation_record_outside_the_contract_is_refused(field: str, value: object) -> None:
    with pytest.raises(msgspec.ValidationError, match=f"at `\\$.{field}[`[]"):
        msgspec.convert({**change("opened"), field: value}, DeviationRecord)


def test_a_deviation_record_written_before_the_clock_fields_is_still_valid() -> None:
    # time_base, clocks and causes came later with defaults: such a record was, and is, on the
    # device's own clock, with no device times beside and no time-sync cause named
    old = {
        name: value
        for name, value in change("opened").items()
        if name not in ("time_base", "clocks", "causes")
    }

    record = msgspec.convert(old, DeviationRecord)

    assert (record.time_base, record.clocks, record.causes) == ("device", [], [])
    required = json.loads(RECORDS_SCHEMA_FILE.read_text())["$defs"]["DeviationRecord"]["required"]
    assert {"time_base", "clocks", "causes"}.isdisjoint(required)


@pytest.mark.parametrize("field", ["site", "gateway"])
def test_an_id_with_a_trailing_newline_is_refused(field: str) -> None:
    # Python's `$` matches before a final newline; an id must end where its text ends
    batch = {"v": 1, "site": "farm-01", "gateway": "gw-1", "seq": 1, "sent_at": T0}
    with pytest.raises(msgspec.ValidationError, match=f"at `\\$.{field}`"):
        decode_batch(json.dumps({**batch, field: "farm-01\n"}))
    assert not is_valid_id("tank-1\n")


def test_a_deviation_id_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"at `\$.id`"):
        msgspec.convert({**change("opened"), "id": "0123456789abcdef0123\n"}, DeviationRecord)


def test_an_events_free_text_is_bounded() -> None:
    # one 100 KB cleaning program would make an event line InfluxDB refuses, with its chunk
    event = {"kind": "cip_start", "asset": "htst-1", "ts": T0, "program": "p" * 257}
    batch = {"v": 1, "site": "plant-01", "gateway": "gw-1", "seq": 1, "sent_at": T0}
    with pytest.raises(msgspec.ValidationError, match=r"\$\.events\[0\]\.program"):
        decode_batch(json.dumps({**batch, "events": [event]}))
    assert decode_batch(json.dumps({**batch, "events": [{**event, "program": "p" * 256}]}))

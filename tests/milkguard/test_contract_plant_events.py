"""The plant events of wire contract v1: receipts into silos, silo transfers, silos emptied, and
the silos a run draws from. Lot genealogy and recall trace milk through these (a lot back to its
silos, a silo back to its loads), so every hostile payload must be refused with the field named,
and the published JSON Schema must take and refuse what the decoder takes and refuses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from milkguard.contract import Draw, Receipt, RunEnd, RunStart, SiloEmptied, SiloTransfer
from milkguard.contract.records import DeviationRecord
from milkguard.contract.v1 import read_batch
from milkguard.signing import canonical
from tests.alerts.records import change
from tests.conftest import T0
from tests.milkguard.json_schema import errors

SCHEMA = json.loads(
    (Path(__file__).parents[2] / "milkguard" / "contract" / "wire-v1.schema.json").read_text()
)


def batch_with(*events: dict[str, Any]) -> dict[str, Any]:
    """A plant gateway's batch carrying ``events`` and no readings."""
    return {
        "v": 1,
        "site": "plant-01",
        "gateway": "plant-01-gw",
        "seq": 1,
        "sent_at": T0,
        "events": list(events),
    }


RECEIPT: dict[str, Any] = {
    "kind": "receipt",
    "asset": "bay-1",
    "ts": T0,
    "load_id": "L-0412",
    "destination": "silo-1",
    "volume_l": 24_000.0,
    "truck": "AB-123-CD",
    "compartment": "comp-1",
    "temperature_c": 5.8,
}
TRANSFER: dict[str, Any] = {
    "kind": "silo_transfer",
    "asset": "silo-1",
    "ts": T0,
    "destination": "silo-2",
    "volume_l": 8_000.0,
    "transfer_id": "T-7",
}
EMPTIED: dict[str, Any] = {
    "kind": "silo_emptied",
    "asset": "silo-1",
    "ts": T0,
    "reason": "processed",
    "volume_l": 0.0,
}
RUN_START: dict[str, Any] = {
    "kind": "run_start",
    "asset": "htst-1",
    "ts": T0,
    "run_id": "R-1",
    "lot": "LOT-20261201-A",
    "sources": [{"silo": "silo-1", "volume_l": 20_000.0}, {"silo": "silo-2"}],
}
RUN_END: dict[str, Any] = {
    "kind": "run_end",
    "asset": "htst-1",
    "ts": T0 + 3_600_000,
    "run_id": "R-1",
    "lot": "LOT-20261201-A",
    "sources": [{"silo": "silo-1", "volume_l": 19_500.0}, {"silo": "silo-2", "volume_l": 6_000.0}],
    "output_volume_l": 25_300.0,
}


def changed(event: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """``event`` with ``fields`` replaced (a field given as ``...`` is left out)."""
    out = {**event, **fields}
    return {key: value for key, value in out.items() if value is not ...}


def decoded(*events: dict[str, Any]) -> Any:
    """The batch the stream reads from ``events``, or its reason for refusing them."""
    return read_batch(json.dumps(batch_with(*events)).encode())


def schema_takes(*events: dict[str, Any]) -> bool:
    """Whether the committed JSON Schema accepts a batch of ``events``."""
    return not errors(SCHEMA, batch_with(*events))


VALID = [RECEIPT, TRANSFER, EMPTIED, RUN_START, RUN_END]


@pytest.mark.parametrize("event", VALID, ids=lambda e: e["kind"])
def test_each_plant_event_is_taken_by_the_decoder_and_the_schema(event: dict[str, Any]) -> None:
    result = decoded(event)

    assert not isinstance(result, str), result
    assert schema_takes(event)


def test_the_plant_events_decode_to_their_types_with_every_field() -> None:
    result = decoded(*VALID)

    assert not isinstance(result, str)
    receipt, transfer, emptied, start, end = result.events
    assert receipt == Receipt(
        asset="bay-1",
        ts=T0,
        load_id="L-0412",
        destination="silo-1",
        volume_l=24_000.0,
        truck="AB-123-CD",
        compartment="comp-1",
        temperature_c=5.8,
    )
    assert transfer == SiloTransfer(
        asset="silo-1", ts=T0, destination="silo-2", volume_l=8_000.0, transfer_id="T-7"
    )
    assert emptied == SiloEmptied(asset="silo-1", ts=T0, reason="processed", volume_l=0.0)
    assert start == RunStart(
        asset="htst-1",
        ts=T0,
        run_id="R-1",
        lot="LOT-20261201-A",
        sources=(Draw("silo-1", 20_000.0), Draw("silo-2")),
    )
    assert isinstance(end, RunEnd)
    assert end.output_volume_l == 25_300.0
    assert end.sources == (Draw("silo-1", 19_500.0), Draw("silo-2", 6_000.0))


def test_the_optional_fields_may_be_left_out() -> None:
    minimal = [
        changed(RECEIPT, truck=..., compartment=..., temperature_c=...),
        changed(TRANSFER, transfer_id=...),
        changed(EMPTIED, reason=..., volume_l=...),
        changed(RUN_START, lot=..., sources=...),
        changed(RUN_END, lot=..., sources=..., output_volume_l=...),
    ]
    result = decoded(*minimal)

    assert not isinstance(result, str), result
    assert schema_takes(*minimal)


def test_runs_as_gateways_sent_them_before_the_plant_events_still_decode() -> None:
    """A gateway of before the plant events keeps working: runs without sources, and the old
    event kinds, decode as they did."""
    old = [
        {"kind": "run_start", "asset": "htst-1", "ts": T0, "run_id": "R-1", "lot": "A"},
        {"kind": "run_end", "asset": "htst-1", "ts": T0 + 1, "run_id": "R-1"},
        {"kind": "cip_start", "asset": "silo-1", "ts": T0, "program": "alkaline"},
    ]
    result = decoded(*old)

    assert not isinstance(result, str), result
    start, end, _ = result.events
    assert isinstance(start, RunStart)
    assert start.sources == ()
    assert isinstance(end, RunEnd)
    assert end.sources == ()
    assert end.output_volume_l is None
    assert schema_takes(*old)


#: Hostile events the schema refuses as the decoder does, with the field the decoder names.
REFUSED_BY_BOTH = [
    ("receipt without a silo", changed(RECEIPT, destination=...), "destination"),
    ("receipt volume beyond any silo", changed(RECEIPT, volume_l=1e12), "$.events[0].volume_l"),
    ("negative receipt volume", changed(RECEIPT, volume_l=-1.0), "$.events[0].volume_l"),
    ("load at 500 degC", changed(RECEIPT, temperature_c=500.0), "$.events[0].temperature_c"),
    ("load at -100 degC", changed(RECEIPT, temperature_c=-100.0), "$.events[0].temperature_c"),
    ("temperature as text", changed(RECEIPT, temperature_c="5"), "$.events[0].temperature_c"),
    ("load id with a topic wildcard", changed(RECEIPT, load_id="L/+"), "$.events[0].load_id"),
    ("silo id with a space", changed(RECEIPT, destination="silo 1"), "$.events[0].destination"),
    ("truck plate of 65 chars", changed(RECEIPT, truck="A" * 65), "$.events[0].truck"),
    ("misspelt field", changed(RECEIPT, temprature_c=5.0), "temprature_c"),
    ("transfer volume beyond", changed(TRANSFER, volume_l=2e7), "$.events[0].volume_l"),
    ("transfer without volume", changed(TRANSFER, volume_l=...), "volume_l"),
    ("emptied with a huge heel", changed(EMPTIED, volume_l=1e300), "$.events[0].volume_l"),
    ("emptied with a long reason", changed(EMPTIED, reason="x" * 257), "$.events[0].reason"),
    (
        "33 source silos",
        changed(RUN_START, sources=[{"silo": f"silo-{n}"} for n in range(33)]),
        "$.events[0].sources",
    ),
    (
        "a draw with a bad silo id",
        changed(RUN_START, sources=[{"silo": "../etc"}]),
        "$.events[0].sources[0].silo",
    ),
    (
        "a draw with an unknown field",
        changed(RUN_END, sources=[{"silo": "silo-1", "litres": 5.0}]),
        "litres",
    ),
    (
        "a negative draw",
        changed(RUN_END, sources=[{"silo": "silo-1", "volume_l": -5.0}]),
        "$.events[0].sources[0].volume_l",
    ),
    ("run output beyond", changed(RUN_END, output_volume_l=1e9), "$.events[0].output_volume_l"),
    ("run lot with a newline", changed(RUN_END, lot="A\n"), "$.events[0].lot"),
]


@pytest.mark.parametrize(
    ("event", "field"), [case[1:] for case in REFUSED_BY_BOTH], ids=[c[0] for c in REFUSED_BY_BOTH]
)
def test_a_hostile_plant_event_is_refused_naming_the_field(
    event: dict[str, Any], field: str
) -> None:
    reason = decoded(event)

    assert isinstance(reason, str)
    assert field in reason
    assert not schema_takes(event)


#: Rules between fields, which a JSON Schema cannot state: the decoder refuses them with a
#: sentence that says how to fix the event; the schema's descriptions say them in words.
REFUSED_BY_THE_DECODER = [
    (
        "silo named twice in a run's sources",
        changed(RUN_START, sources=[{"silo": "silo-1"}, {"silo": "silo-1", "volume_l": 5.0}]),
        "silo 'silo-1' is named twice in sources: name it once - at `$.events[0]`",
    ),
    (
        "silo named twice in a run's end",
        changed(RUN_END, sources=[{"silo": "silo-2"}, {"silo": "silo-2"}]),
        "silo 'silo-2' is named twice in sources: name it once - at `$.events[0]`",
    ),
    (
        "a transfer into itself",
        changed(TRANSFER, destination="silo-1"),
        "silo transfer from 'silo-1' into itself: destination must be another silo"
        " - at `$.events[0]`",
    ),
    (
        "a receipt into the bay itself",
        changed(RECEIPT, destination="bay-1"),
        "receipt at 'bay-1' into itself: destination must be the silo the load went into, "
        "asset the receiving bay - at `$.events[0]`",
    ),
    (
        "a run drawing from its own line",
        changed(RUN_START, sources=[{"silo": "htst-1"}]),
        "line 'htst-1' is named as one of its own sources: sources name the silos it draws "
        "from - at `$.events[0]`",
    ),
]


@pytest.mark.parametrize(
    ("event", "reason"),
    [case[1:] for case in REFUSED_BY_THE_DECODER],
    ids=[c[0] for c in REFUSED_BY_THE_DECODER],
)
def test_a_plant_event_that_contradicts_itself_is_refused_with_how_to_fix_it(
    event: dict[str, Any], reason: str
) -> None:
    assert decoded(event) == reason


def test_32_source_silos_are_taken_the_33rd_is_not() -> None:
    silos = [{"silo": f"silo-{n}", "volume_l": 1_000.0} for n in range(32)]

    assert not isinstance(decoded(changed(RUN_START, sources=silos)), str)
    assert schema_takes(changed(RUN_START, sources=silos))
    assert isinstance(decoded(changed(RUN_START, sources=[*silos, {"silo": "silo-x"}])), str)


def test_the_largest_silo_volume_is_taken() -> None:
    assert not isinstance(decoded(changed(RECEIPT, volume_l=10_000_000.0)), str)
    assert schema_takes(changed(RECEIPT, volume_l=10_000_000.0))


def test_a_plant_event_built_in_python_is_checked_as_on_the_wire() -> None:
    """Constructing a struct in code runs the same cross-field checks as decoding."""
    with pytest.raises(ValueError, match="into itself"):
        SiloTransfer(asset="silo-1", ts=T0, destination="silo-1", volume_l=1.0)
    encoded = msgspec.json.encode(SiloEmptied(asset="silo-3", ts=T0))
    assert json.loads(encoded) == {
        "kind": "silo_emptied",
        "asset": "silo-3",
        "ts": T0,
        "reason": None,
        "volume_l": None,
    }


def test_a_record_without_a_load_keeps_the_canonical_json_it_was_signed_with() -> None:
    """``load_id`` is absent, not null, where unset: a record signed before the field existed
    decodes and canonicalises to the same bytes, so its signature still checks."""
    written_before = msgspec.json.encode(change("opened"))  # deviations.jsonl, no load_id
    record = msgspec.json.decode(written_before, type=DeviationRecord)
    old_json = msgspec.json.encode(record)

    assert b"load_id" not in old_json
    again = msgspec.json.decode(old_json, type=DeviationRecord)
    assert canonical(again) == canonical(record) == canonical(json.loads(written_before))
    named = msgspec.structs.replace(record, load_id="L-1")
    assert json.loads(canonical(named))["load_id"] == "L-1"

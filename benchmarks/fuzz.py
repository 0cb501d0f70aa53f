"""``milkguard bench fuzz``: mutated payloads through the live ingest path and ``milkguard replay``.

A seeded, deterministic generator takes valid batches of a real plan (every gateway of every site
sending one batch a second) and mutates a share of them, by class: truncated JSON, wrong types,
invalid UTF-8, NaN and infinities, extreme and tiny numbers, seconds for milliseconds, far-future
and ancient timestamps, huge sequence numbers, unknown and missing fields, deep nesting, odd ids,
unit mismatches, invented gateways, wrong topics, flipped bytes, broken events, garbage, resent
duplicates, and on a schedule a few 10 MB payloads and batches of 100,000 readings.

The runner feeds them

* through the live path: :meth:`stream.ingest.Ingest.handle` with the sinks ``milkguard run``
  builds (line protocol, deviations and dead letters as files in a temporary data directory, the
  console), the clock advancing a second per round of gateways, the engine ticked as the live loop
  ticks it when idle, and the sinks flushed every second;
* through replay: the real ``milkguard replay`` command in a subprocess, on a file of the payloads
  one per line (it splits at newlines and skips blank lines, so the lines it judges are counted the
  same way), beside an in-process ingest wired as replay wires it, whose counters are checked.

Every exception is caught, counted by its type and where it was raised, and the payload handled
when it was raised saved to a crash directory: ``.payload`` holds its bytes, ``.txt`` the topic
and the traceback, ``.context.jsonl`` the last 200 payloads of that path up to it (a judgement can
raise on a later payload than the one holding the value; ``milkguard replay`` on it reproduces
most).
After the run the counters must add up: every message is a batch, a duplicate or a rejected
payload, and every reading fed (counted here independently, with the standard library's JSON
parser) is accepted, a duplicate, or in a rejected payload.
"""

from __future__ import annotations

import bisect
import contextlib
import gzip
import itertools
import json
import logging
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from array import array
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from importlib import resources
from pathlib import Path
from typing import IO, Any, Final

import msgspec
from rich.console import Console
from rich.table import Table

from milkguard.contract.v1 import (
    EPOCH_2000_MS,
    EPOCH_2100_MS,
    batch_topic,
    status_topic,
)
from milkguard.errors import ConfigError
from milkguard.logs import KeyValueFormatter
from stream.embedded import FLUSH_EVERY_S
from stream.engine.core import Engine
from stream.ingest import Ingest
from stream.plan import LoadedPlan, load_plan
from stream.replay import JsonLinesDeviationWriter
from stream.sinks.base import FanOutDeadLetterSink, FanOutDeviationSink, FanOutTimeSeriesSink
from stream.sinks.console import ConsoleDeviationSink
from stream.sinks.files import JsonlDeadLetterSink, JsonlDeviationSink, LineProtocolFileSink

#: 2026-11-22T10:00:00Z: where the simulated clock starts unless told otherwise
T_START: Final = 1_795_341_600_000

#: Relative weights of the mutation classes drawn for each payload.
MUTATIONS: Final[dict[str, float]] = {
    "valid": 24,
    "duplicate": 4,
    "truncated_json": 5,
    "wrong_types": 7,
    "invalid_utf8": 5,
    "nan_inf": 5,
    "extreme_numbers": 6,
    "seconds_for_ms": 3,
    "far_timestamps": 5,
    "huge_seq": 3,
    "unknown_fields": 4,
    "missing_fields": 4,
    "deep_nesting": 2,
    "odd_ids": 5,
    "unit_mismatch": 4,
    "invented_gateway": 4,
    "wrong_topic": 2,
    "byte_flips": 5,
    "events": 3,
    "garbage": 2,
}

#: Classes placed on a schedule rather than drawn: (payloads per occurrence, at least this many).
SCHEDULED: Final[dict[str, tuple[int, int]]] = {
    "payload_10mb": (200_000, 1),
    "readings_100k": (100_000, 1),
}

TEN_MB: Final = 10 * 1024 * 1024

#: Counters of :class:`stream.ingest.IngestCounters` the invariants are written against.
COUNTERS: Final = (
    "messages",
    "batches",
    "duplicates",
    "rejected_payloads",
    "readings",
    "readings_duplicate",
    "readings_in_rejected_payloads",
    "rejected_readings",
    "readings_quarantined",
    "statuses",
)

_UNITS: Final = ("degC", "%RH", "%O2", "%", "L", "L/h", "bar", "state", "km/h", "deg")
_BAD_UNITS: Final = ("degF", "°C", "DEGC", "", "C", "K", "deg C", "%rh", "l/h", "degC ")
_ODD_IDS: Final = (
    "",
    "a" * 65,
    "a" * 64,
    "-lead",
    ".dot",
    "_under",
    "a b",
    "a/b",
    "a+b",
    "a#b",
    "../../etc/passwd",
    "Käserei",
    "tank\x00",
    "tab\t",
    "line\nbreak",
    "\U0001f42e",
    "\u202etxt.exe",
    "CON",
    "x" * 5000,
    "tank-1 ",
    "[/red]",
    "a,b=c",
    '"quoted"',
    "\\back",
)
_WRONG_VALUES: Final[tuple[Any, ...]] = (
    None,
    True,
    False,
    "x",
    "",
    "1",
    0,
    -1,
    1.5,
    [],
    {},
    [1],
    {"a": 1},
    [None],
)
_BAD_UTF8: Final = (
    b"\xff",
    b"\xfe",
    b"\xc0\xaf",  # overlong '/'
    b"\xed\xa0\x80",  # a UTF-16 surrogate encoded as UTF-8
    b"\xf4\x90\x80\x80",  # beyond U+10FFFF
    b"\x80",
    b"\xe2\x82",  # truncated sequence
    b"\xc3",
)
_NAN_INF: Final = (
    b"NaN",
    b"-NaN",
    b"Infinity",
    b"-Infinity",
    b"nan",
    b"inf",
    b"1e999",
    b"-1e999",
    b"1E400",
)
_EXTREME: Final = (
    b"1e308",
    b"-1e308",
    b"1.7976931348623157e308",
    b"-1.7976931348623157e308",
    b"5e-324",
    b"-5e-324",
    b"2.2250738585072014e-308",
    b"1e-300",
    b"0",
    b"-0.0",
    b"3300",
    b"3500.5",
    b"1e6",
    b"-273.16",
    b"-1e6",
    b"9007199254740993",
    b"1e20",
    b"18446744073709551616",
    b"123456789012345678901234567890",
    b"9" * 400,
    b"1" + b"0" * 5000,
)
_HUGE_SEQ: Final = (
    b"9223372036854775808",  # 2**63
    b"9223372036854775807",
    b"18446744073709551616",  # 2**64
    b"18446744073709551617",
    b"100000000000000000000",
    b"1000000000000000000000000000000",
    b"-1",
    b"0",
    b"1.5",
    b"1e18",
    b"9" * 400,
)
_DAY_MS: Final = 86_400_000
_YEAR_MS: Final = 365 * _DAY_MS


def _holders_of_readings(pairs: list[tuple[str, Any]]) -> dict[str, Any] | int:
    # only an object with a "readings" key can be the one counted: the others (every reading of
    # a 10 MB batch) become a small int, so counting does not build them all in memory. A name
    # given twice: the last counts, as Python's json (and msgspec) read it.
    named = [value for key, value in pairs if key == "readings"]
    return {"readings": named[-1]} if named else 0


#: Python's own JSON parser, as a suite that counts what it fed with ``json.loads`` reads it
#: (NaN and Infinity accepted, lone surrogate escapes accepted, integers beyond 4,300 digits
#: refused); floats are not needed, so none is built.
_COUNTING: Final = json.JSONDecoder(
    object_pairs_hook=_holders_of_readings, parse_float=lambda text: 0.0
)


def readings_in(payload: bytes) -> int:
    """How many readings a payload carries: the length of its top-level ``readings`` array when
    it is UTF-8 text that Python's ``json`` reads as an object holding a list there, else 0.

    This is the harness's own count, independent of the contract's decoder; the stream's counters
    must add up to it.
    """
    try:
        text = payload.decode("utf-8")
        data = _COUNTING.decode(text)
    except (ValueError, RecursionError):
        return 0
    if isinstance(data, dict):
        readings = data.get("readings")
        if isinstance(readings, list):
            return len(readings)
    return 0


def replay_lines(payload: bytes) -> list[bytes]:
    """The lines ``milkguard replay`` judges for ``payload`` written as one line of its input:
    it splits at newlines, strips whitespace and skips what is left empty."""
    return [stripped for part in payload.split(b"\n") if (stripped := part.strip())]


@dataclass(frozen=True, slots=True)
class Fuzzed:
    """One generated message: what is published where, and when the stream receives it."""

    index: int
    mutation: str
    topic: str
    payload: bytes
    received_ms: int
    readings: int


@dataclass(slots=True)
class _Channel:
    asset: str
    channel: str
    unit: str
    typical: float
    noise: float
    value: float


@dataclass(slots=True)
class _Gateway:
    site: str
    gateway: str
    channels: list[_Channel]
    kinds: dict[str, str]  # asset id -> asset kind, for events
    seq: int = 1


def _typical(kind: str, channel: str, unit: str) -> tuple[float, float]:
    """A healthy value and its noise for a channel, from its asset kind and unit."""
    if unit == "degC":
        by_kind = {"htst": 72.6, "uht": 140.0, "room": 21.0, "cold_store": 3.0}
        value = by_kind.get(kind, 3.8)
        if kind == "htst" and "recorder" in channel:
            value = 72.4
        return value, 0.05
    by_unit = {
        "%RH": (50.0, 0.3),
        "%O2": (1.5, 0.05),
        "%": (50.0, 0.5),
        "L": (4000.0, 2.0),
        "L/h": (4000.0 if kind == "uht" else 10_000.0, 20.0),
        "bar": (2.0, 0.01),
        "state": (1.0, 0.0),
        "km/h": (60.0, 1.0),
        "deg": (45.0, 0.0001),
    }
    return by_unit.get(unit, (1.0, 0.01))


def _gateways(loaded: LoadedPlan) -> list[_Gateway]:
    """One gateway per site of the plan, carrying every channel of the site's assets."""
    by_site: dict[str, _Gateway] = {}
    for key, asset in loaded.plan.assets.items():
        name = asset.id or key
        gateway = by_site.setdefault(asset.site, _Gateway(asset.site, f"{asset.site}-gw", [], {}))
        gateway.kinds[name] = asset.kind
        for channel, spec in asset.channels.items():
            typical, noise = _typical(asset.kind, channel, spec.unit)
            gateway.channels.append(_Channel(name, channel, spec.unit, typical, noise, typical))
    return list(by_site.values())


def _raw(data: bytes) -> msgspec.Raw:
    return msgspec.Raw(data)


_encode = msgspec.json.encode


class PayloadFuzzer:
    """Valid traffic of a plan's gateways, a share of it mutated; deterministic for its seed."""

    def __init__(
        self,
        loaded: LoadedPlan,
        *,
        seed: int = 1,
        start_ms: int = T_START,
        total: int = 0,
        skip: frozenset[str] = frozenset(),
        plant_events: bool = True,
    ) -> None:
        self._rng = random.Random(seed)
        self._plant_events_on = plant_events
        self._gateways = _gateways(loaded)
        self._turn = 0
        self._sender = self._gateways[0]
        self.now_ms = start_ms
        self._start_ms = start_ms
        drawn = {name: weight for name, weight in MUTATIONS.items() if name not in skip}
        self._names = list(drawn)
        self._cumulative = list(itertools.accumulate(drawn.values()))
        self._schedule = {i: name for i, name in _schedule(total).items() if name not in skip}
        self._recent: deque[tuple[str, bytes]] = deque(maxlen=256)
        self._invented = 0
        self._mutators: dict[str, Callable[[_Gateway, dict[str, Any]], tuple[str, bytes]]] = {
            name: getattr(self, f"_{name}") for name in [*MUTATIONS, *SCHEDULED]
        }

    def generate(self, count: int) -> Iterator[Fuzzed]:
        """``count`` messages, in order."""
        for index in range(count):
            yield self.next(index)

    def next(self, index: int) -> Fuzzed:
        """The message at ``index`` (call in order: the traffic has state)."""
        rng = self._rng
        mutation = self._schedule.get(index)
        if mutation is None:
            mutation = self._names[
                bisect.bisect(self._cumulative, rng.random() * self._cumulative[-1])
            ]
        gateway = self._gateways[self._turn]
        self._turn = (self._turn + 1) % len(self._gateways)
        if self._turn == 0:
            self.now_ms += 1000
        self._sender = gateway
        base = self._batch(gateway)
        topic, payload = self._mutators[mutation](gateway, base)
        received = self.now_ms + rng.randrange(20, 200)
        return Fuzzed(index, mutation, topic, payload, received, readings_in(payload))

    # -- valid traffic ---------------------------------------------------------------------

    def _batch(self, gateway: _Gateway) -> dict[str, Any]:
        rng = self._rng
        sampled = self.now_ms - 1000 + rng.randrange(0, 900)
        readings = []
        for channel in gateway.channels:
            if channel.unit == "state":
                value = 0.0 if rng.random() < 0.01 else 1.0
            else:
                channel.value += (channel.typical - channel.value) * 0.1 + rng.gauss(
                    0, channel.noise
                )
                value = round(channel.value, 3)
            readings.append(
                {
                    "asset": channel.asset,
                    "channel": channel.channel,
                    "value": value,
                    "unit": channel.unit,
                    "ts": sampled,
                }
            )
        batch: dict[str, Any] = {
            "v": 1,
            "site": gateway.site,
            "gateway": gateway.gateway,
            "seq": gateway.seq,
            "sent_at": self.now_ms,
            "readings": readings,
        }
        gateway.seq += 1
        if rng.random() < 0.05:
            batch["events"] = [self._event(gateway, sampled)]
        if rng.random() < 0.1:
            batch["clock"] = {"synced": True, "offset_ms": 1.5, "error_ms": 0.8, "source": "chrony"}
        return batch

    def _event(self, gateway: _Gateway, ts: int) -> dict[str, Any]:
        rng = self._rng
        asset, kind = rng.choice(list(gateway.kinds.items()))
        number = rng.randrange(1000)
        choices: list[dict[str, Any]] = [
            {"kind": "cip_start", "program": "alkali"},
            {"kind": "cip_end"},
        ]
        if kind == "bulk_tank":
            choices = [
                {"kind": "milking_start", "milking_id": f"m{number}"},
                {"kind": "milking_end", "milking_id": f"m{number}", "volume_l": 800.0},
            ]
        elif kind == "truck_compartment":
            choices = [
                {
                    "kind": "pickup",
                    "load_id": f"load-{number}",
                    "compartment": "1",
                    "volume_l": 5000.0,
                    "source_site": "farm-01",
                    "source_asset": "tank-1",
                },
                {
                    "kind": "delivery",
                    "load_id": f"load-{number}",
                    "compartment": "1",
                    "volume_l": 5000.0,
                    "destination_site": "plant-01",
                },
            ]
        elif kind in {"htst", "uht"}:
            choices += [
                {"kind": "product_change", "product": "whole-milk", "fat_pct": 3.5},
                {"kind": "run_start", "run_id": f"run-{number}", "lot": f"lot-{number}"},
                {"kind": "run_end", "run_id": f"run-{number}"},
                *self._plant_events(gateway, asset, kind, number),
            ]
        elif kind in {"receiving_bay", "silo"}:
            choices += self._plant_events(gateway, asset, kind, number)
        return {**rng.choice(choices), "asset": asset, "ts": ts}

    def _plant_events(
        self, gateway: _Gateway, asset: str, kind: str, number: int
    ) -> list[dict[str, Any]]:
        """The plant events an asset of ``kind`` reports: receipts at a bay into the site's
        silos, transfers and emptying of a silo, runs of a line drawing from silos. Silos the
        plan does not know are named too (``silo-x``): the engine must count them, not fail.
        None when the fuzzer was made with ``plant_events=False``."""
        if not self._plant_events_on:
            return []
        rng = self._rng
        silos = [name for name, of in gateway.kinds.items() if of == "silo" and name != asset]
        silo = rng.choice([*silos, "silo-x"])
        litres = round(rng.uniform(100.0, 30_000.0), 1)
        if kind == "receiving_bay":
            return [
                {
                    "kind": "receipt",
                    "load_id": f"load-{number}",
                    "destination": silo,
                    "volume_l": litres,
                    "truck": f"truck-{number % 7}",
                    "temperature_c": round(rng.uniform(2.0, 9.0), 1),
                },
                {
                    "kind": "receipt",
                    "load_id": f"load-{number}",
                    "destination": silo,
                    "volume_l": litres,
                },
            ]
        if kind == "silo":
            return [
                {"kind": "silo_transfer", "destination": silo, "volume_l": litres},
                {"kind": "silo_emptied", "reason": "processed", "volume_l": 0.0},
            ]
        sources = [{"silo": name, "volume_l": litres} for name in {*silos[:2], silo}]
        return [
            {
                "kind": "run_start",
                "run_id": f"run-{number}",
                "lot": f"lot-{number}",
                "sources": sources,
            },
            {
                "kind": "run_end",
                "run_id": f"run-{number}",
                "sources": sources,
                "output_volume_l": litres * len(sources),
            },
        ]

    def _topic(self, batch: dict[str, Any]) -> str:
        """The batch topic of the site and gateway the batch names (the sender's if it names
        none it can)."""
        site, gateway = batch.get("site"), batch.get("gateway")
        sender = self._sender
        return batch_topic(
            site if isinstance(site, str) else sender.site,
            gateway if isinstance(gateway, str) else sender.gateway,
        )

    def _valid(self, gateway: _Gateway, batch: dict[str, Any]) -> tuple[str, bytes]:
        topic, payload = self._topic(batch), _encode(batch)
        self._recent.append((topic, payload))
        return topic, payload

    # -- mutations -------------------------------------------------------------------------

    def _duplicate(self, gateway: _Gateway, batch: dict[str, Any]) -> tuple[str, bytes]:
        if not self._recent:
            return self._valid(gateway, batch)
        return self._rng.choice(self._recent)

    def _truncated_json(self, gateway: _Gateway, batch: dict[str, Any]) -> tuple[str, bytes]:
        payload = _encode(batch)
        return self._topic(batch), payload[: self._rng.randrange(len(payload))]

    def _target(self, batch: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """A random (object, key) of the batch: top level, a reading, an event or the clock."""
        rng = self._rng
        where = rng.random()
        if where < 0.5 and batch["readings"]:
            return rng.choice(batch["readings"]), rng.choice(
                ["asset", "channel", "value", "unit", "ts"]
            )
        if where < 0.6 and batch.get("events"):
            event = rng.choice(batch["events"])
            return event, rng.choice(list(event))
        if where < 0.65 and batch.get("clock"):
            return batch["clock"], rng.choice(list(batch["clock"]))
        return batch, rng.choice(
            ["v", "site", "gateway", "seq", "sent_at", "readings", "events", "clock"]
        )

    def _wrong_types(self, gateway: _Gateway, batch: dict[str, Any]) -> tuple[str, bytes]:
        rng = self._rng
        if rng.random() < 0.15 and batch["readings"]:
            batch["readings"][rng.randrange(len(batch["readings"]))] = rng.choice(_WRONG_VALUES)
        else:
            obj, key = self._target(batch)
            obj[key] = rng.choice(_WRONG_VALUES)
        return batch_topic(gateway.site, gateway.gateway), _encode(batch)

    def _invalid_utf8(self, gateway: _Gateway, batch: dict[str, Any]) -> tuple[str, bytes]:
        rng = self._rng
        bad = rng.choice(_BAD_UTF8)
        topic = self._topic(batch)
        variant = rng.randrange(6)
        if variant == 0:
            return topic, b'{"' + bad + b'":1}'  # the 7-byte payload that stopped the stream
        if variant == 1:
            return topic, b'{"' + bad + b'":1,' + _encode(batch)[1:]
        if variant == 2:
            payload = _encode(batch)
            at = rng.randrange(len(payload) + 1)
            return topic, payload[:at] + bad + payload[at:]
        if variant == 3:
            text = rng.choice(["\\ud800", "\\udfff", "\\ud83d", "\\u0000"])
            obj, key = self._string_target(batch)
            obj[key] = _raw(f'"x{text}y"'.encode())
            return topic, _encode(batch)
        if variant == 4:
            obj, key = self._string_target(batch)
            obj[key] = _raw('"Käserei"'.encode("latin-1"))
            return topic, _encode(batch)
        obj, key = self._string_target(batch)
        obj[key] = _raw(b'"' + str(obj[key]).encode()[:8] + bad + b'"')
        return topic, _encode(batch)

    def _string_target(self, batch: dict[str, Any]) -> tuple[dict[str, Any], str]:
        rng = self._rng
        if batch["readings"] and rng.random() < 0.6:
            return rng.choice(batch["readings"]), rng.choice(["asset", "channel", "unit"])
        return batch, rng.choice(["site", "gateway"])

    def _number_target(self, batch: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """Mostly reading values; sometimes times, seq and the numbers of events and clock."""
        rng = self._rng
        where = rng.random()
        if where < 0.7 and batch["readings"]:
            return rng.choice(batch["readings"]), "value"
        if where < 0.8 and batch["readings"]:
            return rng.choice(batch["readings"]), "ts"
        if where < 0.85:
            event = {"kind": "product_change", "product": "cream", "fat_pct": 35.0}
            event.update(
                asset=batch["readings"][0]["asset"] if batch["readings"] else "a",
                ts=batch["sent_at"],
            )
            batch["events"] = [event]
            return event, "fat_pct"
        if where < 0.9:
            batch["clock"] = {"synced": True, "offset_ms": 0.0, "error_ms": 1.0, "source": "kernel"}
            return batch["clock"], rng.choice(["offset_ms", "error_ms"])
        return batch, rng.choice(["seq", "sent_at"])

    def _nan_inf(self, gateway: _Gateway, batch: dict[str, Any]) -> tuple[str, bytes]:
        rng = self._rng
        for _ in range(rng.choice([1, 1, 1, 2, 5])):
            obj, key = self._number_target(batch)
            obj[key] = _raw(rng.choice(_NAN_INF))
        return self._topic(batch), _encode(batch)

    def _extreme_numbers(self, gateway: _Gateway, batch: dict[str, Any]) -> tuple[str, bytes]:
        rng = self._rng
        number = _raw(rng.choice(_EXTREME))
        readings = batch["readings"]
        # the physics of the plan: flows divide, outlet temperatures are exponents
        physics = [r for r in readings if r["unit"] in {"L/h", "degC"}]
        if physics and rng.random() < 0.5:
            rng.choice(physics)["value"] = number
        elif readings and rng.random() < 0.3:
            for reading in readings:
                reading["value"] = number
        else:
            obj, key = self._number_target(batch)
            obj[key] = number
        return self._topic(batch), _encode(batch)

    def _seconds_for_ms(self, gateway: _Gateway, batch: dict[str, Any]) -> tuple[str, bytes]:
        rng = self._rng
        convert: Callable[[int], Any] = rng.choice(
            [lambda t: t // 1000, lambda t: t * 1000, lambda t: _raw(repr(t / 1000).encode())]
        )
        variant = rng.randrange(4)
        if variant == 0 or not batch["readings"]:
            batch["sent_at"] = convert(batch["sent_at"])
        elif variant == 1:
            reading = rng.choice(batch["readings"])
            reading["ts"] = convert(reading["ts"])
        else:
            for reading in batch["readings"]:
                reading["ts"] = convert(reading["ts"])
            if variant == 3:
                batch["sent_at"] = convert(batch["sent_at"])
        return self._topic(batch), _encode(batch)

    def _far_timestamps(self, gateway: _Gateway, batch: dict[str, Any]) -> tuple[str, bytes]:
        rng = self._rng
        now = batch["sent_at"]
        moment: Any = rng.choice(
            [
                EPOCH_2100_MS - 1,  # 2099-12-31T23:59:59.999Z: valid by the contract
                EPOCH_2100_MS,
                2_147_483_648_000,  # 2038-01-19
                0,
                999,
                -1,
                EPOCH_2000_MS - 1,
                EPOCH_2000_MS,
                2**63 - 1,
                2**63,
                -(2**63),
                now + 10 * 60_000,
                now + 3_600_000,
                now + _DAY_MS,
                now + _YEAR_MS,
                now - _DAY_MS,
                now - _YEAR_MS,
                now - 10 * _YEAR_MS,
            ]
        )
        value = _raw(str(moment).encode()) if abs(moment) >= 2**63 else moment
        variant = rng.randrange(5)
        if batch["readings"] and variant < 2:
            rng.choice(batch["readings"])["ts"] = value
        elif batch["readings"] and variant == 2:
            for reading in batch["readings"]:
                reading["ts"] = value
        elif variant == 3:
            batch["sent_at"] = value
        else:
            event = self._event(gateway, now)
            event["ts"] = value
            batch["events"] = [event]
        return self._topic(batch), _encode(batch)

    def _huge_seq(self, gateway: _Gateway, batch: dict[str, Any]) -> tuple[str, bytes]:
        rng = self._rng
        variant = rng.random()
        if variant < 0.1:
            # a gateway restarts without its counter and seeds seq from its clock, as advised
            gateway.seq = self.now_ms
            batch["seq"] = gateway.seq
            gateway.seq += 1
        elif variant < 0.15:
            gateway.seq = 0  # a gateway that lost its counter and starts again from nothing
            batch["seq"] = gateway.seq
            gateway.seq += 1
        else:
            batch["seq"] = _raw(rng.choice(_HUGE_SEQ))
        return self._topic(batch), _encode(batch)

    def _unknown_fields(self, gateway: _Gateway, batch: dict[str, Any]) -> tuple[str, bytes]:
        rng = self._rng
        name = rng.choice(
            ["extra", "V", "Site", "__proto__", "constructor", "readings2", "", "x" * 1000]
        )
        value = rng.choice(_WRONG_VALUES)
        where = rng.randrange(5)
        if where == 0 and batch["readings"]:
            rng.choice(batch["readings"])[name] = value
        elif where == 1:
            event = self._event(gateway, batch["sent_at"])
            event[name] = value
            batch["events"] = [event]
        elif where == 2:
            batch["clock"] = {"synced": True, name: value}
        elif where == 3 and batch["readings"]:
            # the same key twice: the last one wins in both parsers
            payload = _encode(batch)
            return self._topic(batch), payload[:-1] + b',"readings":[]}'
        else:
            batch[name] = value
        return self._topic(batch), _encode(batch)

    def _missing_fields(self, gateway: _Gateway, batch: dict[str, Any]) -> tuple[str, bytes]:
        rng = self._rng
        where = rng.randrange(3)
        if where == 0 and batch["readings"]:
            del rng.choice(batch["readings"])[
                rng.choice(["asset", "channel", "value", "unit", "ts"])
            ]
        elif where == 1:
            event = self._event(gateway, batch["sent_at"])
            del event[rng.choice(list(event))]
            batch["events"] = [event]
        else:
            del batch[rng.choice(["v", "site", "gateway", "seq", "sent_at", "readings"])]
        return self._topic(batch), _encode(batch)

    def _deep_nesting(self, gateway: _Gateway, batch: dict[str, Any]) -> tuple[str, bytes]:
        rng = self._rng
        # mostly shallow or a few thousand deep; now and then 100,000 deep (200 KB)
        depth = 100_000 if rng.random() < 0.05 else rng.choice([32, 200, 2_000, 5_000])
        nested = rng.choice(
            [b"[" * depth + b"1" + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth]
        )
        topic = self._topic(batch)
        variant = rng.randrange(5)
        if variant == 0:
            batch["extra"] = _raw(nested)
        elif variant == 1 and batch["readings"]:
            rng.choice(batch["readings"])["value"] = _raw(nested)
        elif variant == 2:
            batch["readings"] = _raw(b"[" + nested + b"]")
        elif variant == 3:
            return topic, b"[" * depth + _encode(batch) + b"]" * depth
        else:
            return topic, b"[" * depth  # never closed
        return topic, _encode(batch)

    def _odd_ids(self, gateway: _Gateway, batch: dict[str, Any]) -> tuple[str, bytes]:
        rng = self._rng
        odd = rng.choice(_ODD_IDS)
        variant = rng.randrange(5)
        if variant == 0:
            batch["site"] = odd  # the topic keeps the real site: a mismatch
            return batch_topic(gateway.site, gateway.gateway), _encode(batch)
        if variant == 1:
            key = rng.choice(["site", "gateway"])
            batch[key] = odd
            return self._topic(batch), _encode(batch)
        if variant == 2 and batch["readings"]:
            rng.choice(batch["readings"])[rng.choice(["asset", "channel"])] = odd
        elif variant == 3 and batch["readings"]:
            for reading in batch["readings"]:
                reading["channel"] = f"{odd}{rng.randrange(10)}"
        else:
            event = self._event(gateway, batch["sent_at"])
            event["asset"] = odd
            batch["events"] = [event]
        return self._topic(batch), _encode(batch)

    def _unit_mismatch(self, gateway: _Gateway, batch: dict[str, Any]) -> tuple[str, bytes]:
        rng = self._rng
        readings = batch["readings"] or [
            {"asset": "a", "channel": "c", "value": 1.0, "ts": batch["sent_at"]}
        ]
        batch["readings"] = readings
        for reading in rng.sample(readings, rng.randint(1, len(readings))):
            if rng.random() < 0.7:
                reading["unit"] = rng.choice([u for u in _UNITS if u != reading.get("unit")])
            else:
                reading["unit"] = rng.choice(_BAD_UNITS)
        return self._topic(batch), _encode(batch)

    def _invented_gateway(self, gateway: _Gateway, batch: dict[str, Any]) -> tuple[str, bytes]:
        rng = self._rng
        self._invented += 1
        number = self._invented
        sent = batch["sent_at"]
        if rng.random() < 0.05:
            # a stranger at a real site, sending the plan's own channels
            site, name = gateway.site, f"{gateway.gateway}-{number}"
            readings = batch["readings"]
        else:
            site, name = f"site-{number:07d}", f"gw-{number:07d}"
            readings = [
                {
                    "asset": f"asset-{k % 3}",
                    "channel": f"ch-{k}",
                    "value": round(rng.uniform(-50, 150), 2),
                    "unit": rng.choice(_UNITS),
                    "ts": sent - 500,
                }
                for k in range(10)
            ]
        invented = {
            "v": 1,
            "site": site,
            "gateway": name,
            "seq": rng.randrange(1, 2**40),
            "sent_at": sent,
            "readings": readings,
        }
        return batch_topic(site, name), _encode(invented)

    def _wrong_topic(self, gateway: _Gateway, batch: dict[str, Any]) -> tuple[str, bytes]:
        rng = self._rng
        other = rng.choice(self._gateways)
        topic = rng.choice(
            [
                batch_topic(other.site, other.gateway if other is not gateway else "someone-else"),
                status_topic(gateway.site, gateway.gateway),
                batch_topic(gateway.site, gateway.gateway) + "/extra",
                f"milkguard/v2/gw/{gateway.site}/{gateway.gateway}/batch",
                "",
                "milkguard/v1/gw//x/batch",
                f"milkguard/v1/gw/{gateway.site}/+/batch",
                "milkguard/v1/gw/#",
                "milkguard/v1/deviations/x/y",
                "t" * 70_000,
                f"milkguard/v1/gw/{rng.choice(_ODD_IDS)}/{gateway.gateway}/batch",
            ]
        )
        return topic, _encode(batch)

    def _byte_flips(self, gateway: _Gateway, batch: dict[str, Any]) -> tuple[str, bytes]:
        rng = self._rng
        payload = bytearray(_encode(batch))
        for _ in range(rng.randint(1, 8)):
            if not payload:
                break
            at = rng.randrange(len(payload))
            operation = rng.randrange(4)
            if operation == 0:
                payload[at] ^= 1 << rng.randrange(8)
            elif operation == 1:
                payload.insert(at, rng.randrange(256))
            elif operation == 2:
                del payload[at]
            else:
                end = min(len(payload), at + rng.randint(1, 16))
                payload[at:at] = payload[at:end]
        return self._topic(batch), bytes(payload)

    def _events(self, gateway: _Gateway, batch: dict[str, Any]) -> tuple[str, bytes]:
        rng = self._rng
        event = self._event(gateway, batch["sent_at"])
        variant = rng.randrange(8)
        if variant == 0:
            event["kind"] = rng.choice(["explosion", "", "Pickup", 1, None])
        elif variant == 1:
            del event["kind"]
        elif variant == 2:
            event[rng.choice(list(event))] = rng.choice(_WRONG_VALUES)
        elif variant == 3:
            event = {
                "kind": "pickup",
                "asset": event["asset"],
                "ts": event["ts"],
                "load_id": "l",
                "compartment": "1",
                "volume_l": rng.choice([-1.0, 1e308, 0.0]),
                "source_site": "farm-01",
                "source_asset": "tank-1",
            }
        elif variant == 4:
            event = {
                "kind": "product_change",
                "asset": event["asset"],
                "ts": event["ts"],
                "product": "p",
                "fat_pct": rng.choice([101.0, -0.1, 100.0, 1e-300]),
            }
        elif variant == 5:
            event["asset"] = f"unknown-{rng.randrange(10**6)}"
        elif variant == 6 and rng.random() < 0.02:
            batch["events"] = [event] * 10_001  # one over the contract's bound
            return self._topic(batch), _encode(batch)
        else:
            batch["events"] = rng.choice([{}, "cip", [None], [[]], event])
            return self._topic(batch), _encode(batch)
        batch["events"] = [event]
        return self._topic(batch), _encode(batch)

    def _garbage(self, gateway: _Gateway, batch: dict[str, Any]) -> tuple[str, bytes]:
        rng = self._rng
        topic = self._topic(batch)
        payload = _encode(batch)
        variant = rng.randrange(12)
        garbage: list[Callable[[], bytes]] = [
            lambda: b"",
            lambda: b" \t\r ",
            lambda: rng.choice([b"null", b"[]", b"{}", b"1", b'"x"', b"true", b"[1,2]"]),
            lambda: rng.randbytes(rng.randint(1, 300)),
            lambda: b"\xef\xbb\xbf" + payload,  # a UTF-8 byte order mark
            lambda: json.dumps(batch, default=str).encode("utf-16"),
            lambda: gzip.compress(payload, mtime=0),
            lambda: payload + b"garbage",
            lambda: payload + payload,
            lambda: json.dumps(json.loads(payload), indent=2).encode(),  # newlines inside
            lambda: payload + b"\n" + payload,
            lambda: b"\x00" * rng.randint(1, 100),
        ]
        return topic, garbage[variant]()

    def _payload_10mb(self, gateway: _Gateway, batch: dict[str, Any]) -> tuple[str, bytes]:
        rng = self._rng
        topic = self._topic(batch)
        variant = rng.randrange(5)
        if variant == 0:
            batch["padding"] = "x" * TEN_MB
        elif variant == 1:
            return topic, b" " * TEN_MB + _encode(batch)
        elif variant == 2:
            return topic, rng.randbytes(TEN_MB)
        elif variant == 3:
            batch["readings"] = self._many_readings(gateway, TEN_MB // 80)
        elif batch["readings"]:
            batch["readings"][0]["channel"] = "c" * TEN_MB
        else:
            batch["padding"] = "c" * TEN_MB
        return topic, _encode(batch)

    def _readings_100k(self, gateway: _Gateway, batch: dict[str, Any]) -> tuple[str, bytes]:
        count = self._rng.choice([100_000, 100_000, 50_000])
        batch["readings"] = self._many_readings(gateway, count)
        return self._topic(batch), _encode(batch)

    def _many_readings(self, gateway: _Gateway, count: int) -> list[dict[str, Any]]:
        """A gateway's backlog: ``count`` readings of its channels at 1 Hz, ending now."""
        channels = gateway.channels
        seconds = -(-count // len(channels))
        first = self.now_ms - seconds * 1000
        return [
            {
                "asset": c.asset,
                "channel": c.channel,
                "value": c.typical,
                "unit": c.unit,
                "ts": first + (n // len(channels)) * 1000,
            }
            for n, c in zip(range(count), itertools.cycle(channels), strict=False)
        ]


def _schedule(total: int) -> dict[int, str]:
    """Where the scheduled classes go: spread evenly over the run."""
    placed: dict[int, str] = {}
    for offset, (name, (every, least)) in enumerate(SCHEDULED.items()):
        count = max(least, total // every) if total else 0
        for k in range(count):
            index = min(total - 1, int((k + 0.5) * total / count) + offset)
            placed[index] = name
    return placed


# -- the runner --------------------------------------------------------------------------------


@dataclass(slots=True)
class Crash:
    """One exception out of a runtime, with what caused it."""

    path: str  # "live" or "replay"
    stage: str  # handle, tick, flush, finish, close
    mutation: str
    index: int
    error: str
    message: str
    where: str
    saved: Path | None = None


class CrashBook:
    """Counts exceptions by (path, type, where raised) and saves the first few payloads of each
    (with the payloads before them, see the module's docstring)."""

    def __init__(self, directory: Path | None, keep_per_kind: int = 3) -> None:
        self.directory = directory
        self.keep = keep_per_kind
        self.kinds: Counter[tuple[str, str, str]] = Counter()
        self.examples: list[Crash] = []
        self.total = 0
        self.by_mutation: Counter[tuple[str, str]] = Counter()
        # a judgement can raise while a later payload is handled: the ones before go along
        self._recent: dict[str, deque[bytes]] = {}

    def remember(self, path: str, payload: bytes) -> None:
        """Keep ``payload`` among the last few of ``path``, saved beside a crash (not the huge
        ones: they would count in the memory measured)."""
        if len(payload) >= 1_000_000:
            return
        recent = self._recent.get(path)
        if recent is None:
            recent = self._recent[path] = deque(maxlen=200)
        recent.append(payload)

    def record(self, path: str, stage: str, item: Fuzzed | None, exc: BaseException) -> None:
        """Count ``exc`` (raised on ``path`` while at ``stage`` of ``item``) and save the payload
        when its kind is new enough."""
        self.total += 1
        mutation = item.mutation if item is not None else "-"
        index = item.index if item is not None else -1
        self.by_mutation[(path, mutation)] += 1
        where = _where(exc)
        kind = (path, type(exc).__name__, where)
        self.kinds[kind] += 1
        if self.kinds[kind] > self.keep:
            return
        crash = Crash(path, stage, mutation, index, type(exc).__name__, str(exc)[:300], where)
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            stem = f"{path}-{type(exc).__name__}-{mutation}-{index}"
            payload = item.payload if item is not None else b""
            (self.directory / f"{stem}.payload").write_bytes(payload)
            before = b"".join(p + b"\n" for p in self._recent.get(path, ()))
            (self.directory / f"{stem}.context.jsonl").write_bytes(before)
            details = "".join(traceback.format_exception(exc))
            (self.directory / f"{stem}.txt").write_text(
                f"path: {path} ({stage})\nmutation: {mutation}\nindex: {index}\n"
                f"topic: {item.topic if item else ''!r}\npayload bytes: {len(payload)}\n"
                f"received_ms: {item.received_ms if item else '-'}\n\n{details}",
                encoding="utf-8",
                errors="backslashreplace",
            )
            crash.saved = self.directory / f"{stem}.payload"
        self.examples.append(crash)

    def count(self, path: str) -> int:
        """Exceptions out of ``path``."""
        return sum(n for (where, _, _), n in self.kinds.items() if where == path)

    def guard(
        self, path: str, stage: str, item: Fuzzed | None, action: Callable[[], object]
    ) -> None:
        """Run ``action``; record what it raises."""
        try:
            action()
        except Exception as exc:
            self.record(path, stage, item, exc)


def _where(exc: BaseException) -> str:
    """The innermost frame of MilkGuard's own code that the exception passed through."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/stream/" in f.filename or "/milkguard/" in f.filename]
    if not frames:
        return "?"
    frame = (ours or frames)[-1]
    short = "/".join(Path(frame.filename).parts[-2:])
    return f"{short}:{frame.lineno} in {frame.name}"


@dataclass(slots=True)
class PathResult:
    """What one path (live or replay) was fed and what its counters say."""

    name: str
    messages_fed: int = 0
    readings_fed: int = 0
    counters: dict[str, int] = field(default_factory=dict)
    crashes: int = 0
    broken: list[str] = field(default_factory=list)
    seconds: float = 0.0
    rss_start_mb: float = 0.0
    rss_peak_mb: float = 0.0
    rss_end_mb: float = 0.0
    rss_tenth_mb: float = 0.0  # once a tenth was fed: growth after it is what does not level off


@dataclass(slots=True)
class CommandResult:
    """The real ``milkguard replay`` command on the fuzzed file."""

    exit_code: int
    seconds: float
    summary: dict[str, int]
    stderr_tail: str
    rss_peak_mb: float
    broken: list[str]


@dataclass(slots=True)
class MutationTally:
    """Payloads and readings fed per mutation class."""

    payloads: int = 0
    readings: int = 0
    bytes: int = 0

    def add(self, item: Fuzzed) -> None:
        """Count one payload of the class."""
        self.payloads += 1
        self.readings += item.readings
        self.bytes += len(item.payload)


@dataclass(slots=True)
class FuzzReport:
    """Everything a fuzz run found."""

    seed: int
    payloads: int
    plan: str
    by_mutation: dict[str, MutationTally]
    live: PathResult
    replay: PathResult | None
    command: CommandResult | None
    crashes: CrashBook
    log_errors: int

    @property
    def broken(self) -> list[str]:
        """Every invariant that does not hold, by path."""
        found = [f"live: {b}" for b in self.live.broken]
        if self.replay is not None:
            found += [f"replay: {b}" for b in self.replay.broken]
        if self.command is not None:
            found += [f"milkguard replay: {b}" for b in self.command.broken]
        return found

    @property
    def ok(self) -> bool:
        """No crash and every invariant holds."""
        return self.crashes.total == 0 and not self.broken

    def tables(self) -> list[Table]:
        """The run as rich tables: classes, paths and counters, crashes."""
        classes = Table(
            title=f"fuzz: {self.payloads:,} payloads, seed {self.seed}, plan {self.plan}",
            title_justify="left",
        )
        for column in ("mutation", "payloads", "readings", "MB", "crashes live", "crashes replay"):
            classes.add_column(column, justify="left" if column == "mutation" else "right")
        for name, tally in sorted(self.by_mutation.items(), key=lambda kv: -kv[1].payloads):
            classes.add_row(
                name,
                f"{tally.payloads:,}",
                f"{tally.readings:,}",
                f"{tally.bytes / 1e6:,.1f}",
                f"{self.crashes.by_mutation[('live', name)]:,}",
                f"{self.crashes.by_mutation[('replay', name)]:,}",
            )
        paths = Table(title="paths", title_justify="left")
        paths.add_column("measure")
        results = [r for r in (self.live, self.replay) if r is not None]
        for result in results:
            paths.add_column(result.name, justify="right")
        rows: list[tuple[str, Callable[[PathResult], str]]] = [
            ("messages fed", lambda r: f"{r.messages_fed:,}"),
            ("readings fed", lambda r: f"{r.readings_fed:,}"),
            *[
                (n, (lambda r, n=n: f"{r.counters[n]:,}" if n in r.counters else "missing"))
                for n in COUNTERS
            ],
            ("crashes", lambda r: f"{r.crashes:,}"),
            ("invariants", lambda r: "hold" if not r.broken else f"{len(r.broken)} broken"),
            ("seconds", lambda r: f"{r.seconds:,.1f}"),
            ("payloads/s", lambda r: f"{r.messages_fed / r.seconds:,.0f}" if r.seconds else "-"),
            (
                "RSS MB at start / 10 % / end",
                lambda r: f"{r.rss_start_mb:,.0f} / {r.rss_tenth_mb:,.0f} / {r.rss_end_mb:,.0f}",
            ),
            ("peak RSS MB of the process so far", lambda r: f"{r.rss_peak_mb:,.0f}"),
        ]
        for label, cell in rows:
            paths.add_row(label, *(cell(r) for r in results))
        paths.caption = f"log records that could not be formatted: {self.log_errors:,}"
        tables = [classes, paths]
        if self.command is not None:
            command = Table(title="milkguard replay (subprocess)", title_justify="left")
            command.add_column("measure")
            command.add_column("value", justify="right")
            command.add_row("exit status", str(self.command.exit_code))
            for key, value in self.command.summary.items():
                command.add_row(key, f"{value:,}")
            command.add_row("seconds", f"{self.command.seconds:,.1f}")
            command.add_row("peak RSS MB", f"{self.command.rss_peak_mb:,.0f}")
            tables.append(command)
        if self.crashes.total:
            crashes = Table(title=f"crashes: {self.crashes.total:,}", title_justify="left")
            for column in ("path", "exception", "raised at", "count"):
                crashes.add_column(column, justify="right" if column == "count" else "left")
            for (path, error, where), count in self.crashes.kinds.most_common():
                crashes.add_row(path, error, where, f"{count:,}")
            tables.append(crashes)
        return tables

    def problems(self) -> str:
        """Crashes and broken invariants as text, for a failing test."""
        lines = [
            f"{count} x {path} {error} at {where}"
            for (path, error, where), count in self.crashes.kinds.most_common()
        ]
        lines += [
            f"example: {c.path} {c.error} ({c.mutation} #{c.index}): {c.message[:160]!r} "
            f"saved {c.saved}"
            for c in self.crashes.examples[:20]
        ]
        lines += self.broken
        return "\n".join(lines)


def check_counters(
    counters: object, messages_fed: int, readings_fed: int
) -> tuple[dict[str, int], list[str]]:
    """The counters of an ingest, and every invariant of them that does not hold."""
    values = {name: int(getattr(counters, name)) for name in COUNTERS if hasattr(counters, name)}
    broken: list[str] = []
    missing = [name for name in COUNTERS if name not in values]
    if missing:
        broken.append(f"IngestCounters has no {', '.join(missing)}")
    if values.get("messages") != messages_fed:
        broken.append(f"messages {values.get('messages')} != {messages_fed} fed")
    if {"batches", "statuses", "duplicates", "rejected_payloads", "messages"} <= values.keys():
        outcome = sum(values[n] for n in ("batches", "statuses", "duplicates", "rejected_payloads"))
        if outcome != values["messages"]:
            broken.append(
                f"batches + statuses + duplicates + rejected_payloads = {outcome:,} "
                f"!= messages {values['messages']:,}"
            )
    per_reading = ("readings", "readings_duplicate", "readings_in_rejected_payloads")
    if set(per_reading) <= values.keys():
        counted = sum(values[n] for n in per_reading)
        if counted != readings_fed:
            broken.append(
                f"readings + readings_duplicate + readings_in_rejected_payloads = {counted:,} "
                f"!= {readings_fed:,} readings fed"
            )
    quarantined, rejected = values.get("readings_quarantined"), values.get("rejected_readings")
    if quarantined is not None and rejected is not None and quarantined > rejected:
        broken.append(f"readings_quarantined {quarantined:,} > rejected_readings {rejected:,}")
    return values, broken


_NON_FINITE = re.compile(r"=(?:-?inf|nan)(?=[ ,])")


def non_finite_lines(directory: Path) -> list[str]:
    """A broken invariant when line protocol under ``directory`` holds an ``inf`` or ``nan``
    field: InfluxDB refuses the whole write that carries one."""
    count, example = 0, ""
    for path in sorted(directory.glob("*.lp")):
        with path.open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                if _NON_FINITE.search(line):
                    count += 1
                    example = example or line.strip()[:200]
    if not count:
        return []
    return [f"{count:,} lines of line protocol hold a non-finite field, e.g. {example!r}"]


class _LogTally(logging.Handler):
    """Formats every record as ``milkguard run`` would, writes nothing, counts failures."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(KeyValueFormatter())
        self.errors = 0

    def emit(self, record: logging.LogRecord) -> None:
        """Format the record (stderr would escape what UTF-8 cannot carry)."""
        try:
            self.format(record).encode("utf-8", "backslashreplace")
        except Exception:
            self.errors += 1


@contextlib.contextmanager
def _logs_formatted_and_dropped() -> Iterator[_LogTally]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    tally = _LogTally()
    root.handlers[:] = [tally]
    root.setLevel(logging.INFO)
    try:
        yield tally
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


class _Rss:
    """Samples a process's resident memory (this one by default) and keeps the peak, in MB."""

    def __init__(self, pid: int | None = None) -> None:
        try:
            import psutil  # noqa: PLC0415 - a benchmark dependency (dev extra), not the stream's
        except ImportError as exc:
            raise ConfigError(
                "the fuzz run measures memory with psutil, which is not installed: "
                "pip install psutil (it comes with the dev extra)"
            ) from exc

        self.peak = 0.0
        self.start = 0.0
        try:
            self._process: Any = psutil.Process(pid)
        except psutil.NoSuchProcess:
            self._process = None  # ended already: nothing to sample
            return
        self.start = self.sample()

    def sample(self) -> float:
        """The resident memory now (0 once the process has ended); the peak also takes the
        kernel's high-water mark where there is one (Linux), so a spike between two samples
        counts."""
        if self._process is None:
            return 0.0
        try:
            rss = float(self._process.memory_info().rss) / 1e6
        except Exception:  # the process has ended: nothing to sample
            return 0.0
        self.peak = max(self.peak, rss, high_water_mb(self._process.pid))
        return rss


def high_water_mb(pid: int | None = None) -> float:
    """The most resident memory a process has had (Linux ``VmHWM``), in MB; 0 where unknown."""
    status = Path(f"/proc/{pid or 'self'}/status")
    try:
        text = status.read_text(encoding="ascii", errors="replace")
    except OSError:
        return 0.0
    found = re.search(r"^VmHWM:\s+(\d+) kB", text, re.MULTILINE)
    return int(found.group(1)) * 1024 / 1e6 if found else 0.0


Progress = Callable[[str, int, int], None]


@dataclass(frozen=True, slots=True)
class _Run:
    """What both paths share."""

    loaded: LoadedPlan
    work_dir: Path
    devnull: IO[str]
    book: CrashBook
    progress: Progress


@dataclass(frozen=True, slots=True)
class _ReplayInput:
    """The fuzzed file as replay reads it: its lines, their readings, and where each came from."""

    path: Path
    lines: int
    readings: int
    origins: array[int]  # payload index of each line
    kinds: array[int]  # mutation class (index into MUTATIONS then SCHEDULED) of each payload


def run(
    payloads: int = 1_000_000,
    *,
    seed: int = 1,
    plan: Path | None = None,
    replay: bool = True,
    crash_dir: Path | None = None,
    work_dir: Path | None = None,
    progress: Progress | None = None,
    skip: frozenset[str] = frozenset(),
) -> FuzzReport:
    """Generate ``payloads`` fuzzed messages and feed them through the live path and replay.

    ``skip`` leaves mutation classes out (e.g. ``huge_seq``, which locks a gateway out until
    sequence numbers are handled, hiding what its later batches would find).
    """
    unknown = skip - {*MUTATIONS, *SCHEDULED}
    if unknown:
        raise ConfigError(
            f"unknown mutation class {', '.join(sorted(unknown))}; "
            f"the classes are {', '.join([*MUTATIONS, *SCHEDULED])}"
        )
    plan_path = plan or default_plan()
    loaded = load_plan(plan_path)
    with contextlib.ExitStack() as stack:
        if work_dir is None:
            work_dir = Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="milkguard-fuzz-"))
            )
        work_dir.mkdir(parents=True, exist_ok=True)
        tally = stack.enter_context(_logs_formatted_and_dropped())
        devnull = stack.enter_context(Path(os.devnull).open("w", encoding="utf-8"))
        shared = _Run(
            loaded,
            work_dir,
            devnull,
            CrashBook(crash_dir),
            progress or (lambda stage, done, total: None),
        )
        by_mutation = {name: MutationTally() for name in [*MUTATIONS, *SCHEDULED]}
        fuzzer = PayloadFuzzer(loaded, seed=seed, total=payloads, skip=skip)
        live, fed = _run_live(shared, fuzzer, payloads, by_mutation, keep_lines=replay)
        replay_result = command = None
        if replay:
            replay_result, command = _run_replay(shared, fed)
        return FuzzReport(
            seed,
            payloads,
            str(plan_path),
            by_mutation,
            live,
            replay_result,
            command,
            shared.book,
            tally.errors,
        )


def default_plan() -> Path:
    """The example plant plan: every rule kind of the engine, so every kind's arithmetic is hit."""
    return Path(str(resources.files("stream") / "plans" / "example-us-plant.yaml"))


def _live_ingest(shared: _Run) -> Ingest:
    """The ingest of ``milkguard run`` with its file and console sinks (no MQTT republishing)."""
    data_dir = shared.work_dir / "live"
    return Ingest(
        Engine(shared.loaded),
        FanOutTimeSeriesSink([LineProtocolFileSink(data_dir)]),
        FanOutDeviationSink(
            [
                JsonlDeviationSink(data_dir / "deviations.jsonl"),
                ConsoleDeviationSink(Console(file=shared.devnull)),
            ]
        ),
        FanOutDeadLetterSink([JsonlDeadLetterSink(data_dir / "deadletter.jsonl")]),
    )


def _run_live(
    shared: _Run,
    fuzzer: PayloadFuzzer,
    payloads: int,
    by_mutation: dict[str, MutationTally],
    *,
    keep_lines: bool,
) -> tuple[PathResult, _ReplayInput]:
    """Feed every payload to the live ingest; write them to the replay file on the way."""
    book = shared.book
    result = PathResult("live")
    rss = _Rss()
    result.rss_start_mb = rss.start
    ingest = _live_ingest(shared)
    names = [*MUTATIONS, *SCHEDULED]
    replayed = _ReplayInput(shared.work_dir / "fuzzed.jsonl", 0, 0, array("I"), array("B"))
    lines = readings = 0
    started = time.perf_counter()
    next_flush = time.monotonic() + FLUSH_EVERY_S
    second = fuzzer.now_ms // 1000
    last: Fuzzed | None = None
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(replayed.path.open("wb")) if keep_lines else None
        for item in fuzzer.generate(payloads):
            by_mutation[item.mutation].add(item)
            result.readings_fed += item.readings
            if item.received_ms // 1000 != second:
                # the live loop ticks the engine with the clock whenever its queue is idle
                now = second * 1000 + 999
                book.guard("live", "tick", last, partial(ingest.tick, now))
                second = item.received_ms // 1000
            book.remember("live", item.payload)
            book.guard(
                "live",
                "handle",
                item,
                partial(ingest.handle, item.topic, item.payload, item.received_ms),
            )
            last = item
            if out is not None:
                out.write(item.payload + b"\n")
                replayed.kinds.append(names.index(item.mutation))
                for line in replay_lines(item.payload):
                    lines += 1
                    replayed.origins.append(item.index)
                    readings += item.readings if line is item.payload else readings_in(line)
            if time.monotonic() >= next_flush:
                book.guard("live", "flush", last, ingest.flush)
                next_flush = time.monotonic() + FLUSH_EVERY_S
            if item.index % 1000 == 0 or len(item.payload) > 1_000_000:
                rss.sample()
                shared.progress("live", item.index + 1, payloads)
            if item.index == payloads // 10:
                result.rss_tenth_mb = rss.sample()
        book.guard("live", "close", last, ingest.close)
    result.seconds = time.perf_counter() - started
    shared.progress("live", payloads, payloads)
    result.messages_fed = payloads
    _settle(result, book.count("live"), ingest.counters, shared.work_dir / "live", rss)
    fed = _ReplayInput(replayed.path, lines, readings, replayed.origins, replayed.kinds)
    return result, fed


def _settle(result: PathResult, crashes: int, counters: object, series: Path, rss: _Rss) -> None:
    """A path's closing figures: its crashes, its counters against what it was fed (and the
    line protocol it wrote for inf/nan), and its memory."""
    result.crashes = crashes
    result.counters, result.broken = check_counters(
        counters, result.messages_fed, result.readings_fed
    )
    result.broken += non_finite_lines(series)
    result.rss_end_mb = rss.sample()
    result.rss_peak_mb = rss.peak


def _run_replay(shared: _Run, fed: _ReplayInput) -> tuple[PathResult, CommandResult]:
    """The real command in a subprocess and, meanwhile, an ingest wired as replay wires it."""
    work_dir = shared.work_dir
    command = [
        sys.executable,
        "-m",
        "milkguard",
        "replay",
        "--plan",
        shared.loaded.path,
        str(fed.path),
        "--output",
        str(work_dir / "replay-deviations.jsonl"),
    ]
    started = time.perf_counter()
    stderr_path = work_dir / "replay-stderr.txt"
    with stderr_path.open("wb") as stderr:
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
    child_rss = _Rss(child.pid)
    watching = threading.Event()

    ended: list[float] = []

    def watch() -> None:
        while not watching.wait(0.1):
            child_rss.sample()
            if child.poll() is not None:
                ended.append(time.perf_counter())
                return

    watcher = threading.Thread(target=watch, name="fuzz-replay-rss", daemon=True)
    watcher.start()
    try:
        result = _replay_in_process(shared, fed)
        exit_code = child.wait()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        watching.set()
        watcher.join()
    shared.progress("replay", fed.lines, fed.lines)
    stderr_text = stderr_path.read_text(encoding="utf-8", errors="replace")
    summary = _replay_summary(stderr_text)
    broken: list[str] = []
    if exit_code != 0 or "Traceback" in stderr_text:
        last_line = stderr_text.strip().splitlines()[-1:] or [""]
        broken.append(f"exit status {exit_code}: {last_line[0]}")
    elif not summary:
        broken.append("no summary line on stderr")
    else:
        for key, counter in (
            ("lines", "messages"),
            ("batches", "batches"),
            ("readings", "readings"),
            ("duplicate batches", "duplicates"),
        ):
            if counter in result.counters and summary[key] != result.counters[counter]:
                broken.append(
                    f"{key} {summary[key]:,} != {result.counters[counter]:,} "
                    "judging the same lines in process"
                )
        if summary["lines"] != fed.lines:
            broken.append(f"lines {summary['lines']:,} != {fed.lines:,} non-blank lines fed")
    seconds = (ended[0] if ended else time.perf_counter()) - started
    tail = stderr_text[-2000:]
    return result, CommandResult(exit_code, seconds, summary, tail, child_rss.peak, broken)


def _replay_in_process(shared: _Run, fed: _ReplayInput) -> PathResult:
    """Judge the file as ``milkguard replay`` does (its wiring, dead letters to a file)."""
    book = shared.book
    result = PathResult("replay", fed.lines, fed.readings)
    rss = _Rss()
    result.rss_start_mb = rss.start
    names = [*MUTATIONS, *SCHEDULED]
    twin = Ingest(
        Engine(shared.loaded),
        LineProtocolFileSink(shared.work_dir / "replay-series"),
        JsonLinesDeviationWriter(shared.devnull),
        JsonlDeadLetterSink(shared.work_dir / "replay-deadletter.jsonl"),
        clock="event",
    )
    started = time.perf_counter()
    number = 0
    item: Fuzzed | None = None
    with fed.path.open("rb") as source:
        for raw in source:
            line = raw.strip()
            if not line:
                continue
            number += 1
            origin = f"{fed.path.name}:{number}"
            index = fed.origins[number - 1]
            item = Fuzzed(index, names[fed.kinds[index]], origin, line, 0, 0)
            book.remember("replay", line)
            book.guard(
                "replay",
                "handle",
                item,
                partial(twin.handle_recorded, line, origin),
            )
            if number % 10_000 == 0:
                book.guard("replay", "flush", item, twin.flush)
            if number % 1000 == 0:
                rss.sample()
                shared.progress("replay", number, fed.lines)
            if number == fed.lines // 10:
                result.rss_tenth_mb = rss.sample()
    book.guard("replay", "finish", item, twin.finish)
    book.guard("replay", "close", item, twin.close)
    result.seconds = time.perf_counter() - started
    _settle(result, book.count("replay"), twin.counters, shared.work_dir / "replay-series", rss)
    return result


_SUMMARY = re.compile(
    r"replayed ([\d,]+) lines: ([\d,]+) batches, ([\d,]+) readings, ([\d,]+) deviation changes, "
    r"([\d,]+) rejected, ([\d,]+) duplicate batches"
)


def _replay_summary(stderr: str) -> dict[str, int]:
    found = _SUMMARY.search(" ".join(stderr.split()))
    if found is None:
        return {}
    keys = ("lines", "batches", "readings", "deviation changes", "rejected", "duplicate batches")
    return {k: int(v.replace(",", "")) for k, v in zip(keys, found.groups(), strict=True)}


def mqtt_publishable(topic: str) -> bool:
    """True when an MQTT broker takes a publication on ``topic``: not empty, no wildcards, under
    64 KB, and no control characters (Mosquitto disconnects a client that sends them)."""
    return (
        bool(topic)
        and len(topic.encode()) < 65_536
        and not any(c in "+#" or ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in topic)
    )


__all__ = [
    "COUNTERS",
    "MUTATIONS",
    "SCHEDULED",
    "Crash",
    "CrashBook",
    "FuzzReport",
    "Fuzzed",
    "PayloadFuzzer",
    "check_counters",
    "default_plan",
    "mqtt_publishable",
    "non_finite_lines",
    "readings_in",
    "replay_lines",
    "run",
]

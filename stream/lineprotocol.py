"""InfluxDB line protocol for readings, events and deviations, built as strings.

Point objects of influxdb-client are the bottleneck on hot paths (measured here: ~35k points/s
against ~65k lines/s as strings), so lines are formatted directly. Timestamps are nanoseconds,
the protocol's default precision, so files import with any InfluxDB tool unchanged.

No line ever carries a non-finite float (InfluxDB refuses ``inf`` and ``nan``, and with them
the whole chunk of lines): readings are finite by the contract's plausible bounds, a
deviation's non-finite figures are left out of its line, and a non-finite derived value gives
no line (:func:`derived_line` returns None).

Schema (low-cardinality tags, values in fields):

    reading,site=S,asset=A,channel=C,unit=U,gateway=G value=<float> <ts>
    event,site=S,asset=A,kind=K,gateway=G detail="<json>" <ts>
    deviation,site=S,asset=A,rule=R,severity=V,change=opened|closed peak=<f>,time_beyond_s=<f>,
        degree_minutes=<f>,open=<bool>,id="<id>" <start ts>
    derived,site=S,asset=A,rule=R,quantity=holding_time_s|f0_min value=<float> <ts>
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from itertools import repeat
from operator import attrgetter
from typing import cast

import msgspec

from milkguard.contract.v1 import Event, Reading
from stream.engine.deviation import DeviationChange
from stream.engine.htst import Derived

_TAG_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n"})
_MEASUREMENT_ESCAPES = str.maketrans({",": r"\,", " ": r"\ ", "\n": r"\n"})


def escape_tag(value: str) -> str:
    """Escape a tag key or value (commas, equals signs, spaces)."""
    return value.translate(_TAG_ESCAPES)


def string_field(value: str) -> str:
    """A quoted string field value."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def reading_line(site: str, gateway: str, reading: Reading) -> str:
    """One reading. Ids are already tag-safe by the wire contract's pattern; its value is
    finite by the contract's plausible bounds, which ingest applies before it gets here."""
    prefix = reading_prefix(site, gateway, reading.asset, reading.channel, reading.unit)
    return f"{prefix}{reading.value!r} {reading.ts}000000"


def reading_prefix(site: str, gateway: str, asset: str, channel: str, unit: str) -> str:
    """A reading's line up to its value: what every reading of one channel shares."""
    return (
        f"reading,site={site},asset={asset},channel={channel},"
        f"unit={escape_tag(unit)},gateway={gateway} value="
    )


_KEY = attrgetter("asset", "channel", "unit")
_VALUE = attrgetter("value")
_TS = attrgetter("ts")
#: gateways whose layout is remembered; beyond, a gateway's prefixes are built per batch
_MAX_LAYOUTS = 20_000
#: distinct values whose text is remembered (sensors have a resolution, so values recur)
_MAX_VALUES = 65_536


class ReadingLines:
    """Lines of readings, built with as little Python per reading as a line allows.

    A gateway mostly sends the same channels in the same order: the tags of each of its
    readings (everything before the value) are formatted once per layout and reused while the
    layout holds. A value's text is remembered (a sensor's resolution makes values recur: a
    thermometer reading to 0.01 degC between 2 and 8 degC has 600), and so is a timestamp's,
    which all channels of one sampling instant share. What is left per reading is one
    concatenation of three strings, in C.
    """

    __slots__ = ("_layouts", "_values")

    def __init__(self) -> None:
        self._layouts: dict[tuple[str, str], tuple[list[tuple[str, str, str]], list[str]]] = {}
        self._values: dict[float, str] = {}

    def lines(
        self,
        site: str,
        gateway: str,
        readings: list[Reading],
        layout: list[tuple[str, str, str]] | None = None,
        *,
        values: list[float] | None = None,
        stamps: list[int] | None = None,
    ) -> list[str]:
        """One line per reading, in order; the same lines :func:`reading_line` makes.

        ``layout``: the readings' (asset, channel, unit) keys when the caller has them already,
        as a list that stays the same object while the gateway's layout holds (the engine's
        routing gives one): then the readings' keys need not be compared again. ``values`` and
        ``stamps``: the readings' values and timestamps, when the caller has them as lists.
        """
        if not readings:
            return []
        cached = self._layouts.get((site, gateway))
        if layout is not None and cached is not None and cached[0] is layout:
            prefixes = cached[1]
        else:
            keys = layout if layout is not None else list(map(_KEY, readings))
            if cached is not None and cached[0] == keys:
                prefixes = cached[1]
            else:
                prefixes = [reading_prefix(site, gateway, *key) for key in keys]
            if cached is not None or len(self._layouts) < _MAX_LAYOUTS:
                self._layouts[(site, gateway)] = (keys, prefixes)
        if values is None:
            values = list(map(_VALUE, readings))
        texts = list(map(self._values.get, values))
        if None in texts:
            self._learn(values, texts)
        if stamps is None:
            stamps = list(map(_TS, readings))
        # a batch's readings share few instants (often one): each one's text is made once
        first = stamps[0]
        if stamps.count(first) == len(stamps):
            stamp_texts: Iterable[str] = repeat(f" {first}000000", len(stamps))
        else:
            stamp_text = {stamp: f" {stamp}000000" for stamp in set(stamps)}
            stamp_texts = map(stamp_text.__getitem__, stamps)
        filled = cast(list[str], texts)
        return list(map("".join, zip(prefixes, filled, stamp_texts, strict=True)))

    def _learn(self, values: list[float], texts: list[str | None]) -> None:
        """Fill in the texts of values not seen before, remembering them."""
        known = self._values
        for index, seen in enumerate(texts):
            if seen is None:
                value = values[index]
                texts[index] = known_text = repr(value)
                if not value:
                    continue  # -0.0 equals 0.0 as a key, but its text differs
                if len(known) >= _MAX_VALUES:
                    known.clear()  # values drift (seasons, new sensors): start over
                known[value] = known_text


def event_line(site: str, gateway: str, event: Event) -> str:
    """One discrete event, its details as a JSON string field."""
    kind = type(event).__struct_config__.tag
    detail = msgspec.json.encode(event).decode()
    return (
        f"event,site={site},asset={event.asset},kind={kind},gateway={gateway} "
        f"detail={string_field(detail)} {event.ts}000000"
    )


def deviation_line(change: DeviationChange) -> str:
    """A deviation opening or closing, stamped at the deviation's start."""
    d = change.deviation
    figures = "".join(
        f"{name}={value!r},"
        for name, value in (
            ("peak", d.peak),
            ("time_beyond_s", d.time_beyond_s),
            ("degree_minutes", d.degree_minutes),
        )
        if value is not None and math.isfinite(value)
    )
    return (
        f"deviation,site={d.site},asset={d.asset},rule={escape_tag(d.rule_id)},kind={d.kind},"
        f"severity={d.severity},change={change.kind} "
        f"{figures}open={'true' if d.status == 'open' else 'false'},"
        f"late={'true' if d.detected_late else 'false'},id={string_field(d.id)} "
        f"{d.start_ms}000000"
    )


def derived_line(derived: Derived) -> str | None:
    """A value computed while judging: a holding tube's fastest-particle time, a UHT F0; None
    when the value is not finite (no flow: an infinite holding time is no point to store)."""
    if not math.isfinite(derived.value):
        return None
    return (
        f"derived,site={derived.site},asset={derived.asset},rule={escape_tag(derived.rule_id)},"
        f"quantity={derived.quantity} value={derived.value!r} {derived.ts}000000"
    )

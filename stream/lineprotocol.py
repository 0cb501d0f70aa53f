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
    gateway,site=S,gateway=G state="online|offline",online=<bool>,backlog=<n>i,... <ts>
    seen,site=S,gateway=G last_batch_ms=<n>i,lag_ms=<n>i <receive time>
    limit,site=S,asset=A,channel=C,rule=R,kind=K,bound=min|max value=<float> <ts>
    position,site=S,asset=A,gateway=G lat=<float>,lon=<float> <ts>

Text a gateway or a plan chose (a failing source's name, an event's note, a legal source) is
escaped for a quoted string field and cut to :data:`MAX_TEXT_CHARS` characters, far below the
64 KiB InfluxDB takes in one string field: no text can break a line or make a store refuse
the chunk it came in.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from itertools import repeat
from operator import attrgetter
from typing import cast

import msgspec

from milkguard.contract.v1 import (
    CipEnd,
    CipStart,
    Delivery,
    Event,
    GatewayStatus,
    MilkingEnd,
    MilkingStart,
    Pickup,
    ProductChange,
    Reading,
    Receipt,
    RunEnd,
    RunStart,
    SiloEmptied,
    SiloTransfer,
)
from stream.engine.deviation import Deviation, DeviationChange
from stream.engine.htst import Derived

_TAG_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n"})
_MEASUREMENT_ESCAPES = str.maketrans({",": r"\,", " ": r"\ ", "\n": r"\n"})


def escape_tag(value: str) -> str:
    """Escape a tag key or value (commas, equals signs, spaces)."""
    return value.translate(_TAG_ESCAPES)


#: The most characters of free text one string field holds (4 KB of UTF-8 at most; InfluxDB
#: refuses string fields over 64 KiB, and with them the whole chunk they came in).
MAX_TEXT_CHARS = 1_000


def string_field(value: str) -> str:
    """A quoted string field value: backslashes and quotes escaped, line breaks written as
    ``\\n`` and ``\\r`` (a raw one would end the line)."""
    return (
        '"'
        + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
        + '"'
    )


def text_field(value: str) -> str:
    """A quoted string field of free text, cut to :data:`MAX_TEXT_CHARS` characters (with a
    trailing ``...`` saying so)."""
    if len(value) > MAX_TEXT_CHARS:
        value = value[: MAX_TEXT_CHARS - 3] + "..."
    return string_field(value)


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
    """One discrete event: its details as a JSON string field, and a short human line
    (:func:`event_text`) for annotations."""
    kind = type(event).__struct_config__.tag
    detail = msgspec.json.encode(event).decode()
    return (
        f"event,site={site},asset={event.asset},kind={kind},gateway={gateway} "
        f"detail={string_field(detail)},text={text_field(event_text(event))} {event.ts}000000"
    )


def _litres(volume_l: float | None) -> str:
    return "" if volume_l is None else f" {volume_l:,.0f} L"


def event_text(event: Event) -> str:  # noqa: PLR0911 - one short line per kind of event
    """What an operator reads on an annotation: ``pickup L-12 1,200 L from farm-01/tank-1``."""
    match event:
        case MilkingStart():
            return "milking_start" + (f" {event.milking_id}" if event.milking_id else "")
        case MilkingEnd():
            named = f" {event.milking_id}" if event.milking_id else ""
            return f"milking_end{named}{_litres(event.volume_l)}"
        case Pickup():
            return (
                f"pickup {event.load_id}{_litres(event.volume_l)} from "
                f"{event.source_site}/{event.source_asset} into {event.compartment}"
            )
        case Delivery():
            return (
                f"delivery {event.load_id}{_litres(event.volume_l)} from {event.compartment} "
                f"to {event.destination_site}"
            )
        case ProductChange():
            traits = [f"{event.fat_pct:g} % fat"]
            if event.total_solids_pct is not None:
                traits.append(f"{event.total_solids_pct:g} % solids")
            traits += [name for name in ("sweetened", "condensed") if getattr(event, name)]
            return f"product_change: {event.product} ({', '.join(traits)})"
        case RunStart() | RunEnd():
            kind = "run_start" if isinstance(event, RunStart) else "run_end"
            lot = f" lot {event.lot}" if isinstance(event, RunStart) and event.lot else ""
            silos = ", ".join(f"{d.silo}{_litres(d.volume_l)}" for d in event.sources)
            return f"{kind} {event.run_id}{lot}" + (f" from {silos}" if silos else "")
        case Receipt():
            about = [
                part
                for part in (
                    f"truck {event.truck}" if event.truck else "",
                    event.compartment or "",
                    f"{event.temperature_c:g} degC" if event.temperature_c is not None else "",
                )
                if part
            ]
            extra = f" ({', '.join(about)})" if about else ""
            return (
                f"receipt {event.load_id}{_litres(event.volume_l)} into {event.destination}{extra}"
            )
        case SiloTransfer():
            named = f" {event.transfer_id}" if event.transfer_id else ""
            return f"silo_transfer{named}{_litres(event.volume_l)} to {event.destination}"
        case SiloEmptied():
            return "silo_emptied" + (f": {event.reason}" if event.reason else "")
        case CipStart():
            return "cip_start" + (f": {event.program}" if event.program else "")
        case CipEnd():
            return "cip_end"


def deviation_line(change: DeviationChange) -> str:
    """A deviation opening or closing, stamped at the deviation's start, with its interval
    (``start_ms``, ``end_ms`` once closed, ``detected_ms``), the limit it is beyond, the value
    that opened it and the limit's legal source."""
    d = change.deviation
    figures = _figures(
        ("peak", d.peak), ("time_beyond_s", d.time_beyond_s), ("degree_minutes", d.degree_minutes)
    )
    applied = _figures(("limit", breached_bound(d)), ("value", d.value))
    end = f"end_ms={d.end_ms}i," if d.end_ms is not None else ""
    return (
        f"deviation,site={d.site},asset={d.asset},rule={escape_tag(d.rule_id)},kind={d.kind},"
        f"severity={d.severity},change={change.kind} "
        f"{figures}open={'true' if d.status == 'open' else 'false'},"
        f"late={'true' if d.detected_late else 'false'},id={string_field(d.id)},"
        f"{applied}start_ms={d.start_ms}i,{end}detected_ms={d.detected_ms}i,"
        f"source={text_field(d.limit.source)} {d.start_ms}000000"
    )


def _figures(*named: tuple[str, float | None]) -> str:
    """``name=value,`` for each figure that is known and finite."""
    return "".join(
        f"{name}={value!r}," for name, value in named if value is not None and math.isfinite(value)
    )


def breached_bound(deviation: Deviation) -> float | None:
    """The bound of the deviation's limit its peak is beyond (the maximum of a band when the
    peak is not beyond either), or None when its limit has no bound (monitoring lost)."""
    low, high, peak = deviation.limit.min, deviation.limit.max, deviation.peak
    if low is not None and (high is None or (peak is not None and peak < low)):
        return low
    return high


def derived_line(derived: Derived) -> str | None:
    """A value computed while judging: a holding tube's fastest-particle time, a UHT F0; None
    when the value is not finite (no flow: an infinite holding time is no point to store)."""
    if not math.isfinite(derived.value):
        return None
    return (
        f"derived,site={derived.site},asset={derived.asset},rule={escape_tag(derived.rule_id)},"
        f"quantity={derived.quantity} value={derived.value!r} {derived.ts}000000"
    )


def _flag(value: bool) -> str:
    return "true" if value else "false"


def gateway_line(status: GatewayStatus, stamp_ms: int) -> str:
    """A gateway's status message as one point stamped at ``stamp_ms``: its state, outbox,
    alarm, clock and failing sources (``failing``: their names, sorted, comma-separated, cut
    to :data:`MAX_TEXT_CHARS`). Ids are tag-safe by the contract's pattern; every number the
    contract lets through is finite."""
    failing = sorted(name for name, source in status.sources.items() if not source.ok)
    clock = status.clock
    clock_fields = ""
    if clock is not None:
        if clock.offset_ms is not None:
            clock_fields += f"clock_offset_ms={float(clock.offset_ms)!r},"
        if clock.synced is not None:
            clock_fields += f"clock_synced={_flag(clock.synced)},"
    return (
        f"gateway,site={status.site},gateway={status.gateway} "
        f"state={string_field(status.state)},online={_flag(status.state == 'online')},"
        f"backlog={status.backlog}i,outbox_bytes={status.outbox_bytes}i,"
        f"outbox_nearly_full={_flag(status.outbox_nearly_full)},"
        f"dropped_readings={status.dropped_readings}i,"
        f"refused_readings={status.refused_readings}i,alarm={_flag(status.alarm)},"
        f"{clock_fields}clock_source={string_field(clock.source if clock else 'none')},"
        f"failing_sources={len(failing)}i,failing={text_field(','.join(failing))} "
        f"{stamp_ms}000000"
    )


def seen_line(site: str, gateway: str, received_ms: int, newest_ms: int) -> str:
    """A gateway heard from at ``received_ms``, its newest data stamped ``newest_ms``."""
    return (
        f"seen,site={site},gateway={gateway} last_batch_ms={received_ms}i,"
        f"lag_ms={received_ms - newest_ms}i {received_ms}000000"
    )


def limit_prefix(
    site: str, asset: str, channel: str, *, rule: str, kind: str, bound: str, value: float
) -> str:
    """A limit's line up to its timestamp (the same at every writing)."""
    return (
        f"limit,site={site},asset={asset},channel={escape_tag(channel)},rule={escape_tag(rule)},"
        f"kind={kind},bound={bound} value={float(value)!r} "
    )


def position_line(site: str, asset: str, gateway: str, *, lat: float, lon: float, ts: int) -> str:
    """A vehicle's position: its latitude and longitude channels of one instant joined."""
    return (
        f"position,site={site},asset={asset},gateway={gateway} lat={lat!r},lon={lon!r} {ts}000000"
    )

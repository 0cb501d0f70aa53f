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
    return (
        f"reading,site={site},asset={reading.asset},channel={reading.channel},"
        f"unit={escape_tag(reading.unit)},gateway={gateway} "
        f"value={reading.value!r} {reading.ts}000000"
    )


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

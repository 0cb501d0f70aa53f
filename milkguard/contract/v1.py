"""Wire contract v1: what a gateway publishes over MQTT, defined once.

Topics (the version is part of the topic, so v2 can run beside v1):

    milkguard/v1/gw/{site}/{gateway}/batch     a Batch from one gateway (QoS 1)
    milkguard/v1/gw/{site}/{gateway}/status    the gateway's online/offline state (retained)
    milkguard/v1/deadletter/{site}/{gateway}   what the stream rejected, with the reason
    milkguard/v1/deviations/{site}/{asset}     HACCP deviations as they open and close

A payload is one JSON object, a :class:`Batch`: readings and discrete events from one gateway,
with a sequence number that only grows (per gateway, across restarts) so the stream can drop
duplicates. Timestamps are event time: integer milliseconds since 1970-01-01T00:00:00Z, taken
when the sensor was sampled, not when the batch was sent.

msgspec decodes and validates a batch in one pass without building a pydantic model per reading;
importing this module pulls in msgspec and nothing heavier. The JSON Schema for device makers is
generated from these types and committed as ``wire-v1.schema.json``.
"""

from __future__ import annotations

import contextlib
import json
import re
from typing import Annotated, Any, Final, Literal, TypeVar

import msgspec

VERSION: Final = 1
TOPIC_ROOT: Final = "milkguard/v1"

#: Ids of sites, gateways, assets and channels: safe in MQTT topics, InfluxDB tags and file names.
ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


def whole_text(pattern: str) -> str:
    r"""``pattern`` (``^...$``, as JSON Schema publishes it) for Python's ``re``, whose ``$`` also
    matches before a final newline: msgspec searches with ``re``, so ``"tank-1\n"`` would pass
    as an id. ``\Z`` is the end of the text only."""
    return pattern.removesuffix("$") + r"\Z"


def published(node: Any) -> Any:
    """A generated JSON Schema with every :func:`whole_text` pattern as JSON Schema writes it
    (``$``: there, the end of the text only)."""
    if isinstance(node, dict):
        return {
            key: (
                value.removesuffix(r"\Z") + "$"
                if key == "pattern" and isinstance(value, str) and value.endswith(r"\Z")
                else published(value)
            )
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [published(item) for item in node]
    return node


Id = Annotated[
    str,
    msgspec.Meta(
        pattern=whole_text(ID_PATTERN),
        description="Letters, digits, '_', '.', '-'; starts with a letter or digit; 1-64 chars.",
    ),
]

#: Asset and channel ids of readings. The decoder checks only their length: a regex per reading
#: would cost two thirds of decoding time (measured: 1.3M against 4.0M readings/s). The schema
#: still publishes the pattern, and the stream checks each distinct id against it once
#: (:func:`is_valid_id`), so an unsafe id is still refused.
ReadingId = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=64,
        extra_json_schema={"pattern": ID_PATTERN},
        description="Letters, digits, '_', '.', '-'; starts with a letter or digit; 1-64 chars.",
    ),
]

EPOCH_2000_MS: Final = 946_684_800_000  # 2000-01-01T00:00:00Z, the earliest valid event time
EPOCH_2100_MS: Final = 4_102_444_800_000  # 2100-01-01T00:00:00Z, the first invalid one

#: Event time in milliseconds since the Unix epoch, UTC. Bounds catch seconds-vs-ms mistakes.
EpochMs = Annotated[
    int,
    msgspec.Meta(
        ge=EPOCH_2000_MS,
        lt=EPOCH_2100_MS,
        description="Event time: milliseconds since 1970-01-01T00:00:00Z (UTC).",
    ),
]

Unit = Literal[
    "degC",  # temperature
    "%RH",  # relative humidity
    "%O2",  # residual oxygen in a can's headspace
    "%",  # other fractions (valve position, fat content)
    "L",  # volume
    "L/h",  # flow rate
    "bar",  # pressure
    "state",  # a discrete state: 1/0 (e.g. flow-diversion valve forward=1, divert=0)
    "km/h",  # vehicle speed
    "deg",  # position (latitude/longitude)
]

#: What a reading of each unit may plausibly be, inclusive. A value outside (NaN and infinity
#: included) is a broken sensor, a wrong unit or a forged payload: it is dead-lettered alone
#: (the rest of its batch is kept) and counted, and never reaches the rules. Bounds are wide on
#: purpose: beyond any dairy process, so a real excursion is always judged, never refused.
PLAUSIBLE: Final[dict[str, tuple[float, float]]] = {
    "degC": (-90.0, 400.0),  # deep freezers down to -60; steam and UHT up to ~150; fire beyond
    "%RH": (0.0, 100.0),
    "%O2": (0.0, 100.0),
    "%": (0.0, 100.0),
    "L": (0.0, 10_000_000.0),  # the largest silos hold ~500,000 L
    "L/h": (0.0, 10_000_000.0),  # the largest pasteurizers run ~100,000 L/h
    "bar": (-1.0, 2_000.0),  # full vacuum (gauge) to beyond homogenizers (~250 bar)
    "state": (0.0, 1.0),  # 1/0 (forward/divert, open/closed)
    "km/h": (0.0, 300.0),
    "deg": (-180.0, 180.0),  # latitude within +-90 and longitude within +-180
}

#: Every float the contract accepts is finite and no larger than this, so arithmetic on it
#: cannot overflow to infinity where the contract gives no tighter bound.
FINITE_MAX: Final = 1e15

_VALUE_DESCRIPTION: Final = (
    "The value in its unit. Plausible ranges (inclusive; a reading outside, or NaN or infinity, "
    "is dead-lettered alone): "
    + "; ".join(f"{unit} {low:g}..{high:g}" for unit, (low, high) in PLAUSIBLE.items())
    + "."
)

Volume = Annotated[float, msgspec.Meta(ge=0, le=10_000_000.0, description="Litres.")]
Percent = Annotated[float, msgspec.Meta(ge=0, le=100)]
Finite = Annotated[float, msgspec.Meta(ge=-FINITE_MAX, le=FINITE_MAX)]


def implausible(unit: str, value: float) -> tuple[float, float] | None:
    """The bounds ``value`` lies outside of for ``unit`` (NaN and infinity included), or None."""
    low, high = PLAUSIBLE[unit]
    return None if low <= value <= high else (low, high)


#: A free-text field of an event (a milking's id, a cleaning program): bounded, so one field
#: cannot make a line of line protocol longer than a time-series database takes (InfluxDB
#: refuses string fields over 64 KiB, and with them the whole chunk it came in).
Note = Annotated[
    str, msgspec.Meta(max_length=256, description="Free text, 256 characters at most.")
]


class Reading(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    """One sampled value of one channel of one asset.

    ``gc=False``: a reading holds only strings and numbers, so it can never be part of a reference
    cycle, and the garbage collector need not track millions of them.
    """

    asset: ReadingId
    channel: ReadingId
    value: Annotated[float, msgspec.Meta(description=_VALUE_DESCRIPTION)]
    unit: Unit
    ts: EpochMs


class _Event(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="kind"):
    """Fields every discrete event carries."""

    asset: Id
    ts: EpochMs


class MilkingStart(_Event, tag="milking_start", frozen=True):
    """Warm milk starts flowing into a farm bulk tank."""

    milking_id: Note | None = None


class MilkingEnd(_Event, tag="milking_end", frozen=True):
    """A milking into a farm bulk tank ended; ``volume_l`` is what it added."""

    milking_id: Note | None = None
    volume_l: Volume | None = None


class Pickup(_Event, tag="pickup", frozen=True):
    """A truck (``asset``) loaded milk from a farm tank into a compartment."""

    load_id: Id
    compartment: Id
    volume_l: Volume
    source_site: Id
    source_asset: Id


class Delivery(_Event, tag="delivery", frozen=True):
    """A truck (``asset``) delivered a load at a plant."""

    load_id: Id
    compartment: Id
    volume_l: Volume
    destination_site: Id


class ProductChange(_Event, tag="product_change", frozen=True):
    """A processing line switched product; the legal pasteurization minimum follows the class."""

    product: Id
    fat_pct: Percent
    total_solids_pct: Percent | None = None
    sweetened: bool = False
    condensed: bool = False


#: Arrival temperature of a load, in degC, within the plausible range of a temperature reading.
ArrivalTemperature = Annotated[
    float,
    msgspec.Meta(
        ge=PLAUSIBLE["degC"][0],
        le=PLAUSIBLE["degC"][1],
        description="degC, as measured at arrival.",
    ),
]


class Draw(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Milk a run takes from one silo: the link from a lot back to the silos (and through their
    receipts to the loads and farms) that lot genealogy and recall trace."""

    silo: Id
    volume_l: Volume | None = None


#: The silos one run draws from; bounded so one event cannot make an unbounded amount of work.
Draws = Annotated[
    tuple[Draw, ...],
    msgspec.Meta(max_length=32, description="At most 32 source silos, each named once."),
]


def _each_silo_once(sources: tuple[Draw, ...]) -> None:
    """A run names each source silo once: two volumes for one silo would make a mass balance
    ambiguous."""
    seen: set[str] = set()
    for draw in sources:
        if draw.silo in seen:
            raise ValueError(f"silo {draw.silo!r} is named twice in sources: name it once")
        seen.add(draw.silo)


def _no_silo_is_the_line(line: str, sources: tuple[Draw, ...]) -> None:
    """A run's line is not one of its own source silos: the trace from a lot back to its milk
    would loop on itself."""
    if any(draw.silo == line for draw in sources):
        raise ValueError(
            f"line {line!r} is named as one of its own sources: "
            "sources name the silos it draws from"
        )


class RunStart(_Event, tag="run_start", frozen=True):
    """A production run started on a line (``asset``).

    ``sources``: the silos it draws from, with the volume planned from each where known.
    Processing of a silo's milk begins when a run naming that silo starts."""

    run_id: Id
    lot: Id | None = None
    sources: Draws = ()

    def __post_init__(self) -> None:
        _each_silo_once(self.sources)
        _no_silo_is_the_line(self.asset, self.sources)


class RunEnd(_Event, tag="run_end", frozen=True):
    """A production run ended on a line (``asset``).

    ``sources``: the volume actually taken from each silo, where known; it replaces what the
    run's start planned for the same silo (the mass balance of a lot uses these).
    ``lot``: the lot the run produced, where it is only known at the end (else the start's).
    ``output_volume_l``: the product the run put out, the output side of the lot's mass balance
    (what went in, the sources, against what came out)."""

    run_id: Id
    sources: Draws = ()
    lot: Id | None = None
    output_volume_l: Volume | None = None

    def __post_init__(self) -> None:
        _each_silo_once(self.sources)
        _no_silo_is_the_line(self.asset, self.sources)


class Receipt(_Event, tag="receipt", frozen=True):
    """A plant received a load (``asset``: the receiving bay or intake line) into a silo.

    ``load_id`` is the truck's load of its ``pickup`` and ``delivery`` events; ``truck`` the
    vehicle's plate or id. The silo accepts the milk at ``ts``: acceptance windows count from
    here."""

    load_id: Id
    destination: Id
    volume_l: Volume
    truck: Id | None = None
    compartment: Id | None = None
    temperature_c: ArrivalTemperature | None = None

    def __post_init__(self) -> None:
        if self.destination == self.asset:
            raise ValueError(
                f"receipt at {self.asset!r} into itself: destination must be the silo the load "
                "went into, asset the receiving bay"
            )


class SiloTransfer(_Event, tag="silo_transfer", frozen=True):
    """Milk pumped from one silo (``asset``) into another (``destination``)."""

    destination: Id
    volume_l: Volume
    transfer_id: Id | None = None

    def __post_init__(self) -> None:
        if self.destination == self.asset:
            raise ValueError(
                f"silo transfer from {self.asset!r} into itself: destination must be another silo"
            )


class SiloEmptied(_Event, tag="silo_emptied", frozen=True):
    """A silo (``asset``) was emptied: whatever milk was left in it is gone (processed by runs
    already recorded, or discarded: ``reason`` says which). ``volume_l``: what was left in it
    and went with the emptying, where known (a discarded heel is the loss in a mass balance)."""

    reason: Note | None = None
    volume_l: Volume | None = None


class CipStart(_Event, tag="cip_start", frozen=True):
    """Cleaning in place started: product limits are suspended, silence checks are not."""

    program: Note | None = None


class CipEnd(_Event, tag="cip_end", frozen=True):
    """Cleaning in place ended."""


Event = (
    MilkingStart
    | MilkingEnd
    | Pickup
    | Delivery
    | ProductChange
    | RunStart
    | RunEnd
    | CipStart
    | CipEnd
    | Receipt
    | SiloTransfer
    | SiloEmptied
)

EVENT_TYPES: Final = (
    MilkingStart,
    MilkingEnd,
    Pickup,
    Delivery,
    ProductChange,
    RunStart,
    RunEnd,
    CipStart,
    CipEnd,
    Receipt,
    SiloTransfer,
    SiloEmptied,
)


class ClockState(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A gateway's own view of its clock, from its time service (NTP via the kernel or chrony).

    The stream estimates each gateway's offset from when batches arrive; this is the gateway's
    side of the story, so a plant can tell "the clock was never synchronised" from "the link
    was slow".
    """

    synced: bool | None = None
    offset_ms: Finite | None = None
    error_ms: Finite | None = None
    source: Literal["kernel", "chrony", "command", "none"] = "none"


class Batch(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What one gateway publishes in one MQTT message."""

    v: Literal[1]
    site: Id
    gateway: Id
    seq: Annotated[
        int,
        msgspec.Meta(
            ge=0,
            description=(
                "Per-gateway sequence number; grows with every batch and survives restarts "
                "(a gateway that cannot store it may seed it from its clock in ms). A number "
                "greater than the receive time in ms plus the stream's future tolerance can be "
                "neither, and is refused."
            ),
        ),
    ]
    sent_at: EpochMs
    readings: Annotated[list[Reading], msgspec.Meta(max_length=50_000)] = []
    events: Annotated[list[Event], msgspec.Meta(max_length=10_000)] = []
    clock: ClockState | None = None


class SourceState(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How one of the gateway's sensor sources is doing."""

    ok: bool
    failures: int = 0
    error: str | None = None


class GatewayStatus(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A gateway's state, retained on its status topic.

    The broker publishes the ``offline`` form as the gateway's last will when the link dies;
    the gateway publishes ``online`` at every connect and at each heartbeat.
    """

    v: Literal[1]
    site: Id
    gateway: Id
    state: Literal["online", "offline"]
    ts: EpochMs
    clock: ClockState | None = None
    backlog: int = 0
    outbox_bytes: int = 0
    outbox_nearly_full: bool = False
    dropped_readings: int = 0
    refused_readings: int = 0
    alarm: bool = False
    sources: dict[str, SourceState] = {}


_ID_RE: Final = re.compile(whole_text(ID_PATTERN))


def is_valid_id(text: str) -> bool:
    """True when ``text`` is a valid id (safe in topics, InfluxDB tags and file names)."""
    return _ID_RE.match(text) is not None


def batch_topic(site: str, gateway: str) -> str:
    """The topic a gateway publishes its batches on."""
    return f"{TOPIC_ROOT}/gw/{site}/{gateway}/batch"


def status_topic(site: str, gateway: str) -> str:
    """The retained topic carrying a gateway's online/offline state."""
    return f"{TOPIC_ROOT}/gw/{site}/{gateway}/status"


def deadletter_topic(site: str, gateway: str) -> str:
    """Where rejected payloads of a gateway are republished with their reason."""
    return f"{TOPIC_ROOT}/deadletter/{site}/{gateway}"


def deviation_topic(site: str, asset: str) -> str:
    """Where deviations of an asset are published as they open and close."""
    return f"{TOPIC_ROOT}/deviations/{site}/{asset}"


def alert_topic(site: str, asset: str) -> str:
    """Where the alert service publishes the notices of an asset's alerts."""
    return f"{TOPIC_ROOT}/alerts/{site}/{asset}"


#: Subscription that matches every gateway's batches.
BATCH_SUBSCRIPTION: Final = f"{TOPIC_ROOT}/gw/+/+/batch"
#: Subscription that matches every gateway's (retained) status.
STATUS_SUBSCRIPTION: Final = f"{TOPIC_ROOT}/gw/+/+/status"


def parse_batch_topic(topic: str) -> tuple[str, str] | None:
    """Return ``(site, gateway)`` of a batch topic, or None when the topic is not one."""
    parts = topic.split("/")
    if len(parts) != 6 or parts[0:3] != ["milkguard", "v1", "gw"] or parts[5] != "batch":
        return None
    return parts[3], parts[4]


def parse_status_topic(topic: str) -> tuple[str, str] | None:
    """Return ``(site, gateway)`` of a status topic, or None when the topic is not one."""
    parts = topic.split("/")
    if len(parts) != 6 or parts[0:3] != ["milkguard", "v1", "gw"] or parts[5] != "status":
        return None
    return parts[3], parts[4]


_decoder: Final = msgspec.json.Decoder(Batch)
_encoder: Final = msgspec.json.Encoder()


def decode_batch(payload: bytes | str) -> Batch:
    """Decode and validate one payload; raises msgspec.ValidationError or msgspec.DecodeError,
    and for some inputs other errors (invalid UTF-8, deep nesting): see :func:`read_batch`."""
    return _decoder.decode(payload)


_Decoded = TypeVar("_Decoded")


def read_batch(payload: bytes) -> Batch | str:
    """The batch of a payload, or why it is not one. Never raises: every byte sequence is either
    a batch or a reason (msgspec raises UnicodeDecodeError for invalid UTF-8 in a string and
    RecursionError for deep nesting, not only its own errors)."""
    return _read(_decoder, payload, "a batch")


def _read(
    decoder: msgspec.json.Decoder[_Decoded], payload: bytes, what: str, invalid: str = ""
) -> _Decoded | str:
    """What ``decoder`` makes of ``payload``, or why it makes nothing (``what`` names the
    payload expected; ``invalid`` comes before the reason a valid JSON text is refused)."""
    try:
        return decoder.decode(payload)
    except msgspec.ValidationError as exc:
        return f"{invalid}{exc}"
    except msgspec.DecodeError as exc:
        return f"not valid JSON: {exc}"
    except UnicodeDecodeError as exc:
        return f"not valid UTF-8 at byte {exc.start}: JSON text must be UTF-8"
    except RecursionError:
        return f"nested too deeply to be {what} of wire contract v1"
    except Exception as exc:  # whatever else a decoder may raise on hostile input
        return f"not {what} of wire contract v1 ({type(exc).__name__}: {exc})"


class _ReadingsOnly(msgspec.Struct):
    readings: list[msgspec.Raw] = []


_readings_only: Final = msgspec.json.Decoder(_ReadingsOnly)


def _holders_of_readings(pairs: list[tuple[str, object]]) -> dict[str, object] | int:
    # only an object with a "readings" key can be the one counted: the others become a small
    # int, so counting a huge payload does not build every reading in memory
    return dict(pairs) if any(key == "readings" for key, _ in pairs) else 0


_lenient: Final = json.JSONDecoder(object_pairs_hook=_holders_of_readings)
#: Python refuses integers of more digits than this (``sys.get_int_max_str_digits``)
_LONG_DIGITS: Final = re.compile(rb"[0-9]{4301}")


def count_readings(payload: bytes) -> int:
    """How many readings a payload holds as the contract counts them: the length of its
    top-level ``readings`` array when it parses as a JSON object holding a list there, else 0.
    Used for payloads refused whole, so every reading fed is counted somewhere. A payload that
    is not UTF-8 throughout is no JSON text (RFC 8259), so it holds none.

    Where msgspec and Python's ``json`` module disagree (``NaN``, ``Infinity``, lone surrogate
    escapes, integers of more than 4,300 digits), the count is what ``json`` reads, so a suite
    that counts what it fed with ``json.loads`` finds every reading counted once."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return 0
    if _LONG_DIGITS.search(payload) is None:  # else json refuses what msgspec skips over
        with contextlib.suppress(Exception):  # not JSON to msgspec: perhaps to the standard library
            return len(_readings_only.decode(payload).readings)
    try:
        data = _lenient.decode(text)
    except (ValueError, RecursionError):
        return 0
    readings = data.get("readings") if isinstance(data, dict) else None
    return len(readings) if isinstance(readings, list) else 0


def encode_batch(batch: Batch) -> bytes:
    """Encode a batch as the compact JSON a gateway sends."""
    return _encoder.encode(batch)


_status_decoder: Final = msgspec.json.Decoder(GatewayStatus)


def encode_status(status: GatewayStatus) -> bytes:
    """Encode a gateway status as JSON."""
    return _encoder.encode(status)


def decode_status(payload: bytes | str) -> GatewayStatus:
    """Decode and validate a gateway status."""
    return _status_decoder.decode(payload)


def read_status(payload: bytes) -> GatewayStatus | str:
    """The gateway status of a payload, or why it is not one; never raises (as
    :func:`read_batch`)."""
    status = "a gateway status"
    return _read(_status_decoder, payload, status, f"not {status} of wire contract v1: ")


def json_schema() -> dict[str, object]:
    """The JSON Schema of a v1 payload, for third-party device makers."""
    schema: dict[str, object] = published(msgspec.json.schema(Batch))
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://milkguard.example/schemas/wire-v1.schema.json"
    schema["title"] = "MilkGuard wire contract v1: a batch from one gateway"
    return schema

"""Records the stream publishes for other services, and the signed envelope that carries them.

A deviation change leaves the stream as a :class:`DeviationRecord` (the JSON of deviations.jsonl)
inside an :class:`Envelope`::

    {"v": 1, "type": "deviation", "record": {...},
     "signed_by": {"alg": "Ed25519", "key_id": "<16 hex digits>"},
     "signature": "<base64 of the 64-byte Ed25519 signature>"}

The signature is over the RFC 8785 canonical JSON (JCS) of the envelope without ``signature``,
so anyone can check it with standard tools and the stream's public key (``milkguard stream
public-key``); ``type`` says which record is inside, so advisories and compliance facts can
travel in the same envelope later. Signing and checking live in :mod:`milkguard.signing`;
this module, like the rest of the contract, imports msgspec only. The JSON Schema is generated
from these types and committed as ``records-v1.schema.json``.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec

from milkguard.contract.v1 import Id, published, whole_text

#: Every kind of deviation the rule engine opens (README: the table of rule kinds).
DeviationKind = Literal[
    "critical_limit",
    "monitoring_lost",
    "stuck_sensor",
    "rate_of_change",
    "cooling_deadline",
    "blend_temperature",
    "htst_temperature",
    "htst_holding_time",
    "htst_recorder",
    "uht_lethality",
    "receipt_temperature",
    "receipt_verification",
    "storage_age",
    "transit_time",
    "temperature_exposure",
    "time_sync",
    "acceptance_window",
]

#: A pasteurization table's product classes: plain milk products; rich ones (fat >= 10 %, total
#: solids >= 18 %, sweetened or condensed); eggnog.
ProductClass = Literal["milk", "rich", "eggnog"]

#: A deviation id: the first 20 hex digits of a SHA-256 (``stream.engine.deviation``). Reports
#: are named after it, so nothing else (no ``/``, no ``..``) may ever pass.
DEVIATION_ID_PATTERN: Final = r"^[0-9a-f]{20}$"

DeviationId = Annotated[
    str,
    msgspec.Meta(
        pattern=whole_text(DEVIATION_ID_PATTERN),
        description="20 lowercase hex digits.",
    ),
]

_ISO_MS: Final = whole_text(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z$")

#: ISO 8601 UTC with milliseconds, as ``stream.engine.deviation.iso_ms`` writes it.
IsoTime = Annotated[
    str,
    msgspec.Meta(
        pattern=_ISO_MS,
        description="Event time, ISO 8601 UTC with milliseconds: 2026-11-22T10:00:00.120Z.",
    ),
]

#: Free text from the plan (names, sources, actions): bounded so no record can be huge.
Text = Annotated[str, msgspec.Meta(max_length=1_000)]

#: JSON numbers every JCS implementation can hold exactly (RFC 8785 refuses larger integers).
SafeInt = Annotated[int, msgspec.Meta(ge=-(2**53) + 1, le=2**53 - 1)]


class AppliedLimit(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The limit as it was applied when the deviation was judged."""

    min: float | None
    max: float | None
    sustained_s: float
    unit: Text
    source: Text


#: Why a time-sync deviation was raised: the offset estimated from arrival times is beyond the
#: plan's tolerance, or the gateway reports its own clock unsynchronised (both may hold).
TimeSyncCause = Literal["offset_beyond_tolerance", "gateway_unsynchronised"]

#: ISO 8601 UTC with milliseconds on a device's own clock (not the stream's).
RawTime = Annotated[
    str,
    msgspec.Meta(
        pattern=_ISO_MS,
        description="The same instant on the device's own clock (stream time plus its offset), "
        "ISO 8601 UTC with milliseconds.",
    ),
]


class DeviceTime(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One device's clock in a record on the stream's clock: its offset, the instants it set."""

    device: Text
    offset_ms: Annotated[
        SafeInt, msgspec.Meta(description="The device clock's estimated offset, ahead: positive.")
    ]
    raw_start: RawTime | None = None
    raw_detected: RawTime | None = None
    raw_end: RawTime | None = None


class DeviationRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One deviation change: a deviation opened or closed, as the stream judged it."""

    change: Literal["opened", "closed"]
    id: DeviationId
    status: Literal["open", "closed"]
    kind: DeviationKind
    plan: Text
    plan_version: Text
    rule_id: Text
    ccp: Text | None
    jurisdiction: Text
    severity: Literal["critical", "major", "minor"]
    action: Text
    site: Id
    asset: Id
    channels: Annotated[list[Id], msgspec.Meta(max_length=64)]
    device: Text
    limit: AppliedLimit
    start: IsoTime
    detected: IsoTime
    end: IsoTime | None
    peak: float | None
    time_beyond_s: float
    degree_minutes: float
    detected_late: bool
    clock_offset_ms: SafeInt
    clock_synced: bool | None
    # added in v1 with defaults: a record written before them is still valid, and means the same
    time_base: Annotated[
        Literal["device", "stream"],
        msgspec.Meta(
            description="The clock start, detected and end are on: the device's own (rules of "
            "one channel) or the stream's (rules joining devices; time sync)."
        ),
    ] = "device"
    clocks: Annotated[
        list[DeviceTime],
        msgspec.Meta(
            max_length=16,
            description="With time_base stream: per device whose sample set a time, the offset "
            "used and the raw device times.",
        ),
    ] = []
    causes: Annotated[
        list[TimeSyncCause],
        msgspec.Meta(max_length=2, description="Time sync: why the clock is in doubt."),
    ] = []
    # absent (not null) when unset, so a record signed before this field existed keeps its
    # canonical JSON, and with it its signature
    load_id: Annotated[
        Id | msgspec.UnsetType,
        msgspec.Meta(
            description="Receipt check judged from a receipt event: the load it judged "
            "(the event's load_id); absent on every other record."
        ),
    ] = msgspec.UNSET
    # left out of the record unless set: records signed before them stay byte for byte the same
    product: (
        Annotated[
            Id,
            msgspec.Meta(
                description="HTST: the product whose limit was breached (the product_change "
                "event's id): during a changeover, the one still in the equipment if its "
                "limit is the stricter."
            ),
        ]
        | msgspec.UnsetType
    ) = msgspec.UNSET
    product_class: (
        Annotated[
            ProductClass,
            msgspec.Meta(description="HTST: that product's class in the pasteurization table."),
        ]
        | msgspec.UnsetType
    ) = msgspec.UNSET


class SignedBy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Which key signed an envelope: the first 16 hex digits of the SHA-256 of its raw bytes."""

    alg: Literal["Ed25519"]
    key_id: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{16}$")]


class _Envelope(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="type"):
    """What every signed envelope carries besides its record."""

    v: Literal[1]
    signed_by: SignedBy
    signature: Annotated[
        str,
        msgspec.Meta(
            pattern=r"^[A-Za-z0-9+/]{86}==$",
            description="Base64 of the Ed25519 signature over the RFC 8785 canonical JSON of "
            "the envelope without this field.",
        ),
    ]


class DeviationEnvelope(_Envelope, tag="deviation", frozen=True):
    """A signed deviation change."""

    record: DeviationRecord


#: Every signed envelope; grows by one member per record type (advisories, compliance facts).
Envelope = DeviationEnvelope

#: The ``type`` of the envelope each record travels in.
RECORD_TYPES: Final[dict[type[msgspec.Struct], str]] = {DeviationRecord: "deviation"}


def records_schema() -> dict[str, object]:
    """The JSON Schema of a signed envelope and the records it carries."""
    schema: dict[str, object] = published(msgspec.json.schema(Envelope))
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://milkguard.example/schemas/records-v1.schema.json"
    schema["title"] = "MilkGuard records v1: a signed record the stream publishes"
    return schema

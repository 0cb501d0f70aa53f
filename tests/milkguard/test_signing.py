"""Signed records: RFC 8785 canonical JSON and Ed25519, checkable by anyone from the published
test vectors; an envelope that is unsigned, signed by a stranger, altered or invalid is refused
with its reason."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
import rfc8785
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from milkguard.contract.records import DeviationEnvelope, DeviationRecord
from milkguard.errors import ConfigError
from milkguard.signing import (
    MAX_ENVELOPE_BYTES,
    Signer,
    UntrustedRecord,
    Verifier,
    canonical,
    seal,
    unseal,
)
from milkguard_cli import main
from tests.alerts.records import change

VECTORS = Path(__file__).parents[2] / "milkguard" / "contract" / "vectors"

#: a record as first published, before the optional clock fields (time_base, clocks, causes)
OLD = json.loads((VECTORS / "deviation-envelope.json").read_text(encoding="utf-8"))
#: a record with them: an HTST deviation on the stream's clock, two gateways' own times
VECTOR = json.loads((VECTORS / "deviation-envelope-stream-clock.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("vector", [OLD, VECTOR], ids=["first-published", "stream-clock"])
def test_the_published_vectors_verify_with_standard_tools_alone(vector: dict[str, Any]) -> None:
    envelope = dict(vector["envelope"])
    signature = base64.b64decode(envelope.pop("signature"))
    public = serialization.load_pem_public_key(vector["public_key_pem"].encode())
    assert isinstance(public, ed25519.Ed25519PublicKey)

    assert rfc8785.dumps(envelope).hex() == vector["canonical_hex"]
    public.verify(signature, bytes.fromhex(vector["canonical_hex"]))  # raises if not valid
    assert base64.b64encode(signature).decode() == vector["signature_base64"]


def test_our_signer_produces_the_published_vectors() -> None:
    seed = bytes.fromhex(VECTOR["private_key_seed_hex"])
    signer = Signer(ed25519.Ed25519PrivateKey.from_private_bytes(seed))
    record = msgspec.convert(VECTOR["envelope"]["record"], DeviationRecord)

    assert signer.key_id == VECTOR["key_id"]
    assert signer.public_pem() == VECTOR["public_key_pem"]
    assert json.loads(seal(record, signer)) == VECTOR["envelope"]
    assert record.time_base == "stream"
    assert [(c.device, c.offset_ms) for c in record.clocks] == [
        ("htst-temp-gw", 4000),
        ("htst-valve-gw", 0),
    ]


def test_a_record_signed_before_the_clock_fields_still_verifies_and_means_device_time() -> None:
    # the signature is checked over what was sent, then the record typed: the fields added
    # since take their defaults, and say what such a record always meant
    verifier = Verifier([OLD["public_key_pem"].encode()])
    payload = json.dumps(OLD["envelope"]).encode()

    record = unseal(payload, verifier).record

    assert (record.time_base, record.clocks, record.causes) == ("device", [], [])
    assert record.clock_offset_ms == -38


def test_canonical_json_follows_rfc_8785_for_numbers_keys_and_text() -> None:
    record = {"b": [72.0, 1e21, 0.1, -0.0], "a": "2-6 °C", "é": None}

    assert canonical(record) == '{"a":"2-6 °C","b":[72,1e+21,0.1,0],"é":null}'.encode()


@pytest.fixture
def stream(tmp_path: Path) -> Signer:
    return Signer.load_or_create(tmp_path / "stream.pem")


@pytest.fixture
def verifier(stream: Signer) -> Verifier:
    return Verifier([stream.public_pem().encode()])


def refusal(payload: bytes, verifier: Verifier) -> str:
    with pytest.raises(UntrustedRecord) as caught:
        unseal(payload, verifier)
    return caught.value.reason


def sealed_dict(stream: Signer, **changed: Any) -> dict[str, Any]:
    record = msgspec.convert(change("opened"), DeviationRecord)
    return {**json.loads(seal(record, stream)), **changed}


def test_a_sealed_change_opens_to_its_typed_record(stream: Signer, verifier: Verifier) -> None:
    record = msgspec.convert(change("opened"), DeviationRecord)

    envelope = unseal(seal(record, stream), verifier)

    assert isinstance(envelope, DeviationEnvelope)
    assert envelope.record == record
    assert envelope.signed_by.key_id == stream.key_id


def test_a_plain_record_without_signature_is_refused_as_unsigned(verifier: Verifier) -> None:
    assert refusal(json.dumps(change("opened")).encode(), verifier) == "unsigned"


def test_a_record_signed_by_an_unknown_key_is_refused(tmp_path: Path, verifier: Verifier) -> None:
    stranger = Signer.load_or_create(tmp_path / "stranger.pem")

    assert refusal(json.dumps(sealed_dict(stranger)).encode(), verifier) == "unknown_key"


def test_a_record_changed_after_signing_is_refused(stream: Signer, verifier: Verifier) -> None:
    envelope = sealed_dict(stream)
    envelope["record"]["change"] = "closed"

    assert refusal(json.dumps(envelope).encode(), verifier) == "bad_signature"


def test_a_signature_moved_onto_other_content_is_refused(
    stream: Signer, verifier: Verifier
) -> None:
    other = sealed_dict(stream)
    other["record"]["peak"] = 99.0
    moved = {**other, "signature": sealed_dict(stream)["signature"]}

    assert refusal(json.dumps(moved).encode(), verifier) == "bad_signature"


def test_a_validly_signed_record_outside_the_contract_is_refused(
    stream: Signer, verifier: Verifier
) -> None:
    """The stream's key does not make a path-like id or an unknown kind acceptable."""
    for field, value in (("id", "/tmp/x/pwned"), ("kind", "party"), ("site", "../..")):
        unsigned = sealed_dict(stream)
        del unsigned["signature"]
        unsigned["record"][field] = value
        signed = {**unsigned, "signature": stream.sign_bytes(rfc8785.dumps(unsigned))}

        assert refusal(json.dumps(signed).encode(), verifier) == "invalid_record", field


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"\xff":1}', "not_json"),
        (b"[1, 2", "not_json"),
        (b"[]", "unsigned"),
        (b'{"signed_by": 1, "signature": "x"}', "unsigned"),
        (b'{"signed_by": {"alg": "RSA", "key_id": "x"}, "signature": "x"}', "bad_signature"),
        (b" " * (MAX_ENVELOPE_BYTES + 1), "too_large"),
        (b"[" * 20_000, "not_json"),
        (b'{"a":' * 10_000, "not_json"),
    ],
)
def test_malformed_payloads_are_refused_with_their_reason(
    payload: bytes, reason: str, verifier: Verifier
) -> None:
    assert refusal(payload, verifier) == reason


def test_a_new_key_file_is_private_to_its_owner(tmp_path: Path) -> None:
    Signer.load_or_create(tmp_path / "keys" / "stream.pem")

    assert (tmp_path / "keys" / "stream.pem").stat().st_mode & 0o777 == 0o600


def test_the_stream_exports_the_public_key_of_its_own_signing_key(tmp_path: Path) -> None:
    config = tmp_path / "milkguard.yaml"
    config.write_text(f"data_dir: {tmp_path / 'var'}\n")
    public = tmp_path / "stream.pem"

    assert main(["stream", "public-key", "--config", str(config), "--output", str(public)]) == 0

    key = tmp_path / "var" / "signing-key.pem"  # created on first use, private to its owner
    assert key.stat().st_mode & 0o777 == 0o600
    assert Signer.load_or_create(key).public_pem() == public.read_text()
    assert Verifier.from_files([public]).key_ids == [Signer.load_or_create(key).key_id]


@pytest.mark.parametrize("value", [b"[" * 2_000 + b"]" * 2_000, b"1" * 400])
def test_what_has_no_canonical_form_is_refused_not_raised(
    stream: Signer, verifier: Verifier, value: bytes
) -> None:
    """Nesting too deep to canonicalize, integers beyond 2^53: refused, the service goes on."""
    signed_by = json.dumps({"alg": "Ed25519", "key_id": stream.key_id}).encode()
    payload = b'{"signed_by":' + signed_by + b',"signature":"x","record":' + value + b"}"

    assert refusal(payload, verifier) in ("not_json", "invalid_record")


#: an EC key on secp112r1, a curve OpenSSL can write but cryptography does not load
UNSUPPORTED_PUBLIC = b"""-----BEGIN PUBLIC KEY-----
MDIwEAYHKoZIzj0CAQYFK4EEAAYDHgAEPRRPTcNqe3EcoqLv9b4+s4of1NKNUCno
bvBxug==
-----END PUBLIC KEY-----
"""
UNSUPPORTED_PRIVATE = b"""-----BEGIN PRIVATE KEY-----
ME4CAQAwEAYHKoZIzj0CAQYFK4EEAAYENzA1AgEBBA4SgJhxPRwUP13IXm6M1aEg
Ax4ABD0UT03DantxHKKi7/W+PrOKH9TSjVAp6G7wcbo=
-----END PRIVATE KEY-----
"""


def test_a_key_of_an_unsupported_kind_is_a_settings_error_naming_the_file(tmp_path: Path) -> None:
    public, private = tmp_path / "odd.pub", tmp_path / "odd.key"
    public.write_bytes(UNSUPPORTED_PUBLIC)
    private.write_bytes(UNSUPPORTED_PRIVATE)

    with pytest.raises(ConfigError, match=r"odd\.pub"):
        Verifier.from_files([public])
    with pytest.raises(ConfigError, match=r"odd\.key"):
        Signer.load_or_create(private)

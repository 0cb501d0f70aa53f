"""Ed25519 signatures over RFC 8785 canonical JSON, for every record MilkGuard signs.

A record is signed as its RFC 8785 (JSON Canonicalization Scheme) bytes: keys sorted, no
whitespace, numbers and strings written one way, UTF-8. The same record always gives the same
bytes whatever wrote it, so anyone can check a signature with standard tools (any JCS library and
any Ed25519 implementation; ``milkguard/contract/vectors/`` has test vectors).

Two signers use it: the stream signs every deviation change it publishes, in a signed envelope
(:func:`seal`; the alert service checks it with :func:`unseal`), and the alert service signs the
regulator reports and its audit trail's head. Each keeps its own private key (a PEM file, mode
0600); the public key is published (``milkguard stream public-key``, ``milkguard alerts
public-key``) and its id (the first 16 hex digits of the SHA-256 of its raw bytes) travels with
every signature, so a verifier knows which key to check against and an old record stays
checkable after a key is rotated.

cryptography is imported only when a key is loaded, so importing this module is cheap.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Final

import msgspec
import rfc8785

from milkguard.contract.records import RECORD_TYPES, Envelope
from milkguard.errors import ConfigError, ExtraMissing, MilkGuardError

#: A signed envelope larger than this is refused before it is parsed.
MAX_ENVELOPE_BYTES: Final = 64 * 1024

#: Ids of keys whose private half is published (RFC 8032 section 7.1 TEST 1, the key of our
#: test vectors): a signature by one proves nothing, so none may be trusted for live records.
PUBLISHED_TEST_KEY_IDS: Final = frozenset({"21fe31dfa154a261"})


def canonical(record: Any) -> bytes:
    """The RFC 8785 bytes a record is hashed and signed as (structs and dataclasses too)."""
    return rfc8785.dumps(msgspec.to_builtins(record))


def key_id(public_raw: bytes) -> str:
    """A public key's id: the first 16 hex digits of the SHA-256 of its 32 raw bytes."""
    return hashlib.sha256(public_raw).hexdigest()[:16]


@dataclass(frozen=True)
class Signature:
    """An Ed25519 signature and the id of the key that made it."""

    key_id: str
    value: str  # base64

    def as_dict(self) -> dict[str, str]:
        """For JSON: ``{"alg": "Ed25519", "key_id": ..., "value": ...}``."""
        return {"alg": "Ed25519", "key_id": self.key_id, "value": self.value}


class Signer:
    """Signs with one private key (the stream's, or the dairy's for reports)."""

    def __init__(self, private_key: Any) -> None:
        from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

        self._key = private_key
        self.public_raw: bytes = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.key_id = key_id(self.public_raw)

    @classmethod
    def load_or_create(
        cls, path: Path, setting: str = "alerts.directory", extra: str = "alerts"
    ) -> Signer:
        """The key in ``path`` (PEM, PKCS#8); a new one written there (mode 0600) if none.

        ``setting`` names where the path comes from, ``extra`` what to install without
        cryptography, for the error messages.
        """
        primitives = _primitives(extra)
        serialization, ed25519 = primitives.serialization, primitives.ed25519
        if path.exists():
            try:
                key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            except (ValueError, TypeError, primitives.UnsupportedAlgorithm) as exc:
                raise ConfigError(
                    f"{path} is not an unencrypted PEM private key: {exc}. Point "
                    f"{setting} at an Ed25519 key, or at a new path to create one"
                ) from exc
            except OSError as exc:
                raise ConfigError(f"cannot read signing key {path} ({setting}): {exc}") from exc
            if not isinstance(key, ed25519.Ed25519PrivateKey):
                raise ConfigError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
            return cls(key)
        key = ed25519.Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise ConfigError(f"cannot create signing key {path} ({setting}): {exc}") from exc
        with os.fdopen(descriptor, "wb") as out:
            out.write(pem)
        return cls(key)

    def sign_bytes(self, content: bytes) -> str:
        """The base64 Ed25519 signature of ``content``."""
        return base64.b64encode(self._key.sign(content)).decode()

    def sign(self, record: Any) -> Signature:
        """Sign a record's canonical JSON."""
        return Signature(self.key_id, self.sign_bytes(canonical(record)))

    def public_pem(self) -> str:
        """The public key to publish (PEM, SubjectPublicKeyInfo)."""
        serialization = _primitives().serialization
        return str(
            self._key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )


class Verifier:
    """Checks signatures against published public keys."""

    def __init__(self, public_pems: list[bytes]) -> None:
        primitives = _primitives()
        self._keys: dict[str, Any] = {}
        for pem in public_pems:
            try:
                key = primitives.serialization.load_pem_public_key(pem)
            except (ValueError, primitives.UnsupportedAlgorithm) as exc:  # e.g. an odd EC curve
                raise ConfigError(f"not a PEM public key: {exc}") from exc
            if not isinstance(key, primitives.ed25519.Ed25519PublicKey):
                raise ConfigError(f"a {type(key).__name__} is not an Ed25519 public key")
            raw = key.public_bytes(
                primitives.serialization.Encoding.Raw, primitives.serialization.PublicFormat.Raw
            )
            self._keys[key_id(raw)] = key

    @classmethod
    def from_files(cls, paths: list[Path], *, refuse_test_keys: bool = False) -> Verifier:
        """Public keys from PEM files, with the file named when one cannot be read; with
        ``refuse_test_keys`` (live records), a published test key is a :class:`ConfigError`."""
        pems = []
        for path in paths:
            try:
                pems.append(path.read_bytes())
            except OSError as exc:
                raise ConfigError(f"cannot read public key {path}: {exc.strerror}") from exc
            try:
                one = cls([pems[-1]])
            except ConfigError as exc:
                raise ConfigError(f"public key {path}: {exc}") from exc
            if refuse_test_keys and PUBLISHED_TEST_KEY_IDS & set(one.key_ids):
                raise ConfigError(
                    f"public key {path} is the published test key (RFC 8032 TEST 1, in "
                    "milkguard/contract/vectors): its private key is public, so anyone could "
                    "sign with it. Export the stream's own key with `milkguard stream public-key`"
                )
        return cls(pems)

    @property
    def key_ids(self) -> list[str]:
        """The ids of the keys it trusts."""
        return list(self._keys)

    def key_problem(self, alg: object, key: object) -> str | None:
        """None if ``alg`` is Ed25519 and ``key`` the id of a trusted key, else what is wrong."""
        if alg != "Ed25519":
            return f"signature algorithm {str(alg)[:40]!r}, expected 'Ed25519'"
        if str(key) not in self._keys:
            return (
                f"signed with key {str(key)[:40]!r}, which is not among the public "
                f"keys given ({', '.join(self._keys) or 'none'})"
            )
        return None

    def check(self, content: bytes, alg: object, key: object, value: object) -> str | None:
        """None if ``value`` (base64) is a valid signature of ``content`` by key ``key``."""
        from cryptography.exceptions import InvalidSignature  # noqa: PLC0415

        problem = self.key_problem(alg, key)
        if problem is not None:
            return problem
        try:
            self._keys[str(key)].verify(base64.b64decode(str(value), validate=True), content)
        except (InvalidSignature, ValueError, binascii.Error):
            return "the signature does not match the content: the record was changed after signing"
        return None

    def problem(self, record: Any, signature: dict[str, Any]) -> str | None:
        """None if ``signature`` (``{"alg", "key_id", "value"}``) is valid for ``record``."""
        try:
            content = canonical(record)
        except (ValueError, TypeError, RecursionError) as exc:
            return f"the record has no canonical JSON form: {exc}"
        return self.check(
            content, signature.get("alg"), signature.get("key_id"), signature.get("value")
        )


class UntrustedRecord(MilkGuardError):  # noqa: N818 - reads as the condition found
    """A message that is not a record signed by a trusted key; ``reason`` is a short code.

    Reasons: ``too_large``, ``not_json``, ``unsigned``, ``unknown_key``, ``bad_signature``,
    ``invalid_record``. The message says what was wrong, never the payload itself.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def seal(record: msgspec.Struct, signer: Signer) -> bytes:
    """The signed envelope of ``record`` as compact JSON (what goes on the wire)."""
    unsigned = {
        "v": 1,
        "type": RECORD_TYPES[type(record)],
        "record": msgspec.to_builtins(record),
        "signed_by": {"alg": "Ed25519", "key_id": signer.key_id},
    }
    signed = {**unsigned, "signature": signer.sign_bytes(rfc8785.dumps(unsigned))}
    return msgspec.json.encode(signed)


_decoder: Final = msgspec.json.Decoder()


def unseal(payload: bytes, verifier: Verifier) -> Envelope:
    """The envelope in ``payload`` if a trusted key signed it and its record is valid.

    The signature is checked over exactly what was sent (before any typing), then the record is
    typed; anything else raises :class:`UntrustedRecord` with the reason.
    """
    if len(payload) > MAX_ENVELOPE_BYTES:
        raise UntrustedRecord(
            "too_large", f"{len(payload)} bytes, more than {MAX_ENVELOPE_BYTES} for an envelope"
        )
    try:
        message = _decoder.decode(payload)
    except (msgspec.DecodeError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise UntrustedRecord("not_json", str(exc)) from None
    if not isinstance(message, dict) or "signature" not in message or "signed_by" not in message:
        raise UntrustedRecord(
            "unsigned", "not a signed envelope (needs 'signed_by' and 'signature')"
        )
    unsigned = {name: value for name, value in message.items() if name != "signature"}
    signed_by = message["signed_by"]
    if not isinstance(signed_by, dict):
        raise UntrustedRecord("unsigned", "'signed_by' is not an object")
    alg, key = signed_by.get("alg"), signed_by.get("key_id")
    problem = verifier.key_problem(alg, key)  # before any work on what a stranger sent
    if problem is not None:
        reason = "unknown_key" if alg == "Ed25519" else "bad_signature"
        raise UntrustedRecord(reason, problem)
    try:
        content = rfc8785.dumps(unsigned)
    except (ValueError, TypeError, RecursionError) as exc:  # huge integers, deep nesting
        raise UntrustedRecord("invalid_record", f"no canonical JSON form: {exc}") from None
    problem = verifier.check(content, alg, key, message["signature"])
    if problem is not None:
        raise UntrustedRecord("bad_signature", problem)
    try:
        return msgspec.convert(message, Envelope)
    except msgspec.ValidationError as exc:
        raise UntrustedRecord("invalid_record", str(exc)) from None


def _primitives(extra: str = "alerts") -> SimpleNamespace:
    """cryptography's serialization and ed25519 modules, or how to install them."""
    try:
        from cryptography.exceptions import UnsupportedAlgorithm  # noqa: PLC0415
        from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
        from cryptography.hazmat.primitives.asymmetric import ed25519  # noqa: PLC0415
    except ImportError as exc:
        raise ExtraMissing("Signing and checking records", extra, "cryptography") from exc
    return SimpleNamespace(
        serialization=serialization, ed25519=ed25519, UnsupportedAlgorithm=UnsupportedAlgorithm
    )

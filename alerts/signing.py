"""Ed25519 signatures over canonical JSON: what regulators and auditors check our records with.

A record is signed as its canonical JSON (keys sorted, no whitespace, UTF-8), so the same record
always gives the same bytes whatever wrote it. The private key stays with the dairy (a PEM file,
mode 0600); the public key is published (``milkguard alerts public-key``), and its id (the first
16 hex digits of the SHA-256 of its raw bytes) travels with every signature, so a verifier knows
which key to check against and an old report stays checkable after the key is rotated.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec

from milkguard.errors import ConfigError, ExtraMissing

_CANONICAL = msgspec.json.Encoder(order="sorted")


def canonical(record: Any) -> bytes:
    """The bytes a record is hashed and signed as."""
    return _CANONICAL.encode(record)


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
    """Signs with the dairy's private key."""

    def __init__(self, private_key: Any) -> None:
        from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

        self._key = private_key
        self.public_raw: bytes = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.key_id = key_id(self.public_raw)

    @classmethod
    def load_or_create(cls, path: Path) -> Signer:
        """The key in ``path`` (PEM, PKCS#8); a new one written there (mode 0600) if none."""
        primitives = _primitives()
        serialization, ed25519 = primitives.serialization, primitives.ed25519
        if path.exists():
            try:
                key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            except (ValueError, TypeError) as exc:
                raise ConfigError(
                    f"{path} is not an unencrypted PEM private key: {exc}. Point "
                    "alerts.signing_key at the dairy's Ed25519 key, or at a new path to create one"
                ) from exc
            if not isinstance(key, ed25519.Ed25519PrivateKey):
                raise ConfigError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
            return cls(key)
        key = ed25519.Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as out:
            out.write(pem)
        return cls(key)

    def sign(self, record: Any) -> Signature:
        """Sign a record's canonical JSON."""
        value = self._key.sign(canonical(record))
        return Signature(self.key_id, base64.b64encode(value).decode())

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
            key = primitives.serialization.load_pem_public_key(pem)
            if not isinstance(key, primitives.ed25519.Ed25519PublicKey):
                raise ConfigError(f"a {type(key).__name__} is not an Ed25519 public key")
            raw = key.public_bytes(
                primitives.serialization.Encoding.Raw, primitives.serialization.PublicFormat.Raw
            )
            self._keys[key_id(raw)] = key

    @classmethod
    def from_files(cls, paths: list[Path]) -> Verifier:
        """Public keys from PEM files, with the file named when one cannot be read."""
        pems = []
        for path in paths:
            try:
                pems.append(path.read_bytes())
            except OSError as exc:
                raise ConfigError(f"cannot read public key {path}: {exc.strerror}") from exc
        return cls(pems)

    def problem(self, record: Any, signature: dict[str, Any]) -> str | None:
        """None if ``signature`` is a valid signature of ``record``, else what is wrong."""
        from cryptography.exceptions import InvalidSignature  # noqa: PLC0415

        if signature.get("alg") != "Ed25519":
            return f"signature algorithm {signature.get('alg')!r}, expected 'Ed25519'"
        key = self._keys.get(str(signature.get("key_id")))
        if key is None:
            return (
                f"signed with key {signature.get('key_id')!r}, which is not among the public "
                f"keys given ({', '.join(self._keys) or 'none'})"
            )
        try:
            key.verify(base64.b64decode(str(signature.get("value"))), canonical(record))
        except (InvalidSignature, ValueError):
            return "the signature does not match the content: the record was changed after signing"
        return None


def _primitives() -> SimpleNamespace:
    """cryptography's serialization and ed25519 modules, or how to install them."""
    try:
        from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
        from cryptography.hazmat.primitives.asymmetric import ed25519  # noqa: PLC0415
    except ImportError as exc:
        raise ExtraMissing("Signing records", "alerts", "cryptography") from exc
    return SimpleNamespace(serialization=serialization, ed25519=ed25519)

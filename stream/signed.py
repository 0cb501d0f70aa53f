"""The stream's signature on what it publishes: every deviation change leaves it sealed.

The stream signs with its own Ed25519 key (``signing.key``, by default ``{data_dir}/
signing-key.pem``, created mode 0600 on first use); ``milkguard stream public-key`` exports the
public half, which the alert service is configured with (``alerts.stream_keys``). The local
``deviations.jsonl`` stays plain records: it never leaves the stream's host.
"""

from __future__ import annotations

from pathlib import Path

from milkguard.signing import Signer, seal
from stream.engine.deviation import DeviationChange, deviation_record
from stream.settings import StreamSettings


def stream_key_path(settings: StreamSettings) -> Path:
    """Where the stream's private signing key is (``signing.key`` or the data directory)."""
    return settings.signing.key or settings.data_dir / "signing-key.pem"


def load_stream_signer(settings: StreamSettings) -> Signer:
    """The stream's signer; the key is created on first use."""
    return Signer.load_or_create(stream_key_path(settings), setting="signing.key", extra="stream")


def sealed_change(change: DeviationChange, signer: Signer) -> bytes:
    """A deviation change as the signed envelope published on MQTT and Kafka.

    Raises ``msgspec.ValidationError`` when the change is outside the wire contract.
    """
    return seal(deviation_record(change), signer)

"""The signing the alerts use: Ed25519 over RFC 8785 canonical JSON, shared with the stream.

The reports and the audit trail's head are signed with the dairy's key (``alerts.directory``/
``signing-key.pem``); :mod:`milkguard.signing` holds the code, so that what the stream signs and
what the alert service signs are checked the same way, with standard tools.
"""

from __future__ import annotations

from milkguard.signing import Signature, Signer, Verifier, canonical, key_id

__all__ = ["Signature", "Signer", "Verifier", "canonical", "key_id"]

"""Connecting paho-mqtt clients the same way everywhere: auth, TLS, clear errors, reconnects.

paho is an optional dependency (extras ``edge``, ``stream``, ``simulators``); it is imported when
a client is made, so the base package and the wire contract stay importable without it.
"""

from __future__ import annotations

import logging
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from milkguard.errors import BrokerError, ExtraMissing

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """How to reach a broker; the password is never part of ``repr``."""

    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    tls_ca: Path | None = None
    keepalive_s: int = 30

    def __repr__(self) -> str:
        tls = self.tls_ca is not None
        return f"BrokerAddress({self.host}:{self.port}, user={self.username!r}, tls={tls})"


def _paho() -> Any:
    try:
        import paho.mqtt.client as mqtt  # noqa: PLC0415 - optional part, imported when used
    except ImportError as exc:
        raise ExtraMissing("Talking MQTT", "edge", "paho-mqtt") from exc
    return mqtt


def connect(
    address: BrokerAddress,
    client_id: str,
    *,
    clean_session: bool = True,
    timeout_s: float = 10.0,
    on_connect_extra: Any = None,
    max_inflight: int = 100,
) -> mqtt.Client:
    """A connected client with its network loop running in a background thread.

    ``on_connect_extra(client)`` runs after every (re)connect, e.g. to subscribe again.
    Raises :class:`BrokerError` with the broker's reason when the first connect fails.
    """
    paho = _paho()
    client = paho.Client(
        paho.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean_session,
        protocol=paho.MQTTv311,
    )
    client.max_inflight_messages_set(max_inflight)
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    if address.username is not None:
        client.username_pw_set(address.username, address.password)
    if address.tls_ca is not None:
        client.tls_set(ca_certs=str(address.tls_ca), tls_version=ssl.PROTOCOL_TLS_CLIENT)
    connected = threading.Event()
    outcome: dict[str, Any] = {}

    def on_connect(
        client: mqtt.Client, userdata: object, flags: object, reason: Any, props: object
    ) -> None:
        outcome["reason"] = reason
        if not reason.is_failure:
            if on_connect_extra is not None:
                on_connect_extra(client)
            log.info("mqtt.connected", extra={"client_id": client_id, "broker": repr(address)})
        connected.set()

    def on_disconnect(
        client: mqtt.Client, userdata: object, flags: object, reason: Any, props: object
    ) -> None:
        if reason.is_failure:
            log.warning("mqtt.disconnected", extra={"client_id": client_id, "reason": str(reason)})

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    try:
        client.connect(address.host, address.port, keepalive=address.keepalive_s)
    except (OSError, ssl.SSLError) as exc:
        raise BrokerError(
            f"cannot reach the MQTT broker at {address.host}:{address.port}: {exc}. "
            "Is it running, and are mqtt.host/mqtt.port right?"
        ) from exc
    client.loop_start()
    if not connected.wait(timeout_s):
        client.loop_stop()
        raise BrokerError(
            f"the MQTT broker at {address.host}:{address.port} did not answer within {timeout_s} s"
        )
    reason = outcome["reason"]
    if reason.is_failure:
        client.loop_stop()
        raise BrokerError(
            f"the MQTT broker at {address.host}:{address.port} refused client {client_id!r}: "
            f"{reason}. Check mqtt.username/mqtt.password and the broker's ACL."
        )
    return client  # type: ignore[no-any-return] # paho is imported lazily, typed as Any here


def disconnect(client: mqtt.Client) -> None:
    """Disconnect cleanly and stop the network thread."""
    client.disconnect()
    client.loop_stop()

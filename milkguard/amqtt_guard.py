"""The embedded amqtt broker's gatekeeper: users, passwords and the role ACL of
:mod:`milkguard.broker_security`.

amqtt 0.12's own plugins cannot do this: its FileAuthPlugin reads only argon2 and sha512-crypt
hashes (not the ``$7$`` PBKDF2 that Mosquitto reads), and its topic ACL compares filters level
by level, so ``milkguard/v1/gw/a/b`` is not inside ``milkguard/v1/gw/a/b/#`` and it says
nothing when it drops a message. This module is loaded by amqtt's plugin manager only, so the
settings never import amqtt.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
from dataclasses import dataclass, field
from typing import Any

from amqtt.adapters import ReaderAdapter, WriterAdapter
from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session
from amqtt.utils import gen_client_id

from milkguard.broker_security import any_covers, verify_password

log = logging.getLogger("milkguard.broker")

#: Seconds a new connection has to send its whole CONNECT (a real client needs milliseconds).
CONNECT_DEADLINE_S = 10.0


@dataclass
class GuardConfig:
    """Per user name: its ``password_hash`` and the ``publish`` and ``read`` topic filters."""

    users: dict[str, dict[str, Any]] = field(default_factory=dict)


class AmqttGuard(BaseAuthPlugin, BaseTopicPlugin):  # type: ignore[misc]
    """Password check against ``$7$`` hashes, and the role ACL on publish, subscribe and
    delivery. Refusals are logged with user and topic, never a password."""

    Config = GuardConfig

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self.refused = 0  # connections refused
        self.denied = 0  # publishes and subscriptions refused
        # client id -> the user who first logged in with it since the broker started: another
        # user taking it over would inherit that client's persistent session (amqtt merges a
        # reconnecting session before asking for authentication) and silence it
        self._owners: dict[str, str] = {}
        self._verified: dict[tuple[str, str], bytes] = {}

    def _users(self) -> dict[str, dict[str, Any]]:
        config: GuardConfig = self.context.config
        return config.users

    async def authenticate(self, *, session: Any) -> bool:
        """A known user with the right password, with a client id no other user holds, and a
        last will on a topic it may publish; anyone else is refused."""
        username = session.username
        entry = self._users().get(username) if username else None
        if entry is None:
            return self._refuse(session, "unknown user or no user name")
        if entry.get("namespaced") and session.client_id:
            # first come would otherwise own an id: a gateway connecting first with the alert
            # service's (or another gateway's) client id would lock it out until a restart.
            # User names have no ':', so no other user's id can be in this namespace.
            prefix = f"{username}:"
            if not session.client_id.startswith(prefix):  # asked twice per CONNECT
                session.client_id = prefix + session.client_id
        owner = self._owners.get(session.client_id)
        if owner is not None and owner != username:
            return self._refuse(session, "client id belongs to another user")
        password = (session.password or "").encode()
        key = (session.client_id, username)
        # GuardedBroker asks twice per CONNECT (before and after amqtt's session handling):
        # the second time, a digest of the password just verified spares a second PBKDF2
        seen = hashlib.sha256(password).digest()
        if self._verified.pop(key, None) != seen:
            # PBKDF2 takes a while: off the broker's event loop
            ok = await asyncio.to_thread(verify_password, password.decode(), entry["password_hash"])
            if not ok:
                return self._refuse(session, "password")
        # amqtt publishes a last will without asking the topic plugins: a gateway could leave
        # a forged deviation as its will, so a will must be on a topic the user may publish on
        will_topic = session.will_topic if session.will_flag else None
        if will_topic is not None and not any_covers(entry["publish"], will_topic):
            return self._refuse(session, f"will topic {will_topic!r}")
        if session.client_id and not entry.get("namespaced"):  # a namespace binds it already
            self._owners.setdefault(session.client_id, username)
        if len(self._verified) > 10_000:  # connections that died between the two asks
            self._verified.clear()
        self._verified[key] = seen
        return True

    def _refuse(self, session: Any, reason: str) -> bool:
        self.refused += 1
        log.warning(
            "broker.refused",
            extra={
                "user": _clipped(session.username),
                "client_id": _clipped(session.client_id),
                "reason": _clipped(reason),
            },
        )
        return False

    async def topic_filtering(
        self, *, session: Any = None, topic: str | None = None, action: Action | None = None
    ) -> bool:
        """Publish needs a publish grant; a subscription must lie inside a read grant, and a
        delivery must match one."""
        username = getattr(session, "username", None)
        entry = self._users().get(username) if username else None
        if entry is None or not topic:
            return False
        if action == Action.RECEIVE:
            return any_covers(entry["read"], topic)
        grant = entry["publish"] if action == Action.PUBLISH else entry["read"]
        allowed = any_covers(grant, topic)
        if not allowed:
            self.denied += 1
            log.warning(
                "broker.denied",
                extra={
                    "user": _clipped(username),
                    "topic": _clipped(topic),
                    "action": getattr(action, "value", ""),
                },
            )
        return allowed


def _clipped(value: object) -> str | None:
    """A client's user name, client id or topic as logged: up to 64 KiB each in MQTT, so cut
    (a refusal per CONNECT must not write 64 KiB lines)."""
    if value is None:
        return None
    text = str(value)
    return text if len(text) <= 200 else text[:200] + "…"


def harden_listener_tls(context: ssl.SSLContext, listener: dict[str, Any]) -> ssl.SSLContext:
    """amqtt asks for client certificates but accepts none (CERT_OPTIONAL): require them when a
    client CA is configured; and refuse TLS older than 1.2."""
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if listener.get("cafile"):
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class GuardedBroker(Broker):  # type: ignore[misc]
    """amqtt's broker, authenticating a CONNECT before it touches the stored sessions.

    amqtt 0.12 first deletes the stored session of the CONNECT's client id (clean session) or
    merges into it, and only then authenticates; and it takes over a connected client of that
    id whether or not the newcomer is authenticated. Anyone who knew the stream's client id
    could wipe its queued batches or keep it disconnected without a password. Here a refused
    CONNECT gets its CONNACK and is closed first. Its TLS also requires client certificates
    when a client CA is configured (:func:`harden_listener_tls`).
    """

    @staticmethod
    def _create_ssl_context(listener: Any) -> ssl.SSLContext:
        return harden_listener_tls(Broker._create_ssl_context(listener), listener)

    async def _initialize_client_session(
        self, reader: ReaderAdapter, writer: WriterAdapter, remote_address: str, remote_port: int
    ) -> tuple[BrokerProtocolHandler, Session]:
        try:
            # amqtt waits for the CONNECT as long as the client likes: sockets that never send
            # one would hold a file descriptor each until none is left for the gateways
            handler, session = await asyncio.wait_for(
                BrokerProtocolHandler.init_from_connect(reader, writer, self.plugins_manager),
                CONNECT_DEADLINE_S,
            )
        except TimeoutError as exc:
            await writer.close()
            raise AMQTTError(f"{remote_address}:{remote_port} sent no CONNECT in time") from exc
        except MQTTError as exc:
            await writer.close()
            raise MQTTError(exc) from exc
        except (AMQTTError, NoDataError) as exc:
            raise AMQTTError(exc) from exc
        if not await self._authenticate(session, None):
            if not session.client_id:
                session.client_id = gen_client_id()
            handler.attach(session, reader, writer)
            await handler.mqtt_connack_authorize(False)
            await writer.close()
            raise AMQTTError(f"{remote_address}:{remote_port} refused")
        # from here as amqtt 0.12's own _initialize_client_session
        if session.clean_session:
            if session.client_id:
                await self._delete_session(session.client_id)
            else:
                session.client_id = gen_client_id()
            session.parent = 0
        elif session.client_id in self._sessions:
            stored, _ = self._sessions[session.client_id]
            for name in (
                "will_flag",
                "will_message",
                "will_topic",
                "will_qos",
                "keep_alive",
                "username",
                "password",
            ):
                setattr(stored, name, getattr(session, name))
            session = stored
            session.parent = 1
        else:
            session.parent = 0
        delay = self.config.get("timeout-disconnect-delay", 0)
        if session.keep_alive > 0 and isinstance(delay, int):
            session.keep_alive += delay
        return handler, session

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
import logging
import ssl
from dataclasses import dataclass, field
from typing import Any

from amqtt.contexts import Action
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin

from milkguard.broker_security import any_covers, verify_password

log = logging.getLogger("milkguard.broker")


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

    def _users(self) -> dict[str, dict[str, Any]]:
        config: GuardConfig = self.context.config
        return config.users

    async def authenticate(self, *, session: Any) -> bool:
        """A known user with the right password; anonymous and unknown users are refused."""
        entry = self._users().get(session.username) if session.username else None
        if entry is None:
            self.refused += 1
            log.warning(
                "broker.refused",
                extra={"user": session.username, "reason": "unknown user or no user name"},
            )
            return False
        # PBKDF2 takes a while: off the broker's event loop
        ok = await asyncio.to_thread(
            verify_password, session.password or "", entry["password_hash"]
        )
        if not ok:
            self.refused += 1
            log.warning("broker.refused", extra={"user": session.username, "reason": "password"})
            return False
        # amqtt publishes a last will without asking the topic plugins: a gateway could leave
        # a forged deviation as its will, so a will must be on a topic the user may publish on
        will_topic = session.will_topic if session.will_flag else None
        if will_topic is not None and not any_covers(entry["publish"], will_topic):
            self.refused += 1
            log.warning(
                "broker.refused",
                extra={"user": session.username, "reason": "will topic", "topic": will_topic},
            )
            return False
        return True

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
                extra={"user": username, "topic": topic, "action": getattr(action, "value", "")},
            )
        return allowed


def harden_listener_tls(context: ssl.SSLContext, listener: dict[str, Any]) -> ssl.SSLContext:
    """amqtt asks for client certificates but accepts none (CERT_OPTIONAL): require them when a
    client CA is configured; and refuse TLS older than 1.2."""
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if listener.get("cafile"):
        context.verify_mode = ssl.CERT_REQUIRED
    return context

"""Who may connect to the MQTT broker and what each may publish and read: one model, two brokers.

The model (:class:`BrokerSecurity`, ``mqtt.security`` in the settings) names users with a role
and a password hash, the listener's TLS files and an optional loopback listener. From it come
both the embedded amqtt broker's configuration (:func:`amqtt_config`, enforced by
:class:`milkguard.amqtt_guard.AmqttGuard`) and a Mosquitto configuration
(:func:`mosquitto_files`), so the two brokers enforce the same rules:

- gateway: publishes and reads ``milkguard/v1/gw/{its site}/{its gateway}/#`` only;
- stream: reads every gateway's batches and status; the only one to publish
  ``milkguard/v1/deviations/#`` and ``milkguard/v1/deadletter/#``;
- alerts: reads ``milkguard/v1/deviations/#`` and every gateway's status and batches (its
  device page shows them); the only one to publish ``milkguard/v1/alerts/#``;
- reader: reads ``milkguard/v1/#``, publishes nothing.

Passwords are stored only as PBKDF2-SHA512 hashes in the format ``mosquitto_passwd`` 2.0 writes
(``$7$iterations$salt$hash``, base64), which Mosquitto reads as is and the
embedded broker checks with :func:`hashlib.pbkdf2_hmac`. Anonymous access is only for a broker
that listens on loopback alone; :func:`exposure_problems` says what to configure otherwise.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from milkguard.contract.v1 import ID_PATTERN, TOPIC_ROOT

Role = Literal["gateway", "stream", "alerts", "reader"]

#: PBKDF2 rounds of new hashes. mosquitto_passwd 2.0 writes 101, far too few against an offline
#: guess; more costs CPU on every connect (a reconnect storm of a whole fleet pays it once per
#: gateway), ~0.1 s here. Mosquitto reads the count from each hash, so old hashes keep working.
HASH_ITERATIONS = 100_000
_SALT_BYTES = 12  # as mosquitto_passwd
HASH_PATTERN = r"^\$7\$[0-9]{1,9}\$[A-Za-z0-9+/]+={0,2}\$[A-Za-z0-9+/]+={0,2}$"
#: MQTT user names we accept: no topic wildcards or separators (they end up in ACL lines), no
#: ':' (the password file's separator), no spaces.
USER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$"


def hash_password(password: str, *, iterations: int = HASH_ITERATIONS) -> str:
    """A ``$7$`` PBKDF2-SHA512 hash of ``password`` that Mosquitto and MilkGuard both accept."""
    salt = os.urandom(_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, password_hash: str) -> bool:
    """True when ``password`` matches a ``$7$`` hash (constant-time comparison)."""
    try:
        _, kind, iterations, salt, digest = password_hash.split("$")
        if kind != "7":
            return False
        expected = base64.b64decode(digest, validate=True)
        computed = hashlib.pbkdf2_hmac(
            "sha512", password.encode(), base64.b64decode(salt, validate=True), int(iterations)
        )
    except ValueError:  # malformed hash or base64 (binascii.Error is a ValueError)
        return False
    return hmac.compare_digest(computed, expected)


class MqttUser(BaseModel):
    """One MQTT identity: a gateway, the stream, the alert service or a read-only client."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=USER_PATTERN, description="The MQTT user name.")
    role: Role
    password_hash: SecretStr = Field(
        description="`milkguard broker hash-password` prints one; never the password itself. "
        "Masked in logs too: a hash can be attacked offline.",
    )
    site: str | None = Field(default=None, pattern=ID_PATTERN, description="Gateways only.")
    gateway: str | None = Field(default=None, pattern=ID_PATTERN, description="Gateways only.")

    @field_validator("password_hash")
    @classmethod
    def _a_hash_not_a_password(cls, value: SecretStr) -> SecretStr:
        # fullmatch: re.match with $ also takes a trailing line break, a line of the password file
        if not re.fullmatch(HASH_PATTERN, value.get_secret_value()):
            raise ValueError(
                "password_hash must be a $7$ PBKDF2-SHA512 hash, not a password: make one with "
                "`milkguard broker hash-password` (or mosquitto_passwd 2.0)"
            )
        return value

    @model_validator(mode="after")
    def _gateway_bound_to_its_topics(self) -> MqttUser:
        if self.role == "gateway" and (self.site is None or self.gateway is None):
            raise ValueError(
                f"user {self.name!r} has role gateway: give its site and gateway, the only "
                "topics it may publish on are milkguard/v1/gw/{site}/{gateway}/#"
            )
        if self.role != "gateway" and (self.site is not None or self.gateway is not None):
            raise ValueError(f"user {self.name!r}: site and gateway are for role gateway only")
        return self

    def __repr__(self) -> str:
        return f"MqttUser({self.name!r}, role={self.role!r})"


class ListenerTls(BaseModel):
    """TLS of the broker's listener (PEM files)."""

    model_config = ConfigDict(extra="forbid")

    cert: Path = Field(description="Server certificate (chain), PEM.")
    key: Path = Field(description="Its private key, PEM.")
    client_ca: Path | None = Field(
        default=None,
        description="When set, every client must also present a certificate signed by this CA.",
    )


class BrokerSecurity(BaseModel):
    """``mqtt.security``: the broker's users, their roles, and its listeners' TLS."""

    model_config = ConfigDict(extra="forbid")

    users: list[MqttUser] = Field(
        default_factory=list,
        description="Empty: anonymous, allowed only while the broker listens on loopback.",
    )
    tls: ListenerTls | None = Field(default=None, description="TLS on mqtt.host:mqtt.port.")
    local_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="A second listener on 127.0.0.1 without TLS (same users and ACL) for the "
        "services on the broker's own host.",
    )

    @model_validator(mode="after")
    def _unique_names(self) -> BrokerSecurity:
        seen: set[str] = set()
        for user in self.users:
            if user.name in seen:
                raise ValueError(f"user {user.name!r} is listed twice")
            seen.add(user.name)
        return self

    def user(self, name: str | None) -> MqttUser | None:
        """The user of this name, if any."""
        return next((u for u in self.users if u.name == name), None)


@dataclass(frozen=True, slots=True)
class Grants:
    """Topic filters a user may publish on and read from."""

    publish: tuple[str, ...]
    read: tuple[str, ...]


def grants(user: MqttUser) -> Grants:
    """What a user's role allows: the single place the ACL is decided for both brokers."""
    match user.role:
        case "gateway":
            own = f"{TOPIC_ROOT}/gw/{user.site}/{user.gateway}/#"
            return Grants(publish=(own,), read=(own,))
        case "stream":
            return Grants(
                publish=(f"{TOPIC_ROOT}/deviations/#", f"{TOPIC_ROOT}/deadletter/#"),
                read=(f"{TOPIC_ROOT}/gw/+/+/batch", f"{TOPIC_ROOT}/gw/+/+/status"),
            )
        case "alerts":
            return Grants(
                publish=(f"{TOPIC_ROOT}/alerts/#",),
                read=(
                    f"{TOPIC_ROOT}/deviations/#",
                    f"{TOPIC_ROOT}/gw/+/+/status",
                    f"{TOPIC_ROOT}/gw/+/+/batch",
                ),
            )
        case "reader":
            return Grants(publish=(), read=(f"{TOPIC_ROOT}/#",))


def topic_matches(topic: str, allowed: str) -> bool:
    """True when a concrete topic falls under the filter ``allowed`` (MQTT matching)."""
    return filter_covers(allowed, topic)


def filter_covers(allowed: str, requested: str) -> bool:
    """True when every topic the filter ``requested`` can match is matched by ``allowed``.

    A concrete topic is a filter without wildcards, so this also decides publishing. ``#`` in
    ``requested`` is covered only by ``#``; ``+`` only by ``+`` or ``#``.
    """
    have = allowed.split("/")
    want = requested.split("/")
    for index, level in enumerate(have):
        if level == "#":
            # 'a/#' also matches 'a' itself (MQTT 4.7.1.2)
            return index <= len(want)
        if index >= len(want):
            return False
        if level == "+":
            if want[index] == "#":
                return False
            continue
        if level != want[index]:
            return False
    return len(want) == len(have)


def is_loopback(host: str) -> bool:
    """True when a listener on ``host`` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def exposure_problems(security: BrokerSecurity, host: str) -> list[str]:
    """What must be configured before a broker listening on ``host`` is safe; empty when it is."""
    if is_loopback(host):
        return []
    problems = []
    if not security.users:
        problems.append(
            "add mqtt.security.users (each with a role and a password_hash from "
            "`milkguard broker hash-password`): anonymous access is allowed on loopback only"
        )
    if security.tls is None:
        problems.append(
            "set mqtt.security.tls.cert and mqtt.security.tls.key: passwords must not cross "
            "the network in clear"
        )
    return problems


def known_gateways(security: BrokerSecurity) -> set[tuple[str, str]]:
    """(site, gateway) of every gateway the broker's security model (``mqtt.security``) names."""
    return {
        (user.site, user.gateway)
        for user in security.users
        if user.site is not None and user.gateway is not None
    }


# --- the embedded broker (amqtt 0.12) -------------------------------------------------------


def amqtt_config(security: BrokerSecurity, host: str, port: int) -> dict[str, Any]:
    """amqtt's configuration: listeners, and either anonymous access or :class:`AmqttGuard`."""
    listener: dict[str, Any] = {"type": "tcp", "bind": f"{host}:{port}"}
    if security.tls is not None:
        listener.update(ssl=True, certfile=str(security.tls.cert), keyfile=str(security.tls.key))
        if security.tls.client_ca is not None:
            listener["cafile"] = str(security.tls.client_ca)
    listeners: dict[str, Any] = {"default": listener}
    if security.local_port is not None:
        # amqtt fills every field another listener leaves at its default (ssl False among
        # them) from the listener named 'default': so the plaintext one must be 'default'
        listeners = {
            "default": {"type": "tcp", "bind": f"127.0.0.1:{security.local_port}"},
            "network": listener,
        }
    if not security.users:
        plugins: dict[str, Any] = {
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
        }
    else:
        plugins = {
            "milkguard.amqtt_guard.AmqttGuard": {
                "users": {
                    u.name: {
                        "password_hash": u.password_hash.get_secret_value(),
                        "publish": list(grants(u).publish),
                        "read": list(grants(u).read),
                        # a gateway's or reader's client id is put in its user's namespace,
                        # so it cannot take the id (and the session) of a service or another
                        # gateway
                        "namespaced": u.role in ("gateway", "reader"),
                    }
                    for u in security.users
                }
            }
        }
    return {"listeners": listeners, "plugins": plugins}


def any_covers(filters: Iterable[str], topic: str) -> bool:
    """True when one of ``filters`` covers ``topic`` (see :func:`filter_covers`)."""
    return any(filter_covers(allowed, topic) for allowed in filters)


# --- Mosquitto 2.0 ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueueSizing:
    """How much the broker must hold for the stream while it is away (a persistent session).

    Defaults are the edge agent's: a batch every ``batching.max_delay_s`` (2 s) and a status
    every ``heartbeat_s`` (30 s) per gateway.
    """

    gateways: int
    outage_h: float = 24.0
    batch_every_s: float = 2.0
    status_every_s: float = 30.0
    batch_bytes: int = 8_192

    @property
    def messages(self) -> int:
        """Messages the stream's session must be able to queue."""
        seconds = self.outage_h * 3600
        per_gateway = seconds / self.batch_every_s + seconds / self.status_every_s
        return math.ceil(max(self.gateways, 1) * per_gateway)

    @property
    def bytes(self) -> int:
        """Their size, counting every message as a batch."""
        return self.messages * self.batch_bytes

    def arithmetic(self) -> list[str]:
        """The sums, as lines for the configuration's comments."""
        seconds = round(self.outage_h * 3600)
        return [
            f"{max(self.gateways, 1)} gateway(s) x ({seconds} s / {self.batch_every_s:g} s per "
            f"batch + {seconds} s / {self.status_every_s:g} s per status)",
            f"  = {self.messages:,} messages for {self.outage_h:g} h without the stream",
            f"{self.messages:,} messages x {self.batch_bytes:,} bytes (a large batch)"
            f" = {self.bytes:,} bytes ({self.bytes / 2**20:,.0f} MiB, held in memory"
            " and in the persistence file)",
        ]


#: Outgoing QoS 1 messages per client not yet acknowledged. The stream acknowledges a batch
#: only at its checkpoint, once its outputs are durable (about once a second): in flight must
#: hold a second of batches at full rate, or Mosquitto stops delivering until the checkpoint.
#: Raw Mosquitto carries ~1 M readings/s here, 20,000 batches of 50 readings; packet ids allow
#: 65,535. (Mosquitto's default of 20 would cap the stream at 20 batches per checkpoint.)
MAX_INFLIGHT = 20_000
MAX_PACKET_BYTES = 16 * 2**20


def mosquitto_exposure_problems(security: BrokerSecurity, host: str) -> list[str]:
    """What must be configured before Mosquitto may listen on ``host``; empty when it is safe.

    :func:`exposure_problems`, and on the network a loopback listener for the services.
    """
    problems = exposure_problems(security, host)
    if security.users and not is_loopback(host) and security.local_port is None:
        problems.append(
            "set mqtt.security.local_port (a loopback listener for the stream, the bridge and "
            "the alert service): Mosquitto 2.0 binds no client id to a user, so on one listener "
            "a gateway logging in with the stream's client id would wipe its queued batches; "
            "on the network listener every client id is then its user name"
        )
    return problems


def mosquitto_files(
    security: BrokerSecurity,
    host: str,
    port: int,
    *,
    conf_dir: Path,
    persistence_dir: Path,
    sizing: QueueSizing,
    log_dest: str = "stdout",
    run_as: str | None = None,
) -> dict[str, str]:
    """``mosquitto.conf``, ``passwd`` and ``acl`` for Mosquitto 2.0, as file name -> text.

    ``conf_dir`` is where the files will be on the broker's host (the configuration names the
    password and ACL files by absolute path). ``run_as``: the user Mosquitto runs as when
    started by root (its ``user`` option; without it, Mosquitto's own default, ``mosquitto``).
    Raises ``ValueError`` naming what to configure when the listener would be reachable from
    the network without users and TLS.
    """
    problems = mosquitto_exposure_problems(security, host)
    if problems:
        raise ValueError(f"mqtt.host {host} is reachable from the network: " + "; ".join(problems))
    tls = security.tls
    _one_line_each(
        {
            "the data directory (data_dir)": [conf_dir, persistence_dir],
            "mqtt.security.tls.cert": [tls.cert if tls else None],
            "mqtt.security.tls.key": [tls.key if tls else None],
            "mqtt.security.tls.client_ca": [tls.client_ca if tls else None],
            "the user Mosquitto runs as": [run_as],
            "log_dest": [log_dest],
        }
    )
    lines = [
        "# MilkGuard's Mosquitto 2.0 configuration, generated by",
        "# `milkguard broker mosquitto-config` from mqtt.security in the settings. Change the",
        "# settings and generate again rather than editing this file.",
        "#",
        "# Left at Mosquitto's defaults, these lose data:",
        "# - persistence false: a restart forgets every session and every queued batch.",
        "# - autosave_interval 1800: a crash loses up to 30 min of queued batches.",
        "# - max_queued_messages 1000: while the stream is away, batch 1,001 and later are",
        "#   dropped although the broker acknowledged them to the gateways (which then delete",
        "#   them from their outbox). Measured: 5,300 batches lost in a 30 s stop at 50/s.",
        "# - max_inflight_messages 20: not a loss, but it throttles the stream and the bridge,",
        "#   which acknowledge a batch only once it is stored.",
        "",
        "per_listener_settings true",
        *([f"user {run_as}"] if run_as is not None else []),
        "persistence true",
        f"persistence_location {persistence_dir}/",
        "# queued batches reach the disk at most this long after they arrive",
        "autosave_interval 60",
        "# no persistent_client_expiration: sessions never expire, so a stream stopped for",
        "# maintenance finds its batches waiting",
        "",
        "# max_queued_messages / max_queued_bytes: what one persistent session (the stream's,",
        "# the bridge's) may hold while its client is away; the limits are per client",
        *(f"#   {line}" for line in sizing.arithmetic()),
        f"max_queued_messages {sizing.messages}",
        f"max_queued_bytes {sizing.bytes}",
        f"max_inflight_messages {MAX_INFLIGHT}",
        "queue_qos0_messages false",
        "# the contract's largest batch (50,000 readings of at most ~250 bytes, ~12.5 MB) fits;",
        "# a client sending a larger packet is disconnected instead of filling the queues",
        f"max_packet_size {MAX_PACKET_BYTES}",
        "",
        f"log_dest {log_dest}",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "connection_messages true",
        "",
    ]
    lines += _mosquitto_listener(security, port, host, conf_dir, tls=security.tls)
    if security.local_port is not None:
        lines += [
            "# the services on this host (stream, bridge, alert service): loopback only, no TLS,",
            "# the same users and ACL",
        ]
        lines += _mosquitto_listener(security, security.local_port, "127.0.0.1", conf_dir, None)
    files = {"mosquitto.conf": "\n".join(lines) + "\n"}
    if security.users:
        files["passwd"] = "".join(
            f"{u.name}:{u.password_hash.get_secret_value()}\n" for u in security.users
        )
        files["acl"] = mosquitto_acl(security)
    return files


def _one_line_each(values: dict[str, list[object]]) -> None:
    """Refuse a value with a line break or another control character: each is written into one
    line of ``mosquitto.conf``, where a line break would add a directive of the value's choosing
    (an anonymous listener on the network, say). User names, sites and gateways are held to
    their patterns by the model."""
    for what, each in values.items():
        for value in each:
            text = "" if value is None else str(value)
            if any(ord(c) < 32 or ord(c) == 127 for c in text):
                raise ValueError(
                    f"{what} {text!r} has a line break or another control character, which "
                    "would end a line of mosquitto.conf: give a path without one"
                )


def _mosquitto_listener(
    security: BrokerSecurity, port: int, host: str, conf_dir: Path, tls: ListenerTls | None
) -> list[str]:
    lines = [f"listener {port} {host}"]
    if not security.users:
        lines += ["# anonymous: loopback only (checked when generated)", "allow_anonymous true"]
    else:
        lines += [
            "allow_anonymous false",
            f"password_file {conf_dir / 'passwd'}",
            f"acl_file {conf_dir / 'acl'}",
        ]
    if tls is not None and security.users and security.local_port is not None:
        lines += [
            "# the services use the loopback listener; here every client id is its user name,",
            "# so no gateway can take over (and silence) the stream's persistent session",
            "use_username_as_clientid true",
        ]
    if tls is not None:
        lines += [f"certfile {tls.cert}", f"keyfile {tls.key}", "tls_version tlsv1.2"]
        if tls.client_ca is not None:
            lines += [
                f"cafile {tls.client_ca}",
                "require_certificate true",
                "use_identity_as_username false",
            ]
    return [*lines, ""]


def mosquitto_acl(security: BrokerSecurity) -> str:
    """The ACL file: one ``user`` block per user, its role's grants and nothing else."""
    lines = [
        "# Generated by `milkguard broker mosquitto-config`. A user may do only what is listed",
        "# under its name: a gateway publishes on its own topics only, only the stream publishes",
        "# deviations and dead letters, only the alert service publishes alerts.",
        "",
    ]
    for user in security.users:
        granted = grants(user)
        where = f" {user.site}/{user.gateway}" if user.role == "gateway" else ""
        lines += [f"# {user.role}{where}", f"user {user.name}"]
        for topic in dict.fromkeys((*granted.publish, *granted.read)):
            access = (
                "readwrite"
                if topic in granted.publish and topic in granted.read
                else "write"
                if topic in granted.publish
                else "read"
            )
            lines.append(f"topic {access} {topic}")
        lines.append("")
    return "\n".join(lines)

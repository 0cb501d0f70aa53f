"""Both brokers started from one security model, for the tests of who may do what.

The embedded amqtt broker gets it through :class:`milkguard.brokers.EmbeddedBroker`; a real
Mosquitto 2.0 gets the files ``milkguard broker mosquitto-config`` writes, started by PID.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from milkguard.broker_security import (
    BrokerSecurity,
    ListenerTls,
    MqttUser,
    QueueSizing,
    hash_password,
    mosquitto_files,
)
from milkguard.brokers import EmbeddedBroker
from milkguard.mqtt import BrokerAddress
from tests.servers import TlsFiles, free_port, require_binary, stop, wait_for_port

#: few PBKDF2 rounds: the tests connect often, and the strength is not what they check
ROUNDS = 1_000

#: user name -> (password, role, site, gateway)
PEOPLE: dict[str, tuple[str, str, str | None, str | None]] = {
    "gw-farm-01": ("farm-secret-1", "gateway", "farm-01", "tank-1"),
    "gw-farm-02": ("farm-secret-2", "gateway", "farm-02", "tank-9"),
    "stream": ("stream-secret", "stream", None, None),
    "alerts": ("alerts-secret", "alerts", None, None),
    "auditor": ("auditor-secret", "reader", None, None),
}


def security_model(tls: TlsFiles, *, client_ca: bool = False) -> BrokerSecurity:
    """Two gateways, the stream and the alert service; TLS; a loopback listener."""
    users = [
        MqttUser(
            name=name,
            role=role,  # type: ignore[arg-type]
            password_hash=hash_password(password, iterations=ROUNDS),  # type: ignore[arg-type]
            site=site,
            gateway=gateway,
        )
        for name, (password, role, site, gateway) in PEOPLE.items()
    ]
    return BrokerSecurity(
        users=users,
        tls=ListenerTls(
            cert=tls.server_cert, key=tls.server_key, client_ca=tls.ca if client_ca else None
        ),
        local_port=free_port(),
    )


@dataclass(frozen=True)
class SecuredBroker:
    """Where a broker started from :func:`security_model` listens."""

    kind: str
    tls_port: int
    local_port: int
    ca: Path

    def over_tls(self, user: str | None, password: str | None = None) -> BrokerAddress:
        """The TLS listener, as ``user`` (its own password unless given)."""
        return BrokerAddress(
            "127.0.0.1",
            self.tls_port,
            username=user,
            password=password if password is not None else _password(user),
            tls_ca=self.ca,
        )

    def on_loopback(self, user: str | None, password: str | None = None) -> BrokerAddress:
        """The plaintext loopback listener, as ``user``."""
        return BrokerAddress(
            "127.0.0.1",
            self.local_port,
            username=user,
            password=password if password is not None else _password(user),
        )


def _password(user: str | None) -> str | None:
    return PEOPLE[user][0] if user in PEOPLE else None


@contextmanager
def secured_broker(
    kind: str, directory: Path, tls: TlsFiles, *, client_ca: bool = False
) -> Iterator[SecuredBroker]:
    """``kind`` ``embedded`` or ``mosquitto``, started from the same model, stopped after."""
    security = security_model(tls, client_ca=client_ca)
    port = free_port()
    assert security.local_port is not None
    broker = SecuredBroker(kind, port, security.local_port, tls.ca)
    if kind == "embedded":
        with EmbeddedBroker("127.0.0.1", port, security):
            yield broker
        return
    process = start_generated_mosquitto(directory, security, port)
    try:
        yield broker
    finally:
        stop(process)


def start_generated_mosquitto(
    directory: Path, security: BrokerSecurity, port: int
) -> subprocess.Popen[bytes]:
    """Mosquitto with exactly the files the generator writes (plus ``user root`` as root: it
    would drop to user mosquitto, who cannot read the test's private folder)."""
    binary = require_binary("mosquitto", "mosquitto")
    store = directory / "store"
    store.mkdir(exist_ok=True)
    files = mosquitto_files(
        security,
        "127.0.0.1",
        port,
        conf_dir=directory,
        persistence_dir=store,
        sizing=QueueSizing(gateways=2),
    )
    if os.geteuid() == 0:
        files["mosquitto.conf"] = "user root\n" + files["mosquitto.conf"]
    for name, text in files.items():
        (directory / name).write_text(text, encoding="utf-8")
    with (directory / "mosquitto.log").open("wb") as log:
        process = subprocess.Popen(
            [binary, "-c", str(directory / "mosquitto.conf")], stdout=log, stderr=subprocess.STDOUT
        )
    wait_for_port(port, process)
    wait_for_port(security.local_port or port, process)
    return process

"""MQTT brokers MilkGuard starts itself: which one ``milkguard run`` uses, and the in-process one.

``mqtt.broker`` decides (:func:`own_broker`): ``mosquitto`` starts Mosquitto as a child process
(:mod:`milkguard.mosquitto`); ``embedded`` runs amqtt in this process; ``auto``, the default,
is Mosquitto where the binary is installed and amqtt elsewhere; ``external`` starts nothing.
amqtt is demo-grade: it holds what it acknowledged to gateways in this process's memory, so a
killed service loses it, and its thread competes with the engine for the interpreter.

amqtt runs in its own thread with its own asyncio loop, bound where the settings say (never the
library's default 0.0.0.0 by accident). Who may connect and what they may do comes from
``mqtt.security`` (:mod:`milkguard.broker_security`): without users it is anonymous, which
:func:`milkguard.broker_security.exposure_problems` allows on loopback only. It is 3-4x slower
than Mosquitto, which is plenty for one site; a large install uses Mosquitto (the default where
it is installed) configured from the same model.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

from milkguard.broker_security import (
    BrokerSecurity,
    QueueSizing,
    amqtt_config,
    exposure_problems,
    known_gateways,
    mosquitto_exposure_problems,
    verify_password,
)
from milkguard.errors import BrokerError, ConfigError, ExtraMissing
from milkguard.mosquitto import MosquittoChild, find_mosquitto
from milkguard.mqtt import BrokerAddress
from milkguard.settings import CommonSettings, broker_address

log = logging.getLogger(__name__)


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def own_clients_address(settings: CommonSettings) -> BrokerAddress:
    """Where the service's own clients reach the embedded broker it runs.

    The loopback listener (``mqtt.security.local_port``) when there is one; else mqtt.host, or
    127.0.0.1 for a wildcard host (0.0.0.0, ::), whose certificate must then name 127.0.0.1.
    """
    address = broker_address(settings)
    local_port = settings.mqtt.security.local_port
    if local_port is not None:
        return replace(
            address, host="127.0.0.1", port=local_port, tls_ca=None, tls_cert=None, tls_key=None
        )
    if address.host in ("0.0.0.0", "::", ""):  # noqa: S104 - recognising it, not binding to it
        return replace(address, host="127.0.0.1")
    return address


def check_own_credentials(settings: CommonSettings, *, demo_fleet: bool) -> None:
    """The service's own clients must be able to reach its embedded broker (TLS trusted, or
    the loopback listener) and, with users configured, log in as the stream; the demo fleet
    (which has no gateway credentials) cannot run then. A :class:`ConfigError` saying what
    to set, before anything starts."""
    security = settings.mqtt.security
    if security.tls is not None and security.local_port is None and settings.mqtt.tls_ca is None:
        raise ConfigError(
            "mqtt.security.tls puts TLS on mqtt.port, but mqtt.tls_ca is not set, so the "
            "stream's own clients could not connect: set mqtt.tls_ca to the CA that signed "
            f"{security.tls.cert}, or mqtt.security.local_port for a loopback listener"
        )
    if not security.users:
        return
    if demo_fleet:
        raise ConfigError(
            "the demo fleet cannot run with mqtt.security.users set (it has no gateway "
            "credentials): run with --no-simulators, or remove mqtt.security.users for a "
            "loopback-only demo"
        )
    user = security.user(settings.mqtt.username)
    if user is None or user.role != "stream":
        raise ConfigError(
            f"mqtt.username is {settings.mqtt.username!r}, which is not a user with role "
            "stream in mqtt.security.users: the stream could not connect to its own broker. "
            "Set mqtt.username (MILKGUARD_MQTT__USERNAME) and mqtt.password to the stream's."
        )
    password = settings.mqtt.password.get_secret_value() if settings.mqtt.password else ""
    if not verify_password(password, user.password_hash.get_secret_value()):
        raise ConfigError(
            f"mqtt.password does not match the password_hash of user {user.name!r} in "
            "mqtt.security.users: set MILKGUARD_MQTT__PASSWORD to the password that hash was "
            "made from (`milkguard broker hash-password`)"
        )


#: Gateways assumed for the child's queue sizing when ``mqtt.security`` names none (an
#: anonymous broker on loopback: the demo fleet, a load test).
UNNAMED_GATEWAYS = 100


def own_broker(
    settings: CommonSettings, data_dir: Path, *, demo_fleet: bool
) -> EmbeddedBroker | MosquittoChild | None:
    """The broker ``milkguard run`` starts, as ``mqtt.broker`` asks (None: ``external``), not
    started yet; one log line says which and why.

    Checks first that the service's own clients can log in to it
    (:func:`check_own_credentials`) and that it would not be open to the network.
    """
    mqtt = settings.mqtt
    if mqtt.broker == "external":
        log.info(
            "broker.chosen",
            extra={
                "broker": "external",
                "why": "mqtt.broker is external",
                "address": f"{mqtt.host}:{mqtt.port}",
            },
        )
        return None
    check_own_credentials(settings, demo_fleet=demo_fleet)
    binary = find_mosquitto() if mqtt.broker in ("auto", "mosquitto") else None
    if mqtt.broker == "mosquitto" and binary is None:
        raise ConfigError(
            "mqtt.broker is mosquitto, but no mosquitto binary is on PATH or in /usr/sbin: "
            "install it (apt-get install mosquitto; `make run` does it), or set mqtt.broker: "
            "embedded for the in-process demo broker"
        )
    if binary is None:
        why = (
            "mqtt.broker is embedded"
            if mqtt.broker == "embedded"
            else "mqtt.broker is auto and no mosquitto binary is installed"
        )
        log.warning(
            "broker.chosen",
            extra={
                "broker": "amqtt (embedded, demo-grade)",
                "why": why,
                "risk": "what it acknowledged to gateways is lost if this process is killed",
                "fix": "apt-get install mosquitto, then mqtt.broker: auto or mosquitto",
            },
        )
        return EmbeddedBroker(mqtt.host, mqtt.port, mqtt.security)
    refuse_exposed("Mosquitto", mqtt.host, mosquitto_exposure_problems(mqtt.security, mqtt.host))
    log.info(
        "broker.chosen",
        extra={
            "broker": "mosquitto (child process)",
            "why": f"mqtt.broker is {mqtt.broker} and {binary} is installed",
            "address": f"{mqtt.host}:{mqtt.port}",
        },
    )
    return MosquittoChild(
        binary,
        mqtt.security,
        mqtt.host,
        mqtt.port,
        directory=data_dir / "mosquitto",
        sizing=QueueSizing(len(known_gateways(mqtt.security)) or UNNAMED_GATEWAYS),
        probe=own_clients_address(settings),
    )


def refuse_exposed(what: str, host: str, problems: list[str]) -> None:
    """A :class:`ConfigError` listing ``problems`` when a broker on ``host`` would be open."""
    if problems:
        raise ConfigError(
            f"refusing to start {what} on mqtt.host {host}: it is reachable from the network, "
            "and anyone could publish as any gateway. Either set mqtt.host: 127.0.0.1, or:\n"
            + "\n".join(f"  - {problem}" for problem in problems)
        )


class EmbeddedBroker:
    """An amqtt broker in a background thread; use as a context manager.

    Refuses (:class:`ConfigError`) to listen beyond loopback without users and TLS.
    """

    def __init__(self, host: str, port: int, security: BrokerSecurity | None = None) -> None:
        self.host = host
        self.port = port
        self.security = security or BrokerSecurity()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopping: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._error: BaseException | None = None

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the broker and wait until it accepts connections."""
        try:
            import amqtt.broker  # noqa: F401, PLC0415 - optional part, imported when used
        except ImportError as exc:
            raise ExtraMissing("The embedded MQTT broker", "stream", "amqtt") from exc
        refuse_exposed(
            "the embedded MQTT broker", self.host, exposure_problems(self.security, self.host)
        )
        for tls_file in self._tls_files():
            if not tls_file.is_file():
                raise ConfigError(
                    f"mqtt.security.tls: {tls_file} is not a readable file (PEM expected)"
                )
        listeners = [(self.host, self.port)]
        if self.security.local_port is not None:
            listeners.append(("127.0.0.1", self.security.local_port))
        taken = [port for host, port in listeners if not port_is_free(host, port)]
        if taken:
            raise BrokerError(
                f"cannot start the embedded MQTT broker: port {taken[0]} is in use. "
                "Set another port (MILKGUARD_MQTT__PORT or mqtt.port, mqtt.security.local_port "
                "in the settings file), or point MilkGuard at that broker with "
                "mqtt.broker: external."
            )
        self._thread = threading.Thread(target=self._run, name="embedded-broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s) or self._error is not None:
            raise BrokerError(
                f"the embedded MQTT broker did not start on {self.host}:{self.port}: "
                f"{self._error or 'timed out'}"
            )
        log.info(
            "broker.embedded.started",
            extra={
                "address": f"{self.host}:{self.port}",
                "tls": self.security.tls is not None,
                "users": len(self.security.users),
                "local_port": self.security.local_port,
            },
        )

    def _tls_files(self) -> list[Path]:
        tls = self.security.tls
        if tls is None:
            return []
        return [tls.cert, tls.key] + ([tls.client_ca] if tls.client_ca else [])

    def stop(self) -> None:
        """Shut the broker down and wait for its thread."""
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to start(); the thread must not die silently
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        from milkguard.amqtt_guard import GuardedBroker  # noqa: PLC0415 - imports amqtt

        config: dict[str, Any] = amqtt_config(self.security, self.host, self.port)
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        broker = GuardedBroker(config)
        await broker.start()
        self._ready.set()
        await self._stopping.wait()
        await broker.shutdown()

"""MQTT brokers MilkGuard starts itself: the embedded in-process broker for the default run.

amqtt runs in its own thread with its own asyncio loop, bound to 127.0.0.1 (never the library's
default 0.0.0.0). It is 3-4x slower than Mosquitto, which is plenty for one site's demo; a real
install points ``mqtt.broker: external`` at Mosquitto.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from typing import Any

from milkguard.errors import BrokerError, ExtraMissing

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


class EmbeddedBroker:
    """An amqtt broker in a background thread; use as a context manager."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
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
        if not port_is_free(self.host, self.port):
            raise BrokerError(
                f"cannot start the embedded MQTT broker: {self.host}:{self.port} is in use. "
                "Set another port (MILKGUARD_MQTT__PORT or mqtt.port in the settings file), or "
                "point MilkGuard at that broker with mqtt.broker: external."
            )
        self._thread = threading.Thread(target=self._run, name="embedded-broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s) or self._error is not None:
            raise BrokerError(
                f"the embedded MQTT broker did not start on {self.host}:{self.port}: "
                f"{self._error or 'timed out'}"
            )
        log.info("broker.embedded.started", extra={"address": f"{self.host}:{self.port}"})

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
        from amqtt.broker import Broker  # noqa: PLC0415 - optional part

        config: dict[str, Any] = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        broker = Broker(config)
        await broker.start()
        self._ready.set()
        await self._stopping.wait()
        await broker.shutdown()

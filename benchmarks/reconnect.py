"""How a fleet comes back after a broker restart: MilkGuard's connections against paho's own
reconnect, in one run against one Mosquitto.

``clients`` connections of each kind are connected to a Mosquitto on 127.0.0.1 and a free port;
the broker is stopped and started again at once, and the instant each client's CONNACK comes
back is noted. paho's own reconnect (``loop_start`` with ``reconnect_delay_set(1, 30)``, paho
2.2) waits the same delay in every client; :class:`milkguard.mqtt.Connection` draws each delay
from its own jittered backoff (1-30 s). Printed for each kind: the first and last reconnect after
the restart, and the most reconnects that fell within one 100 ms window (what the broker has to
take at once).
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from milkguard.errors import BrokerError
from milkguard.mqtt import BrokerAddress, Connection, connect, paho_module

WINDOW_S = 0.1


@dataclass(frozen=True, slots=True)
class Comeback:
    """When the clients of one kind were back, in seconds after the broker was started again."""

    kind: str
    instants: list[float]

    def line(self) -> str:
        """One printed line."""
        if not self.instants:
            return f"{self.kind:<22} no client came back"
        ordered = sorted(self.instants)
        busiest = max(sum(1 for t in ordered if start <= t < start + WINDOW_S) for start in ordered)
        return (
            f"{self.kind:<22} {len(ordered)} back between {ordered[0]:.2f} s and "
            f"{ordered[-1]:.2f} s; at most {busiest} within {WINDOW_S * 1000:.0f} ms"
        )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _start(binary: str, config: Path, port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return process
        time.sleep(0.02)
    process.kill()
    raise BrokerError(f"mosquitto did not start on 127.0.0.1:{port}")


def _paho_client(port: int, client_id: str, on_back: Callable[[], None]) -> Any:
    paho = paho_module()
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id)
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    connected = threading.Event()

    def on_connect(c: Any, u: object, flags: object, reason: Any, props: object) -> None:
        if connected.is_set():
            on_back()
        connected.set()

    client.on_connect = on_connect
    client.connect("127.0.0.1", port)
    client.loop_start()
    connected.wait(10)
    return client


def _after_the_first(note: Callable[[], None]) -> Callable[[object], None]:
    """An on-connect hook that notes every connect but the first (which is no comeback)."""
    seen = 0

    def on_connect(_client: object) -> None:
        nonlocal seen
        seen += 1
        if seen > 1:
            note()

    return on_connect


def measure(clients: int = 20) -> list[Comeback]:
    """Restart a Mosquitto under ``clients`` connections of each kind (about 10 s)."""
    binary = shutil.which("mosquitto")
    if binary is None:
        raise BrokerError("the reconnect benchmark needs mosquitto: apt-get install mosquitto")
    port = _free_port()
    back: dict[str, list[float]] = {"milkguard Connection": [], "paho reconnect": []}
    restarted = [0.0]
    lock = threading.Lock()

    def noter(kind: str) -> Callable[[], None]:
        def note() -> None:
            with lock:
                back[kind].append(time.monotonic() - restarted[0])

        return note

    with tempfile.TemporaryDirectory() as directory:
        config = Path(directory) / "mosquitto.conf"
        config.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n",
            encoding="utf-8",
        )
        broker = _start(binary, config, port)
        ours: list[Connection] = []
        theirs: list[Any] = []
        try:
            for n in range(clients):
                ours.append(
                    connect(
                        BrokerAddress("127.0.0.1", port),
                        f"ours-{n}",
                        on_connect_extra=_after_the_first(noter("milkguard Connection")),
                    )
                )
                theirs.append(_paho_client(port, f"paho-{n}", noter("paho reconnect")))
            broker.terminate()
            broker.wait(10)
            broker = _start(binary, config, port)
            restarted[0] = time.monotonic()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and any(len(v) < clients for v in back.values()):
                time.sleep(0.05)
        finally:
            for connection in ours:
                connection.disconnect()
            for client in theirs:
                client.disconnect()
                client.loop_stop()
            broker.terminate()
            broker.wait(10)
    return [Comeback(kind, instants) for kind, instants in back.items()]


def main(clients: int = 20) -> None:
    """Measure and print (the CLI's ``bench reconnect``)."""
    logging.getLogger("milkguard.mqtt").setLevel(logging.ERROR)  # 2 x clients "link lost"
    print(f"{clients} clients of each kind, Mosquitto stopped and started again at once")
    for comeback in measure(clients):
        print(comeback.line())


if __name__ == "__main__":
    main()

"""``milkguard bench edge``: the agent's footprint on a gateway, and how fast it drains a backlog.

Both run the real agent (``milkguard edge run``) as its own process against a real MQTT broker
(Mosquitto started on 127.0.0.1 and a free port, or ``--mqtt HOST:PORT``), with a subscriber
counting what arrives at the broker.

- **footprint**: ``channels`` simulated channels sampled at 1 Hz for ``seconds``; resident
  memory (peak and at the end) and CPU time as a share of one core, read by psutil.
- **drain**: an outbox holding ``hours`` of those channels at 1 Hz (what a day-long outage
  leaves), then the agent starts and the link is up; readings per second from the agent's start
  until the subscriber has every one of them, at the configured rate cap (default 50,000/s).
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from edge.outbox import Outbox
from milkguard import mqtt as mqtt_connect
from milkguard.contract.v1 import Reading
from milkguard.errors import BrokerError, MilkGuardError

T_START = 1_795_341_600_000  # 2026-11-22T10:00:00Z: the outage starts here


@dataclass(frozen=True)
class Footprint:
    """The agent's resource use while sampling."""

    channels: int
    seconds: float
    rss_peak_mb: float
    rss_end_mb: float
    cpu_percent: float
    readings_received: int


@dataclass(frozen=True)
class Drain:
    """How fast a stored backlog left the gateway."""

    readings: int
    fill_s: float
    outbox_mb: float
    drain_s: float
    rss_peak_mb: float
    cap_per_s: float

    @property
    def per_second(self) -> float:
        """Readings drained per second."""
        return self.readings / self.drain_s


def machine() -> str:
    """What the figures were measured on."""
    return f"{os.cpu_count()} cores, Python {platform.python_version()}, {platform.machine()}"


@contextlib.contextmanager
def broker(where: str | None, directory: Path) -> Iterator[tuple[str, int]]:
    """``where`` (HOST:PORT), or a Mosquitto of our own on 127.0.0.1 and a free port."""
    if where is not None:
        host, _, given = where.rpartition(":")
        yield host or "127.0.0.1", int(given)
        return
    binary = shutil.which("mosquitto")
    if binary is None:
        raise BrokerError(
            "the edge benchmark needs an MQTT broker: install mosquitto "
            "(apt-get install mosquitto) or pass --mqtt HOST:PORT"
        )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    config = directory / "mosquitto.conf"
    config.write_text(
        f"persistence false\nlog_dest none\nlistener {port} 127.0.0.1\n"
        "allow_anonymous true\nmax_queued_messages 1000000\n",
        encoding="utf-8",
    )
    process = subprocess.Popen([binary, "-c", str(config)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while _refused(port):
            if time.monotonic() > deadline or process.poll() is not None:
                raise BrokerError(f"mosquitto did not start on 127.0.0.1:{port}")
            time.sleep(0.05)
        yield "127.0.0.1", port
    finally:
        process.terminate()
        process.wait(timeout=10)


def _refused(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


class _Counter:
    """Counts readings arriving on the gateway's batch topic (persistent session, QoS 1)."""

    def __init__(self, host: str, port: int) -> None:
        self.readings = 0
        self.batches = 0
        self.last_at = 0.0
        self._lock = threading.Lock()
        decoder = msgspec.json.Decoder()

        def on_message(client: Any, userdata: Any, msg: Any) -> None:
            count = len(decoder.decode(msg.payload).get("readings", ()))
            with self._lock:
                self.readings += count
                self.batches += 1
                self.last_at = time.monotonic()

        self.connection = mqtt_connect.connect(
            mqtt_connect.BrokerAddress(host, port),
            f"bench-counter-{os.getpid()}",
            on_message=on_message,
            on_connect_extra=lambda c: c.subscribe("milkguard/v1/gw/+/+/batch", qos=1),
        )

    def close(self) -> None:
        self.connection.close()


def _config(directory: Path, host: str, port: int, channels: int, **extra: Any) -> Path:
    per_source = 10
    sources = [
        {
            "name": f"tanks-{s}",
            "driver": "simulated",
            "model": "farm_tank",
            "every_s": 1.0,
            "channels": [
                {
                    "quantity": "temp_c",
                    "asset": f"tank-{s}",
                    "channel": f"probe-{c}",
                    "unit": "degC",
                    "limits": {"high": 6.0},
                }
                for c in range(min(per_source, channels - s * per_source))
            ],
        }
        for s in range((channels + per_source - 1) // per_source)
    ]
    document = {
        "site": "bench-farm",
        "gateway": "bench-gw",
        "data_dir": str(directory / "edge"),
        "mqtt": {"host": host, "port": port},
        "clock": {"source": "kernel"},
        "sources": sources,
        "log_level": "WARNING",
        **extra,
    }
    path = directory / "edge.yaml"
    path.write_bytes(msgspec.json.encode(document))  # JSON is YAML
    return path


def _start_agent(config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "milkguard", "edge", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
    )


def _stop_agent(agent: subprocess.Popen[bytes]) -> None:
    agent.send_signal(signal.SIGTERM)
    try:
        agent.wait(timeout=30)
    except subprocess.TimeoutExpired:
        agent.kill()
        agent.wait()


def footprint(
    channels: int = 50,
    seconds: float = 60.0,
    where: str | None = None,
    tick: Callable[[float], None] = lambda fraction: None,
) -> Footprint:
    """Run the agent sampling ``channels`` at 1 Hz for ``seconds``; its RSS and CPU share."""
    import psutil  # noqa: PLC0415 - a benchmark dependency, not the gateway's

    with tempfile.TemporaryDirectory(prefix="milkguard-bench-") as tmp:
        directory = Path(tmp)
        with broker(where, directory) as (host, port):
            counter = _Counter(host, port)
            agent = _start_agent(_config(directory, host, port, channels))
            process = psutil.Process(agent.pid)
            try:
                time.sleep(3)  # imports and the first connection are not the steady state
                cpu_before = sum(process.cpu_times()[:2])
                started = time.monotonic()
                peak = 0
                while (elapsed := time.monotonic() - started) < seconds:
                    peak = max(peak, process.memory_info().rss)
                    tick(elapsed / seconds)
                    time.sleep(0.5)
                cpu = sum(process.cpu_times()[:2]) - cpu_before
                end = process.memory_info().rss
                elapsed = time.monotonic() - started
            finally:
                _stop_agent(agent)
                counter.close()
            if agent.returncode != 0:
                raise MilkGuardError(f"the agent exited with status {agent.returncode}")
    return Footprint(
        channels=channels,
        seconds=elapsed,
        rss_peak_mb=max(peak, end) / 1e6,
        rss_end_mb=end / 1e6,
        cpu_percent=100 * cpu / elapsed,
        readings_received=counter.readings,
    )


def drain(
    hours: float = 24.0,
    channels: int = 50,
    cap_per_s: float = 50_000,
    where: str | None = None,
    tick: Callable[[str, float], None] = lambda stage, fraction: None,
) -> Drain:
    """Fill an outbox with ``hours`` of ``channels`` at 1 Hz, then time the agent draining it."""
    import psutil  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="milkguard-bench-") as tmp:
        directory = Path(tmp)
        with broker(where, directory) as (host, port):
            config = _config(
                directory,
                host,
                port,
                channels,
                drain={"max_readings_per_s": cap_per_s, "in_flight": 20},
                batching={"max_readings": 1000, "max_delay_s": 2},
            )
            filled_at = time.monotonic()
            backlog, size = _fill(directory / "edge", hours, channels, tick)
            fill_s = time.monotonic() - filled_at
            counter = _Counter(host, port)
            started = time.monotonic()
            agent = _start_agent(config)
            process = psutil.Process(agent.pid)
            peak = 0
            try:
                while counter.readings < backlog:
                    if agent.poll() is not None:
                        raise MilkGuardError(f"the agent exited with status {agent.returncode}")
                    peak = max(peak, process.memory_info().rss)
                    tick("drain", counter.readings / backlog)
                    time.sleep(0.2)
                drained_s = counter.last_at - started
            finally:
                _stop_agent(agent)
                counter.close()
    return Drain(
        readings=backlog,
        fill_s=fill_s,
        outbox_mb=size / 1e6,
        drain_s=drained_s,
        rss_peak_mb=peak / 1e6,
        cap_per_s=cap_per_s,
    )


def _fill(
    data_dir: Path, hours: float, channels: int, tick: Callable[[str, float], None]
) -> tuple[int, int]:
    """What ``hours`` of outage leave in the outbox: every reading, stored an hour at a time."""
    outbox = Outbox(data_dir / "outbox.sqlite", site="bench-farm", gateway="bench-gw", first_seq=1)
    seconds = int(hours * 3600)
    names = [(f"tank-{c // 10}", f"probe-{c % 10}") for c in range(channels)]
    step = 3600
    for start in range(0, seconds, step):
        outbox.add(
            [
                Reading(asset, channel, 3.8 + (s % 60) / 100, "degC", T_START + s * 1000)
                for s in range(start, min(start + step, seconds))
                for asset, channel in names
            ]
        )
        tick("fill", (start + step) / seconds)
    stored, size = outbox.pending, outbox.size_bytes
    outbox.close()
    return stored, size

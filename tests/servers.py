"""Real servers for integration tests, started on 127.0.0.1 and a free port, stopped by PID.

With CI=true a missing server binary fails the test; elsewhere it skips with the install hint.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def require_binary(name: str, debian_package: str) -> str:
    """The binary's path; fail under CI, skip elsewhere, when it is not installed."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed: apt-get install {debian_package} (make test does it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    """Wait until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early with status {process.returncode}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout_s} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate by PID, kill if it does not exit."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@dataclass
class Mosquitto:
    """A running Mosquitto broker."""

    host: str
    port: int
    process: subprocess.Popen[bytes]
    config: Path

    def stop(self) -> None:
        """Stop the broker (in-memory sessions are lost)."""
        stop(self.process)

    def start(self) -> None:
        """Start again on the same port."""
        self.process = _spawn_mosquitto(self.config)
        wait_for_port(self.port, self.process)


def _spawn_mosquitto(config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [require_binary("mosquitto", "mosquitto"), "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def start_mosquitto(directory: Path) -> Mosquitto:
    """Start Mosquitto on 127.0.0.1 and a free port, anonymous access."""
    require_binary("mosquitto", "mosquitto")
    port = free_port()
    config = directory / "mosquitto.conf"
    config.write_text(
        "per_listener_settings true\n"
        "persistence false\n"
        "log_dest stdout\n"
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous true\n"
        "max_queued_messages 100000\n",
        encoding="utf-8",
    )
    process = _spawn_mosquitto(config)
    wait_for_port(port, process)
    return Mosquitto("127.0.0.1", port, process, config)


@dataclass
class VictoriaMetrics:
    """A running VictoriaMetrics, which accepts InfluxDB v2 writes on /api/v2/write."""

    url: str
    process: subprocess.Popen[bytes]

    def export(self, match: str) -> str:
        """JSON lines of every series matching ``match`` (its own export API)."""
        data = f"match[]={match}".encode()
        request = urllib.request.Request(f"{self.url}/api/v1/export", data=data)  # noqa: S310
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - 127.0.0.1
            return str(response.read().decode())

    def flush_index(self) -> None:
        """Make just-written points visible to queries at once."""
        with urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=10):  # noqa: S310
            pass


def start_victoria_metrics(directory: Path, port: int | None = None) -> VictoriaMetrics:
    """Start VictoriaMetrics on 127.0.0.1 (a free port unless given) with a long retention."""
    binary = require_binary("victoria-metrics", "victoria-metrics")
    port = port or free_port()
    process = subprocess.Popen(
        [
            binary,
            f"-httpListenAddr=127.0.0.1:{port}",
            f"-storageDataPath={directory / 'vm-data'}",
            "-retentionPeriod=100y",
            "-search.latencyOffset=1s",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port, process)
    return VictoriaMetrics(f"http://127.0.0.1:{port}", process)

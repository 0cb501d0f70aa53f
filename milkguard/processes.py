"""Local servers the benchmarks start (and the tests, through ``tests/servers.py``): a free port
on 127.0.0.1, waiting until a process listens, stopping it by PID."""

from __future__ import annotations

import random
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

#: Where free ports are drawn from when the kernel's ephemeral range allows: below it. A port
#: the kernel hands out for ``bind(0)`` lies inside that range, where every outgoing connection
#: also takes its source port, so between choosing it and the server binding it a client's
#: connection could take it ("address already in use").
_BELOW_EPHEMERAL = (10_000, 32_768)


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32_768, 60_999


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, chosen outside the kernel's
    ephemeral range where possible (see ``_BELOW_EPHEMERAL``)."""
    low, high = _BELOW_EPHEMERAL[0], min(_BELOW_EPHEMERAL[1], _ephemeral_range()[0])
    chance = random.SystemRandom()
    for _ in range(100 if high - low > 1000 else 0):
        port = chance.randrange(low, high)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as probe:  # no room below the ephemeral range: the kernel's choice
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[Any], timeout_s: float = 10.0) -> None:
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


def stop(process: subprocess.Popen[Any], timeout_s: float = 10.0) -> None:
    """Terminate by PID, kill if it does not exit within ``timeout_s``."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def tansu_command(binary: str, port: int) -> list[str]:
    """tansu (a Kafka-protocol broker) on 127.0.0.1:``port``, storing in memory."""
    url = f"tcp://127.0.0.1:{port}"
    return [
        binary,
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
    ]

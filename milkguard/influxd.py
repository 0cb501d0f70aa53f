"""A throwaway InfluxDB 1.x (Debian ``influxdb``) on 127.0.0.1, its data in a directory of its
own: for the dashboards' tests and their previews, which run every panel's InfluxQL on a real
InfluxDB engine. Started with ``influxd -config FILE``, stopped by PID."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from milkguard.errors import MilkGuardError
from milkguard.processes import free_port, stop, wait_for_port

INSTALL_HINT = "apt-get install influxdb (scripts/system-deps.sh test does it)"


@dataclass
class Influxd:
    """A running influxd: its HTTP URL and process."""

    url: str
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        """Terminate it by PID."""
        stop(self.process)


def influxd_binary() -> str | None:
    """Where influxd is (Debian puts it in /usr/bin), or None."""
    return shutil.which("influxd") or (
        "/usr/bin/influxd" if Path("/usr/bin/influxd").exists() else None
    )


def start_influxd(directory: Path, *, database: str) -> Influxd:
    """Start influxd with meta, data and WAL under ``directory``, HTTP on a free port of
    127.0.0.1 (the meta service on another), and create ``database``."""
    binary = influxd_binary()
    if binary is None:
        raise MilkGuardError(f"influxd is not installed: {INSTALL_HINT}")
    http_port, meta_port = free_port(), free_port()
    config = directory / "influxd.conf"
    config.write_text(
        "reporting-disabled = true\n"
        f'bind-address = "127.0.0.1:{meta_port}"\n'
        f'[meta]\n  dir = "{directory / "meta"}"\n'
        f'[data]\n  dir = "{directory / "data"}"\n  wal-dir = "{directory / "wal"}"\n'
        '  query-log-enabled = false\n  wal-fsync-delay = "0s"\n'
        f'[http]\n  bind-address = "127.0.0.1:{http_port}"\n  log-enabled = false\n'
        "[monitor]\n  store-enabled = false\n"
        "[continuous_queries]\n  enabled = false\n"
        "[subscriber]\n  enabled = false\n",
        encoding="utf-8",
    )
    process = subprocess.Popen(
        [binary, "-config", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_port(http_port, process, timeout_s=30)
        url = f"http://127.0.0.1:{http_port}"
        _create_database(url, database)
    except BaseException:
        stop(process)
        raise
    return Influxd(url, process)


def _create_database(url: str, database: str) -> None:
    """``CREATE DATABASE``, retried while influxd opens its stores after its port."""
    body = f"q=CREATE DATABASE {database}".encode()
    for _ in range(100):
        try:
            # 127.0.0.1, the server just started here
            with urllib.request.urlopen(f"{url}/query", data=body, timeout=5):  # noqa: S310
                return
        except OSError:
            time.sleep(0.1)
    raise MilkGuardError(f"influxd at {url} did not create database {database}")

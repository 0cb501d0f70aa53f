"""A real SMTP server for the alerting tests: aiosmtpd in its own process, each message kept
in a Maildir, stopped by PID."""

from __future__ import annotations

import mailbox
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.servers import Postgres, free_port, start_postgres, stop, wait_for_port


@dataclass
class Smtp:
    port: int
    maildir: Path
    process: subprocess.Popen[bytes]

    def received(self) -> list[tuple[str, str]]:
        return sorted((m["To"], m["Subject"]) for m in mailbox.Maildir(self.maildir))


@pytest.fixture
def postgres() -> Iterator[Postgres]:
    """A real PostgreSQL 15 on 127.0.0.1, stopped by PID afterwards."""
    server = start_postgres()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[Smtp]:
    port = free_port()
    maildir = tmp_path / "maildir"
    handler = ["-c", "aiosmtpd.handlers.Mailbox", str(maildir)]  # each message into a Maildir
    process = subprocess.Popen(
        [sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{port}", *handler],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, process)
        yield Smtp(port, maildir, process)
    finally:
        stop(process)


@contextmanager
def http_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[int]:
    """A local HTTP server (a webhook receiver) on 127.0.0.1 in a thread; its port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()

"""The alert API's gate: nobody without a token makes the service read a body, nobody makes it
read a big one, and guessing tokens from one address is slowed to a crawl without locking out
the others. Against a real uvicorn, over raw sockets, so that what the server reads is seen."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from alerts.api import create_app
from alerts.audit import AuditTrail
from alerts.gate import FailedLogins, Gate
from alerts.lifecycle import AlertBook
from alerts.settings import ApiUser
from alerts.signing import Signer
from tests.helpers import wait_until
from tests.servers import free_port

TOKEN = "operator-token-li-0123456789ab"
TEN_MB = 10 * 1024 * 1024
LIMIT = 64 * 1024


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[AlertBook, AuditTrail]]:
    trail = AuditTrail(tmp_path / "audit.db", Signer.load_or_create(tmp_path / "key.pem"))
    book = AlertBook(tmp_path / "alerts.db", trail=trail)
    yield book, trail
    book.close()
    trail.close()


def app_for(stores: tuple[AlertBook, AuditTrail], tmp_path: Path, **options: object) -> Gate:
    users = [ApiUser(name="li", role="operator", token=TOKEN, sites=["plant-01"])]
    return create_app(users, *stores, tmp_path, **options)  # type: ignore[arg-type]


@pytest.fixture
def server(stores: tuple[AlertBook, AuditTrail], tmp_path: Path) -> Iterator[tuple[int, Gate]]:
    import uvicorn  # noqa: PLC0415

    app = app_for(stores, tmp_path, max_body_bytes=LIMIT)
    port = free_port()
    served = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
    thread = threading.Thread(target=served.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: served.started, 10, "the API server")
        yield port, app
    finally:
        served.should_exit = True
        thread.join(timeout=10)


def headers_only(port: int, head: str) -> tuple[socket.socket, str]:
    """Send a request's line and headers, no body; the first line of the answer."""
    connection = socket.create_connection(("127.0.0.1", port), timeout=10)
    connection.sendall(head.encode() + b"\r\n")
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = connection.recv(4096)
        if not chunk:
            break
        answer += chunk
    return connection, answer.decode("latin-1")


def post_head(length: int, token: str | None = None) -> str:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (
        "POST /api/acknowledge HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"{auth}Content-Length: {length}\r\n"
    )


def test_a_10_mb_post_without_a_token_is_refused_before_its_body_is_sent(
    server: tuple[int, Gate],
) -> None:
    port, _ = server
    connection, answer = headers_only(port, post_head(TEN_MB))
    with connection:
        # the answer came while not one byte of the 10 MB was sent: the body was never read
        assert answer.startswith("HTTP/1.1 401"), answer
        assert "connection: close" in answer.lower()
        while chunk := connection.recv(65536):  # then the server hangs up, waiting for nothing
            answer += chunk.decode("latin-1")
    assert answer.endswith('"send Authorization: Bearer <token> with a valid token"}')


def test_an_authenticated_body_over_the_limit_is_refused_unread(server: tuple[int, Gate]) -> None:
    port, app = server
    connection, answer = headers_only(port, post_head(TEN_MB, TOKEN))
    connection.close()

    assert answer.startswith("HTTP/1.1 413"), answer
    assert app.too_large == 1


def test_a_chunked_body_is_cut_at_the_limit(server: tuple[int, Gate]) -> None:
    port, app = server
    head = (
        "POST /api/acknowledge HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    connection = socket.create_connection(("127.0.0.1", port), timeout=10)
    connection.sendall(head.encode())
    piece = b"x" * 16384
    sent = 0
    try:
        while sent < TEN_MB:  # the server answers and closes long before the 10 MB are sent
            connection.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            sent += len(piece)
    except OSError:
        pass  # the server closed the connection on us: it stopped reading
    answer = connection.recv(4096).decode("latin-1")
    connection.close()

    assert answer.startswith("HTTP/1.1 413"), answer
    assert sent < TEN_MB
    assert app.too_large == 1


def test_a_small_authenticated_body_still_reaches_the_api(server: tuple[int, Gate]) -> None:
    import httpx  # noqa: PLC0415

    port, _ = server
    response = httpx.post(
        f"http://127.0.0.1:{port}/api/acknowledge",
        json={"alert_id": "no-such-alert"},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert response.status_code == 404  # through the gate, judged by the API
    assert httpx.get(f"http://127.0.0.1:{port}/").status_code == 200  # the page needs no token


def test_failed_logins_lock_out_their_address_but_not_the_others(
    stores: tuple[AlertBook, AuditTrail], tmp_path: Path
) -> None:
    logins = FailedLogins(allowed=3, first_lockout_s=60)
    app = app_for(stores, tmp_path, logins=logins)
    attacker = TestClient(app, client=("203.0.113.9", 40000))
    operator = TestClient(app, client=("198.51.100.7", 40001))
    wrong = {"Authorization": "Bearer guess-0123456789-0123456789"}
    right = {"Authorization": f"Bearer {TOKEN}"}

    statuses = [attacker.get("/api/alerts", headers=wrong).status_code for _ in range(5)]
    locked = attacker.get("/api/alerts", headers=right)  # even the right token waits

    assert statuses == [401, 401, 401, 401, 429]
    assert locked.status_code == 429
    assert 0 < int(locked.headers["Retry-After"]) <= 120
    assert operator.get("/api/alerts", headers=right).status_code == 200
    assert (logins.failed, logins.refused, logins.lockouts) == (4, 2, 1)


def test_a_lockout_doubles_with_each_failure_up_to_its_cap_and_a_success_forgives() -> None:
    now = [1000.0]
    logins = FailedLogins(allowed=2, first_lockout_s=2, max_lockout_s=10, clock=lambda: now[0])

    earned = [logins.failure("a") for _ in range(6)]
    assert earned == [0, 0, 2, 4, 8, 10]
    assert logins.wait_s("a") == 10
    assert logins.wait_s("b") == 0
    now[0] += 10
    assert logins.wait_s("a") == 0
    logins.success("a")
    assert logins.failure("a") == 0


def test_the_table_of_addresses_is_bounded() -> None:
    logins = FailedLogins(max_addresses=100)
    for n in range(1000):
        logins.failure(f"10.0.{n // 256}.{n % 256}")
    assert logins.forgotten == 900

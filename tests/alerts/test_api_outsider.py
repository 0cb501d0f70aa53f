"""The alerts API of a running ``milkguard alerts run`` as an outsider probes it over HTTP:
header tricks do not get past the lockout or the token check, and odd report names serve
nothing."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.alerts.test_service_security import (
    TOKEN,
    USERS,
    _answers,
    run_alerts,
    run_to_exit,
    write_config,
)
from tests.helpers import wait_until
from tests.servers import Mosquitto, free_port, stop

pytestmark = pytest.mark.integration


@pytest.fixture
def api(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[str]:
    port = free_port()
    config = write_config(tmp_path, mosquitto, f"  http_port: {port}\n{USERS}")
    log = tmp_path / "service.log"
    service = run_alerts(config, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(url, service, log), 30)
        yield url
    finally:
        stop(service)


def test_a_forwarded_for_header_does_not_escape_the_lockout(api: str) -> None:
    statuses = []
    with httpx.Client(base_url=api, timeout=10) as client:
        for attempt in range(12):
            forged = {"X-Forwarded-For": f"10.0.{attempt}.1", "Authorization": "Bearer guess"}
            statuses.append(client.get("/api/whoami", headers=forged).status_code)
    assert 429 in statuses, statuses


def raw(url: str, request: bytes) -> bytes:
    """Send exactly these bytes (no client normalises the path) and read the answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(request)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    return answer


def authorized(api: str, method_and_path: str, headers: str = "") -> bytes:
    """One request with the operator's token, sent byte for byte."""
    head = f"{method_and_path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
    return raw(api, f"{head}{headers}Connection: close\r\n\r\n".encode())


def status(answer: bytes) -> bytes:
    """The status code of a raw HTTP answer."""
    return answer.split(b" ", 2)[1]


@pytest.mark.parametrize(
    "name",
    [
        "..%2f..%2f..%2fetc%2fpasswd",
        "%2e%2e%2f%2e%2e%2fsigning-key.pem",
        "..\\..\\signing-key.pem",
        "0000000000000000000a%00.json",
        "0000000000000000000a%0a.json",
        "0000000000000000000a.json%00",
        "0000000000000000000A.json",
        "%30000000000000000000a.json/../../signing-key.pem",
    ],
)
def test_no_report_name_reaches_outside_the_reports(api: str, name: str) -> None:
    answer = authorized(api, f"GET /api/reports/{name}")
    assert status(answer) in (b"400", b"404"), answer[:300]
    assert b"PRIVATE KEY" not in answer


@pytest.mark.parametrize(
    "headers",
    [
        "Content-Length: -1\r\n",
        "Content-Length: +10\r\n",
        "Content-Length: 99999999999999999999999999\r\n",
        "Content-Length: 10\r\nContent-Length: 99999999\r\n",
    ],
)
def test_odd_body_lengths_are_refused_without_reading(api: str, headers: str) -> None:
    answer = authorized(api, "POST /api/acknowledge", headers)
    assert status(answer) in (b"400", b"413"), answer[:300]


def test_a_client_trickling_its_headers_is_cut_off(api: str) -> None:
    host, port = api.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=1) as conn:
        conn.sendall(b"GET /api/whoami HTTP/1.1\r\nHost: x\r\n")
        closed = False
        for _ in range(60):  # one header a second, never the blank line that ends them
            try:
                closed = conn.recv(100) == b""
            except TimeoutError:
                try:
                    conn.sendall(b"X-Slow: 1\r\n")
                except OSError:
                    closed = True
            if closed:
                break
    assert closed
    assert httpx.get(f"{api}/api/whoami", headers={"Authorization": f"Bearer {TOKEN}"}).is_success


def test_the_api_is_not_served_beyond_loopback_without_tls(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    # bearer tokens would cross the network in clear; nothing is bound before the refusal
    body = f"  http_host: 0.0.0.0\n  http_port: {free_port()}\n{USERS}"
    status, said = run_to_exit(tmp_path, mosquitto, body)

    assert status == 2, said
    assert "alerts.tls_cert" in said
    assert "Traceback" not in said


def test_behind_a_proxy_the_lockout_follows_the_forwarded_address(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    port = free_port()
    body = f"  http_port: {port}\n  behind_proxy: true\n{USERS}"
    log = tmp_path / "service.log"
    service = run_alerts(write_config(tmp_path, mosquitto, body), log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(url, service, log), 30)
        with httpx.Client(base_url=url, timeout=10) as client:
            guesser = {"X-Forwarded-For": "10.0.0.1", "Authorization": "Bearer guess"}
            statuses = [client.get("/api/whoami", headers=guesser).status_code for _ in range(8)]
            other = {"X-Forwarded-For": "10.0.0.2", "Authorization": f"Bearer {TOKEN}"}
            assert client.get("/api/whoami", headers=other).is_success
    finally:
        stop(service)
    assert 429 in statuses, statuses


@pytest.mark.parametrize("path", ["/", "/api/whoami", "/api/reports/nothing"])
def test_every_answer_forbids_framing_sniffing_and_caching(api: str, path: str) -> None:
    # the operators' page must not be framed by another site (a click on Acknowledge)
    answer = httpx.get(f"{api}{path}", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["cache-control"] == "no-store"
    assert answer.headers["referrer-policy"] == "no-referrer"

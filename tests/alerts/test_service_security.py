"""``milkguard alerts run`` as an outsider meets it: its API over HTTPS with a throwaway CA, a
taken port as a clear error (exit status 2), and not one credential in any log line of a full
run (alert service and stream on one password-protected Mosquitto, deliveries failing)."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpx
import pytest

from milkguard import mqtt as mqtt_connect
from milkguard.contract.v1 import deviation_topic
from milkguard_cli import main
from tests.alerts.conftest import Smtp, http_server
from tests.alerts.records import change, sealed, stream_signer
from tests.helpers import wait_until
from tests.servers import (
    Mosquitto,
    Postgres,
    free_port,
    make_tls_files,
    start_mosquitto,
    stop,
)

pytestmark = pytest.mark.integration

TOKEN = "operator-token-li-0123456789ab"
MILKGUARD = [sys.executable, "-m", "milkguard"]

# every credential of the run, each distinctive; none may appear in any log line
HOOK_PASSWORD = "Xq7-hook-password"
HOOK_PATH_KEY = "Xq7-hook-path-key-T0B0"
HOOK_QUERY = "Xq7-hook-query-token"
SECRETS = {
    "webhook password": HOOK_PASSWORD,
    "webhook path": HOOK_PATH_KEY,
    "webhook query": HOOK_QUERY,
    "webhook signing secret": "Xq7-webhook-hmac-secret",
    "smtp password": "Xq7-smtp-password",
    "api token": "Xq7-api-token-operator-0123456789",
    "regulator token": "Xq7-api-token-regulator-012345678",
    "database password": "Xq7-db-password",
    "mqtt password of the alert service": "Xq7-mqtt-alerts-password",
    "mqtt password of the stream": "Xq7-mqtt-stream-password",
    "influx token": "Xq7-influx-token",
    "kafka password": "Xq7-kafka-password",
}


def run_alerts(config: Path, log: Path, **env: str) -> subprocess.Popen[bytes]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MILKGUARD_")}
    return subprocess.Popen(
        [*MILKGUARD, "alerts", "run", "--config", str(config)],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env={**clean, "COLUMNS": "300", **env},
    )


def write_config(tmp_path: Path, broker: Mosquitto, body: str) -> Path:
    _, stream_key = stream_signer(tmp_path)
    config = tmp_path / "alerts.yaml"
    config.write_text(
        f"""
mqtt: {{broker: external, host: 127.0.0.1, port: {broker.port}, client_id: plant-alerts}}
alerts:
  directory: {tmp_path / "alerts"}
  stream_keys: [{stream_key}]
  recipients:
    - {{name: li, audience: operator, sites: [plant-01]}}
{body}
"""
    )
    return config


USERS = f"  users: [{{name: li, role: operator, token: {TOKEN}}}]"


def run_to_exit(tmp_path: Path, broker: Mosquitto, body: str) -> tuple[int, str]:
    """Run ``alerts run`` with these alerts settings until it exits: its status and output."""
    log = tmp_path / "service.log"
    service = run_alerts(write_config(tmp_path, broker, body), log)
    try:
        status = service.wait(timeout=60)
    finally:
        stop(service)
    return status, " ".join(log.read_text().split())


def test_a_taken_api_port_stops_alerts_run_with_status_2_naming_it(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status, said = run_to_exit(tmp_path, mosquitto, f"  http_port: {port}\n{USERS}")

    assert status == 2, said
    assert f"cannot serve the alerts API on 127.0.0.1:{port}" in said
    assert "alerts.http_port" in said
    assert "MILKGUARD_ALERTS__HTTP_PORT" in said
    assert "Traceback" not in said


def test_a_certificate_without_its_key_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "alerts.yaml"
    config.write_text(f"alerts: {{http_port: {free_port()}, tls_cert: {tmp_path / 'api.pem'}}}\n")

    assert main(["alerts", "run", "--config", str(config)]) == 2
    said = " ".join(capsys.readouterr().err.split())
    assert "alerts.tls_cert is set but alerts.tls_key is not" in said


def test_the_api_is_served_over_tls(tmp_path: Path, mosquitto: Mosquitto) -> None:
    tls = make_tls_files(tmp_path / "tls")
    port = free_port()
    config = write_config(
        tmp_path,
        mosquitto,
        f"  http_port: {port}\n  tls_cert: {tls.server_cert}\n  tls_key: {tls.server_key}\n{USERS}",
    )
    service = run_alerts(config, tmp_path / "service.log")
    trusted = ssl.create_default_context(cafile=str(tls.ca))
    url = f"https://127.0.0.1:{port}/api/whoami"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:

        def answering() -> bool:
            try:
                return httpx.get(url, headers=auth, verify=trusted).status_code == 200
            except httpx.TransportError:
                assert service.poll() is None, (tmp_path / "service.log").read_text()
                return False

        wait_until(answering, 30, "the API over HTTPS")
        who = httpx.get(url, headers=auth, verify=trusted).json()
        with pytest.raises(httpx.ConnectError):  # a client trusting another CA refuses it
            httpx.get(url, verify=ssl.create_default_context(cafile=str(tls.other_ca)))
        with pytest.raises(httpx.TransportError):  # plain HTTP is not spoken there
            httpx.get(f"http://127.0.0.1:{port}/api/whoami", headers=auth)
    finally:
        stop(service)

    assert who["name"] == "li"


def rss_mb(pid: int) -> float:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def push(port: int, head: str, size: int) -> int:
    """Send a request's headers, then up to ``size`` bytes of body whatever the server says
    (as a hostile client would); how many bytes it took before the server hung up."""
    sent = 0
    piece = b"x" * 65536
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(head.encode() + b"\r\n")
        try:
            while sent < size:
                connection.sendall(piece)
                sent += len(piece)
        except OSError:
            pass  # refused and closed: what it would not read
    return sent


def test_a_128_mb_post_does_not_grow_the_service(tmp_path: Path, mosquitto: Mosquitto) -> None:
    port = free_port()
    config = write_config(tmp_path, mosquitto, f"  http_port: {port}\n{USERS}")
    service = run_alerts(config, tmp_path / "service.log")
    size = 128 * 1024 * 1024
    try:
        wait_until(
            lambda: _answers(f"http://127.0.0.1:{port}", service, tmp_path / "service.log"), 30
        )
        before = rss_mb(service.pid)
        refused = [
            push(
                port,
                f"POST /api/acknowledge HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n",
                size,
            ),
            push(
                port,
                f"POST /api/acknowledge HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                f"Content-Length: {size}\r\n",
                size,
            ),
        ]
        after = rss_mb(service.pid)
    finally:
        stop(service)

    assert all(taken < size for taken in refused)  # both cut off long before 128 MB
    assert after - before < 16, f"{before:.0f} MB -> {after:.0f} MB"


@dataclass
class FailingHook:
    """A webhook receiver that is down (503): deliveries fail, are retried, dead-lettered."""

    port: int
    authorizations: list[str] = field(default_factory=list)


@pytest.fixture
def failing_hook() -> Iterator[FailingHook]:
    hook = FailingHook(0)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            hook.authorizations.append(self.headers.get("Authorization", ""))
            self.send_response(503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    with http_server(Handler) as port:
        hook.port = port
        yield hook


@pytest.mark.e2e
def test_no_credential_appears_in_any_log_line_of_a_full_run(
    tmp_path: Path, smtp: Smtp, failing_hook: FailingHook, postgres: Postgres
) -> None:
    broker = start_mosquitto(
        tmp_path,
        users={
            "alerts": SECRETS["mqtt password of the alert service"],
            "stream": SECRETS["mqtt password of the stream"],
            "publisher": "publisher-password",
        },
    )
    api_port = free_port()
    database = postgres.url.replace("postgres@", f"postgres:{SECRETS['database password']}@")
    hook = (
        f"http://hooks:{HOOK_PASSWORD}@127.0.0.1:{failing_hook.port}/services/{HOOK_PATH_KEY}"
        f"?token={HOOK_QUERY}"
    )
    signer, stream_key = stream_signer(tmp_path)
    config = tmp_path / "milkguard.yaml"
    config.write_text(
        f"""
log_level: DEBUG
data_dir: {tmp_path / "var"}
simulators: false
mqtt: {{broker: external, host: 127.0.0.1, port: {broker.port}, username: alerts}}
influx: {{url: "http://127.0.0.1:{free_port()}", org: dairy, bucket: milk}}
kafka: {{security_protocol: SASL_PLAINTEXT, sasl_mechanism: PLAIN, sasl_username: milkguard}}
alerts:
  directory: {tmp_path / "alerts"}
  stream_keys: [{stream_key}]
  database: "{database}"
  max_attempts: 2
  http_port: {api_port}
  smtp:
    {{host: 127.0.0.1, port: {smtp.port}, username: mg, password: "{SECRETS["smtp password"]}"}}
  webhook_secret: "{SECRETS["webhook signing secret"]}"
  users:
    - {{name: li, role: operator, token: "{SECRETS["api token"]}"}}
  recipients:
    - name: li
      audience: operator
      email: li@plant
      webhook: "{hook}"
"""
    )
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("MILKGUARD_")
    } | {  # the rest from the environment, as an operator would pass them
        "MILKGUARD_MQTT__PASSWORD": SECRETS["mqtt password of the alert service"],
        "MILKGUARD_INFLUX__TOKEN": SECRETS["influx token"],
        "MILKGUARD_KAFKA__SASL_PASSWORD": SECRETS["kafka password"],
        "COLUMNS": "300",
    }
    env["MILKGUARD_ALERTS__USERS"] = json.dumps(
        [
            {"name": "li", "role": "operator", "token": SECRETS["api token"]},
            {"name": "authority", "role": "regulator", "token": SECRETS["regulator token"]},
        ]
    )
    log = tmp_path / "alerts.log"
    service = subprocess.Popen(
        [*MILKGUARD, "alerts", "run", "--config", str(config)],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env=env,
    )
    publisher = mqtt_connect.connect(
        mqtt_connect.BrokerAddress(
            port=broker.port, username="publisher", password="publisher-password"
        ),
        "stream-outbox",
    )
    api = f"http://127.0.0.1:{api_port}"
    try:
        wait_until(lambda: _answers(api, service, log), 30, "the alerts API")
        for token in ("wrong-token-0123456789-abcdef", SECRETS["regulator token"][:-1]):
            assert httpx.get(f"{api}/api/alerts", headers=_bearer(token)).status_code == 401
        assert (
            httpx.get(f"{api}/api/whoami", headers=_bearer(SECRETS["api token"])).json()["name"]
            == "li"
        )

        def dead_lettered() -> bool:  # published until the service has subscribed
            publisher.publish(
                deviation_topic("plant-01", "htst-1"), sealed(change("opened"), signer)
            )
            return log.read_text().count("alert.dead_letter") >= 2  # webhook and e-mail

        wait_until(dead_lettered, 60, "both deliveries to fail twice and be dead-lettered")
        stream = subprocess.run(
            [*MILKGUARD, "run", "--config", str(config), "--duration", "3"],
            capture_output=True,
            text=True,
            timeout=120,
            env=env
            | {
                "MILKGUARD_MQTT__USERNAME": "stream",
                "MILKGUARD_MQTT__PASSWORD": SECRETS["mqtt password of the stream"],
                "MILKGUARD_MQTT__CLIENT_ID": "plant-stream",
            },
            check=False,
        )
    finally:
        service.send_signal(signal.SIGTERM)
        try:
            service.wait(timeout=20)
        finally:
            stop(service)
            publisher.close()
            broker.stop()

    alerts_log = log.read_text()
    assert stream.returncode == 0, stream.stderr
    assert "alert.delivery_failed" in alerts_log
    assert "alerts.api.login_failed" in alerts_log
    assert " settings " in stream.stderr  # the stream's settings line, alerts section included
    # the webhook was called with its credentials: they were used, just never shown
    expected = base64.b64encode(f"hooks:{HOOK_PASSWORD}".encode()).decode()
    assert failing_hook.authorizations[0] == f"Basic {expected}"
    for output in (alerts_log, stream.stdout, stream.stderr):
        for what, secret in SECRETS.items():
            assert secret not in output, f"the {what} is in a log line"
        assert "Xq7" not in output


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _answers(api: str, service: subprocess.Popen[bytes], log: Path) -> bool:
    assert service.poll() is None, log.read_text()
    try:
        return httpx.get(f"{api}/").status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.parametrize("key", ["not-pem", "encrypted"])
def test_an_unusable_certificate_or_key_stops_alerts_run_with_status_2(
    tmp_path: Path, mosquitto: Mosquitto, key: str
) -> None:
    tls = make_tls_files(tmp_path / "tls")
    key_file = tmp_path / "api.key"
    if key == "not-pem":
        key_file.write_text("this is not a key\n")
    else:  # a key behind a passphrase: the service must not sit waiting for one on a terminal
        subprocess.run(
            [
                "openssl",
                "rsa",
                "-in",
                str(tls.server_key),
                "-aes256",
                "-passout",
                "pass:x",
                "-out",
                str(key_file),
            ],
            check=True,
            capture_output=True,
        )
    status, said = run_to_exit(
        tmp_path,
        mosquitto,
        f"  http_port: {free_port()}\n  tls_cert: {tls.server_cert}\n"
        f"  tls_key: {key_file}\n{USERS}",
    )

    assert status == 2, said
    assert "cannot serve the alerts API over HTTPS with alerts.tls_cert" in said
    assert "Traceback" not in said

"""The gateway's MQTT link against a real Mosquitto with passwords and TLS: it connects with
the right credentials, and the wrong ones give a clear reason and retries with backoff."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.agent import EdgeAgent
from edge.config import EdgeConfig, Source
from tests.edge.conftest import CountingSensor, edge_config
from tests.helpers import wait_until
from tests.servers import Mosquitto, TlsFiles, make_tls_files, start_mosquitto, stop

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def secure_broker(tmp_path: Path, tls_files: TlsFiles) -> Iterator[Mosquitto]:
    """TLS, client certificates required, and a password for the gateway."""
    broker = start_mosquitto(
        tmp_path, users={"gw-1": "right"}, tls=tls_files, require_certificate=True
    )
    try:
        yield broker
    finally:
        stop(broker.process)


def run_agent(config: EdgeConfig) -> tuple[EdgeAgent, threading.Event, threading.Thread]:
    def factory(source: Source) -> CountingSensor:
        return CountingSensor(len(source.channels))

    agent = EdgeAgent(config, driver_factory=factory)
    stop_event = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop_event,), daemon=True)
    thread.start()
    return agent, stop_event, thread


def secure_config(tmp_path: Path, port: int, files: TlsFiles, **mqtt: object) -> EdgeConfig:
    settings: dict[str, object] = {
        "username": "gw-1",
        "password": "right",
        "tls": {"ca": files.ca, "cert": files.client_cert, "key": files.client_key},
        **mqtt,
    }
    return edge_config(tmp_path / "edge", port, channels=2, mqtt=settings)


def test_with_a_client_certificate_and_password_batches_are_acknowledged(
    tmp_path: Path, secure_broker: Mosquitto, tls_files: TlsFiles
) -> None:
    agent, stop_event, thread = run_agent(secure_config(tmp_path, secure_broker.port, tls_files))
    try:
        wait_until(lambda: agent.counters.batches_acknowledged >= 3, 20, "acknowledged batches")
        assert agent.link.last_error is None
    finally:
        stop_event.set()
        thread.join(timeout=30)


@pytest.mark.parametrize(
    ("problem", "mqtt", "reason"),
    [
        ("a wrong password", {"password": "wrong"}, "check mqtt.username/mqtt.password"),
        ("an untrusted broker", {"tls": "other_ca"}, "that mqtt.tls.ca does not trust"),
        ("no client certificate", {"tls": "no_cert"}, "check mqtt.tls"),
    ],
)
def test_a_refused_connection_says_why_and_is_retried(
    tmp_path: Path,
    secure_broker: Mosquitto,
    tls_files: TlsFiles,
    problem: str,
    mqtt: dict[str, object],
    reason: str,
) -> None:
    if mqtt.get("tls") == "other_ca":
        mqtt = {
            "tls": {
                "ca": tls_files.other_ca,
                "cert": tls_files.client_cert,
                "key": tls_files.client_key,
            }
        }
    elif mqtt.get("tls") == "no_cert":
        mqtt = {"tls": {"ca": tls_files.ca}}
    agent, stop_event, thread = run_agent(
        secure_config(tmp_path, secure_broker.port, tls_files, **mqtt)
    )
    try:
        wait_until(lambda: agent.link.failed_attempts >= 3, 30, f"retries after {problem}")
        assert agent.link.last_error is not None
        assert reason in agent.link.last_error
        assert not agent.link.connected.is_set()
        assert agent.outbox.pending > 0  # sampling goes on into the outbox meanwhile
    finally:
        stop_event.set()
        thread.join(timeout=30)

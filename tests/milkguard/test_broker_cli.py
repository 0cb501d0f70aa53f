"""``milkguard broker`` and a ``milkguard run`` that real gateways reach: passwords hashed from
standard input, Mosquitto files written, an exposed anonymous broker refused with the fix, and
a secured embedded broker taking a gateway's batch over TLS while the stream logs in as
itself on loopback."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from edge.publisher import GatewayPublisher
from milkguard import mqtt
from milkguard.broker_security import verify_password
from milkguard.contract.v1 import Reading
from milkguard.errors import BrokerError
from milkguard_cli.settings import load_settings
from stream.embedded import EmbeddedService, RunSummary
from tests.conftest import T0
from tests.helpers import wait_until
from tests.milkguard.secured_brokers import PEOPLE, security_model
from tests.servers import free_port, make_tls_files

MILKGUARD = [sys.executable, "-m", "milkguard"]


def milkguard(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MILKGUARD, *args], input=stdin, capture_output=True, text=True, timeout=120, check=False
    )


def test_hash_password_reads_standard_input_and_prints_a_hash_that_verifies() -> None:
    done = milkguard("broker", "hash-password", "--iterations", "1000", stdin="milk-secret\n")
    assert done.returncode == 0, done.stderr
    hashed = done.stdout.strip()
    assert hashed.startswith("$7$1000$")
    assert verify_password("milk-secret", hashed)
    assert "milk-secret" not in done.stdout


def test_an_anonymous_broker_on_the_network_is_refused_with_what_to_configure(
    tmp_path: Path,
) -> None:
    settings = tmp_path / "milkguard.yaml"
    exposed = {"mqtt": {"host": "0.0.0.0", "port": free_port()}, "data_dir": str(tmp_path)}  # noqa: S104 - refused before binding
    settings.write_text(yaml.safe_dump(exposed), encoding="utf-8")
    done = milkguard("run", "--no-simulators", "--config", str(settings), "--duration", "5")
    assert done.returncode == 2
    message = " ".join(done.stderr.split())
    # Mosquitto where installed, else the embedded broker: both refuse the same way
    assert "refusing to start" in message
    assert "on mqtt.host 0.0.0.0: it is reachable from the network" in message
    assert "set mqtt.host: 127.0.0.1" in message
    assert "mqtt.security.users" in message
    assert "mqtt.security.tls.cert" in message
    assert "Traceback" not in done.stderr
    out = tmp_path / "mosquitto"
    refused = milkguard("broker", "mosquitto-config", "--config", str(settings), "--out", str(out))
    assert refused.returncode == 2
    assert not out.exists()


def secured_settings(tmp_path: Path, *, password: str) -> tuple[Path, dict[str, object]]:
    tls = make_tls_files(tmp_path / "tls")
    security = security_model(tls)
    data = {
        "data_dir": str(tmp_path / "var"),
        "simulators": False,
        "mqtt": {
            "host": "127.0.0.1",
            "port": free_port(),
            "username": "stream",
            "password": password,
            "security": security.model_dump(mode="json")
            | {
                "users": [
                    {
                        **u.model_dump(mode="json"),
                        "password_hash": u.password_hash.get_secret_value(),
                    }
                    for u in security.users
                ]
            },
        },
    }
    path = tmp_path / "milkguard.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path, {"ca": tls.ca}


def test_the_stream_with_a_wrong_password_of_its_own_is_refused_before_starting(
    tmp_path: Path,
) -> None:
    path, _ = secured_settings(tmp_path, password="not-the-stream-secret")
    done = milkguard("run", "--config", str(path), "--duration", "5")
    assert done.returncode == 2
    assert "mqtt.password does not match" in " ".join(done.stderr.split())
    assert "not-the-stream-secret" not in done.stderr


def test_mosquitto_config_writes_the_three_files(tmp_path: Path) -> None:
    path, _ = secured_settings(tmp_path, password=PEOPLE["stream"][0])
    out = tmp_path / "mosquitto"
    done = milkguard("broker", "mosquitto-config", "--config", str(path), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["acl", "mosquitto.conf", "passwd"]
    assert "user gw-farm-02\ntopic readwrite milkguard/v1/gw/farm-02/tank-9/#" in (
        out / "acl"
    ).read_text(encoding="utf-8")
    assert (out / "passwd").stat().st_mode & 0o077 == 0
    # two gateway users: 2 x (86,400 / 2 + 86,400 / 30)
    assert "\nmax_queued_messages 92160\n" in (out / "mosquitto.conf").read_text(encoding="utf-8")


@pytest.mark.integration
def test_run_without_simulators_takes_a_gateways_batch_over_tls_and_refuses_a_stranger(
    tmp_path: Path,
) -> None:
    path, files = secured_settings(tmp_path, password=PEOPLE["stream"][0])
    settings = load_settings(path)
    service = EmbeddedService(settings, Console(file=io.StringIO()))
    stop = threading.Event()
    result: list[RunSummary] = []
    thread = threading.Thread(target=lambda: result.append(service.run(stop)), daemon=True)
    thread.start()
    try:
        wait_until(lambda: service.ingest is not None, what="the service to start")
        port = settings.mqtt.port
        gateway = mqtt.BrokerAddress(
            "127.0.0.1",
            port,
            username="gw-farm-01",
            password=PEOPLE["gw-farm-01"][0],
            tls_ca=files["ca"],  # type: ignore[arg-type]
        )
        connection = mqtt.connect(gateway, "farm-01-tank-1")
        publisher = GatewayPublisher(connection, "farm-01", "tank-1", first_seq=1)
        publisher.publish([Reading("tank-1", "milk_temp", 4.0, "degC", T0)])
        assert publisher.drain(10)
        connection.close()
        ingest = service.ingest
        assert ingest is not None
        wait_until(lambda: ingest.counters.batches == 1, what="the gateway's batch")
        with pytest.raises(BrokerError, match="refused"):
            mqtt.connect(
                mqtt.BrokerAddress("127.0.0.1", port, tls_ca=files["ca"]),  # type: ignore[arg-type]
                "stranger",
            )
    finally:
        stop.set()
        thread.join(timeout=30)
    assert result, "the service stopped cleanly"


def test_the_shipped_mosquitto_files_are_what_the_generator_writes(tmp_path: Path) -> None:
    deploy = Path(__file__).parents[2] / "deploy" / "mosquitto"
    out = tmp_path / "out"
    done = milkguard(
        "broker",
        "mosquitto-config",
        "--config",
        str(deploy / "milkguard-mqtt.example.yaml"),
        "--bind",
        "0.0.0.0",  # noqa: S104 - text only, nothing binds here
        "--port",
        "8883",
        "--conf-dir",
        "/etc/mosquitto/milkguard",
        "--out",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    for shipped, generated in (("mosquitto.conf", "mosquitto.conf"), ("acl.example", "acl")):
        assert (deploy / shipped).read_text(encoding="utf-8") == (out / generated).read_text(
            encoding="utf-8"
        ), f"deploy/mosquitto/{shipped} is stale: write it again with the command in README.md"

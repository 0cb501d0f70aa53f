"""``milkguard run`` with Mosquitto as its child broker (real Mosquitto, the real command): it
judges a gateway's readings, the broker dies with the service even under SIGKILL and never
holds the port as an orphan, a Mosquitto left running from the pidfile is stopped at the next
start, and a taken port is refused with the port and Mosquitto's own words."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge.publisher import GatewayPublisher
from milkguard import mqtt
from milkguard.broker_security import BrokerSecurity, QueueSizing
from milkguard.contract.v1 import Reading
from milkguard.errors import ConfigError
from milkguard.mosquitto import MosquittoChild
from tests.conftest import T0
from tests.helpers import wait_until
from tests.servers import free_port, require_binary, stop

pytestmark = pytest.mark.integration

MILKGUARD = [sys.executable, "-m", "milkguard"]


def run_env(data_dir: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MILKGUARD_")}
    env.update(
        MILKGUARD_MQTT__BROKER="mosquitto",
        MILKGUARD_MQTT__PORT=str(port),
        MILKGUARD_DATA_DIR=str(data_dir),
        COLUMNS="200",
    )
    return env


def start_run(data_dir: Path, port: int, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*MILKGUARD, "run", "--no-simulators", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=run_env(data_dir, port),
    )


@pytest.fixture
def mosquitto_binary() -> str:
    return require_binary("mosquitto", "mosquitto")


@dataclass
class Running:
    """A ``milkguard run`` process, its port, and its log as written so far."""

    process: subprocess.Popen[str]
    port: int
    log: list[str]
    reader: threading.Thread | None = None
    data_dir: Path | None = None

    def stderr(self) -> str:
        """All it wrote to standard error, once it has exited."""
        assert self.reader is not None
        self.reader.join(timeout=10)
        return "".join(self.log)


@pytest.fixture
def service(tmp_path: Path, mosquitto_binary: str) -> Iterator[Running]:
    port = free_port()
    process = start_run(tmp_path / "var", port)
    running = Running(process, port, [], data_dir=tmp_path / "var")
    reader = threading.Thread(target=lambda: running.log.extend(process.stderr or []))
    running.reader = reader
    reader.start()
    try:
        # subscribed from here on: nothing a gateway publishes now is missed
        wait_until(lambda: "stream.started" in "".join(running.log), what="the stream to start")
        yield running
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        reader.join(timeout=10)
        process.communicate(timeout=10)


def anonymous_child(binary: str, directory: Path, port: int) -> MosquittoChild:
    """A child Mosquitto on loopback, anonymous, its files in ``directory``."""
    return MosquittoChild(
        Path(binary),
        BrokerSecurity(),
        "127.0.0.1",
        port,
        directory=directory,
        sizing=QueueSizing(1),
        probe=mqtt.BrokerAddress("127.0.0.1", port),
    )


def child_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "mosquitto" / "mosquitto.pid").read_text())
    except (FileNotFoundError, ValueError):
        return None


def accepts(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def running(pid: int) -> bool:
    """True while ``pid`` runs; an exited process not yet reaped (a zombie) holds nothing."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_run_starts_mosquitto_judges_a_gateways_readings_and_stops_it(
    service: Running, tmp_path: Path
) -> None:
    process, port = service.process, service.port
    data_dir = tmp_path / "var"
    broker = child_pid(data_dir)
    assert broker is not None
    assert running(broker)
    conf = (data_dir / "mosquitto" / "mosquitto.conf").read_text()
    assert f"listener {port} 127.0.0.1" in conf
    assert f"persistence_location {data_dir / 'mosquitto'}/" in conf
    assert "max_inflight_messages 20000" in conf
    connection = mqtt.connect(mqtt.BrokerAddress("127.0.0.1", port), "test-truck-07-gw")
    truck = GatewayPublisher(connection, "truck-07", "truck-07-gw", first_seq=1)
    for second, temp in enumerate([4.0, 5.5, 6.4, 7.1, 7.9, 8.2, 7.0, 6.1, 5.8, 5.0]):
        truck.publish([Reading("comp-2", "temp", temp, "degC", T0 + second * 5_000)])
    connection.close()
    deviations = data_dir / "deviations.jsonl"

    def changes() -> list[str]:
        if not deviations.exists():
            return []
        kept = [json.loads(line) for line in deviations.read_text().splitlines()]
        return [c["change"] for c in kept if c["rule_id"] == "cn-transport-max-comp-2"]

    wait_until(lambda: changes() == ["opened", "closed"], what="the deviation opened and closed")
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 0
    assert process.stdout is not None
    assert "MilkGuard run summary" in process.stdout.read()
    err = service.stderr()
    assert "broker.chosen" in err
    assert "mosquitto (child process)" in err
    assert "Traceback" not in err
    assert not running(broker)
    assert child_pid(data_dir) is None  # the pidfile goes with it
    assert (data_dir / "mosquitto" / "mosquitto.db").exists()  # its store, in the data dir


def test_a_killed_run_leaves_no_mosquitto_behind_and_the_next_start_gets_the_port(
    service: Running, tmp_path: Path
) -> None:
    process, port = service.process, service.port
    broker = child_pid(tmp_path / "var")
    assert broker is not None

    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)

    wait_until(lambda: not running(broker), what="the child broker to die with its parent")
    wait_until(lambda: port_free(port), what=f"port {port} to be free")
    again = start_run(tmp_path / "var", port, "--duration", "1")
    out, err = again.communicate(timeout=60)
    assert again.returncode == 0, err
    assert "MilkGuard run summary" in out


def test_a_mosquitto_left_running_from_the_pidfile_is_stopped_at_the_next_start(
    tmp_path: Path, mosquitto_binary: str
) -> None:
    data_dir, port = tmp_path / "var", free_port()
    first = start_run(data_dir, port, "--duration", "0.5")
    assert first.wait(timeout=60) == 0, first.communicate()[1]
    conf = data_dir / "mosquitto" / "mosquitto.conf"
    # as if the service had died where the child could not be told (no parent-death signal)
    left = subprocess.Popen(
        [mosquitto_binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_until(lambda: accepts(port), what="the left-over broker")
        (data_dir / "mosquitto" / "mosquitto.pid").write_text(f"{left.pid}\n")

        again = start_run(data_dir, port, "--duration", "1")
        _out, err = again.communicate(timeout=60)

        assert again.returncode == 0, err
        assert "broker.mosquitto.stale" in err
        assert left.wait(timeout=10) == 0  # stopped by SIGTERM, not killed
    finally:
        stop(left)


def test_a_pidfile_naming_another_program_stops_nothing(
    tmp_path: Path, mosquitto_binary: str
) -> None:
    bystander = subprocess.Popen(["sleep", "60"])
    directory = tmp_path / "mosquitto"
    directory.mkdir()
    (directory / "mosquitto.pid").write_text(f"{bystander.pid}\n")
    port = free_port()
    child = anonymous_child(mosquitto_binary, directory, port)
    try:
        with child:
            assert child.process is not None
            assert child_pid(tmp_path) == child.process.pid
        assert bystander.poll() is None
    finally:
        stop(bystander)


def test_a_second_run_on_the_same_data_directory_is_refused(
    tmp_path: Path, mosquitto_binary: str
) -> None:
    def child(port: int) -> MosquittoChild:
        return anonymous_child(mosquitto_binary, tmp_path / "mosquitto", port)

    with child(free_port()) as first:
        with pytest.raises(ConfigError, match="another milkguard run is using"):
            child(free_port()).start()
        assert first.process is not None
        assert first.process.poll() is None


def test_a_taken_port_is_refused_with_the_port_and_mosquittos_own_words(
    tmp_path: Path, mosquitto_binary: str
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        run = start_run(tmp_path / "var", port, "--duration", "1")
        _, err = run.communicate(timeout=60)

    assert run.returncode == 2
    message = " ".join(err.split())
    assert f"Mosquitto ({mosquitto_binary}) did not start on 127.0.0.1:{port}" in message
    assert "Error: Address already in use" in message
    assert f"set mqtt.port (MILKGUARD_MQTT__PORT; now {port}) to a free one" in message
    assert "Traceback" not in err


def test_a_broker_that_dies_under_the_service_is_logged_as_an_error(
    tmp_path: Path, mosquitto_binary: str, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    child = anonymous_child(mosquitto_binary, tmp_path / "mosquitto", port)
    with child:
        assert child.process is not None
        child.process.kill()

        wait_until(
            lambda: any(r.message == "broker.mosquitto.exited" for r in caplog.records),
            what="the error",
        )
    (record,) = [r for r in caplog.records if r.message == "broker.mosquitto.exited"]
    assert record.levelname == "ERROR"
    assert record.status == -signal.SIGKILL  # type: ignore[attr-defined]


def test_a_data_directory_with_spaces_in_its_path_serves_and_persists(
    tmp_path: Path, mosquitto_binary: str
) -> None:
    directory = tmp_path / "dairy data" / "mosquitto  two"
    port = free_port()
    with anonymous_child(mosquitto_binary, directory, port) as child:
        assert child.process is not None
        assert accepts(port)
    assert (directory / "mosquitto.db").exists()  # its store, saved at the stop


def test_a_run_whose_mosquitto_dies_under_it_stops_and_says_why(service: Running) -> None:
    # without its broker no gateway reaches the stream: running on would look healthy to a
    # supervisor while nothing is monitored; stopping lets it start the whole thing again
    assert service.data_dir is not None
    pid = child_pid(service.data_dir)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)

    assert service.process.wait(timeout=60) != 0
    message = " ".join(service.stderr().split())
    assert "Mosquitto" in message
    assert f"exited under the stream (pid {pid}" in message
    assert "Traceback" not in message


def test_a_planted_link_in_the_brokers_folder_does_not_redirect_its_files(
    tmp_path: Path, mosquitto_binary: str
) -> None:
    # the service may run as root: a link left where it writes its configuration must not make
    # it overwrite the file the link points at
    victim = tmp_path / "passwd"
    victim.write_text("root:x:0:0\n")
    directory = tmp_path / "mosquitto"
    directory.mkdir()
    (directory / "mosquitto.conf.partial").symlink_to(victim)
    with anonymous_child(mosquitto_binary, directory, free_port()) as child:
        assert child.process is not None
    assert victim.read_text() == "root:x:0:0\n"
    assert "listener" in (directory / "mosquitto.conf").read_text()

"""A gateway installs ``milkguard[edge]`` only: the edge agent's whole import path (the
``milkguard edge`` command, the agent, its config and drivers) must load nothing of the stream,
the alert service, the simulators or the libraries of the other extras.

Each step runs in a fresh interpreter whose import system refuses those packages, and fails if
anything even tried to import one (a guarded ``try: import numpy`` counts too)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
import yaml

from tests.edge.test_config import EXAMPLE
from tests.edge.test_edge_commands import config_file
from tests.servers import free_port

#: what the other extras bring (stream, kafka, alerts, simulators) and what is not a product
NOT_ON_A_GATEWAY = (
    "stream",
    "alerts",
    "simulators",
    "benchmarks",
    "numpy",
    "faust",
    "aiokafka",
    "influxdb_client",
    "amqtt",
    "prometheus_client",
    "cryptography",
    "fastapi",
    "uvicorn",
    "psycopg",
)

# runs the step given as its second argument with a meta path finder that refuses the packages
# named in its first; exit 3 naming every import that was tried
LAUNCHER = """
import importlib.abc
import sys
import traceback

BLOCKED = frozenset(sys.argv[1].split(","))
tried = []


class GatewayInstall(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            tried.append(name)
            raise ModuleNotFoundError(f"{name} is not in a gateway install", name=name)
        return None


sys.meta_path.insert(0, GatewayInstall())
loaded = sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)
status = 0
try:
    exec(compile(sys.argv[2], "<step>", "exec"), {"__name__": "__main__"})
except SystemExit as exit_:
    status = exit_.code if isinstance(exit_.code, int) else 1
except BaseException:
    traceback.print_exc()
    status = 1
if tried or loaded:
    print(f"not for a gateway: tried {sorted(set(tried))}, loaded {loaded}", file=sys.stderr)
    sys.exit(3)
sys.exit(status)
"""


def on_a_gateway(tmp_path: Path, step: str) -> subprocess.CompletedProcess[str]:
    """Run ``step`` (Python) as a gateway install would: the other extras' packages refused."""
    launcher = tmp_path / "gateway_launcher.py"
    launcher.write_text(LAUNCHER, encoding="utf-8")
    return subprocess.run(
        [sys.executable, str(launcher), ",".join(NOT_ON_A_GATEWAY), step],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def simulated_config(tmp_path: Path) -> Path:
    """A gateway with a simulated tank and a command source, publishing nowhere reachable."""
    path = config_file(tmp_path, [sys.executable, "-c", "print(4321.5)"])
    document = msgspec.json.decode(path.read_bytes())
    document.update(
        data_dir=str(tmp_path / "edge"), mqtt={"host": "127.0.0.1", "port": free_port()}
    )
    path.write_bytes(msgspec.json.encode(document))
    return path


def test_the_blocker_catches_an_import_of_the_stream(tmp_path: Path) -> None:
    done = on_a_gateway(tmp_path, "import stream.engine.core")

    assert done.returncode == 3
    assert "not for a gateway: tried ['stream']" in done.stderr


def test_milkguard_edge_help_loads_nothing_of_the_stream_or_alerts(tmp_path: Path) -> None:
    done = on_a_gateway(tmp_path, "from milkguard_cli import main; main(['edge', '--help'])")

    assert done.returncode == 0, done.stderr
    assert "run" in done.stdout
    assert "check" in done.stdout


def test_the_example_edge_config_validates_with_the_agent_loaded(tmp_path: Path) -> None:
    # the example names a CA file at its deployed path; point it at one that exists here
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n", encoding="utf-8")
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    data["mqtt"]["tls"]["ca"] = str(ca)
    config = tmp_path / "edge.yaml"
    config.write_text(yaml.safe_dump(data), encoding="utf-8")

    done = on_a_gateway(
        tmp_path,
        "from pathlib import Path\n"
        "import edge.agent\n"
        "from edge.config import load_edge_config\n"
        f"config = load_edge_config(Path({str(config)!r}))\n"
        "print(sorted(source.driver for source in config.sources))",
    )

    assert done.returncode == 0, done.stderr
    assert "['command', 'ds18b20', 'modbus']" in done.stdout


def test_milkguard_edge_check_reads_every_source_on_a_gateway_install(tmp_path: Path) -> None:
    config = simulated_config(tmp_path)

    done = on_a_gateway(
        tmp_path,
        f"from milkguard_cli import main; main(['edge', 'check', '--config', {str(config)!r}])",
    )

    assert done.returncode == 0, done.stderr
    assert "4321.5 L" in done.stdout


@pytest.mark.e2e
def test_milkguard_edge_run_starts_and_stops_on_a_gateway_install(tmp_path: Path) -> None:
    config = simulated_config(tmp_path)  # its broker is not there: the agent stores and retries

    done = on_a_gateway(
        tmp_path,
        "import sys\n"
        "from milkguard_cli import main\n"
        f"sys.exit(main(['edge', 'run', '--config', {str(config)!r}, '--duration', '2']))",
    )

    assert done.returncode == 0, done.stderr
    assert (tmp_path / "edge").is_dir()  # the outbox was opened: readings were stored

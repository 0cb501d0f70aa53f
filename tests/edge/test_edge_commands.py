"""`milkguard edge check`: a technician validates a gateway's config and sees every source read."""

from __future__ import annotations

import sys
from pathlib import Path

import msgspec
import pytest

from milkguard_cli import main


def config_file(tmp_path: Path, command: list[str]) -> Path:
    document = {
        "site": "farm-01",
        "gateway": "gw-1",
        "sources": [
            {
                "name": "tank-sim",
                "driver": "simulated",
                "model": "farm_tank",
                "channels": [
                    {
                        "quantity": "temp_c",
                        "asset": "tank-1",
                        "channel": "milk_temp",
                        "unit": "degC",
                        "limits": {"high": 6.0},
                    }
                ],
            },
            {
                "name": "level",
                "driver": "command",
                "command": command,
                "channels": [{"asset": "tank-1", "channel": "level", "unit": "L"}],
            },
        ],
    }
    path = tmp_path / "edge.yaml"
    path.write_bytes(msgspec.json.encode(document))
    return path


def test_check_reads_every_source_once_and_shows_the_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config_file(tmp_path, [sys.executable, "-c", "print(4321.5)"])

    assert main(["edge", "check", "--config", str(path)]) == 0

    shown = capsys.readouterr().out
    assert "tank-1/milk_temp" in shown
    assert "4321.5 L" in shown
    assert "- .. 6" in shown


def test_check_names_a_source_that_cannot_be_read_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config_file(tmp_path, [sys.executable, "-c", "import sys; sys.exit(3)"])

    assert main(["edge", "check", "--config", str(path)]) == 1

    shown = capsys.readouterr().out
    assert "level" in shown
    assert "exit" in shown.lower()


def test_a_bad_config_is_an_error_naming_the_field_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "edge.yaml"
    path.write_text("site: farm-01\ngateway: gw 1\nsources: []\n", encoding="utf-8")

    assert main(["edge", "run", "--config", str(path)]) == 2

    err = capsys.readouterr().err
    assert "gateway" in err
    assert "sources" in err
    assert "Traceback" not in err

"""The ``milkguard`` command as a user runs it, in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from milkguard_cli import main
from stream.settings import demo_plan_path
from tests.helpers import wait_until
from tests.servers import free_port

MILKGUARD = [sys.executable, "-m", "milkguard"]


class Output:
    """Collects a process's stream line by line, as it is written."""

    def __init__(self, stream: object) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def join(self) -> None:
        self._thread.join(timeout=10)


def milkguard(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the command to completion, as a user would."""
    return subprocess.run(
        [*MILKGUARD, *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MILKGUARD_")}
    env.update(
        MILKGUARD_MQTT__PORT=str(free_port()),
        MILKGUARD_DATA_DIR=str(tmp_path / "var"),
        COLUMNS="200",
        **extra,
    )
    return env


@pytest.mark.e2e
def test_run_shows_a_deviation_within_a_minute_and_stops_cleanly_on_ctrl_c(
    tmp_path: Path,
) -> None:
    process = subprocess.Popen(
        [*MILKGUARD, "run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env_for(tmp_path),
    )
    out, err = Output(process.stdout), Output(process.stderr)
    try:
        wait_until(lambda: "DEVIATION" in out.text, timeout_s=60, what="a deviation")
        wait_until(lambda: "RESOLVED" in out.text, timeout_s=60, what="the deviation to close")
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    out.join()
    err.join()

    assert "truck-07/comp-2" in out.text
    assert "MilkGuard run summary" in out.text
    assert "Traceback" not in err.text
    data = tmp_path / "var"
    changes = [json.loads(line) for line in (data / "deviations.jsonl").read_text().splitlines()]
    assert [(c["change"], c["asset"]) for c in changes] == [
        ("opened", "comp-2"),
        ("closed", "comp-2"),
    ]
    (series,) = data.glob("timeseries-*.lp")
    stored = series.read_text().splitlines()
    assert sum(line.startswith("reading,site=truck-07") for line in stored) >= 2 * 40
    assert sum(line.startswith("deviation,") for line in stored) == 2
    summary = out.text[out.text.index("MilkGuard run summary") :]
    published = _counter(summary, "simulators.readings_published")
    # nothing lost at the stop: every reading the simulators published was stored, and judged
    # or held for lateness in the engine's snapshot, which the next start takes back
    assert published > 0
    assert _counter(summary, "engine.judged") + _counter(summary, "engine.held") == published
    assert sum(line.startswith("reading,") for line in stored) == published
    assert (data / "stream.checkpoint").stat().st_size > 0


def _counter(summary: str, name: str) -> int:
    line = next(line for line in summary.splitlines() if f" {name} " in line)
    return int(line.split()[-2].replace(",", ""))


@pytest.mark.e2e
def test_a_bad_plan_stops_run_with_a_clear_message_and_no_traceback(tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text("plan: x\njurisdiction: XX\nassets: {}\n")

    result = milkguard("run", "--plan", str(plan), "--no-simulators", env=env_for(tmp_path))

    assert result.returncode == 2
    assert f"HACCP plan {plan} is invalid" in result.stderr
    assert "line 2: jurisdiction: Input should be 'CN', 'US', 'EU' or 'company'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.e2e
@pytest.mark.parametrize("hours", ["nan", "inf", "-1", "0", "1e300"])
def test_a_replay_tolerance_that_is_no_duration_is_refused_without_a_traceback(
    tmp_path: Path, hours: str
) -> None:
    recording = tmp_path / "empty.jsonl"
    recording.write_bytes(b"")
    result = milkguard(
        "replay",
        "--plan",
        str(demo_plan_path()),
        "--future-tolerance-h",
        hours,
        str(recording),
        env=env_for(tmp_path),
    )

    assert result.returncode == 2
    assert "--future-tolerance-h" in result.stderr
    assert "Traceback" not in result.stderr


def test_plan_check_lists_the_rules_of_a_good_plan() -> None:
    result = milkguard(
        "plan", "check", "stream/plans/demo-cn.yaml", env={**os.environ, "COLUMNS": "200"}
    )

    assert result.returncode == 0, result.stderr
    assert "plan demo-cn (CN)" in result.stdout
    assert "cn-transport-max-comp-1" in result.stdout


@pytest.mark.e2e
def test_secrets_never_reach_the_logs(tmp_path: Path) -> None:
    result = milkguard(
        "run",
        "--no-simulators",
        "--duration",
        "1.5",
        env=env_for(
            tmp_path,
            MILKGUARD_INFLUX__URL=f"http://127.0.0.1:{free_port()}",
            MILKGUARD_INFLUX__TOKEN="s3cr3t-influx-token",
            MILKGUARD_INFLUX__ORG="dairy",
            MILKGUARD_INFLUX__BUCKET="milk",
        ),
    )

    assert result.returncode == 0, result.stderr
    assert "'token': '**********'" in result.stderr
    assert "s3cr3t" not in result.stderr + result.stdout


@pytest.mark.e2e
def test_an_incomplete_influx_setting_names_what_is_missing(tmp_path: Path) -> None:
    result = milkguard(
        "run",
        "--no-simulators",
        "--duration",
        "1",
        env=env_for(tmp_path, MILKGUARD_INFLUX__URL="http://127.0.0.1:1"),
    )

    assert result.returncode == 2
    assert "missing: token, org, bucket" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.e2e
def test_an_unwritable_schema_output_is_a_clear_error(tmp_path: Path) -> None:
    result = milkguard(
        "contract", "schema", "--output", str(tmp_path / "absent" / "x.json"), env=env_for(tmp_path)
    )

    assert result.returncode == 2
    assert "cannot write the schema to" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_yaml_error_quoting_a_bracketed_path_is_shown_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "300")
    config = tmp_path / "milkguard.yaml"
    config.write_text("plan: [/usr/local/bin/x\n")

    assert main(["run", "--config", str(config)]) == 2

    err = capsys.readouterr().err
    assert "is not valid YAML" in err
    assert "plan: [/usr/local/bin/x" in err  # the YAML error's own quote, bracket and all


def test_a_commands_stderr_in_brackets_is_shown_as_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "400")
    said = "open [/dev/ttyUSB0]: [busy] held by [bold]modem"
    failing = f"import sys; sys.stderr.write({said!r}); sys.exit(3)"
    config = tmp_path / "edge.yaml"
    config.write_bytes(
        json.dumps(
            {
                "site": "farm-01",
                "gateway": "gw-1",
                "sources": [
                    {
                        "name": "level",
                        "driver": "command",
                        "command": [sys.executable, "-c", failing],
                        "channels": [{"asset": "tank-1", "channel": "level", "unit": "L"}],
                    }
                ],
            }
        ).encode()
    )

    assert main(["edge", "check", "--config", str(config)]) == 1

    assert said in capsys.readouterr().out


def test_an_error_naming_a_file_with_brackets_keeps_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "300")
    missing = tmp_path / "[bold]edge[/bold] [/etc].yaml"

    assert main(["edge", "run", "--config", str(missing)]) == 2

    err = capsys.readouterr().err
    assert str(missing) in err
    assert "Traceback" not in err

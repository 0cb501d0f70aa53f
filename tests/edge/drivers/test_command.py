"""The command driver runs real tiny programs and turns what they print into readings."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from edge.drivers.base import DriverError
from edge.drivers.command import CommandConfig, CommandDriver
from tests.helpers import wait_until


def python(code: str) -> list[str]:
    """Argv running ``code`` in this interpreter: a real process, no shell."""
    return [sys.executable, "-c", code]


def config(command: list[str], *keys: str | None, **fields: Any) -> CommandConfig:
    return CommandConfig.model_validate(
        {
            "name": "milk-meter",
            "driver": "command",
            "command": command,
            "channels": [
                {"asset": "tank-1", "channel": f"point_{i}", "unit": "degC", "key": key}
                for i, key in enumerate(keys)
            ],
            **fields,
        }
    )


def read(command: list[str], *keys: str | None, **fields: Any) -> list[float | None]:
    return CommandDriver(config(command, *keys, **fields)).read()


def test_a_json_object_gives_each_channel_the_value_of_its_key() -> None:
    command = python('print(\'{"milk_temp": 3.9, "level": 4120, "ignored": "x"}\')')

    assert read(command, "level", "milk_temp") == [4120.0, 3.9]


def test_key_value_lines_give_each_channel_the_value_of_its_key() -> None:
    command = python("print('# meter v2'); print('milk_temp = 3.9'); print(); print('level=4120')")

    assert read(command, "milk_temp", "level") == [3.9, 4120.0]


@pytest.mark.parametrize("key", [None, "milk_temp"])
def test_a_single_number_is_the_value_of_the_only_channel(key: str | None) -> None:
    assert read(python("print(' -1.5 ')"), key) == [-1.5]


def test_a_missing_key_reads_none_for_that_channel_only() -> None:
    command = python("print('milk_temp=3.9')")

    assert read(command, "milk_temp", "level") == [3.9, None]


def test_json_null_reads_none() -> None:
    assert read(python("print('{\"milk_temp\": null}')"), "milk_temp") == [None]


@pytest.mark.parametrize(
    "output", ['{"milk_temp": "ERR"}', '{"milk_temp": true}', "milk_temp=ERR", "milk_temp=nan"]
)
def test_a_non_numeric_value_reads_none_and_is_logged(
    output: str, caplog: pytest.LogCaptureFixture
) -> None:
    driver = CommandDriver(config(python(f"print({output!r})"), "milk_temp"))

    with caplog.at_level(logging.WARNING, logger="edge.drivers.command"):
        assert driver.read() == [None]
        assert driver.read() == [None]

    (warning,) = caplog.records
    assert warning.levelno == logging.WARNING
    assert warning.key == "milk_temp"  # type: ignore[attr-defined]
    assert warning.source == "milk-meter"  # type: ignore[attr-defined]


def test_the_configured_environment_reaches_the_command() -> None:
    command = python("import os; print(os.environ['METER_PORT'], os.environ['PATH'] != '')")
    driver = CommandDriver(config(command, None, env={"METER_PORT": "7"}))

    with pytest.raises(DriverError, match="7 True"):
        driver.read()


def test_a_non_zero_exit_fails_the_source_with_the_exit_code_and_stderr() -> None:
    command = python("import sys; print('milk_temp=3.9'); sys.exit('meter: no reply on ttyUSB0')")

    with pytest.raises(DriverError) as caught:
        read(command, "milk_temp")

    message = str(caught.value)
    assert caught.value.source == "milk-meter"
    assert sys.executable in message
    assert "exit code 1" in message
    assert "meter: no reply on ttyUSB0" in message


def test_only_the_first_200_characters_of_stderr_are_quoted() -> None:
    command = python("import sys; sys.stderr.write('E' * 200 + 'TAIL'); sys.exit(3)")

    with pytest.raises(DriverError, match="exit code 3") as caught:
        read(command, "milk_temp")
    assert "E" * 200 in str(caught.value)
    assert "TAIL" not in str(caught.value)


def test_a_command_that_hangs_is_killed_with_its_children_and_fails_the_source(
    tmp_path: Path,
) -> None:
    pid_file = tmp_path / "helper.pid"
    command = python(
        "import pathlib, subprocess, sys\n"
        "helper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"pathlib.Path({str(pid_file)!r}).write_text(str(helper.pid))\n"
        "sys.stderr.write('waiting for meter'); sys.stderr.flush()\n"
        "helper.wait()\n"
    )
    driver = CommandDriver(config(command, "milk_temp", timeout_s=2.0))

    with pytest.raises(DriverError, match=r"did not finish within timeout_s=2\.0 s") as caught:
        driver.read()
    assert "waiting for meter" in str(caught.value)
    assert "exit code -9" in str(caught.value)
    helper = int(pid_file.read_text())
    wait_until(lambda: not alive(helper), what=f"the helper process {helper} to die")


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its reaper has stopped running)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status


@pytest.mark.parametrize(
    "output",
    ["hello meter", "milk_temp=3.9\ngarbage", '{"milk_temp": 3.9', "[1, 2]", ""],
    ids=["prose", "mixed-lines", "broken-json", "json-array", "nothing"],
)
def test_output_in_none_of_the_formats_fails_the_source(output: str) -> None:
    command = python(f"import sys; sys.stdout.write({output!r}); sys.stderr.write('v2.1')")

    with pytest.raises(DriverError, match="none of the formats") as caught:
        read(command, "milk_temp")
    assert "exit code 0" in str(caught.value)
    assert "v2.1" in str(caught.value)


def test_a_single_number_for_several_channels_fails_the_source() -> None:
    with pytest.raises(DriverError, match="single number but 2 channels"):
        read(python("print(4.2)"), "milk_temp", "level")


def test_keyed_output_for_a_channel_without_a_key_fails_the_source() -> None:
    with pytest.raises(DriverError, match="has no key"):
        read(python("print('milk_temp=3.9')"), None)


def test_a_command_that_does_not_exist_fails_the_source_with_its_path() -> None:
    with pytest.raises(DriverError, match="cannot start command '/nonexistent/meter'"):
        read(["/nonexistent/meter"], None)


def test_several_channels_without_keys_are_refused_in_the_config() -> None:
    with pytest.raises(ValidationError, match="have no key"):
        config(python("print(1)"), "milk_temp", None)


def test_an_empty_command_is_refused_in_the_config() -> None:
    with pytest.raises(ValidationError, match="command"):
        config([], None)

"""Settings come from a file and MILKGUARD_* variables, are validated, and hide secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from milkguard.errors import ConfigError
from milkguard_cli.settings import load_settings


def test_defaults_run_a_broker_of_their_own_with_the_demo_plan() -> None:
    settings = load_settings()

    assert settings.mqtt.broker == "auto"  # Mosquitto where installed, else amqtt
    assert (settings.mqtt.host, settings.mqtt.port) == ("127.0.0.1", 1883)
    assert settings.plan.name == "demo-cn.yaml"
    assert settings.simulators is True
    assert not settings.influx.enabled


def test_the_environment_wins_over_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "milkguard.yaml"
    config.write_text("mqtt:\n  broker: external\n  port: 1884\nsimulators: false\n")
    monkeypatch.setenv("MILKGUARD_MQTT__PORT", "1885")

    settings = load_settings(config)

    assert (settings.mqtt.broker, settings.mqtt.port, settings.simulators) == (
        "external",
        1885,
        False,
    )


def test_flags_win_over_file_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MILKGUARD_SIMULATORS", "true")

    assert load_settings(None, simulators=False).simulators is False


def test_secrets_are_redacted_in_what_gets_logged(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {
        "URL": "http://127.0.0.1:8086",
        "TOKEN": "tok-123",
        "ORG": "o",
        "BUCKET": "b",
    }.items():
        monkeypatch.setenv(f"MILKGUARD_INFLUX__{key}", value)
    monkeypatch.setenv("MILKGUARD_MQTT__PASSWORD", "pw-456")

    settings = load_settings()
    shown = str(settings.redacted())

    assert settings.influx.enabled
    assert "tok-123" not in shown
    assert "pw-456" not in shown
    assert shown.count("**********") == 2


def test_an_unknown_key_in_the_file_is_named(tmp_path: Path) -> None:
    config = tmp_path / "milkguard.yaml"
    config.write_text("mqtt:\n  prot: 1884\n")

    with pytest.raises(ConfigError, match=r"mqtt\.prot: Extra inputs are not permitted"):
        load_settings(config)


def test_a_settings_file_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "milkguard.yaml"
    config.write_text("- just\n- a list\n")

    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_settings(config)


def test_the_example_settings_file_in_the_repo_is_valid() -> None:
    example = Path(__file__).parents[2] / "milkguard.example.yaml"

    settings = load_settings(example)

    assert settings.mqtt.broker == "external"
    assert settings.simulators is False

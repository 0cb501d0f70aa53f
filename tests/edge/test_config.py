"""An edge config is validated whole at start, and every problem names its field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from edge.config import EdgeConfig, EdgeMqtt, load_edge_config
from milkguard.errors import ConfigError

EXAMPLE = Path(__file__).parents[2] / "deploy" / "edge" / "edge.example.yaml"


def write(path: Path, data: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def minimal(**extra: object) -> dict[str, object]:
    return {
        "site": "farm-01",
        "gateway": "gw-1",
        "sources": [
            {
                "name": "tank",
                "driver": "simulated",
                "model": "farm_tank",
                "channels": [
                    {
                        "quantity": "temp_c",
                        "asset": "tank-1",
                        "channel": "milk_temp",
                        "unit": "degC",
                    }
                ],
            }
        ],
        **extra,
    }


def test_the_example_config_in_the_repository_is_valid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the example names a CA file at its deployed path; point it at one that exists here
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n", encoding="utf-8")
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    data["mqtt"]["tls"]["ca"] = str(ca)
    monkeypatch.setenv("MILKGUARD_EDGE_MQTT__PASSWORD", "s3cret")

    config = load_edge_config(write(tmp_path / "edge.yaml", data))

    assert [s.driver for s in config.sources] == ["ds18b20", "modbus", "command"]
    assert config.mqtt.password is not None
    assert config.mqtt.password.get_secret_value() == "s3cret"
    assert "s3cret" not in str(config.redacted())


def test_every_problem_is_listed_with_its_field_path(tmp_path: Path) -> None:
    data = minimal()
    data["sources"][0]["channels"][0]["unit"] = "fahrenheit"  # type: ignore[index]
    data["sources"][0]["every_s"] = 0  # type: ignore[index]
    data["batching"] = {"max_readings": 0}

    with pytest.raises(ConfigError) as caught:
        load_edge_config(write(tmp_path / "edge.yaml", data))

    message = str(caught.value)
    assert str(tmp_path / "edge.yaml") in message
    assert "sources[0].simulated.channels[0].unit" in message
    assert "sources[0].simulated.every_s" in message
    assert "batching.max_readings" in message


def test_a_channel_read_by_two_sources_is_refused() -> None:
    data = minimal()
    second = dict(data["sources"][0], name="tank-again")  # type: ignore[index]
    data["sources"].append(second)  # type: ignore[attr-defined]

    with pytest.raises(ValueError, match="tank-1/milk_temp is read by both source"):
        EdgeConfig(**data)


def test_a_quantity_the_model_does_not_have_is_named() -> None:
    data = minimal()
    data["sources"][0]["channels"][0]["quantity"] = "hatch"  # type: ignore[index]

    with pytest.raises(ValueError, match="a farm_tank has no quantity 'hatch'"):
        EdgeConfig(**data)


def test_tls_needs_an_existing_ca_and_both_halves_of_a_client_certificate(
    tmp_path: Path,
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x", encoding="utf-8")
    with pytest.raises(ValueError, match="no such file"):
        EdgeConfig(**minimal(mqtt={"tls": {"ca": str(tmp_path / "missing.pem")}}))
    with pytest.raises(ValueError, match="set both cert and key"):
        EdgeConfig(**minimal(mqtt={"tls": {"ca": str(ca), "cert": str(ca)}}))


def test_the_environment_overrides_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MILKGUARD_EDGE_MQTT__PORT", "8883")
    config = load_edge_config(write(tmp_path / "edge.yaml", minimal(mqtt={"port": 1883})))
    assert config.mqtt.port == 8883
    assert config.client_id == "edge-farm-01-gw-1"


def test_a_password_without_a_username_is_refused() -> None:
    with pytest.raises(ValueError, match="password without a username"):
        EdgeConfig(**minimal(mqtt={"password": "s3cret"}))


def test_a_drain_slower_than_sampling_is_refused() -> None:
    data = minimal(drain={"max_readings_per_s": 0.5})
    with pytest.raises(ValueError, match="a backlog could never be sent"):
        EdgeConfig(**data)


def test_command_environment_values_are_not_logged() -> None:
    data = minimal()
    data["sources"].append(  # type: ignore[attr-defined]
        {
            "name": "meter",
            "driver": "command",
            "command": ["/usr/bin/meter"],
            "env": {"METER_TOKEN": "SECRET2"},
            "channels": [{"asset": "tank-1", "channel": "level", "unit": "L"}],
        }
    )
    assert "SECRET2" not in str(EdgeConfig(**data).redacted())


def test_an_unusable_data_dir_is_a_config_error(tmp_path: Path) -> None:
    from edge.agent import EdgeAgent  # noqa: PLC0415

    blocker = tmp_path / "file"
    blocker.write_text("not a directory", encoding="utf-8")
    config = EdgeConfig(**minimal(data_dir=str(blocker / "edge")))
    with pytest.raises(ConfigError, match="cannot open the outbox in data_dir"):
        EdgeAgent(config)


def test_a_password_for_a_broker_on_another_host_needs_tls() -> None:
    mqtt = {"host": "broker.dairy.example", "username": "farm-01-gw", "password": "pw-12345"}
    with pytest.raises(ValidationError, match=r"in clear: set mqtt\.tls"):
        EdgeMqtt(**mqtt)
    assert EdgeMqtt(**{**mqtt, "host": "127.0.0.1"}).password is not None

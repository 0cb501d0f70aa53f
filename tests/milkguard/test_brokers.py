"""Which broker ``milkguard run`` starts, as ``mqtt.broker`` asks, and the log line saying why."""

from __future__ import annotations

from pathlib import Path

import pytest

from milkguard import brokers
from milkguard.errors import ConfigError
from milkguard.mosquitto import MosquittoChild
from stream.settings import StreamSettings as Settings


def settings(tmp_path: Path, broker: str) -> Settings:
    return Settings(data_dir=tmp_path / "var", mqtt={"broker": broker, "port": 18830})


def own(chosen: Settings) -> brokers.EmbeddedBroker | MosquittoChild | None:
    return brokers.own_broker(chosen, chosen.data_dir, demo_fleet=False)


@pytest.fixture
def no_mosquitto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(brokers, "find_mosquitto", lambda: None)


@pytest.fixture
def mosquitto_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(brokers, "find_mosquitto", lambda: Path("/usr/sbin/mosquitto"))


@pytest.mark.usefixtures("mosquitto_installed")
def test_auto_starts_mosquitto_where_it_is_installed_with_its_files_in_the_data_dir(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", "milkguard.brokers")

    chosen = own(settings(tmp_path, "auto"))

    assert isinstance(chosen, MosquittoChild)
    assert chosen.directory == (tmp_path / "var" / "mosquitto").absolute()
    assert (chosen.host, chosen.port) == ("127.0.0.1", 18830)
    (record,) = [r for r in caplog.records if r.message == "broker.chosen"]
    assert record.broker == "mosquitto (child process)"  # type: ignore[attr-defined]
    assert "/usr/sbin/mosquitto is installed" in record.why  # type: ignore[attr-defined]


@pytest.mark.usefixtures("no_mosquitto")
def test_auto_falls_back_to_amqtt_with_a_warning_that_it_is_demo_grade(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    chosen = own(settings(tmp_path, "auto"))

    assert isinstance(chosen, brokers.EmbeddedBroker)
    (record,) = [r for r in caplog.records if r.message == "broker.chosen"]
    assert record.levelname == "WARNING"
    assert record.broker == "amqtt (embedded, demo-grade)"  # type: ignore[attr-defined]
    assert "lost if this process is killed" in record.risk  # type: ignore[attr-defined]
    assert "apt-get install mosquitto" in record.fix  # type: ignore[attr-defined]


@pytest.mark.usefixtures("no_mosquitto")
def test_asking_for_mosquitto_where_it_is_not_installed_says_how_to_install_it(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError, match=r"apt-get install mosquitto.*mqtt.broker: embedded"):
        own(settings(tmp_path, "mosquitto"))


@pytest.mark.usefixtures("mosquitto_installed")
def test_embedded_and_external_are_taken_at_their_word(tmp_path: Path) -> None:
    assert isinstance(own(settings(tmp_path, "embedded")), brokers.EmbeddedBroker)
    assert own(settings(tmp_path, "external")) is None


@pytest.mark.usefixtures("mosquitto_installed")
def test_mosquitto_open_to_the_network_without_users_is_refused_with_what_to_configure(
    tmp_path: Path,
) -> None:
    exposed = Settings(data_dir=tmp_path, mqtt={"broker": "mosquitto", "host": "0.0.0.0"})  # noqa: S104 - refused before binding

    with pytest.raises(ConfigError) as refused:
        own(exposed)

    message = str(refused.value)
    assert "refusing to start Mosquitto on mqtt.host 0.0.0.0" in message
    assert "set mqtt.host: 127.0.0.1" in message
    assert "mqtt.security.users" in message

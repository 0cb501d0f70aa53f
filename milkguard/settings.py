"""Settings every MilkGuard application shares, and how a settings file is read.

One YAML file and ``MILKGUARD_*`` environment variables; precedence: environment over file
over defaults. Nested fields use ``__`` in variable names, e.g. ``MILKGUARD_MQTT__PORT=1884`` or
``MILKGUARD_INFLUX__TOKEN=...``. Secrets are ``SecretStr``: they print as ``**********`` and
``redacted()`` is what gets logged.

Here: the reading machinery, the broker (:class:`MqttSettings`) and logging
(:class:`CommonSettings`). Each application keeps its own sections beside its code
(:mod:`stream.settings`, :mod:`alerts.settings`; the edge agent has its own file,
:mod:`edge.config`), and :mod:`milkguard_cli.settings` puts the whole file together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from milkguard import logs
from milkguard.broker_security import BrokerSecurity
from milkguard.errors import ConfigError
from milkguard.mqtt import BrokerAddress


class MqttSettings(BaseModel):
    """Where the stream's MQTT broker is, or how to run the embedded one."""

    model_config = ConfigDict(extra="forbid")

    broker: Literal["auto", "mosquitto", "embedded", "external"] = Field(
        default="auto",
        description="What `milkguard run` listens with on host:port. mosquitto: Mosquitto as "
        "a child process, configured from mqtt.security, persistent in data_dir; embedded: "
        "amqtt in-process (demo-grade: a killed service loses what it had acknowledged); "
        "auto: mosquitto where installed, else embedded; external: start none, connect to "
        "host:port.",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    tls_ca: Path | None = Field(default=None, description="CA file; enables TLS when set.")
    tls_cert: Path | None = Field(
        default=None, description="Client certificate (PEM), for a broker that asks for one."
    )
    tls_key: Path | None = Field(default=None, description="The client certificate's key.")
    security: BrokerSecurity = Field(
        default_factory=BrokerSecurity,
        description="The embedded broker's users, roles and TLS; also the source of "
        "`milkguard broker mosquitto-config`.",
    )
    client_id: str = "milkguard-stream"
    keepalive_s: int = Field(default=30, ge=5)
    queue_size: int = Field(
        default=10_000,
        ge=10,
        description="Messages waiting for the engine; when full, MQTT reads wait (backpressure).",
    )
    max_unacknowledged: int = Field(
        default=500,
        ge=1,
        le=65_535,
        description="Messages taken and not yet acknowledged to the broker before the stream "
        "checkpoints: keep it below the broker's in-flight window (Mosquitto "
        "max_inflight_messages, default 20; the configuration MilkGuard generates 20,000), or the "
        "broker stops sending until the next periodic checkpoint.",
    )

    @model_validator(mode="after")
    def _client_certificate_complete(self) -> MqttSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both or neither")
        if self.tls_cert is not None and self.tls_ca is None:
            raise ValueError("tls_cert needs tls_ca: a client certificate is sent over TLS only")
        if self.broker != "external" and self.security.local_port == self.port:
            raise ValueError(
                f"security.local_port {self.port} is mqtt.port too: the service's broker needs "
                "two ports (or no local_port)"
            )
        return self


class EnvOverFileSettings(BaseSettings):
    """Settings read from a file (passed as init values) where the environment wins."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment wins over the file, which comes in as init values."""
        return env_settings, init_settings


class CommonSettings(EnvOverFileSettings):
    """What every application that reads the settings file shares: the broker, and logging.

    Each application extends it with its own sections (:class:`stream.settings.StreamSettings`;
    the alert service's :class:`alerts.settings.AlertSettings` is one section); the whole file
    is read by :class:`milkguard_cli.settings.Settings`, which puts them together.
    """

    model_config = SettingsConfigDict(
        env_prefix="MILKGUARD_", env_nested_delimiter="__", extra="forbid"
    )

    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"

    def redacted(self) -> dict[str, Any]:
        """The settings as they may be logged: secrets shown as ``**********``."""
        return self.model_dump(mode="json")


AnySettings = TypeVar("AnySettings", bound=CommonSettings)


def read_settings_file(path: Path) -> dict[str, Any]:
    """A YAML settings file as a mapping, or a :class:`ConfigError` that names the file."""
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read settings file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"settings file {path} is not valid YAML: {exc}") from exc
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"settings file {path} must be a YAML mapping")
    return loaded or {}


def describe_problems(exc: ValidationError) -> str:
    """One line per problem, each naming its field as a path: ``sources[2].channels[0].unit``."""
    lines = []
    for err in exc.errors():
        where = ""
        for part in err["loc"]:
            where += f"[{part}]" if isinstance(part, int) else f".{part}" if where else str(part)
        lines.append(f"  - {where or '(top level)'}: {err['msg']}")
    return "\n".join(lines)


def read_settings(
    settings_class: type[AnySettings], path: Path | None = None, **overrides: Any
) -> AnySettings:
    """Read ``settings_class`` from ``path`` (optional), the environment and ``overrides``.

    ``overrides`` (command-line flags, already typed) win over both.
    """
    data = read_settings_file(path) if path is not None else {}
    try:
        settings = settings_class(**data)
    except ValidationError as exc:
        source = str(path) if path is not None else "environment"
        raise ConfigError(
            f"settings from {source} (and MILKGUARD_* variables) are invalid:\n"
            f"{describe_problems(exc)}"
        ) from exc
    logs.register_secrets(settings)  # no log line may show them from now on
    # flags are typed by the command line parser already; they win over file and environment
    return settings.model_copy(update=overrides) if overrides else settings


def broker_address(settings: CommonSettings) -> BrokerAddress:
    """The broker address from the settings (the secret is unwrapped only here)."""
    mqtt = settings.mqtt
    return BrokerAddress(
        host=mqtt.host,
        port=mqtt.port,
        username=mqtt.username,
        password=mqtt.password.get_secret_value() if mqtt.password else None,
        tls_ca=mqtt.tls_ca,
        tls_cert=mqtt.tls_cert,
        tls_key=mqtt.tls_key,
        keepalive_s=mqtt.keepalive_s,
    )

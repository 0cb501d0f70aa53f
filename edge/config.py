"""The edge agent's configuration: one YAML file, overridable by ``MILKGUARD_EDGE_*`` variables.

Validated whole at start: every problem is listed with its field path
(``sources[1].channels[0].register``), so a technician on a farm fixes them in one go. The
password is a ``SecretStr``; :meth:`EdgeConfig.redacted` is what gets logged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import SettingsConfigDict

from edge.drivers.base import IdField
from edge.drivers.command import CommandConfig
from edge.drivers.ds18b20 import DS18B20Config
from edge.drivers.modbus import ModbusConfig
from edge.drivers.simulated import SimulatedConfig
from milkguard.broker_security import is_loopback
from milkguard.errors import ConfigError
from milkguard.settings import EnvOverFileSettings, describe_problems, read_settings_file

Source = Annotated[
    SimulatedConfig | ModbusConfig | DS18B20Config | CommandConfig,
    Field(discriminator="driver"),
]


class TlsConfig(BaseModel):
    """TLS to the broker: the CA that signed its certificate, and ours if it wants one."""

    model_config = ConfigDict(extra="forbid")

    ca: Path = Field(description="CA certificate (PEM) the broker's certificate must chain to.")
    cert: Path | None = Field(default=None, description="Client certificate (PEM), for mTLS.")
    key: Path | None = Field(default=None, description="Client private key (PEM), for mTLS.")

    @model_validator(mode="after")
    def _usable(self) -> TlsConfig:
        if (self.cert is None) != (self.key is None):
            raise ValueError("set both cert and key for a client certificate, or neither")
        for name in ("ca", "cert", "key"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name}: no such file {path}")
        return self


class EdgeMqtt(BaseModel):
    """The broker the gateway publishes to."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    tls: TlsConfig | None = None
    client_id: str | None = Field(
        default=None, description="Stable id for the persistent session; edge-SITE-GATEWAY."
    )
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    heartbeat_s: float = Field(default=30.0, gt=0, description="Status published this often.")
    reconnect_min_s: float = Field(default=1.0, gt=0)
    reconnect_max_s: float = Field(default=60.0, gt=0)

    @model_validator(mode="after")
    def _backoff(self) -> EdgeMqtt:
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError("reconnect_min_s must not exceed reconnect_max_s")
        if self.password is not None and self.username is None:
            raise ValueError("a password without a username is not sent; set mqtt.username")
        if self.password is not None and self.tls is None and not is_loopback(self.host):
            raise ValueError(
                f"the password would cross the network to {self.host} in clear: set mqtt.tls "
                "(ca: the CA of the broker's certificate, and its TLS port), or reach the "
                "broker through 127.0.0.1"
            )
        return self


class Batching(BaseModel):
    """When stored samples are sealed into a batch and sent."""

    model_config = ConfigDict(extra="forbid")

    max_readings: int = Field(default=500, ge=1, le=50_000)
    max_delay_s: float = Field(default=2.0, gt=0, le=3600)


class OutboxConfig(BaseModel):
    """The durable queue on the gateway's disk."""

    model_config = ConfigDict(extra="forbid")

    max_mb: float = Field(default=1024, gt=0, description="Bound on stored samples.")
    warn_at: float = Field(default=0.8, gt=0, lt=1, description="Alert past this fraction.")
    min_free_mb: float = Field(
        default=100, ge=0, description="Alert too when the disk itself has less free space."
    )
    when_full: Literal["drop_oldest", "refuse_new"] = "drop_oldest"


class Drain(BaseModel):
    """How a backlog is sent after an outage."""

    model_config = ConfigDict(extra="forbid")

    max_readings_per_s: float = Field(
        default=50_000,
        gt=0,
        description="Cap on readings sent per second, so a gateway's backlog does not crowd "
        "out the live data of the others on the broker and the stream.",
    )
    in_flight: int = Field(default=20, ge=1, le=1000, description="Batches awaiting PUBACK.")


class ClockConfig(BaseModel):
    """Where the gateway learns whether its clock is synchronised."""

    model_config = ConfigDict(extra="forbid")

    source: Literal["kernel", "chrony", "command", "none"] = Field(
        default="kernel",
        description="kernel: adjtimex (what NTP/chrony/timesyncd discipline); chrony: "
        "`chronyc -c tracking`; command: prints JSON {synced, offset_ms, error_ms}.",
    )
    command: list[str] | None = None
    every_s: float = Field(default=60.0, gt=0)

    @model_validator(mode="after")
    def _command_given(self) -> ClockConfig:
        if self.source == "command" and not self.command:
            raise ValueError("source: command needs command: [program, args...]")
        return self


class AlarmConfig(BaseModel):
    """The local alarm (a relay, a siren, a GPIO pin) driven through a command."""

    model_config = ConfigDict(extra="forbid")

    command: list[str] = Field(
        min_length=1,
        description="Run with 'on' or 'off' appended; MILKGUARD_ALARM_REASON says why.",
    )
    timeout_s: float = Field(default=10.0, gt=0)
    repeat_s: float | None = Field(
        default=None, gt=0, description="Repeat 'on' this often while in alarm (watchdog relays)."
    )


class EdgeConfig(EnvOverFileSettings):
    """Everything ``milkguard edge run`` can be told."""

    model_config = SettingsConfigDict(
        env_prefix="MILKGUARD_EDGE_", env_nested_delimiter="__", extra="forbid"
    )

    site: IdField
    gateway: IdField
    data_dir: Path = Field(default=Path("/var/lib/milkguard-edge"))
    mqtt: EdgeMqtt = Field(default_factory=EdgeMqtt)
    batching: Batching = Field(default_factory=Batching)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    drain: Drain = Field(default_factory=Drain)
    clock: ClockConfig = Field(default_factory=ClockConfig)
    alarm: AlarmConfig | None = None
    sources: list[Source] = Field(min_length=1)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"

    @model_validator(mode="after")
    def _drainable(self) -> EdgeConfig:
        sampled = sum(len(s.channels) / s.every_s for s in self.sources)
        if sampled >= self.drain.max_readings_per_s:
            raise ValueError(
                f"the sources sample {sampled:,.0f} readings/s but drain.max_readings_per_s is "
                f"{self.drain.max_readings_per_s:,.0f}: a backlog could never be sent; raise it"
            )
        return self

    @model_validator(mode="after")
    def _one_home_per_channel(self) -> EdgeConfig:
        names: set[str] = set()
        homes: dict[tuple[str, str], str] = {}
        for source in self.sources:
            if source.name in names:
                raise ValueError(f"two sources are named {source.name!r}; names must differ")
            names.add(source.name)
            for channel in source.channels:
                key = (channel.asset, channel.channel)
                if key in homes:
                    raise ValueError(
                        f"{channel.asset}/{channel.channel} is read by both source "
                        f"{homes[key]!r} and {source.name!r}; each channel needs one source"
                    )
                homes[key] = source.name
        return self

    @property
    def client_id(self) -> str:
        """The MQTT client id: stable, so the broker keeps the session across reconnects."""
        return self.mqtt.client_id or f"edge-{self.site}-{self.gateway}"

    def redacted(self) -> dict[str, Any]:
        """The configuration as it may be logged: secrets shown as ``**********``, and so are
        the values of a command source's ``env`` (where its tokens belong)."""
        dumped = self.model_dump(mode="json")
        for source in dumped["sources"]:
            if source.get("env"):
                source["env"] = dict.fromkeys(source["env"], "**********")
        return dumped


def load_edge_config(path: Path) -> EdgeConfig:
    """Read and validate an edge config file (and ``MILKGUARD_EDGE_*`` variables)."""
    data = read_settings_file(path)
    try:
        return EdgeConfig(**data)
    except ValidationError as exc:
        raise ConfigError(
            f"edge config {path} (with MILKGUARD_EDGE_* variables) is invalid:\n"
            f"{describe_problems(exc)}\nFix it and start again."
        ) from exc

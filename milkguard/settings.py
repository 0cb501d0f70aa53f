"""Settings of the stream service, from a YAML file and ``MILKGUARD_*`` environment variables.

Precedence: environment over file over defaults. Nested fields use ``__`` in variable names,
e.g. ``MILKGUARD_MQTT__PORT=1884`` or ``MILKGUARD_INFLUX__TOKEN=...``. Secrets are ``SecretStr``:
they print as ``**********`` and :meth:`Settings.redacted` is what gets logged.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from alerts.delivery import Recipient, SmtpSettings
from milkguard import logs
from milkguard.broker_security import BrokerSecurity
from milkguard.errors import ConfigError
from milkguard.mqtt import BrokerAddress


def demo_plan_path() -> Path:
    """The demo HACCP plan shipped with the package."""
    return Path(str(resources.files("stream") / "plans" / "demo-cn.yaml"))


class MqttSettings(BaseModel):
    """Where the stream's MQTT broker is, or how to run the embedded one."""

    model_config = ConfigDict(extra="forbid")

    broker: Literal["embedded", "external"] = Field(
        default="embedded",
        description="embedded: an in-process broker on host:port; external: connect to one "
        "(e.g. Mosquitto).",
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
        "max_inflight_messages, default 20; MilkGuard's generated config 1000), or the "
        "broker stops sending until the next periodic checkpoint.",
    )

    @model_validator(mode="after")
    def _client_certificate_complete(self) -> MqttSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both or neither")
        if self.tls_cert is not None and self.tls_ca is None:
            raise ValueError("tls_cert needs tls_ca: a client certificate is sent over TLS only")
        if self.broker == "embedded" and self.security.local_port == self.port:
            raise ValueError(
                f"security.local_port {self.port} is mqtt.port too: the embedded broker needs "
                "two ports (or no local_port)"
            )
        return self


class KafkaSettings(BaseModel):
    """The Kafka cluster of a scaled-out install (``milkguard bridge``)."""

    model_config = ConfigDict(extra="forbid")

    bootstrap_servers: str = "127.0.0.1:9092"
    batches_topic: str = "milkguard.batches"
    deadletter_topic: str = "milkguard.deadletter"
    deviations_topic: str = "milkguard.deviations"
    replication_factor: int = Field(
        default=1, ge=1, description="For the topics the workers create (3 on a real cluster)."
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = Field(default=None, description="CA for SSL and SASL_SSL.")

    @model_validator(mode="after")
    def _sasl_complete(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL") and not (
            self.sasl_mechanism and self.sasl_username and self.sasl_password
        ):
            raise ValueError(
                f"security_protocol {self.security_protocol} needs sasl_mechanism, "
                "sasl_username and sasl_password (MILKGUARD_KAFKA__SASL_PASSWORD)"
            )
        return self

    def client_options(self) -> dict[str, Any]:
        """aiokafka keyword arguments for the security settings (the secret unwrapped here)."""
        options: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.security_protocol in ("SSL", "SASL_SSL"):
            import ssl  # noqa: PLC0415

            options["ssl_context"] = ssl.create_default_context(
                cafile=str(self.ssl_cafile) if self.ssl_cafile else None
            )
        if self.security_protocol.startswith("SASL"):
            assert self.sasl_password is not None
            options.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password.get_secret_value(),
            )
        return options


class WorkerSettings(BaseModel):
    """The faust-streaming workers of a scaled-out install (``milkguard worker``)."""

    model_config = ConfigDict(extra="forbid")

    group: str = Field(
        default="milkguard-worker",
        pattern=r"^[A-Za-z0-9._-]{1,100}$",
        description="Faust app id: the consumer group, and the prefix of the state changelog.",
    )
    checkpoint_s: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="How often work is made durable: outputs confirmed, state saved, offsets "
        "committed. Longer: less overhead, more work repeated after a crash.",
    )
    tick_s: float = Field(
        default=1.0, gt=0, le=60, description="A partition quiet this long has its clock moved."
    )
    session_timeout_s: float = Field(
        default=30.0,
        ge=2,
        description="Kafka consumer session: how soon a dead worker's partitions move on.",
    )
    heartbeat_interval_s: float = Field(default=3.0, gt=0)

    @model_validator(mode="after")
    def _heartbeat_within_session(self) -> WorkerSettings:
        if self.heartbeat_interval_s * 2 > self.session_timeout_s:
            raise ValueError(
                f"heartbeat_interval_s ({self.heartbeat_interval_s:g}) must be at most half of "
                f"session_timeout_s ({self.session_timeout_s:g})"
            )
        return self


class EscalationSettings(BaseModel):
    """How long an alert of one severity may stay unacknowledged before the next audience."""

    model_config = ConfigDict(extra="forbid")

    critical_s: float = Field(default=300, gt=0)
    major_s: float = Field(default=900, gt=0)
    minor_s: float = Field(default=3600, gt=0)
    critical_action_s: float = Field(
        default=86400, gt=0, description="A corrective action is due this long after raising."
    )
    major_action_s: float = Field(default=259200, gt=0)


class ApiUser(BaseModel):
    """Someone who may use the alert API and page: their token, role and sites."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    role: Literal["operator", "qa", "regulator"]
    token: SecretStr = Field(description="A bearer token; 32+ random characters.")
    sites: list[str] = Field(
        default_factory=lambda: ["*"], description="Regulators read every site regardless."
    )

    @model_validator(mode="after")
    def _long_token(self) -> ApiUser:
        if len(self.token.get_secret_value()) < 24:
            raise ValueError(f"the token of {self.name!r} is too short: use 24+ random characters")
        return self


class AlertSettings(BaseModel):
    """``milkguard alerts run``: who is told of deviations, and how."""

    model_config = ConfigDict(extra="forbid")

    directory: Path = Field(
        default=Path("var/alerts"), description="Alert store, outbox, audit trail, signing key."
    )
    database: SecretStr | None = Field(
        default=None,
        description="postgresql://user:password@host/db for a multi-node install (several "
        "alert services sharing it); unset: SQLite files in `directory`. "
        "MILKGUARD_ALERTS__DATABASE.",
    )
    recipients: list[Recipient] = Field(default_factory=list)
    smtp: SmtpSettings = Field(default_factory=SmtpSettings)
    webhook_secret: SecretStr | None = Field(
        default=None, description="HMAC-SHA256 key of X-MilkGuard-Signature on webhooks."
    )
    escalation: EscalationSettings = Field(default_factory=EscalationSettings)
    reopen_within_s: float = Field(default=3600, ge=0)
    max_attempts: int = Field(default=8, ge=1)
    users: list[ApiUser] = Field(default_factory=list)
    report_deadline_h: float = Field(
        default=24.0, gt=0, description="A critical deviation's report is due this long after."
    )
    issuer: str = Field(default="MilkGuard", description="Who signs the regulator reports.")
    http_host: str = "127.0.0.1"
    http_port: int | None = Field(
        default=None, ge=1, le=65535, description="Serve the API and the operators' page here."
    )
    stream_keys: list[Path] = Field(
        default_factory=list,
        description="Public keys (PEM) of the streams whose signed deviations are believed "
        "(`milkguard stream public-key --output stream.pem` on the stream's host). Required.",
    )
    max_body_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        description="Largest request body the API reads; larger is refused (413) unread.",
    )
    tls_cert: Path | None = Field(
        default=None, description="PEM certificate (chain) of the API; with tls_key: HTTPS."
    )
    tls_key: Path | None = Field(default=None, description="PEM private key of tls_cert.")
    failed_logins_allowed: int = Field(
        default=5,
        ge=1,
        description="Wrong tokens from one address before it is locked out (429), for 2 s "
        "then twice as long after each further failure, up to lockout_max_s.",
    )
    lockout_max_s: float = Field(default=900, gt=0)
    behind_proxy: bool = Field(
        default=False,
        description="A reverse proxy on this host forwards to the API: the client address "
        "(for the lockout) is then taken from the X-Forwarded-For it sends from 127.0.0.1. "
        "Off, the header is ignored: any local client could claim a new address per request.",
    )

    @model_validator(mode="after")
    def _tls_pair(self) -> AlertSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            given, missing = (
                ("tls_cert", "tls_key") if self.tls_key is None else ("tls_key", "tls_cert")
            )
            raise ValueError(
                f"alerts.{given} is set but alerts.{missing} is not: HTTPS needs both the "
                "certificate and its private key"
            )
        return self


class SigningSettings(BaseModel):
    """The stream's own Ed25519 key: every deviation change it publishes is signed with it."""

    model_config = ConfigDict(extra="forbid")

    key: Path | None = Field(
        default=None,
        description="Private key (PEM), created mode 0600 on first use; unset: "
        "{data_dir}/signing-key.pem. Export the public key: milkguard stream public-key.",
    )


class MetricsSettings(BaseModel):
    """Where Prometheus scrapes the operational counters; off unless a port is set."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(default="127.0.0.1", description="Bind address of /metrics.")
    port: int | None = Field(default=None, ge=1, le=65535, description="Serve /metrics here.")


class InfluxSettings(BaseModel):
    """InfluxDB 2.x/3.x write target; off unless url, token, org and bucket are all set."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = None
    token: SecretStr | None = None
    org: str | None = None
    bucket: str | None = None
    batch_lines: int = Field(default=5_000, ge=1)
    max_buffer_lines: int = Field(
        default=500_000,
        ge=1_000,
        description="Lines held while InfluxDB is unreachable before ingest waits for it.",
    )
    timeout_s: float = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _all_or_nothing(self) -> InfluxSettings:
        given = {
            "url": self.url,
            "token": self.token,
            "org": self.org,
            "bucket": self.bucket,
        }
        missing = [name for name, value in given.items() if value is None]
        if 0 < len(missing) < len(given):
            raise ValueError(
                f"InfluxDB needs url, token, org and bucket together; missing: {', '.join(missing)}"
            )
        return self

    @property
    def enabled(self) -> bool:
        """True when InfluxDB writing is configured."""
        return self.url is not None


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


class Settings(EnvOverFileSettings):
    """Everything ``milkguard run`` can be told."""

    model_config = SettingsConfigDict(
        env_prefix="MILKGUARD_", env_nested_delimiter="__", extra="forbid"
    )

    plan: Path = Field(default_factory=demo_plan_path, description="HACCP plan file (YAML).")
    data_dir: Path = Field(default=Path("var"), description="Local stores: line protocol, JSONL.")
    checkpoint_s: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="How often `milkguard run` makes its work durable (files fsynced, InfluxDB "
        "and MQTT confirmed, state saved to data_dir/stream.checkpoint) and only then "
        "acknowledges the MQTT messages. Longer: less overhead, more redelivered after a crash.",
    )
    simulators: bool = Field(default=True, description="Run the demo farm, truck and HTST line.")
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    influx: InfluxSettings = Field(default_factory=InfluxSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    future_tolerance_h: float = Field(
        default=2.0,
        gt=0,
        le=8760,
        description="A reading or event stamped further ahead of its batch's receive time is "
        "quarantined (dead-lettered, never judged), as is a seq beyond the receive time in ms "
        "plus this. Keep it above any clock skew the time-sync rule should report.",
    )
    signing: SigningSettings = Field(default_factory=SigningSettings)
    deadletter_budget_mb: float = Field(
        default=1024,
        gt=0,
        description="MB of dead letters written in full per day to data_dir/deadletter.jsonl; "
        "beyond, each letter keeps its reason and a prefix and hash of its payload.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"

    def redacted(self) -> dict[str, Any]:
        """The settings as they may be logged: secrets shown as ``**********``."""
        return self.model_dump(mode="json")


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


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Read settings from ``path`` (optional), the environment and ``overrides``.

    ``overrides`` (command-line flags, already typed) win over both.
    """
    data = read_settings_file(path) if path is not None else {}
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        source = str(path) if path is not None else "environment"
        raise ConfigError(
            f"settings from {source} (and MILKGUARD_* variables) are invalid:\n"
            f"{describe_problems(exc)}"
        ) from exc
    logs.register_secrets(settings)  # no log line may show them from now on
    # flags are typed by the command line parser already; they win over file and environment
    return settings.model_copy(update=overrides) if overrides else settings


def broker_address(settings: Settings) -> BrokerAddress:
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

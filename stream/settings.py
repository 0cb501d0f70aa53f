"""The stream's settings: the plan, local stores, Kafka and the workers, InfluxDB, metrics,
signing, and how hostile input is bounded. Read with the rest of the file by
:mod:`milkguard_cli.settings`; see :mod:`milkguard.settings` for how."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from milkguard.settings import CommonSettings


def demo_plan_path() -> Path:
    """The demo HACCP plan shipped with the package."""
    return Path(str(resources.files("stream") / "plans" / "demo-cn.yaml"))


#: The Kafka header that marks a gateway's status among the batches (the bridge forwards both on
#: the batches topic, keyed by site, so a site's statuses keep their order with its batches):
#: the status's MQTT topic, which the workers check it against.
STATUS_HEADER = "milkguard-status-topic"


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
    fetch_partition_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=1024 * 1024,
        le=256 * 1024 * 1024,
        description="Most bytes one fetch brings of a partition (Faust's 1 MiB is 24 batches of "
        "500 readings: the worker ran dry between fetches). Memory: up to this much per "
        "partition held.",
    )

    @model_validator(mode="after")
    def _heartbeat_within_session(self) -> WorkerSettings:
        if self.heartbeat_interval_s * 2 > self.session_timeout_s:
            raise ValueError(
                f"heartbeat_interval_s ({self.heartbeat_interval_s:g}) must be at most half of "
                f"session_timeout_s ({self.session_timeout_s:g})"
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


class ArchiveSettings(BaseModel):
    """The archive of what `milkguard run` judged (every MQTT message with its receive time and
    topic, and the engine's clock ticks), which `milkguard replay` replays to the same
    deviation changes. Off by default; on when the demo fleet runs."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool | None = Field(
        default=None,
        description="Write the archive. Unset: on with the demo fleet (`milkguard run` with "
        "simulators), off otherwise.",
    )
    dir: Path | None = Field(
        default=None, description="Where the archive's files go; unset: {data_dir}/archive."
    )
    rotate_mb: float = Field(
        default=64,
        gt=0,
        le=65_536,
        description="A file is closed and a new one begun at this size (and at each UTC day).",
    )
    keep_days: float = Field(
        default=30,
        gt=0,
        le=36_500,
        description="Closed files last written longer ago than this are deleted.",
    )
    max_mb: float = Field(
        default=20_480,
        gt=0,
        le=16_777_216,
        description="The most the archive's files may hold together: beyond, the oldest closed "
        "files are deleted at a rotation, before keep_days (each logged as an error), so a "
        "flood of messages cannot fill the disk the checkpoint and the stores need.",
    )
    compress: bool = Field(default=True, description="Gzip each file once it is closed.")

    def directory(self, data_dir: Path) -> Path:
        """The archive's directory for a service keeping its stores in ``data_dir``."""
        return self.dir if self.dir is not None else data_dir / "archive"


class StreamSettings(CommonSettings):
    """What the stream's runtimes (``milkguard run``, ``bridge``, ``worker``) are told, beside
    the broker and logging every application shares."""

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
    influx: InfluxSettings = Field(default_factory=InfluxSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    future_tolerance_h: float = Field(
        default=2.0,
        gt=0,
        le=8760,
        description="A reading or event stamped further ahead of its batch's receive time is "
        "quarantined (dead-lettered, never judged), as is a seq beyond the receive time in ms "
        "plus this. Keep it above any clock skew the time-sync rule should report.",
    )
    limits_every_s: float = Field(
        default=300,
        ge=1,
        le=86_400,
        description="How often, in stream time, `milkguard run` and `worker` write every "
        "channel's critical limits as `limit` points (and once at start), so any dashboard "
        "window holds the threshold lines it draws.",
    )
    signing: SigningSettings = Field(default_factory=SigningSettings)
    archive: ArchiveSettings = Field(default_factory=ArchiveSettings)
    deadletter_budget_mb: float = Field(
        default=1024,
        gt=0,
        description="MB of dead letters written in full per day to data_dir/deadletter.jsonl; "
        "beyond, each letter keeps its reason and a prefix and hash of its payload.",
    )

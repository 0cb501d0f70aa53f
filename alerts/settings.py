"""The alert service's settings (the ``alerts`` section of the settings file): who is told of
deviations and how, the API's users, escalation times, the audit trail's store."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Literal

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from alerts.lifecycle import Audience, Notice
from milkguard.logs import mask_url


class WebhookUrl(SecretStr):
    """A webhook's URL: a secret, since its user, path or query is often its credential (Slack,
    Teams and most chat hooks put the key in the path). Shown as ``https://host/***``."""

    #: tells :func:`milkguard.logs.register_secrets` that this URL's path is a credential too
    path_is_secret = True

    def _display(self) -> str:
        return mask_url(self.get_secret_value(), hide_path=True)


class Recipient(BaseModel):
    """A person or system to tell, and how."""

    model_config = ConfigDict(extra="forbid")

    name: str
    audience: Audience
    sites: list[str] = Field(default_factory=lambda: ["*"], description='"*": every site')
    severities: list[str] = Field(default_factory=lambda: ["critical", "major", "minor"])
    email: str | None = None
    webhook: WebhookUrl | None = Field(
        default=None, description="http(s) URL; a secret: logged as https://host/***"
    )
    quiet_hours: str | None = Field(
        default=None, pattern=r"^\d\d:\d\d-\d\d:\d\d$", description="UTC, e.g. 22:00-06:00"
    )

    @field_validator("webhook")
    @classmethod
    def _http_url(cls, url: WebhookUrl | None) -> WebhookUrl | None:
        if url is not None and not url.get_secret_value().startswith(("http://", "https://")):
            raise ValueError(f"a webhook is an http:// or https:// URL, not {url}")
        return url

    def wants(self, notice: Notice) -> bool:
        """Whether this recipient is told of ``notice``."""
        alert = notice.alert
        return (
            notice.audience == self.audience
            and ("*" in self.sites or alert.site in self.sites)
            and alert.severity in self.severities
        )

    def quiet_until(self, now: datetime) -> datetime | None:
        """The end of the quiet hours ``now`` falls in, or None."""
        if self.quiet_hours is None:
            return None
        start_text, end_text = self.quiet_hours.split("-")
        start, end = time.fromisoformat(start_text), time.fromisoformat(end_text)
        today = now.date()
        for day in (today - timedelta(days=1), today):
            begins = datetime.combine(day, start, UTC)
            ends = datetime.combine(day if end > start else day + timedelta(days=1), end, UTC)
            if begins <= now < ends:
                return ends
        return None


class SmtpSettings(BaseModel):
    """The mail server alerts are sent through."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = 25
    sender: str = "milkguard@localhost"
    username: str | None = None
    password: SecretStr | None = None
    starttls: bool = False
    timeout_s: float = 10.0


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

    def sees(self, site: str) -> bool:
        """Whether this user may see what happens at ``site`` (regulators see every site)."""
        return self.role == "regulator" or "*" in self.sites or site in self.sites

    @model_validator(mode="after")
    def _long_token(self) -> ApiUser:
        if len(self.token.get_secret_value()) < 24:
            raise ValueError(f"the token of {self.name!r} is too short: use 24+ random characters")
        return self


class DeviceSettings(BaseModel):
    """The device page's view of the gateways (``alerts.devices``): read from the broker."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        default=True,
        description="Read the gateways' status and batch topics (the alerts role may), at QoS 0 "
        "on the service's connection: nothing of them is queued while it is away.",
    )
    window_h: float = Field(default=4.0, gt=0, le=48, description="Hours of readings charted.")
    bucket_s: float = Field(default=60.0, ge=1, description="One chart point per this long.")
    max_gateways: int = Field(default=1000, ge=1)
    max_channels: int = Field(
        default=4000, ge=1, description="Channels kept in all; further ones are counted only."
    )

    @model_validator(mode="after")
    def _bounded(self) -> DeviceSettings:
        points = self.window_h * 3600 / self.bucket_s
        if points > 2880:
            raise ValueError(
                f"alerts.devices keeps {points:.0f} points per channel (window_h "
                f"{self.window_h:g} / bucket_s {self.bucket_s:g}): at most 2880; raise "
                "bucket_s or lower window_h"
            )
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

    grafana_url: AnyHttpUrl | None = Field(
        default=None,
        description="Grafana's base URL (http or https, e.g. https://grafana.dairy/ or "
        "https://dairy/grafana): the page links alerts and gateways into its dashboards.",
    )
    devices: DeviceSettings = Field(default_factory=DeviceSettings)

    @field_validator("grafana_url")
    @classmethod
    def _plain_base(cls, url: AnyHttpUrl | None) -> AnyHttpUrl | None:
        if url is not None and (url.query or url.fragment or url.username or url.password):
            raise ValueError(
                f"alerts.grafana_url {url} must be a plain base URL (scheme, host, optional "
                "path): no user, password, query or fragment; the page adds the dashboard"
            )
        return url

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

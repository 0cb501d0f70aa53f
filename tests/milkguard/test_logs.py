"""Log lines never show a secret: the values registered from the settings are masked anywhere in
a record (message, context however nested, exception), in both formats; URLs are shown without
their credentials. Plain settings (hosts, levels, names) stay readable."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from milkguard import logs
from milkguard_cli.settings import Settings

DATABASE = "postgresql://milkguard:db-pass-7781@db.dairy.local:5432/alerts?sslpassword=q-9911"
WEBHOOK = "https://hooks:hook-pass-5521@chat.example.com/services/T01/B02/key-XYZ-4412?x=tok-3301"


@pytest.mark.parametrize(
    ("url", "hide_path", "shown"),
    [
        (DATABASE, False, "postgresql://***@db.dairy.local:5432/alerts?***"),
        (WEBHOOK, True, "https://***@chat.example.com/***?***"),
        ("https://chat.example.com/hook", True, "https://chat.example.com/***"),
        ("http://[::1]:8080/", False, "http://[::1]:8080/"),
        ("not a url", False, "***"),
        ("http://host:notaport/", False, "***"),
    ],
)
def test_a_url_is_shown_without_its_credentials(url: str, hide_path: bool, shown: str) -> None:
    assert logs.mask_url(url, hide_path=hide_path) == shown


@pytest.fixture
def settings() -> Settings:
    return Settings(
        mqtt={"host": "127.0.0.1", "username": "stream", "password": "mqtt-pass-4242"},
        alerts={
            "database": DATABASE,
            "recipients": [{"name": "li", "audience": "operator", "webhook": WEBHOOK}],
            "users": [{"name": "li", "role": "operator", "token": "token-li-0123456789abcdef"}],
        },
    )


@pytest.fixture
def captured(settings: Settings) -> Iterator[tuple[logging.Logger, io.StringIO, io.StringIO]]:
    logs.register_secrets(settings)
    text, data = io.StringIO(), io.StringIO()
    logger = logging.getLogger("tests.secrets")
    handlers = []
    for stream, formatter in ((text, logs.KeyValueFormatter()), (data, logs.JsonFormatter())):
        handler = logging.StreamHandler(stream)
        handler.setFormatter(formatter)
        handler.addFilter(logs.SecretFilter())
        logger.addHandler(handler)
        handlers.append(handler)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    yield logger, text, data
    for handler in handlers:
        logger.removeHandler(handler)


SECRET_VALUES = (
    "mqtt-pass-4242",
    "db-pass-7781",
    "q-9911",
    "hook-pass-5521",
    "key-XYZ-4412",
    "tok-3301",
    "token-li-0123456789abcdef",
)


def test_no_registered_secret_survives_in_any_part_of_a_record(
    captured: tuple[logging.Logger, io.StringIO, io.StringIO], settings: Settings
) -> None:
    logger, text, data = captured
    logger.warning("connect %s failed", DATABASE, extra={"nested": {"urls": [WEBHOOK]}})
    logger.warning("alert", extra={"settings": settings.redacted(), "object": settings.alerts})
    try:
        raise OSError("cannot reach /services/T01/B02/key-XYZ-4412 (password db-pass-7781)")
    except OSError:
        logger.exception("delivery.failed", extra={"target": "tok-3301"})

    for output in (text.getvalue(), data.getvalue()):
        assert output.count("\n") >= 3
        for secret in SECRET_VALUES:
            assert secret not in output
    json_lines = [json.loads(line) for line in data.getvalue().splitlines() if line.startswith("{")]
    assert (
        json_lines[0]["event"]
        == "connect *** failed"  # the whole URL was registered: it goes as one
    )
    assert "Traceback" in json_lines[2]["exception"]


def test_plain_settings_stay_readable(
    captured: tuple[logging.Logger, io.StringIO, io.StringIO],
) -> None:
    logger, text, _ = captured
    logger.info("mqtt.connected", extra={"host": "127.0.0.1", "user": "stream", "level": "INFO"})

    assert "host=127.0.0.1 user=stream level=INFO" in text.getvalue()


def test_the_settings_line_shows_where_a_webhook_goes_but_not_its_key(settings: Settings) -> None:
    (recipient,) = settings.alerts.recipients
    assert repr(recipient.webhook) == "WebhookUrl('https://***@chat.example.com/***?***')"
    assert settings.redacted()["alerts"]["recipients"][0]["webhook"] == "**********"


def test_a_value_from_the_network_cannot_forge_a_log_line(
    captured: tuple[logging.Logger, io.StringIO, io.StringIO],
) -> None:
    logger, text, _ = captured
    # an MQTT user name, a topic or a request path chosen by a client, without spaces or quotes
    forged = "x\n2026-12-01T00:00:00.000Z\tINFO\talerts.acknowledged\x1b[2K"
    logger.warning("broker.refused", extra={"user": forged})

    assert text.getvalue().count("\n") == 1
    assert "\\n2026-12-01" in text.getvalue()


def test_a_password_quoted_decoded_or_as_basic_auth_is_masked_too(
    captured: tuple[logging.Logger, io.StringIO, io.StringIO],
) -> None:
    logger, text, data = captured
    logs.register_secrets("postgresql://milkguard:p%40ss%3Aw0rd-77@db/alerts")
    basic = "bWlsa2d1YXJkOnBAc3M6dzByZC03Nw=="  # base64 of milkguard:p@ss:w0rd-77
    logger.error("db.failed", extra={"error": f"password p@ss:w0rd-77 refused; Basic {basic}"})

    for output in (text.getvalue(), data.getvalue()):
        assert "p@ss:w0rd-77" not in output
        assert basic not in output

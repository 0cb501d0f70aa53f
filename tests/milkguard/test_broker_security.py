"""The broker security model on its own: hashes Mosquitto agrees with, the role grants, topic
containment, the exposure rule, and the Mosquitto files generated from the model."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from pydantic import ValidationError

from milkguard.broker_security import (
    BrokerSecurity,
    ListenerTls,
    MqttUser,
    QueueSizing,
    any_covers,
    exposure_problems,
    filter_covers,
    grants,
    hash_password,
    known_gateways,
    mosquitto_acl,
    mosquitto_files,
    verify_password,
)
from milkguard.settings import CommonSettings

ROUNDS = 1_000


def user(name: str, role: str, site: str | None = None, gateway: str | None = None) -> MqttUser:
    return MqttUser(
        name=name,
        role=role,  # type: ignore[arg-type]
        password_hash=hash_password("pw", iterations=ROUNDS),  # type: ignore[arg-type]
        site=site,
        gateway=gateway,
    )


def test_a_hash_verifies_its_password_only() -> None:
    hashed = hash_password("correct horse", iterations=ROUNDS)
    assert hashed.startswith(f"$7${ROUNDS}$")
    assert verify_password("correct horse", hashed)
    assert not verify_password("correct hors", hashed)
    assert not verify_password("x", "$7$1000$not-base64!$zzz")
    assert not verify_password("x", "$6$salt$hash")


def test_a_hash_written_by_mosquitto_passwd_verifies(tmp_path: Path) -> None:
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        pytest.skip("mosquitto_passwd is not installed (apt-get install mosquitto)")
    passwords = tmp_path / "passwd"
    subprocess.run([tool, "-c", "-b", str(passwords), "gw", "s3cret"], check=True)
    _, hashed = passwords.read_text(encoding="utf-8").strip().split(":", 1)
    assert verify_password("s3cret", hashed)
    stored = MqttUser(name="gw", role="stream", password_hash=hashed).password_hash  # type: ignore[arg-type]
    assert stored.get_secret_value() == hashed


@pytest.mark.parametrize(
    ("allowed", "requested", "covered"),
    [
        ("milkguard/v1/gw/farm-01/tank-1/#", "milkguard/v1/gw/farm-01/tank-1/batch", True),
        ("milkguard/v1/gw/farm-01/tank-1/#", "milkguard/v1/gw/farm-01/tank-1", True),
        ("milkguard/v1/gw/farm-01/tank-1/#", "milkguard/v1/gw/farm-01/tank-2/batch", False),
        ("milkguard/v1/gw/farm-01/tank-1/#", "milkguard/v1/gw/farm-01/+/batch", False),
        ("milkguard/v1/gw/farm-01/tank-1/#", "#", False),
        ("milkguard/v1/gw/farm-01/tank-1/#", "milkguard/v1/gw/farm-01/tank-1/#", True),
        ("milkguard/v1/gw/+/+/batch", "milkguard/v1/gw/a/b/batch", True),
        ("milkguard/v1/gw/+/+/batch", "milkguard/v1/gw/+/+/batch", True),
        ("milkguard/v1/gw/+/+/batch", "milkguard/v1/gw/#", False),
        ("milkguard/v1/gw/+/+/batch", "milkguard/v1/gw/a/b/batch/x", False),
        ("milkguard/v1/#", "milkguard/v1/deviations/+/+", True),
    ],
)
def test_a_filter_covers_only_what_it_matches(allowed: str, requested: str, covered: bool) -> None:
    assert filter_covers(allowed, requested) is covered


def test_each_role_publishes_only_its_own_topics() -> None:
    gateway = grants(user("gw", "gateway", "farm-01", "tank-1"))
    assert gateway.publish == ("milkguard/v1/gw/farm-01/tank-1/#",)
    stream = grants(user("stream", "stream"))
    assert stream.publish == ("milkguard/v1/deviations/#", "milkguard/v1/deadletter/#")
    assert grants(user("alerts", "alerts")).publish == ("milkguard/v1/alerts/#",)
    assert grants(user("reader", "reader")).publish == ()


def test_the_alert_service_reads_deviations_and_the_gateways_for_its_device_page_only() -> None:
    alerts = grants(user("alerts", "alerts"))
    assert alerts.read == (
        "milkguard/v1/deviations/#",
        "milkguard/v1/gw/+/+/status",
        "milkguard/v1/gw/+/+/batch",
    )
    assert any_covers(alerts.read, "milkguard/v1/gw/farm-01/tank-1/status")
    assert not any_covers(alerts.read, "milkguard/v1/deadletter/farm-01/tank-1")
    assert not any_covers(alerts.publish, "milkguard/v1/gw/farm-01/tank-1/status")


def test_a_gateway_user_must_name_its_site_and_gateway() -> None:
    with pytest.raises(ValidationError, match="site and gateway"):
        user("gw", "gateway", "farm-01")
    with pytest.raises(ValidationError, match="role gateway only"):
        user("stream", "stream", "farm-01", "tank-1")
    with pytest.raises(ValidationError, match="password_hash"):
        MqttUser(name="gw", role="stream", password_hash="plain-password")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="name"):
        MqttUser(name="a/#", role="reader", password_hash=hash_password("x", iterations=ROUNDS))  # type: ignore[arg-type]


def test_the_password_hash_never_shows_in_a_dump_of_the_settings() -> None:
    hashed = hash_password("pw", iterations=ROUNDS)
    settings = CommonSettings(
        mqtt={"security": {"users": [{"name": "s", "role": "stream", "password_hash": hashed}]}}
    )
    assert "$7$" not in str(settings.redacted())
    assert "$7$" not in repr(settings.mqtt.security.users[0])


def test_anonymous_is_for_loopback_only() -> None:
    assert exposure_problems(BrokerSecurity(), "127.0.0.1") == []
    assert exposure_problems(BrokerSecurity(), "::1") == []
    problems = exposure_problems(BrokerSecurity(), "0.0.0.0")  # noqa: S104
    assert len(problems) == 2
    assert "mqtt.security.users" in problems[0]
    assert "mqtt.security.tls.cert" in problems[1]
    secured = BrokerSecurity(
        users=[user("stream", "stream")], tls=ListenerTls(cert=Path("c"), key=Path("k"))
    )
    assert exposure_problems(secured, "192.0.2.10") == []


def test_known_gateways_are_the_gateway_users() -> None:
    users = [user("gw-1", "gateway", "farm-01", "tank-1"), user("stream", "stream")]
    settings = CommonSettings(mqtt={"security": {"users": users}})  # type: ignore[dict-item]
    assert known_gateways(settings.mqtt.security) == {("farm-01", "tank-1")}


def test_the_mosquitto_acl_names_each_gateway_topic_explicitly() -> None:
    security = BrokerSecurity(
        users=[user("gw-1", "gateway", "farm-01", "tank-1"), user("stream", "stream")]
    )
    acl = mosquitto_acl(security)
    assert "user gw-1\ntopic readwrite milkguard/v1/gw/farm-01/tank-1/#\n" in acl
    assert "topic write milkguard/v1/deviations/#" in acl
    assert "topic read milkguard/v1/gw/+/+/batch" in acl


def test_the_queue_sizes_hold_a_day_without_the_stream_and_show_the_arithmetic() -> None:
    sizing = QueueSizing(gateways=10)
    # 10 x (86,400 / 2 + 86,400 / 30) = 460,800
    assert sizing.messages == 460_800
    assert sizing.bytes == 460_800 * 8_192
    security = BrokerSecurity(
        users=[user("stream", "stream")],
        tls=ListenerTls(cert=Path("/etc/c.pem"), key=Path("/etc/k.pem")),
        local_port=1884,
    )
    conf = mosquitto_files(
        security,
        "0.0.0.0",  # noqa: S104 - text only, nothing binds here
        8883,
        conf_dir=Path("/etc/mosquitto/milkguard"),
        persistence_dir=Path("/var/lib/mosquitto"),
        sizing=sizing,
    )["mosquitto.conf"]
    for line in (
        "max_queued_messages 460800",
        f"max_queued_bytes {460_800 * 8_192}",
        "max_inflight_messages 20000",
        "persistence true",
        "listener 8883 0.0.0.0",
        "listener 1884 127.0.0.1",
        "password_file /etc/mosquitto/milkguard/passwd",
        "certfile /etc/c.pem",
    ):
        assert f"\n{line}\n" in conf
    assert "allow_anonymous true" not in conf
    assert "= 460,800 messages" in conf


def test_no_mosquitto_files_for_an_anonymous_broker_on_the_network() -> None:
    with pytest.raises(ValueError, match=r"mqtt\.security\.users"):
        mosquitto_files(
            BrokerSecurity(),
            "0.0.0.0",  # noqa: S104 - text only
            1883,
            conf_dir=Path("/etc/mosquitto"),
            persistence_dir=Path("/var/lib/mosquitto"),
            sizing=QueueSizing(gateways=1),
        )


def test_no_mosquitto_files_where_gateways_and_the_stream_share_one_network_listener() -> None:
    # Mosquitto 2.0 binds no client id to a user: on one listener a gateway logging in with the
    # stream's client id and a clean session wipes the batches queued for the stream (seen with
    # a real Mosquitto); the services need the loopback listener, the gateways get
    # use_username_as_clientid on theirs
    security = BrokerSecurity(
        users=[user("stream", "stream")],
        tls=ListenerTls(cert=Path("/etc/c.pem"), key=Path("/etc/k.pem")),
    )
    with pytest.raises(ValueError, match=r"mqtt\.security\.local_port"):
        mosquitto_files(
            security,
            "0.0.0.0",  # noqa: S104 - text only
            8883,
            conf_dir=Path("/etc/mosquitto"),
            persistence_dir=Path("/var/lib/mosquitto"),
            sizing=QueueSizing(gateways=1),
        )


@pytest.mark.parametrize(
    ("where", "field"),
    [
        ("conf_dir", "the data directory"),
        ("persistence_dir", "the data directory"),
        ("cert", r"mqtt\.security\.tls\.cert"),
        ("client_ca", r"mqtt\.security\.tls\.client_ca"),
    ],
)
def test_a_path_with_a_line_break_cannot_add_a_directive_to_the_mosquitto_files(
    where: str, field: str
) -> None:
    # each setting is one line of mosquitto.conf: a line break in a path would add a directive
    # of the path's choosing (an anonymous listener on the network, say)
    hostile = Path("/srv/x\nlistener 1884 0.0.0.0\nallow_anonymous true")
    paths = {"conf_dir": Path("/etc/mosquitto"), "persistence_dir": Path("/var/lib/mosquitto")}
    tls = {"cert": Path("/etc/c.pem"), "key": Path("/etc/k.pem"), "client_ca": Path("/etc/ca")}
    if where in paths:
        paths[where] = hostile
    else:
        tls[where] = hostile
    security = BrokerSecurity(users=[user("stream", "stream")], tls=ListenerTls(**tls))
    with pytest.raises(ValueError, match=f"{field}.*line break"):
        mosquitto_files(security, "127.0.0.1", 8883, sizing=QueueSizing(gateways=1), **paths)


def test_a_password_hash_with_a_trailing_line_break_is_refused() -> None:
    with pytest.raises(ValidationError, match="password_hash"):
        MqttUser(
            name="stream",
            role="stream",
            password_hash=hash_password("pw", iterations=ROUNDS) + "\n",  # type: ignore[arg-type]
        )

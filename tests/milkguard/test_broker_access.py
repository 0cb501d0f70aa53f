"""Who gets into the broker and what they may do, with real paho clients against both brokers
(the embedded amqtt and a Mosquitto 2.0 started from the generated files), both configured from
the same security model: no password or a wrong one is refused, TLS is verified, a gateway
publishes only as itself, reads only its own topics, and cannot forge a deviation."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from milkguard import mqtt
from milkguard.contract.v1 import GatewayStatus, encode_status
from milkguard.errors import BrokerError
from tests.helpers import wait_until
from tests.milkguard.secured_brokers import SecuredBroker, secured_broker
from tests.servers import TlsFiles, make_tls_files

pytestmark = pytest.mark.integration

A_BATCH = "milkguard/v1/gw/farm-01/tank-1/batch"  # gw-farm-01's own topic
B_BATCH = "milkguard/v1/gw/farm-02/tank-9/batch"  # gw-farm-02's own topic
DEVIATION = "milkguard/v1/deviations/farm-01/tank-1"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(params=["embedded", "mosquitto"])
def broker(
    request: pytest.FixtureRequest, tmp_path: Path, tls: TlsFiles
) -> Iterator[SecuredBroker]:
    with secured_broker(request.param, tmp_path, tls) as running:
        yield running


class Inbox:
    """A connected client collecting (topic, payload) of what it is sent."""

    def __init__(
        self, address: mqtt.BrokerAddress, name: str, *filters: str, clean_session: bool = True
    ) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()

        def subscribe(client: object) -> None:
            client.on_subscribe = lambda *_: subscribed.set()  # type: ignore[attr-defined]
            client.subscribe([(f, 1) for f in filters])  # type: ignore[attr-defined]

        def on_message(_c: object, _u: object, message: object) -> None:
            with self._lock:
                self.messages.append((message.topic, bytes(message.payload)))  # type: ignore[attr-defined]

        self.connection = mqtt.connect(
            address,
            name,
            clean_session=clean_session,
            on_message=on_message,
            on_connect_extra=subscribe,
        )
        assert subscribed.wait(10)

    def payloads(self) -> list[bytes]:
        with self._lock:
            return [payload for _, payload in self.messages]

    def close(self) -> None:
        self.connection.close()


def publish(address: mqtt.BrokerAddress, name: str, *messages: tuple[str, bytes]) -> None:
    """Connect, publish each with QoS 1, wait for the broker's acknowledgements, disconnect."""
    connection = mqtt.connect(address, name)
    try:
        for topic, payload in messages:
            connection.publish(topic, payload)
        assert connection.wait_acknowledged(10)
    finally:
        connection.close()


def test_a_client_with_the_right_password_gets_in_over_tls(broker: SecuredBroker) -> None:
    publish(broker.over_tls("gw-farm-01"), "gw-a", (A_BATCH, b"{}"))


@pytest.mark.parametrize("listener", ["tls", "loopback"])
def test_a_client_without_a_password_is_refused(broker: SecuredBroker, listener: str) -> None:
    address = broker.over_tls(None) if listener == "tls" else broker.on_loopback(None)
    with pytest.raises(BrokerError, match="refused"):
        mqtt.connect(address, "anonymous")


def test_a_wrong_password_is_refused(broker: SecuredBroker) -> None:
    with pytest.raises(BrokerError, match="refused"):
        mqtt.connect(broker.over_tls("gw-farm-01", "guess"), "guessing")
    with pytest.raises(BrokerError, match="refused"):
        mqtt.connect(broker.on_loopback("stream", "farm-secret-1"), "someone-elses")


def test_an_unknown_user_is_refused(broker: SecuredBroker) -> None:
    with pytest.raises(BrokerError, match="refused"):
        mqtt.connect(broker.over_tls("gw-farm-77", "anything"), "stranger")


def test_tls_is_verified_and_the_tls_port_speaks_no_plaintext(
    broker: SecuredBroker, tls: TlsFiles
) -> None:
    password_in_clear = mqtt.BrokerAddress(
        "127.0.0.1", broker.tls_port, username="gw-farm-01", password="farm-secret-1"
    )
    with pytest.raises(BrokerError):
        mqtt.connect(password_in_clear, "plaintext", timeout_s=3)
    impostor_trusted = mqtt.BrokerAddress(
        "127.0.0.1",
        broker.tls_port,
        username="gw-farm-01",
        password="farm-secret-1",
        tls_ca=tls.other_ca,
    )
    with pytest.raises(BrokerError, match="CERTIFICATE_VERIFY_FAILED"):
        mqtt.connect(impostor_trusted, "wrong-ca")


def test_a_gateway_cannot_publish_as_another_gateway(broker: SecuredBroker) -> None:
    stream = Inbox(broker.on_loopback("stream"), "stream", "milkguard/v1/gw/+/+/batch")
    try:
        publish(
            broker.over_tls("gw-farm-01"),
            "gw-a",
            (B_BATCH, b"forged by farm-01"),
            (A_BATCH, b"farm-01's own"),
        )
        wait_until(lambda: b"farm-01's own" in stream.payloads(), what="the gateway's own batch")
        assert b"forged by farm-01" not in stream.payloads()
    finally:
        stream.close()


def test_a_gateway_subscribed_to_everything_gets_nothing_of_the_others(
    broker: SecuredBroker,
) -> None:
    nosy = Inbox(broker.over_tls("gw-farm-01"), "gw-a", "#", "milkguard/v1/gw/farm-01/tank-1/#")
    try:
        publish(broker.over_tls("gw-farm-02"), "gw-b", (B_BATCH, b"farm-02's batch"))
        publish(broker.on_loopback("stream"), "stream", (DEVIATION, b"a deviation"))
        # from the same connection: on Mosquitto's network listener a user has one client id
        nosy.connection.publish(A_BATCH, b"marker")
        wait_until(lambda: b"marker" in nosy.payloads(), what="the gateway's own message")
        assert {topic for topic, _ in nosy.messages} == {A_BATCH}
    finally:
        nosy.close()


@pytest.mark.parametrize(
    ("topic", "publisher", "reader"),
    [
        (DEVIATION, "stream", "alerts"),
        ("milkguard/v1/deadletter/farm-01/tank-1", "stream", "auditor"),
        ("milkguard/v1/alerts/farm-01/tank-1", "alerts", "auditor"),
    ],
)
def test_only_its_own_service_publishes_deviations_dead_letters_and_alerts(
    broker: SecuredBroker, topic: str, publisher: str, reader: str
) -> None:
    inbox = Inbox(broker.on_loopback(reader), reader, topic)
    try:
        publish(broker.over_tls("gw-farm-01"), "gw-a", (topic, b"forged by a gateway"))
        for forger in {"stream", "alerts", "auditor"} - {publisher}:
            publish(broker.on_loopback(forger), f"{forger}-pub", (topic, f"by {forger}".encode()))
        publish(broker.on_loopback(publisher), f"{publisher}-pub", (topic, b"the real one"))
        wait_until(lambda: b"the real one" in inbox.payloads(), what=f"{publisher}'s message")
        assert inbox.payloads() == [b"the real one"]
    finally:
        inbox.close()


def test_a_gateway_cannot_leave_a_forged_deviation_as_its_last_will(broker: SecuredBroker) -> None:
    alerts = Inbox(broker.on_loopback("alerts"), "alerts", "milkguard/v1/deviations/#")
    try:
        paho = mqtt.paho_module()
        client = mqtt.new_client(broker.on_loopback("gw-farm-01"), "gw-will", clean_session=True)
        client.will_set(DEVIATION, b"forged as a will", qos=1)
        accepted = client.connect("127.0.0.1", broker.local_port) == paho.MQTT_ERR_SUCCESS
        for _ in range(20):  # CONNECT out, CONNACK (or the refusal) in
            client.loop(timeout=0.1)
        if accepted and client.socket() is not None:
            client.socket().close()  # gone without DISCONNECT: the will would be published now
        publish(broker.on_loopback("stream"), "stream", (DEVIATION, b"the stream's"))
        wait_until(lambda: b"the stream's" in alerts.payloads(), what="the stream's deviation")
        assert alerts.payloads() == [b"the stream's"]
    finally:
        alerts.close()


@pytest.mark.parametrize("kind", ["embedded", "mosquitto"])
def test_with_a_client_ca_a_client_without_a_certificate_is_refused(
    kind: str, tmp_path: Path, tls: TlsFiles
) -> None:
    with secured_broker(kind, tmp_path, tls, client_ca=True) as running:
        with pytest.raises(BrokerError):
            mqtt.connect(running.over_tls("gw-farm-01"), "no-certificate", timeout_s=3)
        with_certificate = replace(
            running.over_tls("gw-farm-01"), tls_cert=tls.client_cert, tls_key=tls.client_key
        )
        publish(with_certificate, "with-certificate", (A_BATCH, b"{}"))


def test_a_gateway_cannot_wipe_or_take_over_the_streams_session(broker: SecuredBroker) -> None:
    stream_login = broker.on_loopback("stream")
    batches = "milkguard/v1/gw/+/+/batch"
    Inbox(stream_login, "milkguard-stream", batches, clean_session=False).close()
    # the stream is away; its persistent session waits for batches. A gateway (or anyone)
    # connecting with its client id and a clean session must not wipe that session
    for address in (broker.over_tls("gw-farm-02"), broker.over_tls("gw-farm-02", "guess")):
        with contextlib.suppress(BrokerError):  # the embedded broker refuses it outright
            mqtt.connect(address, "milkguard-stream", timeout_s=3).close()
    publish(broker.over_tls("gw-farm-01"), "gw-a", (A_BATCH, b"queued while away"))
    stream = Inbox(stream_login, "milkguard-stream", batches, clean_session=False)
    try:
        wait_until(lambda: b"queued while away" in stream.payloads(), what="the queued batch")
    finally:
        stream.close()


def test_the_alert_service_logs_in_as_the_alerts_role_and_subscribes_to_deviations(
    broker: SecuredBroker, tmp_path: Path
) -> None:
    from alerts.service import AlertService  # noqa: PLC0415 - the alerts extra
    from alerts.settings import AlertSettings  # noqa: PLC0415
    from tests.alerts.records import stream_signer  # noqa: PLC0415 - the alerts extra

    login = broker.over_tls("alerts")
    _, stream_key = stream_signer(tmp_path)
    settings = AlertSettings(directory=tmp_path / "alerts", stream_keys=[stream_key])
    service = AlertService(settings, login, "plant-alerts")
    stop = threading.Event()
    runner = threading.Thread(target=service.run, args=(stop,), daemon=True)
    runner.start()
    try:
        assert service.subscribed.wait(20)
        # its device page reads the gateways' status (the alerts role may, read-only)
        status = GatewayStatus(
            v=1, site="farm-01", gateway="tank-1", state="online", ts=1_795_341_600_000
        )
        status_topic = "milkguard/v1/gw/farm-01/tank-1/status"
        publish(broker.over_tls("gw-farm-01"), "gw-a", (status_topic, encode_status(status)))
        devices = service.devices
        assert devices is not None

        def seen() -> bool:
            found = devices.gateway("farm-01", "tank-1")
            return found is not None and found["status_ts"] == 1_795_341_600_000

        wait_until(seen, what="the gateway's status")
    finally:
        stop.set()
        runner.join(timeout=30)
    # its persistent session, subscribed under the alerts role, holds what the stream publishes,
    # and no batch: the gateways' topics are read at QoS 0, nothing of them waits for it
    publish(broker.over_tls("gw-farm-01"), "gw-a", (A_BATCH, b"a batch while it was away"))
    publish(broker.on_loopback("stream"), "stream", (DEVIATION, b"the stream's"))
    session = Inbox(login, "plant-alerts", "milkguard/v1/deviations/#", clean_session=False)
    try:
        wait_until(lambda: b"the stream's" in session.payloads(), what="the queued deviation")
        assert b"a batch while it was away" not in session.payloads()
    finally:
        session.close()


@pytest.mark.parametrize("service", ["plant-alerts", "milkguard-stream", "gw-b"])
def test_a_gateway_that_takes_a_client_id_first_locks_nobody_out(
    broker: SecuredBroker, service: str
) -> None:
    # a gateway (compromised, or misconfigured) connects first with the client id of the alert
    # service, of the stream, or of another gateway, and stays connected
    squatter = mqtt.connect(broker.over_tls("gw-farm-01"), service)
    user = {"plant-alerts": "alerts", "milkguard-stream": "stream", "gw-b": "gw-farm-02"}[service]
    try:
        address = broker.over_tls(user) if user.startswith("gw-") else broker.on_loopback(user)
        owner = mqtt.connect(address, service, timeout_s=5)
        owner.close()
    finally:
        squatter.close()


def test_a_connection_that_never_sends_its_connect_is_closed(tmp_path: Path, tls: TlsFiles) -> None:
    # the embedded broker only: Mosquitto 2.0.11 has no such deadline (see the README)
    with secured_broker("embedded", tmp_path, tls) as running:
        address = ("127.0.0.1", running.local_port)
        with (
            socket.create_connection(address, timeout=60) as silent,
            socket.create_connection(address, timeout=60) as half,
        ):
            half.sendall(b"\x10")  # the first byte of a CONNECT, then nothing
            assert silent.recv(10) == b""
            assert half.recv(10) == b""


def test_a_huge_user_name_or_topic_is_logged_clipped(
    tmp_path: Path, tls: TlsFiles, caplog: pytest.LogCaptureFixture
) -> None:
    with secured_broker("embedded", tmp_path, tls) as running:
        with pytest.raises(BrokerError):
            mqtt.connect(running.on_loopback("x" * 60_000, "guess"), "y" * 60_000, timeout_s=5)
        publish(running.over_tls("gw-farm-01"), "gw-a", ("milkguard/v1/" + "z" * 60_000, b"x"))
    refusals = [r for r in caplog.records if r.getMessage() in ("broker.refused", "broker.denied")]
    assert len(refusals) >= 2
    for record in refusals:
        assert all(len(str(value)) < 1_000 for value in vars(record).values())

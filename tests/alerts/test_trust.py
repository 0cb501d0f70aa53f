"""``milkguard alerts run`` believes only the stream: over a real Mosquitto, a deviation that is
unsigned, signed by a stranger, altered after signing or outside the contract raises nothing and
is dead-lettered with its reason; a forged close changes nothing and the real close still
resolves; a stale ``opened`` after the ``closed`` changes nothing; a path-like id writes nothing
anywhere; and the stream's own signed deviations still raise alerts end to end."""

from __future__ import annotations

import io
import json
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from rich.console import Console

from alerts.deadletters import DeadLetter, DeadLetterStore
from alerts.lifecycle import Alert, AlertBook, State
from edge.publisher import GatewayPublisher
from milkguard import mqtt as mqtt_connect
from milkguard.contract.v1 import Reading, deviation_topic
from milkguard.settings import MqttSettings
from milkguard.signing import Signer
from milkguard_cli import main
from stream.embedded import EmbeddedService
from stream.settings import StreamSettings
from tests.alerts.conftest import Smtp
from tests.alerts.records import DEV1, change, dev, sealed, stream_signer
from tests.alerts.test_service import start_service
from tests.conftest import T0
from tests.helpers import TopicRecorder, wait_until
from tests.servers import Mosquitto, stop

pytestmark = pytest.mark.integration

TOPIC = deviation_topic("plant-01", "htst-1")
HTST = "plant-01/htst-1/pmo-htst.temperature"
LIMIT_ALERT = "truck-07/comp-2/cn-transport-max-comp-2"
PROBE = b"probe: is the service listening?"


@dataclass
class Rig:
    """The alert service (a subprocess), a publisher on the deviations topic, the stream's key."""

    tmp_path: Path
    service: subprocess.Popen[bytes]
    publisher: mqtt_connect.Connection
    stream: Signer

    def publish(self, payload: bytes, topic: str = TOPIC) -> None:
        self.publisher.publish(topic, payload)

    def letters(self) -> list[DeadLetter]:
        """What the service refused so far, probes left out."""
        store = DeadLetterStore(self.tmp_path / "alerts" / "deadletters.db")
        try:
            return [letter for letter in store.all() if letter.payload != PROBE]
        finally:
            store.close()

    def alert(self) -> Alert | None:
        book = AlertBook(self.tmp_path / "alerts" / "alerts.db")
        try:
            return book.get(HTST)
        finally:
            book.close()

    def logged(self, event: str) -> list[dict[str, Any]]:
        lines = (self.tmp_path / "service.log").read_text(errors="replace").splitlines()
        entries = [json.loads(line) for line in lines if line.startswith("{")]
        return [entry for entry in entries if entry.get("event") == event]


@pytest.fixture
def rig(tmp_path: Path, mosquitto: Mosquitto, smtp: Smtp) -> Iterator[Rig]:
    stream, _ = stream_signer(tmp_path)
    service = start_service(tmp_path, mosquitto, smtp)
    publisher = mqtt_connect.connect(mqtt_connect.BrokerAddress(port=mosquitto.port), "intruder")
    rig = Rig(tmp_path, service, publisher, stream)

    def listening() -> bool:  # probes until one is dead-lettered: the service has subscribed
        publisher.publish(TOPIC, PROBE)
        return (tmp_path / "alerts" / "deadletters.db").exists() and any(
            letter.payload == PROBE
            for letter in DeadLetterStore(tmp_path / "alerts" / "deadletters.db").all()
        )

    try:
        wait_until(listening, 30, "the alert service to subscribe")
        yield rig
    finally:
        stop(service)
        publisher.close()


def signed_anyway(record: dict[str, Any], signer: Signer) -> bytes:
    """An envelope signed by ``signer`` over a record the contract does not allow."""
    unsigned = {
        "v": 1,
        "type": "deviation",
        "record": record,
        "signed_by": {"alg": "Ed25519", "key_id": signer.key_id},
    }
    return json.dumps(
        {**unsigned, "signature": signer.sign_bytes(rfc8785.dumps(unsigned))}
    ).encode()


def test_forged_unsigned_tampered_or_invalid_deviations_raise_nothing_and_are_dead_lettered(
    rig: Rig, smtp: Smtp
) -> None:
    stranger = Signer.load_or_create(rig.tmp_path / "stranger.pem")
    tampered = json.loads(sealed(change("opened"), rig.stream))
    tampered["record"]["severity"] = "minor"  # what a forger would hide
    escape = str(rig.tmp_path / "x" / "pwned")
    rig.publish(json.dumps(change("opened")).encode())  # the old, unsigned form
    rig.publish(sealed(change("opened"), stranger))
    rig.publish(json.dumps(tampered).encode())
    rig.publish(signed_anyway({**change("opened"), "id": escape}, rig.stream))
    rig.publish(b'{"\xff":1}')
    rig.publish(sealed(change("opened"), rig.stream), deviation_topic("plant-02", "htst-1"))
    rig.publish(b"{" * 1_000_000)

    wait_until(lambda: len(rig.letters()) == 7, 30, "seven dead letters")

    assert [(letter.topic, letter.reason) for letter in rig.letters()] == [
        (TOPIC, "unsigned"),
        (TOPIC, "unknown_key"),
        (TOPIC, "bad_signature"),
        (TOPIC, "invalid_record"),
        (TOPIC, "not_json"),
        ("milkguard/v1/deviations/plant-02/htst-1", "wrong_topic"),
        (TOPIC, "too_large"),
    ]
    assert rig.letters()[1].payload == sealed(change("opened"), stranger)  # kept whole
    huge = rig.letters()[6]
    assert (huge.size, len(huge.payload)) == (1_000_000, 64 * 1024)  # and its SHA-256
    assert rig.alert() is None
    assert smtp.received() == []
    assert not (rig.tmp_path / "alerts" / "reports").exists()
    assert not list(rig.tmp_path.glob("x*"))  # the path-like id wrote nothing anywhere
    warnings = rig.logged("alerts.dead_letter")
    assert {w["reason"] for w in warnings} >= {"unsigned", "unknown_key", "bad_signature"}
    assert all("CCP-PAST-1" not in json.dumps(w) for w in warnings)  # no payload in the log


def test_a_forged_close_changes_nothing_and_the_real_close_still_resolves(
    rig: Rig, smtp: Smtp
) -> None:
    stranger = Signer.load_or_create(rig.tmp_path / "stranger.pem")
    rig.publish(sealed(change("opened"), rig.stream))
    wait_until(lambda: rig.alert() is not None, 30, "the alert")

    rig.publish(sealed(change("closed"), stranger))
    wait_until(lambda: len(rig.letters()) == 1, 30, "the forged close dead-lettered")
    alert = rig.alert()
    assert alert is not None
    assert alert.state == State.RAISED

    rig.publish(sealed(change("closed"), rig.stream))
    wait_until(lambda: (a := rig.alert()) is not None and a.state == State.RESOLVED, 30, "close")
    assert rig.letters()[0].reason == "unknown_key"


def test_a_stale_opened_after_the_closed_and_a_repeat_change_nothing(rig: Rig) -> None:
    rig.publish(sealed(change("opened"), rig.stream))
    rig.publish(sealed(change("closed"), rig.stream))
    wait_until(lambda: (a := rig.alert()) is not None and a.state == State.RESOLVED, 30, "close")

    rig.publish(sealed(change("closed", dev(2)), rig.stream))  # out of order: the close first
    rig.publish(sealed(change("opened", dev(2)), rig.stream))  # would reopen the alert
    rig.publish(sealed(change("opened"), rig.stream))  # republished after a stream restart
    wait_until(lambda: rig.logged("alerts.deviation_duplicate"), 30, "the repeat counted")

    alert = rig.alert()
    assert alert is not None
    assert (alert.state, alert.reopened, alert.deviations) == (State.RESOLVED, 0, [DEV1])
    assert [e["deviation"] for e in rig.logged("alerts.deviation_stale")] == [dev(2)]
    assert [e["deviation"] for e in rig.logged("alerts.deviation_duplicate")] == [DEV1]
    assert rig.letters() == []


def test_the_service_refuses_to_start_without_a_stream_key(tmp_path: Path) -> None:
    config = tmp_path / "alerts.yaml"
    config.write_text(
        f"""
alerts:
  directory: {tmp_path / "alerts"}
  recipients: [{{name: li, audience: operator, email: li@plant}}]
"""
    )

    assert main(["alerts", "run", "--config", str(config)]) == 2
    assert not (tmp_path / "alerts" / "alerts.db").exists()


def test_the_streams_signed_deviations_raise_alerts_end_to_end(
    tmp_path: Path, mosquitto: Mosquitto, smtp: Smtp
) -> None:
    """stream -> MQTT -> alerts: a warm truck compartment, judged and signed by the stream."""
    settings = StreamSettings(
        data_dir=tmp_path / "var",
        simulators=False,
        mqtt=MqttSettings(broker="external", host=mosquitto.host, port=mosquitto.port),
    )
    public = tmp_path / "stream.pem"
    key = str(tmp_path / "var" / "signing-key.pem")  # where the stream keeps it by default
    assert main(["stream", "public-key", "--key", key, "--output", str(public)]) == 0
    stream = EmbeddedService(settings, Console(file=io.StringIO()))
    stopping = threading.Event()
    thread = threading.Thread(target=stream.run, args=(stopping,), daemon=True)
    thread.start()
    service = start_service(tmp_path, mosquitto, smtp)
    address = mqtt_connect.BrokerAddress(mosquitto.host, mosquitto.port)
    notices = TopicRecorder(address, "milkguard/v1/alerts/#")
    link = mqtt_connect.connect(address, "truck-07-gw")
    gateway = GatewayPublisher(link, "truck-07", "truck-07-gw", first_seq=1)
    try:
        wait_until(lambda: stream.ingest is not None, 30, "the stream to start")
        second = 0

        def raised() -> bool:  # the warm compartment until the alert service has subscribed
            nonlocal second
            for temp in (4.0, 8.0, 8.1, 8.2, 8.3, 4.0):
                gateway.publish([Reading("comp-2", "temp", temp, "degC", T0 + second * 5000)])
                second += 1
            return any(n["alert"]["id"] == LIMIT_ALERT for n in notices.payloads())

        wait_until(raised, 60, "an alert raised from the stream's deviation")
    finally:
        stop(service)
        stopping.set()
        thread.join(timeout=30)
        notices.close()
        link.close()

    first = next(n for n in notices.payloads() if n["alert"]["id"] == LIMIT_ALERT)
    assert (first["event"], first["deviation"]["kind"]) == ("raised", "critical_limit")
    assert first["deviation"]["device"] == "truck-07-gw"
    letters = DeadLetterStore(tmp_path / "alerts" / "deadletters.db").all()
    assert letters == []  # every deviation the stream published was believed


def test_the_service_refuses_the_published_test_key_as_a_stream_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # its private key is in the test vectors (RFC 8032, TEST 1): anyone could sign with it
    vectors = Path(__file__).parents[2] / "milkguard" / "contract" / "vectors"
    vector = json.loads((vectors / "deviation-envelope.json").read_text())
    test_key = tmp_path / "test-key.pem"
    test_key.write_text(vector["public_key_pem"])
    config = tmp_path / "alerts.yaml"
    config.write_text(
        f"""
alerts:
  directory: {tmp_path / "alerts"}
  stream_keys: [{test_key}]
  recipients: [{{name: li, audience: operator, email: li@plant}}]
"""
    )

    assert main(["alerts", "run", "--config", str(config)]) == 2
    said = " ".join(capsys.readouterr().err.split())
    assert "test key" in said
    assert str(test_key) in said

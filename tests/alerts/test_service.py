"""``milkguard alerts run`` as users run it: deviations published by the stream on MQTT
(Mosquitto), e-mail through a real SMTP server. The operator is told once however often the
change is delivered; killed and restarted, the service escalates to QA when the alert is due,
not again, and tells both when the deviation closes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from milkguard import mqtt as mqtt_connect
from milkguard.contract.v1 import deviation_topic
from milkguard_cli import main
from tests.alerts.conftest import Smtp
from tests.alerts.records import DEV1, change, sealed, stream_signer
from tests.helpers import TopicRecorder, wait_until
from tests.servers import Mosquitto, stop

pytestmark = pytest.mark.integration

SUBJECT = "[CRITICAL] {}: plant-01/htst-1 pmo-htst.temperature"


def start_service(tmp_path: Path, mosquitto: Mosquitto, smtp: Smtp) -> subprocess.Popen[bytes]:
    """``milkguard alerts run`` believing the stream key of :func:`stream_signer` in tmp_path."""
    config = tmp_path / "alerts.yaml"
    config.write_text(
        f"""
mqtt: {{broker: external, host: 127.0.0.1, port: {mosquitto.port}, client_id: plant-alerts}}
alerts:
  directory: {tmp_path / "alerts"}
  stream_keys: [{tmp_path / "stream.pem"}]
  smtp: {{host: 127.0.0.1, port: {smtp.port}, sender: milkguard@dairy}}
  escalation: {{critical_s: 4}}
  recipients:
    - {{name: li, audience: operator, sites: [plant-01], email: li@plant}}
    - {{name: wang, audience: qa, email: wang@dairy}}
"""
    )
    log = (tmp_path / "service.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "milkguard", "alerts", "run", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "MILKGUARD_LOG_FORMAT": "json"},
    )


def test_alerts_run_tells_the_right_people_once_through_a_kill(
    tmp_path: Path, mosquitto: Mosquitto, smtp: Smtp
) -> None:
    address = mqtt_connect.BrokerAddress(port=mosquitto.port)
    publisher = mqtt_connect.connect(address, "stream-outbox")
    notices = TopicRecorder(address, "milkguard/v1/alerts/#")
    topic = deviation_topic("plant-01", "htst-1")
    signer, _ = stream_signer(tmp_path)
    service = start_service(tmp_path, mosquitto, smtp)
    try:

        def raised() -> bool:  # published until the service has subscribed: a redelivery storm
            publisher.publish(topic, sealed(change("opened"), signer))
            return smtp.received() == [("li@plant", SUBJECT.format("raised"))]

        wait_until(raised, 30, "the operator's e-mail")
        os.kill(service.pid, signal.SIGKILL)
        service.wait()
        publisher.publish(topic, sealed(change("opened"), signer))  # while it is down
        service = start_service(tmp_path, mosquitto, smtp)
        wait_until(lambda: len(smtp.received()) == 2, 30, "the escalation to QA")
        publisher.publish(topic, sealed(change("closed"), signer))
        wait_until(lambda: len(smtp.received()) == 4, 30, "the resolution e-mails")
        wait_until(lambda: len(notices.payloads()) >= 4, 10, "the notices on MQTT")
    finally:
        stop(service)
        publisher.close()
        notices.close()

    assert smtp.received() == sorted(
        [
            ("li@plant", SUBJECT.format("raised")),
            ("wang@dairy", SUBJECT.format("escalated")),
            ("li@plant", SUBJECT.format("resolved")),
            ("wang@dairy", SUBJECT.format("resolved")),
        ]
    )
    assert [(n["event"], n["audience"]) for n in notices.payloads()][:2] == [
        ("raised", "operator"),
        ("escalated", "qa"),
    ]
    # the critical deviation yielded a signed report at once, checkable with the public key
    public = tmp_path / "public.pem"
    key = str(tmp_path / "alerts" / "signing-key.pem")
    assert main(["alerts", "public-key", "--key", key, "--output", str(public)]) == 0
    report = tmp_path / "alerts" / "reports" / f"{DEV1}.json"
    assert main(["alerts", "verify", str(report), "--public-key", str(public)]) == 0
    audit = ["audit", "verify", "--db", str(tmp_path / "alerts" / "audit.db")]
    assert main([*audit, "--public-key", str(public)]) == 0

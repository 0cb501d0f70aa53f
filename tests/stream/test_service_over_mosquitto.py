"""The stream service against a real Mosquitto: a gateway's readings become deviations, bad
payloads land in the dead-letter with their reason while valid traffic flows, and duplicates
are ignored."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest
from pydantic import SecretStr
from rich.console import Console

from edge.publisher import GatewayPublisher
from milkguard import mqtt as mqtt_connect
from milkguard.contract.v1 import Batch, Reading, encode_batch
from milkguard.settings import MqttSettings
from milkguard.signing import Signer, Verifier, unseal
from stream.embedded import EmbeddedService, RunSummary
from stream.settings import InfluxSettings, StreamSettings
from tests.conftest import T0
from tests.helpers import TopicRecorder, wait_until
from tests.servers import Mosquitto, VictoriaMetrics

pytestmark = pytest.mark.integration


@dataclass
class RunningService:
    service: EmbeddedService
    stop: threading.Event
    thread: threading.Thread
    address: mqtt_connect.BrokerAddress
    data_dir: Path
    result: list[RunSummary]

    def counters(self) -> dict[str, int]:
        ingest = self.service.ingest
        assert ingest is not None
        return {
            "batches": ingest.counters.batches,
            "readings": ingest.counters.readings,
            "rejected": ingest.counters.rejected_payloads,
            "duplicates": ingest.counters.duplicates,
        }

    def finish(self) -> RunSummary:
        self.stop.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()
        return self.result[0]


@pytest.fixture
def service(mosquitto: Mosquitto, tmp_path: Path) -> Iterator[RunningService]:
    settings = StreamSettings(
        data_dir=tmp_path / "var",
        simulators=False,
        mqtt=MqttSettings(broker="external", host=mosquitto.host, port=mosquitto.port),
    )
    service = EmbeddedService(settings, Console(file=io.StringIO()))
    stop = threading.Event()
    result: list[RunSummary] = []
    thread = threading.Thread(target=lambda: result.append(service.run(stop)), daemon=True)
    thread.start()
    wait_until(lambda: service.ingest is not None, what="the service to start")
    address = mqtt_connect.BrokerAddress(mosquitto.host, mosquitto.port)
    running = RunningService(service, stop, thread, address, settings.data_dir, result)
    yield running
    if thread.is_alive():
        running.finish()


@pytest.fixture
def truck_gateway(service: RunningService) -> Iterator[GatewayPublisher]:
    connection = mqtt_connect.connect(service.address, "test-truck-07-gw")
    yield GatewayPublisher(connection, "truck-07", "truck-07-gw", first_seq=1)
    connection.close()


def compartment(seconds: int, value: float) -> Reading:
    return Reading("comp-2", "temp", value, "degC", T0 + seconds * 1000)


def test_a_warm_compartment_opens_and_closes_a_deviation_with_the_right_start_and_end(
    service: RunningService, truck_gateway: GatewayPublisher
) -> None:
    recorder = TopicRecorder(service.address, "milkguard/v1/deviations/#")
    temps = [4.0, 5.5, 6.4, 7.1, 7.9, 8.2, 7.0, 6.1, 5.8, 5.0]
    for second, temp in enumerate(temps):
        truck_gateway.publish([compartment(second * 5, temp)])

    def limit_changes() -> list[dict[str, object]]:
        return [p for p in recorder.payloads() if p["record"]["kind"] == "critical_limit"]

    wait_until(lambda: len(limit_changes()) == 2, what="deviation opened and closed")
    envelopes = limit_changes()
    recorder.close()
    assert ("milkguard/v1/deviations/truck-07/comp-2", envelopes[0]) in recorder.messages
    # signed with the stream's own key, checkable with the public key it exports
    stream_key = Signer.load_or_create(service.data_dir / "signing-key.pem")
    verifier = Verifier([stream_key.public_pem().encode()])
    opened, closed = (
        msgspec.to_builtins(unseal(msgspec.json.encode(e), verifier).record) for e in envelopes
    )
    assert (opened["change"], closed["change"]) == ("opened", "closed")
    assert opened["rule_id"] == closed["rule_id"] == "cn-transport-max-comp-2"
    assert opened["start"] == closed["start"] == "2026-11-22T10:00:10.000Z"  # first sample > 6
    assert opened["detected"] == "2026-11-22T10:00:25.000Z"  # sustained 15 s
    assert opened["end"] is None
    assert closed["end"] == "2026-11-22T10:00:40.000Z"  # 5.8 degC: first sample back within
    assert closed["peak"] == 8.2
    assert closed["time_beyond_s"] == 30.0
    assert closed["action"] == "reject_load"

    service.finish()
    stored = (service.data_dir / "deviations.jsonl").read_text().splitlines()
    kept = [json.loads(line) for line in stored]
    assert [c for c in kept if c["kind"] == "critical_limit"] == [opened, closed]


def test_a_malformed_payload_goes_to_the_dead_letter_while_valid_traffic_keeps_flowing(
    service: RunningService, truck_gateway: GatewayPublisher
) -> None:
    letters = TopicRecorder(service.address, "milkguard/v1/deadletter/#")
    truck_gateway.publish([compartment(0, 4.0)])
    truck_gateway.publish_raw(b'{"v": 1, "site": "truck-07", "readings": [')
    bad_value = encode_batch(
        Batch(v=1, site="truck-07", gateway="truck-07-gw", seq=99, sent_at=T0)
    ).replace(b'"seq":99', b'"seq":"ninety-nine"')
    truck_gateway.publish_raw(bad_value)
    truck_gateway.publish([compartment(5, 4.1)])

    wait_until(lambda: service.counters()["readings"] == 2, what="both valid readings")
    wait_until(lambda: len(letters.payloads()) == 2, what="two dead letters")
    first, second = letters.payloads()
    letters.close()
    assert letters.messages[0][0] == "milkguard/v1/deadletter/truck-07/truck-07-gw"
    assert first["reason"].startswith("not valid JSON")
    assert first["payload"] == '{"v": 1, "site": "truck-07", "readings": ['
    assert second["reason"] == "Expected `int`, got `str` - at `$.seq`"
    assert service.counters()["rejected"] == 2

    summary = service.finish()
    assert summary.counters["ingest.rejected_payloads"] == 2
    stored = (service.data_dir / "deadletter.jsonl").read_text().splitlines()
    assert [json.loads(line)["reason"] for line in stored] == [first["reason"], second["reason"]]


def test_a_duplicate_batch_is_ignored_and_counted(
    service: RunningService, truck_gateway: GatewayPublisher
) -> None:
    payload = encode_batch(
        Batch(
            v=1,
            site="truck-07",
            gateway="truck-07-gw",
            seq=41,
            sent_at=T0,
            readings=[compartment(0, 4.0), compartment(1, 4.1)],
        )
    )
    truck_gateway.publish_raw(payload)
    truck_gateway.publish_raw(payload)  # a QoS 1 redelivery, or a gateway retrying
    truck_gateway.publish(
        [compartment(2, 4.2)],
    )

    wait_until(lambda: service.counters()["batches"] == 2, what="two distinct batches")
    wait_until(lambda: service.counters()["duplicates"] == 1, what="the duplicate counted")
    summary = service.finish()
    assert summary.counters["ingest.readings"] == 3
    (series,) = service.data_dir.glob("timeseries-*.lp")
    readings = [line for line in series.read_text().splitlines() if line.startswith("reading,")]
    assert len(readings) == 3


def test_with_influxdb_configured_every_reading_lands_there_once(
    mosquitto: Mosquitto, victoria_metrics: VictoriaMetrics, tmp_path: Path
) -> None:
    settings = StreamSettings(
        data_dir=tmp_path / "var",
        simulators=False,
        mqtt=MqttSettings(broker="external", host=mosquitto.host, port=mosquitto.port),
        influx=InfluxSettings(
            url=victoria_metrics.url,
            token=SecretStr("token"),
            org="dairy",
            bucket="milkguard",
        ),
    )
    service = EmbeddedService(settings, Console(file=io.StringIO()))
    stop = threading.Event()
    thread = threading.Thread(target=service.run, args=(stop,), daemon=True)
    thread.start()
    wait_until(lambda: service.ingest is not None, what="the service to start")
    connection = mqtt_connect.connect(
        mqtt_connect.BrokerAddress(mosquitto.host, mosquitto.port), "test-gw"
    )
    gateway = GatewayPublisher(connection, "truck-07", "truck-07-gw", first_seq=1)
    for second in range(0, 300, 10):
        gateway.publish([compartment(second, 4.0 + second / 100)])
    assert gateway.drain()
    connection.close()
    wait_until(
        lambda: service.ingest is not None and service.ingest.counters.readings == 30,
        what="30 readings ingested",
    )
    stop.set()
    thread.join(timeout=30)

    victoria_metrics.flush_index()
    exported = [json.loads(row) for row in victoria_metrics.export("reading_value").splitlines()]
    (series,) = exported
    assert series["metric"]["asset"] == "comp-2"
    assert series["timestamps"] == [T0 + s * 1000 for s in range(0, 300, 10)]
    assert series["values"][-1] == pytest.approx(4.0 + 290 / 100)
    # above 6 degC from 210 s (6.1) on, sustained 15 s at 230 s: the opening is written too
    (peak,) = [json.loads(row) for row in victoria_metrics.export("deviation_peak").splitlines()]
    assert peak["metric"]["change"] == "opened"
    assert peak["metric"]["rule"] == "cn-transport-max-comp-2"
    assert peak["timestamps"] == [T0 + 210_000]
    assert peak["values"] == [pytest.approx(6.3)]

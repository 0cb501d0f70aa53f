"""Restarts and outages lose nothing: the stream's persistent session holds batches while it is
down, a stop with a full queue neither hangs nor drops, and what is published while the broker
is away is sent after it comes back."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest
from rich.console import Console

from edge.publisher import GatewayPublisher
from milkguard import mqtt as mqtt_connect
from milkguard.contract.v1 import Reading
from milkguard.settings import MqttSettings
from stream.embedded import EmbeddedService, RunSummary
from stream.engine import DeviationChange
from stream.errors import NotAcknowledged
from stream.mqtt_io import MqttOutbox
from stream.settings import StreamSettings
from tests.conftest import T0
from tests.helpers import wait_until
from tests.servers import Mosquitto, start_mosquitto, stop

pytestmark = pytest.mark.integration


class Stream:
    """The stream service run in a thread, restartable with the same MQTT client id."""

    def __init__(self, mosquitto: Mosquitto, data_dir: Path, queue_size: int = 10_000) -> None:
        self.settings = StreamSettings(
            data_dir=data_dir,
            simulators=False,
            mqtt=MqttSettings(
                broker="external",
                host=mosquitto.host,
                port=mosquitto.port,
                queue_size=queue_size,
            ),
        )
        self.summaries: list[RunSummary] = []
        self._changes: list[DeviationChange] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.service: EmbeddedService | None = None

    def changes(self) -> list[DeviationChange]:
        """What the service judged, across restarts."""
        return list(self._changes)

    def start(self) -> EmbeddedService:
        service = EmbeddedService(
            self.settings, Console(file=io.StringIO()), on_change=self._changes.append
        )
        self.service, self._stop = service, threading.Event()
        self._thread = threading.Thread(
            target=lambda: self.summaries.append(service.run(self._stop)), daemon=True
        )
        self._thread.start()
        wait_until(lambda: service.ingest is not None, what="the service to start")
        return service

    def stop(self) -> RunSummary:
        assert self._thread is not None
        self._stop.set()
        self._thread.join(timeout=60)
        assert not self._thread.is_alive(), "the service did not stop"
        return self.summaries[-1]


def gateway(mosquitto: Mosquitto, name: str = "truck-07-gw") -> GatewayPublisher:
    connection = mqtt_connect.connect(
        mqtt_connect.BrokerAddress(mosquitto.host, mosquitto.port), f"test-{name}"
    )
    return GatewayPublisher(connection, "truck-07", name, first_seq=1)


def publish(gw: GatewayPublisher, count: int, start: int = 0) -> None:
    for i in range(start, start + count):
        gw.publish([Reading("comp-1", "temp", 4.0, "degC", T0 + i * 1000)])


def test_batches_published_while_the_stream_is_down_are_judged_after_it_restarts(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    stream = Stream(mosquitto, tmp_path / "var")
    stream.start()
    gw = gateway(mosquitto)
    publish(gw, 10)
    wait_until(lambda: stream.service.ingest.counters.batches == 10)  # type: ignore[union-attr]
    first = stream.stop()

    publish(gw, 200, start=10)  # the stream is down: its persistent session holds these
    assert gw.drain()
    stream.start()
    wait_until(
        lambda: stream.service.ingest.counters.batches == 200,  # type: ignore[union-attr]
        what="the 200 batches held by the broker",
    )
    second = stream.stop()
    gw.connection.close()

    assert first.counters["ingest.batches"] + second.counters["ingest.batches"] == 210
    assert second.counters["ingest.duplicates"] == 0
    assert second.counters["engine.late"] == 0


def test_a_stop_with_a_full_queue_neither_hangs_nor_loses_a_batch(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    stream = Stream(mosquitto, tmp_path / "var", queue_size=10)
    stream.start()
    gw = gateway(mosquitto)
    publish(gw, 2_000)
    assert gw.drain()
    first = stream.stop()  # very likely mid-way, with paho blocked on the full queue

    stream.start()
    wait_until(
        lambda: (
            first.counters["ingest.batches"] + stream.service.ingest.counters.batches  # type: ignore[union-attr]
            >= 2_000
        ),
        timeout_s=60,
        what="every batch across the two runs",
    )
    second = stream.stop()
    gw.connection.close()

    assert first.counters["ingest.batches"] + second.counters["ingest.batches"] == 2_000
    assert first.counters["ingest.duplicates"] + second.counters["ingest.duplicates"] == 0


def test_what_is_published_during_a_broker_outage_is_sent_once_it_is_back(
    mosquitto: Mosquitto,
) -> None:
    address = mqtt_connect.BrokerAddress(mosquitto.host, mosquitto.port)
    outbox = MqttOutbox(address, "test-outbox")
    gw = gateway(mosquitto)
    mosquitto.stop()
    wait_until(lambda: not gw.connection.client.is_connected(), what="the link to drop")

    outbox.publish("milkguard/v1/deviations/truck-07/comp-1", b"{}")
    publish(gw, 5)  # queued by paho, not refused, not raised
    with pytest.raises(NotAcknowledged, match="not acknowledged yet"):
        outbox.flush()

    mosquitto.start()
    wait_until(lambda: outbox.connection.wait_acknowledged(0.1), what="the outbox resend")
    wait_until(lambda: gw.drain(0.1), what="the gateway's resend")
    assert gw.connection.thread.is_alive()
    outbox.close()
    gw.connection.close()


def test_a_restart_in_the_middle_of_a_sustained_breach_opens_it_at_the_same_event_time(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    stream = Stream(mosquitto, tmp_path / "var")
    stream.start()
    gw = gateway(mosquitto)
    # comp-1 above 6 degC from 2 s on; the demo plan wants 15 s sustained
    temps = [4.0, 4.0, 7.0, 7.2, 7.4, 7.6, 7.8] + [8.0] * 13 + [5.0] * 4
    for second, temp in enumerate(temps[:8]):  # 6 s of breach, not yet a deviation
        gw.publish([Reading("comp-1", "temp", temp, "degC", T0 + second * 1000)])
    wait_until(lambda: stream.service.ingest.counters.readings == 8)  # type: ignore[union-attr]
    stream.stop()
    assert (tmp_path / "var" / "stream.checkpoint").exists()

    stream.start()
    for second, temp in enumerate(temps[8:], start=8):
        gw.publish([Reading("comp-1", "temp", temp, "degC", T0 + second * 1000)])
    wait_until(
        lambda: any(
            c.deviation.kind == "critical_limit" and c.kind == "closed" for c in stream.changes()
        ),
        what="the breach to close after the restart",
    )
    stream.stop()
    gw.connection.close()

    limit = [c for c in stream.changes() if c.deviation.kind == "critical_limit"]
    assert [c.kind for c in limit] == ["opened", "closed"]
    assert limit[0].deviation.start_ms == T0 + 2_000  # as if the stream had never stopped
    assert limit[0].deviation.detected_ms == T0 + 17_000
    assert limit[1].deviation.end_ms == T0 + 20_000


def test_the_stream_carries_on_after_its_broker_restarts_and_stores_each_reading_once(
    tmp_path: Path,
) -> None:
    # a restart of the broker mid-stream: the stream's connection comes back by itself, what it
    # had not acknowledged comes again (dropped by sequence number), nothing is lost
    mosquitto = start_mosquitto(tmp_path, persistent=True)
    try:
        stream = Stream(mosquitto, tmp_path / "var")
        service = stream.start()
        gw = gateway(mosquitto)
        publish(gw, 50)
        assert gw.drain()
        mosquitto.stop()
        mosquitto.start()
        publish(gw, 50, start=50)
        assert gw.drain(30)
        wait_until(
            lambda: service.ingest.counters.readings >= 100,  # type: ignore[union-attr]
            timeout_s=60,
            what="every batch, before and after the restart",
        )
        summary = stream.stop()
        gw.connection.close()
    finally:
        stop(mosquitto.process)

    lines = "".join(p.read_text() for p in sorted((tmp_path / "var").glob("timeseries-*.lp")))
    stamps = [
        line.rsplit(" ", 1)[1]
        for line in lines.splitlines()
        if line.startswith("reading,") and "comp-1" in line
    ]
    assert len(stamps) == 100
    assert len(set(stamps)) == 100
    assert summary.counters["engine.late"] == 0

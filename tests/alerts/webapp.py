"""A running alert service with its web app, fed as in production: the stream's signed deviations
and the gateways' retained status and batches over a real Mosquitto. For the web app's tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from alerts.gate import Gate
from alerts.live import LiveHub
from alerts.service import AlertService
from alerts.settings import AlertSettings, ApiUser
from milkguard import mqtt as mqtt_connect
from milkguard.contract.v1 import (
    Batch,
    ClockState,
    GatewayStatus,
    Reading,
    SourceState,
    batch_topic,
    deviation_topic,
    encode_batch,
    encode_status,
    status_topic,
)
from milkguard.signing import Signer
from tests.alerts.records import change, dev, sealed, stream_signer
from tests.helpers import wait_until
from tests.servers import free_port

TOKENS = {
    "li": "operator-token-li-0123456789ab",
    "zhao": "operator-token-zhao-0123456789",
    "authority": "regulator-token-0123456789abcd",
}
GRAFANA = "https://grafana.dairy.example/"
HTST = "plant-01/htst-1/pmo-htst.temperature"
SILO = "plant-01/silo-2/silo-temp.max"
FARM = "plant-02/tank-7/cn-farm.cooling"


@dataclass
class Plant:
    """The service, its URL, and the stream's and gateways' sides of the broker."""

    url: str
    service: AlertService
    signer: Signer
    stream: mqtt_connect.Connection
    gateways: mqtt_connect.Connection

    def deviation(self, record: dict[str, Any]) -> None:
        """Publish a deviation change as the stream does: signed, on its asset's topic."""
        topic = deviation_topic(record["site"], record["asset"])
        self.stream.publish(topic, sealed(record, self.signer))

    def status(self, status: GatewayStatus) -> None:
        """Publish a gateway's retained status, as its edge agent does."""
        self.gateways.publish(
            status_topic(status.site, status.gateway), encode_status(status), retain=True
        )

    def batch(self, batch: Batch) -> None:
        """Publish a gateway's batch."""
        self.gateways.publish(batch_topic(batch.site, batch.gateway), encode_batch(batch))


def deviation(
    n: int,
    *,
    site: str,
    asset: str,
    rule: str,
    kind: str,
    severity: str,
    channel: str,
    limit: dict[str, Any],
    peak: float,
    change_kind: str = "opened",
    **fields: Any,
) -> dict[str, Any]:
    """A deviation change of another asset, rule and limit than :func:`records.change`'s."""
    record = change(change_kind, dev(n), severity)
    record.update(
        site=site,
        asset=asset,
        rule_id=rule,
        kind=kind,
        channels=[channel],
        device=f"{site}-gw",
        limit={"sustained_s": 0.0, **limit},
        peak=peak,
        time_base="device",
        clocks=[],
        clock_offset_ms=0,
        **fields,
    )
    return record


def readings_for_hours(
    asset: str, channel: str, unit: str, base: float, swing: float, hours: float, now_ms: int
) -> list[Reading]:
    """A reading a minute for the last ``hours``, a slow wave around ``base``."""
    count = int(hours * 60)
    return [
        Reading(
            asset=asset,
            channel=channel,
            unit=unit,  # type: ignore[arg-type]
            value=round(base + swing * ((i % 40) - 20) / 20, 2),
            ts=now_ms - (count - i) * 60_000,
        )
        for i in range(count + 1)
    ]


def seed(plant: Plant) -> None:
    """Three gateways, three hours of readings, four alerts on two sites."""
    now = int(time.time() * 1000)
    plant.status(
        GatewayStatus(
            v=1,
            site="plant-01",
            gateway="plant-01-gw",
            state="online",
            ts=now,
            clock=ClockState(synced=True, offset_ms=12.0, error_ms=3.0, source="chrony"),
            backlog=3,
            outbox_bytes=48_000,
            sources={
                "modbus-htst": SourceState(ok=True),
                "opcua-silos": SourceState(ok=False, failures=4, error="connection refused"),
            },
        )
    )
    plant.status(
        GatewayStatus(
            v=1,
            site="plant-02",
            gateway="farm-07-gw",
            state="offline",
            ts=now - 1_800_000,
            alarm=True,
            backlog=1_250,
            outbox_nearly_full=True,
            clock=ClockState(synced=False, source="kernel"),
        )
    )
    readings = [
        *readings_for_hours("htst-1", "hold_temp", "degC", 72.6, 0.4, 3, now),
        *readings_for_hours("htst-1", "flow", "L/h", 9_800, 300, 3, now),
        *readings_for_hours("silo-2", "temp", "degC", 5.2, 1.0, 3, now),
    ]
    for seq, start in enumerate(range(0, len(readings), 200)):
        plant.batch(
            Batch(
                v=1,
                site="plant-01",
                gateway="plant-01-gw",
                seq=seq,
                sent_at=now,
                readings=readings[start : start + 200],
            )
        )
    plant.deviation(change("opened"))  # the critical HTST deviation: a signed report follows
    plant.deviation(
        deviation(
            2,
            site="plant-01",
            asset="silo-2",
            rule="silo-temp.max",
            kind="critical_limit",
            severity="major",
            channel="temp",
            limit={"min": None, "max": 7.0, "unit": "degC", "source": "PMO Item 18r"},
            peak=8.4,
            time_beyond_s=540.0,
            degree_minutes=9.3,
            detected_late=True,
        )
    )
    plant.deviation(
        deviation(
            3,
            site="plant-02",
            asset="tank-7",
            rule="cn-farm.cooling",
            kind="cooling_deadline",
            severity="major",
            channel="milk_temp",
            limit={"min": None, "max": 4.0, "unit": "degC", "source": "GB 19301"},
            peak=9.1,
        )
    )
    wait_until(lambda: len(plant.service.book.all()) == 3, 30, "the three alerts")
    wait_until(
        lambda: plant.service.devices is not None and plant.service.devices.batches >= 3,
        30,
        "the gateways' batches",
    )


@contextmanager
def serving(app: Gate, hub: LiveHub) -> Iterator[str]:
    """``app`` under uvicorn on a free port, in a thread; its base URL (no trailing slash).
    The hub is closed first on the way out, so open event streams end and the server stops."""
    import uvicorn  # noqa: PLC0415

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, 10, "the API server")
        yield f"http://127.0.0.1:{port}"
    finally:
        hub.close()
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def running_plant(directory: Path, broker_port: int) -> Iterator[Plant]:
    """``milkguard alerts run`` in a thread (its API on a free port), fed over Mosquitto."""
    signer, public = stream_signer(directory)
    settings = AlertSettings(
        directory=directory / "alerts",
        stream_keys=[public],
        http_port=free_port(),
        users=[
            ApiUser(name="li", role="operator", token=TOKENS["li"], sites=["plant-01"]),
            ApiUser(name="zhao", role="operator", token=TOKENS["zhao"], sites=["plant-02"]),
            ApiUser(name="authority", role="regulator", token=TOKENS["authority"]),
        ],
        grafana_url=GRAFANA,  # type: ignore[arg-type]
        # the mail server is down: the e-mails fail and are retried, the console gets it
        smtp={"host": "127.0.0.1", "port": free_port(), "timeout_s": 2},  # type: ignore[arg-type]
        recipients=[
            {"name": "li", "audience": "operator", "sites": ["plant-01"], "email": "li@plant"},
            {"name": "zhao", "audience": "operator", "sites": ["plant-02"]},
        ],  # type: ignore[list-item]
    )
    address = mqtt_connect.BrokerAddress(port=broker_port)
    service = AlertService(settings, address, "plant-alerts")
    stop = threading.Event()
    runner = threading.Thread(target=service.run, args=(stop,), daemon=True)
    runner.start()
    stream = mqtt_connect.connect(address, "stream-outbox")
    gateways = mqtt_connect.connect(address, "gateways")
    try:
        assert service.subscribed.wait(20)
        wait_until(lambda: _serving(settings.http_port), 20, "the API")
        yield Plant(f"http://127.0.0.1:{settings.http_port}/", service, signer, stream, gateways)
    finally:
        stop.set()
        runner.join(timeout=30)
        stream.close()
        gateways.close()


def _serving(port: int | None) -> bool:
    import socket  # noqa: PLC0415

    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port or 0)) == 0


def decode(payload: bytes) -> Any:
    """JSON of an event's data."""
    return msgspec.json.decode(payload)

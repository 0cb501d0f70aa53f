"""Shared pieces of the edge agent's tests: a config builder, a counting sensor, a recorder."""

from __future__ import annotations

import threading
from collections import defaultdict
from pathlib import Path
from typing import Any

import msgspec

from edge.config import EdgeConfig
from edge.drivers.base import DriverError
from milkguard import mqtt as mqtt_connect
from milkguard.contract.v1 import Batch, GatewayStatus, decode_batch, decode_status


def edge_config(
    data_dir: Path,
    port: int,
    *,
    channels: int = 4,
    every_s: float = 0.05,
    sources: int = 1,
    limits: dict[str, float] | None = None,
    **overrides: Any,
) -> EdgeConfig:
    """A gateway with ``sources`` simulated sources of ``channels`` channels each."""
    data: dict[str, Any] = {
        "site": "farm-01",
        "gateway": "gw-1",
        "data_dir": data_dir,
        "mqtt": {
            "host": "127.0.0.1",
            "port": port,
            "keepalive_s": 5,
            "heartbeat_s": 1,
            "reconnect_min_s": 0.2,
            "reconnect_max_s": 1,
        },
        "batching": {"max_readings": 50, "max_delay_s": 0.2},
        "clock": {"source": "kernel"},
        "sources": [
            {
                "name": f"src-{s}",
                "driver": "simulated",
                "model": "farm_tank",
                "every_s": every_s,
                "channels": [
                    {
                        "quantity": "temp_c",
                        "asset": f"tank-{s}",
                        "channel": f"t{c}",
                        "unit": "degC",
                        "limits": limits,
                    }
                    for c in range(channels)
                ],
            }
            for s in range(sources)
        ],
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return EdgeConfig(**data)


class CountingSensor:
    """A driver whose n-th read returns n on every channel: what arrives can be checked exactly."""

    def __init__(self, channels: int) -> None:
        self.channels = channels
        self.reads = 0
        self.fail = threading.Event()

    def read(self) -> list[float | None]:
        if self.fail.is_set():
            raise DriverError("src", "the sensor does not answer")
        value = float(self.reads)
        self.reads += 1
        return [value] * self.channels

    def close(self) -> None:
        pass


class GatewayRecorder:
    """Subscribes with a persistent session, as the stream does; dedupes batches by sequence."""

    def __init__(self, host: str, port: int, client_id: str = "stream-recorder") -> None:
        self.batches: list[Batch] = []
        self.statuses: list[GatewayStatus] = []
        self.raw_batches = 0
        self._lock = threading.Lock()
        self.connection = mqtt_connect.connect(
            mqtt_connect.BrokerAddress(host, port),
            client_id,
            clean_session=False,
            on_message=self._on_message,
            on_connect_extra=lambda c: c.subscribe("milkguard/v1/gw/#", qos=1),
        )

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._lock:
            if msg.topic.endswith("/status"):
                self.statuses.append(decode_status(msg.payload))
            else:
                self.raw_batches += 1
                self.batches.append(decode_batch(msg.payload))

    def deduped(self) -> list[Batch]:
        """Batches in arrival order, a sequence number's copies dropped (as the stream does)."""
        seen: set[int] = set()
        kept = []
        with self._lock:
            for batch in self.batches:
                if batch.seq not in seen:
                    seen.add(batch.seq)
                    kept.append(batch)
        return kept

    def readings_by_channel(self) -> dict[tuple[str, str], list[tuple[int, float]]]:
        """(ts, value) per channel in arrival order, after dedupe."""
        found: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
        for batch in self.deduped():
            for r in batch.readings:
                found[(r.asset, r.channel)].append((r.ts, r.value))
        return found

    def count(self) -> int:
        return sum(len(v) for v in self.readings_by_channel().values())

    def close(self) -> None:
        self.connection.close()


def encode(obj: Any) -> bytes:
    return msgspec.json.encode(obj)

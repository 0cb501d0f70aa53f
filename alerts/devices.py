"""The gateways as the operators' device page shows them: a bounded, in-memory recent window.

The alert service reads it from the broker, read-only (the ``alerts`` role may read the
gateways' status and batch topics), on a connection of its own with a clean session and QoS 0:
the retained status topics hand over every gateway's last state at once on subscribing, and
nothing is queued for the service while it is away, so it never costs the broker memory.
Nothing here judges: the stream does that, on the stream's checks. This is a view.

What it keeps is bounded whatever the gateways send: at most ``max_gateways`` gateways and
``max_channels`` channels in all (further ones are counted and not kept), and per channel one
bucket (min, max, last) per ``bucket_s`` for the last ``window_s`` of its readings' own time,
in fixed arrays: 4,000 channels of 4 h in 60 s buckets hold about 25 MB.
"""

from __future__ import annotations

import math
import threading
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from milkguard.contract.v1 import Batch, GatewayStatus, decode_batch, decode_status

_NAN = math.nan


class ChannelWindow:
    """One channel's recent readings: the latest, and min/max/last per time bucket."""

    __slots__ = ("_index", "_last", "_max", "_min", "bucket_ms", "latest", "latest_ts", "unit")

    def __init__(self, unit: str, buckets: int, bucket_ms: int) -> None:
        self.unit = unit
        self.bucket_ms = bucket_ms
        self.latest: float | None = None
        self.latest_ts = -1
        # slot i holds the bucket number _index[i] (bucket start = number * bucket_ms)
        self._index = array("q", [-1]) * buckets
        self._min = array("d", [_NAN]) * buckets
        self._max = array("d", [_NAN]) * buckets
        self._last = array("d", [_NAN]) * buckets

    def add(self, ts: int, value: float, unit: str) -> None:
        """One reading; one older than the window (by this channel's newest) is dropped."""
        self.unit = unit
        if ts >= self.latest_ts:
            self.latest, self.latest_ts = value, ts
        number = ts // self.bucket_ms
        newest = self.latest_ts // self.bucket_ms
        size = len(self._index)
        if number <= newest - size:
            return
        slot = number % size
        if self._index[slot] != number:  # a new bucket takes the slot of one out of the window
            self._index[slot] = number
            self._min[slot] = self._max[slot] = self._last[slot] = value
            return
        self._min[slot] = min(self._min[slot], value)
        self._max[slot] = max(self._max[slot], value)
        self._last[slot] = value

    def series(self) -> dict[str, list[float]]:
        """The buckets in time order: ``t`` (bucket start, epoch s), ``min``, ``max``, ``last``."""
        size = len(self._index)
        newest = self.latest_ts // self.bucket_ms
        slots = sorted(
            (self._index[s], s) for s in range(size) if newest - size < self._index[s] <= newest
        )
        return {
            "t": [number * self.bucket_ms / 1000 for number, _ in slots],
            "min": [self._min[s] for _, s in slots],
            "max": [self._max[s] for _, s in slots],
            "last": [self._last[s] for _, s in slots],
        }


@dataclass
class Gateway:
    """What is known of one gateway: its last status and its channels."""

    site: str
    gateway: str
    status: GatewayStatus | None = None
    status_received_ms: int | None = None
    last_batch_ms: int | None = None  # when its last batch was received
    last_seen_ms: int | None = None  # when it last spoke (see DeviceWindow.take)
    batches: int = 0
    channels: dict[tuple[str, str], ChannelWindow] = field(default_factory=dict)


class DeviceWindow:
    """Every gateway's latest status and its channels' recent readings, bounded."""

    def __init__(
        self,
        *,
        window_s: float = 4 * 3600,
        bucket_s: float = 60,
        max_gateways: int = 1000,
        max_channels: int = 4000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.bucket_ms = max(1, round(bucket_s * 1000))
        self.buckets = max(2, math.ceil(window_s / bucket_s))
        self.max_gateways = max_gateways
        self.max_channels = max_channels
        self._clock = clock
        self._lock = threading.Lock()
        self._gateways: dict[tuple[str, str], Gateway] = {}
        self._channels = 0
        #: bumped at every change the device page shows (a status, a batch)
        self.version = 0
        #: counters: statuses and batches taken; payloads refused (not the contract, or on
        #: another gateway's topic); gateways and channels not kept (the caps)
        self.statuses = self.batches = self.refused = 0
        self.gateways_not_kept = self.channels_not_kept = 0

    def take(self, topic: str, payload: bytes, *, retained: bool = False) -> bool:
        """One message from a gateway's status or batch topic; False if it was not kept.

        ``retained``: the broker's copy, handed over on subscribing, not the gateway speaking
        now. Last seen is when a batch or a live ``online`` status arrived; a retained status
        or an ``offline`` one (the last will, which the broker publishes) only vouches for the
        gateway's own stamp in it.
        """
        parts = topic.split("/")
        if len(parts) != 6 or parts[:3] != ["milkguard", "v1", "gw"]:
            return False
        site, gateway, kind = parts[3], parts[4], parts[5]
        now_ms = round(self._clock() * 1000)
        try:
            message: GatewayStatus | Batch
            if kind == "status":
                message = decode_status(payload)
            elif kind == "batch":
                message = decode_batch(payload)
            else:
                return False
        except (msgspec.ValidationError, msgspec.DecodeError):
            self.refused += 1
            return False
        if (message.site, message.gateway) != (site, gateway):  # on another gateway's topic
            self.refused += 1
            return False
        with self._lock:
            known = self._gateway(site, gateway)
            if known is None:
                return False
            if isinstance(message, GatewayStatus):
                self.statuses += 1
                known.status, known.status_received_ms = message, now_ms
                live = message.state == "online" and not retained
                seen = now_ms if live else message.ts
            else:
                seen = now_ms
                self.batches += 1
                known.batches += 1
                known.last_batch_ms = now_ms
                self._readings(known, message)
            known.last_seen_ms = max(known.last_seen_ms or seen, seen)
            self.version += 1
        return True

    def _gateway(self, site: str, gateway: str) -> Gateway | None:
        key = (site, gateway)
        known = self._gateways.get(key)
        if known is None:
            if len(self._gateways) >= self.max_gateways:
                self.gateways_not_kept += 1
                return None
            known = self._gateways[key] = Gateway(site, gateway)
        return known

    def _readings(self, known: Gateway, batch: Batch) -> None:
        for reading in batch.readings:
            key = (reading.asset, reading.channel)
            window = known.channels.get(key)
            if window is None:
                if self._channels >= self.max_channels:
                    self.channels_not_kept += 1
                    continue
                window = known.channels[key] = ChannelWindow(
                    reading.unit, self.buckets, self.bucket_ms
                )
                self._channels += 1
            window.add(reading.ts, reading.value, reading.unit)

    def latest(self, site: str, asset: str, channel: str) -> dict[str, Any] | None:
        """The newest reading of a channel, whichever gateway sends it (None if none does)."""
        with self._lock:
            best: tuple[int, dict[str, Any]] | None = None
            for known in self._gateways.values():
                window = known.channels.get((asset, channel))
                if known.site != site or window is None or window.latest is None:
                    continue
                if best is None or window.latest_ts > best[0]:
                    shown = {"value": window.latest, "unit": window.unit, "ts": window.latest_ts}
                    best = (window.latest_ts, {**shown, "gateway": known.gateway})
            return best[1] if best else None

    def gateways(self, visible: Callable[[str], bool]) -> list[dict[str, Any]]:
        """Every gateway of a visible site, by site and id, without its channels' series."""
        with self._lock:
            return [
                self._summary(known)
                for key, known in sorted(self._gateways.items())
                if visible(known.site)
            ]

    def gateway(self, site: str, gateway: str) -> dict[str, Any] | None:
        """One gateway with each channel's latest reading and recent series."""
        with self._lock:
            known = self._gateways.get((site, gateway))
            if known is None:
                return None
            channels = [
                {
                    "asset": asset,
                    "channel": channel,
                    "unit": window.unit,
                    "value": window.latest,
                    "ts": window.latest_ts,
                    "series": window.series(),
                }
                for (asset, channel), window in sorted(known.channels.items())
            ]
            return {**self._summary(known), "channels": channels}

    def counters(self) -> dict[str, int]:
        """What was taken, refused and not kept."""
        return {
            "statuses": self.statuses,
            "batches": self.batches,
            "refused": self.refused,
            "gateways_not_kept": self.gateways_not_kept,
            "channels_not_kept": self.channels_not_kept,
        }

    def _summary(self, known: Gateway) -> dict[str, Any]:
        status = known.status
        sources = sorted((status.sources if status else {}).items())
        clock = status.clock if status else None
        return {
            "site": known.site,
            "gateway": known.gateway,
            "state": status.state if status else "unknown",
            "status_ts": status.ts if status else None,
            "last_seen_ms": known.last_seen_ms,
            "last_batch_ms": known.last_batch_ms,
            "backlog": status.backlog if status else None,
            "outbox_bytes": status.outbox_bytes if status else None,
            "outbox_nearly_full": status.outbox_nearly_full if status else False,
            "dropped_readings": status.dropped_readings if status else 0,
            "refused_readings": status.refused_readings if status else 0,
            "alarm": status.alarm if status else False,
            "clock": msgspec.to_builtins(clock) if clock else None,
            "sources": [
                {"name": name, "ok": s.ok, "failures": s.failures, "error": s.error}
                for name, s in sources
            ],
            "failing": [name for name, s in sources if not s.ok],
            "channel_count": len(known.channels),
        }

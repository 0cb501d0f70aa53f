"""Ingest: one MQTT message in, validated readings to the engine and the stores, nothing lost.

For each message: check the topic, decode and validate the batch (msgspec, one pass), drop a
duplicate (same gateway and sequence number), store readings and events as line protocol, judge
the readings, and hand deviation changes to the deviation sink. What fails goes to the
dead-letter sink with the reason, and is counted; the stream keeps running.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import msgspec

from milkguard.contract.v1 import Batch, Reading, decode_batch, is_valid_id, parse_batch_topic
from stream.engine.core import Engine
from stream.engine.deviation import DeviationChange, iso_ms
from stream.lineprotocol import derived_line, deviation_line, event_line, reading_line
from stream.sinks.base import (
    DeadLetter,
    DeadLetterSink,
    DeviationSink,
    SinkGroup,
    TimeSeriesSink,
)

log = logging.getLogger(__name__)

_EPOCH_MS_FLOOR = "946684800000"
# a bound on the id cache, so a gateway inventing ids cannot grow memory without end
_MAX_REMEMBERED_IDS = 100_000


@dataclass(slots=True)
class IngestCounters:
    """What ingest saw, for metrics and the run summary."""

    messages: int = 0
    batches: int = 0
    readings: int = 0
    events: int = 0
    rejected_payloads: int = 0
    rejected_readings: int = 0
    duplicates: int = 0


class SequenceWindow:
    """Remembers which sequence numbers of one gateway were seen, within a sliding window.

    Sequence numbers only grow, but batches may arrive reordered (a backlog drained after an
    outage) and twice (QoS 1 redelivery). Numbers within ``size`` of the highest seen are checked
    exactly; a number further behind cannot be told apart from a duplicate and is reported.
    """

    __slots__ = ("_seen", "high", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.high = -1
        self._seen: set[int] = set()

    def state(self) -> tuple[int, list[tuple[int, int]]]:
        """(highest, seen numbers as inclusive ranges): compact, as numbers mostly run on."""
        ranges: list[tuple[int, int]] = []
        for seq in sorted(self._seen):
            if ranges and ranges[-1][1] == seq - 1:
                ranges[-1] = (ranges[-1][0], seq)
            else:
                ranges.append((seq, seq))
        return self.high, ranges

    @classmethod
    def restored(cls, size: int, high: int, ranges: list[tuple[int, int]]) -> SequenceWindow:
        """A window as :meth:`state` described it."""
        window = cls(size)
        window.high = high
        floor = high - size
        for first, last in ranges:
            window._seen.update(range(max(first, floor + 1), last + 1))
        return window

    def admit(self, seq: int) -> bool | None:
        """True: new. False: a duplicate. None: too far behind the window to tell."""
        if seq > self.high:
            self.high = seq
            self._seen.add(seq)
            if len(self._seen) > 2 * self.size:
                floor = self.high - self.size
                self._seen = {s for s in self._seen if s > floor}
            return True
        if seq <= self.high - self.size:
            return None
        if seq in self._seen:
            return False
        self._seen.add(seq)
        return True


class Ingest:
    """Turns raw MQTT messages into stored readings and judged deviations."""

    def __init__(
        self,
        engine: Engine,
        timeseries: TimeSeriesSink,
        deviations: DeviationSink,
        deadletter: DeadLetterSink,
        *,
        dedupe_window: int = 65_536,
        clock: Literal["received", "event"] = "received",
        on_change: Callable[[DeviationChange], None] | None = None,
    ) -> None:
        self.engine = engine
        # live, the engine's clock is the receive time; replaying a file, the newest event time
        self._event_clock = clock == "event"
        self.counters = IngestCounters()
        self._timeseries = timeseries
        self._deviations = deviations
        self._deadletter = deadletter
        self._sinks = SinkGroup([timeseries, deviations, deadletter])
        self._windows: dict[tuple[str, str], SequenceWindow] = {}
        self._window_size = dedupe_window
        self._on_change = on_change
        # ids already checked against the contract's pattern; the plan's are valid by validation
        self._valid_ids: set[str] = {
            name
            for key, asset in engine.plan.plan.assets.items()
            for name in (asset.id or key, *asset.channels)
        }
        #: the newest reading of each (site, asset, channel), for live views
        self.latest: dict[tuple[str, str, str], Reading] = {}

    def handle(self, topic: str, payload: bytes, received_ms: int) -> None:
        """Process one MQTT message; never raises for bad input (it is dead-lettered)."""
        self.counters.messages += 1
        route = parse_batch_topic(topic)
        if route is None:
            self._reject_payload(
                topic,
                payload,
                received_ms,
                "topic is not a batch topic of wire contract v1; "
                "publish to milkguard/v1/gw/{site}/{gateway}/batch",
            )
            return
        self._handle(topic, route, payload, received_ms)

    def handle_recorded(self, payload: bytes, origin: str) -> None:
        """Process one payload recorded without its topic (a line of a replayed file).

        Its receive time is taken as the later of its ``sent_at`` and its newest reading.
        """
        self.counters.messages += 1
        self._handle(origin, None, payload, None)

    def handle_bridged(self, payload: bytes, received_ms: int, origin: str) -> None:
        """Process one payload the bridge took from MQTT (it checked the topic against it)."""
        self.counters.messages += 1
        self._handle(origin, None, payload, received_ms)

    def windows(self) -> dict[str, tuple[int, list[tuple[int, int]]]]:
        """The duplicate windows of every gateway, for a snapshot."""
        return {f"{site}/{gw}": window.state() for (site, gw), window in self._windows.items()}

    def restore_windows(self, saved: dict[str, tuple[int, list[tuple[int, int]]]]) -> None:
        """Carry on dropping the duplicates a snapshot's windows knew of."""
        for name, (high, ranges) in saved.items():
            site, gateway = name.split("/", 1)
            self._windows[(site, gateway)] = SequenceWindow.restored(
                self._window_size, high, ranges
            )

    def _handle(
        self,
        topic: str,
        route: tuple[str, str] | None,
        payload: bytes,
        received_ms: int | None,
    ) -> None:
        site, gateway = route if route is not None else (None, None)
        shown_at = received_ms if received_ms is not None else 0
        try:
            batch = decode_batch(payload)
        except msgspec.ValidationError as exc:
            self._reject_payload(
                topic, payload, shown_at, _explain(str(exc)), site=site, gateway=gateway
            )
            return
        except msgspec.DecodeError as exc:
            self._reject_payload(
                topic, payload, shown_at, f"not valid JSON: {exc}", site=site, gateway=gateway
            )
            return
        if received_ms is None:
            newest = max((r.ts for r in batch.readings), default=batch.sent_at)
            received_ms = max(batch.sent_at, newest)
        if route is None:
            site, gateway = route = batch.site, batch.gateway
        elif (batch.site, batch.gateway) != (site, gateway):
            self._reject_payload(
                topic,
                payload,
                received_ms,
                f"payload says site {batch.site!r}, gateway {batch.gateway!r} but the topic "
                f"says site {site!r}, gateway {gateway!r}; they must match",
                site=site,
                gateway=gateway,
                seq=batch.seq,
            )
            return
        assert site is not None
        assert gateway is not None
        window = self._windows.get(route)
        if window is None:
            window = self._windows[route] = SequenceWindow(self._window_size)
        admitted = window.admit(batch.seq)
        if admitted is False:
            self.counters.duplicates += 1
            log.debug("batch.duplicate", extra={"site": site, "gateway": gateway, "seq": batch.seq})
            return
        if admitted is None:
            self._reject_payload(
                topic,
                payload,
                received_ms,
                f"sequence number {batch.seq} is more than {window.size} behind the highest "
                f"seen ({window.high}); cannot tell it from a duplicate. Did the gateway reset "
                "its counter? Gateways must keep seq growing across restarts.",
                site=site,
                gateway=gateway,
                seq=batch.seq,
            )
            return
        self._accept(site, gateway, batch, topic, received_ms)

    def _accept(self, site: str, gateway: str, batch: Batch, topic: str, received_ms: int) -> None:
        counters = self.counters
        counters.batches += 1
        counters.readings += len(batch.readings)
        counters.events += len(batch.events)
        readings = batch.readings
        changes: list[DeviationChange] = []
        engine = self.engine
        reported = batch.clock.synced if batch.clock is not None else None
        engine.clock(site, gateway, batch.sent_at, received_ms, reported)
        if batch.events:
            engine.submit_events(site, batch.events)
        routed = engine.submit(site, gateway, readings, received_ms)
        if self._event_clock:
            newest = max((r.ts for r in readings), default=engine.now)
            engine.advance(max(newest, engine.now), changes)
        else:
            engine.advance(received_ms, changes)
        if engine.notices:
            self._log_notices(gateway)
        left_out = {id(m.reading) for m in routed.mismatches}
        # a reading the plan routed has the plan's ids, valid by validation; only the others
        # are checked against the contract's id pattern before they reach line protocol
        if routed.unplanned and has_unchecked_ids(routed.unplanned, self._valid_ids):
            unsafe = self._unsafe_ids(topic, received_ms, batch, routed.unplanned)
            left_out.update(id(r) for r in unsafe)
        if left_out:
            readings = [r for r in readings if id(r) not in left_out]
        lines = [reading_line(site, gateway, r) for r in readings]
        lines.extend(event_line(site, gateway, e) for e in batch.events)
        for mismatch in routed.mismatches:
            reading = mismatch.reading
            self._reject_reading(
                topic,
                received_ms,
                batch,
                reading,
                f"reading of {reading.asset}/{reading.channel} has unit {reading.unit!r} but "
                f"the plan declares {mismatch.expected!r}; convert at the gateway or fix the plan",
            )
        self._emit(changes, lines)
        latest = self.latest
        for reading in readings:
            key = (site, reading.asset, reading.channel)
            previous = latest.get(key)
            if previous is None or reading.ts >= previous.ts:
                latest[key] = reading
        self._timeseries.add(lines)

    def tick(self, now_ms: int) -> None:
        """Move the engine's clock with no data: releases held readings and fires timers."""
        changes: list[DeviationChange] = []
        self.engine.advance(now_ms, changes)
        if changes or self.engine.derived:
            lines: list[str] = []
            self._emit(changes, lines)
            self._timeseries.add(lines)

    def finish(self) -> None:
        """End of input (a replayed file): judge everything the engine still holds, flush."""
        changes: list[DeviationChange] = []
        self.engine.flush(changes)
        lines: list[str] = []
        self._emit(changes, lines)
        self._timeseries.add(lines)
        self.flush()

    def _emit(self, changes: list[DeviationChange], lines: list[str]) -> None:
        """Deviation changes to their sinks and, with the engine's derived values, to lines."""
        derived = self.engine.derived
        if derived:
            lines.extend(map(derived_line, derived))
            derived.clear()
        for change in changes:
            lines.append(deviation_line(change))
            self._deviations.emit(change)
            if self._on_change is not None:
                self._on_change(change)

    def _log_notices(self, gateway: str) -> None:
        for notice in self.engine.take_notices():
            context = {
                "site": notice.site,
                "asset": notice.asset,
                "channel": notice.channel,
                "gateway": gateway,
                "ts": iso_ms(notice.ts),
            }
            if notice.kind == "unplanned":
                log.warning(
                    "reading.unplanned",
                    extra={**context, "hint": "stored, not judged: the plan has no such channel"},
                )
            else:
                log.warning(
                    "reading.late",
                    extra={
                        **context,
                        "late_so_far": notice.count,
                        "hint": "stored, not judged: it arrived after its channel's allowed "
                        "lateness (raise allowed_lateness_s in the plan if this is expected)",
                    },
                )

    def _unsafe_ids(
        self, topic: str, received_ms: int, batch: Batch, candidates: list[Reading]
    ) -> list[Reading]:
        """Check ids not seen before against the contract's pattern, once each; dead-letter and
        return the readings whose ids fail."""
        unsafe: list[Reading] = []
        known = self._valid_ids
        for reading in candidates:
            bad = [
                (field, value)
                for field, value in (("asset", reading.asset), ("channel", reading.channel))
                if value not in known and not is_valid_id(value)
            ]
            if bad:
                field, value = bad[0]
                self._reject_reading(
                    topic,
                    received_ms,
                    batch,
                    reading,
                    f"{field} id {value!r} has characters outside letters, digits, '_', '.', '-' "
                    "(or does not start with a letter or digit); rename it at the gateway",
                )
                unsafe.append(reading)
                continue
            if len(known) < _MAX_REMEMBERED_IDS:
                known.add(reading.asset)
                known.add(reading.channel)
        return unsafe

    @property
    def saturated(self) -> bool:
        """True when the time-series sinks cannot take more: stop feeding ``handle``."""
        return self._timeseries.saturated

    def flush(self) -> None:
        """Make everything handled so far durable in every sink.

        Every sink is flushed even when one fails; the first failure is raised afterwards, so the
        caller knows not everything was confirmed.
        """
        self._sinks.flush()

    def close(self) -> None:
        """Flush and close every sink; one that fails does not keep the others open."""
        try:
            self._sinks.close()
        except Exception:
            log.exception("sink.close_failed")

    def _reject_payload(
        self,
        topic: str,
        payload: bytes,
        received_ms: int,
        reason: str,
        *,
        site: str | None = None,
        gateway: str | None = None,
        seq: int | None = None,
    ) -> None:
        self.counters.rejected_payloads += 1
        text, encoding = _printable(payload)
        self._deadletter.reject(
            DeadLetter(
                received_at=iso_ms(received_ms),
                topic=topic,
                reason=reason,
                payload=text,
                encoding=encoding,
                site=site,
                gateway=gateway,
                seq=seq,
            )
        )
        log.warning(
            "payload.rejected",
            extra={"topic": topic, "site": site, "gateway": gateway, "reason": reason},
        )

    def _reject_reading(
        self, topic: str, received_ms: int, batch: Batch, reading: Reading, reason: str
    ) -> None:
        self.counters.rejected_readings += 1
        self._deadletter.reject(
            DeadLetter(
                received_at=iso_ms(received_ms),
                topic=topic,
                reason=reason,
                payload=msgspec.json.encode(reading).decode(),
                encoding="utf-8",
                site=batch.site,
                gateway=batch.gateway,
                seq=batch.seq,
            )
        )
        log.warning(
            "reading.rejected",
            extra={
                "site": batch.site,
                "gateway": batch.gateway,
                "asset": reading.asset,
                "channel": reading.channel,
                "reason": reason,
            },
        )


def has_unchecked_ids(readings: list[Reading], known: set[str]) -> bool:
    """True when a reading names an asset or channel not yet checked against the id pattern."""
    return any(r.asset not in known or r.channel not in known for r in readings)


def _printable(payload: bytes) -> tuple[str, str]:
    try:
        return payload.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(payload).decode("ascii"), "base64"


def _explain(message: str) -> str:
    """msgspec's message, plus the fix for the mistake device makers make most."""
    if f">= {_EPOCH_MS_FLOOR}" in message:
        return (
            f"{message} (timestamps are milliseconds since 1970-01-01T00:00:00Z; "
            "a value this small is probably seconds: multiply by 1000)"
        )
    return message

"""The edge agent: samples sensors, stores every reading before sending it, and sends in order.

Threads, each with one job:

- a **poller** per source samples on its interval, stamps each value at sampling time, stores
  the readings in the outbox (one transaction), and checks local limits. A failing source is
  retried with backoff and reported; the others go on.
- the **sender** seals stored samples into batches (full, or after ``max_delay_s``) only while
  the link is up, publishes them oldest first with at most ``in_flight`` awaiting PUBACK, at no
  more than ``max_readings_per_s``, and deletes them when acknowledged. It publishes the retained
  status at every connect, at each heartbeat and on changes.
- the **link** keeps the MQTT session up (see :mod:`edge.link`); the **clock** thread asks the
  time service; the **alarm** thread drives the relay command.

Nothing is lost between them: a reading is in SQLite before its poller moves on, and leaves it
only when the broker has it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from edge.alarm import LocalAlarm
from edge.clock import clock_reader
from edge.config import EdgeConfig, Source
from edge.drivers.base import Driver, DriverError
from edge.link import GatewayLink
from edge.outbox import Outbox, Sealed
from milkguard.backoff import Backoff
from milkguard.contract.v1 import (
    EPOCH_2000_MS,
    EPOCH_2100_MS,
    ClockState,
    GatewayStatus,
    Reading,
    SourceState,
    batch_topic,
    encode_status,
    status_topic,
)
from milkguard.errors import ConfigError, MilkGuardError
from milkguard.mqtt import PublishRefused

log = logging.getLogger(__name__)

_MAX_BACKOFF_S = 60.0


def make_driver(source: Source) -> Driver:
    """The driver for a source's configuration (hardware libraries are imported only here)."""
    if source.driver == "simulated":
        from edge.drivers.simulated import SimulatedDriver  # noqa: PLC0415

        return SimulatedDriver(source)
    if source.driver == "modbus":
        from edge.drivers.modbus import ModbusDriver  # noqa: PLC0415

        return ModbusDriver(source)
    if source.driver == "ds18b20":
        from edge.drivers.ds18b20 import DS18B20Driver  # noqa: PLC0415

        return DS18B20Driver(source)
    from edge.drivers.command import CommandDriver  # noqa: PLC0415

    return CommandDriver(source)


def now_ms() -> int:
    """Wall-clock time in ms since the epoch: event time as the gateway knows it."""
    return time.time_ns() // 1_000_000


def clock_plausible(epoch_ms: int) -> bool:
    """True when the clock reads a time the wire contract accepts (2000 to 2100)."""
    return EPOCH_2000_MS <= epoch_ms < EPOCH_2100_MS


@dataclass(slots=True)
class SourceHealth:
    """How a source is doing, for the status message and the logs."""

    reads: int = 0
    failures: int = 0  # consecutive
    total_failures: int = 0
    unstamped: int = 0  # readings not kept because the gateway clock was not set
    error: str | None = None

    def as_state(self) -> SourceState:
        """The wire form."""
        return SourceState(ok=self.failures == 0, failures=self.total_failures, error=self.error)


class Poller:
    """Samples one source on its interval, on its own thread."""

    def __init__(
        self,
        source: Source,
        outbox: Outbox,
        alarm: LocalAlarm,
        stopping: threading.Event,
        driver_factory: Callable[[Source], Driver] = make_driver,
    ) -> None:
        self.source = source
        self.health = SourceHealth()
        self._outbox = outbox
        self._alarm = alarm
        self._stopping = stopping
        self._factory = driver_factory
        self._driver: Driver | None = None
        self._limited = [c for c in source.channels if c.limits is not None]
        self._clock_bad = False
        # a failing source is retried no sooner than its interval, up to a minute apart
        self._retry = Backoff(source.every_s, max(source.every_s, _MAX_BACKOFF_S))
        self._thread = threading.Thread(target=self._run, name=f"edge-{source.name}", daemon=True)

    def start(self) -> None:
        """Start sampling."""
        self._thread.start()

    def join(self, timeout_s: float) -> None:
        """Wait for the thread to end (after ``stopping`` is set)."""
        self._thread.join(timeout_s)

    def _run(self) -> None:
        every = self.source.every_s
        due = time.monotonic()
        while not self._stopping.wait(max(0.0, due - time.monotonic())):
            if self._sample():
                self._retry.reset()
                due += every
                late = time.monotonic() - due
                if late > every:  # a read took longer than the interval: skip the missed slots
                    due += math.floor(late / every) * every
            else:
                due = time.monotonic() + self._retry.next()
        if self._driver is not None:
            self._driver.close()

    def _sample(self) -> bool:
        """One read; False when the source failed."""
        try:
            if self._driver is None:
                self._driver = self._factory(self.source)
            before = time.time_ns()
            values = self._driver.read()
            after = time.time_ns()
        except DriverError as exc:
            self._failed(exc.problem)
            return False
        except Exception as exc:  # a driver bug must not end sampling of this source
            problem = f"driver error: {exc!r}"
            if problem != self.health.error:
                log.exception("edge.driver_crashed", extra={"source": self.source.name})
            self._failed(problem)
            return False
        # stamped at the middle of the read: the best estimate of when the values were true
        ts = (before + after) // 2_000_000
        if not clock_plausible(ts):
            self._unstamped(ts, len(values))
            return True  # the source is fine; the clock is not
        if self._clock_bad:
            self._clock_bad = False
            log.info("edge.clock_set", extra={"source": self.source.name})
            self._alarm.update("clock", False)
        readings = []
        for channel, value in zip(self.source.channels, values, strict=True):
            if value is None or not math.isfinite(value):
                continue  # the driver logs a point it cannot read
            readings.append(Reading(channel.asset, channel.channel, value, channel.unit, ts))
            if channel.limits is not None:
                key = f"{channel.asset}/{channel.channel}"
                breached = channel.limits.breached(value)
                self._alarm.update(key, breached, f"{key} = {value:g} {channel.unit}")
        if readings:
            self._store(readings)
        if self.health.failures:
            log.info(
                "edge.source_recovered",
                extra={"source": self.source.name, "after_failures": self.health.failures},
            )
            self._alarm.update(f"source:{self.source.name}", False)
        self.health.reads += 1
        self.health.failures = 0
        self.health.error = None
        return True

    def _unstamped(self, ts: int, count: int) -> None:
        """A clock before 2000 (a gateway without a real-time clock, booted before NTP
        answered) cannot stamp readings: the stream would refuse them, and no later fix can
        tell when they were taken. Counted, logged once, and rung on the local alarm."""
        if not self._clock_bad:
            self._clock_bad = True
            log.error(
                "edge.clock_not_set",
                extra={"source": self.source.name, "clock_ms": ts, "fix": "check the time service"},
            )
        self.health.unstamped += count
        self._alarm.update("clock", True, "the gateway clock is not set: readings not stamped")

    def _store(self, readings: list[Reading]) -> None:
        try:
            self._outbox.add(readings)
        except sqlite3.Error as exc:
            # the disk is full or failing: these readings cannot be kept; say so loudly, go on
            self._outbox.counters.refused_readings += len(readings)
            log.error("edge.outbox_write_failed", extra={"error": str(exc)})
            self._alarm.update("outbox-write", True, f"cannot store readings: {exc}")
        else:
            self._alarm.update("outbox-write", False)

    def _failed(self, problem: str) -> None:
        health = self.health
        health.failures += 1
        health.total_failures += 1
        if problem != health.error:
            log.error("edge.source_failed", extra={"source": self.source.name, "problem": problem})
        health.error = problem
        if self._driver is not None:
            self._driver.close()
            self._driver = None  # reopened on the next attempt
        if self._limited:
            # a silent probe on a limited channel is not a cold tank
            self._alarm.update(f"source:{self.source.name}", True, f"{self.source.name}: {problem}")


class _TokenBucket:
    """At most ``rate`` readings a second, with a one-second burst."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = rate
        self._at = time.monotonic()

    def take(self, count: int) -> bool:
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self._at) * self.rate)
        self._at = now
        if self.tokens <= 0:
            return False
        self.tokens -= count  # may go below zero: a batch larger than a second's worth waits after
        return True

    def give_back(self, count: int) -> None:
        """Return what a batch that could not be sent took."""
        self.tokens = min(self.rate, self.tokens + count)


@dataclass(slots=True)
class SenderCounters:
    """What the sender did."""

    batches_published: int = 0
    readings_published: int = 0
    batches_acknowledged: int = 0
    statuses_published: int = 0


@dataclass(slots=True)
class _InFlight:
    """Published messages awaiting PUBACK, by paho message id (None: a status message)."""

    by_mid: dict[int, Sealed | None] = field(default_factory=dict)
    batches: int = 0
    statuses: int = 0


class EdgeAgent:
    """A gateway's agent: pollers, sender, link, clock and alarm, started and stopped together."""

    def __init__(
        self, config: EdgeConfig, *, driver_factory: Callable[[Source], Driver] = make_driver
    ) -> None:
        self.config = config
        try:
            self.outbox = Outbox(
                config.data_dir / "outbox.sqlite",
                site=config.site,
                gateway=config.gateway,
                max_bytes=int(config.outbox.max_mb * 1_000_000),
                warn_fraction=config.outbox.warn_at,
                when_full=config.outbox.when_full,
                # below this the policy applies (drop or refuse), so deletes can still commit
                min_free_bytes=int(config.outbox.min_free_mb * 1_000_000) // 2,
                # a new (or wiped) gateway starts from its clock, so its numbers still only grow
                first_seq=now_ms(),
            )
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(
                f"cannot open the outbox in data_dir {config.data_dir}: {exc}. The agent "
                "needs a writable directory there (systemd: StateDirectory=milkguard-edge)"
            ) from exc
        if config.alarm is None and any(c.limits for s in config.sources for c in s.channels):
            log.warning(
                "edge.limits_without_alarm",
                extra={"fix": "add an alarm: command to drive a relay; limits only show in status"},
            )
        self.alarm = LocalAlarm(config.alarm)
        self.stopping = threading.Event()
        self.pollers = [
            Poller(s, self.outbox, self.alarm, self.stopping, driver_factory)
            for s in config.sources
        ]
        self.counters = SenderCounters()
        self.clock_state = ClockState()
        self._read_clock = clock_reader(config.clock.source, config.clock.command)
        self._flight = _InFlight()
        self._last_published_seq = -1
        self._queued: list[Sealed] = []
        self._bucket = _TokenBucket(config.drain.max_readings_per_s)
        self._last_seal = time.monotonic()
        self._status_due = 0.0
        self._seen_connects = 0
        self._status_signature: tuple[bool, bool] = (False, False)
        self._outbox_nearly_full = False
        self._outbox_checked_at = -1.0
        self._topic = batch_topic(config.site, config.gateway)
        self._status_topic = status_topic(config.site, config.gateway)
        self._send_error: str | None = None
        self.link = GatewayLink(config, will=self._last_will)

    # ------------------------------------------------------------------------------ lifetime

    def run(self, stop: threading.Event | None = None) -> None:
        """Run until ``stop`` (or :attr:`stopping`) is set, then shut down without losing data."""
        stop = stop or self.stopping
        log.info("edge.starting", extra={"config": self.config.redacted()})
        self.clock_state = self._read_clock()
        clock_thread = threading.Thread(target=self._watch_clock, name="edge-clock", daemon=True)
        clock_thread.start()
        self.link.start()
        for poller in self.pollers:
            poller.start()
        try:
            while not stop.is_set():
                self._send_guarded()
                stop.wait(0.02)
        finally:
            self.shutdown()

    def _send_guarded(self) -> None:
        """One sender round that can fail (a full disk, a refused publish) without ending the
        agent: sampling must go on whatever the sending side meets; it is retried in a second."""
        try:
            self.send_once()
        except (MilkGuardError, sqlite3.Error, OSError) as exc:
            problem = repr(exc)
            if problem != self._send_error:
                log.error("edge.send_failed", extra={"error": problem})
            self._send_error = problem
            self.stopping.wait(1.0)
        else:
            self._send_error = None

    def shutdown(self, flush_s: float = 5.0) -> None:
        """Stop sampling, send what can be sent within ``flush_s``, say goodbye, close.

        Whatever is not acknowledged by then stays in the outbox for the next start."""
        self.stopping.set()
        for poller in self.pollers:
            poller.join(timeout_s=10)
        try:
            deadline = time.monotonic() + flush_s
            while self.link.connected.is_set() and time.monotonic() < deadline:
                self.send_once(final=True)
                if not self._flight.by_mid and not self.outbox.pending and not self._queued:
                    break
                time.sleep(0.01)
            if self.link.connected.is_set():
                self._publish_status("offline")
                while self._flight.by_mid and time.monotonic() < deadline + 2:
                    self._take_acks()
                    time.sleep(0.01)
        except (MilkGuardError, sqlite3.Error, OSError) as exc:
            log.error("edge.final_send_failed", extra={"error": repr(exc)})
        finally:
            self.link.stop()
            with contextlib.suppress(sqlite3.Error):
                self._take_acks()
            self.alarm.close()
            pending, batches = self.outbox.backlog()
            log.info("edge.stopped", extra={"stored_samples": pending, "stored_batches": batches})
            self.outbox.close()

    # ------------------------------------------------------------------------------ sending

    def send_once(self, *, final: bool = False) -> None:
        """One round of the sender: acknowledgements, status, then as many batches as allowed."""
        self._take_acks()
        self._watch_outbox()
        if not self.link.connected.is_set():
            return
        self._maybe_publish_status()
        window = self.config.drain.in_flight
        while self._flight.batches < window:
            batch = self._next_batch(final)
            if batch is None:
                return
            if not self._bucket.take(batch.readings):
                self._queued.insert(0, batch)
                return
            try:
                mid = self.link.publish(self._topic, batch.payload)
            except PublishRefused:
                self._queued.insert(0, batch)  # paho's queue is full: the same batch, later
                self._bucket.give_back(batch.readings)
                raise
            self._track(mid, batch)
            self._last_published_seq = batch.seq
            self.counters.batches_published += 1
            self.counters.readings_published += batch.readings

    def _next_batch(self, final: bool) -> Sealed | None:
        if not self._queued:
            # batches sealed before a restart go first, under their own numbers
            self._queued = self.outbox.unsent(after_seq=self._last_published_seq, limit=16)
        if self._queued:
            return self._queued.pop(0)
        batching = self.config.batching
        pending = self.outbox.pending
        overdue = time.monotonic() - self._last_seal >= batching.max_delay_s
        if pending == 0 or not (final or overdue or pending >= batching.max_readings):
            return None
        if not clock_plausible(now_ms()):
            return None  # sent_at would be refused: keep the samples until the clock is set
        self._last_seal = time.monotonic()
        return self.outbox.seal(now_ms(), batching.max_readings, clock=self.clock_state)

    def _track(self, mid: int, batch: Sealed | None) -> None:
        # PUBACKs are queued by the network thread and read by this (the sender) thread only,
        # after this call: an acknowledgement can never be seen before its message id is known
        if batch is not None:
            self._flight.batches += 1
        else:
            self._flight.statuses += 1
        self._flight.by_mid[mid] = batch

    def _take_acks(self) -> None:
        done: list[Sealed] = []
        flight = self._flight
        while True:
            try:
                mid = self.link.acks.get_nowait()
            except queue.Empty:
                break
            if mid not in flight.by_mid:
                continue  # not ours to count (e.g. acknowledged again after a reconnect)
            batch = flight.by_mid.pop(mid)
            if batch is None:
                flight.statuses -= 1
            else:
                done.append(batch)
        self._acknowledged(done)

    def _acknowledged(self, batches: list[Sealed]) -> None:
        if not batches:
            return
        self._flight.batches -= len(batches)
        self.outbox.acknowledged(*(b.seq for b in batches))
        self.counters.batches_acknowledged += len(batches)

    # ------------------------------------------------------------------------------ status

    def _watch_outbox(self) -> None:
        """Past the warning threshold, or with the disk itself nearly full, the farm hears it
        locally: the link is likely down, and readings will soon be dropped."""
        now = time.monotonic()
        if now < self._outbox_checked_at + 1.0:
            return
        self._outbox_checked_at = now
        free_mb = shutil.disk_usage(self.config.data_dir).free / 1_000_000
        disk_low = free_mb < self.config.outbox.min_free_mb
        nearly_full = self.outbox.nearly_full or disk_low
        if nearly_full != self._outbox_nearly_full:
            self._outbox_nearly_full = nearly_full
            used = self.outbox.size_bytes / self.outbox.max_bytes
            reason = (
                f"disk nearly full ({free_mb:.0f} MB free)"
                if disk_low
                else f"outbox {used:.0%} full, link down?"
            )
            if nearly_full:
                log.warning("edge.outbox_nearly_full", extra={"reason": reason})
            self.alarm.update("outbox", nearly_full, reason)

    def _maybe_publish_status(self) -> None:
        signature = (self.alarm.active, self._outbox_nearly_full)
        reconnected = self.link.connects != self._seen_connects
        due = time.monotonic() >= self._status_due
        if self._flight.statuses:
            return  # one status at a time: on a silently dead link, heartbeats would pile up
        if reconnected or due or signature != self._status_signature:
            self._seen_connects = self.link.connects
            self._status_signature = signature
            self._publish_status("online")

    def _publish_status(self, state: Literal["online", "offline"]) -> None:
        mid = self.link.publish(self._status_topic, self._status_payload(state), retain=True)
        self._track(mid, None)
        self.counters.statuses_published += 1
        self._status_due = time.monotonic() + self.config.mqtt.heartbeat_s

    def status(self, state: Literal["online", "offline"] = "online") -> GatewayStatus:
        """The gateway's state as published on its status topic."""
        outbox = self.outbox
        return GatewayStatus(
            v=1,
            site=self.config.site,
            gateway=self.config.gateway,
            state=state,
            ts=now_ms(),
            clock=self.clock_state,
            backlog=outbox.pending,
            outbox_bytes=outbox.size_bytes,
            outbox_nearly_full=self._outbox_nearly_full,
            dropped_readings=outbox.counters.dropped_readings,
            refused_readings=outbox.counters.refused_readings,
            alarm=self.alarm.active,
            sources={p.source.name: p.health.as_state() for p in self.pollers},
        )

    def _last_will(self) -> bytes:
        """The ``offline`` status as of now (called by the link before each connect)."""
        try:
            return self._status_payload("offline")
        except sqlite3.Error:  # the outbox is unreadable: say offline, without its figures
            return encode_status(
                GatewayStatus(
                    v=1,
                    site=self.config.site,
                    gateway=self.config.gateway,
                    state="offline",
                    ts=max(now_ms(), EPOCH_2000_MS),
                )
            )

    def _status_payload(self, state: Literal["online", "offline"]) -> bytes:
        return encode_status(self.status(state))

    def _watch_clock(self) -> None:
        while not self.stopping.wait(self.config.clock.every_s):
            state = self._read_clock()
            if state.synced != self.clock_state.synced:
                log.warning("edge.clock_sync_changed", extra={"synced": state.synced})
            self.clock_state = state

"""``milkguard run``: the whole stream on one machine, a thin shell around the pure engine.

Threads: the MQTT broker (Mosquitto as a child process, or amqtt in-process: see
:func:`milkguard.brokers.own_broker`; none when an external one is configured), paho's network
thread feeding a bounded queue, the demo fleet (if handed one), and this module's engine loop,
which owns the engine and every sink (so none of them needs a lock).

Stopping (Ctrl-C or SIGTERM) loses nothing: the simulators stop and wait for their last batches to
be acknowledged; the source keeps reading until the broker has been quiet for a moment; it then
unsubscribes and what is queued is judged; every sink is flushed and closed; the broker stops last.
Deviations still open are reported as open, never closed on the stream's behalf. The engine's
state (readings held for lateness, breaches in progress, open deviations) is saved to
``DATA_DIR/engine.snapshot`` and taken back at the next start under the same plan version, so a
restart in the middle of a breach opens its deviation at the same event time as without it.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import msgspec
from rich.console import Console
from rich.table import Table
from rich.text import Text

from milkguard.broker_security import known_gateways
from milkguard.errors import ConfigError
from milkguard.mqtt import BrokerAddress
from milkguard.settings import broker_address
from stream.engine.core import Engine, SnapshotMismatch
from stream.engine.deviation import DeviationChange
from stream.errors import SinkError
from stream.ingest import Ingest
from stream.live_view import LiveView
from stream.mqtt_io import MqttBatchSource, MqttDeadLetterSink, MqttDeviationSink, MqttOutbox
from stream.plan import LoadedPlan, load_plan
from stream.settings import StreamSettings
from stream.signed import load_stream_signer
from stream.sinks.base import (
    FanOutDeadLetterSink,
    FanOutDeviationSink,
    FanOutTimeSeriesSink,
    TimeSeriesSink,
)
from stream.sinks.console import ConsoleDeviationSink
from stream.sinks.files import JsonlDeadLetterSink, JsonlDeviationSink, LineProtocolFileSink
from stream.sinks.influx import InfluxDBSink

log = logging.getLogger(__name__)

FLUSH_EVERY_S = 1.0
STATUS_EVERY_S = 10.0
QUIET_BEFORE_STOP_S = 0.5
MAX_DRAIN_WAIT_S = 5.0


class Fleet(Protocol):
    """Simulated gateways run beside the stream, against its broker (the demo fleet)."""

    #: printed once the fleet runs: what a newcomer will see happen
    banner: str
    readings_published: int

    def start(self) -> None:
        """Connect and start publishing."""

    def stop(self) -> None:
        """Stop, once the broker has acknowledged what was published."""


@dataclass(frozen=True, slots=True)
class RunSummary:
    """What a run did, printed at exit and returned for tests."""

    counters: dict[str, int]
    open_deviations: int
    data_dir: str


class EmbeddedService:
    """Runs broker, source, engine, sinks and (optionally) the demo fleet until stopped.

    ``demo_fleet`` builds the fleet from the address of the broker the stream runs; the command
    hands it in (the stream does not import the simulators).
    """

    def __init__(
        self,
        settings: StreamSettings,
        console: Console | None = None,
        on_change: Callable[[DeviationChange], None] | None = None,
        demo_fleet: Callable[[BrokerAddress], Fleet] | None = None,
    ) -> None:
        self.settings = settings
        self._demo_fleet = demo_fleet
        self._on_change = on_change
        self.console = console or Console()
        self.plan: LoadedPlan = load_plan(settings.plan)  # fail before starting anything
        self.ingest: Ingest | None = None
        self.source: MqttBatchSource | None = None  # once running
        self.influx: InfluxDBSink | None = None

    def run(self, stop: threading.Event, duration_s: float | None = None) -> RunSummary:
        """Run until ``stop`` is set or ``duration_s`` has passed."""
        settings = self.settings
        from milkguard.brokers import own_broker, own_clients_address  # noqa: PLC0415

        broker = own_broker(  # None: mqtt.broker external
            settings, settings.data_dir, demo_fleet=self._demo_fleet is not None
        )
        address = broker_address(settings) if broker is None else own_clients_address(settings)
        data_dir = settings.data_dir
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot use {data_dir} as the data directory: {exc.strerror}. "
                "Set data_dir (MILKGUARD_DATA_DIR or --data-dir) to a writable place."
            ) from exc
        with ExitStack() as stack:
            if broker is not None:
                stack.enter_context(broker)  # stopped last, after the final drain
            outbox = MqttOutbox(address, f"{settings.mqtt.client_id}-out")
            stack.callback(outbox.close)
            ingest = self._build_ingest(outbox)
            stack.callback(ingest.close)
            if settings.metrics.port is not None:
                from stream.counts import counts_of  # noqa: PLC0415
                from stream.metrics import MetricsServer, StreamCollector  # noqa: PLC0415

                collector = StreamCollector(
                    lambda: counts_of(self.ingest) if self.ingest else None, lambda: self.influx
                )
                stack.enter_context(
                    MetricsServer(collector, settings.metrics.host, settings.metrics.port)
                )
            source = MqttBatchSource(address, settings.mqtt.client_id, settings.mqtt.queue_size)
            source.start()
            self.ingest = ingest
            self.source = source
            log.info(
                "stream.started",
                extra={
                    "plan": self.plan.plan.plan,
                    "plan_version": self.plan.version,
                    "rules": len(self.plan.plan.rules),
                    "broker": repr(address),
                    "data_dir": str(data_dir),
                    "influx": settings.influx.url or "off",
                },
            )
            fleet = None
            if self._demo_fleet is not None:
                fleet = self._demo_fleet(address)
                fleet.start()
                self.console.print(Text(f"{fleet.banner} Ctrl-C stops.", style="dim"))
            deadline = time.monotonic() + duration_s if duration_s is not None else None
            self._loop(source, ingest, stop, deadline)
            if fleet is not None:
                fleet.stop()
            self._drain(source, ingest)
        return self._summary(ingest, fleet.readings_published if fleet is not None else None)

    def _build_ingest(self, outbox: MqttOutbox) -> Ingest:
        settings = self.settings
        data_dir = settings.data_dir
        series: list[TimeSeriesSink] = [LineProtocolFileSink(data_dir)]
        influx = settings.influx
        if influx.enabled:
            sink = InfluxDBSink.from_settings(influx, data_dir)
            series.append(sink)
            self.influx = sink
        return Ingest(
            self._engine(),
            FanOutTimeSeriesSink(series),
            FanOutDeviationSink(
                [
                    JsonlDeviationSink(data_dir / "deviations.jsonl"),
                    ConsoleDeviationSink(self.console),
                    MqttDeviationSink(outbox, load_stream_signer(settings)),
                ]
            ),
            FanOutDeadLetterSink(
                [
                    JsonlDeadLetterSink(
                        data_dir / "deadletter.jsonl",
                        round(settings.deadletter_budget_mb * 1024 * 1024),
                    ),
                    MqttDeadLetterSink(outbox),
                ]
            ),
            on_change=self._on_change,
            future_tolerance_ms=round(settings.future_tolerance_h * 3_600_000),
            known_gateways=known_gateways(settings.mqtt.security),
        )

    @property
    def snapshot_path(self) -> Path:
        """Where the engine's state is kept between runs."""
        return self.settings.data_dir / "engine.snapshot"

    def _engine(self) -> Engine:
        path = self.snapshot_path
        if not path.exists():
            return Engine(self.plan)
        try:
            engine = Engine.restore(self.plan, path.read_bytes())
        except (SnapshotMismatch, msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("engine.fresh_state", extra={"snapshot": str(path), "reason": str(exc)})
            return Engine(self.plan)
        log.info(
            "engine.restored",
            extra={
                "snapshot": str(path),
                "held": engine.held,
                "open": len(engine.open_deviations()),
            },
        )
        return engine

    def _save_engine(self, engine: Engine) -> None:
        path = self.snapshot_path
        partial = path.with_suffix(".partial")
        partial.write_bytes(engine.snapshot())
        with partial.open("rb") as written:
            os.fsync(written.fileno())
        partial.replace(path)  # atomic: a crash leaves the old snapshot or the new one

    def _loop(
        self,
        source: MqttBatchSource,
        ingest: Ingest,
        stop: threading.Event,
        deadline: float | None,
    ) -> None:
        live = LiveView.for_terminal(self.console, self.plan)
        next_flush = time.monotonic() + FLUSH_EVERY_S
        next_status = time.monotonic() + STATUS_EVERY_S
        held_back = False
        with live if live is not None else ExitStack():
            while not stop.is_set():
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    break
                if ingest.saturated:
                    # InfluxDB is behind: take nothing more from MQTT (the broker holds it),
                    # but keep flushing and keep watching for a stop
                    if not held_back:
                        log.warning("stream.backpressure", extra={"queued": source.queue.qsize()})
                        held_back = True
                    stop.wait(0.2)
                    next_flush = 0.0
                else:
                    held_back = False
                    try:
                        message = source.queue.get(timeout=0.2)
                    except queue.Empty:
                        # no data: move the engine's clock so silence and deadlines still fire
                        ingest.tick(time.time_ns() // 1_000_000)
                    else:
                        ingest.handle(*message)
                now = time.monotonic()
                if now >= next_flush:
                    self._flush(ingest)
                    next_flush = now + FLUSH_EVERY_S
                    if live is not None:  # drawn on the view's thread, not this one
                        live.offer(ingest.latest, ingest.engine.open_deviations())
                if now >= next_status:
                    self._log_status(ingest, source)
                    next_status = now + STATUS_EVERY_S

    def _drain(self, source: MqttBatchSource, ingest: Ingest) -> None:
        """Judge what the broker still delivers until it is quiet, then disconnect and judge
        everything received; what the broker holds after that waits in the persistent session."""
        give_up = time.monotonic() + MAX_DRAIN_WAIT_S
        quiet_since = time.monotonic()
        while time.monotonic() < give_up:
            try:
                message = source.queue.get(timeout=0.05)
            except queue.Empty:
                if time.monotonic() - quiet_since >= QUIET_BEFORE_STOP_S:
                    break
                continue
            ingest.handle(*message)
            quiet_since = time.monotonic()
        source.stop(lambda message: ingest.handle(*message))
        self._flush(ingest)
        self._save_engine(ingest.engine)

    def _flush(self, ingest: Ingest) -> None:
        try:
            ingest.flush()
        except SinkError as exc:
            # the data stays buffered and is retried at the next flush; the local files have it
            log.warning("sink.flush_incomplete", extra={"error": str(exc)})

    def _log_status(self, ingest: Ingest, source: MqttBatchSource) -> None:
        counters = ingest.counters
        engine = ingest.engine.counters
        log.info(
            "stream.status",
            extra={
                "batches": counters.batches,
                "readings": counters.readings,
                "rejected": counters.rejected_payloads + counters.rejected_readings,
                "duplicates": counters.duplicates,
                "late": engine.late,
                "open_deviations": len(ingest.engine.open_deviations()),
                "queued": source.queue.qsize(),
            },
        )

    def _summary(self, ingest: Ingest, simulated: int | None) -> RunSummary:
        counters = {
            **{f"ingest.{k}": v for k, v in _fields(ingest.counters).items()},
            **{f"engine.{k}": v for k, v in _fields(ingest.engine.counters).items()},
        }
        counters["engine.held"] = ingest.engine.held
        if simulated is not None:
            counters["simulators.readings_published"] = simulated
        still_open = ingest.engine.open_deviations()
        table = Table(title="MilkGuard run summary", title_justify="left")
        table.add_column("counter")
        table.add_column("value", justify="right")
        for key, value in counters.items():
            table.add_row(key, f"{value:,}")
        table.add_row("deviations still open", str(len(still_open)))
        self.console.print(table)
        for d in still_open:
            self.console.print(
                Text.assemble(
                    ("still open", "bold red"),
                    f" {d.site}/{d.asset} rule {d.rule_id} since event time {d.start_ms} "
                    f"(see {self.settings.data_dir}/deviations.jsonl)",
                )
            )
        self.console.print(Text(f"stores: {self.settings.data_dir}/", style="dim"))
        return RunSummary(counters, len(still_open), str(self.settings.data_dir))


def _fields(counters: object) -> dict[str, int]:
    return {name: getattr(counters, name) for name in counters.__slots__}  # type: ignore[attr-defined]

"""``milkguard run``: the whole stream on one machine, a thin shell around the pure engine.

Threads: the MQTT broker (Mosquitto as a child process, or amqtt in-process: see
:func:`milkguard.brokers.own_broker`; none when an external one is configured), paho's network
thread feeding a bounded queue, the demo fleet (if handed one), and this module's engine loop,
which owns the engine and every sink (so none of them needs a lock).

Durability contract (:mod:`stream.checkpoint`). The engine thread takes what has arrived (up to
``mqtt.max_unacknowledged`` messages) and judges it as one batch: the engine advances once, to
the newest receive time. Every ``checkpoint_s``, when ``mqtt.max_unacknowledged`` messages wait
for their acknowledgement, when MQTT goes quiet, and at stop, it checkpoints, in this order:

1. outputs durable: the archive (when on: :mod:`stream.archive`, every message taken and every
   clock tick, so a replay judges as this run did), the line-protocol file, ``deviations.jsonl``
   and ``deadletter.jsonl`` written and fsynced; InfluxDB (when configured) has confirmed its
   lines; the broker has acknowledged the deviations and dead letters published on MQTT;
   the engine's judged history retained since the last checkpoint appended to its journal,
   ``DATA_DIR/stream.checkpoint.history.N``, and fsynced (:mod:`stream.journal`);
2. ``DATA_DIR/stream.checkpoint`` replaced atomically: the engine's state (readings held for
   lateness, breaches in progress, open deviations; a light snapshot, without the history),
   the duplicate windows, and each file's durable size (the journal's too);
3. only then the MQTT messages are acknowledged (paho's manual acknowledgement, in order).

If a step fails (InfluxDB down), nothing is acknowledged and the next checkpoint tries again;
the broker stops sending once its in-flight window is full: backpressure, nothing dropped.

After a crash or ``kill -9`` anywhere, the next start restores the checkpoint, cuts the local
files back to its sizes, and the broker sends again everything not acknowledged: each reading
is in the line-protocol files once, no acknowledged message is lost, and the deviations are
judged again from the same state, so a change written before the crash comes again with the
same id (consumers of the MQTT deviations drop repeats by id and change). The engine is not
moved by the wall clock before MQTT has been connected for a moment, and a restored channel
counts as heard at the restart (``Engine.excuse_outage``), so readings the broker held during
the outage arrive before any channel can look silent; a channel that stays silent opens its
"monitoring lost" with the same start as without the restart. Until the source is first
idle, batches sent before the connection do not count as evidence of a gateway's clock (their
delay is the outage's, not a clock fault). What an in-process (amqtt)
broker had accepted dies with the process: durability across kills needs an external or child
Mosquitto.

Stopping (Ctrl-C or SIGTERM): the simulators stop and wait for their last batches to be
acknowledged; the source keeps reading until the broker has been quiet for a moment, a
checkpoint acknowledges everything judged, the source disconnects (keeping its persistent
session), and the last checkpoint is saved; the broker stops last. Deviations still open are
reported as open, never closed on the stream's behalf. If the child Mosquitto dies under the
stream, the stream stops the same way and exits with an error (:class:`BrokerError`) saying so,
rather than run on with no gateway able to reach it.
"""

from __future__ import annotations

import logging
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

from milkguard.broker_security import MAX_INFLIGHT, known_gateways
from milkguard.errors import BrokerError, ConfigError
from milkguard.mqtt import BrokerAddress
from milkguard.settings import broker_address
from stream.archive import ArchiveWriter, Start, resume
from stream.checkpoint import (
    CHECKPOINT_FORMAT,
    Checkpoint,
    Checkpointer,
    CheckpointFile,
    PositionedFiles,
    file_names,
    file_paths,
    positions_of,
    restore_files,
)
from stream.engine.core import Engine, SnapshotMismatch
from stream.engine.deviation import DeviationChange
from stream.ingest import Ingest
from stream.journal import HistoryJournal
from stream.live_view import LiveView
from stream.mqtt_io import (
    Message,
    MqttBatchSource,
    MqttDeadLetterSink,
    MqttDeviationSink,
    MqttOutbox,
)
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
#: After connecting, how long the wall clock does not move the engine: the broker first sends
#: what it held while the stream was down, and a channel must not look silent before it is in.
CONNECTED_BEFORE_TICKS_S = 1.0
#: How long to wait for more messages once some are taken and not yet acknowledged; a source
#: quiet this long is checkpointed at once, so a broker with a small in-flight window (Mosquitto
#: defaults to 20) is not left waiting for the periodic checkpoint. Not with the child
#: Mosquitto, whose window is known to be wider than ``mqtt.max_unacknowledged``: there a quiet
#: checkpoint only costs (each is about four fsyncs, 10-30 ms on a shared disk, during which no
#: deviation is judged), and between batches arriving at a steady pace the source is quiet
#: every few milliseconds.
LINGER_S = 0.01
#: How long to wait for the first message when nothing waits for its acknowledgement, or when
#: the broker's window cannot fill before the checkpoint bound does.
IDLE_WAIT_S = 0.2
#: The engine's clock moves with the wall clock at most this often while no data comes.
TICK_EVERY_S = 0.2


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
        self._files: tuple[PositionedFiles, ...] = ()  # the local files a checkpoint records
        self._journal = HistoryJournal(self.checkpoint_path)  # the engine's judged history
        self._letters_file: JsonlDeadLetterSink | None = None  # its daily budget carries on
        self._started_ms = 0  # when the engine was made or restored (the archive's start)
        #: True when the broker's in-flight window is known to be wider than
        #: mqtt.max_unacknowledged (the child Mosquitto's configuration): the broker never stops
        #: sending before a checkpoint is due anyway, so a quiet source needs no checkpoint
        self._window_ample = False

    def run(self, stop: threading.Event, duration_s: float | None = None) -> RunSummary:
        """Run until ``stop`` is set or ``duration_s`` has passed."""
        settings = self.settings
        from milkguard.brokers import own_broker, own_clients_address  # noqa: PLC0415
        from milkguard.mosquitto import MosquittoChild  # noqa: PLC0415

        broker = own_broker(  # None: mqtt.broker external
            settings, settings.data_dir, demo_fleet=self._demo_fleet is not None
        )
        self._window_ample = (
            isinstance(broker, MosquittoChild) and settings.mqtt.max_unacknowledged < MAX_INFLIGHT
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
            store = CheckpointFile(self.checkpoint_path)
            saved = store.load()
            ingest = self._build_ingest(outbox, saved)
            stack.callback(ingest.close)
            stack.callback(self._journal.close)
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
            checkpointer = self._checkpointer(store, ingest, source)
            checkpointer.checkpoint()  # the files' sizes now: what a crash before the next cuts to
            # what the broker held while the stream was down says nothing of gateways' clocks
            ingest.clocks_sent_from_ms = time.time_ns() // 1_000_000
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
            lost = broker.lost if isinstance(broker, MosquittoChild) else _never_lost
            self._loop(source, ingest, checkpointer, stop, deadline, lost=lost)
            if fleet is not None:
                fleet.stop()
            self._drain(source, ingest, checkpointer)
        summary = self._summary(ingest, fleet.readings_published if fleet is not None else None)
        if (reason := lost()) is not None:
            raise BrokerError(
                f"{reason.rstrip('.')}. No gateway reaches the stream without it, so the stream "
                "stopped rather than run on unmonitored: start milkguard run again (a supervisor "
                "such as systemd with Restart=on-failure does it); what was not acknowledged is "
                f"judged again from the checkpoint in {data_dir}"
            )
        return summary

    def _build_ingest(self, outbox: MqttOutbox, saved: Checkpoint | None) -> Ingest:
        """The ingest and its sinks, carried on from ``saved``: engine, duplicate windows, and the
        local files cut back to the checkpointed sizes."""
        settings = self.settings
        data_dir = settings.data_dir
        series_file = LineProtocolFileSink(data_dir)
        deviations_file = JsonlDeviationSink(data_dir / "deviations.jsonl")
        letters_file = JsonlDeadLetterSink(
            data_dir / "deadletter.jsonl", round(settings.deadletter_budget_mb * 1024 * 1024)
        )
        archive = self._archive()
        self._files = (series_file, deviations_file, letters_file, self._journal)
        if archive is not None:
            self._files = (archive, *self._files)
        self._letters_file = letters_file
        if saved is not None:
            restore_files(self._files, file_paths(saved.files, data_dir))
            letters_file.restore_budget(saved.extra)
        series: list[TimeSeriesSink] = [series_file]
        influx = settings.influx
        if influx.enabled:
            sink = InfluxDBSink.from_settings(influx, data_dir)
            series.append(sink)
            self.influx = sink
        engine, restored = self._engine(saved)
        ingest = Ingest(
            engine,
            FanOutTimeSeriesSink(series),
            FanOutDeviationSink(
                [
                    deviations_file,
                    ConsoleDeviationSink(self.console),
                    MqttDeviationSink(outbox, load_stream_signer(settings)),
                ]
            ),
            FanOutDeadLetterSink([letters_file, MqttDeadLetterSink(outbox)]),
            on_change=self._on_change,
            future_tolerance_ms=round(settings.future_tolerance_h * 3_600_000),
            known_gateways=known_gateways(settings.mqtt.security),
            archive=archive,
            dashboards=True,
            limits_every_ms=round(settings.limits_every_s * 1000),
        )
        if saved is not None:
            ingest.restore_windows(saved.windows)
        if archive is not None:
            archive.start(
                Start(
                    at=self._started_ms,
                    engine="restored" if restored else "fresh",
                    windows="fresh" if saved is None else "restored",
                    plan_version=self.plan.version,
                    future_tolerance_ms=ingest.future_tolerance_ms,
                    known_gateways=sorted(known_gateways(settings.mqtt.security)),
                )
            )
        return ingest

    def _archive(self) -> ArchiveWriter | None:
        """The archive's writer when it is on (unset: on with the demo fleet)."""
        archive = self.settings.archive
        enabled = archive.enabled if archive.enabled is not None else self._demo_fleet is not None
        if not enabled:
            return None
        return ArchiveWriter(
            archive.directory(self.settings.data_dir),
            rotate_bytes=round(archive.rotate_mb * 1024 * 1024),
            keep_days=archive.keep_days,
            max_bytes=round(archive.max_mb * 1024 * 1024),
            compress=archive.compress,
        )

    @property
    def checkpoint_path(self) -> Path:
        """Where the stream's checkpoint is kept between runs."""
        return self.settings.data_dir / "stream.checkpoint"

    @property
    def legacy_snapshot_path(self) -> Path:
        """Where releases before checkpoints kept the engine's state at a clean stop."""
        return self.settings.data_dir / "engine.snapshot"

    def _engine(self, saved: Checkpoint | None) -> tuple[Engine, bool]:
        """The engine to start with, and whether it was restored (else fresh)."""
        self._started_ms = time.time_ns() // 1_000_000
        if saved is not None:
            data, where = saved.engine, self.checkpoint_path
        elif self.legacy_snapshot_path.exists():
            data, where = self.legacy_snapshot_path.read_bytes(), self.legacy_snapshot_path
        else:
            engine = Engine(self.plan)
            resume(engine, False, self._started_ms)
            return engine, False
        try:
            # the checkpoint's light snapshot takes its history from the journal (a legacy
            # snapshot holds it); none read (lost): older late readings count beyond the bound
            engine = Engine.restore(self.plan, data, history=self._journal.records)
        except (SnapshotMismatch, msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("engine.fresh_state", extra={"snapshot": str(where), "reason": str(exc)})
            engine = Engine(self.plan)
            resume(engine, False, self._started_ms)
            return engine, False
        # the stream was down: what it did not hear meanwhile is in the broker, not silence
        resume(engine, True, self._started_ms)
        log.info(
            "engine.restored",
            extra={
                "snapshot": str(where),
                "held": engine.held,
                "open": len(engine.open_deviations()),
                "history": "lost" if self._journal.lost else "restored",
            },
        )
        return engine, True

    def _checkpointer(
        self, store: CheckpointFile, ingest: Ingest, source: MqttBatchSource
    ) -> Checkpointer[Message]:
        data_dir = self.settings.data_dir

        journal = self._journal

        def state() -> Checkpoint:
            return Checkpoint(
                format=CHECKPOINT_FORMAT,
                plan_version=self.plan.version,
                engine=ingest.engine.snapshot(history=False),  # the history is in the journal
                windows=ingest.windows(),
                files=file_names(positions_of(self._files), data_dir),
                extra=self._letters_file.budget_used() if self._letters_file else {},
            )

        return Checkpointer(
            store,
            make_durable=journal.durable_after(ingest.flush, ingest.engine),
            state=state,
            acknowledge=source.acknowledge,
            every_s=self.settings.checkpoint_s,
            max_unacked=self.settings.mqtt.max_unacknowledged,
            on_saved=journal.saved,
        )

    def _loop(
        self,
        source: MqttBatchSource,
        ingest: Ingest,
        checkpointer: Checkpointer[Message],
        stop: threading.Event,
        deadline: float | None,
        *,
        lost: Callable[[], str | None] = lambda: None,
    ) -> None:
        live = LiveView.for_terminal(self.console, self.plan)
        next_view = time.monotonic() + FLUSH_EVERY_S
        next_status = time.monotonic() + STATUS_EVERY_S
        next_tick = time.monotonic() + CONNECTED_BEFORE_TICKS_S
        held_back = False
        with live if live is not None else ExitStack():
            while not stop.is_set():
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    break
                if lost() is not None:  # the child broker died: see run()
                    break
                if ingest.saturated:
                    # InfluxDB is behind: take nothing more from MQTT (the broker holds it),
                    # but keep checkpointing (which writes to InfluxDB) and watching for a stop
                    if not held_back:
                        log.warning("stream.backpressure", extra={"queued": len(source.queue)})
                        held_back = True
                    stop.wait(0.2)
                    checkpointer.checkpoint()
                    continue
                held_back = False
                taken = self._take(source, checkpointer)
                if taken:
                    ingest.handle_many(m[:3] for m in taken)
                    checkpointer.taken(taken)
                else:
                    if checkpointer.unacknowledged and not self._window_ample:
                        # MQTT is quiet, maybe because the broker's window is full: acknowledge
                        checkpointer.checkpoint()
                    if now >= next_tick and source.subscribed.is_set():
                        # no data: the broker's backlog is in, and the engine's clock moves so
                        # silence and deadlines fire (also while a checkpoint waits for InfluxDB)
                        ingest.clocks_sent_from_ms = -1
                        ingest.tick(time.time_ns() // 1_000_000)
                        checkpointer.changed()
                        next_tick = now + TICK_EVERY_S
                if checkpointer.due():
                    checkpointer.checkpoint()
                now = time.monotonic()
                if live is not None and now >= next_view:  # drawn on the view's thread
                    live.offer(ingest.latest, ingest.engine.open_deviations())
                    next_view = now + FLUSH_EVERY_S
                if now >= next_status:
                    self._log_status(ingest, source, checkpointer)
                    next_status = now + STATUS_EVERY_S

    def _take(self, source: MqttBatchSource, checkpointer: Checkpointer[Message]) -> list[Message]:
        """What has arrived, up to the checkpoint bound; a short wait once some wait for their
        acknowledgement (unless the broker's window is ample), a longer one when idle."""
        room = max(1, checkpointer.max_unacked - checkpointer.unacknowledged)
        lingering = checkpointer.unacknowledged and not self._window_ample
        return source.take(room, LINGER_S if lingering else IDLE_WAIT_S)

    def _drain(
        self, source: MqttBatchSource, ingest: Ingest, checkpointer: Checkpointer[Message]
    ) -> None:
        """Judge what the broker still delivers until it is quiet, checkpoint (acknowledging it
        all), then disconnect and judge what came meanwhile; what the broker holds after that
        waits in the persistent session."""
        give_up = time.monotonic() + MAX_DRAIN_WAIT_S
        quiet_since = time.monotonic()
        while time.monotonic() < give_up:
            taken = self._take(source, checkpointer)
            if not taken:
                if time.monotonic() - quiet_since >= QUIET_BEFORE_STOP_S:
                    break
                continue
            ingest.handle_many(m[:3] for m in taken)
            checkpointer.taken(taken)
            if checkpointer.due():
                checkpointer.checkpoint()
            quiet_since = time.monotonic()
        self._last_checkpoint(checkpointer, give_up)
        late: list[Message] = []
        source.stop(late.append)
        if late:  # judged and kept; their acknowledgements went with the connection
            ingest.handle_many(m[:3] for m in late)
            checkpointer.taken(late)
        self._last_checkpoint(checkpointer, give_up)

    @staticmethod
    def _last_checkpoint(checkpointer: Checkpointer[Message], give_up: float) -> None:
        """Checkpoint, retrying while an output is not confirmed, until ``give_up``; what is not
        checkpointed then is judged again at the next start."""
        checkpointer.changed()
        while not checkpointer.checkpoint():
            if time.monotonic() >= give_up:
                log.error(
                    "checkpoint.not_saved_at_stop",
                    extra={"unacknowledged": checkpointer.unacknowledged},
                )
                return
            time.sleep(0.2)

    def _log_status(
        self, ingest: Ingest, source: MqttBatchSource, checkpointer: Checkpointer[Message]
    ) -> None:
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
                "queued": len(source.queue),
                "unacknowledged": checkpointer.unacknowledged,
                "checkpoints": checkpointer.saved,
                "checkpoints_failed": checkpointer.failed,
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


def _never_lost() -> str | None:
    """An external broker's fate is not the stream's to watch (its clients reconnect), nor an
    in-process one's (it dies with the stream)."""
    return None


def _fields(counters: object) -> dict[str, int]:
    return {name: getattr(counters, name) for name in counters.__slots__}  # type: ignore[attr-defined]

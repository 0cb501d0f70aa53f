"""Operational counters of the stream for Prometheus: ``/metrics`` on ``metrics.host:port``.

Read live from the counters ingest, the engine and the InfluxDB sink keep anyway, at scrape
time (a custom collector): nothing is counted twice and the hot path pays nothing for metrics.

    milkguard_messages_received_total        messages taken from the broker (MQTT or Kafka)
    milkguard_batches_received_total         valid batches
    milkguard_readings_received_total        readings in valid batches
    milkguard_payloads_rejected_total        payloads dead-lettered whole
    milkguard_readings_rejected_total        readings dead-lettered alone (unit, id)
    milkguard_batches_duplicate_total        batches dropped as repeats (same gateway and seq)
    milkguard_readings_late_total            readings behind what their channel already judged
    milkguard_readings_judged_total          readings the rules judged
    milkguard_readings_duplicate_total       readings of batches dropped as repeats
    milkguard_readings_in_rejected_payloads_total  readings of payloads dead-lettered whole
    milkguard_readings_quarantined_total     readings stamped too far ahead (in rejected too)
    milkguard_events_quarantined_total       events stamped too far ahead, dead-lettered
    milkguard_ids_capped_total               ids not tracked because of a memory cap
    milkguard_deviations_total{change}       deviations opened and closed
    milkguard_sink_lines_written_total{sink} lines a time-series sink has made durable
    milkguard_sink_write_failures_total{sink} failed writes, each retried with backoff
    milkguard_sink_lines_rejected_total{sink} lines the server refused for good (kept in a file)
    milkguard_sink_buffered_lines{sink}      lines waiting for the sink: its lag
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from milkguard.errors import ConfigError
from stream.counts import StreamCounts
from stream.sinks.influx import InfluxDBSink

log = logging.getLogger(__name__)


class StreamCollector(Collector):
    """Turns the live counters of a running stream into Prometheus metrics."""

    def __init__(
        self,
        counts: Callable[[], StreamCounts | None],
        influx: Callable[[], InfluxDBSink | None] = lambda: None,
        extra: Callable[[], Iterator[Metric]] = lambda: iter(()),
    ) -> None:
        self._counts = counts
        self._influx = influx
        self._extra = extra

    def collect(self) -> Iterator[Metric]:
        """One scrape: the counters as they are now."""
        seen = self._counts()
        if seen is not None:
            for name, value, what in (
                ("messages_received", seen.messages, "messages taken from the broker"),
                ("batches_received", seen.batches, "valid batches"),
                ("readings_received", seen.readings, "readings in valid batches"),
                ("payloads_rejected", seen.rejected_payloads, "payloads dead-lettered whole"),
                ("readings_rejected", seen.rejected_readings, "readings dead-lettered alone"),
                ("batches_duplicate", seen.duplicates, "batches dropped as repeats"),
                ("readings_late", seen.late, "readings behind their channel's judgement"),
                (
                    "readings_late_judged",
                    seen.late_judged,
                    "late readings judged at their own time, within late_judge_s",
                ),
                (
                    "readings_late_beyond_bound",
                    seen.late_beyond_bound,
                    "late readings beyond late_judge_s: stored, not judged",
                ),
                ("readings_judged", seen.judged, "readings the rules judged"),
                ("readings_duplicate", seen.readings_duplicate, "readings of repeated batches"),
                (
                    "readings_in_rejected_payloads",
                    seen.readings_in_rejected_payloads,
                    "readings of payloads dead-lettered whole",
                ),
                (
                    "readings_quarantined",
                    seen.readings_quarantined,
                    "readings stamped too far ahead of their receive time",
                ),
                (
                    "events_quarantined",
                    seen.events_quarantined,
                    "events stamped too far ahead of their receive time",
                ),
                ("ids_capped", seen.capped, "ids not tracked because of a memory cap"),
                ("statuses_received", seen.statuses, "gateway status messages stored"),
            ):
                yield CounterMetricFamily(f"milkguard_{name}", what, value=value)
            deviations = CounterMetricFamily(
                "milkguard_deviations", "deviations opened and closed", labels=["change"]
            )
            deviations.add_metric(["opened"], seen.opened)
            deviations.add_metric(["closed"], seen.closed)
            yield deviations
        yield from self._extra()
        influx = self._influx()
        if influx is not None:
            for name, value, what in (
                ("lines_written", influx.written, "lines made durable"),
                ("write_failures", influx.failures, "failed writes, retried with backoff"),
                ("lines_rejected", influx.rejected, "lines refused for good (kept in a file)"),
            ):
                family = CounterMetricFamily(f"milkguard_sink_{name}", what, labels=["sink"])
                family.add_metric(["influxdb"], value)
                yield family
            lag = GaugeMetricFamily(
                "milkguard_sink_buffered_lines", "lines waiting for the sink", labels=["sink"]
            )
            lag.add_metric(["influxdb"], influx.buffered)
            yield lag


class BridgeCollector(Collector):
    """The MQTT-to-Kafka bridge's counters (``milkguard_bridge_*_total``)."""

    def __init__(self, counters: Callable[[], object], ready: Callable[[], bool]) -> None:
        self._counters = counters
        self._ready = ready

    def collect(self) -> Iterator[Metric]:
        """One scrape."""
        yield GaugeMetricFamily(
            "milkguard_bridge_subscribed", "1 once subscribed to the batches", value=self._ready()
        )
        counters = self._counters()
        for name, what in (
            ("received", "MQTT messages taken from the broker"),
            ("produced", "batches Kafka was asked to store"),
            ("rejected", "payloads sent to the dead-letter topic"),
            ("acknowledged", "messages acknowledged to MQTT once Kafka had them"),
            ("stale_acks", "acknowledgements not sent: their MQTT connection had ended"),
        ):
            value = getattr(counters, name)
            yield CounterMetricFamily(f"milkguard_bridge_{name}", what, value=value)


class MetricsServer(AbstractContextManager["MetricsServer"]):
    """``/metrics`` over HTTP for one collector, on its own registry and thread."""

    def __init__(self, collector: Collector, host: str, port: int) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        try:
            self._server, self._thread = start_http_server(port, host, self.registry)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on {host}:{port}: {exc.strerror}. "
                "Choose another metrics.port (MILKGUARD_METRICS__PORT)."
            ) from exc
        log.info("metrics.serving", extra={"url": f"http://{host}:{port}/metrics"})

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class WorkerView(Protocol):
    """What the metrics read of a running Faust worker (:class:`stream.worker.Worker`)."""

    influx: InfluxDBSink | None

    @property
    def counters(self) -> Any:
        """The worker's own counters: checkpoints, skipped, restored, deviations and letters
        sent."""

    def counts(self) -> StreamCounts:
        """Ingest and engine counters of every partition the worker judged."""

    def assigned(self) -> set[int]:
        """The partitions of the batches topic assigned to the worker now."""

    def unacknowledged(self) -> int:
        """Messages taken but not yet made durable by a checkpoint."""


class WorkerCollector(StreamCollector):
    """A Faust worker's counters: its partitions' summed, its InfluxDB sink's, and its own."""

    def __init__(self, worker: WorkerView) -> None:
        super().__init__(worker.counts, lambda: worker.influx, self._worker_metrics)
        self._worker = worker

    def _worker_metrics(self) -> Iterator[Metric]:
        worker = self._worker
        yield GaugeMetricFamily(
            "milkguard_worker_partitions",
            "partitions of the batches topic assigned to this worker",
            value=len(worker.assigned()),
        )
        yield GaugeMetricFamily(
            "milkguard_worker_unacknowledged_messages",
            "messages taken but not yet made durable by a checkpoint",
            value=worker.unacknowledged(),
        )
        for name, what in (
            ("checkpoints", "checkpoints: outputs confirmed, state saved, offsets released"),
            ("skipped", "messages a restored state already included"),
            ("rewinds", "partitions sought back to a message that had not reached the agent"),
            ("restored", "partitions carried on from a saved state"),
            ("deviations_sent", "deviation changes produced to the deviations topic"),
            ("letters_sent", "dead letters produced to the dead-letter topic"),
        ):
            value = getattr(worker.counters, name)
            yield CounterMetricFamily(f"milkguard_worker_{name}", what, value=value)

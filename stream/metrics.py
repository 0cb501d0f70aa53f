"""Operational counters of the stream for Prometheus: ``/metrics`` on ``metrics.host:port``.

Read live from the counters ingest, the engine and the InfluxDB sink keep anyway, at scrape
time (a custom collector): nothing is counted twice and the hot path pays nothing for metrics.

    milkguard_messages_received_total        MQTT messages taken from the broker
    milkguard_batches_received_total         valid batches
    milkguard_readings_received_total        readings in valid batches
    milkguard_payloads_rejected_total        payloads dead-lettered whole
    milkguard_readings_rejected_total        readings dead-lettered alone (unit, id)
    milkguard_batches_duplicate_total        batches dropped as repeats (same gateway and seq)
    milkguard_readings_late_total            readings behind what their channel already judged
    milkguard_readings_judged_total          readings the rules judged
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

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from milkguard.errors import ConfigError
from stream.ingest import Ingest
from stream.sinks.influx import InfluxDBSink

log = logging.getLogger(__name__)


class StreamCollector(Collector):
    """Turns the live counters of a running stream into Prometheus metrics."""

    def __init__(
        self,
        ingest: Callable[[], Ingest | None],
        influx: Callable[[], InfluxDBSink | None] = lambda: None,
    ) -> None:
        self._ingest = ingest
        self._influx = influx

    def collect(self) -> Iterator[Metric]:
        """One scrape: the counters as they are now."""
        ingest = self._ingest()
        if ingest is not None:
            seen = ingest.counters
            engine = ingest.engine.counters
            for name, value, what in (
                ("messages_received", seen.messages, "MQTT messages taken from the broker"),
                ("batches_received", seen.batches, "valid batches"),
                ("readings_received", seen.readings, "readings in valid batches"),
                ("payloads_rejected", seen.rejected_payloads, "payloads dead-lettered whole"),
                ("readings_rejected", seen.rejected_readings, "readings dead-lettered alone"),
                ("batches_duplicate", seen.duplicates, "batches dropped as repeats"),
                ("readings_late", engine.late, "readings behind their channel's judgement"),
                ("readings_judged", engine.judged, "readings the rules judged"),
            ):
                yield CounterMetricFamily(f"milkguard_{name}", what, value=value)
            deviations = CounterMetricFamily(
                "milkguard_deviations", "deviations opened and closed", labels=["change"]
            )
            deviations.add_metric(["opened"], engine.opened)
            deviations.add_metric(["closed"], engine.closed)
            yield deviations
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

"""The yardstick of ``bench pipeline --kafka``: the Faust agent a competent team writes first.

It does what ``milkguard worker`` does at its simplest, with the tools such a team reaches for,
as ``bench engine``'s plain loop does (its pydantic models): pydantic v2 parses each batch
(``model_validate_json``, one model per reading), a dict of thresholds and a dict of state per
channel, a threshold check that opens and closes an alert (produced to Kafka, keyed by site),
and a line of line protocol per reading (an f-string) to the same file sink the worker writes
without InfluxDB, flushed (fsynced) every second. Faust acks each message after the agent has
handled it and commits on its own schedule. No duplicate windows, no watermarks, no silence,
no state in a changelog: less work than MilkGuard does.

Run as its own process, as a worker is: ``python -m benchmarks.plain_faust CONFIG.json`` (see
:class:`PlainConfig`). It serves ``plain_readings_total`` and ``plain_partitions`` on
``metrics_port`` for the benchmark to watch.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import BaseModel

from benchmarks.engine import PlainJudge
from stream.sinks.files import LineProtocolFileSink


class PlainConfig(BaseModel):
    """What the benchmark tells the plain agent (a JSON file)."""

    bootstrap: str
    topic: str
    alerts_topic: str
    group: str
    partitions: int
    metrics_port: int
    data_dir: Path
    #: "site/asset/channel" -> the maximum it may read
    limits: dict[str, float]


class _Counters(Collector):
    """Readings handled and partitions held, read at scrape time."""

    def __init__(self, app: Any, topic: str) -> None:
        self.app = app
        self.topic = topic
        self.readings = 0

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily("plain_readings", "readings handled", value=self.readings)
        held = [tp for tp in self.app.assignor.assigned_actives() if tp.topic == self.topic]
        yield GaugeMetricFamily("plain_partitions", "partitions held", value=len(held))


def build_app(config: PlainConfig) -> tuple[Any, _Counters, LineProtocolFileSink]:
    """The Faust app, its counters and its line-protocol sink."""
    import faust  # noqa: PLC0415

    app = faust.App(
        config.group,
        broker=f"kafka://{config.bootstrap}",
        store="memory://",
        web_enabled=False,
        topic_partitions=config.partitions,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=6,
        broker_heartbeat_interval=1,
        producer_acks=-1,
    )
    batches = app.topic(config.topic, value_type=bytes, value_serializer="raw")
    alerts = app.topic(config.alerts_topic, value_serializer="raw")
    counters = _Counters(app, config.topic)
    sink = LineProtocolFileSink(config.data_dir)
    limits: dict[tuple[str, str, str], float] = {
        tuple(name.split("/")): limit  # type: ignore[misc]
        for name, limit in config.limits.items()
    }
    judge_payload = PlainJudge(limits).judge

    async def judge(stream: Any) -> None:
        async for payload in stream:
            readings, lines, changes = judge_payload(payload)
            for change in changes:
                await alerts.send(key=change["key"][0].encode(), value=json.dumps(change))
            sink.add(lines)
            counters.readings += readings

    async def flush() -> None:
        sink.flush()

    app.agent(batches, name="plain-judge")(judge)
    app.timer(1.0)(flush)
    return app, counters, sink


def main(argv: list[str]) -> int:
    """Run the plain agent until SIGTERM."""
    from faust.worker import Worker  # noqa: PLC0415

    config = PlainConfig.model_validate_json(Path(argv[0]).read_bytes())
    app, counters, sink = build_app(config)
    registry = CollectorRegistry(auto_describe=True)
    registry.register(counters)
    start_http_server(config.metrics_port, addr="127.0.0.1", registry=registry)
    try:
        Worker(app, loglevel="warning", quiet=True).execute_from_commandline()
    except SystemExit as exit_:
        return int(exit_.code or 0)
    finally:
        sink.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Ingest judging what has arrived as one batch, and a restart's backlog read without a false
time-sync fault."""

from __future__ import annotations

from milkguard.contract.v1 import Batch, Reading, batch_topic, encode_batch
from stream.engine import Engine
from stream.ingest import Ingest
from stream.plan import LoadedPlan
from stream.sinks.memory import MemoryDeadLetterSink, MemoryDeviationSink, MemoryTimeSeriesSink
from tests.conftest import T0

TOPIC = batch_topic("truck-07", "truck-07-gw")


def _ingest(plan: LoadedPlan) -> tuple[Ingest, MemoryTimeSeriesSink, MemoryDeviationSink]:
    series, deviations = MemoryTimeSeriesSink(), MemoryDeviationSink()
    return Ingest(Engine(plan), series, deviations, MemoryDeadLetterSink()), series, deviations


def _messages(count: int, *, delay_ms: int = 50) -> list[tuple[str, bytes, int]]:
    """A truck compartment above 6 degC for a minute, one batch a second, each received
    ``delay_ms`` after it was sent."""
    messages = []
    for second in range(count):
        temp = 8.0 if 20 <= second < 80 else 4.0
        readings = [
            Reading("comp-1", "temp", temp, "degC", T0 + second * 1000),
            Reading("comp-2", "temp", 4.0, "degC", T0 + second * 1000),
        ]
        batch = Batch(
            v=1,
            site="truck-07",
            gateway="truck-07-gw",
            seq=second + 1,
            sent_at=T0 + second * 1000,
            readings=readings,
        )
        messages.append((TOPIC, encode_batch(batch), T0 + second * 1000 + delay_ms))
    return messages


def test_a_drained_queue_judged_as_one_batch_gives_what_message_by_message_gives(
    demo_plan: LoadedPlan,
) -> None:
    one, one_series, one_deviations = _ingest(demo_plan)
    many, many_series, many_deviations = _ingest(demo_plan)
    messages = _messages(120)
    for message in messages:
        one.handle(*message)
    for start in range(0, len(messages), 25):
        many.handle_many(messages[start : start + 25])

    # (channels never heard go silent from the first advance, which batching makes later)
    limits = [c for c in one_deviations.changes if c.deviation.kind == "critical_limit"]
    assert [c.kind for c in limits] == ["opened", "closed"]
    assert [
        (c.kind, c.deviation.id, c.deviation.end_ms)
        for c in many_deviations.changes
        if c.deviation.kind == "critical_limit"
    ] == [(c.kind, c.deviation.id, c.deviation.end_ms) for c in limits]
    readings = sorted(x for x in one_series.pending if x.startswith("reading,"))
    assert sorted(x for x in many_series.pending if x.startswith("reading,")) == readings
    assert many.counters == one.counters


def test_batches_held_by_the_broker_during_a_restart_are_no_evidence_of_a_clock_fault(
    demo_plan: LoadedPlan,
) -> None:
    backlog = _messages(60, delay_ms=30_000)  # the stream was down for 30 s
    naive, _, naive_deviations = _ingest(demo_plan)
    naive.handle_many(backlog)
    assert any(c.deviation.kind == "time_sync" for c in naive_deviations.changes)

    restarted, _, deviations = _ingest(demo_plan)
    restarted.clocks_sent_from_ms = T0 + 60_000 + 30_000  # connected after the outage
    restarted.handle_many(backlog)
    assert not [c for c in deviations.changes if c.deviation.kind == "time_sync"]


def _gateway_batches(gateway: str, asset: str, seconds: range) -> list[tuple[str, bytes, int]]:
    """One reading a second of ``asset`` from ``gateway``, each received 50 ms after sending."""
    messages = []
    for second in seconds:
        stamp = T0 + second * 1000
        batch = Batch(
            v=1,
            site="truck-07",
            gateway=gateway,
            seq=second + 1,
            sent_at=stamp,
            readings=[Reading(asset, "temp", 4.0, "degC", stamp)],
        )
        messages.append((batch_topic("truck-07", gateway), encode_batch(batch), stamp + 50))
    return messages


def _silent_compartments(excuse: bool, demo_plan: LoadedPlan) -> list[str]:
    """Two gateways, the stream down for 30 s; after the restart the broker's backlog of the
    front compartment's gateway comes in before the rear one's."""
    before, _, _ = _ingest(demo_plan)
    for front, rear in zip(
        _gateway_batches("front-gw", "comp-1", range(10)),
        _gateway_batches("rear-gw", "comp-2", range(10)),
        strict=True,
    ):
        before.handle_many([front, rear])
    engine = Engine.restore(demo_plan, before.engine.snapshot())
    restart_ms = T0 + 40_000
    if excuse:
        engine.excuse_outage(restart_ms)
    deviations = MemoryDeviationSink()
    after = Ingest(engine, MemoryTimeSeriesSink(), deviations, MemoryDeadLetterSink())
    after.restore_windows(before.windows())
    for gateway, asset in (("front-gw", "comp-1"), ("rear-gw", "comp-2")):
        backlog = _gateway_batches(gateway, asset, range(10, 40))
        after.handle_many([(t, p, restart_ms + 100) for t, p, _ in backlog])
    return [
        c.deviation.asset
        for c in deviations.changes
        if c.deviation.kind == "monitoring_lost" and c.deviation.asset.startswith("comp")
    ]


def test_after_a_restart_a_gateway_whose_backlog_comes_later_is_not_found_silent(
    demo_plan: LoadedPlan,
) -> None:
    assert "comp-2" in _silent_compartments(excuse=False, demo_plan=demo_plan)
    assert _silent_compartments(excuse=True, demo_plan=demo_plan) == []

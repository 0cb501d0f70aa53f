"""Ingest: bad input is dead-lettered with its reason and counted; duplicates are ignored."""

from __future__ import annotations

import json

import pytest

from milkguard.contract.v1 import Batch, Reading, batch_topic, encode_batch
from stream.engine import Engine
from stream.ingest import Ingest, SequenceWindow
from stream.plan import LoadedPlan
from stream.sinks.memory import MemoryDeadLetterSink, MemoryDeviationSink, MemoryTimeSeriesSink
from tests.conftest import T0

TOPIC = batch_topic("truck-07", "truck-07-gw")


class Harness:
    def __init__(self, plan: LoadedPlan, window: int = 1024) -> None:
        self.series = MemoryTimeSeriesSink()
        self.deviations = MemoryDeviationSink()
        self.deadletter = MemoryDeadLetterSink()
        self.ingest = Ingest(
            Engine(plan),
            self.series,
            self.deviations,
            self.deadletter,
            dedupe_window=window,
            clock="event",
        )
        self.seq = 0

    def send(self, *temps: tuple[int, float], seq: int | None = None) -> None:
        if seq is None:
            seq = self.seq = self.seq + 1
        readings = [Reading("comp-2", "temp", v, "degC", T0 + s * 1000) for s, v in temps]
        payload = encode_batch(
            Batch(
                v=1, site="truck-07", gateway="truck-07-gw", seq=seq, sent_at=T0, readings=readings
            )
        )
        self.ingest.handle(TOPIC, payload, T0)


@pytest.fixture
def harness(demo_plan: LoadedPlan) -> Harness:
    return Harness(demo_plan)


def test_valid_batches_are_stored_and_judged(harness: Harness) -> None:
    for second in range(0, 40, 10):
        harness.send((second, 8.0))
    harness.ingest.finish()

    limits = [c for c in harness.deviations.changes if c.deviation.kind == "critical_limit"]
    assert [c.kind for c in limits] == ["opened"]
    assert len([line for line in harness.series.lines if line.startswith("reading,")]) == 4
    assert any(line.startswith("deviation,") for line in harness.series.lines)
    assert harness.ingest.counters.readings == 4


def test_malformed_json_is_dead_lettered_with_the_reason_and_traffic_continues(
    harness: Harness,
) -> None:
    harness.send((0, 4.0))
    harness.ingest.handle(TOPIC, b'{"v": 1, "site": ', T0)
    harness.send((10, 4.1))

    (letter,) = harness.deadletter.letters
    assert letter.reason.startswith("not valid JSON")
    assert letter.payload == '{"v": 1, "site": '
    assert (letter.site, letter.gateway, letter.topic) == ("truck-07", "truck-07-gw", TOPIC)
    assert harness.ingest.counters.rejected_payloads == 1
    assert harness.ingest.counters.readings == 2


def test_an_invalid_field_is_dead_lettered_naming_the_field(harness: Harness) -> None:
    bad = {
        "v": 1,
        "site": "truck-07",
        "gateway": "truck-07-gw",
        "seq": 1,
        "sent_at": T0,
        "readings": [
            {"asset": "comp-2", "channel": "temp", "value": None, "unit": "degC", "ts": T0}
        ],
    }

    harness.ingest.handle(TOPIC, json.dumps(bad).encode(), T0)

    assert harness.deadletter.letters[0].reason == (
        "Expected `float`, got `null` - at `$.readings[0].value`"
    )


def test_timestamps_in_seconds_get_a_hint_to_send_milliseconds(harness: Harness) -> None:
    bad = {"v": 1, "site": "truck-07", "gateway": "truck-07-gw", "seq": 1, "sent_at": T0 // 1000}

    harness.ingest.handle(TOPIC, json.dumps(bad).encode(), T0)

    assert "probably seconds: multiply by 1000" in harness.deadletter.letters[0].reason


def test_binary_garbage_is_kept_in_base64(harness: Harness) -> None:
    harness.ingest.handle(TOPIC, b"\xff\xfe\x00", T0)

    (letter,) = harness.deadletter.letters
    assert (letter.encoding, letter.payload) == ("base64", "//4A")


def test_a_payload_whose_ids_disagree_with_its_topic_is_refused(harness: Harness) -> None:
    payload = encode_batch(Batch(v=1, site="truck-07", gateway="other-gw", seq=1, sent_at=T0))

    harness.ingest.handle(TOPIC, payload, T0)

    assert "must match" in harness.deadletter.letters[0].reason


def test_a_message_on_a_topic_outside_the_scheme_is_dead_lettered(harness: Harness) -> None:
    harness.ingest.handle("milkguard/v1/gw/truck-07", b"{}", T0)

    assert "not a batch topic" in harness.deadletter.letters[0].reason
    assert harness.deadletter.letters[0].site is None


def test_a_duplicate_batch_is_ignored_and_counted(harness: Harness) -> None:
    harness.send((0, 8.0), seq=5)
    harness.send((0, 8.0), seq=5)
    harness.ingest.flush()

    assert harness.ingest.counters.duplicates == 1
    assert harness.ingest.counters.batches == 1
    assert len(harness.series.lines) == 1
    assert harness.ingest.engine.counters.late == 0


def test_a_reading_in_the_wrong_unit_is_dead_lettered_and_the_rest_of_its_batch_kept(
    harness: Harness,
) -> None:
    readings = [
        Reading("comp-2", "temp", 4.0, "degC", T0),
        Reading("comp-2", "temp", 45.0, "%", T0 + 1000),
    ]
    payload = encode_batch(
        Batch(v=1, site="truck-07", gateway="truck-07-gw", seq=1, sent_at=T0, readings=readings)
    )

    harness.ingest.handle(TOPIC, payload, T0)
    harness.ingest.finish()

    (letter,) = harness.deadletter.letters
    assert "unit '%' but the plan declares 'degC'" in letter.reason
    assert json.loads(letter.payload)["value"] == 45.0
    assert harness.ingest.counters.rejected_readings == 1
    assert harness.ingest.engine.counters.judged == 1
    readings = [line for line in harness.series.lines if line.startswith("reading,")]
    assert [line.split(" ")[1] for line in readings] == ["value=4.0"]
    assert harness.ingest.latest[("truck-07", "comp-2", "temp")].value == 4.0


def test_a_sequence_far_behind_the_window_is_dead_lettered_not_silently_dropped(
    demo_plan: LoadedPlan,
) -> None:
    harness = Harness(demo_plan, window=10)
    harness.send((0, 4.0), seq=100)
    harness.send((1, 4.0), seq=3)

    assert "Did the gateway reset its counter?" in harness.deadletter.letters[0].reason


def test_the_sequence_window_accepts_reordered_batches_once() -> None:
    window = SequenceWindow(size=100)

    assert [window.admit(s) for s in (5, 3, 4, 5, 3, 6)] == [True, True, True, False, False, True]


def test_the_sequence_window_cannot_judge_numbers_a_whole_window_behind() -> None:
    window = SequenceWindow(size=100)
    window.admit(500)

    assert window.admit(401) is True
    assert window.admit(400) is None


def test_the_sequence_window_stays_bounded() -> None:
    window = SequenceWindow(size=100)
    for seq in range(10_000):
        window.admit(seq)

    assert len(window._seen) <= 200
    assert window.admit(9_950) is False


def test_a_sequence_window_saved_and_restored_judges_as_before() -> None:
    window = SequenceWindow(size=100)
    for seq in (*range(1, 60), 70, 72):
        window.admit(seq)

    high, ranges = window.state()
    again = SequenceWindow.restored(100, high, ranges)

    assert ranges == [(1, 59), (70, 70), (72, 72)]  # runs, not every number
    assert [again.admit(s) for s in (59, 60, 70, 71, 72, 73)] == [
        False,
        True,
        False,
        True,
        False,
        True,
    ]


def test_a_reading_whose_id_is_unsafe_for_topics_and_tags_is_dead_lettered_alone(
    harness: Harness,
) -> None:
    readings = [
        Reading("comp-2", "temp", 4.0, "degC", T0),
        Reading("comp 2,x=1", "temp", 4.0, "degC", T0 + 1000),
    ]
    payload = encode_batch(
        Batch(v=1, site="truck-07", gateway="truck-07-gw", seq=1, sent_at=T0, readings=readings)
    )

    harness.ingest.handle(TOPIC, payload, T0)
    harness.ingest.flush()

    (letter,) = harness.deadletter.letters
    assert letter.reason.startswith("asset id 'comp 2,x=1' has characters outside")
    assert len(harness.series.lines) == 1
    assert harness.ingest.counters.rejected_readings == 1


def test_unplanned_but_valid_ids_are_stored(harness: Harness) -> None:
    payload = encode_batch(
        Batch(
            v=1,
            site="truck-07",
            gateway="truck-07-gw",
            seq=1,
            sent_at=T0,
            readings=[Reading("gps", "speed", 60.0, "km/h", T0)],
        )
    )

    harness.ingest.handle(TOPIC, payload, T0)
    harness.ingest.flush()

    assert harness.deadletter.letters == []
    assert harness.series.lines[0].startswith("reading,site=truck-07,asset=gps,channel=speed")


def test_unplanned_and_late_readings_are_logged_without_a_flood(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING", logger="stream.ingest")
    harness.send((100, 4.0))
    harness.ingest.tick(T0 + 200_000)  # judged: stamped ahead of its receive time, it waits
    for _ in range(12):
        harness.send((50, 4.0))  # each older than the last judged sample
    unplanned = [Reading("comp-9", "temp", 4.0, "degC", T0)]
    for seq in (1000, 1001):
        harness.ingest.handle(
            TOPIC,
            encode_batch(
                Batch(
                    v=1,
                    site="truck-07",
                    gateway="truck-07-gw",
                    seq=seq,
                    sent_at=T0,
                    readings=unplanned,
                )
            ),
            T0,
        )

    events = [(r.message, getattr(r, "late_so_far", None)) for r in caplog.records]
    assert events == [("reading.late", 1), ("reading.late", 10), ("reading.unplanned", None)]
    assert harness.ingest.engine.counters.late == 12
    assert harness.ingest.engine.counters.unplanned == 2

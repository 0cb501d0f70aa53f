"""Ingest is total: no byte sequence, value, timestamp or sequence number stops it, every reading
fed is counted once, and what it remembers about unknown ids is bounded."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import stream.ingest as ingest_module
from milkguard.contract.v1 import (
    PLAUSIBLE,
    Batch,
    CipStart,
    Reading,
    batch_topic,
    count_readings,
    encode_batch,
)
from stream.engine import Engine
from stream.ingest import DEFAULT_FUTURE_TOLERANCE_MS, Ingest, ReplayClock
from stream.plan import LoadedPlan
from stream.sinks.base import KEPT_PAYLOAD_BYTES, KEPT_PREFIX_BYTES
from stream.sinks.files import JsonlDeadLetterSink
from stream.sinks.memory import MemoryDeadLetterSink, MemoryDeviationSink, MemoryTimeSeriesSink
from tests.conftest import T0

SITE, GATEWAY = "truck-07", "truck-07-gw"
TOPIC = batch_topic(SITE, GATEWAY)
YEAR_2099 = 4_070_908_800_000  # 2099-01-01T00:00:00Z: valid for the contract, absurd here


class Rig:
    """An ingest over in-memory sinks, judged on receive time as the live stream does."""

    def __init__(self, plan: LoadedPlan, **options: object) -> None:
        self.series = MemoryTimeSeriesSink()
        self.deviations = MemoryDeviationSink()
        self.deadletter = MemoryDeadLetterSink()
        self.ingest = Ingest(
            Engine(plan),
            self.series,
            self.deviations,
            self.deadletter,
            **options,  # type: ignore[arg-type]
        )
        self.seq = 0
        self.fed = 0

    def batch(
        self,
        readings: list[Reading],
        *,
        seq: int | None = None,
        sent_at: int = T0,
        gateway: str = GATEWAY,
        site: str = SITE,
        received: int | None = None,
        **fields: object,
    ) -> None:
        if seq is None:
            seq = self.seq = self.seq + 1
        payload = encode_batch(
            Batch(
                v=1,
                site=site,
                gateway=gateway,
                seq=seq,
                sent_at=sent_at,
                readings=readings,
                **fields,  # type: ignore[arg-type]
            )
        )
        self.raw(batch_topic(site, gateway), payload, sent_at if received is None else received)

    def raw(self, topic: str, payload: bytes, received: int = T0) -> None:
        self.fed += count_readings(payload)
        self.ingest.handle(topic, payload, received)

    def assert_every_reading_counted(self) -> None:
        c = self.ingest.counters
        assert c.messages == c.batches + c.duplicates + c.rejected_payloads
        assert self.fed == c.readings + c.readings_duplicate + c.readings_in_rejected_payloads
        assert c.readings_quarantined <= c.rejected_readings <= c.readings


def temp(seconds: float, value: float = 4.0) -> Reading:
    return Reading("comp-2", "temp", value, "degC", T0 + round(seconds * 1000))


@pytest.fixture
def rig(demo_plan: LoadedPlan) -> Rig:
    return Rig(demo_plan)


# ------------------------------------------------------------------ bytes


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"\xff":1}', "not valid UTF-8"),
        (b'{"v":1,"site":"\xc3\x28"}', "not valid UTF-8"),
        (b'{"clock":' * 100_000 + b"}" * 100_000, ""),
        (b"[" * 1_000_000, ""),
        (b"\x00" * 10, "not valid JSON"),
        (b"", "not valid JSON"),
    ],
    ids=["invalid-utf8-key", "invalid-utf8-value", "deep-objects", "deep-arrays", "nul", "empty"],
)
def test_a_payload_no_decoder_accepts_is_dead_lettered_and_the_stream_goes_on(
    rig: Rig, payload: bytes, reason: str
) -> None:
    rig.raw(TOPIC, payload)
    rig.batch([temp(0)])

    letter = rig.deadletter.letters[0]
    assert reason in letter.reason
    assert rig.ingest.counters.rejected_payloads == 1
    assert rig.ingest.counters.batches == 1
    rig.assert_every_reading_counted()


def test_a_replayed_line_of_invalid_utf8_is_dead_lettered_too(rig: Rig) -> None:
    rig.ingest.handle_recorded(b'{"\xff":1}', "file.jsonl:1")

    assert rig.ingest.counters.rejected_payloads == 1


def test_a_huge_payload_is_kept_as_hash_length_and_prefix(rig: Rig) -> None:
    readings = [temp(i % 60) for i in range(60_000)]  # more than a batch may hold
    payload = encode_batch(Batch(v=1, site=SITE, gateway=GATEWAY, seq=1, sent_at=T0)).replace(
        b'"readings":[]', b'"readings":' + msgspec.json.encode(readings)
    )
    assert len(payload) > KEPT_PAYLOAD_BYTES

    rig.raw(TOPIC, payload)

    (letter,) = rig.deadletter.letters
    assert letter.truncated
    assert letter.payload_bytes == len(payload)
    assert letter.payload_sha256 == hashlib.sha256(payload).hexdigest()
    assert letter.payload == payload[:KEPT_PREFIX_BYTES].decode()
    assert rig.ingest.counters.readings_in_rejected_payloads == 60_000
    rig.assert_every_reading_counted()


def test_a_payload_up_to_the_bound_is_kept_whole(rig: Rig) -> None:
    payload = b"x" * KEPT_PAYLOAD_BYTES

    rig.raw(TOPIC, payload)

    (letter,) = rig.deadletter.letters
    assert (letter.truncated, letter.payload, letter.payload_sha256) == (False, "x" * 65536, None)


# ------------------------------------------------------------------ values


@pytest.mark.parametrize("value", [1e308, -1e308, 401.0, -91.0])
def test_an_implausible_value_is_dead_lettered_alone_naming_where_and_the_bound(
    rig: Rig, value: float
) -> None:
    rig.batch([temp(0), temp(1, value), temp(2)])
    rig.ingest.flush()

    (letter,) = rig.deadletter.letters
    for part in (GATEWAY, "comp-2", "temp", repr(value), "-90..400 degC", "convert"):
        assert part in letter.reason
    readings = [line for line in rig.series.lines if line.startswith("reading,")]
    assert len(readings) == 2
    assert not any("inf" in line or "nan" in line for line in rig.series.lines)
    assert rig.ingest.counters.rejected_readings == 1
    assert rig.ingest.engine.counters.submitted == 2
    rig.assert_every_reading_counted()


def test_every_unit_has_bounds_and_a_value_outside_any_is_refused(rig: Rig) -> None:
    for unit, (low, high) in PLAUSIBLE.items():
        for value in (low, high):
            rig.batch([Reading("x", "y", value, unit, T0)])  # type: ignore[arg-type]
        for value in (low - 1, high + 1):
            rig.batch([Reading("x", "y", value, unit, T0)])  # type: ignore[arg-type]

    assert rig.ingest.counters.rejected_readings == 2 * len(PLAUSIBLE)
    rig.assert_every_reading_counted()


def test_a_non_finite_number_in_the_json_is_refused_at_the_boundary(rig: Rig) -> None:
    good = encode_batch(
        Batch(v=1, site=SITE, gateway=GATEWAY, seq=1, sent_at=T0, readings=[temp(0)])
    )

    rig.raw(TOPIC, good.replace(b'"value":4.0', b'"value":1e999'))

    assert rig.ingest.counters.rejected_payloads == 1
    assert rig.series.lines == []


# ------------------------------------------------------------------ timestamps


def _breach_after_an_outlier(rig: Rig, outlier_ts: int) -> None:
    """Healthy readings, one stamped ``outlier_ts``, quiet time (the channel goes idle), then a
    60 s breach of comp-2's 6 degC limit that must open its deviation on time."""
    for second in range(0, 30, 5):
        rig.batch([temp(second)], sent_at=T0 + second * 1000)
    rig.batch([Reading("comp-2", "temp", 4.0, "degC", outlier_ts)], sent_at=T0 + 30_000)
    rig.ingest.tick(T0 + 100_000)  # quiet for longer than the allowed lateness
    for second in range(150, 215, 5):  # 60 s above the 6 degC limit
        rig.batch([temp(second, 9.0)], sent_at=T0 + second * 1000)
    rig.ingest.tick(T0 + 400_000)

    opened = [
        c.deviation
        for c in rig.deviations.changes
        if c.kind == "opened" and c.deviation.kind == "critical_limit"
    ]
    assert [d.rule_id for d in opened] == ["cn-transport-max-comp-2"]
    assert opened[0].start_ms == T0 + 150_000
    assert rig.ingest.engine.counters.late == 0
    rig.assert_every_reading_counted()


def test_one_reading_stamped_2099_is_quarantined_and_a_breach_still_opens_its_deviation(
    rig: Rig,
) -> None:
    _breach_after_an_outlier(rig, YEAR_2099)

    (letter,) = rig.deadletter.letters
    assert "quarantined" in letter.reason
    assert "ahead of its batch's receive time" in letter.reason
    assert rig.ingest.counters.readings_quarantined == 1
    assert rig.ingest.counters.rejected_readings == 1


@pytest.mark.parametrize("ahead_s", [180, 1800, 7000])
def test_one_reading_stamped_ahead_within_the_tolerance_does_not_blind_its_channel(
    rig: Rig, ahead_s: int
) -> None:
    # not quarantined; the idle channel used to release it at once, and every real reading
    # before its stamp was then "late"
    _breach_after_an_outlier(rig, T0 + 30_000 + ahead_s * 1000)

    assert rig.ingest.counters.readings_quarantined == 0


def test_one_batch_with_its_sent_at_and_a_reading_an_hour_ahead_does_not_blind_either(
    rig: Rig,
) -> None:
    # its sent_at makes the gateway's clock look an hour fast, for that batch only
    for second in range(0, 30, 5):
        rig.batch([temp(second)], sent_at=T0 + second * 1000)
    outlier = Reading("comp-2", "temp", 4.0, "degC", T0 + 3_630_000)
    rig.batch([outlier], sent_at=T0 + 3_630_000, received=T0 + 30_000)
    rig.ingest.tick(T0 + 100_000)
    for second in range(150, 215, 5):
        rig.batch([temp(second, 9.0)], sent_at=T0 + second * 1000)
    rig.ingest.tick(T0 + 400_000)

    opened = [c.deviation.kind for c in rig.deviations.changes if c.kind == "opened"]
    assert "critical_limit" in opened
    assert rig.ingest.engine.counters.late == 0


def test_a_reading_held_because_it_is_stamped_ahead_does_not_mask_a_silence(rig: Rig) -> None:
    for second in range(0, 30, 5):
        rig.batch([temp(second)], sent_at=T0 + second * 1000)
    outlier = Reading("comp-2", "temp", 4.0, "degC", T0 + 30_000 + 1_800_000)
    rig.batch([outlier], sent_at=T0 + 30_000)
    for second in range(40, 600, 10):  # the sensor is silent from here on
        rig.ingest.tick(T0 + second * 1000)

    lost = [
        c.deviation
        for c in rig.deviations.changes
        if c.kind == "opened" and c.deviation.kind == "monitoring_lost"
    ]
    # from the last real reading: the outlier stamped ahead is no record of the gap
    assert any(d.asset == "comp-2" and d.start_ms == T0 + 25_000 for d in lost)


def test_a_fast_gateways_readings_are_released_when_its_channel_goes_quiet(rig: Rig) -> None:
    fast = 10 * 60_000
    for second in range(0, 65, 5):  # above the limit for a minute, on a clock 10 min fast
        rig.batch(
            [temp(second, 9.0)], sent_at=T0 + fast + second * 1000, received=T0 + second * 1000
        )
    rig.ingest.tick(T0 + 200_000)

    opened = [c.deviation.kind for c in rig.deviations.changes if c.kind == "opened"]
    assert "critical_limit" in opened


def test_a_gateway_ten_minutes_fast_is_still_judged(rig: Rig) -> None:
    fast = 10 * 60_000
    rig.batch([temp(0, 9.0)], sent_at=T0 + fast, received=T0)

    assert rig.ingest.counters.readings_quarantined == 0
    assert rig.ingest.engine.counters.submitted == 1


def test_an_event_stamped_far_ahead_is_quarantined_and_not_applied(rig: Rig) -> None:
    rig.batch([], events=[CipStart(asset="comp-2", ts=YEAR_2099)])

    (letter,) = rig.deadletter.letters
    assert "quarantined, not applied" in letter.reason
    assert rig.ingest.counters.events_quarantined == 1
    assert rig.ingest.engine.counters.events == 0


def test_the_tolerance_is_a_setting_with_a_default_of_hours(demo_plan: LoadedPlan) -> None:
    rig = Rig(demo_plan, future_tolerance_ms=60_000)
    rig.batch([temp(120)])  # two minutes ahead of its receive time

    assert DEFAULT_FUTURE_TOLERANCE_MS >= 3_600_000
    assert rig.ingest.counters.readings_quarantined == 1


def test_the_replay_clock_moves_forward_and_no_single_outlier_moves_it() -> None:
    clock = ReplayClock(tolerance_ms=3_600_000)

    assert clock.receive(T0) == T0
    assert clock.receive(T0 + 5_000) == T0 + 5_000
    assert clock.receive(T0 + 1_000) == T0 + 5_000  # never back
    assert clock.receive(YEAR_2099) == T0 + 5_000  # one absurd stamp moves nothing
    assert clock.receive(T0 + 6_000) == T0 + 6_000
    day = 86_400_000
    assert clock.receive(T0 + day) == T0 + 6_000  # a jump, not yet confirmed
    assert clock.receive(T0 + day + 5_000) == T0 + day + 5_000  # confirmed by the next


def test_one_sent_at_an_hour_ahead_within_the_tolerance_does_not_move_the_replay_clock() -> None:
    clock = ReplayClock(tolerance_ms=DEFAULT_FUTURE_TOLERANCE_MS)

    assert clock.receive(T0) == T0
    assert clock.receive(T0 + 3_600_000) == T0  # within the tolerance, but one batch alone
    assert clock.receive(T0 + 2_000) == T0 + 2_000
    assert clock.receive(T0 + 3_000 + 3_600_000) == T0 + 2_000
    assert clock.receive(T0 + 4_000 + 3_600_000) == T0 + 4_000 + 3_600_000  # a gap, confirmed


def test_a_replay_whose_first_batch_has_an_absurd_sent_at_starts_at_its_readings() -> None:
    clock = ReplayClock(tolerance_ms=3_600_000)

    assert clock.receive(YEAR_2099, newest=T0) == T0
    assert clock.receive(T0 + 1_000) == T0 + 1_000


def test_a_replayed_file_with_an_outlier_sent_at_judges_the_rest_on_time(rig: Rig) -> None:
    def line(seq: int, sent_at: int, readings: list[Reading]) -> bytes:
        return encode_batch(
            Batch(v=1, site=SITE, gateway=GATEWAY, seq=seq, sent_at=sent_at, readings=readings)
        )

    rig.ingest.handle_recorded(line(1, T0, [temp(0)]), "f:1")
    rig.ingest.handle_recorded(line(2, YEAR_2099, [temp(1), temp(2)]), "f:2")
    rig.ingest.handle_recorded(line(3, T0 + 3_000, [temp(3)]), "f:3")

    assert rig.ingest.replay_clock.now == T0 + 3_000
    assert rig.ingest.counters.readings == 4
    assert rig.ingest.counters.rejected_readings == 0


# ------------------------------------------------------------------ sequence numbers


def test_a_seq_of_2_to_the_63_is_dead_lettered_and_does_not_lock_the_gateway_out(
    rig: Rig,
) -> None:
    rig.batch([temp(0)], seq=10)
    rig.batch([temp(1)], seq=2**63)
    rig.batch([temp(2)], seq=11)
    rig.batch([temp(3)], seq=12)

    (letter,) = rig.deadletter.letters
    assert "can be neither a counter nor a seed" in letter.reason
    assert rig.ingest.counters.batches == 3
    assert rig.ingest.counters.readings_in_rejected_payloads == 1
    rig.assert_every_reading_counted()


def test_earlier_seqs_stay_duplicates_after_an_absurd_one(rig: Rig) -> None:
    rig.batch([temp(0)], seq=10)
    rig.batch([temp(1)], seq=2**63)
    rig.batch([temp(0)], seq=10)  # a replay of the first

    assert rig.ingest.counters.duplicates == 1
    assert rig.ingest.counters.readings_duplicate == 1
    rig.assert_every_reading_counted()


def test_a_gateway_that_reseeds_seq_from_its_clock_after_a_restart_keeps_working(
    rig: Rig,
) -> None:
    rig.batch([temp(0)], seq=500)
    rig.batch([temp(1)], seq=501)
    seed = T0 + 2_000  # restarted, lost its counter: seeds from its clock in ms
    rig.batch([temp(2)], seq=seed, sent_at=T0 + 2_000)
    rig.batch([temp(3)], seq=seed + 1, sent_at=T0 + 3_000)
    rig.batch([temp(1)], seq=501, sent_at=T0 + 3_000)  # the old numbers are not replayable

    assert rig.ingest.counters.batches == 4
    assert rig.ingest.counters.duplicates == 1
    rig.assert_every_reading_counted()


@pytest.mark.parametrize(
    "absurd", [502 + 2**39, T0 + DEFAULT_FUTURE_TOLERANCE_MS // 4], ids=["bit-flip", "ahead"]
)
def test_batches_whose_seq_jumps_within_the_limit_do_not_lock_the_gateway_out(
    rig: Rig, absurd: int
) -> None:
    # within the limit (it could be a seed from a clock), so it is taken; the gateway's counter
    # then goes on where it was, and must still be heard
    for seq in range(500, 503):
        rig.batch([temp(seq - 500)], seq=seq)
    rig.batch([temp(3)], seq=absurd)
    rig.batch([temp(3)], seq=absurd + 1_000_000)  # and another, further still
    for seq in range(503, 510):
        rig.batch([temp(seq - 499)], seq=seq)
    rig.batch([temp(2)], seq=502)  # an earlier batch replayed: still a duplicate

    assert rig.ingest.counters.batches == 3 + 2 + 7
    assert rig.ingest.counters.duplicates == 1
    assert not rig.deadletter.letters
    rig.assert_every_reading_counted()


def test_a_stream_of_absurd_seqs_does_not_push_the_gateways_own_counter_out(rig: Rig) -> None:
    for seq in range(500, 510):
        rig.batch([temp(seq - 500)], seq=seq)
    for number in range(1, 8):  # glitches between the counter's batches, each a jump
        rig.batch([temp(9 + number)], seq=T0 + number * 1_000_000)
        rig.batch([temp(9 + number)], seq=509 + number)

    assert rig.ingest.counters.batches == 10 + 7 + 7
    assert not rig.deadletter.letters


# ------------------------------------------------------------------ memory


def test_unknown_gateways_beyond_the_cap_are_counted_and_logged_not_tracked(
    demo_plan: LoadedPlan, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(ingest_module, "MAX_OTHER_GATEWAYS", 5)
    monkeypatch.setattr(ingest_module, "MAX_UNPLANNED_LATEST", 20)
    known = ("elsewhere", "gw-known")
    rig = Rig(demo_plan, known_gateways=[known])
    for number in range(50):
        rig.batch(
            [Reading("a", f"c{i}", 1.0, "degC", T0) for i in range(3)],
            site="elsewhere",
            gateway=f"gw-{number}",
        )
    rig.batch([temp(0)], site="elsewhere", gateway="gw-known")
    rig.batch([temp(0)])  # a plan site's gateway and channel

    assert len(rig.ingest.windows()) == 5 + 2
    assert "elsewhere/gw-known" in rig.ingest.windows()
    assert f"{SITE}/{GATEWAY}" in rig.ingest.windows()
    assert (SITE, "comp-2", "temp") in rig.ingest.latest
    assert len(rig.ingest.latest) <= 20 + 1
    assert rig.ingest.counters.capped > 0
    assert rig.ingest.counters.batches == 52  # judged all the same, without dedupe
    assert [r for r in caplog.records if r.message == "ingest.capped"]
    rig.assert_every_reading_counted()


def test_restored_windows_stay_within_the_caps_so_restarts_cannot_grow_them(
    demo_plan: LoadedPlan, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest_module, "MAX_OTHER_GATEWAYS", 5)
    saved: dict[str, tuple[int, list[tuple[int, int]]]] = {}
    for _restart in range(3):
        rig = Rig(demo_plan, known_gateways=[("elsewhere", "gw-known")])
        rig.ingest.restore_windows(saved)
        for number in range(20):
            rig.batch([], site="elsewhere", gateway=f"gw-{_restart}-{number}")
        rig.batch([], site="elsewhere", gateway="gw-known")
        saved = rig.ingest.windows()
        assert len(saved) <= 5 + 1


def test_a_hostile_or_corrupt_saved_window_is_bounded_or_skipped(demo_plan: LoadedPlan) -> None:
    rig = Rig(demo_plan)
    rig.ingest.restore_windows(
        {
            f"{SITE}/{GATEWAY}": (10, [(0, 10**15)]),  # a range far beyond its own highest
            "no-slash": (5, [(1, 5)]),
        }
    )

    (name,) = rig.ingest.windows()
    high, ranges = rig.ingest.windows()[name]
    assert (high, ranges) == (10, [(0, 10)])
    rig.batch([temp(0)], seq=11)
    assert rig.ingest.counters.batches == 1


# ------------------------------------------------------------------ property


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)
READING = st.fixed_dictionaries(
    {
        "asset": st.sampled_from(["comp-2", "a b", "x" * 70, "tank-1"]),
        "channel": st.sampled_from(["temp", "milk_temp", "c"]),
        "value": st.floats(allow_nan=False) | st.integers(-(2**70), 2**70),
        "unit": st.sampled_from([*PLAUSIBLE, "K"]),
        "ts": st.integers(0, 2**64) | st.integers(T0 - 10**9, T0 + 10**10),
    }
)
BATCH = st.fixed_dictionaries(
    {
        "v": st.sampled_from([1, 1, 2]),
        "site": st.sampled_from([SITE, "elsewhere"]),
        "gateway": st.sampled_from([GATEWAY, "gw-x"]),
        "seq": st.integers(-1, 2**66),
        "sent_at": st.integers(T0 - 10**9, T0 + 10**12),
    },
    optional={"readings": st.lists(READING | JSON, max_size=6), "extra": JSON},
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    payloads=st.lists(
        st.binary(max_size=64)
        | JSON.map(lambda v: json.dumps(v).encode())
        | BATCH.map(lambda v: json.dumps(v).encode()),
        max_size=8,
    ),
    topics=st.lists(
        st.sampled_from([TOPIC, "milkguard/v1/gw/x", batch_topic("elsewhere", "gw-x")])
    ),
)
def test_any_bytes_or_json_never_raise_and_keep_the_counts(
    demo_plan: LoadedPlan, payloads: list[bytes], topics: list[str]
) -> None:
    rig = Rig(demo_plan)
    for number, payload in enumerate(payloads):
        topic = topics[number % len(topics)] if topics else TOPIC
        rig.raw(topic, payload, T0 + number)
        rig.fed += count_readings(payload)
        rig.ingest.handle_recorded(payload, f"f:{number}")
    rig.ingest.finish()

    rig.assert_every_reading_counted()
    assert rig.ingest.counters.messages == 2 * len(payloads)
    for letter in rig.deadletter.letters:  # every sink can write every letter
        msgspec.json.encode(letter)
        msgspec.msgpack.encode(letter)
    assert not any("inf" in line.split(" ")[1] for line in rig.series.lines if " " in line)
    assert all(math.isfinite(c.deviation.degree_minutes) for c in rig.deviations.changes)


def test_a_seq_too_large_for_any_encoder_is_dead_lettered_to_a_file(
    demo_plan: LoadedPlan, tmp_path: Path
) -> None:
    letters = JsonlDeadLetterSink(tmp_path / "deadletter.jsonl")
    ingest = Ingest(Engine(demo_plan), MemoryTimeSeriesSink(), MemoryDeviationSink(), letters)
    payload = encode_batch(Batch(v=1, site=SITE, gateway=GATEWAY, seq=1, sent_at=T0))

    ingest.handle(TOPIC, payload.replace(b'"seq":1', b'"seq":' + str(2**70).encode()), T0)
    letters.close()

    (written,) = (tmp_path / "deadletter.jsonl").read_text().splitlines()
    assert json.loads(written)["seq"] is None
    assert str(2**70) in json.loads(written)["payload"]

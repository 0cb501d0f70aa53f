"""Fuzzed payloads through the live ingest path, ``milkguard replay`` and a real ``milkguard run``:
nothing raises, and every message and every reading is counted once.

The counts are checked against the per-reading counters of :class:`stream.ingest.IngestCounters`
(``readings_duplicate``, ``readings_in_rejected_payloads``, ``readings_quarantined``); a missing
one fails the test, it is never skipped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from benchmarks import fuzz
from milkguard import mqtt as mqtt_connect
from milkguard.contract.v1 import parse_batch_topic, parse_status_topic
from milkguard_cli import main
from stream.plan import LoadedPlan, load_plan
from stream.settings import demo_plan_path
from tests.helpers import scrape, wait_until
from tests.servers import Mosquitto, free_port

# every mutation class many times over, one 10 MB payload and one 100,000-reading batch
CI_PAYLOADS = 30_000


def test_fuzzed_payloads_raise_nothing_and_every_message_and_reading_is_counted(
    tmp_path: Path,
) -> None:
    report = fuzz.run(
        CI_PAYLOADS, seed=12, crash_dir=tmp_path / "crashes", work_dir=tmp_path / "work"
    )

    assert all(tally.payloads for tally in report.by_mutation.values()), report.by_mutation
    assert report.crashes.total == 0, report.problems()
    assert report.broken == [], report.problems()
    assert report.command is not None
    assert report.command.exit_code == 0


def test_the_fuzzer_gives_the_same_payloads_for_the_same_seed(demo_plan: LoadedPlan) -> None:
    def first(seed: int) -> list[tuple[str, str, bytes]]:
        fuzzer = fuzz.PayloadFuzzer(demo_plan, seed=seed)
        return [(f.mutation, f.topic, f.payload) for f in fuzzer.generate(2000)]

    assert first(3) == first(3)
    assert first(3) != first(4)


def test_the_fuzzer_draws_every_class_and_schedules_the_huge_ones(demo_plan: LoadedPlan) -> None:
    fuzzer = fuzz.PayloadFuzzer(demo_plan, seed=1, total=CI_PAYLOADS)
    seen: dict[str, int] = {}
    largest: dict[str, int] = {}
    for item in fuzzer.generate(CI_PAYLOADS):
        seen[item.mutation] = seen.get(item.mutation, 0) + 1
        largest[item.mutation] = max(largest.get(item.mutation, 0), len(item.payload))

    assert set(seen) == {*fuzz.MUTATIONS, *fuzz.SCHEDULED}
    assert seen["payload_10mb"] == seen["readings_100k"] == 1
    assert largest["payload_10mb"] >= fuzz.TEN_MB


def test_the_command_names_the_classes_when_told_to_skip_an_unknown_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["bench", "fuzz", "--payloads", "10", "--skip", "huge_seq,nonsense"]) == 2

    printed = " ".join(capsys.readouterr().err.split())
    assert "unknown mutation class nonsense; the classes are valid, duplicate," in printed


def test_readings_fed_are_those_of_a_json_text_with_a_readings_list() -> None:
    reading = {"asset": "a", "channel": "c", "value": 1.0, "unit": "degC", "ts": 1}
    batch = json.dumps({"readings": [reading, reading]}).encode()

    assert fuzz.readings_in(batch) == 2
    assert fuzz.readings_in(batch.replace(b'"a"', b'"\xff"')) == 0  # not UTF-8
    assert fuzz.readings_in(batch[:-1]) == 0
    assert fuzz.readings_in(b"[" + batch + b"]") == 0
    assert fuzz.readings_in(b'{"readings": {}}') == 0
    assert fuzz.readings_in(b"[" * 100_000) == 0


def test_readings_fed_are_counted_as_python_json_reads_the_payload() -> None:
    def batch(value: bytes) -> bytes:
        return b'{"readings": [{"value": ' + value + b"}, 2]}"

    assert fuzz.readings_in(batch(b"NaN")) == 2  # as json.loads reads it
    assert fuzz.readings_in(batch(b"-Infinity")) == 2
    assert fuzz.readings_in(batch(b"1e999")) == 2  # a float, infinite
    assert fuzz.readings_in(batch(b"1" * 5000)) == 0  # json.loads refuses its digits
    assert fuzz.readings_in(batch(b'"\\ud800"')) == 2  # half a surrogate pair
    assert fuzz.readings_in(batch(b'"\\udc00\\ud800"')) == 2
    assert fuzz.readings_in(batch(b'"\\ud83d\\udc04"')) == 2  # a whole pair
    assert fuzz.readings_in(batch(b'"\\\\ud800"')) == 2  # an escaped backslash, then text
    assert fuzz.readings_in(b'{"readings": [1], "readings": [1, 2]}') == 2  # the last
    assert fuzz.readings_in(b'{"readings": [1, 2], "readings": 4000}') == 0  # the last


def test_replay_lines_split_at_newlines_and_drop_blank_ones() -> None:
    assert fuzz.replay_lines(b'{"a": 1}') == [b'{"a": 1}']
    assert fuzz.replay_lines(b'{\n  "a": 1\n}\n') == [b"{", b'"a": 1', b"}"]
    assert fuzz.replay_lines(b" \t\r ") == []


def test_an_inf_or_nan_field_in_line_protocol_is_a_broken_invariant(tmp_path: Path) -> None:
    (tmp_path / "timeseries-2026-11-22.lp").write_text(
        "reading,site=s,asset=a,channel=c,unit=degC,gateway=g value=4.5 1000000\n"
        "deviation,site=s,asset=a,rule=r peak=inf,open=true 1000000\n"
        "reading,site=s,asset=a,channel=c,unit=degC,gateway=g value=nan 1000000\n"
        'event,site=s,asset=a,kind=k detail="value=inf" 1000000\n'
    )

    (broken,) = fuzz.non_finite_lines(tmp_path)

    assert broken.startswith("2 lines of line protocol hold a non-finite field, e.g. 'deviation,")
    assert fuzz.non_finite_lines(tmp_path / "empty") == []


@dataclass
class _Counters:
    messages: int = 10
    batches: int = 6
    duplicates: int = 1
    rejected_payloads: int = 3
    readings: int = 50
    readings_duplicate: int = 5
    readings_in_rejected_payloads: int = 7
    rejected_readings: int = 4
    readings_quarantined: int = 2
    statuses: int = 0


def test_counters_that_add_up_break_no_invariant() -> None:
    values, broken = fuzz.check_counters(_Counters(), messages_fed=10, readings_fed=62)

    assert broken == []
    assert values["readings_quarantined"] == 2


def test_each_broken_invariant_is_named() -> None:
    _, broken = fuzz.check_counters(
        _Counters(batches=5, readings=49, readings_quarantined=5), messages_fed=11, readings_fed=62
    )

    assert broken == [
        "messages 10 != 11 fed",
        "batches + statuses + duplicates + rejected_payloads = 9 != messages 10",
        "readings + readings_duplicate + readings_in_rejected_payloads = 61 != 62 readings fed",
        "readings_quarantined 5 > rejected_readings 4",
    ]


def test_a_missing_counter_is_a_broken_invariant() -> None:
    @dataclass
    class Old:
        messages: int = 1
        batches: int = 1
        duplicates: int = 0
        rejected_payloads: int = 0
        readings: int = 1
        rejected_readings: int = 0

    _, broken = fuzz.check_counters(Old(), messages_fed=1, readings_fed=1)

    assert broken == [
        "IngestCounters has no readings_duplicate, readings_in_rejected_payloads, "
        "readings_quarantined, statuses"
    ]


# -- the live path over a real broker ---------------------------------------------------------

LIVE_PAYLOADS = 2000
MILKGUARD = [sys.executable, "-m", "milkguard"]


def _summary_counter(summary: str, name: str) -> int:
    line = next((line for line in summary.splitlines() if f" {name} " in line), None)
    assert line is not None, f"the run summary has no {name}:\n{summary}"
    return int(line.split()[-2].replace(",", ""))


@pytest.mark.integration
def test_milkguard_run_over_mosquitto_survives_fuzzed_payloads_and_counts_them_all(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    metrics_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MILKGUARD_")}
    env.update(
        MILKGUARD_MQTT__BROKER="external",
        MILKGUARD_MQTT__HOST=mosquitto.host,
        MILKGUARD_MQTT__PORT=str(mosquitto.port),
        MILKGUARD_DATA_DIR=str(tmp_path / "var"),
        MILKGUARD_METRICS__PORT=str(metrics_port),
        COLUMNS="200",
    )
    stdout, stderr = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            [*MILKGUARD, "run", "--no-simulators"], stdout=out, stderr=err, env=env
        )
    address = mqtt_connect.BrokerAddress(mosquitto.host, mosquitto.port)
    publisher: mqtt_connect.Connection | None = None
    try:
        publisher = mqtt_connect.connect(address, "fuzz-publisher")
        counted = _wait_for_the_subscription(publisher, metrics_port, process)
        loaded = load_plan(demo_plan_path())
        fuzzer = fuzz.PayloadFuzzer(
            loaded, seed=7, start_ms=time.time_ns() // 1_000_000, total=LIVE_PAYLOADS
        )
        delivered = readings = 0
        for item in fuzzer.generate(LIVE_PAYLOADS):
            if not fuzz.mqtt_publishable(item.topic):
                continue  # MQTT itself refuses the topic
            assert publisher.acks.wait_below(50, timeout_s=30), "the broker stopped acknowledging"
            publisher.publish(item.topic, item.payload)
            # what the stream subscribes to: batch and status topics
            if parse_batch_topic(item.topic) or parse_status_topic(item.topic):
                delivered += 1
                readings += item.readings
        assert publisher.wait_acknowledged(60)
        expected = counted + delivered

        def received() -> float:
            try:
                return scrape(metrics_port).get("milkguard_messages_received_total", 0.0)
            except OSError:
                return -1.0  # not serving: stopped, which the next assertion reports

        wait_until(
            lambda: process.poll() is not None or received() >= expected,
            timeout_s=120,
            what=f"{expected} messages counted",
        )
        assert process.poll() is None, stderr.read_text(errors="replace")[-3000:]
        metrics = scrape(metrics_port)
        assert metrics["milkguard_messages_received_total"] == expected
        assert (
            metrics["milkguard_batches_received_total"]
            + metrics["milkguard_statuses_received_total"]
            + metrics["milkguard_batches_duplicate_total"]
            + metrics["milkguard_payloads_rejected_total"]
            == expected
        )
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    finally:
        if publisher is not None:
            publisher.close(5)
        if process.poll() is None:
            process.kill()
            process.wait()
    errors = stderr.read_text(errors="replace")
    assert "Traceback" not in errors, errors[-3000:]
    text = stdout.read_text(errors="replace")
    summary = text[text.index("MilkGuard run summary") :]
    assert (
        _summary_counter(summary, "ingest.readings")
        + _summary_counter(summary, "ingest.readings_duplicate")
        + _summary_counter(summary, "ingest.readings_in_rejected_payloads")
        == counted + readings
    )
    assert _summary_counter(summary, "ingest.readings_quarantined") <= _summary_counter(
        summary, "ingest.rejected_readings"
    )


def _wait_for_the_subscription(
    publisher: mqtt_connect.Connection, metrics_port: int, process: subprocess.Popen[bytes]
) -> int:
    """Publish one-reading probe batches until the stream counts one: from then on it is
    subscribed and gets everything. Returns the probes it counted (each one valid batch)."""

    def counted() -> int:
        try:
            return int(scrape(metrics_port).get("milkguard_messages_received_total", 0))
        except OSError:
            return 0

    probe = 0
    deadline = time.monotonic() + 30
    while counted() == 0:
        assert process.poll() is None, "milkguard run stopped before it was subscribed"
        assert time.monotonic() < deadline, "the stream never counted a probe batch"
        probe += 1
        now = time.time_ns() // 1_000_000
        reading = {"asset": "probe", "channel": "p", "value": 1.0, "unit": "degC", "ts": now}
        batch = {"v": 1, "site": "probe", "gateway": "probe-gw", "seq": probe, "sent_at": now}
        payload = json.dumps({**batch, "readings": [reading]}).encode()
        publisher.publish("milkguard/v1/gw/probe/probe-gw/batch", payload)
        time.sleep(0.3)
    assert publisher.wait_acknowledged(10)
    time.sleep(1.0)  # a probe the broker took is counted before the fuzzed payloads go
    return counted()


def test_the_fuzzer_sends_the_plant_events_of_a_plant_plan() -> None:
    """Receipts, silo transfers, silos emptied and runs drawing from silos are fuzzed too, so
    the engine meets them valid and mutated."""
    fuzzer = fuzz.PayloadFuzzer(load_plan(fuzz.default_plan()), seed=5)
    kinds: set[str] = set()
    with_sources = 0
    for item in fuzzer.generate(20_000):
        try:
            batch = json.loads(item.payload)
        except (ValueError, RecursionError):  # the mutated payloads no JSON reader takes
            continue
        events = batch.get("events") if isinstance(batch, dict) else None
        for event in events if isinstance(events, list) else []:
            if isinstance(event, dict) and isinstance(event.get("kind"), str):
                kinds.add(event["kind"])
                with_sources += bool(event.get("sources"))

    assert {"receipt", "silo_transfer", "silo_emptied", "run_start", "run_end"} <= kinds
    assert with_sources > 0

"""Local stores: what was flushed is on disk, one file of line protocol per day."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

from stream.sinks.base import COMPACT_PREFIX_BYTES, KEPT_PAYLOAD_BYTES, DeadLetter, compacted
from stream.sinks.files import JsonlDeadLetterSink, LineProtocolFileSink


def test_line_protocol_is_on_disk_after_flush_and_not_before(tmp_path: Path) -> None:
    sink = LineProtocolFileSink(tmp_path, day=lambda: "2026-11-22")
    sink.add(["a v=1 1", "b v=2 2"])

    assert not sink.path.exists()
    sink.flush()
    assert sink.path.read_text() == "a v=1 1\nb v=2 2\n"


def test_a_new_utc_day_starts_a_new_file(tmp_path: Path) -> None:
    days = iter(["2026-11-22", "2026-11-23", "2026-11-23"])
    sink = LineProtocolFileSink(tmp_path, day=lambda: next(days))
    sink.add(["a v=1 1"])
    sink.flush()
    sink.add(["b v=2 2"])
    sink.flush()
    sink.close()

    assert (tmp_path / "timeseries-2026-11-22.lp").read_text() == "a v=1 1\n"
    assert (tmp_path / "timeseries-2026-11-23.lp").read_text() == "b v=2 2\n"


def test_dead_letters_are_appended_as_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "deadletter.jsonl"
    for run in range(2):
        sink = JsonlDeadLetterSink(path)
        sink.reject(
            DeadLetter(
                received_at="2026-11-22T10:00:00.000Z",
                topic="t",
                reason=f"run {run}",
                payload="{}",
                encoding="utf-8",
            )
        )
        sink.close()

    assert [json.loads(line)["reason"] for line in path.read_text().splitlines()] == [
        "run 0",
        "run 1",
    ]


def test_a_dead_letter_of_a_huge_payload_is_written_bounded(tmp_path: Path) -> None:
    path = tmp_path / "deadletter.jsonl"
    sink = JsonlDeadLetterSink(path)
    huge = "y" * (10 * KEPT_PAYLOAD_BYTES)
    sink.reject(
        DeadLetter(
            received_at="2026-11-22T10:00:00.000Z",
            topic="t",
            reason="r",
            payload=huge,
            encoding="utf-8",
        )
    )
    sink.close()

    written = json.loads(path.read_text())
    assert written["truncated"] is True
    assert written["payload_bytes"] == len(huge)
    assert written["payload_sha256"] == hashlib.sha256(huge.encode()).hexdigest()
    assert len(path.read_bytes()) < 2 * KEPT_PAYLOAD_BYTES


def _letter(day: str, payload: bytes, n: int) -> DeadLetter:
    return DeadLetter.of_payload(
        payload, received_at=f"{day}T10:00:00.000Z", topic="t", reason=f"letter {n}"
    )


def test_past_a_days_budget_letters_keep_their_reason_a_prefix_and_a_hash(tmp_path: Path) -> None:
    path = tmp_path / "deadletter.jsonl"
    sink = JsonlDeadLetterSink(path, daily_budget_bytes=200_000)
    payloads = [bytes([65 + n % 26]) * 60_000 for n in range(20)]  # 1.2 MB of whole payloads
    for n, payload in enumerate(payloads):
        sink.reject(_letter("2026-11-22", payload, n))
    sink.reject(_letter("2026-11-23", payloads[0], 20))  # a new day has its budget again
    sink.close()

    written = [json.loads(line) for line in path.read_text().splitlines()]
    assert [w["reason"] for w in written] == [f"letter {n}" for n in range(21)]  # none lost
    whole = [w for w in written if not w["truncated"]]
    assert len(whole) == 4  # three of the first day's and the second day's first
    assert sink.compacted == 17
    for letter, payload in zip(written, [*payloads, payloads[0]], strict=True):
        if letter["truncated"]:
            assert len(letter["payload"]) == COMPACT_PREFIX_BYTES
            assert letter["payload_bytes"] == len(payload)
            assert letter["payload_sha256"] == hashlib.sha256(payload).hexdigest()
    assert path.stat().st_size < 200_000 + 17 * 1_000 + 61_000


def test_a_letter_already_cut_to_its_prefix_is_compacted_further_and_keeps_its_hash() -> None:
    huge = b"\xff" * (2 * KEPT_PAYLOAD_BYTES)  # not UTF-8: kept as base64
    letter = _letter("2026-11-22", huge, 0)

    small = compacted(letter)

    assert base64.b64decode(small.payload) == huge[:COMPACT_PREFIX_BYTES]
    assert small.payload_sha256 == hashlib.sha256(huge).hexdigest()
    assert small.payload_bytes == len(huge)

"""Local stores: what was flushed is on disk, one file of line protocol per day."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from stream.sinks.base import KEPT_PAYLOAD_BYTES, DeadLetter
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

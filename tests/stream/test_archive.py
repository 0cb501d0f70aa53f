"""The archive of ``milkguard run``: what the engine was handed, in order, replayed to the same
deviation changes (HACCP record keeping: a monitoring record must be reproducible from the
observations it was made from, Codex CXC 1-1969 section 3.11 / GB 14881 section 14)."""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from milkguard.contract.v1 import Batch, GatewayStatus, Reading, encode_batch, encode_status
from stream.archive import (
    ArchiveWriter,
    Bad,
    Message,
    Start,
    archive_files,
    file_number,
    looks_like_archive,
    read_records,
    resume,
)
from stream.engine.core import Engine
from stream.ingest import Ingest
from stream.plan import LoadedPlan, load_plan
from stream.replay import (
    JsonLinesDeviationWriter,
    ReplaySummary,
    is_archive,
    replay,
    replay_archive,
)
from stream.sinks.memory import MemoryDeadLetterSink, MemoryTimeSeriesSink
from tests.conftest import T0
from tests.stream.test_run_kills import ASSET, RULE

SITE = "farm-01"
SKEWED = "farm-01-gw-fast"  # its clock, sent_at and readings alike, is 30 s fast
BACKLOG = "farm-01-gw-link"  # its link drops for 12 s; it sends the backlog after

PLAN = (
    "plan: archive-test\n"
    "title: two bulk tanks, one gateway with a fast clock, one with a link that drops\n"
    "jurisdiction: CN\n"
    f"assets:\n{ASSET.format(n=1)}{ASSET.format(n=2)}"
    f"rules:\n{RULE.format(n=1)}{RULE.format(n=2)}"
)


@pytest.fixture
def plan(tmp_path: Path) -> LoadedPlan:
    path = tmp_path / "plan.yaml"
    path.write_text(PLAN)
    return load_plan(path)


def archiving(engine: Engine, writer: ArchiveWriter) -> Ingest:
    """An ingest that archives to ``writer``, its outputs in memory."""
    return Ingest(
        engine,
        MemoryTimeSeriesSink(),
        JsonLinesDeviationWriter(io.StringIO()),
        MemoryDeadLetterSink(),
        archive=writer,
    )


def topic(gateway: str) -> str:
    return f"milkguard/v1/gw/{SITE}/{gateway}/batch"


def payload(gateway: str, seq: int, sent_at: int, asset: str, stamps: list[int]) -> bytes:
    """A batch of ``asset``'s milk temperature at ``stamps``: warm (8 degC) in the second
    quarter of each minute, else 4 degC."""
    readings = [
        Reading(
            asset,
            "milk_temp",
            8.0 if (ts - T0) % 60_000 >= 15_000 and (ts - T0) % 60_000 < 40_000 else 4.0,
            "degC",
            ts,
        )
        for ts in stamps
    ]
    batch = Batch(v=1, site=SITE, gateway=gateway, seq=seq, sent_at=sent_at, readings=readings)
    return encode_batch(batch)


@dataclass
class LiveService:
    """The engine's loop of ``milkguard run`` in miniature: drains and ticks, with the archive
    written and checkpointed, and restarts from the checkpoint as the service does."""

    plan: LoadedPlan
    archive_dir: Path
    rotate_bytes: int = 1 << 30
    out: io.StringIO = field(default_factory=io.StringIO)
    ingest: Ingest | None = None
    archive: ArchiveWriter | None = None
    saved: tuple[bytes, dict, dict[Path, int]] | None = None  # type: ignore[type-arg]
    stopped_at: list[int] = field(default_factory=list)  # deviation lines at each stop

    def start(self, now_ms: int, *, archived: bool = True) -> None:
        archive = None
        if archived:
            archive = ArchiveWriter(
                self.archive_dir, rotate_bytes=self.rotate_bytes, keep_days=30, compress=True
            )
        if self.saved is not None:
            engine_state, _, sizes = self.saved
            if archive is not None:
                archive.restore(sizes)
            engine = Engine.restore(self.plan, engine_state)
        else:
            engine = Engine(self.plan)
        resume(engine, self.saved is not None, now_ms)
        self.archive = archive
        self.ingest = Ingest(
            engine,
            MemoryTimeSeriesSink(),
            JsonLinesDeviationWriter(self.out),
            MemoryDeadLetterSink(),
            archive=archive,
        )
        if self.saved is not None:
            self.ingest.restore_windows(self.saved[1])
        if archive is not None:
            archive.start(
                Start(
                    at=now_ms,
                    engine="fresh" if self.saved is None else "restored",
                    windows="fresh" if self.saved is None else "restored",
                    plan_version=self.plan.version,
                    future_tolerance_ms=self.ingest.future_tolerance_ms,
                    known_gateways=[],
                )
            )
        self.ingest.clocks_sent_from_ms = now_ms
        self.checkpoint()

    def checkpoint(self) -> None:
        assert self.ingest is not None
        self.ingest.flush()
        self.saved = (
            self.ingest.engine.snapshot(),
            self.ingest.windows(),
            self.archive.positions() if self.archive is not None else {},
        )

    def stop(self) -> None:
        assert self.ingest is not None
        self.checkpoint()
        self.ingest.close()
        self.stopped_at.append(len(self.out.getvalue().splitlines()))

    def kill(self) -> None:
        """Everything after the last checkpoint is lost, and so are the deviation changes the
        killed process wrote after it (the service cuts its files back to the checkpoint)."""
        assert self.archive is not None
        self.archive.flush()  # written but never checkpointed: the restart cuts it off
        self.archive.close()


def live_day(
    service: LiveService, *, kill_at_s: int | None = None, unarchived: range = range(0)
) -> list[str]:
    """Two minutes of the farm's gateways through the live loop; the deviation changes.

    The fast gateway's batches are received 30 s before the time they carry; the other's link
    drops from second 50 to second 62: it sends nothing, then its 12 s of backlog at once.
    Between drains the clock ticks every 200 ms, as the service's does with no data. Killed
    at second ``kill_at_s``; stopped and run without the archive through ``unarchived``."""
    service.start(T0)
    checkpointed = ""
    seq = {SKEWED: 0, BACKLOG: 0}
    backlog: list[int] = []
    for tenth in range(1, 1200):
        now = T0 + tenth * 100
        assert service.ingest is not None
        if tenth % 10 == 0:
            second = tenth // 10
            drain = []
            seq[SKEWED] += 1
            fast = now + 30_000
            drain.append((topic(SKEWED), payload(SKEWED, seq[SKEWED], fast, "tank-1", [fast]), now))
            if 50 <= second < 62:
                backlog.append(now)
            else:
                stamps = [*backlog, now]
                backlog = []
                seq[BACKLOG] += 1
                drain.append(
                    (topic(BACKLOG), payload(BACKLOG, seq[BACKLOG], now, "tank-2", stamps), now)
                )
            service.ingest.handle_many(iter(drain))
            if second % 3 == 0:
                service.checkpoint()
                checkpointed = service.out.getvalue()
            if second in (unarchived.start, unarchived.stop) and unarchived:
                service.stop()
                service.start(now + 50, archived=second == unarchived.stop)
            if kill_at_s is not None and second == kill_at_s:
                service.kill()
                service.out = io.StringIO(checkpointed)
                service.out.seek(0, io.SEEK_END)
                service.start(now + 50)
        elif tenth % 2 == 0:
            service.ingest.clocks_sent_from_ms = -1
            service.ingest.tick(now)
    service.stop()
    return service.out.getvalue().splitlines()


def replayed(plan: LoadedPlan, files: list[Path]) -> tuple[list[str], ReplaySummary]:
    out = io.StringIO()
    summary = replay_archive(plan, files, out)
    return out.getvalue().splitlines(), summary


def test_an_archived_day_replays_to_exactly_the_live_deviation_changes(
    plan: LoadedPlan, tmp_path: Path
) -> None:
    """A monitoring record is reproducible from its observations: a gateway whose clock is
    30 s fast (the time-sync fault, and readings judged on its clock) and a gateway whose
    backlog arrives after a 12 s link drop ("monitoring lost", then readings judged late),
    archived live, replay to the very deviation changes the live engine gave, line for line."""
    live = live_day(LiveService(plan, tmp_path / "archive"))

    again, _ = replayed(plan, archive_files(tmp_path / "archive"))

    kinds = {json.loads(line)["kind"] for line in live}
    assert {"time_sync", "critical_limit", "monitoring_lost"} <= kinds, kinds
    assert again == live


def test_the_bare_payload_clock_would_not_have_seen_the_fast_gateway(
    plan: LoadedPlan, tmp_path: Path
) -> None:
    """Why the archive keeps receive times: the same payloads replayed as bare lines are taken
    as received when the newest of them says it was sent, so the 30 s fast clock becomes the
    reference: the fast gateway looks in time and the good one 30 s slow."""
    live = live_day(LiveService(plan, tmp_path / "archive"))
    bare = b"\n".join(
        record.raw()
        for path in archive_files(tmp_path / "archive")
        for _, record in read_records(path)
        if isinstance(record, Message)
    )
    out = io.StringIO()
    replay(plan, io.BytesIO(bare), out, name="bare.jsonl")

    def faulty_clocks(lines: list[str]) -> set[str]:
        return {c["asset"] for c in map(json.loads, lines) if c["kind"] == "time_sync"}

    assert faulty_clocks(live) == {SKEWED}
    assert faulty_clocks(out.getvalue().splitlines()) != {SKEWED}


def test_a_killed_service_s_archive_replays_to_what_it_checkpointed(
    plan: LoadedPlan, tmp_path: Path
) -> None:
    """A kill after the archive was written but before the checkpoint: the restart cuts the
    archive back to the checkpoint, the broker's redelivery is archived once, and the replay,
    restarting where the service restarted, gives the deviation changes the service kept."""
    live = live_day(LiveService(plan, tmp_path / "archive"), kill_at_s=55)

    again, _ = replayed(plan, archive_files(tmp_path / "archive"))

    assert again == live
    starts = [
        json.loads(line)
        for path in archive_files(tmp_path / "archive")
        for line in path.read_text().splitlines()
        if line.startswith('{"record":"start"')
    ]
    assert [s["engine"] for s in starts] == ["fresh", "restored"]


def test_a_run_without_the_archive_between_two_with_it_is_skipped_not_misjudged(
    plan: LoadedPlan, tmp_path: Path
) -> None:
    """The archive switched off for a run and on again: the next file begins with the state
    that run left (its header), so the replay gives the live changes of the archived runs."""
    service = LiveService(plan, tmp_path / "archive")
    live = live_day(service, unarchived=range(40, 70))
    before, after = service.stopped_at[0], service.stopped_at[1]

    again, summary = replayed(plan, archive_files(tmp_path / "archive"))

    assert before < after, "the unarchived run should have judged something"
    assert again == live[:before] + live[after:]
    assert not summary.notes


def test_rotated_files_are_compressed_and_each_replays_from_its_own_header(
    plan: LoadedPlan, tmp_path: Path
) -> None:
    """Files rotate at their size and are gzipped once closed; the whole archive replays as
    live, and a file alone replays from the state its header carries: the changes of its
    part of the day."""
    service = LiveService(plan, tmp_path / "archive", rotate_bytes=16 * 1024)
    live = live_day(service)
    files = archive_files(tmp_path / "archive")

    assert len(files) > 3
    assert all(p.suffix == ".gz" for p in files[:-1])
    assert [file_number(p) for p in files] == list(range(1, len(files) + 1))
    assert replayed(plan, files)[0] == live
    tail, _ = replayed(plan, files[2:])
    assert tail
    assert tail == live[len(live) - len(tail) :]


def test_a_restart_after_a_rotation_the_checkpoint_missed_unpacks_the_file_it_names(
    plan: LoadedPlan, tmp_path: Path
) -> None:
    """Killed after a rotation (and its compression) but before the checkpoint that names the
    new file: the restart takes the checkpoint's file back from its gzip, cut to the
    checkpointed size, and drops the file begun after it."""
    directory = tmp_path / "archive"
    writer = ArchiveWriter(directory, rotate_bytes=1, keep_days=30)
    engine = Engine(plan)
    ingest = archiving(engine, writer)
    ingest.tick(T0)
    writer.flush()  # rotates at once: file 2 begun, file 1 compressed
    writer.close()
    plain = directory / archive_files(directory)[0].name.removesuffix(".gz")
    size = len(gzip.decompress((directory / (plain.name + ".gz")).read_bytes()))
    checkpointed = {plain: size - 10}  # a checkpoint before its last line was whole

    again = ArchiveWriter(directory, rotate_bytes=1 << 20, keep_days=30)
    again.restore(checkpointed)

    assert archive_files(directory) == [plain]
    assert plain.stat().st_size == size - 10


def hostile_archive(tmp_path: Path, plan: LoadedPlan) -> Path:
    directory = tmp_path / "archive"
    service = LiveService(plan, directory)
    service.start(T0)
    assert service.ingest is not None
    good = payload(SKEWED, 1, T0 + 1000, "tank-1", [T0 + 1000])
    service.ingest.handle_many(iter([(topic(SKEWED), good, T0 + 1000)]))
    service.stop()
    path = archive_files(directory)[0]
    message = {
        "record": "message",
        "received_ms": T0 + 2000,
        "topic": topic(SKEWED),
        "payload": good.decode(),
    }
    lines = [
        b'{"record":"message","received_ms":',  # cut off
        b'{"record":"message","topic":"x","payload":"\xff\xfe"}',  # not UTF-8
        json.dumps({"record": "message", "topic": topic(SKEWED)}).encode(),  # no payload
        json.dumps({**message, "received_ms": 99_999_999_999_999}).encode(),  # year 5138
        json.dumps({**message, "received_ms": T0 + 9 * 86_400_000}).encode(),  # 9 days later
        json.dumps({**message, "topic": "$SYS/broker/uptime"}).encode(),
        json.dumps({**message, "encoding": "base64", "payload": "*not base64*"}).encode(),
        json.dumps({"record": "tick", "now": "soon"}).encode(),
        json.dumps({"record": "shutdown"}).encode(),
        b"[" * 100_000,
        json.dumps(
            {**message, "payload": base64.b64encode(b"\xff").decode(), "encoding": "base64"}
        ).encode(),  # a message, not a batch: dead-lettered
        b'{"record":"judge"}',
    ]
    with path.open("ab") as out:
        out.write(b"\n".join(lines) + b"\n")
    return path


def test_hostile_archive_lines_go_to_the_dead_letter_naming_file_and_line(
    plan: LoadedPlan, tmp_path: Path
) -> None:
    """Whatever a damaged or forged archive line holds, the replay dead-letters it with a
    reason naming the file and the line, and carries on."""
    path = hostile_archive(tmp_path, plan)
    letters = tmp_path / "letters.jsonl"

    summary = replay_archive(plan, [path], io.StringIO(), deadletter=letters)

    written = [json.loads(line) for line in letters.read_text().splitlines()]
    reasons = [letter["reason"] for letter in written]
    assert summary.batches == 1
    assert len(written) == 11, reasons
    named = [r for r in reasons if f"archive {path.name}:" in r]
    assert len(named) == 10, reasons
    assert any("not valid UTF-8" in r for r in reasons)
    assert any("is not a gateway batch topic" in r for r in reasons)
    assert sum("more than a day after the record before it" in r for r in reasons) == 1
    assert any("received_ms" in r for r in reasons)


def test_an_archive_is_told_from_payload_lines_by_its_header(
    plan: LoadedPlan, tmp_path: Path
) -> None:
    """The header line names the format and its version; bare payload lines have none."""
    path = hostile_archive(tmp_path, plan)
    first = path.read_bytes().splitlines()[0]

    assert looks_like_archive(first)
    assert json.loads(first)["format"] == 1
    assert not looks_like_archive(payload(SKEWED, 1, T0, "tank-1", [T0]))


def test_files_older_than_the_retention_are_deleted_at_rotation(
    plan: LoadedPlan, tmp_path: Path
) -> None:
    """keep_days bounds the archive: closed files last written longer ago go at a rotation."""
    directory = tmp_path / "archive"
    directory.mkdir()
    old = directory / "archive-2020-01-01-000001.jsonl.gz"
    old.write_bytes(gzip.compress(b"{}\n"))
    long_ago = time.time() - 40 * 86_400
    os.utime(old, (long_ago, long_ago))
    writer = ArchiveWriter(directory, rotate_bytes=1, keep_days=30)
    archiving(Engine(plan), writer).tick(T0)

    writer.close()

    assert not old.exists()
    assert [file_number(p) for p in archive_files(directory)] == [2, 3]


def test_every_payload_comes_back_from_the_archive_byte_for_byte(
    plan: LoadedPlan, tmp_path: Path
) -> None:
    """What the broker delivered is what the replay hands the engine, whatever it is: a batch
    (kept as its JSON object), a pretty-printed batch (its newlines would break the line: kept
    as text), a payload forging record fields, bytes that are not UTF-8 (base64)."""
    batch = payload(SKEWED, 1, T0, "tank-1", [T0])
    pretty = json.dumps(json.loads(batch), indent=2).encode()
    forged = b'{"v":1}, "received_ms": 1, "topic": "forged", "x": {}'
    delivered = [batch, pretty, forged, b"\xff\xfe not UTF-8", b""]
    directory = tmp_path / "archive"
    service = LiveService(plan, directory)
    service.start(T0)
    assert service.ingest is not None
    service.ingest.handle_many(iter([(topic(SKEWED), p, T0 + 1000) for p in delivered]))
    service.stop()

    archived = [
        record
        for path in archive_files(directory)
        for _, record in read_records(path)
        if isinstance(record, Message)
    ]

    assert [m.raw() for m in archived] == delivered
    assert [m.topic for m in archived] == [topic(SKEWED)] * len(delivered)
    assert bytes(archived[0].batch) == batch  # unescaped


def test_milkguard_replay_tells_an_archive_file_from_payload_lines_by_its_first_line(
    plan: LoadedPlan, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``milkguard replay`` of one gzipped archive file needs no ``--format``; the same
    payloads as bare lines still replay on the replay clock; an archive read as payload lines
    (``--format payloads``) is refused line by line, never judged as something else."""
    from milkguard_cli import main  # noqa: PLC0415

    live = live_day(LiveService(plan, tmp_path / "archive", rotate_bytes=16 * 1024))
    files = archive_files(tmp_path / "archive")
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(PLAN)
    first = tmp_path / "first.jsonl"
    bare = tmp_path / "bare.jsonl"
    bare.write_bytes(payload(SKEWED, 1, T0, "tank-1", [T0]) + b"\n")

    assert main(["replay", str(files[0]), "--plan", str(plan_file), "--output", str(first)]) == 0
    assert files[0].suffix == ".gz"
    assert first.read_text().splitlines() == replayed(plan, files[:1])[0]
    assert live[: len(first.read_text().splitlines())] == first.read_text().splitlines()
    assert main(["replay", str(bare), "--plan", str(plan_file)]) == 0
    assert "1 batches" in capsys.readouterr().err
    assert main(["replay", str(files[-1]), "--plan", str(plan_file), "--format", "payloads"]) == 0
    assert "0 batches" in capsys.readouterr().err


def test_the_archive_is_off_by_default_on_with_the_demo_fleet_and_set_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``archive.enabled`` unset: the demo (`make run`, simulators) archives, the real service
    does not until told; MILKGUARD_ARCHIVE__* set it; a size of 0 is refused by name."""
    from milkguard.errors import ConfigError  # noqa: PLC0415
    from milkguard_cli.settings import load_settings  # noqa: PLC0415
    from stream.embedded import EmbeddedService  # noqa: PLC0415

    settings = load_settings(None, data_dir=tmp_path / "var")
    assert settings.archive.enabled is None
    assert EmbeddedService(settings)._archive() is None
    demo = EmbeddedService(settings, demo_fleet=lambda address: None)  # type: ignore[arg-type,return-value]
    writer = demo._archive()
    assert writer is not None
    assert writer.directory == tmp_path / "var" / "archive"

    monkeypatch.setenv("MILKGUARD_ARCHIVE__ENABLED", "true")
    monkeypatch.setenv("MILKGUARD_ARCHIVE__KEEP_DAYS", "7")
    settings = load_settings(None)
    assert settings.archive.enabled is True
    assert settings.archive.keep_days == 7

    monkeypatch.setenv("MILKGUARD_ARCHIVE__ROTATE_MB", "0")
    with pytest.raises(ConfigError, match="rotate_mb"):
        load_settings(None)


def test_a_header_with_a_damaged_engine_state_starts_the_replay_fresh_with_a_note(
    plan: LoadedPlan, tmp_path: Path
) -> None:
    """A header whose engine state is garbage (or forged) does not stop the replay: it starts
    from a fresh engine, says so, and judges the file's batches."""
    path = hostile_archive(tmp_path, plan)
    lines = path.read_bytes().splitlines()
    header = json.loads(lines[0])
    header["engine"] = base64.b64encode(b"\x93not an engine").decode()
    path.write_bytes(b"\n".join([json.dumps(header).encode(), *lines[1:]]) + b"\n")

    summary = replay_archive(plan, [path], io.StringIO())

    assert any("cannot be restored" in note for note in summary.notes), summary.notes
    assert summary.batches == 1


def test_a_line_longer_than_any_record_is_dead_lettered_without_being_held(
    plan: LoadedPlan, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A forged archive file: a gzip of one endless line (a thousandfold expansion) between
    two good records. The replay reads it in pieces and dead-letters it by its first bytes,
    naming file and line; the records after it replay."""
    monkeypatch.setattr("stream.archive.MAX_LINE_BYTES", 1 << 16)
    path = hostile_archive(tmp_path, plan)
    lines = path.read_bytes().splitlines()
    forged = tmp_path / "archive-2026-01-01-000009.jsonl.gz"
    endless = b'{"record":"message","topic":"' + b"A" * (1 << 22)
    forged.write_bytes(gzip.compress(b"\n".join([lines[0], endless, lines[1], lines[2]]) + b"\n"))

    records = list(read_records(forged))

    bad = records[1][1]
    assert records[1][0] == f"{forged.name}:2"
    assert isinstance(bad, Bad)
    assert len(bad.line) <= 1024
    assert "longer than 65536 bytes" in bad.reason
    assert [type(r) for _, r in records[2:]] == [type(r) for _, r in read_records(path)][1:3]


def test_a_flood_cannot_grow_the_archive_beyond_its_size_cap(
    plan: LoadedPlan, tmp_path: Path
) -> None:
    """A gateway flooding the broker within keep_days: at each rotation the oldest closed
    files go once the archive holds more than ``max_bytes``; the file written to stays."""
    directory = tmp_path / "archive"
    writer = ArchiveWriter(directory, rotate_bytes=1, keep_days=30, max_bytes=6000, compress=False)
    ingest = archiving(Engine(plan), writer)
    flood = [(topic(SKEWED), b"x" * 900, T0 + i) for i in range(40)]
    for i in range(40):
        ingest.handle_many(iter(flood[i : i + 1]))
        ingest.tick(T0 + i)
        writer.flush()
    writer.close()

    files = archive_files(directory)
    assert sum(p.stat().st_size for p in files) <= 6000 + 2 * 1000
    assert file_number(files[-1]) == max(file_number(p) or 0 for p in files)
    assert len(files) < 40


def test_links_planted_in_the_archive_directory_are_neither_written_through_nor_replayed(
    plan: LoadedPlan, tmp_path: Path
) -> None:
    """The archive directory is the service's own: a link planted there (by whoever can write
    to it) must not make the service, root maybe, overwrite the file it points at when it
    compresses, nor make a replay copy that file's lines into its dead-letter."""
    directory = tmp_path / "archive"
    directory.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("secret\n")
    for number in range(1, 10):
        (directory / f"archive-2026-01-01-{number:06}.jsonl.gz.partial").symlink_to(victim)
    (directory / "archive-2026-01-01-000007.jsonl").symlink_to(victim)
    writer = ArchiveWriter(directory, rotate_bytes=1, keep_days=30, day=lambda: "2026-01-01")
    archiving(Engine(plan), writer).tick(T0)
    writer.close()

    assert victim.read_text() == "secret\n"
    packed = [p for p in directory.glob("*.jsonl.gz") if not p.is_symlink()]
    assert [gzip.decompress(p.read_bytes())[:19] for p in packed] == [b'{"record":"archive"']
    assert all(not p.is_symlink() for p in archive_files(directory))


def test_telling_a_forged_file_s_format_reads_only_its_first_bytes(tmp_path: Path) -> None:
    """``milkguard replay`` tells an archive from payload lines by the first line's first
    bytes: a gzipped file of one endless line (a thousandfold expansion) is not read whole."""
    forged = tmp_path / "forged.jsonl.gz"
    forged.write_bytes(gzip.compress(b"{" + b" " * (64 << 20)))

    tracemalloc.start()
    try:
        found = is_archive(forged)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert not found
    assert peak < 8_000_000


def test_a_file_a_crash_left_plain_is_compressed_at_the_next_rotation(
    plan: LoadedPlan, tmp_path: Path
) -> None:
    """A service killed while it gzipped a closed file (its partial copy left), or after the
    packed copy was in place and before the plain one went: at the next rotation each closed
    file left plain is gzipped, whole, and the plain one goes."""
    directory = tmp_path / "archive"
    directory.mkdir()
    cut_short = directory / "archive-2026-01-01-000001.jsonl"
    cut_short.write_bytes(b'{"record":"judge"}\n' * 100)
    (directory / "archive-2026-01-01-000001.jsonl.gz.partial").write_bytes(b"\x1f\x8b half")
    both = directory / "archive-2026-01-01-000002.jsonl"
    both.write_bytes(b'{"record":"judge"}\n' * 50)
    (directory / "archive-2026-01-01-000002.jsonl.gz").write_bytes(gzip.compress(both.read_bytes()))
    writer = ArchiveWriter(directory, rotate_bytes=1, keep_days=30, day=lambda: "2026-01-01")
    archiving(Engine(plan), writer).tick(T0)
    writer.close()

    assert sorted(p.name for p in directory.iterdir()) == [
        "archive-2026-01-01-000001.jsonl.gz",
        "archive-2026-01-01-000002.jsonl.gz",
        "archive-2026-01-01-000003.jsonl.gz",
        "archive-2026-01-01-000004.jsonl",
    ]
    first = gzip.decompress((directory / "archive-2026-01-01-000001.jsonl.gz").read_bytes())
    assert first == b'{"record":"judge"}\n' * 100


def test_a_directory_named_like_an_archive_file_stops_neither_the_service_nor_a_replay(
    plan: LoadedPlan, tmp_path: Path
) -> None:
    """Whatever else is in the archive directory, only the service's own plain files are its
    files: a directory named like an old one neither fails the retention at a rotation (which
    would stop the service) nor is replayed."""
    directory = tmp_path / "archive"
    planted = directory / "archive-2020-01-01-000001.jsonl"
    planted.mkdir(parents=True)
    long_ago = time.time() - 40 * 86_400
    os.utime(planted, (long_ago, long_ago))
    writer = ArchiveWriter(directory, rotate_bytes=1, keep_days=30, max_bytes=1)
    archiving(Engine(plan), writer).tick(T0)
    writer.close()

    assert planted.is_dir()
    assert planted not in archive_files(directory)


def test_an_archived_gateway_status_replays_to_its_gateway_point(
    plan: LoadedPlan, tmp_path: Path
) -> None:
    """The status messages a live run took are archived with the batches; the replay stores
    the same ``gateway`` point, and dead-letters a bad one with its reason."""
    status = GatewayStatus(v=1, site=SITE, gateway=SKEWED, state="online", ts=T0, backlog=4)
    status_at = f"milkguard/v1/gw/{SITE}/{SKEWED}/status"
    service = LiveService(plan, tmp_path / "archive")
    service.start(T0)
    assert service.ingest is not None
    service.ingest.handle_many(
        iter(
            [
                (topic(SKEWED), payload(SKEWED, 1, T0, "tank-1", [T0]), T0 + 1000),
                (status_at, encode_status(status), T0 + 1000),
                (status_at, b"{}", T0 + 1000),
            ]
        )
    )
    service.stop()

    summary = replay_archive(
        plan,
        archive_files(tmp_path / "archive"),
        io.StringIO(),
        deadletter=tmp_path / "letters.jsonl",
        timeseries=tmp_path / "series",
    )

    lines = [
        line
        for path in (tmp_path / "series").glob("timeseries-*.lp")
        for line in path.read_text().splitlines()
    ]
    (point,) = [line for line in lines if line.startswith("gateway,")]
    assert point.startswith(f'gateway,site={SITE},gateway={SKEWED} state="online"')
    assert "backlog=4i" in point
    (letter,) = map(json.loads, (tmp_path / "letters.jsonl").read_text().splitlines())
    assert letter["reason"].startswith("not a gateway status of wire contract v1")
    assert summary.batches == 1

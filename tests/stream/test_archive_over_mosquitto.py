"""A recorded day replays as it ran: the real ``milkguard run`` archives what it judged, over a
real Mosquitto, and ``milkguard replay`` of that archive writes the deviation changes the live
service wrote, line for line, through a gateway clock 30 s fast, a link drop with its backlog
sent late, and a ``kill -9``.

HACCP record keeping (Codex CXC 1-1969 section 3.11; GB 14881 section 14; PMO section 7
recording thermometer charts): the monitoring record must be reproducible from the observations
it was made from, so an auditor can check a verdict after the fact.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from edge.publisher import GatewayPublisher
from milkguard import mqtt as mqtt_connect
from milkguard.backoff import Backoff
from milkguard.contract.v1 import Reading
from stream.archive import Message, archive_files, file_number, read_records
from stream.checkpoint import CheckpointFile, file_paths
from stream.plan import load_plan
from stream.replay import replay_archive
from tests.servers import start_mosquitto, stop
from tests.stream.test_run_kills import ASSET, PLAN, RULE, Broker, Runtime

pytestmark = pytest.mark.integration

SITE = "farm-01"
FAST = "farm-01-gw-fast"  # tank-1; its clock (sent_at and readings) runs 30 s fast
LINK = "farm-01-gw-link"  # tank-2; its link drops, then it sends the backlog at once
SKEW_MS = 30_000
SECONDS = 24
#: the link is down for these seconds: longer than the channel's silence limit (3 s at 1 s
#: sampling) plus its allowed lateness (2 s), so "monitoring lost" opens before the backlog
LINK_DOWN = range(10, 17)


def milk_temp(second: int) -> float:
    """Warm (8.5 degC, above the 6 degC limit) from second 3 to 12: a breach sustained past 5 s."""
    return 8.5 if 3 <= second < 12 else 4.0


def publish_day(broker: Broker, published: Counter[tuple[str, int]], done: threading.Event) -> None:
    """Both gateways, one batch a second each, as edge agents publish: QoS 1, a persistent
    session, a quick reconnect."""
    connection = mqtt_connect.connect(
        mqtt_connect.BrokerAddress(broker.host, broker.port),
        "archive-test-gateways",
        clean_session=False,
        reconnect=Backoff(0.2, 1.0),
    )
    fast = GatewayPublisher(connection, SITE, FAST, first_seq=1)
    link = GatewayPublisher(connection, SITE, LINK, first_seq=1)
    backlog: list[Reading] = []
    began = time.monotonic()
    for second in range(SECONDS):
        now = time.time_ns() // 1_000_000
        ahead = now + SKEW_MS
        reading = Reading("tank-1", "milk_temp", milk_temp(second), "degC", ahead)
        published[FAST, fast.publish([reading], sent_at=ahead)] += 1
        backlog.append(Reading("tank-2", "milk_temp", milk_temp(second), "degC", now))
        if second not in LINK_DOWN:
            published[LINK, link.publish(backlog)] += 1
            backlog = []
        time.sleep(max(0.0, second + 1 - (time.monotonic() - began)))
    assert connection.wait_acknowledged(30), "the broker did not acknowledge every batch"
    connection.close()
    done.set()


def replay_of(runtime: Runtime, plan: Path, tmp_path: Path) -> list[str]:
    """``milkguard replay`` of the runtime's archive directory: the deviation lines."""
    out = tmp_path / f"{runtime.data_dir.name}-replayed.jsonl"
    result = subprocess.run(
        [
            *(sys.executable, "-m", "milkguard", "replay", str(runtime.data_dir / "archive")),
            *("--plan", str(plan), "--output", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "note:" not in result.stderr, result.stderr
    return out.read_text().splitlines()


def live_lines(runtime: Runtime) -> list[str]:
    return (runtime.data_dir / "deviations.jsonl").read_text().splitlines()


def archived_batches(runtime: Runtime) -> Counter[tuple[str, int]]:
    """(gateway, seq) of every message in the archive, counted."""
    found: Counter[tuple[str, int]] = Counter()
    for path in archive_files(runtime.data_dir / "archive"):
        for _, record in read_records(path):
            if isinstance(record, Message):
                batch = json.loads(record.raw())
                found[batch["gateway"], batch["seq"]] += 1
    return found


@pytest.fixture
def farm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Broker, Path]:
    """An external Mosquitto, the farm's plan, and the archive switched on."""
    monkeypatch.setenv("MILKGUARD_ARCHIVE__ENABLED", "true")
    mosquitto = start_mosquitto(tmp_path, max_inflight_messages=1000)
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        PLAN.format(
            assets="".join(ASSET.format(n=n) for n in (1, 2)),
            rules="".join(RULE.format(n=n) for n in (1, 2)),
        )
    )
    yield Broker(mosquitto.host, mosquitto.port), plan  # type: ignore[misc]
    stop(mosquitto.process)


def checkpointed(runtime: Runtime, into: Path) -> tuple[list[Path], list[str]]:
    """What the runtime's checkpoint vouches for: its archive up to the checkpointed size
    (copied into ``into``) and the deviation lines written by then."""
    saved = CheckpointFile(runtime.data_dir / "stream.checkpoint").load()
    assert saved is not None
    sizes = file_paths(saved.files, runtime.data_dir)
    archive = runtime.data_dir / "archive"
    current = next(p for p in sizes if p.parent == archive)
    into.mkdir()
    copies = []
    for path in archive_files(archive):
        if (file_number(path) or 0) <= (file_number(current) or 0):
            size = sizes.get(path, path.stat().st_size)
            copies.append(into / path.name)
            copies[-1].write_bytes(path.read_bytes()[:size])
    deviations = runtime.data_dir / "deviations.jsonl"
    written = deviations.read_bytes()[: sizes[deviations]] if deviations.exists() else b""
    return copies, written.decode().splitlines()


def run_day(
    runtime: Runtime,
    broker: Broker,
    kill_at_s: float | None = None,
    at_kill: Callable[[], None] = lambda: None,
) -> Counter[tuple[str, int]]:
    """Publish the day while the runtime judges it (killed with SIGKILL at ``kill_at_s``,
    ``at_kill`` called, a half-written line left in its archive, and started again); stop it
    cleanly at the end."""
    runtime.start()
    published: Counter[tuple[str, int]] = Counter()
    done = threading.Event()
    gateways = threading.Thread(target=publish_day, args=(broker, published, done))
    gateways.start()
    if kill_at_s is not None:
        time.sleep(kill_at_s)
        runtime.kill()
        at_kill()
        newest = archive_files(runtime.data_dir / "archive")[-1]
        with newest.open("ab") as archive:  # written, never checkpointed
            archive.write(b'{"record":"message","received_ms":17')
        runtime.start()
    gateways.join(timeout=SECONDS + 60)
    assert done.is_set(), "the gateways did not finish"
    time.sleep(2.0)  # the backlog judged, the silence timers past
    runtime.stop()
    return published


def test_a_recorded_day_with_a_fast_gateway_and_a_late_backlog_replays_to_identical_deviations(
    farm: tuple[Broker, Path], tmp_path: Path
) -> None:
    """A gateway clock 30 s fast is a time-sync fault (CCP clocks within the plan's
    tolerance), and its readings are judged on its own clock; a link drop longer than the
    silence limit is "monitoring lost", and the backlog sent after it is judged late. The
    archive of that day, replayed, gives the live deviation changes exactly: same ids, same
    start, end and detected times, same clock offsets."""
    broker, plan = farm
    runtime = Runtime(broker, plan, tmp_path / "var", "external", "archive-stream")

    run_day(runtime, broker)

    live = live_lines(runtime)
    kinds = Counter(json.loads(line)["kind"] for line in live)
    assert {"time_sync", "critical_limit", "monitoring_lost"} <= set(kinds), kinds
    assert replay_of(runtime, plan, tmp_path) == live


def test_a_killed_run_s_archive_holds_each_acknowledged_batch_once_and_replays_as_it_ran(
    farm: tuple[Broker, Path], tmp_path: Path
) -> None:
    """``kill -9`` between writing the archive and the checkpoint: the archive up to the size
    the checkpoint recorded replays to the deviation changes written when those messages were
    acknowledged; the restart cuts the archive back to the checkpoint, the broker sends again
    what was not acknowledged, and the archive then holds every batch the gateways published
    exactly once; replayed, with the restart where the service restarted, it gives the
    deviation changes the service kept."""
    broker, plan = farm
    runtime = Runtime(broker, plan, tmp_path / "var", "external", "archive-stream")

    plan_loaded = load_plan(plan)
    at_kill: list[tuple[list[str], list[str]]] = []

    def replay_what_was_acknowledged() -> None:
        files, acknowledged = checkpointed(runtime, tmp_path / "at-kill")
        out = io.StringIO()
        replay_archive(plan_loaded, files, out)
        at_kill.append((out.getvalue().splitlines(), acknowledged))

    published = run_day(runtime, broker, kill_at_s=8.0, at_kill=replay_what_was_acknowledged)

    replayed_at_kill, acknowledged_at_kill = at_kill[0]
    assert acknowledged_at_kill, "the first seconds should have opened deviations"
    assert replayed_at_kill == acknowledged_at_kill

    assert archived_batches(runtime) == published
    live = live_lines(runtime)
    assert any(json.loads(line)["kind"] == "critical_limit" for line in live)
    assert replay_of(runtime, plan, tmp_path) == live

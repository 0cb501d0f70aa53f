"""The edge agent against a real Mosquitto: nothing sampled is lost, duplicated or reordered
through a broker restart, a cut link or a kill -9, and failures are reported, not fatal."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from edge.agent import EdgeAgent
from edge.config import EdgeConfig, Source
from tests.edge.conftest import CountingSensor, GatewayRecorder, edge_config
from tests.helpers import LinkCutter, wait_until
from tests.servers import Mosquitto, start_mosquitto, stop

pytestmark = pytest.mark.integration


class RunningAgent:
    """An agent on a thread, with counting sensors whose every value can be accounted for."""

    def __init__(self, config: EdgeConfig) -> None:
        self.sensors: dict[str, CountingSensor] = {}

        def factory(source: Source) -> CountingSensor:
            return self.sensors.setdefault(source.name, CountingSensor(len(source.channels)))

        self.agent = EdgeAgent(config, driver_factory=factory)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.agent.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def reads(self) -> int:
        return sum(s.reads for s in self.sensors.values())

    def shutdown(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()


def assert_every_value_arrived_once_in_order(
    recorder: GatewayRecorder, sensors: dict[str, CountingSensor], config: EdgeConfig
) -> None:
    found = recorder.readings_by_channel()
    for source in config.sources:
        reads = sensors[source.name].reads
        for channel in source.channels:
            values = [value for _, value in found[(channel.asset, channel.channel)]]
            assert values == [float(n) for n in range(reads)], (
                f"{channel.asset}/{channel.channel}: {len(values)} values arrived of {reads}"
            )
            stamps = [ts for ts, _ in found[(channel.asset, channel.channel)]]
            assert stamps == sorted(set(stamps)), "timestamps must grow, each once"


@pytest.fixture
def persistent_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A broker that keeps sessions and queued messages across a restart, as production does."""
    broker = start_mosquitto(tmp_path, persistent=True)
    try:
        yield broker
    finally:
        stop(broker.process)


def test_a_broker_stopped_for_a_minute_loses_nothing(
    tmp_path: Path, persistent_broker: Mosquitto
) -> None:
    recorder = GatewayRecorder(persistent_broker.host, persistent_broker.port)
    config = edge_config(tmp_path / "edge", persistent_broker.port, channels=4, sources=2)
    running = RunningAgent(config)
    wait_until(lambda: recorder.count() >= 200, what="live readings before the outage")

    persistent_broker.stop()
    down_at = running.reads()
    time.sleep(60)
    assert running.reads() > down_at + 1_000  # sampling went on into the outbox
    assert running.agent.outbox.pending > 0
    persistent_broker.start()
    wait_until(lambda: running.agent.link.connects >= 2, what="the agent's reconnect")
    wait_until(lambda: running.agent.outbox.pending < 200, 60, "the backlog to drain")
    running.shutdown()

    wait_until(
        lambda: recorder.count() == running.reads() * 4,
        30,
        "every sampled reading at the recorder",
    )
    assert_every_value_arrived_once_in_order(recorder, running.sensors, config)
    recorder.close()
    with sqlite3.connect(tmp_path / "edge" / "outbox.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM batches").fetchone() == (0,)
        assert db.execute("SELECT COUNT(*) FROM pending").fetchone() == (0,)


def test_a_cut_link_marks_the_gateway_offline_and_loses_nothing(
    tmp_path: Path, persistent_broker: Mosquitto
) -> None:
    recorder = GatewayRecorder(persistent_broker.host, persistent_broker.port)
    relay = LinkCutter(persistent_broker.port)
    config = edge_config(tmp_path / "edge", relay.port, channels=3)
    running = RunningAgent(config)
    try:
        wait_until(lambda: recorder.count() >= 100, what="live readings")
        for _ in range(3):  # cut while batches are in flight, more than once
            relay.cut()
            wait_until(
                lambda: any(s.state == "offline" for s in recorder.statuses),
                20,
                "the broker to publish the gateway's last will",
            )
            time.sleep(2)
            relay.restore()
            recorder.statuses.clear()
            wait_until(
                lambda: any(s.state == "online" for s in recorder.statuses),
                20,
                "the gateway online again",
            )
            recorder.statuses.clear()
        running.shutdown()
        wait_until(lambda: recorder.count() == running.reads() * 3, 30, "every reading")
        assert_every_value_arrived_once_in_order(recorder, running.sensors, config)
    finally:
        relay.close()
        recorder.close()


def test_a_failing_source_is_retried_and_reported_while_the_others_go_on(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    recorder = GatewayRecorder(mosquitto.host, mosquitto.port)
    config = edge_config(tmp_path / "edge", mosquitto.port, channels=2, sources=2)
    running = RunningAgent(config)
    wait_until(lambda: len(running.sensors) == 2, what="both sources opened")
    broken, healthy = running.sensors["src-0"], running.sensors["src-1"]
    broken.fail.set()
    reads_before = healthy.reads
    wait_until(
        lambda: any(not s.sources["src-0"].ok and s.sources["src-1"].ok for s in recorder.statuses),
        20,
        "a status naming the failed source",
    )
    failing = [s for s in recorder.statuses if not s.sources["src-0"].ok][-1]
    assert failing.sources["src-0"].error == "the sensor does not answer"
    assert healthy.reads > reads_before  # the other source went on
    broken.fail.clear()
    wait_until(lambda: running.agent.pollers[0].health.failures == 0, 20, "the retry to succeed")
    running.shutdown()
    wait_until(lambda: recorder.count() == running.reads() * 2, 30, "every reading")
    assert_every_value_arrived_once_in_order(recorder, running.sensors, config)
    recorder.close()


#: A sensor read by a command: each read returns the next number of a counter kept in a file,
#: so the numbers continue across restarts of the agent and every one can be accounted for.
COUNTER = """
import pathlib, sys
path = pathlib.Path(sys.argv[1])
n = int(path.read_text()) if path.exists() else 0
(path.parent / "counter.new").write_text(str(n + 1))
(path.parent / "counter.new").replace(path)  # atomic: the test reads it meanwhile
print("\\n".join(f"k{i}={n}" for i in range(4)))
"""


def test_the_agent_killed_mid_batch_resends_what_it_stored_and_nothing_twice(
    tmp_path: Path, persistent_broker: Mosquitto
) -> None:
    recorder = GatewayRecorder(persistent_broker.host, persistent_broker.port)
    relay = LinkCutter(persistent_broker.port)
    counter = tmp_path / "counter"
    config = edge_config(tmp_path / "edge", relay.port, every_s=0.02)
    source = {
        "name": "counter",
        "driver": "command",
        "command": [sys.executable, "-c", COUNTER, str(counter)],
        "every_s": 0.02,
        "channels": [
            {"key": f"k{i}", "asset": "tank-1", "channel": f"c{i}", "unit": "degC"}
            for i in range(4)
        ],
    }
    document = {**config.model_dump(mode="json"), "sources": [source]}
    document["batching"] = {"max_readings": 20, "max_delay_s": 0.1}
    config_file = tmp_path / "edge.yaml"
    config_file.write_text(msgspec.json.encode(document).decode(), encoding="utf-8")
    command = [sys.executable, "-m", "milkguard", "edge", "run", "--config", str(config_file)]

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def kill(agent: subprocess.Popen[bytes]) -> None:
        os.kill(agent.pid, signal.SIGKILL)
        agent.wait(timeout=10)

    agent = start()
    try:
        # 1. killed while batches flow
        wait_until(lambda: recorder.count() >= 400, 60, "readings flowing")
        kill(agent)
        agent = start()
        wait_until(lambda: recorder.count() >= 800, 60, "readings after the first restart")
        # 2. killed with a window of batches published that the broker never got
        relay.blackhole()
        stalled = recorder.count()
        blackholed_at = int(counter.read_text())
        wait_until(
            lambda: int(counter.read_text()) >= blackholed_at + 100,
            30,
            "20 batches' worth of readings sampled into the dead link",
        )
        kill(agent)
        relay.cut()
        relay.restore()
        assert recorder.count() == stalled
        agent = start()
        wait_until(lambda: recorder.count() >= stalled + 400, 60, "readings after the restart")
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=30) == 0
    finally:
        if agent.poll() is None:
            agent.kill()
        relay.close()

    with sqlite3.connect(tmp_path / "edge" / "outbox.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM pending").fetchone() == (0,)
        assert db.execute("SELECT COUNT(*) FROM batches").fetchone() == (0,)
    reads = int(counter.read_text())
    wait_until(lambda: recorder.count() >= (reads - 2) * 4, 30, "every stored reading")
    for (asset, channel), found in recorder.readings_by_channel().items():
        values = [int(value) for _, value in found]
        assert values == sorted(set(values)), f"{asset}/{channel}: in order, once each"
        missing = set(range(reads)) - set(values)
        # a kill may only lose the read it interrupted, before the reading was stored
        assert len(missing) <= 2, f"{asset}/{channel}: lost {sorted(missing)[:20]}"
    recorder.close()

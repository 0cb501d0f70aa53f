"""Sampling keeps going whatever fails around it: a broken disk, a full disk, a crashing driver."""

from __future__ import annotations

import threading
from pathlib import Path

from edge.agent import EdgeAgent, Poller
from edge.alarm import LocalAlarm
from edge.config import Source
from edge.outbox import Outbox
from tests.edge.conftest import CountingSensor, edge_config
from tests.servers import free_port


class CrashingSensor:
    def read(self) -> list[float | None]:
        raise ZeroDivisionError("a bug in a vendor driver")

    def close(self) -> None:
        pass


def test_a_disk_that_refuses_writes_is_reported_and_sampling_goes_on(tmp_path: Path) -> None:
    config = edge_config(tmp_path / "edge", free_port(), channels=2)
    outbox = Outbox(tmp_path / "outbox.sqlite", site="farm-01", gateway="gw-1")
    alarm = LocalAlarm(None)
    sensor = CountingSensor(2)
    poller = Poller(config.sources[0], outbox, alarm, threading.Event(), lambda s: sensor)
    assert poller._sample()
    outbox.close()  # every write now fails, as on a dead SD card

    assert poller._sample()

    assert outbox.counters.refused_readings == 2
    assert alarm.active
    assert sensor.reads == 2


def test_a_crashing_driver_is_a_failed_source_not_a_dead_thread(tmp_path: Path) -> None:
    config = edge_config(tmp_path / "edge", free_port(), channels=1, limits={"high": 5.0})
    outbox = Outbox(tmp_path / "outbox.sqlite", site="farm-01", gateway="gw-1")
    alarm = LocalAlarm(None)

    def factory(source: Source) -> CrashingSensor:
        return CrashingSensor()

    poller = Poller(config.sources[0], outbox, alarm, threading.Event(), factory)
    assert not poller._sample()
    assert not poller._sample()

    assert poller.health.failures == 2
    assert poller.health.error == "driver error: ZeroDivisionError('a bug in a vendor driver')"
    assert alarm.active  # a limited channel nobody can read is not a cold tank


def test_a_nearly_full_disk_rings_the_alarm_before_the_outbox_fills(tmp_path: Path) -> None:
    config = edge_config(tmp_path / "edge", free_port(), channels=1, outbox={"min_free_mb": 10**12})
    agent = EdgeAgent(config, driver_factory=lambda s: CountingSensor(1))
    agent.send_once()

    assert agent.alarm.active
    assert agent.status().outbox_nearly_full
    agent.outbox.close()

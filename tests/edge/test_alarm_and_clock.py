"""Offline safety and clock reporting: the local alarm rings with no link at all, and the
gateway says whether its clock can be trusted."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from edge.agent import EdgeAgent
from edge.alarm import LocalAlarm
from edge.clock import clock_reader, kernel_clock, parse_chrony_tracking, parse_command_output
from edge.config import AlarmConfig, Source
from tests.edge.conftest import CountingSensor, edge_config
from tests.helpers import wait_until
from tests.servers import free_port

RELAY = [
    sys.executable,
    "-c",
    "import sys, os; open(sys.argv[1], 'a').write("
    "sys.argv[2] + ' ' + os.environ['MILKGUARD_ALARM_REASON'] + '\\n')",
]


def relay_log(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def test_the_local_alarm_rings_while_the_link_is_down(tmp_path: Path) -> None:
    relay = tmp_path / "relay.log"
    nobody_listens = free_port()
    config = edge_config(
        tmp_path / "edge",
        nobody_listens,
        channels=1,
        limits={"high": 5.0},
        alarm={"command": [*RELAY, str(relay)]},
    )
    sensor = CountingSensor(1)  # reads 0, 1, 2, ...: above 5 from the seventh read

    def factory(source: Source) -> CountingSensor:
        return sensor

    agent = EdgeAgent(config, driver_factory=factory)
    stop = threading.Event()
    runner = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    runner.start()
    try:
        wait_until(lambda: bool(relay_log(relay)), 20, "the relay switched on")
        assert relay_log(relay)[0].startswith("on tank-0/t0 = 6 degC")
        assert not agent.link.connected.is_set()
        assert agent.link.last_error is not None
        assert "nothing accepts connections" in agent.link.last_error
        assert agent.outbox.pending >= 7  # every reading kept for when the link returns
    finally:
        stop.set()
        runner.join(timeout=30)


def test_the_alarm_switches_off_when_every_cause_clears(tmp_path: Path) -> None:
    relay = tmp_path / "relay.log"
    alarm = LocalAlarm(AlarmConfig(command=[*RELAY, str(relay)]))
    alarm.update("tank-1/milk_temp", True, "tank-1/milk_temp = 7 degC")
    alarm.update("source:probes", True, "probes: no answer")
    alarm.update("tank-1/milk_temp", False)
    assert alarm.active
    alarm.update("source:probes", False)
    alarm.close()

    assert not alarm.active
    assert [line.split()[0] for line in relay_log(relay)] == ["on", "off"]


def test_a_failing_alarm_command_is_counted_not_fatal(tmp_path: Path) -> None:
    alarm = LocalAlarm(AlarmConfig(command=[str(tmp_path / "no-such-relay")]))
    alarm.update("tank-1/milk_temp", True, "too warm")
    alarm.close()
    assert alarm.command_failures == 1


def test_chrony_tracking_is_read_as_sync_state_offset_and_error_bound() -> None:
    line = (
        "A9FEA97B,169.254.169.123,4,1795341600.123,-0.000012345,0.000001,0.00002,"
        "-3.1,0.001,0.02,0.000400,0.000100,64.0,Normal"
    )
    state = parse_chrony_tracking(line)
    assert state.synced is True
    assert state.offset_ms == pytest.approx(-0.012345)
    assert state.error_ms == pytest.approx(0.3)
    unsynced = parse_chrony_tracking(line.replace("Normal", "Not synchronised"))
    assert unsynced.synced is False


def test_a_clock_command_reports_in_json_and_garbage_means_unknown() -> None:
    assert parse_command_output('{"synced": true, "offset_ms": 2.5}').offset_ms == 2.5
    with pytest.raises(ValueError, match="synced"):
        parse_command_output("[]")
    reader = clock_reader("command", [sys.executable, "-c", "print('not json')"])
    assert reader().synced is None


def test_the_kernel_clock_is_readable_here() -> None:
    state = kernel_clock()
    assert state.source == "kernel"
    assert state.synced in (True, False)
    assert state.error_ms is not None
    assert state.error_ms >= 0


def test_a_flapping_channel_leaves_the_relay_in_the_state_wanted_now(tmp_path: Path) -> None:
    relay = tmp_path / "relay.log"
    slow_relay = [
        sys.executable,
        "-c",
        "import sys, time; time.sleep(0.02); open(sys.argv[1], 'a').write(sys.argv[2] + '\\n')",
        str(relay),
    ]
    alarm = LocalAlarm(AlarmConfig(command=slow_relay))
    for flap in range(201):
        alarm.update("tank-1/milk_temp", flap % 2 == 0, "flapping")
    alarm.close()

    assert alarm.active  # 201 flaps: the last one breached
    assert relay_log(relay)[-1] == "on"
    assert len(relay_log(relay)) < 201  # the relay follows the state, not every order


def test_a_breach_that_clears_before_the_relay_runs_still_rings_once(tmp_path: Path) -> None:
    relay = tmp_path / "relay.log"
    alarm = LocalAlarm(AlarmConfig(command=[*RELAY, str(relay)]))
    alarm.update("tank-1/milk_temp", True, "spike")
    alarm.update("tank-1/milk_temp", False)
    alarm.close()

    assert [line.split()[0] for line in relay_log(relay)] == ["on", "off"]

"""DS18B20 probes read through w1-therm: good readings, CRC failures, reset values, lost probes.

The kernel interface is a directory of files, so a fake tree in tmp_path is the real interface.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from edge.drivers.base import DriverError
from edge.drivers.ds18b20 import DS18B20Config, DS18B20Driver

TANK_PROBE = "28-0000075a2b3c"
ROOM_PROBE = "28-0000075a9f01"


def w1_slave(millidegrees: int, crc_ok: bool = True) -> str:
    verdict = "YES" if crc_ok else "NO"
    scratchpad = "72 01 4b 46 7f ff 0e 10 57"
    return f"{scratchpad} : crc=57 {verdict}\n{scratchpad} t={millidegrees}\n"


def put_probe(bus: Path, sensor_id: str, content: str) -> None:
    probe = bus / sensor_id
    probe.mkdir(parents=True, exist_ok=True)
    (probe / "w1_slave").write_text(content)


def config(bus: Path, *sensor_ids: str, **fields: Any) -> DS18B20Config:
    return DS18B20Config.model_validate(
        {
            "name": "tank-1-probes",
            "driver": "ds18b20",
            "base_dir": bus,
            "channels": [
                {"asset": "tank-1", "channel": f"milk_temp_{i}", "unit": "degC", "sensor_id": sid}
                for i, sid in enumerate(sensor_ids)
            ],
            **fields,
        }
    )


@pytest.fixture
def bus(tmp_path: Path) -> Path:
    path = tmp_path / "w1" / "devices"
    path.mkdir(parents=True)
    return path


def test_each_probe_reads_its_temperature_in_config_order(bus: Path) -> None:
    put_probe(bus, TANK_PROBE, w1_slave(3_875))
    put_probe(bus, ROOM_PROBE, w1_slave(-1_250))

    driver = DS18B20Driver(config(bus, ROOM_PROBE, TANK_PROBE))

    assert driver.read() == [-1.25, 3.875]


def test_a_probe_with_a_failed_crc_reads_none(bus: Path) -> None:
    put_probe(bus, TANK_PROBE, w1_slave(3_875, crc_ok=False))
    put_probe(bus, ROOM_PROBE, w1_slave(12_000))

    assert DS18B20Driver(config(bus, TANK_PROBE, ROOM_PROBE)).read() == [None, 12.0]


def test_the_power_on_reset_value_on_a_first_read_reads_none(bus: Path) -> None:
    put_probe(bus, TANK_PROBE, w1_slave(85_000))

    assert DS18B20Driver(config(bus, TANK_PROBE)).read() == [None]


def test_85_degrees_reached_gradually_during_cleaning_is_a_real_reading(bus: Path) -> None:
    driver = DS18B20Driver(config(bus, TANK_PROBE))
    readings = []
    for millidegrees in (80_000, 83_500, 85_000):
        put_probe(bus, TANK_PROBE, w1_slave(millidegrees))
        readings.append(driver.read()[0])

    assert readings == [80.0, 83.5, 85.0]


def test_85_degrees_jumping_from_cold_milk_reads_none(bus: Path) -> None:
    driver = DS18B20Driver(config(bus, TANK_PROBE))
    put_probe(bus, TANK_PROBE, w1_slave(4_000))
    driver.read()
    put_probe(bus, TANK_PROBE, w1_slave(85_000))

    assert driver.read() == [None]


def test_a_probe_the_kernel_could_not_reach_reads_none(bus: Path) -> None:
    put_probe(bus, TANK_PROBE, w1_slave(-127_000))

    assert DS18B20Driver(config(bus, TANK_PROBE)).read() == [None]


@pytest.mark.parametrize(
    "content",
    ["", "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n", "garbage\nmore garbage\n"],
    ids=["empty", "truncated", "garbage"],
)
def test_a_malformed_w1_slave_file_reads_none(bus: Path, content: str) -> None:
    put_probe(bus, TANK_PROBE, content)

    assert DS18B20Driver(config(bus, TANK_PROBE)).read() == [None]


def test_a_missing_probe_reads_none_and_is_logged_once_with_its_id(
    bus: Path, caplog: pytest.LogCaptureFixture
) -> None:
    put_probe(bus, ROOM_PROBE, w1_slave(12_000))
    driver = DS18B20Driver(config(bus, TANK_PROBE, ROOM_PROBE))

    with caplog.at_level(logging.WARNING, logger="edge.drivers.ds18b20"):
        first = driver.read()
        second = driver.read()

    assert first == second == [None, 12.0]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].sensor_id == TANK_PROBE  # type: ignore[attr-defined]
    assert "not found" in warnings[0].getMessage()


def test_a_probe_that_returns_reads_again_and_its_first_85_is_distrusted(bus: Path) -> None:
    put_probe(bus, TANK_PROBE, w1_slave(84_000))
    driver = DS18B20Driver(config(bus, TANK_PROBE))
    assert driver.read() == [84.0]

    (bus / TANK_PROBE / "w1_slave").unlink()
    (bus / TANK_PROBE).rmdir()
    assert driver.read() == [None]

    put_probe(bus, TANK_PROBE, w1_slave(85_000))
    assert driver.read() == [None]
    put_probe(bus, TANK_PROBE, w1_slave(84_500))
    assert driver.read() == [84.5]


def test_a_missing_bus_fails_the_source_and_points_at_the_kernel_modules(tmp_path: Path) -> None:
    driver = DS18B20Driver(config(tmp_path / "no-such-dir", TANK_PROBE))

    with pytest.raises(DriverError, match="w1-gpio and w1-therm kernel modules") as caught:
        driver.read()
    assert caught.value.source == "tank-1-probes"


def test_upper_case_ids_from_probe_labels_are_accepted(bus: Path) -> None:
    put_probe(bus, TANK_PROBE, w1_slave(4_125))

    assert DS18B20Driver(config(bus, TANK_PROBE.upper())).read() == [4.125]


@pytest.mark.parametrize(
    "sensor_id",
    ["0000075a2b3c", "29-0000075a2b3c", "28-0000075a2b3", "28-0000075a2b3g", "../28-0000075a2b3c"],
)
def test_a_sensor_id_that_is_not_a_w1_therm_rom_id_is_refused(bus: Path, sensor_id: str) -> None:
    with pytest.raises(ValidationError, match="sensor_id"):
        config(bus, sensor_id)


def test_an_unknown_config_field_is_refused(bus: Path) -> None:
    with pytest.raises(ValidationError, match="resolution"):
        config(bus, TANK_PROBE, resolution=12)

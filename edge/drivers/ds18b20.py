"""DS18B20 1-Wire temperature probes, read through the Linux w1-therm sysfs interface.

The DS18B20 (and its relatives DS18S20, DS1822, MAX31850, DS28EA00) is the stainless probe found
in farm milk tanks, cold rooms and truck compartments: cheap, waterproof, several on one
three-wire bus. The kernel's ``w1-gpio`` and ``w1-therm`` modules expose each probe as a
directory named by its ROM id (``28-0000075a2b3c``) holding a ``w1_slave`` file::

    72 01 4b 46 7f ff 0e 10 57 : crc=57 YES
    72 01 4b 46 7f ff 0e 10 57 t=23125

Reading the file starts a conversion (about 750 ms at 12-bit resolution), so a bus of probes is
read one after another and ``timeout_s`` is checked between probes: a blocking sysfs read cannot
be interrupted, so one read may overrun the limit by at most one probe's conversion.

What a probe reports is not always a temperature:

- ``crc=.. NO``: noise on a long cable corrupted the scratchpad; the value is garbage.
- 85.000 °C: the scratchpad's power-on-reset value. A probe that browned out returns it before
  its first conversion. 85 °C is also a real CIP (cleaning) temperature, so it is refused only
  when nothing says it is real: on a probe's first reading, or as a jump from a distant one.
- -127.000 °C: what the kernel reports when it could not talk to the probe at all.
- A missing directory: the probe fell off the bus (cut cable, water in the connector).

Each of these is one unreadable point (``None``); only a missing bus (``base_dir`` absent) fails
the whole source. Problems are logged when they start and when they clear, not on every read,
because a probe with a cut cable would otherwise log once a second for days.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated, Final, Literal

from pydantic import BeforeValidator, ConfigDict, Field

from edge.drivers.base import ChannelMap, DriverError, SourceConfig

__all__ = ["DS18B20Channel", "DS18B20Config", "DS18B20Driver"]

log = logging.getLogger(__name__)

#: Family codes of the w1-therm chips: DS18S20, DS18B20, DS1822, DS28EA00, MAX31850.
SENSOR_ID_PATTERN: Final = r"^(10|22|28|3b|42)-[0-9a-f]{12}$"

#: Scratchpad power-on-reset value, in millidegrees.
_POWER_ON_RESET_MC: Final = 85_000
#: What w1-therm reports when the probe did not answer, in millidegrees.
_NO_ANSWER_MC: Final = -127_000
#: A probe's thermal mass cannot move this far between two polls, so an 85 °C reading this far
#: from the previous one is the reset value, not the milk.
_PLAUSIBLE_STEP_C: Final = 10.0


def _lowercase(value: object) -> object:
    # Probe labels and datasheets print ROM ids in upper case; sysfs names are lower case.
    return value.lower() if isinstance(value, str) else value


SensorId = Annotated[str, BeforeValidator(_lowercase), Field(pattern=SENSOR_ID_PATTERN)]


class DS18B20Channel(ChannelMap):
    """One probe on the bus and where its temperature goes."""

    model_config = ConfigDict(extra="forbid")

    sensor_id: SensorId = Field(
        description=(
            "ROM id of the probe as the kernel names it: family code (28 for a DS18B20), '-', "
            "12 hex digits, e.g. 28-0000075a2b3c. List them with: ls /sys/bus/w1/devices"
        )
    )


class DS18B20Config(SourceConfig):
    """A 1-Wire bus of DS18B20 temperature probes read through sysfs."""

    model_config = ConfigDict(extra="forbid")

    driver: Literal["ds18b20"] = Field(description="Selects this driver.")
    base_dir: Path = Field(
        default=Path("/sys/bus/w1/devices"),
        description="Where w1-therm lists the probes; change it only for tests or a chroot.",
    )
    # The base declares list[ChannelMap]; pydantic validates this narrower list, and list
    # invariance is all mypy objects to.
    channels: list[DS18B20Channel] = Field(
        min_length=1, description="The probes, in the order read() returns them."
    )


class _Probe:
    """What the driver remembers about one probe between reads."""

    __slots__ = ("last_celsius", "problem")

    def __init__(self) -> None:
        self.last_celsius: float | None = None
        self.problem: str | None = None


class DS18B20Driver:
    """Reads every configured probe once per ``read()``; see the module docstring."""

    def __init__(self, config: DS18B20Config) -> None:
        self.config = config
        self._probes = [_Probe() for _ in config.channels]

    def read(self) -> list[float | None]:
        """One temperature in °C (or None) per configured probe, in config order."""
        base_dir = self.config.base_dir
        if not base_dir.is_dir():
            raise DriverError(
                self.config.name,
                f"1-Wire device directory {base_dir} does not exist: the w1-gpio and w1-therm "
                "kernel modules may not be loaded (enable dtoverlay=w1-gpio on a Raspberry Pi, "
                "or run: modprobe w1-gpio w1-therm)",
            )
        deadline = time.monotonic() + self.config.timeout_s
        values: list[float | None] = []
        for index, (channel, probe) in enumerate(
            zip(self.config.channels, self._probes, strict=True)
        ):
            if index and time.monotonic() > deadline:
                raise DriverError(
                    self.config.name,
                    f"reading {len(self.config.channels)} probes took longer than timeout_s="
                    f"{self.config.timeout_s} s (stopped after {index}); each probe needs about "
                    "0.75 s to convert: raise timeout_s or split the probes over sources",
                )
            values.append(self._read_probe(channel, probe))
        return values

    def close(self) -> None:
        """Nothing to release: each read opens and closes its sysfs files."""

    def _read_probe(self, channel: DS18B20Channel, probe: _Probe) -> float | None:
        celsius, problem = self._measure(channel, probe)
        context = {"source": self.config.name, "sensor_id": channel.sensor_id}
        if celsius is not None:
            if probe.problem is not None:
                log.info("probe readable again", extra=context)
                probe.problem = None
        elif problem != probe.problem:
            log.warning(
                "probe unreadable: %s",
                problem,
                extra={
                    **context,
                    "asset": channel.asset,
                    "channel": channel.channel,
                    "problem": problem,
                },
            )
            probe.problem = problem
        return celsius

    def _measure(self, channel: DS18B20Channel, probe: _Probe) -> tuple[float | None, str]:
        """The probe's temperature in °C, or None and why there is none."""
        path = self.config.base_dir / channel.sensor_id / "w1_slave"
        try:
            text = path.read_text(encoding="ascii", errors="replace")
        except OSError as error:
            # A probe that comes back has been power-cycled: its next 85 °C is the reset value.
            probe.last_celsius = None
            if isinstance(error, FileNotFoundError):
                return None, "probe not found on the 1-Wire bus (cable cut or connector wet?)"
            return None, f"cannot read {path}: {error}"

        millidegrees, problem = _parse_w1_slave(text)
        if millidegrees is None:
            return None, problem
        celsius = millidegrees / 1000
        if millidegrees == _POWER_ON_RESET_MC and (
            probe.last_celsius is None or abs(celsius - probe.last_celsius) > _PLAUSIBLE_STEP_C
        ):
            return None, "power-on-reset value 85.000 °C (probe browned out?)"
        probe.last_celsius = celsius
        return celsius, ""


def _parse_w1_slave(text: str) -> tuple[int | None, str]:
    """Millidegrees from a ``w1_slave`` file, or None and why it holds no temperature."""
    lines = text.splitlines()
    crc_line = lines[0].strip() if lines else ""
    data_line = lines[1] if len(lines) > 1 else ""
    if crc_line.endswith("NO"):
        return None, "CRC check failed (noise on the cable? check shielding and pull-up)"
    malformed = f"w1_slave is incomplete or malformed (conversion interrupted?): {text[:80]!r}"
    if not crc_line.endswith("YES") or "t=" not in data_line:
        return None, malformed
    try:
        millidegrees = int(data_line.rpartition("t=")[2].strip())
    except ValueError:
        return None, malformed
    if millidegrees == _NO_ANSWER_MC:
        return None, "the kernel could not read the probe (-127 °C)"
    return millidegrees, ""

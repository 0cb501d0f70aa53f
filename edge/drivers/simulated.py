"""A simulated device behind a gateway: the simulators' physics, sampled in real time.

For trying an agent out on a desk, for field-test rigs without a tank, and for the agent's own
tests and benchmarks. The device runs on the real clock (times ``speed``), so the agent's
sampling, batching and outbox see exactly what they would see on a farm. ``fault_after_s``
breaks the device the way plants see it fail, so the local alarm can be tried too.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Literal

from pydantic import Field

from edge.drivers.base import ChannelMap, SourceConfig
from edge.drivers.physics import FarmBulkTank, HtstLine, TruckCompartment

Model = Literal["farm_tank", "truck_compartment", "htst_line"]
Device = FarmBulkTank | TruckCompartment | HtstLine

#: What each model can be asked for, and how to read it off the device.
QUANTITIES: dict[str, dict[str, Callable[[Device], float]]] = {
    "farm_tank": {
        "temp_c": lambda d: d.temp_c,  # type: ignore[union-attr]
        "volume_l": lambda d: d.volume_l,  # type: ignore[union-attr]
        "compressor": lambda d: float(d.compressor_on),  # type: ignore[union-attr]
    },
    "truck_compartment": {
        "temp_c": lambda d: d.temp_c,  # type: ignore[union-attr]
        "hatch": lambda d: float(d.hatch_open),  # type: ignore[union-attr]
    },
    "htst_line": {
        "hold_temp_c": lambda d: d.hold_temp_c,  # type: ignore[union-attr]
        "recorder_c": lambda d: d.hold_temp_c + d.recorder_offset_c,  # type: ignore[union-attr]
        "flow_l_h": lambda d: d.flow_l_h,  # type: ignore[union-attr]
        "forward": lambda d: float(d.forward),  # type: ignore[union-attr]
    },
}

#: Quantities that are states, exact by nature: no sensor noise on them.
_STATES = {"compressor", "hatch", "forward"}


class SimulatedChannel(ChannelMap):
    """One simulated sensor: which quantity of the device it measures."""

    quantity: str = Field(
        description="farm_tank: temp_c, volume_l, compressor; "
        "truck_compartment: temp_c, hatch; "
        "htst_line: hold_temp_c, recorder_c, flow_l_h, forward."
    )


class SimulatedConfig(SourceConfig):
    """A simulated farm tank, truck compartment or HTST line."""

    driver: Literal["simulated"]
    model: Model
    channels: list[SimulatedChannel] = Field(min_length=1)
    speed: float = Field(default=1.0, gt=0, le=10_000, description="Device seconds per second.")
    noise: float = Field(default=0.02, ge=0, description="Sensor noise (standard deviation).")
    seed: int = 1
    milking_every_s: float = Field(default=43_200, gt=0, description="farm_tank: milking cycle.")
    milking_for_s: float = Field(default=5_400, gt=0, description="farm_tank: milking length.")
    fault_after_s: float | None = Field(
        default=None,
        ge=0,
        description="Device seconds until it fails: a tank's compressor stops, a "
        "compartment's hatch opens, an HTST heater falls 2 °C short.",
    )

    def model_post_init(self, context: object) -> None:
        """Every channel must ask for a quantity the model has."""
        known = QUANTITIES[self.model]
        for channel in self.channels:
            if channel.quantity not in known:
                raise ValueError(
                    f"channel {channel.asset}/{channel.channel}: a {self.model} has no quantity "
                    f"{channel.quantity!r}; choose one of {', '.join(known)}"
                )


class SimulatedDriver:
    """Steps the device's physics to now and samples its channels with sensor noise."""

    def __init__(self, config: SimulatedConfig, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self._clock = clock
        self._started = self._last = clock()
        self._random = random.Random(config.seed)
        asset = config.channels[0].asset
        self._device: Device
        if config.model == "farm_tank":
            self._device = FarmBulkTank(asset=asset)
        elif config.model == "truck_compartment":
            self._device = TruckCompartment(asset=asset)
        else:
            self._device = HtstLine(asset=asset)
        self._read = [QUANTITIES[config.model][c.quantity] for c in config.channels]
        self._noisy = [c.quantity not in _STATES for c in config.channels]

    def read(self) -> list[float | None]:
        """Advance the device to now and sample every channel."""
        now = self._clock()
        elapsed = (now - self._started) * self.config.speed
        self._apply_schedule(elapsed)
        dt = (now - self._last) * self.config.speed
        self._last = now
        # the physics is explicit Euler: keep its steps short
        while dt > 0:
            step = min(dt, 1.0)
            self._device.step(step)
            dt -= step
        values: list[float | None] = []
        for read, noisy in zip(self._read, self._noisy, strict=True):
            value = read(self._device)
            if noisy and self.config.noise:
                value += self._random.gauss(0.0, self.config.noise)
            values.append(round(value, 3))
        return values

    def close(self) -> None:
        """Nothing to release."""

    def _apply_schedule(self, elapsed_s: float) -> None:
        device = self._device
        failed = self.config.fault_after_s is not None and elapsed_s >= self.config.fault_after_s
        if isinstance(device, FarmBulkTank):
            device.milking = elapsed_s % self.config.milking_every_s < self.config.milking_for_s
            if failed:
                device.cooling_kw = 0.0
        elif isinstance(device, TruckCompartment):
            device.hatch_open = failed
        elif failed:
            device.setpoint_c = device.cut_out_c - 2.0

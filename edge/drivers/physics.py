"""Device physics: first-order heat balances and simple controllers.

The simulated driver samples it in real time on a gateway; the simulators (above the edge agent)
step it on a simulated clock for their scenarios and the demo fleet.

Enough to give believable curves and the failures plants see: a tank whose compressor fails
warms from its heat gain; a compartment with its hatch open chases the ambient; an HTST heater
lags its setpoint and the flow-diversion valve diverts below its cut-out (unless stuck).
"""

from __future__ import annotations

from dataclasses import dataclass

MILK_DENSITY_KG_L = 1.03
MILK_HEAT_CAPACITY_KJ_KG_K = 3.93
EVAPORATOR_C = 0.5


@dataclass
class FarmBulkTank:
    """A direct-expansion bulk tank: a thermostat-run compressor cools; milkings add warm milk."""

    site: str = "farm-01"
    asset: str = "tank-1"
    volume_l: float = 4_000.0
    temp_c: float = 3.6
    # sized like an EN 13732 tank: the compressor out-cools a milking's heat load
    # (0.2 L/s of 33 °C milk is ~24 kW to bring to 4 °C)
    cooling_kw: float = 30.0
    milking_flow_l_s: float = 0.2
    milk_in_c: float = 33.0
    ambient_c: float = 22.0
    heat_gain_kw_per_k: float = 0.02
    compressor_on: bool = False
    milking: bool = False

    def step(self, dt_s: float) -> None:
        """Advance the heat balance by ``dt_s`` seconds."""
        if self.milking:
            added = self.milking_flow_l_s * dt_s
            self.temp_c = (self.temp_c * self.volume_l + self.milk_in_c * added) / (
                self.volume_l + added
            )
            self.volume_l += added
        # thermostat with hysteresis, as on real tank controllers
        if self.temp_c > 4.0:
            self.compressor_on = True
        elif self.temp_c < 3.2:
            self.compressor_on = False
        heat_kw = self.heat_gain_kw_per_k * (self.ambient_c - self.temp_c)
        if self.compressor_on:
            heat_kw -= self.cooling_kw
        mass_kg = self.volume_l * MILK_DENSITY_KG_L
        self.temp_c += heat_kw * dt_s / (mass_kg * MILK_HEAT_CAPACITY_KJ_KG_K)
        # the evaporator is near 0 degC: a small heel cannot be cooled below it
        self.temp_c = max(self.temp_c, EVAPORATOR_C)


@dataclass
class TruckCompartment:
    """An insulated, refrigerated tanker compartment; an open hatch lets warm air in."""

    asset: str
    temp_c: float = 4.0
    ambient_c: float = 28.0
    # fraction of the ambient gap gained per second with the hatch shut: an insulated tanker
    # warms under 1 degC an hour at 25 degC outside (time constant about 28 h)
    insulation_per_s: float = 0.00001
    hatch_open_per_s: float = 0.008  # the same with the hatch open
    refrigeration_per_s: float = 0.03  # pull-down towards the setpoint
    setpoint_c: float = 3.5
    hatch_open: bool = False

    def step(self, dt_s: float) -> None:
        """Advance the compartment's temperature by ``dt_s`` seconds."""
        gain = self.hatch_open_per_s if self.hatch_open else self.insulation_per_s
        rate = gain * (self.ambient_c - self.temp_c) - self.refrigeration_per_s * max(
            0.0, self.temp_c - self.setpoint_c
        )
        self.temp_c += rate * dt_s


@dataclass
class HtstLine:
    """An HTST pasteurizer: a heater that lags its setpoint, a timing pump, and a flow-diversion
    valve that diverts whenever the holding-tube outlet is below the cut-out."""

    asset: str = "htst-1"
    hold_temp_c: float = 72.6
    setpoint_c: float = 72.6
    heater_lag_s: float = 20.0  # first-order time constant of the outlet temperature
    flow_l_h: float = 10_000.0
    cut_out_c: float = 72.2
    forward: bool = True
    valve_stuck_forward: bool = False
    recorder_offset_c: float = -0.2  # the recorder must never read above the indicating thermometer

    def step(self, dt_s: float) -> None:
        """Advance the outlet temperature and set the valve as its controller would."""
        self.hold_temp_c += (self.setpoint_c - self.hold_temp_c) * min(
            1.0, dt_s / self.heater_lag_s
        )
        self.forward = self.valve_stuck_forward or self.hold_temp_c >= self.cut_out_c

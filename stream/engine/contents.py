"""Tank contents: how much milk a farm tank, truck compartment or silo holds, and whether a
take (a pickup, a delivery, a run's draw, a transfer out) leaves it empty.

The law judges the milk, not the event: a truck that takes two thirds of a tank leaves a heel
that still holds the oldest milking (an agitated tank mixes it), so the age of the oldest milk
runs on until the tank is empty. The books:

- in: each milking's ``volume_l`` (at its end; a milking still running or one that reported
  no volume leaves the contents unknown), a pickup's into a compartment, a receipt's or a
  transfer's into a silo;
- out: the event's ``volume_l`` (a pickup, delivery, transfer; a run's draw from its end, else
  the volume its start planned). The contract requires the volume of a pickup, delivery,
  receipt and transfer: it is the metered figure the load's papers and a lot's mass balance
  carry, so the books of the tank and of the compartment it fills balance;
- a level gauge (the asset's ``volume_channel``), where the plan names one, tells what was in
  a tank before a take better than the milkings' reports: it sees every milking, reported or
  not, and carries none of the meters' errors accumulated since the tank was last empty. What
  was in is the highest level it showed since the last take: the level before pumping began,
  whether the event is stamped at the start or the end of pumping (a reading taken during
  pumping would make the heel look smaller than it is, and end the age too early).

What remains at or below the asset's ``heel_l`` counts as empty. With the contents unknown, a
farm tank's or compartment's take empties it (what the engine always did, so plans that report
no volumes behave as before); a silo's does not (a silo is empty when its books or a
``silo_emptied`` event say so: the conservative reading, as a silo's age rule is new).

The books start empty when monitoring begins, as the cooling rule has always taken a tank to be
(its first milking is a first one). Events are booked in the order they are taken (in time
order within each batch the stream gets): volumes reported out of order are booked as they come.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from milkguard.contract.v1 import (
    Event,
    Receipt,
    RunEnd,
    RunStart,
    SiloEmptied,
    SiloTransfer,
)
from stream.engine.kinds import PlanContext


@dataclass(slots=True)
class Contents:
    """The volume books of one tank, compartment or silo."""

    heel_l: float = 0.0
    #: whether a take from unknown contents empties it (farm tanks, compartments) or not (silos)
    unknown_empties: bool = True
    #: litres in it by the books; None: not known (a milking reported no volume)
    volume_l: float | None = 0.0
    #: a milking has started whose volume is not reported yet
    filling: bool = False
    #: the highest level its gauge showed since the last take, and when that take was
    gauge_peak: float | None = None
    taken_at: int = -(2**62)

    def started_filling(self) -> None:
        """A milking started: its volume comes with its end."""
        self.filling = True

    def add(self, volume_l: float | None) -> None:
        """Milk came in (``None``: of unknown volume)."""
        self.filling = False
        if volume_l is None:
            self.volume_l = None
        elif self.volume_l is not None:
            self.volume_l += volume_l

    def gauge(self, ts: int, level: float) -> None:
        """A reading of the asset's level gauge (one from before the last take says nothing
        of what was in before the next)."""
        if ts <= self.taken_at:
            return
        if self.gauge_peak is None or level > self.gauge_peak:
            self.gauge_peak = level

    def held(self) -> float | None:
        """What was in before a take: the gauge's peak since the last take, else the books."""
        if self.gauge_peak is not None:
            return self.gauge_peak
        return None if self.filling else self.volume_l

    def take(self, ts: int, volume_l: float | None) -> bool:
        """Milk went out at ``ts``; True when what remains counts as empty (then the books
        start again from nothing)."""
        held = self.held()
        self.gauge_peak, self.taken_at = None, max(self.taken_at, ts)
        if held is None or volume_l is None:
            if self.unknown_empties:
                self.empty()
                return True
            self.volume_l = None
            return False
        remaining = held - volume_l  # a take larger than the contents leaves nothing
        if remaining <= self.heel_l:
            self.empty()
            return True
        self.volume_l, self.filling = remaining, False
        return False

    def empty(self) -> None:
        """Nothing is left in it."""
        self.volume_l, self.filling, self.gauge_peak = 0.0, False, None

    def state(self) -> list[Any]:
        """What a snapshot keeps (the heel and policy come from the plan)."""
        return [self.volume_l, self.filling, self.gauge_peak, self.taken_at]

    def restore(self, saved: list[Any] | None) -> None:
        """Take back :meth:`state`. A snapshot from before the books does not say what is in
        it: unknown, so a farm tank's or compartment's next take empties it, as the engine then
        assumed at every pickup (the books start from there)."""
        if saved is None:
            self.empty()
            self.volume_l = None
            return
        volume, filling, peak, taken_at = saved
        self.volume_l = None if volume is None else float(volume)
        self.filling = bool(filling)
        self.gauge_peak = None if peak is None else float(peak)
        self.taken_at = int(taken_at)


def contents_of(asset_key: str, context: PlanContext) -> tuple[Contents, int | None]:
    """The books of an asset's contents as its plan declares them (its heel; a silo's unknown
    contents do not count as empty), and the row of its level gauge, if it names one."""
    asset = context.loaded.plan.assets[asset_key]
    contents = Contents(heel_l=asset.heel_l, unknown_empties=asset.kind != "silo")
    gauge = asset.volume_channel
    return contents, None if gauge is None else context.row_of[(asset_key, gauge)]


# ------------------------------------------------------------------------------------ silos


@dataclass(frozen=True, slots=True)
class SiloMove:
    """What one plant event does to one silo's contents: milk in (``source``: the silo it came
    from, None for a receipt), out, or the silo emptied."""

    way: str  # "in", "out" or "emptied"
    volume_l: float | None = None
    source: str | None = None


def silo_move(
    event: Event, site: str, silo: tuple[str, str], planned: dict[str, float | None]
) -> SiloMove | None:
    """What ``event`` (reported at ``site``) does to the contents of ``silo`` (site, asset id),
    or None. ``planned``: the volume each run's start planned to draw from this silo, by run id
    (a run's end books the draw: its own volume for the silo, else the start's; a run draws
    over its length, so the silo is not empty before its end)."""
    here, asset = silo
    if site != here:
        return None
    if isinstance(event, RunStart | RunEnd):
        return _run_draw(event, asset, planned)
    move: SiloMove | None = None
    if isinstance(event, Receipt) and event.destination == asset:
        move = SiloMove("in", event.volume_l)
    elif isinstance(event, SiloTransfer) and event.asset == asset:
        move = SiloMove("out", event.volume_l)
    elif isinstance(event, SiloTransfer) and event.destination == asset:
        move = SiloMove("in", event.volume_l, source=event.asset)
    elif isinstance(event, SiloEmptied) and event.asset == asset:
        move = SiloMove("emptied")
    return move


def _run_draw(
    event: RunStart | RunEnd, asset: str, planned: dict[str, float | None]
) -> SiloMove | None:
    """A run's start plans its draw from the silo; its end books it. An end that does not name
    this silo does not reach it (the engine routes a run to the silos it names): the draw stays
    unbooked, the silo looks fuller than it is, and its age runs on until its books or a
    ``silo_emptied`` say it is empty (conservative)."""
    draw = next((d for d in event.sources if d.silo == asset), None)
    if draw is None:
        return None
    if isinstance(event, RunStart):
        planned[event.run_id] = draw.volume_l
        while len(planned) > 64:  # runs that never ended: the oldest plans go
            del planned[next(iter(planned))]
        return None
    start = planned.pop(event.run_id, None)
    return SiloMove("out", draw.volume_l if draw.volume_l is not None else start)

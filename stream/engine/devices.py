"""The gateways the stream has heard from: their codes in the readings' columns, their clocks
(estimated offsets, synchronisation reports) and their time-sync verdicts."""

from __future__ import annotations

import numpy as np

from stream.engine.clocks import DeviceClock, TimeSyncMachine
from stream.engine.columns import I64
from stream.engine.deviation import DeviationChange
from stream.engine.kinds import PlanContext

#: gateway ids remembered; bounded so invented ids cannot grow memory (further ones are
#: "unknown", and their clocks are not followed)
MAX_DEVICES = 20_000


class Devices:
    """Device names by code (code 0 is "unknown"), their clocks and time-sync machines."""

    __slots__ = ("_context", "clocks", "codes", "names", "time_sync")

    def __init__(self, context: PlanContext) -> None:
        self._context = context
        self.names: list[str] = ["unknown"]
        self.codes: dict[str, int] = {"unknown": 0}
        self.clocks: dict[str, DeviceClock] = {}
        self.time_sync: dict[str, TimeSyncMachine] = {}

    def code_of(self, device: str) -> int:
        """The device's code in the readings' columns (a new one for a new device)."""
        code = self.codes.get(device)
        if code is None:
            if len(self.names) >= MAX_DEVICES:
                return 0  # beyond this many gateway ids, further ones are named "unknown"
            code = self.codes[device] = len(self.names)
            self.names.append(device)
        return code

    def renamed(self, names: list[str]) -> None:
        """Take back the codes of a snapshot."""
        self.names[:] = names
        self.codes = {name: code for code, name in enumerate(self.names)}

    def offset_ms(self, device: str) -> int:
        """The device clock's estimated offset from the stream's (ahead: positive)."""
        clock = self.clocks.get(device)
        return clock.offset_ms if clock is not None else 0

    def offset_when(self, device: str, received_ms: int) -> int:
        """The offset a reading of ``device`` received at ``received_ms`` is judged with, the
        same however the stream batches its judging (:meth:`DeviceClock.offset_when`)."""
        clock = self.clocks.get(device)
        return clock.offset_when(received_ms) if clock is not None else 0

    def device_now(self, codes: I64, now: int) -> I64:
        """The stream's clock on each device's clock: ahead by the least its recent batches
        showed (not the offset estimate, the most: one batch with a sent_at an hour fast must
        not let a reading an hour ahead through)."""
        unique, inverse = np.unique(codes, return_inverse=True)
        devices, clocks = self.names, self.clocks
        ahead = []
        for code in unique.tolist():
            clock = clocks.get(devices[code]) if code < len(devices) else None
            ahead.append(max(min(clock.differences), 0) if clock and clock.differences else 0)
        return now + np.array(ahead, dtype=np.int64)[inverse]

    def serves_ccp(self, device: str) -> None:
        """A device that reports CCP channels has its clock held to the plan's tolerance."""
        clock = self.clocks.get(device)
        if clock is None and len(self.clocks) < MAX_DEVICES:
            clock = self.clocks[device] = DeviceClock()
        if clock is not None:
            clock.serves_ccp = True

    def clock(
        self, site: str, device: str, sent_at: int, received_ms: int, synced: bool | None
    ) -> DeviationChange | None:
        """One batch's clocks: see :meth:`stream.engine.core.Engine.clock`."""
        clock = self.clocks.get(device)
        if clock is None:
            if len(self.clocks) >= MAX_DEVICES:
                return None
            clock = self.clocks[device] = DeviceClock()
        clock.heard(sent_at, received_ms, synced)
        if not clock.serves_ccp:
            return None
        return self.time_sync_of(site, device).judge(clock, received_ms, device)

    def time_sync_of(self, site: str, device: str) -> TimeSyncMachine:
        """The device's time-sync machine (made at its first verdict)."""
        machine = self.time_sync.get(device)
        if machine is None:
            plan = self._context.loaded.plan
            spec = self._context.spec(
                rule_id=f"time-sync.{device}",
                kind="time_sync",
                ccp=None,
                severity="major",
                action="alert",
                site=site,
                asset=device,
                channel="clock",
                unit="s",
                source=f"plan {plan.plan}: CCP gateway clocks within {plan.clock_tolerance_s:g} s",
            )
            tolerance = round(plan.clock_tolerance_s * 1000)
            machine = self.time_sync[device] = TimeSyncMachine(spec, tolerance)
        return machine

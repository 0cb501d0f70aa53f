"""Device clocks: each gateway's offset from the stream's clock, and time-sync faults.

A batch carries the gateway's clock (``sent_at``) and the stream knows when it received it:
sent_at - received = offset - network delay, never more than the offset. So the largest
difference over the last batches is the estimate, from the batch that travelled fastest.

The gateway may also say how its own clock is doing (``clock.synced`` in a batch, from its time
service). A CCP gateway that reports its clock unsynchronised has an unknown offset, whatever
the arrival times suggest: that is a time-sync fault too, until it reports synchronised again.

A clock set right again is recognized once its old differences leave the window (32 batches): a
step down cannot be told from batches that travelled slowly (a broker's backlog after the stream
restarts), and reacting to those would raise a false fault after every restart.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from stream.engine.deviation import AppliedLimit, DeviationChange
from stream.engine.machines import Machine, RuleSpec, Sample

WINDOW = 32  # batches the estimate is taken over
MIN_BATCHES = 3  # before a verdict


@dataclass(slots=True)
class DeviceClock:
    """One gateway's clock as the stream sees it."""

    differences: deque[int] = field(default_factory=lambda: deque(maxlen=WINDOW))
    serves_ccp: bool = False
    synced: bool | None = None  # the gateway's own latest report (None: it does not report)

    @property
    def offset_ms(self) -> int:
        """The estimated offset (device ahead: positive); 0 before any batch."""
        return max(self.differences) if self.differences else 0

    def heard(self, sent_at: int, received_ms: int, synced: bool | None = None) -> None:
        """One batch's clocks, and the gateway's report on its own."""
        self.differences.append(sent_at - received_ms)
        self.synced = synced


class TimeSyncMachine(Machine):
    """A CCP gateway's clock off by more than the plan's tolerance: its timestamps, and every
    join made with them, are in doubt until it is back within."""

    __slots__ = ("tolerance_ms",)

    def __init__(self, spec: RuleSpec, tolerance_ms: int) -> None:
        super().__init__(spec)
        self.tolerance_ms = tolerance_ms

    def judge(self, clock: DeviceClock, received_ms: int, device: str) -> DeviationChange | None:
        """After each batch of the device."""
        if len(clock.differences) < MIN_BATCHES:
            return None
        offset = clock.offset_ms
        now = Sample(received_ms, offset / 1000, -1, 0.0, received_ms, device, late=False)
        now.offset_ms = offset
        off = abs(offset) > self.tolerance_ms or clock.synced is False
        if self._open is None:
            if off:
                limit = AppliedLimit(
                    min=-self.tolerance_ms / 1000,
                    max=self.tolerance_ms / 1000,
                    sustained_s=0.0,
                    unit="s",
                    source=self.spec.source,
                )
                change = self._opened(received_ms, now, offset / 1000, limit)
                change.deviation.clock_synced = clock.synced
                return change
            return None
        if off:
            if self._open.peak is None or abs(offset / 1000) > abs(self._open.peak):
                self._open.peak = offset / 1000
            return None
        return self._closed(received_ms, late=False)

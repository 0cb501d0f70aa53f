"""Device clocks: each gateway's offset from the stream's clock, and time-sync faults.

A batch carries the gateway's clock (``sent_at``) and the stream knows when it received it:
sent_at - received = offset - network delay, never more than the offset. So the largest
difference over the last batches is the estimate, from the batch that travelled fastest.

The gateway may also say how its own clock is doing (``clock.synced`` in a batch, from its time
service). A CCP gateway that reports its clock unsynchronised has an unknown offset, whatever
the arrival times suggest: that is a time-sync fault too, until it reports synchronised again.

Each reading is judged with the estimate in force when its batch came
(:meth:`DeviceClock.offset_when`), not the one in force when the stream gets round to judging
it: so the offset, and every time corrected by it, depends only on the batches and their
receive times, and a drained queue, message by message, and a replay of an archive with the
same receive times all judge alike.

A clock set right again is recognized once its old differences leave the window (32 batches): a
step down cannot be told from batches that travelled slowly (a broker's backlog after the stream
restarts), and reacting to those would raise a false fault after every restart. A time-sync
deviation names its causes: the offset beyond the tolerance, the gateway's own report, or both.

Rules that join channels of several devices judge on the stream's clock (:func:`on_stream_clock`)
and stamp their deviations on it, keeping each device's own times beside
(:func:`on_stream_clock_change`): the engine orders their samples on corrected time already, and
a dip stamped by a thermometer's gateway 4 s fast must not end before it began when the valve's
gateway, in sync, reports the divert.
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt
from msgspec.structs import replace as replace_struct

from stream.engine.deviation import (
    AppliedLimit,
    Deviation,
    DeviationChange,
    DeviceTime,
    TimeSyncCause,
)
from stream.engine.machines import Machine, RuleSpec, Sample

WINDOW = 32  # batches the estimate is taken over
MIN_BATCHES = 3  # before a verdict
#: changes of the estimate remembered: a reading still held after this many changes of its
#: device's estimate is judged with the oldest remembered
ESTIMATES_KEPT = 16


@dataclass(slots=True)
class DeviceClock:
    """One gateway's clock as the stream sees it."""

    differences: deque[int] = field(default_factory=lambda: deque(maxlen=WINDOW))
    serves_ccp: bool = False
    synced: bool | None = None  # the gateway's own latest report (None: it does not report)
    #: each change of the estimate: (receive time it holds from, the estimate), oldest first,
    #: receive times never decreasing
    estimates: list[tuple[int, int]] = field(default_factory=list)
    heard_ms: int = -1  # the latest receive time of any batch

    @property
    def offset_ms(self) -> int:
        """The estimated offset (device ahead: positive); 0 before any batch."""
        return max(self.differences) if self.differences else 0

    def heard(self, sent_at: int, received_ms: int, synced: bool | None = None) -> None:
        """One batch's clocks, and the gateway's report on its own."""
        self.differences.append(sent_at - received_ms)
        self.synced = synced
        estimate = max(self.differences)
        estimates = self.estimates
        if not estimates or estimate != estimates[-1][1]:
            # from this batch's receive time; a batch received in the same millisecond as one
            # before it (a backlog sent at once), or earlier (a clock that went back), changes
            # it from the next millisecond: a reading cannot be told apart from the others of
            # its millisecond, and whether the stream had taken in the later batches when it
            # judged it must not matter
            since = received_ms if received_ms > self.heard_ms else self.heard_ms + 1
            if estimates and since <= estimates[-1][0]:
                estimates[-1] = (estimates[-1][0], estimate)
            else:
                estimates.append((since, estimate))
                del estimates[:-ESTIMATES_KEPT]
        self.heard_ms = max(self.heard_ms, received_ms)

    def restore_estimates(self, estimates: Iterable[tuple[int, int]]) -> None:
        """Take back the estimates a snapshot kept (the latest receive time heard taken as the
        last estimate's, which is all a snapshot keeps of it)."""
        self.estimates = [(int(since), int(estimate)) for since, estimate in estimates]
        self.heard_ms = self.estimates[-1][0] if self.estimates else -1

    def offset_when(self, received_ms: int) -> int:
        """The offset a reading received at ``received_ms`` is judged with: the estimate in
        force when the first batch of that millisecond came. It depends only on the batches
        and their receive times, not on when the stream judges the reading."""
        estimates = self.estimates
        if not estimates:
            return self.offset_ms
        at = bisect_right(estimates, (received_ms, _LAST)) - 1
        return estimates[max(at, 0)][1]


_LAST = 2**63  # sorts after any estimate


class TimeSyncMachine(Machine):
    """A CCP gateway's clock off by more than the plan's tolerance: its timestamps, and every
    join made with them, are in doubt until it is back within."""

    __slots__ = ("tolerance_ms",)

    def __init__(self, spec: RuleSpec, tolerance_ms: int) -> None:
        super().__init__(spec)
        self.tolerance_ms = tolerance_ms

    def judge(self, clock: DeviceClock, received_ms: int, device: str) -> DeviationChange | None:
        """After each batch of the device; times are receive times, on the stream's clock."""
        if len(clock.differences) < MIN_BATCHES:
            return None
        offset = clock.offset_ms
        now = Sample(received_ms, offset / 1000, -1, 0.0, received_ms, device, late=False)
        now.offset_ms = offset
        causes: list[TimeSyncCause] = []
        if abs(offset) > self.tolerance_ms:
            causes.append("offset_beyond_tolerance")
        if clock.synced is False:
            causes.append("gateway_unsynchronised")
        if self._open is None:
            if causes:
                limit = AppliedLimit(
                    min=-self.tolerance_ms / 1000,
                    max=self.tolerance_ms / 1000,
                    sustained_s=0.0,
                    unit="s",
                    source=self.spec.source,
                )
                change = self._opened(received_ms, now, offset / 1000, limit)
                for opened in (change.deviation, self._open):
                    assert opened is not None  # just opened
                    opened.clock_synced = clock.synced
                    opened.time_base = "stream"
                    opened.causes = list(causes)
                return change
            return None
        if causes:
            if self._open.peak is None or abs(offset / 1000) > abs(self._open.peak):
                self._open.peak = offset / 1000
            # every cause seen while open, in one order; a new list, as the opened change
            # already published shares the old one
            seen = set(self._open.causes) | set(causes)
            self._open.causes = [c for c in _CAUSES if c in seen]
            return None
        return self._closed(received_ms, late=False)


_CAUSES: tuple[TimeSyncCause, ...] = ("offset_beyond_tolerance", "gateway_unsynchronised")


def join_order(
    rows: npt.NDArray[np.int64],
    ts: npt.NDArray[np.int64],
    devices: npt.NDArray[np.int64],
    offsets: list[int],
    rank: npt.NDArray[np.int64],
) -> list[int]:
    """The order to judge a joined rule's readings in (their channel rows, device times,
    device codes, the offset each is judged with, and the rank of each one's channel): on the
    stream's clock, at equal times by ``rank`` (the valve first), so each reading is judged
    with the others' state of that instant.

    Each device's readings keep the order of its own clock, which stamped them all: merged
    with the other devices' by their times on the stream's clock. Two of its batches judged
    with different estimates (the estimate moved between them) must not swap its readings, and
    a channel judged out of its own order would see gaps and flat lines that are not there.
    """
    corrected = (ts - np.asarray(offsets, dtype=np.int64)).tolist()
    ranks, channels, codes = rank.tolist(), rows.tolist(), devices.tolist()
    by_device: dict[int, list[tuple[int, int, int, int]]] = {}
    for index in np.lexsort((rows, rank, ts)).tolist():
        entry = (corrected[index], ranks[index], channels[index], index)
        by_device.setdefault(codes[index], []).append(entry)
    return [entry[3] for entry in heapq.merge(*by_device.values())]


def on_stream_clock(sample: Sample) -> Sample:
    """The sample with its times on the stream's clock: each less its device's offset (the
    estimate the engine ordered the join by). The start of a cleaning window, from an event
    that carries no offset of its own, is taken as on the sample's device's clock."""
    offset = sample.offset_ms
    if offset == 0:
        return sample
    return replace(
        sample,
        ts=sample.ts - offset,
        prev_ts=sample.prev_ts - offset if sample.prev_ts >= 0 else -1,
        run_start=sample.run_start - offset,
        cleaning_since=sample.cleaning_since - offset if sample.cleaning_since >= 0 else -1,
    )


def on_stream_clock_change(
    machine: Machine, change: DeviationChange | None, sample: Sample
) -> DeviationChange | None:
    """A change ``machine`` made judging :func:`on_stream_clock` of ``sample``, marked as on the
    stream's clock, with the instants ``sample``'s device set read on that device's own clock
    (the stream's time plus its offset): start and detected when it opened, end when it
    closed. The open deviation the machine keeps is marked alike.

    The joined checks have no sustained duration: the sample that opens a deviation is the one
    its excursion began with, so start and detected are read on the same device's clock."""
    if change is None:
        return None
    device, offset = sample.device, sample.offset_ms
    deviation = change.deviation
    if change.kind == "opened":
        times = DeviceTime(
            device,
            offset,
            raw_start_ms=deviation.start_ms + offset,
            raw_detected_ms=deviation.detected_ms + offset,
        )
        kept = machine.open_deviation
        assert kept is not None  # it has just opened
        for opened in (deviation, kept):
            opened.time_base = "stream"
            opened.clocks = [times]
        return change
    assert deviation.end_ms is not None  # a closed deviation has its end
    deviation.time_base = "stream"
    deviation.clocks = _with_end(deviation, device, offset, deviation.end_ms + offset)
    return change


def _with_end(deviation: Deviation, device: str, offset: int, raw_end: int) -> list[DeviceTime]:
    """The deviation's device times with the end read on ``device``'s clock: on its entry when
    the same device at the same offset set an earlier instant, else on an entry of its own.
    A new list: the opened change already published holds the old one."""
    clocks = list(deviation.clocks)
    for index, times in enumerate(clocks):
        if (times.device, times.offset_ms) == (device, offset):
            clocks[index] = replace_struct(times, raw_end_ms=raw_end)
            return clocks
    clocks.append(DeviceTime(device, offset, raw_end_ms=raw_end))
    return clocks

"""Ingest: one MQTT message in, validated readings to the engine and the stores, nothing lost.

For each message: check the topic, decode and validate the batch (msgspec, one pass), drop a
duplicate (same gateway and sequence number), store readings and events as line protocol, judge
the readings, and hand deviation changes to the deviation sink. What fails goes to the
dead-letter sink with the reason, and is counted; the stream keeps running.

Total: no byte sequence, value or timestamp raises out of :meth:`Ingest.handle`. A payload that
is not a batch is dead-lettered whole; a reading outside its unit's plausible bounds
(:data:`milkguard.contract.v1.PLAUSIBLE`) or further ahead of its batch's receive time than the
future tolerance is dead-lettered alone (the latter "quarantined": it never reaches the engine,
so it cannot move a watermark). Every reading fed is counted once:

    readings fed = readings + readings_duplicate + readings_in_rejected_payloads

and every message once: ``messages = batches + statuses + duplicates + rejected_payloads``.
A gateway's status message (its retained status topic) is checked like a batch (the contract,
the topic's site and gateway, a timestamp no further ahead than the tolerance) and stored as a
``gateway`` point, or dead-lettered with the reason. What ingest
remembers per id (duplicate windows, latest readings) is capped for ids neither the plan nor the
runtime knows, so invented gateways cannot grow memory without end.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from operator import attrgetter
from typing import Literal, NamedTuple

import msgspec
import numpy as np
import numpy.typing as npt

from milkguard.contract.v1 import (
    PLAUSIBLE,
    Batch,
    Event,
    Reading,
    count_readings,
    is_valid_id,
    parse_batch_topic,
    parse_status_topic,
    read_batch,
    read_status,
)
from stream.archive import ArchiveState, ArchiveWriter
from stream.dashboard_series import DEFAULT_LIMITS_EVERY_MS, LimitLines, PositionJoin, SeenClock
from stream.engine.core import Engine, Routed, UnitMismatch, is_power_of_ten
from stream.engine.deviation import DeviationChange, iso_ms
from stream.lineprotocol import (
    ReadingLines,
    derived_line,
    deviation_line,
    event_line,
    gateway_line,
)
from stream.sinks.base import (
    DeadLetter,
    DeadLetterSink,
    DeviationSink,
    SinkGroup,
    TimeSeriesSink,
)

log = logging.getLogger(__name__)

_EPOCH_MS_FLOOR = "946684800000"
# a bound on the id cache, so a gateway inventing ids cannot grow memory without end
_MAX_REMEMBERED_IDS = 100_000

#: How far ahead of its batch's receive time a reading or event may be stamped before it is
#: quarantined. Larger than any clock skew the time-sync rule exists to report (a gateway a few
#: minutes, or a summer hour, fast is still judged and flagged), small enough that one outlier
#: cannot hold a channel's watermark for long.
DEFAULT_FUTURE_TOLERANCE_MS = 2 * 3_600_000

#: How far one batch's ``sent_at`` may move the replay clock on its own (:class:`ReplayClock`):
#: more than batches of a recording are apart, far less than the tolerance, so that one batch an
#: hour fast cannot make every later batch of the recording look an hour late.
DEFAULT_REPLAY_STEP_MS = 5 * 60_000

#: Duplicate windows kept for gateways the runtime does not know, on the plan's sites and on
#: other sites; beyond them a gateway's batches are judged without duplicate detection (the
#: engine still drops a channel's repeated timestamps) and counted as ``capped``.
MAX_PLAN_SITE_GATEWAYS = 10_000
MAX_OTHER_GATEWAYS = 1_000
#: Latest readings kept for channels the plan does not know (the plan's are always kept).
MAX_UNPLANNED_LATEST = 10_000
#: The engine's name for a gateway beyond the caps: its clock and layout are not tracked.
CAPPED_GATEWAY = "_capped"

_TS = attrgetter("ts")
#: readings that wait for :attr:`Ingest.latest` before it takes them in unasked
_MAX_UNFOLDED = 65_536


class _Accepted(NamedTuple):
    """A batch submitted to the engine, waiting for its advance to be stored (a named tuple:
    one is made per message, more cheaply than a frozen dataclass)."""

    site: str
    gateway: str
    topic: str
    received_ms: int
    batch: Batch
    readings: list[Reading]  # those to store: the batch's less those dead-lettered
    events: list[Event]
    mismatches: list[UnitMismatch]  # dead-lettered once judged (they were not)
    routed: Routed  # with the readings' channel rows when every one was held


@dataclass(slots=True)
class IngestCounters:
    """What ingest saw, for metrics and the run summary."""

    messages: int = 0
    batches: int = 0
    readings: int = 0
    events: int = 0
    rejected_payloads: int = 0
    rejected_readings: int = 0  # readings of accepted batches dead-lettered alone
    duplicates: int = 0
    readings_duplicate: int = 0  # readings of duplicate batches
    readings_in_rejected_payloads: int = 0  # readings of payloads dead-lettered whole
    readings_quarantined: int = 0  # stamped too far ahead; also in rejected_readings
    capped: int = 0  # times an id or gateway was not tracked because of a memory cap
    events_quarantined: int = 0  # events stamped too far ahead, dead-lettered alone
    statuses: int = 0  # gateway status messages stored (those refused are rejected_payloads)


class SequenceWindow:
    """Remembers which sequence numbers of one gateway were seen, within a sliding window.

    Sequence numbers only grow, but batches may arrive reordered (a backlog drained after an
    outage) and twice (QoS 1 redelivery). Numbers within ``size`` of the highest seen are checked
    exactly; a number further behind cannot be told apart from a duplicate and is reported.

    A number more than ``size`` ahead of the highest (a gateway that reseeded from its clock, or
    an absurd batch) starts a new run; the last few runs it left are kept in ``before``, so that
    if the gateway's counter goes on where it was (the jump was a glitch), it is still heard,
    while the numbers it already sent stay duplicates.
    """

    __slots__ = ("_seen", "before", "high", "size")

    #: runs kept from before jumps (the longest): a reseed and glitches lock no gateway out
    RUNS_KEPT = 3

    def __init__(self, size: int) -> None:
        self.size = size
        self.high = -1
        self._seen: set[int] = set()
        self.before: list[SequenceWindow] = []

    def state(self) -> tuple[int, list[tuple[int, int]]]:
        """(highest, seen numbers as inclusive ranges): compact, as numbers mostly run on."""
        ranges: list[tuple[int, int]] = []
        for seq in sorted(self._seen):
            if ranges and ranges[-1][1] == seq - 1:
                ranges[-1] = (ranges[-1][0], seq)
            else:
                ranges.append((seq, seq))
        return self.high, ranges

    @classmethod
    def restored(cls, size: int, high: int, ranges: list[tuple[int, int]]) -> SequenceWindow:
        """A window as :meth:`state` described it."""
        window = cls(size)
        window.high = high
        floor = high - size
        for first, last in ranges:  # clamped to the window: a corrupt range cannot fill memory
            window._seen.update(range(max(first, floor + 1), min(last, high) + 1))
        return window

    def admit(self, seq: int) -> bool | None:
        """True: new. False: a duplicate. None: too far behind the window to tell."""
        if seq > self.high:
            if self.high >= 0 and seq - self.high > self.size:
                self.before.append(self._copy())
                if len(self.before) > self.RUNS_KEPT:
                    # the run with the fewest numbers goes: an absurd batch is a run of one,
                    # the gateway's own counter the longest
                    self.before.remove(min(self.before, key=lambda run: len(run._seen)))
            self.high = seq
            self._seen.add(seq)
            if len(self._seen) > 2 * self.size:
                floor = self.high - self.size
                self._seen = {s for s in self._seen if s > floor}
            return True
        if seq <= self.high - self.size:
            # the newest earlier run whose window the number falls in (runs only jumped upward)
            for run in reversed(self.before):
                if seq > run.high - run.size:
                    return run.admit(seq)
            return None
        if seq in self._seen:
            return False
        self._seen.add(seq)
        return True

    def _copy(self) -> SequenceWindow:
        """This window as it is now, without the runs before it (the window keeps those)."""
        copy = SequenceWindow(self.size)
        copy.high = self.high
        floor = self.high - self.size
        copy._seen = {s for s in self._seen if s > floor}
        return copy


class ReplayClock:
    """The receive time of recorded batches, which carry none.

    It starts at the first batch's ``sent_at`` (or at its newest reading when the ``sent_at`` is
    further ahead of that than the tolerance) and moves only forward, to each later
    ``sent_at`` up to ``step_ms`` ahead of it. A ``sent_at`` further ahead (a gateway's absurd
    clock, a forged stamp, one an hour fast) does not move it, unless the next batch confirms
    the jump (its ``sent_at`` is also beyond the step, and within the tolerance of the first):
    a recording with a long gap goes on after the gap, losing at most the first batch after it
    to quarantine when the gap is longer than the tolerance. A batch is taken as received at
    the clock after it.
    """

    __slots__ = ("_candidate", "now", "step_ms", "tolerance_ms")

    def __init__(self, tolerance_ms: int, step_ms: int = DEFAULT_REPLAY_STEP_MS) -> None:
        self.tolerance_ms = tolerance_ms
        self.step_ms = min(step_ms, tolerance_ms)
        self.now = -1
        self._candidate: int | None = None

    def state(self) -> tuple[int, int | None]:
        """(now, a jump waiting for confirmation), for a checkpoint."""
        return self.now, self._candidate

    def restore(self, now: int, candidate: int | None) -> None:
        """Carry on from :meth:`state`."""
        self.now, self._candidate = now, candidate

    def receive(self, sent_at: int, newest: int | None = None) -> int:
        """The receive time of a batch sent at ``sent_at`` whose newest reading is ``newest``
        (needed for the first batch only); moves the clock (see the class)."""
        tolerance = self.tolerance_ms
        if self.now < 0:
            absurd = newest is not None and sent_at > newest + tolerance
            self.now = newest if absurd and newest is not None else sent_at
        elif sent_at <= self.now + self.step_ms:
            self.now = max(self.now, sent_at)
            self._candidate = None
        elif self._candidate is not None and abs(sent_at - self._candidate) <= tolerance:
            self.now = sent_at
            self._candidate = None
        else:
            self._candidate = sent_at
        return self.now


class Ingest:
    """Turns raw MQTT messages into stored readings and judged deviations.

    ``known_gateways`` are (site, gateway) pairs the runtime vouches for (e.g. those its broker
    lets publish): they, the plan's sites and the plan's channels are always tracked, whatever
    the caps. ``future_tolerance_ms``: how far ahead of the receive time a timestamp may be.
    ``dashboards``: also write what the dashboards draw beside the readings (the plan's limits
    every ``limits_every_ms`` of the engine's clock, vehicles' positions, when each gateway was
    last heard from: :mod:`stream.dashboard_series`).
    """

    def __init__(
        self,
        engine: Engine,
        timeseries: TimeSeriesSink,
        deviations: DeviationSink,
        deadletter: DeadLetterSink,
        *,
        dedupe_window: int = 65_536,
        clock: Literal["received", "event"] = "received",
        on_change: Callable[[DeviationChange], None] | None = None,
        known_gateways: Collection[tuple[str, str]] = (),
        future_tolerance_ms: int = DEFAULT_FUTURE_TOLERANCE_MS,
        archive: ArchiveWriter | None = None,
        dashboards: bool = False,
        limits_every_ms: int = DEFAULT_LIMITS_EVERY_MS,
    ) -> None:
        self.engine = engine
        # live, the engine's clock is the receive time; replaying a file, the newest event time
        self._event_clock = clock == "event"
        self.counters = IngestCounters()
        self._timeseries = timeseries
        self._deviations = deviations
        self._deadletter = deadletter
        self._sinks = SinkGroup([timeseries, deviations, deadletter])
        #: where every message handed in, every tick and every change of the clock evidence
        #: rule is recorded, in order, for a replay that judges as this ingest did
        self.archive = archive
        self._windows: dict[tuple[str, str], SequenceWindow] = {}
        self._window_size = dedupe_window
        self._on_change = on_change
        # ids already checked against the contract's pattern; the plan's are valid by validation
        self._valid_ids: set[str] = {
            name
            for key, asset in engine.plan.plan.assets.items()
            for name in (asset.id or key, *asset.channels)
        }
        self._latest: dict[tuple[str, str, str], Reading] = {}
        # accepted readings not yet taken into ``latest``: (their channel rows, values, times,
        # newest time), None where a later batch of the same gateway superseded them; and where
        # each gateway's last batch waits in that list
        self._unfolded: list[tuple[npt.NDArray[np.int64], list[float], list[int], int] | None] = []
        self._unfolded_readings = 0
        self._unfolded_at: dict[tuple[str, str], int] = {}
        self._reading_lines = ReadingLines()
        self.future_tolerance_ms = future_tolerance_ms
        self.replay_clock = ReplayClock(future_tolerance_ms)
        self._known_gateways = frozenset(known_gateways)
        plan = engine.plan.plan
        self._plan_sites = frozenset(asset.site for asset in plan.assets.values())
        self._planned = frozenset(
            (asset.site, asset.id or key, channel)
            for key, asset in plan.assets.items()
            for channel in asset.channels
        )
        self._gateways_by_budget = {"plan": 0, "other": 0}
        self._unplanned_latest = 0
        self._clocks_from = -1
        self._decoded = False  # whether the payload :meth:`_take` saw last decoded as a batch
        self._limits = LimitLines(engine.plan, limits_every_ms) if dashboards else None
        positions = PositionJoin(engine.plan) if dashboards else None
        self._positions = positions if positions is not None and positions.sites else None
        self._seen = SeenClock() if dashboards else None
        self._status_lines: list[str] = []  # of status messages taken, stored with the batches
        if archive is not None:
            archive.attach(self.archive_state)

    @property
    def clocks_sent_from_ms(self) -> int:
        """Batches sent before this (the runtime's connect time after a restart) waited in the
        broker while the stream was down: their delay says nothing of the gateway's clock, and
        taking it as an offset would raise a false time-sync fault after every restart. -1:
        every batch counts."""
        return self._clocks_from

    @clocks_sent_from_ms.setter
    def clocks_sent_from_ms(self, ms: int) -> None:
        if ms != self._clocks_from and self.archive is not None:
            self.archive.clocks_from(ms)
        self._clocks_from = ms

    def archive_state(self) -> ArchiveState:
        """What a replay starts from at the beginning of an archive file."""
        loaded = self.engine.plan
        return ArchiveState(
            plan=loaded.plan.plan,
            plan_version=loaded.version,
            # the judged history apart, compressed: a tenth of the full snapshot's size
            engine=self.engine.snapshot(history=False),
            history=self.engine.history_record(),
            windows=self.windows(),
            clocks_from=self._clocks_from,
            future_tolerance_ms=self.future_tolerance_ms,
            known_gateways=sorted(self._known_gateways),
        )

    def handle(self, topic: str, payload: bytes, received_ms: int) -> None:
        """Process one MQTT message; never raises for bad input (it is dead-lettered)."""
        self.handle_many(((topic, payload, received_ms),))

    def handle_many(self, messages: Iterable[tuple[str, bytes, int]]) -> None:
        """Process messages as one batch: (topic, payload, received_ms) each, in arrival order.

        Each message is checked, decoded, deduplicated, stored and submitted as :meth:`handle`
        does it alone (same dead letters, same counters); then the engine advances once, to the
        newest receive time, and judges what the watermarks release. That is what makes a
        drained queue cheap: the release, the screen and the timers run once for all of it.
        Verdicts are the same as message by message, except that a reading which message by
        message would have come after its channel released a later one is judged in order
        here instead of counted late, and that a deviation records the device clock's offset
        as estimated when it is judged (README: "A drained queue and message by message").
        """
        archive = self.archive
        if archive is not None:
            messages = list(messages)
            archive.begin()  # a new file's header holds the state before these messages
            decoded: list[bool] = []
        accepted: list[_Accepted] = []
        for topic, payload, received_ms in messages:
            self.counters.messages += 1
            self._decoded = False
            route = parse_batch_topic(topic)
            if route is None and topic.endswith("/status"):
                self._take_status(topic, payload, received_ms)
                if archive is not None:
                    decoded.append(self._decoded)
                continue
            if route is None:
                self._reject_payload(
                    topic,
                    payload,
                    received_ms,
                    "topic is not a batch topic of wire contract v1; "
                    "publish to milkguard/v1/gw/{site}/{gateway}/batch",
                )
                continue
            item = self._take(topic, route, payload, received_ms)
            if item is not None:
                accepted.append(item)
            if archive is not None:
                decoded.append(self._decoded)
        if archive is not None:
            archive.messages(messages, decoded)
        if accepted:
            self._judge(accepted)
        if self._status_lines:
            self._store_statuses()

    def handle_recorded(self, payload: bytes, origin: str) -> None:
        """Process one payload recorded without its topic (a line of a replayed file).

        Its receive time is the :class:`ReplayClock`'s, which outliers cannot move.
        """
        self.counters.messages += 1
        item = self._take(origin, None, payload, None)
        if item is not None:
            self._judge([item])

    def reject_recorded(self, line: bytes, origin: str, received_ms: int, reason: str) -> None:
        """Dead-letter a line of a recording that is not a record at all (``origin``: its file
        and line), counted as a payload rejected whole."""
        self.counters.messages += 1
        self._reject_payload(origin, line, received_ms, reason, readings=0)

    def handle_bridged(self, payload: bytes, received_ms: int, origin: str) -> None:
        """Process one payload the bridge took from MQTT (it checked the topic against it)."""
        self.handle_bridged_many(((payload, received_ms, origin),))

    def handle_bridged_many(self, messages: Iterable[tuple[bytes, int, str]]) -> None:
        """Process payloads the bridge took from MQTT as one batch: (payload, received_ms,
        origin) each, in arrival order, as :meth:`handle_many` does (one advance)."""
        accepted: list[_Accepted] = []
        for payload, received_ms, origin in messages:
            self.counters.messages += 1
            if origin.endswith("/status"):  # the bridge names a status by its MQTT topic
                self._take_status(origin, payload, received_ms)
                continue
            item = self._take(origin, None, payload, received_ms)
            if item is not None:
                accepted.append(item)
        if accepted:
            self._judge(accepted)
        if self._status_lines:
            self._store_statuses()

    def _take_status(self, topic: str, payload: bytes, received_ms: int) -> None:
        """Check one gateway status message and keep its ``gateway`` point for the store, or
        dead-letter it with the reason (counted as a payload rejected whole, with the readings
        a batch sent there by mistake holds).

        An ``offline`` status is the gateway's last will, made when it last connected and
        published by the broker when the link died: it is stamped at its receive time when
        that is later, so it comes after the heartbeats the gateway sent meanwhile."""
        self._decoded = False
        route = parse_status_topic(topic)
        if route is None:
            wrong_topic = (
                "topic is not a status topic of wire contract v1; "
                "publish to milkguard/v1/gw/{site}/{gateway}/status"
            )
            self._reject_payload(topic, payload, received_ms, wrong_topic)
            return
        site, gateway = route
        status = read_status(payload)
        if isinstance(status, str):
            self._reject_payload(topic, payload, received_ms, status, site=site, gateway=gateway)
            return
        self._decoded = True
        reason: str | None = None
        horizon = received_ms + self.future_tolerance_ms
        if (status.site, status.gateway) != route:
            reason = (
                f"status says site {status.site!r}, gateway {status.gateway!r} but the topic "
                f"says site {site!r}, gateway {gateway!r}; they must match"
            )
        elif status.ts > horizon:
            reason = (
                f"status of {status.site}/{status.gateway} is stamped {iso_ms(status.ts)}, "
                f"{_hours(status.ts - received_ms)} ahead of its receive time "
                f"{iso_ms(received_ms)} (tolerance {_hours(self.future_tolerance_ms)}): not "
                "stored. Set the gateway's clock (NTP)."
            )
        if reason is not None:
            self._reject_payload(topic, payload, received_ms, reason, site=site, gateway=gateway)
            return
        self.counters.statuses += 1
        stamp = max(status.ts, received_ms) if status.state == "offline" else status.ts
        self._status_lines.append(gateway_line(status, stamp))

    def _store_statuses(self) -> None:
        """Hand the status messages' points to the store."""
        lines, self._status_lines = self._status_lines, []
        self._timeseries.add(lines)

    def windows(self) -> dict[str, tuple[int, list[tuple[int, int]]]]:
        """The duplicate windows of every gateway, for a snapshot."""
        return {f"{site}/{gw}": window.state() for (site, gw), window in self._windows.items()}

    def restore_windows(self, saved: dict[str, tuple[int, list[tuple[int, int]]]]) -> None:
        """Carry on dropping the duplicates a snapshot's windows knew of."""
        for name, (high, ranges) in saved.items():
            site, slash, gateway = name.partition("/")
            route = (site, gateway)
            # within the caps, as if heard now: else every restart would add a cap's worth
            if slash and route not in self._windows and self._may_track(route):
                self._windows[route] = SequenceWindow.restored(self._window_size, high, ranges)

    def _take(
        self,
        topic: str,
        route: tuple[str, str] | None,
        payload: bytes,
        received_ms: int | None,
    ) -> _Accepted | None:
        """Check, decode, deduplicate and submit one payload; what is refused is dead-lettered
        (None). The accepted batch waits for the engine's next advance in :meth:`_judge`."""
        site, gateway = route if route is not None else (None, None)
        shown_at = received_ms if received_ms is not None else max(self.replay_clock.now, 0)
        batch = read_batch(payload)
        if isinstance(batch, str):
            reason = batch if batch.startswith("not valid") else _explain(batch)
            self._reject_payload(topic, payload, shown_at, reason, site=site, gateway=gateway)
            return None
        self._decoded = True  # valid JSON: the archive may keep it as it is
        if received_ms is None:
            first = self.replay_clock.now < 0
            newest = max(map(_TS, batch.readings), default=None) if first else None
            received_ms = self.replay_clock.receive(batch.sent_at, newest)
        if route is None:
            site, gateway = route = batch.site, batch.gateway
        elif (batch.site, batch.gateway) != (site, gateway):
            self._reject_batch(
                topic,
                batch,
                received_ms,
                f"payload says site {batch.site!r}, gateway {batch.gateway!r} but the topic "
                f"says site {site!r}, gateway {gateway!r}; they must match",
                payload,
            )
            return None
        assert site is not None
        assert gateway is not None
        seq_limit = received_ms + self.future_tolerance_ms
        if batch.seq > seq_limit:
            # not a counter, nor a seed from any sane clock: taking it would move the window
            # so far that every later batch of the gateway looked like an old repeat
            self._reject_batch(
                topic,
                batch,
                received_ms,
                f"sequence number {batch.seq} of gateway {site}/{gateway} is greater than the "
                f"receive time in ms plus the future tolerance ({seq_limit}): it can be neither "
                "a counter nor a seed from the gateway's clock. Keep seq a counter that grows "
                "across restarts, or seed it from the clock in milliseconds.",
                payload,
            )
            return None
        window = self._window_of(route)
        if window is not None:
            admitted = window.admit(batch.seq)
            if admitted is False:
                self.counters.duplicates += 1
                self.counters.readings_duplicate += len(batch.readings)
                log.debug(
                    "batch.duplicate", extra={"site": site, "gateway": gateway, "seq": batch.seq}
                )
                return None
            if admitted is None:
                self._reject_batch(
                    topic,
                    batch,
                    received_ms,
                    f"sequence number {batch.seq} is more than {window.size} behind the highest "
                    f"seen ({window.high}); cannot tell it from a duplicate. Did the gateway "
                    "reset its counter? Gateways must keep seq growing across restarts.",
                    payload,
                )
                return None
            device = gateway
        else:
            device = CAPPED_GATEWAY
        return self._accept(
            site, gateway, batch, device=device, topic=topic, received_ms=received_ms
        )

    def _window_of(self, route: tuple[str, str]) -> SequenceWindow | None:
        """The gateway's duplicate window; None when the cap leaves it untracked."""
        window = self._windows.get(route)
        if window is not None:
            return window
        if not self._may_track(route):
            return None
        window = self._windows[route] = SequenceWindow(self._window_size)
        return window

    def _may_track(self, route: tuple[str, str]) -> bool:
        """Whether a new gateway's window fits its cap (taking its place if so)."""
        if route in self._known_gateways:
            return True
        budget = "plan" if route[0] in self._plan_sites else "other"
        cap = MAX_PLAN_SITE_GATEWAYS if budget == "plan" else MAX_OTHER_GATEWAYS
        if self._gateways_by_budget[budget] >= cap:
            self._note_capped(f"gateways of {budget} sites", f"{route[0]}/{route[1]}", cap)
            return False
        self._gateways_by_budget[budget] += 1
        return True

    def _note_capped(self, what: str, name: str, cap: int) -> None:
        """Count an id not tracked; log the first time, then at each power of ten."""
        self.counters.capped += 1
        if is_power_of_ten(self.counters.capped):
            log.warning(
                "ingest.capped",
                extra={
                    "what": what,
                    "cap": cap,
                    "example": name[:160],
                    "capped_so_far": self.counters.capped,
                    "hint": "ids the plan and the broker do not know are tracked up to the cap; "
                    "are gateways inventing ids, or is a known gateway missing from the list?",
                },
            )

    def _accept(
        self, site: str, gateway: str, batch: Batch, *, device: str, topic: str, received_ms: int
    ) -> _Accepted:
        counters = self.counters
        counters.batches += 1
        counters.readings += len(batch.readings)
        counters.events += len(batch.events)
        horizon = received_ms + self.future_tolerance_ms
        events = batch.events
        if events and max(map(_TS, events)) > horizon:
            events = self._events_in_time(topic, received_ms, horizon, batch)
        engine = self.engine
        reported = batch.clock.synced if batch.clock is not None else None
        if device != CAPPED_GATEWAY and batch.sent_at >= self.clocks_sent_from_ms:
            # a sent_at beyond the horizon still shows as a skew (the time-sync rule reports
            # it), but as no more than the horizon: an absurd one cannot skew joined channels
            engine.clock(site, device, min(batch.sent_at, horizon), received_ms, reported)
        if events:
            engine.submit_events(site, events)
        readings = batch.readings
        routed = engine.submit(site, device, readings, received_ms, horizon)
        if engine.notices:
            self._log_notices(gateway)  # a channel the plan does not know, named with its gateway
        if routed.mismatches or routed.refused or routed.unplanned:
            readings = self._left_in(topic, received_ms, horizon, batch, routed)
        return _Accepted(
            site, gateway, topic, received_ms, batch, readings, events, routed.mismatches, routed
        )

    def _left_in(
        self, topic: str, received_ms: int, horizon: int, batch: Batch, routed: Routed
    ) -> list[Reading]:
        """The batch's readings less those refused (dead-lettered here) and those in another
        unit than the plan's (dead-lettered once judged)."""
        left_out = {id(m.reading) for m in routed.mismatches}
        refused = routed.refused
        if routed.unplanned:
            refused = [*refused, *_beyond(routed.unplanned, horizon)]
        for reading in refused:
            self._refuse(topic, received_ms, horizon, batch, reading)
            left_out.add(id(reading))
        # a reading the plan routed has the plan's ids, valid by validation; only the others
        # are checked against the contract's id pattern before they reach line protocol
        if routed.unplanned and has_unchecked_ids(routed.unplanned, self._valid_ids):
            unchecked = [r for r in routed.unplanned if id(r) not in left_out]
            unsafe = self._unsafe_ids(topic, received_ms, batch, unchecked)
            left_out.update(id(r) for r in unsafe)
        readings = batch.readings
        return [r for r in readings if id(r) not in left_out] if left_out else readings

    def _judge(self, accepted: list[_Accepted]) -> None:
        """Advance the engine once for accepted batches, then store them and what was judged."""
        engine = self.engine
        changes: list[DeviationChange] = []
        if self._event_clock:
            # the data's own time, but no further than the batch's receive time (the replay
            # clock's, which one outlier cannot move): a reading stamped ahead within the
            # tolerance would otherwise silence every channel and make earlier readings late
            newest = max(
                min(max(map(_TS, item.readings), default=engine.now), item.received_ms)
                for item in accepted
            )
            engine.advance(max(newest, engine.now), changes)
        else:
            engine.advance(max(item.received_ms for item in accepted), changes)
        if engine.notices:
            gateways = {item.gateway for item in accepted}
            self._log_notices(gateways.pop() if len(gateways) == 1 else None)
        lines: list[str] = []
        if self._limits is not None:
            self._limits.due(engine.now, lines)
        positions, seen = self._positions, self._seen
        for item in accepted:
            site, gateway = item.site, item.gateway
            routed = item.routed
            lines.extend(
                self._reading_lines.lines(
                    site,
                    gateway,
                    item.readings,
                    routed.layout,
                    values=routed.values,
                    stamps=routed.ts,
                )
            )
            if item.events:
                lines.extend(event_line(site, gateway, e) for e in item.events)
            if positions is not None and site in positions.sites:
                positions.lines(site, gateway, item.readings, routed.layout, lines)
            if seen is not None:
                seen.heard(site, gateway, item.received_ms, _newest(item), lines)
            for mismatch in item.mismatches:
                reading = mismatch.reading
                self._reject_reading(
                    item.topic,
                    item.received_ms,
                    item.batch,
                    reading,
                    f"reading of {reading.asset}/{reading.channel} has unit {reading.unit!r} "
                    f"but the plan declares {mismatch.expected!r}; convert at the gateway or "
                    "fix the plan",
                )
        self._emit(changes, lines)
        for item in accepted:
            self._remember_latest(item)
        self._timeseries.add(lines)

    @property
    def latest(self) -> dict[tuple[str, str, str], Reading]:
        """The newest reading of each (site, asset, channel), for live views."""
        self._fold_latest()
        return self._latest

    def _remember_latest(self, item: _Accepted) -> None:
        """Note a batch's readings for :attr:`latest`.

        A batch whose every reading the engine held (the usual one) waits, as channel rows, until
        ``latest`` is read or enough have waited: a live view reads it once a second, readings
        come by the hundred thousand. A gateway's next batch of the same channels, all newer,
        takes its last one's place, so what waits is about a batch per gateway. Any other batch
        is taken in reading by reading, after those waiting (arrival order decides between
        equal timestamps).
        """
        routed = item.routed
        rows, stamps, values = routed.rows, routed.ts, routed.values
        if rows is not None and stamps is not None and values is not None:
            first, last = min(stamps), routed.newest
            waiting = self._unfolded
            route = (item.site, item.gateway)
            before = self._unfolded_at.get(route, -1)
            if before >= 0:
                superseded = waiting[before]
                if superseded is not None and superseded[0] is rows and first >= superseded[3]:
                    # the same channels, each with a reading as new or newer: it supersedes the
                    # gateway's last batch, which need not wait any longer
                    waiting[before] = None
                    self._unfolded_readings -= len(rows)
            self._unfolded_at[route] = len(waiting)
            # the values and times, not the readings: the batch is freed now, while it is hot
            waiting.append((rows, values, stamps, last))
            self._unfolded_readings += len(rows)
            if self._unfolded_readings >= _MAX_UNFOLDED or len(waiting) >= _MAX_UNFOLDED:
                self._fold_latest()
            return
        self._fold_latest()
        latest = self._latest
        always = (item.site, item.gateway) in self._known_gateways
        for reading in item.readings:
            key = (item.site, reading.asset, reading.channel)
            previous = latest.get(key)
            if previous is None:
                if not always and key not in self._planned:
                    if self._unplanned_latest >= MAX_UNPLANNED_LATEST:
                        self._note_capped("latest readings", "/".join(key), MAX_UNPLANNED_LATEST)
                        continue
                    self._unplanned_latest += 1
                latest[key] = reading
            elif reading.ts >= previous.ts:
                latest[key] = reading

    def _fold_latest(self) -> None:
        """Take the waiting batches into ``latest``: each channel's newest reading (by
        timestamp; of equal ones, the last to arrive). Per reading this is numpy only; the
        Python loop runs once per channel."""
        unfolded = [entry for entry in self._unfolded if entry is not None]
        self._unfolded, self._unfolded_readings = [], 0
        self._unfolded_at.clear()
        if not unfolded:
            return
        values: list[float] = []
        stamps: list[int] = []
        for _, batch_values, batch_stamps, _ in unfolded:
            values.extend(batch_values)
            stamps.extend(batch_stamps)
        rows = np.concatenate([entry[0] for entry in unfolded])
        order = np.argsort(np.array(stamps, dtype=np.int64), kind="stable")
        # the last of each row in time order: the first of each in the reversed order
        backwards = order[::-1]
        channels, first = np.unique(rows[backwards], return_index=True)
        names, keys = self.engine.channel_names, self.engine.channel_keys
        latest = self._latest
        for row, index in zip(channels.tolist(), backwards[first].tolist(), strict=True):
            stamp = stamps[index]
            name = names[row]
            previous = latest.get(name)
            if previous is None or stamp >= previous.ts:
                asset, channel, unit = keys[row]
                latest[name] = Reading(asset, channel, values[index], unit, stamp)

    def _refuse(
        self, topic: str, received_ms: int, horizon: int, batch: Batch, reading: Reading
    ) -> None:
        """Dead-letter a reading stamped beyond ``horizon`` (quarantined) or implausible for its
        unit, saying which and how to fix it."""
        if reading.ts > horizon:
            self.counters.readings_quarantined += 1
            self._reject_reading(
                topic,
                received_ms,
                batch,
                reading,
                f"reading of {batch.gateway}/{reading.asset}/{reading.channel} is stamped "
                f"{iso_ms(reading.ts)}, {_hours(reading.ts - received_ms)} ahead of its "
                f"batch's receive time {iso_ms(received_ms)} (tolerance "
                f"{_hours(self.future_tolerance_ms)}): quarantined, not judged. Set the "
                "gateway's clock (NTP) and stamp readings in UTC milliseconds.",
            )
            return
        low, high = PLAUSIBLE[reading.unit]
        self._reject_reading(
            topic,
            received_ms,
            batch,
            reading,
            f"value {reading.value!r} {reading.unit} of {batch.gateway}/{reading.asset}/"
            f"{reading.channel} is outside the plausible range {low:g}..{high:g} "
            f"{reading.unit}: a broken sensor or a wrong unit. Fix the sensor or convert "
            "at the gateway (README: Wire contract v1).",
        )

    def _events_in_time(
        self, topic: str, received_ms: int, horizon: int, batch: Batch
    ) -> list[Event]:
        """The batch's events stamped no further ahead than ``horizon``; the others are
        quarantined: dead-lettered alone, never applied."""
        kept: list[Event] = []
        for event in batch.events:
            if event.ts <= horizon:
                kept.append(event)
                continue
            self.counters.events_quarantined += 1
            reason = (
                f"event {type(event).__struct_config__.tag} of {batch.gateway}/{event.asset} is "
                f"stamped {iso_ms(event.ts)}, {_hours(event.ts - received_ms)} ahead of its "
                f"batch's receive time {iso_ms(received_ms)} (tolerance "
                f"{_hours(self.future_tolerance_ms)}): quarantined, not applied. Set the "
                "gateway's clock (NTP) and stamp events in UTC milliseconds."
            )
            self._reject_alone(topic, received_ms, batch, event, reason)
        return kept

    def tick(self, now_ms: int) -> None:
        """Move the engine's clock with no data: releases held readings and fires timers."""
        if self.archive is not None:
            self.archive.tick(now_ms)
        changes: list[DeviationChange] = []
        self.engine.advance(now_ms, changes)
        lines: list[str] = []
        if self._limits is not None:
            self._limits.due(self.engine.now, lines)
        if changes or self.engine.derived:
            self._emit(changes, lines)
        if lines:
            self._timeseries.add(lines)

    def finish(self) -> None:
        """End of input (a replayed file): judge everything the engine still holds, flush."""
        changes: list[DeviationChange] = []
        self.engine.flush(changes)
        lines: list[str] = []
        self._emit(changes, lines)
        self._timeseries.add(lines)
        self.flush()

    def _emit(self, changes: list[DeviationChange], lines: list[str]) -> None:
        """Deviation changes to their sinks and, with the engine's derived values, to lines."""
        derived = self.engine.derived
        if derived:
            lines.extend(line for line in map(derived_line, derived) if line is not None)
            derived.clear()
        for change in changes:
            lines.append(deviation_line(change))
            self._deviations.emit(change)
            if self._on_change is not None:
                self._on_change(change)

    def _log_notices(self, gateway: str | None) -> None:
        for notice in self.engine.take_notices():
            context = {
                "site": notice.site,
                "asset": notice.asset,
                "channel": notice.channel,
                "gateway": gateway,
                "ts": iso_ms(notice.ts),
            }
            if notice.kind == "unplanned":
                log.warning(
                    "reading.unplanned",
                    extra={**context, "hint": "stored, not judged: the plan has no such channel"},
                )
            else:
                log.warning(
                    "reading.late",
                    extra={
                        **context,
                        "late_so_far": notice.count,
                        "hint": "arrived after its channel's allowed lateness: stored, and judged "
                        "apart (flagged found late) if within the asset's late_judge_s, else "
                        "only counted (raise allowed_lateness_s if this is expected)",
                    },
                )

    def _unsafe_ids(
        self, topic: str, received_ms: int, batch: Batch, candidates: list[Reading]
    ) -> list[Reading]:
        """Check ids not seen before against the contract's pattern, once each; dead-letter and
        return the readings whose ids fail."""
        unsafe: list[Reading] = []
        known = self._valid_ids
        for reading in candidates:
            bad = [
                (field, value)
                for field, value in (("asset", reading.asset), ("channel", reading.channel))
                if value not in known and not is_valid_id(value)
            ]
            if bad:
                field, value = bad[0]
                self._reject_reading(
                    topic,
                    received_ms,
                    batch,
                    reading,
                    f"{field} id {value!r} has characters outside letters, digits, '_', '.', '-' "
                    "(or does not start with a letter or digit); rename it at the gateway",
                )
                unsafe.append(reading)
                continue
            if len(known) < _MAX_REMEMBERED_IDS:
                known.add(reading.asset)
                known.add(reading.channel)
        return unsafe

    @property
    def saturated(self) -> bool:
        """True when the time-series sinks cannot take more: stop feeding ``handle``."""
        return self._timeseries.saturated

    def flush(self) -> None:
        """Make everything handled so far durable in every sink.

        Every sink is flushed even when one fails; the first failure is raised afterwards, so the
        caller knows not everything was confirmed. The archive goes first: a local file,
        flushed even when a remote store fails.
        """
        failed: Exception | None = None
        if self.archive is not None:
            try:
                self.archive.flush()
            except Exception as exc:  # re-raised below, after the other sinks
                failed = exc
        self._sinks.flush()
        if failed is not None:
            raise failed

    def close(self) -> None:
        """Flush and close every sink; one that fails does not keep the others open."""
        if self.archive is not None:
            try:
                self.archive.close()
            except Exception:
                log.exception("sink.close_failed", extra={"sink": "archive"})
        try:
            self._sinks.close()
        except Exception:
            log.exception("sink.close_failed")

    def _reject_payload(
        self,
        topic: str,
        payload: bytes,
        received_ms: int,
        reason: str,
        *,
        site: str | None = None,
        gateway: str | None = None,
        seq: int | None = None,
        readings: int | None = None,
    ) -> None:
        counters = self.counters
        counters.rejected_payloads += 1
        counters.readings_in_rejected_payloads += (
            count_readings(payload) if readings is None else readings
        )
        self._deadletter.reject(
            DeadLetter.of_payload(
                payload,
                received_at=iso_ms(received_ms),
                topic=topic,
                reason=reason,
                site=site,
                gateway=gateway,
                seq=seq,
            )
        )
        log.warning(
            "payload.rejected",
            extra={"topic": topic[:160], "site": site, "gateway": gateway, "reason": reason},
        )

    def _reject_batch(
        self, topic: str, batch: Batch, received_ms: int, reason: str, payload: bytes
    ) -> None:
        """Dead-letter a batch that decoded but is refused whole."""
        self._reject_payload(
            topic,
            payload,
            received_ms,
            reason,
            site=batch.site,
            gateway=batch.gateway,
            seq=batch.seq,
            readings=len(batch.readings),
        )

    def _reject_reading(
        self, topic: str, received_ms: int, batch: Batch, reading: Reading, reason: str
    ) -> None:
        self.counters.rejected_readings += 1
        self._reject_alone(topic, received_ms, batch, reading, reason)

    def _reject_alone(
        self, topic: str, received_ms: int, batch: Batch, item: Reading | Event, reason: str
    ) -> None:
        """Dead-letter one reading or event of an accepted batch; the rest of it is kept."""
        self._deadletter.reject(
            DeadLetter(
                received_at=iso_ms(received_ms),
                topic=topic,
                reason=reason,
                payload=msgspec.json.encode(item).decode(),
                encoding="utf-8",
                site=batch.site,
                gateway=batch.gateway,
                seq=batch.seq,
            )
        )
        context = {"site": batch.site, "gateway": batch.gateway, "asset": item.asset}
        if isinstance(item, Reading):
            log.warning(
                "reading.rejected", extra={**context, "channel": item.channel, "reason": reason}
            )
        else:
            log.warning("event.rejected", extra={**context, "reason": reason})


def _beyond(readings: list[Reading], horizon: int) -> list[Reading]:
    """The readings stamped after ``horizon`` or outside their unit's plausible bounds (for
    readings the engine did not screen: those of channels the plan does not know)."""
    bounds = PLAUSIBLE
    return [
        r
        for r in readings
        if r.ts > horizon or not bounds[r.unit][0] <= r.value <= bounds[r.unit][1]
    ]


def _newest(item: _Accepted) -> int:
    """The newest timestamp of a batch's readings and events (when it was sent, if none)."""
    if item.routed.newest >= 0:
        return item.routed.newest
    stamps = [*map(_TS, item.readings), *map(_TS, item.events)]
    return max(stamps) if stamps else item.batch.sent_at


def has_unchecked_ids(readings: list[Reading], known: set[str]) -> bool:
    """True when a reading names an asset or channel not yet checked against the id pattern."""
    return any(r.asset not in known or r.channel not in known for r in readings)


def _hours(ms: int) -> str:
    """A duration for a message: ``2.5 h``, or minutes and seconds below an hour."""
    if abs(ms) >= 3_600_000:
        return f"{ms / 3_600_000:,.1f} h"
    return f"{ms / 60_000:.1f} min" if abs(ms) >= 60_000 else f"{ms / 1000:.1f} s"


def _explain(message: str) -> str:
    """msgspec's message, plus the fix for the mistake device makers make most."""
    if f">= {_EPOCH_MS_FLOOR}" in message:
        return (
            f"{message} (timestamps are milliseconds since 1970-01-01T00:00:00Z; "
            "a value this small is probably seconds: multiply by 1000)"
        )
    return message

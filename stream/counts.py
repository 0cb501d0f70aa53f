"""The counters of ingest and the engine, summed over partitions: what ``/metrics`` serves and
what a worker reports, kept apart from Prometheus so that counting needs no metrics library."""

from __future__ import annotations

from dataclasses import dataclass

from stream.engine.core import EngineCounters
from stream.ingest import Ingest, IngestCounters


@dataclass(slots=True)
class StreamCounts:
    """The counters of ingest and the engine that Prometheus gets, summed where there are many."""

    messages: int = 0
    batches: int = 0
    readings: int = 0
    rejected_payloads: int = 0
    rejected_readings: int = 0
    duplicates: int = 0
    late: int = 0
    late_judged: int = 0
    late_beyond_bound: int = 0
    judged: int = 0
    opened: int = 0
    closed: int = 0
    readings_duplicate: int = 0
    readings_in_rejected_payloads: int = 0
    readings_quarantined: int = 0
    events_quarantined: int = 0
    capped: int = 0
    statuses: int = 0  # gateway status messages stored

    def add(self, ingest: IngestCounters, engine: EngineCounters) -> None:
        """Add one ingest's and its engine's counters."""
        for name in ("messages", "batches", "readings", "rejected_payloads"):
            setattr(self, name, getattr(self, name) + getattr(ingest, name))
        self.rejected_readings += ingest.rejected_readings
        self.duplicates += ingest.duplicates
        for name in ("late", "late_judged", "late_beyond_bound", "judged", "opened", "closed"):
            setattr(self, name, getattr(self, name) + getattr(engine, name))
        for name in _FROM_INGEST:
            setattr(self, name, getattr(self, name) + getattr(ingest, name))

    def plus(self, other: StreamCounts) -> StreamCounts:
        """These counts and ``other``'s together."""
        return StreamCounts(*(getattr(self, n) + getattr(other, n) for n in self.__slots__))

    def less(self, other: StreamCounts) -> StreamCounts:
        """These counts minus ``other``'s (what happened since ``other`` was taken)."""
        return StreamCounts(*(getattr(self, n) - getattr(other, n) for n in self.__slots__))


_FROM_INGEST = (
    "readings_duplicate",
    "readings_in_rejected_payloads",
    "readings_quarantined",
    "events_quarantined",
    "capped",
    "statuses",
)


def counts_of(ingest: Ingest) -> StreamCounts:
    """One ingest's counters with its engine's."""
    counts = StreamCounts()
    counts.add(ingest.counters, ingest.engine.counters)
    return counts

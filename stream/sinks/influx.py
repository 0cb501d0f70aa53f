"""InfluxDB 2.x/3.x sink through influxdb-client's v2 write API.

Lines are buffered and written in chunks of pre-joined line protocol with synchronous writes
(measured here: far faster than the client's Point batching).

- A write that fails for a passing reason (no connection, 5xx, 408, 429, and 401/403, which an
  operator can fix without losing data) keeps the lines; the next flush retries after an
  exponential backoff.
- A chunk InfluxDB refuses for good (other 4xx: a malformed line, a field type conflict) is
  appended to a rejected-lines file with the reason, counted and logged; later chunks go on.
- ``add`` never blocks. The buffer is bounded: once ``saturated``, the runtime stops taking
  messages from MQTT (backpressure to the broker) but keeps flushing its local files and
  watching for a stop. The local line-protocol file has everything meanwhile.
- One flush writes at a time: a chunk is popped only once written, so a second writer (the
  worker's next checkpoint, while the thread of one given up on still writes) would pop lines
  the first wrote, then the first would pop lines nobody wrote.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from milkguard.backoff import Backoff
from milkguard.errors import ExtraMissing
from stream.errors import InfluxWriteError
from stream.settings import InfluxSettings

log = logging.getLogger(__name__)

_PASSING_STATUSES = {401, 403, 408, 429}


class InfluxDBSink:
    """Writes line protocol to an InfluxDB bucket; ``flush`` raises if lines remain unwritten."""

    def __init__(
        self,
        url: str,
        token: str,
        org: str,
        bucket: str,
        *,
        rejected_path: Path,
        batch_lines: int = 5_000,
        max_buffer_lines: int = 500_000,
        timeout_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        try:
            from influxdb_client import InfluxDBClient, WritePrecision  # noqa: PLC0415
            from influxdb_client.client.write_api import SYNCHRONOUS  # noqa: PLC0415
        except ImportError as exc:
            raise ExtraMissing("Writing to InfluxDB", "stream", "influxdb-client") from exc
        self.url = url
        self.bucket = bucket
        self.org = org
        self.rejected_path = rejected_path
        self._client: Any = InfluxDBClient(
            url=url, token=token, org=org, timeout=int(timeout_s * 1000), enable_gzip=True
        )
        self._write_api: Any = self._client.write_api(write_options=SYNCHRONOUS)
        self._precision = WritePrecision.NS
        self._buffer: deque[str] = deque()
        self._batch = batch_lines
        self._max_buffer = max_buffer_lines
        self._clock = clock
        self._writing = threading.Lock()  # one flush at a time (see the module's description)
        # jittered: the runtimes writing to one InfluxDB do not all come back at one instant
        self._retry = Backoff(0.5, 30.0)
        self._backoff_s = 0.0
        self._next_try = 0.0
        self.added = 0
        self.written = 0
        self.failures = 0
        self.rejected = 0

    @classmethod
    def from_settings(cls, influx: InfluxSettings, data_dir: Path) -> InfluxDBSink:
        """The sink ``influx.*`` describes (enabled), its server pinged once."""
        assert influx.url is not None
        assert influx.token is not None
        assert influx.org is not None
        assert influx.bucket is not None
        sink = cls(
            influx.url,
            influx.token.get_secret_value(),
            influx.org,
            influx.bucket,
            rejected_path=data_dir / "influx-rejected.lp",
            batch_lines=influx.batch_lines,
            max_buffer_lines=influx.max_buffer_lines,
            timeout_s=influx.timeout_s,
        )
        sink.check_reachable()
        return sink

    def check_reachable(self) -> bool:
        """Ping the server once at start; a failure is logged, not fatal (lines are buffered)."""
        try:
            reachable = bool(self._client.ping())
        except Exception:  # influxdb-client raises a variety of transport errors here
            reachable = False
        if not reachable:
            log.warning("influx.unreachable_at_start", extra={"url": self.url})
        return reachable

    @property
    def buffered(self) -> int:
        """Lines not yet confirmed by InfluxDB."""
        return len(self._buffer)

    @property
    def saturated(self) -> bool:
        """True when the buffer is full: the runtime must stop taking new messages."""
        return len(self._buffer) >= self._max_buffer

    def add(self, lines: Sequence[str]) -> None:
        """Buffer lines for the next flush."""
        self._buffer.extend(lines)
        self.added += len(lines)

    @property
    def settled(self) -> int:
        """Lines InfluxDB has confirmed or refused for good, of the ``added`` so far."""
        return self.written + self.rejected

    @property
    def retry_in_s(self) -> float:
        """How long the backoff after a failed write still lasts."""
        return max(0.0, self._next_try - self._clock())

    def flush_through(self, mark: int) -> None:
        """Write until the first ``mark`` lines ever added are settled (lines added meanwhile,
        from another thread, may wait); raise :class:`InfluxWriteError` if they are not."""
        with self._writing:
            self._flush_through(mark)

    def _flush_through(self, mark: int) -> None:
        if self.settled < mark and self._clock() < self._next_try:
            raise InfluxWriteError(
                f"InfluxDB at {self.url} is backing off for {self._backoff_s:g} s; "
                f"{len(self._buffer)} lines buffered"
            )
        while self.settled < mark and self._buffer:
            self._write_chunk()

    def flush(self) -> None:
        """Write everything buffered; raise :class:`InfluxWriteError` if lines remain."""
        with self._writing:
            self._flush()

    def _flush(self) -> None:
        if self._buffer and self._clock() < self._next_try:
            raise InfluxWriteError(
                f"InfluxDB at {self.url} is backing off for {self._backoff_s:g} s; "
                f"{len(self._buffer)} lines buffered"
            )
        while self._buffer:
            self._write_chunk()

    def _write_chunk(self) -> None:
        chunk = [self._buffer[i] for i in range(min(self._batch, len(self._buffer)))]
        try:
            self._write_api.write(
                bucket=self.bucket,
                org=self.org,
                record="\n".join(chunk),
                write_precision=self._precision,
            )
        except Exception as exc:  # ApiException, urllib3 errors, OSError: all "not written"
            status = getattr(exc, "status", None)
            if isinstance(status, int) and 400 <= status < 500 and status not in _PASSING_STATUSES:
                self._reject(chunk, status, exc)
                return
            self._back_off(exc)
            raise InfluxWriteError(f"write to InfluxDB at {self.url} failed: {exc}") from exc
        for _ in chunk:
            self._buffer.popleft()
        self.written += len(chunk)
        self._retry.reset()
        self._backoff_s = 0.0
        self._next_try = 0.0

    def _back_off(self, exc: Exception) -> None:
        self.failures += 1
        self._backoff_s = self._retry.next()
        self._next_try = self._clock() + self._backoff_s
        log.warning(
            "influx.write_failed",
            extra={
                "url": self.url,
                "bucket": self.bucket,
                "buffered": len(self._buffer),
                "retry_in_s": self._backoff_s,
                "error": _first_line(exc),
            },
        )

    def _reject(self, chunk: list[str], status: int, exc: Exception) -> None:
        reason = _first_line(exc)
        self.rejected_path.parent.mkdir(parents=True, exist_ok=True)
        with self.rejected_path.open("a", encoding="utf-8") as out:
            out.write(f"# rejected by InfluxDB with HTTP {status}: {reason}\n")
            out.write("\n".join(chunk) + "\n")
        for _ in chunk:
            self._buffer.popleft()
        self.rejected += len(chunk)
        log.error(
            "influx.lines_rejected",
            extra={
                "status": status,
                "lines": len(chunk),
                "reason": reason,
                "kept_in": str(self.rejected_path),
            },
        )

    def close(self) -> None:
        """One real attempt to write what is left, whatever the backoff; then close."""
        self._next_try = 0.0
        try:
            self.flush()
        except InfluxWriteError:
            log.error(
                "influx.unwritten_at_stop",
                extra={"lines": len(self._buffer), "kept_in": "the local timeseries-*.lp files"},
            )
        finally:
            self._client.close()


def _first_line(exc: Exception) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__

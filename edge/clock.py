"""Is this gateway's clock right? Asked of the time service, reported with every batch.

Readings are stamped when sampled, with the gateway's clock. The stream estimates each gateway's
offset from arrival times, but only the gateway knows whether its time service ever locked:
after a power cut without a real-time clock, a gateway may run from 1970 or from its last
shutdown until NTP answers. Three ways to ask:

- ``kernel``: ``adjtimex(2)``, the kernel clock that chrony, ntpd and systemd-timesyncd all
  discipline. ``TIME_ERROR`` means unsynchronised; ``esterror`` is the estimated error.
- ``chrony``: ``chronyc -c tracking`` (leap status, system time offset, root distance).
- ``command``: any program printing ``{"synced": true, "offset_ms": 1.5, "error_ms": 20}``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import subprocess
from collections.abc import Callable

from milkguard.contract.v1 import ClockState

log = logging.getLogger(__name__)

_TIME_ERROR = 5  # adjtimex: the clock is not synchronised (STA_UNSYNC)
_STA_NANO = 0x2000  # adjtimex: offset is in nanoseconds, not microseconds


class _Timex(ctypes.Structure):
    """``struct timex`` of Linux (``sys/timex.h``); ctypes applies the platform's alignment."""

    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time_sec", ctypes.c_long),
        ("time_usec", ctypes.c_long),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("reserved", ctypes.c_int * 11),
    ]


def kernel_clock() -> ClockState:
    """The kernel's view through ``adjtimex`` (read-only: ``modes`` is 0)."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return ClockState(synced=None, source="kernel")
    libc = ctypes.CDLL(libc_name, use_errno=True)
    timex = _Timex()
    state = libc.adjtimex(ctypes.byref(timex))
    if state < 0:
        return ClockState(synced=None, source="kernel")
    scale = 1_000_000 if timex.status & _STA_NANO else 1_000
    return ClockState(
        synced=state != _TIME_ERROR,
        offset_ms=timex.offset / scale,
        error_ms=timex.esterror / 1_000,
        source="kernel",
    )


def parse_chrony_tracking(csv_line: str) -> ClockState:
    """One line of ``chronyc -c tracking``; raises ValueError when it is not one."""
    fields = csv_line.strip().split(",")
    if len(fields) < 14:
        raise ValueError(f"expected 14 comma-separated fields, got {len(fields)}")
    stratum = int(fields[2])
    system_time_s = float(fields[4])
    root_delay_s, root_dispersion_s = float(fields[10]), float(fields[11])
    leap = fields[13]
    return ClockState(
        synced=leap != "Not synchronised" and 0 < stratum < 16,
        offset_ms=system_time_s * 1_000,
        # the root distance bounds how far the clock can be from true time
        error_ms=(root_delay_s / 2 + root_dispersion_s) * 1_000,
        source="chrony",
    )


def parse_command_output(text: str) -> ClockState:
    """A clock command's JSON; raises ValueError when it is not the expected object."""
    data = json.loads(text)
    if not isinstance(data, dict) or "synced" not in data:
        raise ValueError('expected a JSON object like {"synced": true, "offset_ms": 1.5}')

    def number(key: str) -> float | None:
        value = data.get(key)
        return None if value is None else float(value)

    return ClockState(
        synced=bool(data["synced"]),
        offset_ms=number("offset_ms"),
        error_ms=number("error_ms"),
        source="command",
    )


def _run(argv: list[str], timeout_s: float = 5.0) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=True)
    return done.stdout


def clock_reader(source: str, command: list[str] | None = None) -> Callable[[], ClockState]:
    """A function that asks the configured time service, never raising: an unreadable
    service reports ``synced=None`` (unknown) and a warning, not a crash of the agent."""

    def read() -> ClockState:
        try:
            if source == "kernel":
                return kernel_clock()
            if source == "chrony":
                return parse_chrony_tracking(_run(["chronyc", "-c", "tracking"]))
            if source == "command" and command:
                return parse_command_output(_run(command))
        except (OSError, subprocess.SubprocessError, ValueError, TypeError) as exc:
            log.warning("edge.clock_unreadable", extra={"source": source, "error": str(exc)})
            return ClockState(synced=None, source=source)  # type: ignore[arg-type]
        return ClockState(synced=None, source="none")

    return read

"""The gateway's local alarm: rings on the farm even when the link to the plant is down.

Pollers report each channel's local limit verdict; the alarm is on while any channel is beyond
its limits (or a source with limited channels cannot be read: a silent probe is not a cold
tank). On every change the configured command runs with ``on`` or ``off`` appended and
``MILKGUARD_ALARM_REASON`` in its environment, e.g. a script that drives a relay on a GPIO pin.
Commands run on their own thread, in order, so a hung relay script never stalls sampling.
"""

from __future__ import annotations

import logging
import os
import queue
import subprocess
import threading

from edge.config import AlarmConfig

log = logging.getLogger(__name__)


class LocalAlarm:
    """Tracks which channels are in alarm and drives the alarm command on changes."""

    def __init__(self, config: AlarmConfig | None) -> None:
        self.config = config
        self._causes: dict[str, str] = {}
        self._lock = threading.Lock()
        self._orders: queue.Queue[tuple[bool, str] | None] = queue.Queue(maxsize=64)
        self.commands_run = 0
        self.command_failures = 0
        self._thread: threading.Thread | None = None
        if config is not None:
            self._thread = threading.Thread(target=self._drive, name="edge-alarm", daemon=True)
            self._thread.start()

    @property
    def active(self) -> bool:
        """True while any cause holds."""
        with self._lock:
            return bool(self._causes)

    def update(self, key: str, breached: bool, reason: str = "") -> None:
        """One verdict for one channel (or source): ``key`` in alarm or not."""
        with self._lock:
            was = bool(self._causes)
            if breached:
                known = key in self._causes
                self._causes[key] = reason
                if not known:
                    log.warning("edge.local_alarm", extra={"cause": key, "reason": reason})
            elif self._causes.pop(key, None) is not None:
                log.info("edge.local_alarm_cleared", extra={"cause": key})
            now = bool(self._causes)
            summary = "; ".join(self._causes.values())
        if now != was:
            self._order(now, summary)

    def close(self) -> None:
        """Stop driving (the relay keeps its last state, as a latching alarm should)."""
        if self._thread is not None:
            self._orders.put(None)
            self._thread.join(timeout=(self.config.timeout_s if self.config else 1) + 1)

    def _order(self, on: bool, reason: str) -> None:
        if self.config is None:
            return
        try:
            self._orders.put_nowait((on, reason))
        except queue.Full:
            log.error("edge.alarm_backlog", extra={"dropped_state": "on" if on else "off"})

    def _drive(self) -> None:
        # every change is run, in order: a breach that cleared a second later still rang
        assert self.config is not None
        state: tuple[bool, str] | None = None
        while True:
            repeat = self.config.repeat_s if state is not None and state[0] else None
            try:
                order = self._orders.get(timeout=repeat)
            except queue.Empty:
                order = state  # repeat the 'on' for watchdog relays
            if order is None:
                return
            state = order
            self._run(*order)

    def _run(self, on: bool, reason: str) -> None:
        assert self.config is not None
        argv = [*self.config.command, "on" if on else "off"]
        env = {**os.environ, "MILKGUARD_ALARM_REASON": reason}
        try:
            subprocess.run(argv, env=env, timeout=self.config.timeout_s, check=True)
            self.commands_run += 1
        except (OSError, subprocess.SubprocessError) as exc:
            self.command_failures += 1
            log.error(
                "edge.alarm_command_failed",
                extra={"command": argv[0], "state": argv[-1], "error": str(exc)},
            )

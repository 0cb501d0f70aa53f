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
import subprocess
import threading
import time

from edge.config import AlarmConfig

log = logging.getLogger(__name__)


class LocalAlarm:
    """Tracks which channels are in alarm and drives the alarm command to match.

    The relay follows the *desired* state, never a queue of orders that could overflow: the
    driving thread runs the command until what it last ran matches what is wanted now. An
    alarm that was wanted at all since the last command rings at least once, even if it has
    cleared by the time the thread gets to it (a slow relay must not swallow a breach).
    """

    def __init__(self, config: AlarmConfig | None) -> None:
        self.config = config
        self._causes: dict[str, str] = {}
        self._changed = threading.Condition()
        self._rang = False  # 'on' wanted since the last command that ran
        self._closing = False
        self.commands_run = 0
        self.command_failures = 0
        self._thread: threading.Thread | None = None
        if config is not None:
            self._thread = threading.Thread(target=self._drive, name="edge-alarm", daemon=True)
            self._thread.start()

    @property
    def active(self) -> bool:
        """True while any cause holds."""
        with self._changed:
            return bool(self._causes)

    def update(self, key: str, breached: bool, reason: str = "") -> None:
        """One verdict for one channel (or source): ``key`` in alarm or not."""
        with self._changed:
            if breached:
                if key not in self._causes:
                    log.warning("edge.local_alarm", extra={"cause": key, "reason": reason})
                self._causes[key] = reason
                self._rang = True
            elif self._causes.pop(key, None) is not None:
                log.info("edge.local_alarm_cleared", extra={"cause": key})
            self._changed.notify_all()

    def close(self) -> None:
        """Bring the relay to the current state, then stop driving it (it keeps that state)."""
        if self._thread is not None:
            with self._changed:
                self._closing = True
                self._changed.notify_all()
            self._thread.join(timeout=(self.config.timeout_s if self.config else 1) * 3 + 1)

    def _drive(self) -> None:
        assert self.config is not None
        applied = False  # assumed off at start: no command until something is wanted
        last_run = 0.0
        while True:
            with self._changed:
                while True:
                    wanted = bool(self._causes)
                    repeat = self.config.repeat_s
                    due = repeat is not None and applied and time.monotonic() >= last_run + repeat
                    if wanted != applied or (self._rang and not applied) or due:
                        break
                    if self._closing:
                        return
                    timeout = None
                    if repeat is not None and applied:
                        timeout = max(0.0, last_run + repeat - time.monotonic())
                    self._changed.wait(timeout)
                # a breach that came and went while the relay was busy still rings once
                on = wanted or (self._rang and not applied)
                self._rang = False
                reason = "; ".join(self._causes.values()) or "cleared"
            self._run(on, reason)
            applied, last_run = on, time.monotonic()

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

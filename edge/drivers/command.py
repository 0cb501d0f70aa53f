"""Readings from a command: for hardware no other driver speaks.

Gateways meet odd devices: a milk meter with a vendor CLI, an I²C humidity sensor read by a
Python one-liner, a truck's CAN bus through ``candump`` and a script. Rather than a driver for
each, the agent runs the command each poll and parses what it prints on stdout:

- a JSON object: ``{"milk_temp": 3.9, "level": 4120}``; each channel's ``key`` picks its value;
- ``key=value`` lines: ``milk_temp=3.9`` (blank lines and ``#`` comments are skipped);
- a single number, when the source has exactly one channel.

The command runs without a shell (argv as configured), so a value in the config can never be
interpreted as shell syntax; a pipeline needs an explicit ``["sh", "-c", "..."]``. It runs in its
own process group so a timeout kills the whole pipeline, not just its first process, and no
stuck helper outlives the poll.

A failed run (non-zero exit, timeout, output in none of the formats) fails the whole source:
nothing it printed can be trusted. A missing key or a non-numeric value loses one point only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import subprocess
from typing import Final, Literal

from pydantic import ConfigDict, Field, model_validator

from edge.drivers.base import ChannelMap, DriverError, SourceConfig

__all__ = ["CommandChannel", "CommandConfig", "CommandDriver"]

log = logging.getLogger(__name__)

#: How much of stderr (and of unparsable stdout) an error quotes.
_QUOTE_CHARS: Final = 200
#: How long to collect a killed command's last stderr.
_DRAIN_S: Final = 1.0


class CommandChannel(ChannelMap):
    """One value the command prints and where it goes."""

    model_config = ConfigDict(extra="forbid")

    key: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "Key of the value in the command's JSON object or key=value lines; leave unset "
            "when the command prints a single number (only with one channel)."
        ),
    )


class CommandConfig(SourceConfig):
    """A command run each poll, whose stdout holds the readings."""

    model_config = ConfigDict(extra="forbid")

    driver: Literal["command"] = Field(description="Selects this driver.")
    command: list[str] = Field(
        min_length=1,
        description="Program and arguments, run without a shell, e.g. ['/usr/local/bin/meter'].",
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Variables added to the agent's environment for the command.",
    )
    # The base declares list[ChannelMap]; pydantic validates this narrower list, and list
    # invariance is all mypy objects to.
    channels: list[CommandChannel] = Field(
        min_length=1, description="The values to take, in the order read() returns them."
    )

    @model_validator(mode="after")
    def _keys_when_several(self) -> CommandConfig:
        if len(self.channels) > 1:
            unkeyed = [i for i, channel in enumerate(self.channels) if channel.key is None]
            if unkeyed:
                raise ValueError(
                    f"channels {unkeyed} have no key: with several channels each needs the key "
                    "of its value in the command's JSON or key=value output"
                )
        return self


class CommandDriver:
    """Runs the command once per ``read()``; see the module docstring."""

    def __init__(self, config: CommandConfig) -> None:
        self.config = config
        self._environment = {**os.environ, **config.env}
        self._bad_keys: set[str] = set()

    def read(self) -> list[float | None]:
        """One value (or None) per configured channel, in config order."""
        stdout, stderr = self._run()
        text = stdout.strip()
        fields = _parse_keyed(text)
        if fields is None:
            try:
                number = float(text)
            except ValueError:
                raise self._failed(
                    f"printed output in none of the formats (JSON object, key=value lines, "
                    f"one number): {text[:_QUOTE_CHARS]!r}",
                    exit_code=0,
                    stderr=stderr,
                ) from None
            if len(self.config.channels) != 1:
                raise self._failed(
                    f"printed a single number but {len(self.config.channels)} channels are "
                    "configured: make it print JSON or key=value lines",
                    exit_code=0,
                    stderr=stderr,
                )
            return [number if math.isfinite(number) else None]
        if any(channel.key is None for channel in self.config.channels):
            raise self._failed(
                "printed JSON or key=value output but the channel has no key: set its key",
                exit_code=0,
                stderr=stderr,
            )
        return [self._take(channel, fields) for channel in self.config.channels]

    def close(self) -> None:
        """Nothing to release: each read runs the command to completion."""

    def _run(self) -> tuple[str, str]:
        """The command's stdout and stderr after a successful run."""
        try:
            process = subprocess.Popen(
                self.config.command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self._environment,
                text=True,
                errors="replace",
                start_new_session=True,
            )
        except OSError as error:
            raise DriverError(
                self.config.name,
                f"cannot start command {self.config.command[0]!r}: {error.strerror or error}; "
                "check the path and that it is executable",
            ) from error
        try:
            stdout, stderr = process.communicate(timeout=self.config.timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            stderr = _drain_stderr(process)
            raise self._failed(
                f"did not finish within timeout_s={self.config.timeout_s} s and was killed",
                exit_code=process.returncode,
                stderr=stderr,
            ) from None
        if process.returncode != 0:
            raise self._failed("failed", exit_code=process.returncode, stderr=stderr)
        return stdout, stderr

    def _failed(self, what: str, *, exit_code: int | None, stderr: str = "") -> DriverError:
        quoted = stderr.strip()[:_QUOTE_CHARS]
        return DriverError(
            self.config.name,
            f"command {self.config.command[0]!r} {what} (exit code {exit_code}); "
            f"stderr: {quoted!r}",
        )

    def _take(self, channel: CommandChannel, fields: dict[str, object]) -> float | None:
        assert channel.key is not None  # read() refuses keyed output for unkeyed channels
        if channel.key not in fields:
            return None
        raw = fields[channel.key]
        value = _number(raw)
        if value is None and raw is not None:
            # Logged when a key turns bad, not every poll: a stuck sensor prints the same
            # "ERR" once a second for as long as it is stuck.
            if channel.key not in self._bad_keys:
                log.warning(
                    "command printed a non-numeric value",
                    extra={
                        "source": self.config.name,
                        "asset": channel.asset,
                        "channel": channel.channel,
                        "key": channel.key,
                        "value": str(raw)[:_QUOTE_CHARS],
                    },
                )
                self._bad_keys.add(channel.key)
        else:
            self._bad_keys.discard(channel.key)
        return value


def _kill_group(process: subprocess.Popen[str]) -> None:
    # The child leads its own session, so its pid is the group id of everything it started.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def _drain_stderr(process: subprocess.Popen[str]) -> str:
    """What a killed command wrote to stderr, without waiting on a helper that escaped the kill."""
    try:
        _, stderr = process.communicate(timeout=_DRAIN_S)
    except subprocess.TimeoutExpired:
        # Something started its own session and still holds the pipes; do not wait for it.
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()
        process.wait()
        return ""
    return stderr


def _parse_keyed(text: str) -> dict[str, object] | None:
    """The fields of a JSON object or of key=value lines; None when the text is neither."""
    if text.startswith("{"):
        try:
            document = json.loads(text)
        except json.JSONDecodeError:
            return None
        return document if isinstance(document, dict) else None
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines or not all("=" in line for line in lines):
        return None
    pairs = (line.split("=", 1) for line in lines)
    return {key.strip(): value.strip() for key, value in pairs}


def _number(raw: object) -> float | None:
    """``raw`` as a finite float, or None (JSON null, text, true/false, NaN)."""
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) else None

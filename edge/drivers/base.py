"""What every sensor driver shares: the channel map, local limits, and the read contract.

A *source* is one thing the agent polls: a Modbus device, a 1-Wire bus, a command, a simulated
device. It maps each of its points to an asset and channel of the wire contract. The agent polls
each source in its own thread, so a slow or failing source never holds up the others.

Read contract: ``read()`` returns one value per configured channel, in config order. ``None``
means that one point could not be read this time (a probe's CRC failed, a register is missing);
raising :class:`DriverError` means the whole source failed (device unreachable, command crashed).
The agent retries a failed source with backoff and reports it; readings are never invented.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

from milkguard.contract.v1 import ID_PATTERN, Unit
from milkguard.errors import MilkGuardError

IdField = Annotated[str, Field(pattern=ID_PATTERN)]


class DriverError(MilkGuardError):
    """A source could not be read; the message names the source and what to check."""

    def __init__(self, source: str, problem: str) -> None:
        self.source = source
        self.problem = problem
        super().__init__(f"source {source!r}: {problem}")


class LocalLimits(BaseModel):
    """Limits the gateway checks itself, so its alarm works while the link is down.

    These do not replace the plant's HACCP plan, which the stream applies; they drive the local
    alarm relay (e.g. a farm tank above 8 °C rings the milking parlour).
    """

    model_config = ConfigDict(extra="forbid")

    low: float | None = Field(default=None, description="Alarm below this value.")
    high: float | None = Field(default=None, description="Alarm above this value.")

    @model_validator(mode="after")
    def _ordered(self) -> LocalLimits:
        if self.low is not None and self.high is not None and self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self

    def breached(self, value: float) -> bool:
        """True when ``value`` is outside the limits."""
        return (self.low is not None and value < self.low) or (
            self.high is not None and value > self.high
        )


class ChannelMap(BaseModel):
    """Where one point's values go: an asset and channel of the wire contract."""

    model_config = ConfigDict(extra="forbid")

    asset: IdField
    channel: IdField
    unit: Unit
    limits: LocalLimits | None = None


class SourceConfig(BaseModel):
    """Fields every source has; each driver adds its own (and its channel type)."""

    model_config = ConfigDict(extra="forbid")

    name: IdField = Field(description="Names the source in logs, status and errors.")
    every_s: float = Field(default=1.0, gt=0, le=3600, description="Sampling interval.")
    timeout_s: float = Field(default=2.0, gt=0, le=60, description="Longest one read may take.")
    channels: Sequence[ChannelMap] = Field(min_length=1)


class Driver(Protocol):
    """A source that can be read (see the module docstring for the contract)."""

    def read(self) -> list[float | None]:
        """One value (or None) per configured channel, in config order."""
        ...

    def close(self) -> None:
        """Release the device (socket, serial port)."""
        ...

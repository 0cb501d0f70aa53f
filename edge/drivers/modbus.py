"""Modbus devices: tank controllers, pasteurizer PLCs, flow meters, over TCP or RS-485 (RTU).

Most dairy equipment with a display speaks Modbus: the farm tank's cooling controller, the HTST
pasteurizer's PLC (holding-tube temperature, flow-diversion valve), magnetic flow meters, chart
recorder replacements. Each value sits in one 16-bit register or a pair of them, at an address
from the vendor's manual, often with a scale (``215`` meaning 21.5 °C).

Why it behaves as it does:

- Registers next to each other are fetched in one request (at most 125, the protocol's limit)
  so a poll costs one round trip per block rather than one per point; an RS-485 line at
  9600 baud carries only a few requests a second. Blocks never span gaps: many devices answer
  an unmapped address with an exception, which would lose the block's good points too.
- If a block is refused with "illegal function/address/value", its points are read one by one,
  so one wrong address in the config costs that point (None), not the whole device. Any other
  exception (device failure, busy, gateway target not answering) is about the device and fails
  the source, as do a connection failure and a missing answer.
- The client connects on the first read, not at start, so an agent can start while a PLC is off.
  After a failed read it closes the connection and reconnects on the next read, because a
  half-open socket or an RS-485 line with a late answer in flight would mix up responses.
  Devices and gateways drop idle TCP connections, so a read that finds its kept connection dead
  reconnects once at once instead of failing a poll.
- ``timeout_s`` bounds the whole read: each request gets what remains of it, and pymodbus's own
  retries are off because the agent retries a failed source with backoff.
- A float32 register pair holding NaN or infinity (how many meters say "sensor fault") is None.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, TypeAlias

from pydantic import ConfigDict, Field, model_validator

from edge.drivers.base import ChannelMap, DriverError, SourceConfig
from milkguard.errors import ExtraMissing

if TYPE_CHECKING:
    from pymodbus.client import ModbusSerialClient, ModbusTcpClient
    from pymodbus.exceptions import ModbusException
    from pymodbus.pdu import ModbusPDU

__all__ = ["ModbusChannel", "ModbusConfig", "ModbusDriver"]

log = logging.getLogger(__name__)

Table: TypeAlias = Literal["holding", "input"]
DataType: TypeAlias = Literal["int16", "uint16", "int32", "uint32", "float32"]

#: Most registers one read may ask for (Modbus application protocol, function codes 3 and 4).
MAX_REGISTERS_PER_READ: Final = 125


# pymodbus is imported where it is used, when a Modbus source is opened, not when a config is
# validated: a gateway without Modbus sources saves its memory (about 8 MB resident).


_WIDTH: Final = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2}

#: Exception codes that say the request was wrong for one address, not that the device failed:
#: illegal function, illegal data address, illegal data value.
_POINT_EXCEPTIONS: Final = frozenset({1, 2, 3})

_EXCEPTION_NAMES: Final = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "device failure",
    5: "acknowledge (busy with a long command)",
    6: "device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


class ModbusChannel(ChannelMap):
    """One value in one or two registers and where it goes."""

    model_config = ConfigDict(extra="forbid")

    # "register" is the config key, but BaseModel already has register() (from ABCMeta), so
    # the attribute is named address.
    address: int = Field(
        alias="register",
        ge=0,
        le=65535,
        description=(
            "Protocol address of the (first) register, counted from 0. Manuals that number "
            "holding registers 40001.. or input registers 30001.. mean address 0 for the first."
        ),
    )
    table: Table = Field(
        default="holding",
        description="Holding registers (function 3) or input registers (function 4).",
    )
    data_type: DataType = Field(
        default="int16",
        description="How the register(s) encode the value; 32-bit types use two registers.",
    )
    word_order: Literal["big", "little"] = Field(
        default="big",
        description=(
            "For 32-bit types: 'big' when the first register holds the high word, 'little' "
            "when it holds the low word (as many meters do)."
        ),
    )
    scale: float = Field(default=1.0, description="Value = raw * scale + offset.")
    offset: float = Field(default=0.0, description="Value = raw * scale + offset.")

    @property
    def width(self) -> int:
        """How many registers the value occupies."""
        return _WIDTH[self.data_type]

    @model_validator(mode="after")
    def _fits(self) -> ModbusChannel:
        if self.address + self.width - 1 > 65535:
            raise ValueError(
                f"a {self.data_type} at register {self.address} runs past the last register (65535)"
            )
        return self


class ModbusConfig(SourceConfig):
    """A Modbus device reached over TCP or over an RS-485 serial line (RTU)."""

    model_config = ConfigDict(extra="forbid")

    driver: Literal["modbus"] = Field(description="Selects this driver.")
    transport: Literal["tcp", "rtu"] = Field(
        description="'tcp' for Modbus TCP (Ethernet), 'rtu' for RS-485/RS-232 serial."
    )
    host: str | None = Field(
        default=None, min_length=1, description="tcp: the device's or gateway's host or IP."
    )
    port: int = Field(default=502, ge=1, le=65535, description="tcp: the TCP port.")
    serial_port: str | None = Field(
        default=None,
        min_length=1,
        description="rtu: the serial device, e.g. /dev/ttyUSB0 or /dev/serial/by-id/...",
    )
    baudrate: int = Field(default=9600, gt=0, description="rtu: line speed in bit/s.")
    parity: Literal["N", "E", "O"] = Field(
        default="N", description="rtu: parity, None, Even or Odd (the device's setting)."
    )
    stopbits: Literal[1, 2] = Field(default=1, description="rtu: stop bits.")
    bytesize: Literal[7, 8] = Field(default=8, description="rtu: data bits per character.")
    unit_id: int = Field(
        default=1,
        ge=0,
        le=247,
        description="Modbus unit (device/slave) id; on RS-485 each device on the line has one.",
    )
    # The base declares list[ChannelMap]; pydantic validates this narrower list, and list
    # invariance is all mypy objects to.
    channels: list[ModbusChannel] = Field(
        min_length=1, description="The values to read, in the order read() returns them."
    )

    @model_validator(mode="after")
    def _transport_fields(self) -> ModbusConfig:
        tcp_fields = {"host", "port"}
        rtu_fields = {"serial_port", "baudrate", "parity", "stopbits", "bytesize"}
        needed, foreign = (
            ("host", rtu_fields) if self.transport == "tcp" else ("serial_port", tcp_fields)
        )
        if getattr(self, needed) is None:
            raise ValueError(f"{needed} is required when transport is {self.transport!r}")
        if stray := sorted(foreign & self.model_fields_set):
            raise ValueError(
                f"not used when transport is {self.transport!r}: {', '.join(stray)}; "
                "remove them or change transport"
            )
        return self

    @property
    def endpoint(self) -> str:
        """Where the device is, as errors and logs name it."""
        where = f"{self.host}:{self.port}" if self.transport == "tcp" else f"{self.serial_port}"
        return f"{where} unit {self.unit_id}"


@dataclass(frozen=True, slots=True)
class _Block:
    """Contiguous registers of one table fetched in one request, and the channels in them."""

    table: Table
    start: int
    count: int
    channels: tuple[int, ...]


def _plan_blocks(channels: list[ModbusChannel]) -> list[_Block]:
    """Group channels into as few contiguous reads as the protocol allows."""
    order = sorted(range(len(channels)), key=lambda i: (channels[i].table, channels[i].address))
    blocks: list[_Block] = []
    for index in order:
        channel = channels[index]
        end = channel.address + channel.width
        last = blocks[-1] if blocks else None
        if (
            last is not None
            and last.table == channel.table
            and channel.address <= last.start + last.count
            and max(end, last.start + last.count) - last.start <= MAX_REGISTERS_PER_READ
        ):
            blocks[-1] = _Block(
                last.table,
                last.start,
                max(end, last.start + last.count) - last.start,
                (*last.channels, index),
            )
        else:
            blocks.append(_Block(channel.table, channel.address, channel.width, (index,)))
    return blocks


def _decode(channel: ModbusChannel, registers: list[int]) -> float | None:
    """The channel's value from its registers, scaled; None for NaN or infinity."""
    from pymodbus.client.mixin import ModbusClientMixin  # noqa: PLC0415

    data_type = getattr(ModbusClientMixin.DATATYPE, channel.data_type.upper())
    raw = ModbusClientMixin.convert_from_registers(
        registers, data_type=data_type, word_order=channel.word_order
    )
    if not isinstance(raw, int | float):
        raise TypeError(f"{channel.data_type} decoded to {type(raw).__name__}")
    value = raw * channel.scale + channel.offset
    return value if math.isfinite(value) else None


class _RefusedError(Exception):
    """The device answered a request with a Modbus exception."""

    def __init__(self, code: int) -> None:
        self.code = code
        super().__init__(_EXCEPTION_NAMES.get(code, f"exception code {code}"))


class ModbusDriver:
    """Reads every configured register once per ``read()``; see the module docstring."""

    def __init__(self, config: ModbusConfig) -> None:
        try:
            from pymodbus.client import ModbusSerialClient, ModbusTcpClient  # noqa: PLC0415
        except ImportError as exc:
            raise ExtraMissing("The Modbus driver", "edge", "pymodbus") from exc
        self.config = config
        self._blocks = _plan_blocks(config.channels)
        self._refused: set[int] = set()
        self._client: ModbusTcpClient | ModbusSerialClient
        # Constructing a pymodbus sync client opens nothing; connect() does, on the first read.
        if config.transport == "tcp":
            assert config.host is not None  # checked by ModbusConfig
            self._client = ModbusTcpClient(
                config.host, port=config.port, timeout=config.timeout_s, retries=0
            )
        else:
            assert config.serial_port is not None  # checked by ModbusConfig
            self._client = ModbusSerialClient(
                config.serial_port,
                baudrate=config.baudrate,
                parity=config.parity,
                stopbits=config.stopbits,
                bytesize=config.bytesize,
                timeout=config.timeout_s,
                retries=0,
            )

    def read(self) -> list[float | None]:
        """One value (or None) per configured channel, in config order."""
        from pymodbus.exceptions import ConnectionException, ModbusException  # noqa: PLC0415

        deadline = time.monotonic() + self.config.timeout_s
        kept_connection = self._client.connected
        try:
            try:
                return self._read_blocks(deadline)
            except ConnectionException:
                if not kept_connection:
                    raise
                # The device or a gateway dropped the idle connection since the last poll.
                log.info(
                    "modbus connection was closed by the device, reconnecting",
                    extra={"source": self.config.name, "device": self.config.endpoint},
                )
                self._disconnect()
                return self._read_blocks(deadline)
        except ModbusException as error:
            self._disconnect()
            raise DriverError(self.config.name, self._explain(error)) from error
        except DriverError:
            self._disconnect()
            raise

    def close(self) -> None:
        """Close the TCP connection or release the serial port."""
        self._disconnect()

    def _disconnect(self) -> None:
        self._client.close()  # type: ignore[no-untyped-call]  # pymodbus leaves close() unannotated

    def _read_blocks(self, deadline: float) -> list[float | None]:
        values: list[float | None] = [None] * len(self.config.channels)
        for block in self._blocks:
            try:
                registers = self._request(block.table, block.start, block.count, deadline)
            except _RefusedError as refusal:
                if len(block.channels) == 1:
                    self._note_refusal(block.channels[0], refusal)
                else:
                    for index in block.channels:
                        values[index] = self._read_alone(index, deadline)
                continue
            for index in block.channels:
                channel = self.config.channels[index]
                first = channel.address - block.start
                values[index] = _decode(channel, registers[first : first + channel.width])
                self._refused.discard(index)
        return values

    def _read_alone(self, index: int, deadline: float) -> float | None:
        channel = self.config.channels[index]
        try:
            registers = self._request(channel.table, channel.address, channel.width, deadline)
        except _RefusedError as refusal:
            self._note_refusal(index, refusal)
            return None
        self._refused.discard(index)
        return _decode(channel, registers)

    def _note_refusal(self, index: int, refusal: _RefusedError) -> None:
        # Logged when a point starts being refused, not every poll: a wrong address in the
        # config would otherwise log once a second until someone fixes it.
        if index in self._refused:
            return
        self._refused.add(index)
        channel = self.config.channels[index]
        log.warning(
            "modbus register refused: %s",
            refusal,
            extra={
                "source": self.config.name,
                "device": self.config.endpoint,
                "asset": channel.asset,
                "channel": channel.channel,
                "table": channel.table,
                "register": channel.address,
                "exception_code": refusal.code,
            },
        )

    def _request(self, table: Table, start: int, count: int, deadline: float) -> list[int]:
        """The registers, or _RefusedError for a point-level exception; DriverError otherwise."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DriverError(
                self.config.name,
                f"reading {self.config.endpoint} took longer than timeout_s="
                f"{self.config.timeout_s} s: raise timeout_s, or check the line is not "
                "overloaded",
            )
        # The client reads its timeout per request, so the last request gets only what is left.
        self._client.comm_params.timeout_connect = remaining
        if not self._client.connected and not self._client.connect():
            raise DriverError(self.config.name, self._cannot_connect())
        if table == "holding":
            response = self._client.read_holding_registers(
                start, count=count, device_id=self.config.unit_id
            )
        else:
            response = self._client.read_input_registers(
                start, count=count, device_id=self.config.unit_id
            )
        return self._registers(response, table, start, count)

    def _registers(self, response: ModbusPDU, table: Table, start: int, count: int) -> list[int]:
        if response.isError():
            code = response.exception_code
            if code in _POINT_EXCEPTIONS:
                raise _RefusedError(code)
            raise DriverError(
                self.config.name,
                f"{self.config.endpoint} answered {table} registers {start}..{start + count - 1}"
                f" with exception {code} ({_EXCEPTION_NAMES.get(code, 'unknown')}): check the "
                "device's state and, behind a gateway, that unit_id is right",
            )
        registers = list(response.registers)
        if len(registers) < count:
            raise DriverError(
                self.config.name,
                f"{self.config.endpoint} returned {len(registers)} of {count} {table} registers "
                f"from {start}",
            )
        return registers[:count]

    def _cannot_connect(self) -> str:
        if self.config.transport == "tcp":
            return (
                f"cannot connect to {self.config.endpoint}: check the device is powered, the "
                "host and port, and that no firewall blocks the port"
            )
        return (
            f"cannot open {self.config.endpoint}: check the serial device exists, that the "
            "agent may open it (dialout group), and that nothing else holds it"
        )

    def _explain(self, error: ModbusException) -> str:
        from pymodbus.exceptions import ConnectionException  # noqa: PLC0415

        if isinstance(error, ConnectionException):
            return (
                f"lost the connection to {self.config.endpoint}: check the device and network "
                f"({error})"
            )
        return (
            f"no valid answer from {self.config.endpoint} within timeout_s="
            f"{self.config.timeout_s} s: check unit_id, wiring, and on RTU baudrate/parity "
            f"({error})"
        )

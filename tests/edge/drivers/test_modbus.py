"""The Modbus driver against a real pymodbus TCP server on 127.0.0.1.

The server is pymodbus's own (SimDevice datastore), run in an event loop thread; the driver talks
to it over a real socket exactly as it talks to a tank controller or a pasteurizer PLC.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import threading
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import pytest
from pydantic import ValidationError
from pymodbus.client.mixin import ModbusClientMixin
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from edge.drivers.base import DriverError
from edge.drivers.modbus import ModbusConfig, ModbusDriver
from tests.servers import free_port

UNIT_ID = 1
DATATYPE = ModbusClientMixin.DATATYPE


def registers(value: float, data_type: DATATYPE, word_order: str = "big") -> list[int]:
    """What a device stores for ``value`` (pymodbus's own encoder, independent of the driver)."""
    return ModbusClientMixin.convert_to_registers(
        value,
        data_type,
        word_order="little" if word_order == "little" else "big",
    )


class ModbusDevice:
    """A real Modbus TCP server on 127.0.0.1 serving fixed registers, in its own loop thread.

    Addresses not given are unmapped: reading them gets "illegal data address", as on a device.
    """

    def __init__(self, holding: dict[int, list[int]], inputs: dict[int, list[int]]) -> None:
        self.port = free_port()
        self.requests: list[tuple[int, int, int]] = []
        flags = [SimData(0, values=[False] * 16, datatype=DataType.BITS)]
        self._device = SimDevice(
            id=UNIT_ID,
            simdata=(flags, flags, self._blocks(holding), self._blocks(inputs)),
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="modbus-test-device", daemon=True
        )
        self._thread.start()
        self._server: ModbusTcpServer | None = None

    @staticmethod
    def _blocks(values: dict[int, list[int]]) -> list[SimData]:
        return [
            SimData(address, values=words, datatype=DataType.REGISTERS)
            for address, words in values.items()
        ]

    def _trace(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending:
            self.requests.append((pdu.function_code, pdu.address, pdu.count))
        return pdu

    async def _serve(self) -> ModbusTcpServer:
        server = ModbusTcpServer(
            self._device, address=("127.0.0.1", self.port), trace_pdu=self._trace
        )
        await server.serve_forever(background=True)
        return server

    def start(self) -> None:
        """Listen (again) on the same port."""
        self._server = asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(10)

    def stop(self) -> None:
        """Stop listening and drop every open connection, as a power cut would."""
        if self._server is not None:
            server, self._server = self._server, None
            shutdown = server.shutdown()  # type: ignore[no-untyped-call]
            asyncio.run_coroutine_threadsafe(shutdown, self._loop).result(10)

    def close(self) -> None:
        """Stop the server and its loop thread."""
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def config(port: int, *channels: dict[str, Any], **fields: Any) -> ModbusConfig:
    return ModbusConfig.model_validate(
        {
            "name": "pasteurizer-plc",
            "driver": "modbus",
            "transport": "tcp",
            "host": "127.0.0.1",
            "port": port,
            "unit_id": UNIT_ID,
            "timeout_s": 5.0,
            "channels": [
                {"asset": "htst-1", "channel": f"point_{i}", "unit": "degC", **channel}
                for i, channel in enumerate(channels)
            ],
            **fields,
        }
    )


#: A pasteurizer PLC's registers, as its manual would list them.
HOLDING = {
    0: registers(-125, DATATYPE.INT16),  # cooling section outlet, 0.1 °C
    1: registers(65_000, DATATYPE.UINT16),  # pump hours
    2: registers(72.25, DATATYPE.FLOAT32),  # holding tube, big-endian words
    4: registers(-4.75, DATATYPE.FLOAT32, "little"),  # chilled water, low word first
    6: registers(-70_000, DATATYPE.INT32),
    8: registers(3_000_000_000, DATATYPE.UINT32, "little"),
    20: registers(math.nan, DATATYPE.FLOAT32),  # sensor fault
    30: [1, 2],
    33: [4],  # 32 is unmapped
}
INPUTS = {0: registers(415, DATATYPE.INT16)}


@pytest.fixture
def device() -> Iterator[ModbusDevice]:
    server = ModbusDevice(HOLDING, INPUTS)
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.mark.integration
def test_every_data_type_and_word_order_decodes_with_scale_and_offset(
    device: ModbusDevice,
) -> None:
    channels = [
        {"register": 0, "data_type": "int16", "scale": 0.1},
        {"register": 1, "data_type": "uint16"},
        {"register": 2, "data_type": "float32"},
        {"register": 4, "data_type": "float32", "word_order": "little"},
        {"register": 6, "data_type": "int32"},
        {"register": 8, "data_type": "uint32", "word_order": "little"},
        {"register": 0, "table": "input", "scale": 0.01, "offset": -1.0},
    ]

    with closing(ModbusDriver(config(device.port, *channels))) as driver:
        values = driver.read()

    assert values == pytest.approx([-12.5, 65_000, 72.25, -4.75, -70_000, 3_000_000_000, 3.15])


@pytest.mark.integration
def test_contiguous_registers_of_a_table_are_fetched_in_one_request(
    device: ModbusDevice,
) -> None:
    channels: list[dict[str, Any]] = [
        {"register": 8, "data_type": "uint32", "word_order": "little"},
        {"register": 0},
        {"register": 0, "table": "input"},
        {"register": 2, "data_type": "float32"},
        {"register": 1, "data_type": "uint16"},
        {"register": 20, "data_type": "float32"},
        {"register": 4, "data_type": "float32", "word_order": "little"},
        {"register": 6, "data_type": "int32"},
    ]

    with closing(ModbusDriver(config(device.port, *channels))) as driver:
        values = driver.read()

    assert values[:5] == pytest.approx([3_000_000_000, -125, 415, 72.25, 65_000])
    assert sorted(device.requests) == [(3, 0, 10), (3, 20, 2), (4, 0, 1)]


@pytest.mark.integration
def test_a_float_holding_nan_reads_none(device: ModbusDevice) -> None:
    with closing(ModbusDriver(config(device.port, {"register": 20, "data_type": "float32"}))) as d:
        assert d.read() == [None]


@pytest.mark.integration
def test_a_refused_register_reads_none_is_logged_once_and_its_neighbours_still_read(
    device: ModbusDevice, caplog: pytest.LogCaptureFixture
) -> None:
    channels = [{"register": 30}, {"register": 31}, {"register": 32}, {"register": 33}]

    with (
        caplog.at_level(logging.WARNING, logger="edge.drivers.modbus"),
        closing(ModbusDriver(config(device.port, *channels))) as driver,
    ):
        values = driver.read()
        again = driver.read()

    assert values == again == [1, 2, None, 4]
    (warning,) = [r for r in caplog.records if r.name == "edge.drivers.modbus"]
    assert warning.register == 32  # type: ignore[attr-defined]
    assert warning.exception_code == 2  # type: ignore[attr-defined]


@pytest.mark.integration
def test_a_refused_register_on_its_own_is_asked_for_once_per_read(device: ModbusDevice) -> None:
    with closing(ModbusDriver(config(device.port, {"register": 32}, {"register": 0}))) as driver:
        assert driver.read() == [None, -125]

    assert sorted(device.requests) == [(3, 0, 1), (3, 32, 1)]


@pytest.mark.integration
def test_a_wrong_unit_id_fails_the_source_naming_the_unit(device: ModbusDevice) -> None:
    with (
        closing(ModbusDriver(config(device.port, {"register": 0}, unit_id=7))) as driver,
        pytest.raises(DriverError, match=f"127.0.0.1:{device.port} unit 7") as caught,
    ):
        driver.read()
    assert "device failure" in str(caught.value)


@pytest.mark.integration
def test_an_unreachable_device_fails_the_source_naming_host_port_and_unit() -> None:
    port = free_port()

    with (
        closing(ModbusDriver(config(port, {"register": 0}))) as driver,
        pytest.raises(DriverError, match=f"cannot connect to 127.0.0.1:{port} unit 1") as caught,
    ):
        driver.read()
    assert caught.value.source == "pasteurizer-plc"


@pytest.mark.integration
def test_a_device_that_accepts_but_never_answers_fails_the_source_within_its_timeout() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        with (
            closing(ModbusDriver(config(port, {"register": 0}, timeout_s=0.3))) as driver,
            pytest.raises(DriverError, match=f"no valid answer from 127.0.0.1:{port} unit 1"),
        ):
            driver.read()


@pytest.mark.integration
def test_the_driver_recovers_when_the_device_comes_back(device: ModbusDevice) -> None:
    with closing(ModbusDriver(config(device.port, {"register": 0, "scale": 0.1}))) as driver:
        assert driver.read() == [-12.5]

        device.stop()
        with pytest.raises(DriverError, match=f"127.0.0.1:{device.port} unit 1"):
            driver.read()
        with pytest.raises(DriverError, match="cannot connect"):
            driver.read()

        device.start()
        assert driver.read() == [-12.5]


@pytest.mark.integration
def test_a_device_restarted_between_polls_costs_no_failed_read(device: ModbusDevice) -> None:
    with closing(ModbusDriver(config(device.port, {"register": 0, "scale": 0.1}))) as driver:
        assert driver.read() == [-12.5]
        device.stop()
        device.start()

        assert driver.read() == [-12.5]


def test_a_serial_port_that_does_not_exist_fails_the_source_naming_it() -> None:
    rtu = ModbusConfig.model_validate(
        {
            "name": "tank-controller",
            "driver": "modbus",
            "transport": "rtu",
            "serial_port": "/dev/ttyMILKGUARD-NONE",
            "unit_id": 3,
            "channels": [
                {"asset": "tank-1", "channel": "milk_temp", "unit": "degC", "register": 0}
            ],
        }
    )

    with (
        closing(ModbusDriver(rtu)) as driver,
        pytest.raises(DriverError, match="cannot open /dev/ttyMILKGUARD-NONE unit 3"),
    ):
        driver.read()


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"transport": "tcp", "host": None}, "host is required"),
        ({"transport": "rtu", "host": None}, "serial_port is required"),
        ({"transport": "rtu", "serial_port": "/dev/ttyUSB0"}, "host"),
        ({"transport": "tcp", "baudrate": 19200}, "baudrate"),
        ({"transport": "tcp", "unit_id": 248}, "unit_id"),
        (
            {"transport": "rtu", "serial_port": "/dev/ttyUSB0", "parity": "X", "host": None},
            "parity",
        ),
    ],
)
def test_settings_that_do_not_fit_the_transport_are_refused_naming_the_field(
    fields: dict[str, Any], named: str
) -> None:
    with pytest.raises(ValidationError, match=named):
        config(502, {"register": 0}, **fields)


def test_a_32_bit_value_past_the_last_register_is_refused() -> None:
    with pytest.raises(ValidationError, match="runs past the last register"):
        config(502, {"register": 65535, "data_type": "float32"})

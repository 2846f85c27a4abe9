"""Modbus: the register map and read planning (pure), then reads from pymodbus' own server over
TCP on loopback and RTU over a pseudo-terminal pair, including a unit that never answers, an
exception response (code 2) and a reply with a bad CRC."""

from __future__ import annotations

import itertools
import math
import re
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("pymodbus", reason="the 'modbus' extra (pymodbus) is not installed")
pytest.importorskip("serial", reason="the 'modbus' extra (pyserial) is not installed")

from devices.drivers import create_driver
from devices.drivers.modbus import (
    MAX_BITS_PER_REQUEST,
    MAX_REGISTERS_PER_REQUEST,
    ModbusDriver,
    decode_words,
    parse_registers,
    plan_reads,
)
from devices.errors import DriverConfigError, SensorReadError
from devices.model import Measurement
from tests.modbus_server import ModbusServer, PtyPair, RegisterMap, SilentTcpServer, words
from tests.mosquitto import free_port


def regs(*entries: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"metric": f"m{i}", **e} for i, e in enumerate(entries)]


def plan(*entries: dict[str, Any], max_gap: int = 0) -> list[tuple[str, int, int, list[str]]]:
    blocks = plan_reads(parse_registers({"registers": regs(*entries)}), max_gap=max_gap)
    return [(b.function, b.address, b.count, [r.metric for r in b.registers]) for b in blocks]


# --- planning ------------------------------------------------------------------------------------


def test_adjacent_registers_of_one_function_are_one_request() -> None:
    assert plan(
        {"address": 0, "type": "float32"},
        {"address": 2, "type": "uint16"},
        {"address": 3, "type": "float64"},
    ) == [("holding", 0, 7, ["m0", "m1", "m2"])]


def test_functions_never_share_a_request_and_come_out_in_a_fixed_order() -> None:
    assert plan(
        {"address": 5, "function": "discrete"},
        {"address": 0, "function": "input"},
        {"address": 0, "function": "coil"},
        {"address": 1, "function": "coil"},
        {"address": 1},
    ) == [
        ("holding", 1, 1, ["m4"]),
        ("input", 0, 1, ["m1"]),
        ("coil", 0, 2, ["m2", "m3"]),
        ("discrete", 5, 1, ["m0"]),
    ]


def test_a_gap_splits_unless_max_gap_allows_reading_through_it() -> None:
    entries = ({"address": 0, "type": "int32"}, {"address": 4}, {"address": 10})
    assert plan(*entries) == [
        ("holding", 0, 2, ["m0"]),
        ("holding", 4, 1, ["m1"]),
        ("holding", 10, 1, ["m2"]),
    ]
    assert plan(*entries, max_gap=2) == [("holding", 0, 5, ["m0", "m1"]), ("holding", 10, 1, ["m2"])]
    assert plan(*entries, max_gap=5) == [("holding", 0, 11, ["m0", "m1", "m2"])]


def test_config_order_does_not_matter_and_overlaps_share_a_request() -> None:
    # The same register read as signed and unsigned, and a float32 over both halves of an int32.
    assert plan(
        {"address": 12, "type": "int32"},
        {"address": 10, "type": "int16"},
        {"address": 10, "type": "uint16"},
        {"address": 11, "type": "float32"},
    ) == [("holding", 10, 4, ["m1", "m2", "m3", "m0"])]


def test_requests_stay_within_the_protocol_limits() -> None:
    many = [{"address": a} for a in range(300)]
    blocks = plan(*many)
    assert [(b[1], b[2]) for b in blocks] == [(0, 125), (125, 125), (250, 50)]
    # A 4-register value never straddles two requests.
    floats = [{"address": 4 * i, "type": "float64"} for i in range(40)]  # 160 registers
    got = plan(*floats)
    assert [(b[1], b[2]) for b in got] == [(0, 124), (124, 36)]
    assert all(count <= MAX_REGISTERS_PER_REQUEST for _, _, count, _ in got)
    bits = plan(*({"address": a, "function": "coil"} for a in range(2500)))
    assert [(b[1], b[2]) for b in bits] == [(0, MAX_BITS_PER_REQUEST), (2000, 500)]


REGISTER_ENTRY = st.fixed_dictionaries(
    {
        "address": st.integers(0, 400),
        "function": st.sampled_from(["holding", "input", "coil"]),
        "type": st.sampled_from(["uint16", "int32", "float64"]),
    }
).map(lambda e: {**e, "type": "bool"} if e["function"] == "coil" else e)


@given(st.lists(REGISTER_ENTRY, min_size=1, max_size=60), st.integers(0, 5))
@settings(max_examples=300, deadline=None)
def test_plans_cover_every_register_once_within_limits_and_cannot_be_merged(
    entries: list[dict[str, Any]], max_gap: int
) -> None:
    registers = parse_registers({"registers": regs(*entries)})
    blocks = plan_reads(registers, max_gap=max_gap)
    assert sorted(r.metric for b in blocks for r in b.registers) == sorted(r.metric for r in registers)
    for b in blocks:
        limit = MAX_BITS_PER_REQUEST if b.function == "coil" else MAX_REGISTERS_PER_REQUEST
        assert 1 <= b.count <= limit
        for r in b.registers:
            assert r.function == b.function
            assert b.address <= r.address and r.end <= b.address + b.count
    # Fewest requests: two neighbouring blocks of a function are either too far apart or too
    # big together to be one request.
    for a, b in itertools.pairwise(blocks):
        if a.function == b.function:
            limit = MAX_BITS_PER_REQUEST if a.function == "coil" else MAX_REGISTERS_PER_REQUEST
            gap = b.address - (a.address + a.count)
            assert gap > max_gap or b.address + b.count - a.address > limit


# --- decoding ------------------------------------------------------------------------------------


def reg(dtype: str, word_order: str = "big", byte_order: str = "big") -> Any:
    return parse_registers(
        {
            "registers": [
                {
                    "address": 0,
                    "type": dtype,
                    "word_order": word_order,
                    "byte_order": byte_order,
                    "metric": "x",
                }
            ]
        }
    )[0]


@pytest.mark.parametrize(
    ("dtype", "word_order", "byte_order", "registers", "value"),
    [
        # IEEE 754: 1234.5 = 0x449A5000
        ("float32", "big", "big", [0x449A, 0x5000], 1234.5),
        ("float32", "little", "big", [0x5000, 0x449A], 1234.5),
        ("float32", "big", "little", [0x9A44, 0x0050], 1234.5),
        ("float32", "little", "little", [0x0050, 0x9A44], 1234.5),
        ("int32", "big", "big", [0xFFFF, 0xFFFE], -2),
        ("int32", "little", "big", [0xFFFE, 0xFFFF], -2),
        ("uint32", "big", "big", [0x0001, 0x0000], 65536),
        ("int16", "big", "big", [0xFF85], -123),
        ("int16", "big", "little", [0x85FF], -123),
        ("uint16", "big", "big", [0xFF85], 65413),
        # 1.0e100 = 0x54B249AD2594C37D
        ("float64", "big", "big", [0x54B2, 0x49AD, 0x2594, 0xC37D], 1.0e100),
        ("float64", "little", "big", [0xC37D, 0x2594, 0x49AD, 0x54B2], 1.0e100),
    ],
)
def test_decodes_known_layouts(
    dtype: str, word_order: str, byte_order: str, registers: list[int], value: float
) -> None:
    assert decode_words(reg(dtype, word_order, byte_order), registers) == value


def test_the_helper_encoder_agrees_with_the_layouts_above() -> None:
    assert words(1234.5, "float32") == [0x449A, 0x5000]
    assert words(1234.5, "float32", word_order="little") == [0x5000, 0x449A]
    assert words(1234.5, "float32", byte_order="little") == [0x9A44, 0x0050]


# --- config errors -------------------------------------------------------------------------------

TCP = {"transport": "tcp", "host": "127.0.0.1"}


@pytest.mark.parametrize(
    ("params", "key"),
    [
        (
            {**TCP, "registers": regs({"address": 0}, {"address": 1}, {"address": 2, "type": "flaot32"})},
            "registers[2].type",
        ),
        ({**TCP, "registers": regs({"address": -1})}, "registers[0].address"),
        ({**TCP, "registers": regs({"address": 65535, "type": "int32"})}, "registers[0].address"),
        ({**TCP, "registers": regs({})}, "registers[0].address"),
        ({**TCP, "registers": regs({"address": 0, "function": "holdings"})}, "registers[0].function"),
        (
            {**TCP, "registers": regs({"address": 0, "function": "coil", "type": "int16"})},
            "registers[0].type",
        ),
        ({**TCP, "registers": regs({"address": 0, "scale": "x10"})}, "registers[0].scale"),
        ({**TCP, "registers": regs({"address": 0, "offset": math.nan})}, "registers[0].offset"),
        ({**TCP, "registers": regs({"address": 0, "word_order": "middle"})}, "registers[0].word_order"),
        ({**TCP, "registers": regs({"address": 0, "adress": 1})}, "registers[0].adress"),
        ({**TCP, "registers": [{"address": 0}]}, "registers[0].metric"),
        (
            {**TCP, "registers": [{"address": 0, "metric": "a"}, {"address": 1, "metric": "a"}]},
            "registers[1].metric",
        ),
        ({**TCP, "registers": []}, "registers"),
        ({**TCP, "registers": regs({"address": 0}), "byte_order": "native"}, "byte_order"),
        ({"host": "h", "registers": regs({"address": 0})}, "transport"),
        ({"transport": "tcp", "registers": regs({"address": 0})}, "host"),
        ({**TCP, "port": 0, "registers": regs({"address": 0})}, "port"),
        ({**TCP, "baudrate": 9600, "registers": regs({"address": 0})}, "baudrate"),
        ({**TCP, "unit_id": 256, "registers": regs({"address": 0})}, "unit_id"),
        (
            {"transport": "rtu", "port": "/dev/ttyUSB0", "unit_id": 0, "registers": regs({"address": 0})},
            "unit_id",
        ),
        ({**TCP, "timeout_s": 0, "registers": regs({"address": 0})}, "timeout_s"),
        ({"transport": "rtu", "registers": regs({"address": 0})}, "port"),
        (
            {"transport": "rtu", "port": "/dev/ttyUSB0", "parity": "X", "registers": regs({"address": 0})},
            "parity",
        ),
        (
            {"transport": "rtu", "port": "/dev/ttyUSB0", "host": "h", "registers": regs({"address": 0})},
            "host",
        ),
    ],
)
def test_a_bad_register_map_is_a_config_error_naming_the_key(params: dict[str, Any], key: str) -> None:
    with pytest.raises(DriverConfigError, match=re.escape(f"'{key}'")):
        create_driver("modbus", params)


# --- a real server over TCP ----------------------------------------------------------------------

DEVICE = RegisterMap(
    holding={
        0: [*words(1234.5, "float32"), *words(-98.25, "float32", word_order="little")],
        4: words(-70000, "int32"),
        6: [2315, 0xFF85],  # 231.5 V as tenths; -123 as int16
        8: words(4_000_000_000, "uint32", word_order="little"),
    },
    input={20: words(49.98, "float64", byte_order="little")},
    coils={0: [True, False, True]},
    discrete={7: [True]},
)
MAP = [
    {"address": 0, "type": "float32", "metric": "power", "unit": "W"},
    {"address": 2, "type": "float32", "word_order": "little", "metric": "reactive", "unit": "var"},
    {"address": 4, "type": "int32", "metric": "energy", "unit": "Wh", "scale": 0.001},
    {"address": 6, "type": "uint16", "metric": "voltage", "unit": "V", "scale": 0.1},
    {"address": 7, "type": "int16", "metric": "temperature", "unit": "C", "scale": 0.5, "offset": 40},
    {"address": 8, "type": "uint32", "word_order": "little", "metric": "hours"},
    {
        "address": 20,
        "function": "input",
        "type": "float64",
        "byte_order": "little",
        "metric": "freq",
        "unit": "Hz",
    },
    {"address": 0, "function": "coil", "metric": "relay1"},
    {"address": 1, "function": "coil", "metric": "relay2"},
    {"address": 2, "function": "coil", "metric": "relay3"},
    {"address": 7, "function": "discrete", "metric": "door"},
]
EXPECTED = {
    "power": (1234.5, "W"),
    "reactive": (-98.25, "var"),
    "energy": (-70.0, "Wh"),
    "voltage": (231.5, "V"),
    "temperature": (-21.5, "C"),
    "hours": (4_000_000_000.0, ""),
    "freq": (49.98, "Hz"),
    "relay1": (1.0, ""),
    "relay2": (0.0, ""),
    "relay3": (1.0, ""),
    "door": (1.0, ""),
}


@pytest.fixture
def server() -> Any:
    with ModbusServer(DEVICE) as srv:
        yield srv


def tcp_driver(port: int, registers: list[dict[str, Any]], **extra: Any) -> ModbusDriver:
    driver = create_driver(
        "modbus", {**TCP, "port": port, "unit_id": 1, "timeout_s": 0.5, "registers": registers, **extra}
    )
    assert isinstance(driver, ModbusDriver)
    return driver


def as_dict(measurements: list[Measurement]) -> dict[str, tuple[float, str]]:
    return {m.metric: (m.value, m.unit) for m in measurements}


def test_reads_known_values_in_every_layout_with_one_request_per_block(server: ModbusServer) -> None:
    driver = tcp_driver(server.port, MAP)
    try:
        assert [b.describe() for b in driver.blocks] == [
            "holding 0-9",
            "input 20-23",
            "coil 0-2",
            "discrete 7-7",
        ]
        for n in (1, 2):
            got = driver.read()
            assert [m.metric for m in got] == [r["metric"] for r in MAP]  # config order
            values = as_dict(got)
            assert values.keys() == EXPECTED.keys()
            for metric, (value, unit) in EXPECTED.items():
                assert values[metric][0] == pytest.approx(value, rel=1e-12), metric
                assert values[metric][1] == unit
            assert server.requests == 4 * n  # the server saw one request per planned block
    finally:
        driver.close()


def test_describe_last_read_shows_raw_words_before_and_after_scaling(server: ModbusServer) -> None:
    driver = tcp_driver(server.port, MAP)
    try:
        assert driver.describe_last_read() == []
        driver.read()
        lines = driver.describe_last_read()
    finally:
        driver.close()
    assert lines[3] == "voltage: holding 6 uint16 raw [0x090b] = 2315 -> x 0.1 + 0 = 231.5 V"
    assert lines[4] == "temperature: holding 7 int16 raw [0xff85] = -123 -> x 0.5 + 40 = -21.5 C"
    assert lines[7] == "relay1: coil 0 bool raw [1] = 1 -> x 1 + 0 = 1"


def test_exception_code_2_fails_the_read_and_the_next_read_recovers(server: ModbusServer) -> None:
    bad = tcp_driver(server.port, [{"address": 8, "metric": "ok"}, {"address": 100, "metric": "missing"}])
    good = tcp_driver(server.port, MAP[:1])
    try:
        for _ in range(2):
            with pytest.raises(
                SensorReadError, match=r"holding 100-100: exception response, code 2 \(illegal data address\)"
            ):
                bad.read()
        # The same unit answers a valid map right after, over its own connection.
        assert as_dict(good.read()) == {"power": (1234.5, "W")}
    finally:
        bad.close()
        good.close()


def test_a_unit_that_never_answers_is_a_timeout_not_a_hang() -> None:
    with SilentTcpServer() as silent:
        driver = tcp_driver(silent.port, MAP[:2], timeout_s=0.3)
        try:
            for _ in range(2):
                with pytest.raises(SensorReadError, match=r"modbus tcp 127\.0\.0\.1:\d+ unit 1: holding 0-3"):
                    driver.read()
        finally:
            driver.close()


def test_a_device_that_restarts_is_read_again_after_failed_reads() -> None:
    first = ModbusServer(DEVICE).start()
    driver = tcp_driver(first.port, MAP[:1])
    try:
        assert as_dict(driver.read()) == {"power": (1234.5, "W")}
        first.stop()
        for _ in range(2):
            with pytest.raises(SensorReadError):
                driver.read()
        with ModbusServer(DEVICE, port=first.port):
            assert as_dict(driver.read()) == {"power": (1234.5, "W")}
    finally:
        driver.close()


def test_no_server_is_a_read_error_naming_the_target() -> None:
    driver = tcp_driver(free_port(), MAP[:1])
    with pytest.raises(SensorReadError, match="cannot connect"):
        driver.read()
    driver.close()


def test_nan_in_a_register_fails_the_read() -> None:
    nan = list(struct.unpack(">HH", struct.pack(">f", math.nan)))
    with ModbusServer(RegisterMap(holding={0: nan})) as srv:
        driver = tcp_driver(srv.port, [{"address": 0, "type": "float32", "metric": "x"}])
        with pytest.raises(SensorReadError, match="x at holding 0 is nan"):
            driver.read()
        driver.close()


# --- RTU over a serial line ----------------------------------------------------------------------


def rtu_driver(port: str, registers: list[dict[str, Any]], **extra: Any) -> ModbusDriver:
    driver = create_driver(
        "modbus",
        {"transport": "rtu", "port": port, "baudrate": 19200, "unit_id": 1, "timeout_s": 0.5,
         "registers": registers, **extra},
    )  # fmt: skip
    assert isinstance(driver, ModbusDriver)
    return driver


def test_rtu_over_a_pseudo_terminal_pair(tmp_path: Path) -> None:
    with PtyPair(tmp_path) as pty, ModbusServer(DEVICE, serial_port=pty.a, baudrate=19200) as srv:
        driver = rtu_driver(pty.b, MAP)
        try:
            for n in (1, 2):
                values = as_dict(driver.read())
                for metric, (value, _unit) in EXPECTED.items():
                    assert values[metric][0] == pytest.approx(value, rel=1e-12), metric
                assert srv.requests == 4 * n
        finally:
            driver.close()


def crc16(frame: bytes) -> int:
    """Modbus RTU CRC (poly 0xA001, init 0xFFFF), sent low byte first."""
    crc = 0xFFFF
    for byte in frame:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def test_a_reply_with_a_bad_crc_fails_the_read(tmp_path: Path) -> None:
    """A unit on the line that answers with the right frame: first with a corrupted CRC, then
    with the correct one (so the failure was the CRC alone, and the driver recovers)."""
    with PtyPair(tmp_path) as pty:
        stop = threading.Event()
        corrupt = threading.Event()
        corrupt.set()
        answered: list[bytes] = []

        ready = threading.Event()

        def responder() -> None:
            import serial

            with serial.Serial(pty.a, 19200, timeout=0.05) as line:
                ready.set()
                pending = b""
                while not stop.is_set():
                    pending += line.read(8 - len(pending))
                    if len(pending) < 8:
                        continue
                    request, pending = pending, b""
                    answered.append(request)
                    body = bytes([request[0], 0x03, 4, 0x44, 0x9A, 0x50, 0x00])  # 1234.5
                    crc = crc16(body) ^ (0x5A5A if corrupt.is_set() else 0)
                    line.write(body + crc.to_bytes(2, "little"))

        thread = threading.Thread(target=responder, daemon=True)
        thread.start()
        assert ready.wait(5)
        driver = rtu_driver(pty.b, [{"address": 0, "type": "float32", "metric": "power"}])
        try:
            with pytest.raises(SensorReadError, match="holding 0-1"):
                driver.read()
            assert answered, "the request never reached the line"
            assert crc16(answered[0][:6]) == int.from_bytes(answered[0][6:], "little")
            corrupt.clear()
            assert as_dict(driver.read()) == {"power": (1234.5, "")}
        finally:
            driver.close()
            stop.set()
            thread.join(5)


# --- `edgewatch agent sample` --------------------------------------------------------------------


def agent_toml(tmp: Path, sensor_params: str) -> Path:
    config = tmp / "agent.toml"
    config.write_text(
        f'[device]\nid = "plant-1"\n[broker]\nurl = "mqtt://127.0.0.1:9"\n'
        f'[outbox]\npath = "{tmp / "outbox.db"}"\n'
        f'[[sensors]]\nname = "meter"\ndriver = "modbus"\ninterval_s = 10\n[sensors.params]\n{sensor_params}'
    )
    return config


def sample(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgewatch", "agent", "sample", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_agent_sample_shows_register_words_before_and_after_scaling(
    tmp_path: Path, server: ModbusServer
) -> None:
    config = agent_toml(
        tmp_path,
        f'transport = "tcp"\nhost = "127.0.0.1"\nport = {server.port}\nregisters = [\n'
        '  { address = 2, type = "float32", word_order = "little", metric = "reactive", unit = "var" },\n'
        '  { address = 6, scale = 0.1, metric = "voltage", unit = "V" },\n]\n',
    )
    result = sample(config)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "meter (modbus): reactive = -98.25 var",
        "meter (modbus): voltage = 231.5 V",
        "    reactive: holding 2 float32 raw [0x8000 0xc2c4] = -98.25 -> x 1 + 0 = -98.25 var",
        "    voltage: holding 6 uint16 raw [0x090b] = 2315 -> x 0.1 + 0 = 231.5 V",
    ]


def test_a_bad_register_map_stops_the_agent_naming_the_key(tmp_path: Path) -> None:
    config = agent_toml(
        tmp_path,
        'transport = "tcp"\nhost = "127.0.0.1"\nregisters = [\n'
        '  { address = 0, metric = "a" },\n  { address = 1, type = "float", metric = "b" },\n]\n',
    )
    result = sample(config)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: {config}: sensors[0] (meter): modbus: param 'registers[1].type' must be one of "
        "'int16', 'uint16', 'int32', 'uint32', 'float32', 'float64', got 'float'"
    )


def test_sensors_on_one_serial_line_take_turns(tmp_path: Path) -> None:
    """Two meters on one RS-485 line, read by two sensors from two threads at once: each gets its
    own unit's values every time (one client per line, one request on the wire at a time)."""
    second = RegisterMap(holding={0: [*words(-5.5, "float32"), 7]})
    with PtyPair(tmp_path) as pty, ModbusServer(DEVICE, serial_port=pty.a, more_units={2: second}):
        one = rtu_driver(pty.b, MAP[:1])
        two = rtu_driver(
            pty.b,
            [{"address": 0, "type": "float32", "metric": "power"}, {"address": 2, "metric": "n"}],
            unit_id=2,
        )
        got: dict[str, list[dict[str, tuple[float, str]]]] = {"one": [], "two": []}
        errors: list[BaseException] = []

        def reader(name: str, driver: ModbusDriver) -> None:
            try:
                for _ in range(25):
                    got[name].append(as_dict(driver.read()))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=reader, args=a) for a in (("one", one), ("two", two))]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
        finally:
            one.close()
            two.close()
    assert errors == []
    assert got["one"] == [{"power": (1234.5, "W")}] * 25
    assert got["two"] == [{"power": (-5.5, ""), "n": (7.0, "")}] * 25


def test_one_line_has_one_set_of_line_settings() -> None:
    first = rtu_driver("/dev/ttyEW0", MAP[:1])
    try:
        with pytest.raises(
            DriverConfigError, match=r"'port' is already read by another sensor as rtu /dev/ttyEW0 19200 8N1"
        ):
            rtu_driver("/dev/ttyEW0", MAP[:1], baudrate=9600)
        rtu_driver("/dev/ttyEW0", MAP[:1], unit_id=2).close()  # same settings, another unit: fine
    finally:
        first.close()
    rtu_driver("/dev/ttyEW0", MAP[:1], baudrate=9600).close()  # the line is free again

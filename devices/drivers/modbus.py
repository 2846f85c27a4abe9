"""Modbus TCP and RTU devices (pymodbus, the `modbus` extra): energy meters, PLCs, VFDs.

The register map is validated when the driver is built, so a typo fails at start-up naming its
key (`registers[2].type`). Registers are then planned into as few requests as the protocol
allows (`plan_reads`: one request per run of adjacent addresses of one function, at most 125
registers or 2000 bits each), and each read sends those requests in order.

A read is all or nothing: a timeout, an exception response (e.g. code 2, illegal data address)
or a frame that fails its CRC fails the whole read with a SensorReadError naming the request, so
the agent retries and counts it like any sensor failure. A sensor never returns some metrics and
silently drops others; give registers that fail independently their own sensors. After a failed
read the connection is closed and opened afresh on the next one, so a reply that arrives late
can never be taken for the answer to a later request. Sensors on one serial port (several units
on an RS-485 line) share one client and take turns, one read at a time.

Values: `raw * scale + offset`, where raw is the register content decoded as `type` (int16,
uint16, int32, uint32, float32, float64) with `word_order` (which register holds the most
significant word) and `byte_order` (within each register; "big" is the Modbus standard). Coils
and discrete inputs read as 0 or 1. NaN or infinite results fail the read.

pymodbus is imported only when the first read connects; building and planning need none of it.
"""

from __future__ import annotations

import importlib.util
import math
import struct
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

from devices.drivers.base import reject_unknown_params
from devices.errors import DriverConfigError, SensorReadError
from devices.model import Measurement
from devices.wire import MAX_NAME_LEN

if TYPE_CHECKING:
    from pymodbus.client import ModbusSerialClient, ModbusTcpClient

DRIVER: Final = "modbus"
COMMON_PARAMS: Final = frozenset(
    {"transport", "unit_id", "timeout_s", "registers", "word_order", "byte_order", "max_gap"}
)
TCP_PARAMS: Final = frozenset({"host", "port"})
RTU_PARAMS: Final = frozenset({"port", "baudrate", "parity", "stopbits", "bytesize"})
REGISTER_KEYS: Final = frozenset(
    {"address", "function", "type", "word_order", "byte_order", "scale", "offset", "metric", "unit"}
)

Function = Literal["holding", "input", "coil", "discrete"]
FUNCTIONS: Final[tuple[Function, ...]] = ("holding", "input", "coil", "discrete")
BIT_FUNCTIONS: Final = frozenset({"coil", "discrete"})
# Modbus application protocol v1.1b3, sections 6.1-6.4: the most one request may ask for.
MAX_REGISTERS_PER_REQUEST: Final = 125
MAX_BITS_PER_REQUEST: Final = 2000
MAX_ADDRESS: Final = 0xFFFF
# type -> (struct code, registers)
TYPES: Final[dict[str, tuple[str, int]]] = {
    "int16": ("h", 1),
    "uint16": ("H", 1),
    "int32": ("i", 2),
    "uint32": ("I", 2),
    "float32": ("f", 2),
    "float64": ("d", 4),
}
BIT_TYPE: Final = "bool"
ORDERS: Final = ("big", "little")
PARITIES: Final = ("N", "E", "O")
DEFAULT_TCP_PORT: Final = 502
DEFAULT_TIMEOUT_S: Final = 1.0


@dataclass(frozen=True, slots=True)
class Register:
    """One value in the device's register map, validated."""

    address: int
    function: Function
    type: str
    word_order: str
    byte_order: str
    scale: float
    offset: float
    metric: str
    unit: str
    width: int = 1  # registers (or bits) this value occupies: 1, 2 or 4

    @property
    def end(self) -> int:
        return self.address + self.width


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One request: `count` registers or bits of `function` from `address`."""

    function: Function
    address: int
    count: int
    registers: tuple[Register, ...]

    def describe(self) -> str:
        return f"{self.function} {self.address}-{self.address + self.count - 1}"


@dataclass(frozen=True, slots=True)
class DecodedValue:
    """What one register gave: the words (or bit) as read, and the value after scaling."""

    register: Register
    raw: tuple[int, ...]
    decoded: float
    value: float


# --- the register map ------------------------------------------------------------------------


def _fail(key: str, problem: str, value: Any) -> DriverConfigError:
    return DriverConfigError(f"{DRIVER}: param {key!r} {problem}, got {value!r}")


def _int(params: Mapping[str, Any], key: str, default: int | None, low: int, high: int, *, where: str) -> int:
    value = params.get(key, default)
    if value is None:
        raise DriverConfigError(f"{DRIVER}: param {where!r} is required")
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _fail(where, f"must be an integer from {low} to {high}", value)
    return value


def _number(params: Mapping[str, Any], key: str, default: float, where: str) -> float:
    value = params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _fail(where, "must be a finite number", value)
    return float(value)


def _choice(params: Mapping[str, Any], key: str, default: str, choices: Sequence[str], where: str) -> str:
    value = params.get(key, default)
    if value not in choices:
        raise _fail(where, f"must be one of {', '.join(map(repr, choices))}", value)
    return str(value)


def _name(params: Mapping[str, Any], key: str, *, required: bool, where: str) -> str:
    value = params.get(key, None if required else "")
    if value is None:
        raise DriverConfigError(f"{DRIVER}: param {where!r} is required")
    if not isinstance(value, str) or len(value) > MAX_NAME_LEN or (required and not value):
        raise _fail(
            where,
            f"must be a {'non-empty ' if required else ''}string of at most {MAX_NAME_LEN} characters",
            value,
        )
    return value


def parse_registers(params: Mapping[str, Any]) -> tuple[Register, ...]:
    """The `registers` list of a sensor's params, each entry checked; errors name the key."""
    entries = params.get("registers")
    if not isinstance(entries, list | tuple) or not entries:
        raise _fail("registers", "must be a non-empty list of tables", entries)
    word_default = _choice(params, "word_order", "big", ORDERS, "word_order")
    byte_default = _choice(params, "byte_order", "big", ORDERS, "byte_order")
    out: list[Register] = []
    metrics: set[str] = set()
    for i, entry in enumerate(entries):
        at = f"registers[{i}]"
        if not isinstance(entry, Mapping):
            raise _fail(at, "must be a table", entry)
        unknown = sorted(set(entry) - REGISTER_KEYS)
        if unknown:
            raise DriverConfigError(
                f"{DRIVER}: param {at + '.' + unknown[0]!r} is not a register key; "
                f"valid keys: {', '.join(sorted(REGISTER_KEYS))}"
            )
        function: Function = _choice(entry, "function", "holding", FUNCTIONS, f"{at}.function")  # type: ignore[assignment]
        if function in BIT_FUNCTIONS:
            dtype = _choice(entry, "type", BIT_TYPE, (BIT_TYPE,), f"{at}.type")
        else:
            dtype = _choice(entry, "type", "uint16", tuple(TYPES), f"{at}.type")
        register = Register(
            address=_int(entry, "address", None, 0, MAX_ADDRESS, where=f"{at}.address"),
            function=function,
            type=dtype,
            word_order=_choice(entry, "word_order", word_default, ORDERS, f"{at}.word_order"),
            byte_order=_choice(entry, "byte_order", byte_default, ORDERS, f"{at}.byte_order"),
            scale=_number(entry, "scale", 1.0, f"{at}.scale"),
            offset=_number(entry, "offset", 0.0, f"{at}.offset"),
            metric=_name(entry, "metric", required=True, where=f"{at}.metric"),
            unit=_name(entry, "unit", required=False, where=f"{at}.unit"),
            width=1 if function in BIT_FUNCTIONS else TYPES[dtype][1],
        )
        if register.end - 1 > MAX_ADDRESS:
            raise _fail(
                f"{at}.address",
                f"leaves no room for a {dtype} ({register.width} registers)",
                register.address,
            )
        if register.metric in metrics:
            raise _fail(f"{at}.metric", "names a metric an earlier register already gives", register.metric)
        metrics.add(register.metric)
        out.append(register)
    return tuple(out)


def plan_reads(registers: Sequence[Register], *, max_gap: int = 0) -> list[ReadBlock]:
    """The fewest requests that read every register: per function, runs of addresses that touch
    or overlap (or lie at most `max_gap` apart), each within the protocol's per-request limit.

    Blocks come out sorted by function (in FUNCTIONS order) and address; registers within a
    block by address, in their config order when two share one.
    """
    blocks: list[ReadBlock] = []
    for function in FUNCTIONS:
        limit = MAX_BITS_PER_REQUEST if function in BIT_FUNCTIONS else MAX_REGISTERS_PER_REQUEST
        members = sorted((r for r in registers if r.function == function), key=lambda r: r.address)
        start = end = 0
        group: list[Register] = []
        for register in members:
            if group and register.address - end <= max_gap and max(end, register.end) - start <= limit:
                group.append(register)
                end = max(end, register.end)
                continue
            if group:
                blocks.append(ReadBlock(function, start, end - start, tuple(group)))
            group, start, end = [register], register.address, register.end
        if group:
            blocks.append(ReadBlock(function, start, end - start, tuple(group)))
    return blocks


def decode_words(register: Register, words: Sequence[int]) -> float:
    """A register's words (16-bit ints as Modbus returns them) as the number they encode."""
    code, width = TYPES[register.type]
    if len(words) != width:
        raise ValueError(f"{register.type} needs {width} registers, got {len(words)}")
    ordered = words if register.word_order == "big" else words[::-1]
    data = struct.pack(f"{'>' if register.byte_order == 'big' else '<'}{width}H", *ordered)
    value: float = struct.unpack(f">{code}", data)[0]
    return float(value)


def decode_block(block: ReadBlock, words_or_bits: Sequence[int]) -> list[DecodedValue]:
    """Every register of a block, from what its request returned (bits as 0/1)."""
    if len(words_or_bits) < block.count:
        raise SensorReadError(
            f"{DRIVER}: {block.describe()}: got {len(words_or_bits)} values, asked for {block.count}"
        )
    out = []
    for register in block.registers:
        first = register.address - block.address
        raw = tuple(words_or_bits[first : first + register.width])
        decoded = float(raw[0]) if block.function in BIT_FUNCTIONS else decode_words(register, raw)
        value = decoded * register.scale + register.offset
        if not math.isfinite(value):
            raise SensorReadError(
                f"{DRIVER}: {register.metric} at {register.function} {register.address} is {value}"
            )
        out.append(DecodedValue(register, raw, decoded, value))
    return out


# --- the connection --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TcpTarget:
    host: str
    port: int

    def describe(self) -> str:
        return f"tcp {self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class RtuTarget:
    port: str
    baudrate: int
    parity: str
    stopbits: int
    bytesize: int

    def describe(self) -> str:
        return f"rtu {self.port} {self.baudrate} {self.bytesize}{self.parity}{self.stopbits}"


def parse_target(params: Mapping[str, Any]) -> TcpTarget | RtuTarget:
    transport = params.get("transport")
    if transport == "tcp":
        reject_unknown_params(DRIVER, params, COMMON_PARAMS | TCP_PARAMS)
        host = params.get("host")
        if not isinstance(host, str) or not host:
            raise _fail("host", "must be a host name or address", host)
        return TcpTarget(host, _int(params, "port", DEFAULT_TCP_PORT, 1, 65535, where="port"))
    if transport == "rtu":
        reject_unknown_params(DRIVER, params, COMMON_PARAMS | RTU_PARAMS)
        port = params.get("port")
        if not isinstance(port, str) or not port:
            raise _fail("port", "must be a serial device path (e.g. /dev/ttyUSB0) for transport 'rtu'", port)
        return RtuTarget(
            port=port,
            baudrate=_int(params, "baudrate", 9600, 300, 4_000_000, where="baudrate"),
            parity=_choice(params, "parity", "N", PARITIES, "parity"),
            stopbits=_int(params, "stopbits", 1, 1, 2, where="stopbits"),
            bytesize=_int(params, "bytesize", 8, 7, 8, where="bytesize"),
        )
    raise _fail("transport", "must be 'tcp' or 'rtu'", transport)


def require_modules(target: TcpTarget | RtuTarget) -> None:
    """A missing extra fails at start-up, not at every read (found without importing it)."""
    needed = ["pymodbus"] if isinstance(target, TcpTarget) else ["pymodbus", "serial"]
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing:
        raise DriverConfigError(
            f"{DRIVER}: {', '.join(missing)} not installed; install the 'edgewatch[modbus]' extra"
        )


EXCEPTION_NAMES: Final = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    6: "server device busy",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


@dataclass(eq=False, slots=True)
class Connection:
    """A client and the lock that makes its users take turns. A TCP sensor has its own; every
    sensor on one serial port shares one, since an RS-485 line carries one request at a time
    and two clients on one tty would read each other's replies."""

    settings: tuple[object, ...]
    lock: threading.Lock = field(default_factory=threading.Lock)
    client: ModbusTcpClient | ModbusSerialClient | None = None
    users: int = 0

    def reset(self) -> None:
        """Drop the client (the caller holds the lock); the next read connects afresh."""
        client, self.client = self.client, None
        if client is not None:
            client.close()  # type: ignore[no-untyped-call]


_SERIAL_LINES: dict[str, Connection] = {}
_SERIAL_LINES_LOCK = threading.Lock()


def share_serial_line(target: RtuTarget, timeout_s: float) -> Connection:
    """The connection of `target.port`, shared with the other sensors on it; their line
    settings must agree (one line has one baud rate)."""
    settings = (target, timeout_s)
    with _SERIAL_LINES_LOCK:
        line = _SERIAL_LINES.get(target.port)
        if line is None:
            line = _SERIAL_LINES[target.port] = Connection(settings)
        elif line.settings != settings:
            other, other_timeout = line.settings
            assert isinstance(other, RtuTarget)
            raise _fail(
                "port",
                f"is already read by another sensor as {other.describe()} with timeout_s {other_timeout}; "
                "sensors on one line must use the same line settings",
                target.port,
            )
        line.users += 1
        return line


def release_serial_line(line: Connection, port: str) -> None:
    with _SERIAL_LINES_LOCK:
        line.users -= 1
        if line.users > 0:
            return
        if _SERIAL_LINES.get(port) is line:
            del _SERIAL_LINES[port]
    with line.lock:
        line.reset()


class ModbusDriver:
    """One Modbus unit (slave) over TCP or an RTU serial line, read block by block."""

    def __init__(self, params: Mapping[str, Any]) -> None:
        self.target = parse_target(params)
        require_modules(self.target)
        # On a serial line 0 is broadcast (nobody answers a read) and 248-255 are reserved.
        highest = 255 if isinstance(self.target, TcpTarget) else 247
        self.unit_id = _int(params, "unit_id", 1, 0 if highest == 255 else 1, highest, where="unit_id")
        timeout = _number(params, "timeout_s", DEFAULT_TIMEOUT_S, "timeout_s")
        if timeout <= 0:
            raise _fail("timeout_s", "must be a positive number of seconds", timeout)
        self.timeout_s = timeout
        max_gap = _int(params, "max_gap", 0, 0, MAX_REGISTERS_PER_REQUEST, where="max_gap")
        self.registers = parse_registers(params)
        self.blocks = plan_reads(self.registers, max_gap=max_gap)
        self.last_read: tuple[DecodedValue, ...] = ()
        # Last, so that a param error above leaves no share of a line behind.
        if isinstance(self.target, RtuTarget):
            self._connection = share_serial_line(self.target, self.timeout_s)
        else:
            self._connection = Connection((self.target, self.timeout_s), users=1)
        self._attached = True

    @property
    def _where(self) -> str:
        return f"{DRIVER} {self.target.describe()} unit {self.unit_id}"

    def _connect(self) -> ModbusTcpClient | ModbusSerialClient:
        from pymodbus.client import ModbusSerialClient, ModbusTcpClient  # noqa: PLC0415

        client: ModbusTcpClient | ModbusSerialClient
        # retries=0: the agent's schedule owns retries (and counts them); pymodbus' own would
        # multiply the time a dead device holds this sensor's thread.
        if isinstance(self.target, TcpTarget):
            client = ModbusTcpClient(
                self.target.host, port=self.target.port, timeout=self.timeout_s, retries=0
            )
        else:
            client = ModbusSerialClient(
                self.target.port,
                baudrate=self.target.baudrate,
                parity=self.target.parity,
                stopbits=self.target.stopbits,
                bytesize=self.target.bytesize,
                timeout=self.timeout_s,
                retries=0,
            )
        if not client.connect():
            client.close()  # type: ignore[no-untyped-call]
            raise SensorReadError(f"{self._where}: cannot connect")
        return client

    def _request(self, client: ModbusTcpClient | ModbusSerialClient, block: ReadBlock) -> list[int]:
        from pymodbus.exceptions import ModbusException  # noqa: PLC0415

        readers = {
            "holding": client.read_holding_registers,
            "input": client.read_input_registers,
            "coil": client.read_coils,
            "discrete": client.read_discrete_inputs,
        }
        try:
            response = readers[block.function](block.address, count=block.count, device_id=self.unit_id)
        except ModbusException as exc:
            raise SensorReadError(f"{self._where}: {block.describe()}: {exc}") from exc
        if response.isError():
            code = getattr(response, "exception_code", None)
            name = EXCEPTION_NAMES.get(code, "") if isinstance(code, int) else ""
            raise SensorReadError(
                f"{self._where}: {block.describe()}: exception response, code {code}"
                + (f" ({name})" if name else "")
            )
        if block.function in BIT_FUNCTIONS:
            return [int(bit) for bit in response.bits]
        return list(response.registers)

    def _read_blocks(self) -> list[DecodedValue]:
        conn = self._connection
        with conn.lock:
            if conn.client is None:
                conn.client = self._connect()
            try:
                return [
                    d for block in self.blocks for d in decode_block(block, self._request(conn.client, block))
                ]
            except SensorReadError:
                conn.reset()
                raise
            except OSError as exc:
                conn.reset()
                raise SensorReadError(f"{self._where}: I/O error: {exc}") from exc

    def read(self) -> list[Measurement]:
        decoded = self._read_blocks()
        # Measurements in register-map order, whatever order the requests went out in.
        by_register = {id(d.register): d for d in decoded}
        self.last_read = tuple(by_register[id(r)] for r in self.registers)
        return [Measurement(d.register.metric, d.value, d.register.unit) for d in self.last_read]

    def describe_last_read(self) -> list[str]:
        """Each register of the last successful read: raw words, decoded, and after scaling."""
        lines = []
        for d in self.last_read:
            r = d.register
            raw = " ".join(f"0x{w:04x}" for w in d.raw) if r.function not in BIT_FUNCTIONS else str(d.raw[0])
            lines.append(
                f"{r.metric}: {r.function} {r.address} {r.type} raw [{raw}] = {d.decoded:g}"
                f" -> x {r.scale:g} + {r.offset:g} = {d.value:g} {r.unit}".rstrip()
            )
        return lines

    def close(self) -> None:
        if isinstance(self.target, RtuTarget) and self._attached:
            self._attached = False
            release_serial_line(self._connection, self.target.port)
            return
        with self._connection.lock:
            self._connection.reset()

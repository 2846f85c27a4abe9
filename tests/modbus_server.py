"""pymodbus' own server, owned by one test: TCP on a free loopback port or RTU on a serial port.

The server runs on its own event loop thread with a fixed register map per unit id (the four
tables kept apart as on a classic device; several units make an RS-485 line); addresses outside
the map answer exception code 2. `SilentTcpServer` accepts connections and never answers, which
is what a dead unit behind a gateway looks like. `PtyPair` links two pseudo-terminals with socat,
a null-modem cable.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymodbus.client import ModbusTcpClient
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from tests.mosquitto import free_port, wait_port

SOCAT = shutil.which("socat") or "/usr/bin/socat"
DT = ModbusTcpClient.DATATYPE


def words(value: float, dtype: str, *, word_order: str = "big", byte_order: str = "big") -> list[int]:
    """How a device lays `value` out in registers, by pymodbus' own encoder (not the driver's)."""
    regs = ModbusTcpClient.convert_to_registers(value, DT[dtype.upper()], word_order=word_order)  # type: ignore[arg-type]
    if byte_order == "little":
        regs = [((w & 0xFF) << 8) | (w >> 8) for w in regs]
    return regs


@dataclass
class RegisterMap:
    """Contents of one unit: holding and input registers by start address, coils and inputs."""

    holding: dict[int, Sequence[int]] = field(default_factory=dict)
    input: dict[int, Sequence[int]] = field(default_factory=dict)
    coils: dict[int, Sequence[bool]] = field(default_factory=dict)
    discrete: dict[int, Sequence[bool]] = field(default_factory=dict)

    def device(self, unit_id: int) -> SimDevice:
        def regs(blocks: dict[int, Sequence[int]]) -> list[SimData]:
            return [
                SimData(a, values=list(v), datatype=DataType.REGISTERS) for a, v in sorted(blocks.items())
            ]

        def bits(blocks: dict[int, Sequence[bool]]) -> list[SimData]:
            return [SimData(a, values=list(v), datatype=DataType.BITS) for a, v in sorted(blocks.items())]

        # A table SimDevice would reject empty: one unmapped-looking far register keeps it valid.
        filler = {65535: [0]}
        return SimDevice(
            id=unit_id,
            simdata=(
                bits(self.coils or {65535: [False]}),
                bits(self.discrete or {65535: [False]}),
                regs(self.holding or filler),
                regs(self.input or filler),
            ),
        )


class ModbusServer:
    """A pymodbus server on its own thread; `start()`, then `stop()`; `requests` counts PDUs."""

    def __init__(
        self,
        registers: RegisterMap,
        *,
        unit_id: int = 1,
        serial_port: str | None = None,
        baudrate: int = 19200,
        more_units: Mapping[int, RegisterMap] | None = None,
        port: int | None = None,
    ) -> None:
        self.units = {unit_id: registers, **(more_units or {})}
        self.serial_port = serial_port
        self.baudrate = baudrate
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.requests = 0
        self._loop = asyncio.new_event_loop()
        self._server: ModbusTcpServer | ModbusSerialServer | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="modbus-server")
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def _count(self, sending: bool, pdu: Any) -> Any:
        if not sending:
            self.requests += 1
        return pdu

    async def _serve(self) -> None:
        device = [registers.device(unit) for unit, registers in self.units.items()]
        if self.serial_port is None:
            self._server = ModbusTcpServer(device, address=(self.host, self.port), trace_pdu=self._count)
        else:
            self._server = ModbusSerialServer(
                device, port=self.serial_port, baudrate=self.baudrate, trace_pdu=self._count
            )
        await self._server.serve_forever(background=True)
        self._ready.set()
        await self._server.serving

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
        finally:
            self._loop.close()

    def start(self) -> ModbusServer:
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise RuntimeError(f"modbus server did not start: {self._error!r}") from self._error
        if self.serial_port is None:
            wait_port(self.port)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread.is_alive():
            future = asyncio.run_coroutine_threadsafe(self._server.shutdown(), self._loop)
            with contextlib.suppress(Exception):
                future.result(10)
        self._thread.join(10)

    def __enter__(self) -> ModbusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class SilentTcpServer:
    """Accepts Modbus TCP connections and reads requests, but never answers one."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = int(self.sock.getsockname()[1])
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._conns.append(conn)  # kept open, never read back to

    def __enter__(self) -> SilentTcpServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        for conn in self._conns:
            conn.close()
        self.sock.close()


class PtyPair:
    """Two linked pseudo-terminals (`a` and `b`) made by socat: what one writes, the other reads."""

    def __init__(self, workdir: Path) -> None:
        self.a = str(workdir / "tty-a")
        self.b = str(workdir / "tty-b")
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PtyPair:
        self.proc = subprocess.Popen(
            [SOCAT, "-d", f"pty,raw,echo=0,link={self.a}", f"pty,raw,echo=0,link={self.b}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not (Path(self.a).exists() and Path(self.b).exists()):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("socat did not create the pseudo-terminal pair")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)

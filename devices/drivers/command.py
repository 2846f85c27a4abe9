"""Any program as a sensor: run it, parse what it prints.

The command is `argv` (a list) or `command` (a string split like a POSIX shell would, but never
run by one: no pipes, globs or variables). Its stdout is either

    a number                                  -> one metric named by `metric` (default "value")
    {"metric": number, ...}                   -> one metric per key
    {"metric": {"value": number, "unit": "u"}, ...}

`unit` is the unit of a bare number and the default for JSON metrics that name none. A non-zero
exit, a timeout (`timeout_s`, default 5), output that is none of the above, or a NaN or infinite
value fails the read with the reason and the tail of stderr.

The command runs in its own session so a timeout kills everything it started; otherwise a
grandchild still holding stdout open would keep the read waiting after the kill.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import subprocess
from collections.abc import Mapping
from typing import Any, Final

from devices.drivers.base import reject_unknown_params
from devices.errors import DriverConfigError, SensorReadError
from devices.model import Measurement
from devices.wire import MAX_NAME_LEN

DRIVER: Final = "command"
PARAMS: Final = frozenset({"argv", "command", "timeout_s", "metric", "unit"})
DEFAULT_TIMEOUT_S: Final = 5.0
STDERR_TAIL: Final = 200
SHOWN_OUTPUT: Final = 80


def _argv(params: Mapping[str, Any]) -> list[str]:
    argv, command = params.get("argv"), params.get("command")
    if (argv is None) == (command is None):
        raise DriverConfigError(f"{DRIVER}: give exactly one of param 'argv' or param 'command'")
    if command is not None:
        if not isinstance(command, str):
            raise DriverConfigError(f"{DRIVER}: param 'command' must be a string, got {command!r}")
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            raise DriverConfigError(f"{DRIVER}: param 'command' cannot be split: {exc}") from exc
        if not argv:
            raise DriverConfigError(f"{DRIVER}: param 'command' is empty")
        return list(argv)
    if (
        isinstance(argv, str)
        or not isinstance(argv, list | tuple)
        or not argv
        or not all(isinstance(a, str) for a in argv)
        or not argv[0]
    ):
        raise DriverConfigError(f"{DRIVER}: param 'argv' must be a non-empty list of strings, got {argv!r}")
    return list(argv)


def _name(params: Mapping[str, Any], key: str, default: str, *, empty_ok: bool) -> str:
    value = params.get(key, default)
    if not isinstance(value, str) or len(value) > MAX_NAME_LEN or (not value and not empty_ok):
        raise DriverConfigError(
            f"{DRIVER}: param {key!r} must be a string of at most {MAX_NAME_LEN} characters"
            f"{'' if empty_ok else ' (not empty)'}, got {value!r}"
        )
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SensorReadError(f"{where} is {value!r:.{SHOWN_OUTPUT}}, not a number")
    number = float(value)
    if not math.isfinite(number):
        raise SensorReadError(f"{where} is {number}")
    return number


def _reject_constant(name: str) -> float:
    raise SensorReadError(f"output holds {name}")


def parse_output(text: str, metric: str, unit: str) -> list[Measurement]:
    """Measurements from a command's stdout; a SensorReadError says what was wrong with it."""
    text = text.strip()
    if not text:
        raise SensorReadError("no output")
    if not text.startswith("{"):
        try:
            value = float(text)
        except ValueError as exc:
            raise SensorReadError(
                f"output is neither a number nor a JSON object: {text[:SHOWN_OUTPUT]!r}"
            ) from exc
        return [Measurement(metric, _number(value, "output"), unit)]
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise SensorReadError(f"output is not valid JSON ({exc}): {text[:SHOWN_OUTPUT]!r}") from exc
    if not isinstance(obj, dict) or not obj:
        raise SensorReadError("output is an empty JSON object")
    out: list[Measurement] = []
    for name, item in obj.items():
        if not name or len(name) > MAX_NAME_LEN:
            raise SensorReadError(f"metric name {name[:SHOWN_OUTPUT]!r} is empty or too long")
        if isinstance(item, dict):
            extra = sorted(set(item) - {"value", "unit"})
            if "value" not in item or extra:
                raise SensorReadError(f'metric {name!r} must be a number or {{"value": ..., "unit": ...}}')
            item_unit = item.get("unit", unit)
            if not isinstance(item_unit, str) or len(item_unit) > MAX_NAME_LEN:
                raise SensorReadError(f"metric {name!r} has unit {item_unit!r:.{SHOWN_OUTPUT}}")
            out.append(Measurement(name, _number(item["value"], f"metric {name!r}"), item_unit))
        else:
            out.append(Measurement(name, _number(item, f"metric {name!r}"), unit))
    return out


def _tail(data: bytes) -> str:
    text = data.decode("utf-8", errors="replace").strip()
    return text[-STDERR_TAIL:]


class CommandDriver:
    """Runs `argv` (or `command`) once per read, without a shell, and parses its stdout."""

    def __init__(self, params: Mapping[str, Any]) -> None:
        reject_unknown_params(DRIVER, params, PARAMS)
        self.argv: tuple[str, ...] = tuple(_argv(params))
        timeout = params.get("timeout_s", DEFAULT_TIMEOUT_S)
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not math.isfinite(timeout)
            or timeout <= 0
        ):
            raise DriverConfigError(
                f"{DRIVER}: param 'timeout_s' must be a positive number of seconds, got {timeout!r}"
            )
        self.timeout_s = float(timeout)
        self.metric = _name(params, "metric", "value", empty_ok=False)
        self.unit = _name(params, "unit", "", empty_ok=True)

    def _run(self) -> tuple[int, bytes, bytes]:
        try:
            proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            raise SensorReadError(f"{DRIVER}: cannot run {self.argv[0]!r}: {exc}") from exc
        with proc:
            try:
                stdout, stderr = proc.communicate(timeout=self.timeout_s)
            except subprocess.TimeoutExpired as exc:
                self._kill_group(proc)
                try:
                    _, stderr = proc.communicate(timeout=1.0)
                except subprocess.TimeoutExpired:
                    stderr = b""  # something outside the group holds the pipes; stop waiting
                raise SensorReadError(
                    f"{DRIVER}: {self.argv[0]!r} timed out after {self.timeout_s:g} s"
                    + (f"; stderr: {_tail(stderr)}" if stderr.strip() else "")
                ) from exc
        return proc.returncode, stdout, stderr

    @staticmethod
    def _kill_group(proc: subprocess.Popen[bytes]) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()

    def read(self) -> list[Measurement]:
        returncode, stdout, stderr = self._run()
        if returncode != 0:
            reason = f"killed by signal {-returncode}" if returncode < 0 else f"exit status {returncode}"
            detail = _tail(stderr) or _tail(stdout)
            raise SensorReadError(
                f"{DRIVER}: {self.argv[0]!r} failed ({reason})" + (f": {detail}" if detail else "")
            )
        try:
            return parse_output(stdout.decode("utf-8", errors="replace"), self.metric, self.unit)
        except SensorReadError as exc:
            stderr_text = _tail(stderr)
            raise SensorReadError(
                f"{DRIVER}: {self.argv[0]!r}: {exc}" + (f"; stderr: {stderr_text}" if stderr_text else "")
            ) from exc

    def close(self) -> None:
        """Nothing runs between reads."""

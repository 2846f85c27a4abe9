"""The command driver runs real subprocesses (this Python) and parses their output."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import pytest

from devices.drivers import create_driver
from devices.drivers.command import CommandDriver, parse_output
from devices.errors import DriverConfigError, SensorReadError
from devices.model import Measurement

PY = sys.executable


def py(code: str, **params: object) -> CommandDriver:
    return CommandDriver({"argv": [PY, "-c", code], **params})


# --- output parsing ------------------------------------------------------------------------------


def test_a_bare_number_is_one_metric() -> None:
    assert py("print(21.5)").read() == [Measurement("value", 21.5, "")]
    assert py("print(' 7 ')", metric="queue_depth", unit="jobs").read() == [
        Measurement("queue_depth", 7.0, "jobs")
    ]
    assert py("print('-1.25e3')").read()[0].value == -1250.0


def test_a_json_object_is_one_metric_per_key() -> None:
    code = 'print(\'{"voltage": {"value": 4.98, "unit": "V"}, "current": 0.51, "ok": 1}\')'
    assert py(code, unit="A").read() == [
        Measurement("voltage", 4.98, "V"),
        Measurement("current", 0.51, "A"),  # `unit` is the default for metrics naming none
        Measurement("ok", 1.0, "A"),
    ]


def test_command_string_is_split_not_given_to_a_shell() -> None:
    driver = CommandDriver({"command": f"{shlex.quote(PY)} -c 'print(3 * 7)'"})
    assert driver.read() == [Measurement("value", 21.0, "")]
    # A shell would expand $HOME and pipe; here they are plain arguments echoed back.
    argv_echo = f"{shlex.quote(PY)} -c 'import sys; print(sys.argv[1:])'"
    echo = CommandDriver({"command": f"{argv_echo} $HOME | x"})
    with pytest.raises(SensorReadError, match=r"\$HOME', '\|', 'x'"):
        echo.read()


@pytest.mark.parametrize(
    ("stdout", "match"),
    [
        ("", "no output"),
        ("   \n", "no output"),
        ("21.5 C", "neither a number nor a JSON object: '21.5 C'"),
        ("nan", "output is nan"),
        ("-inf", "output is -inf"),
        ("[1, 2]", "neither a number"),
        ("{}", "empty JSON object"),
        ('{"a": 1', "not valid JSON"),
        ('{"a": NaN}', "NaN"),
        ('{"a": -Infinity}', "-Infinity"),
        ('{"a": 1e999}', "metric 'a' is inf"),
        ('{"a": "1.5"}', "metric 'a' is '1.5', not a number"),
        ('{"a": true}', "not a number"),
        ('{"a": null}', "not a number"),
        ('{"a": {"unit": "V"}}', "metric 'a' must be a number or"),
        ('{"a": {"value": 1, "units": "V"}}', "metric 'a' must be a number or"),
        ('{"a": {"value": 1, "unit": 5}}', "metric 'a' has unit 5"),
        ('{"": 1}', "empty or too long"),
        ('{"' + "m" * 65 + '": 1}', "empty or too long"),
    ],
)
def test_unusable_output_is_a_read_error(stdout: str, match: str) -> None:
    with pytest.raises(SensorReadError, match=match):
        parse_output(stdout, "value", "")


# --- failures of the process ---------------------------------------------------------------------


def test_non_zero_exit_carries_the_stderr_tail() -> None:
    code = "import sys; sys.stderr.write('x' * 500 + 'sensor not found'); sys.exit(3)"
    with pytest.raises(SensorReadError, match=r"exit status 3\): x+sensor not found$") as info:
        py(code).read()
    assert len(str(info.value)) < 300


def test_unparsable_output_mentions_stderr() -> None:
    code = "import sys; print('busy'); sys.stderr.write('warming up')"
    with pytest.raises(SensorReadError, match=r"'busy'.*stderr: warming up"):
        py(code).read()


def test_killed_by_a_signal() -> None:
    with pytest.raises(SensorReadError, match="killed by signal 9"):
        py("import os, signal; os.kill(os.getpid(), signal.SIGKILL)").read()


def test_missing_program_is_a_read_error() -> None:
    driver = CommandDriver({"argv": ["/nonexistent/edgewatch-probe", "--json"]})
    with pytest.raises(SensorReadError, match="cannot run '/nonexistent/edgewatch-probe'") as info:
        driver.read()
    assert isinstance(info.value.__cause__, OSError)


def _alive(pid: int) -> bool:
    """Whether `pid` is still running (a zombie waiting to be reaped counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
@pytest.mark.timeout(30)
def test_timeout_kills_the_command_and_what_it_started(tmp_path: Path) -> None:
    # The child starts a grandchild that inherits stdout; unless the whole process group is
    # killed, the grandchild keeps the pipe open and the read hangs for its full minute.
    pid_file = tmp_path / "grandchild.pid"
    grandchild = (
        f"import os, pathlib, time; pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid())); "
        "time.sleep(60)"
    )
    code = (
        "import subprocess, sys, time; "
        f"subprocess.Popen([sys.executable, '-c', {grandchild!r}]); time.sleep(60)"
    )
    with pytest.raises(SensorReadError, match=r"timed out after 0\.5 s"):
        py(code, timeout_s=0.5).read()
    pid = int(pid_file.read_text())
    for _ in range(100):
        if not _alive(pid):
            break
        time.sleep(0.02)
    assert not _alive(pid)


def test_each_read_runs_the_command_again(tmp_path: Path) -> None:
    counter = str(tmp_path / "n")
    code = (
        f"import pathlib; p = pathlib.Path({counter!r}); "
        "n = int(p.read_text()) + 1 if p.exists() else 1; p.write_text(str(n)); print(n)"
    )
    driver = create_driver("command", {"argv": [PY, "-c", code]})
    assert [driver.read()[0].value for _ in range(3)] == [1.0, 2.0, 3.0]
    driver.close()


# --- params --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({}, "argv"),
        ({"argv": ["true"], "command": "true"}, "command"),
        ({"argv": []}, "argv"),
        ({"argv": "true"}, "argv"),
        ({"argv": ["true", 3]}, "argv"),
        ({"argv": [""]}, "argv"),
        ({"command": ""}, "command"),
        ({"command": "probe 'unbalanced"}, "command"),
        ({"command": ["true"]}, "command"),
        ({"argv": ["true"], "timeout_s": 0}, "timeout_s"),
        ({"argv": ["true"], "timeout_s": -1}, "timeout_s"),
        ({"argv": ["true"], "timeout_s": "5"}, "timeout_s"),
        ({"argv": ["true"], "timeout_s": True}, "timeout_s"),
        ({"argv": ["true"], "timeout_s": float("inf")}, "timeout_s"),
        ({"argv": ["true"], "metric": ""}, "metric"),
        ({"argv": ["true"], "metric": "m" * 65}, "metric"),
        ({"argv": ["true"], "unit": 3}, "unit"),
        ({"argv": ["true"], "shell": True}, "shell"),
    ],
)
def test_bad_params_name_the_param(params: dict[str, object], param: str) -> None:
    with pytest.raises(DriverConfigError, match=f"'{param}'"):
        CommandDriver(params)


def test_defaults() -> None:
    driver = CommandDriver({"command": "probe --fast 'two words'"})
    assert driver.argv == ("probe", "--fast", "two words")
    assert (driver.timeout_s, driver.metric, driver.unit) == (5.0, "value", "")

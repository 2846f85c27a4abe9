"""`edgewatch alerts ...` and `edgewatch devices ...` against a store the real aggregator filled.

One fleet per module (the `fleet` fixture): a private mosquitto, `edgewatch cloud run` as a
subprocess with a TOML config, and a publisher that sends three devices' readings through the
broker: f-0 with a spike that opens and closes an episode and an agent status with counters,
f-1 with a seq gap and a spike at its very end (still open), f-2 that goes away with its last
will (offline, a silent alert). The aggregator keeps running while the commands read, as in
production. Assertions are on the JSON content; the tables and the plot are checked for what
an operator must see.
"""

from __future__ import annotations

import json
import math
import os
import random
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from typer.testing import CliRunner

from cloud.store.api import Store, open_store
from devices import wire
from devices.model import Status, StatusEvent
from edgewatch.app import app
from tests.conftest import STORE_BACKENDS
from tests.mosquitto import Mosquitto
from tests.test_aggregator import FakeAgent, wait_for

pytestmark = pytest.mark.broker
T = TypeVar("T")

runner = CliRunner()
N = 400  # readings per metric per device (1 s apart)
SPIKE_F0 = 300  # closes after five normal readings
SPIKE_F1 = 398  # one normal reading after it: still open
GAP_F1 = range(50, 60)  # f-1 never sends these steps: seqs 101..120
F2_STEPS = 50
COUNTERS_F0 = {
    "backlog": 3.0,
    "dropped": 2.0,
    "dropped_unconfirmed": 1.0,
    "sampled": 800.0,
    "published": 797.0,
}

# Refused messages: text with a terminal escape in it, and bytes that are not text at all.
DEAD = [
    (wire.device_topic("f-0", "telemetry"), b'{"v": "1.0", oops \x1b[31mred'),
    (wire.device_topic("f-1", "telemetry"), b"\xff\xfe\x00\x01binary"),
]


@dataclass(frozen=True)
class Fleet:
    db: str  # a SQLite path or a postgresql:// URL
    config: Path
    t0: float
    workdir: Path


def _value(rng: random.Random, metric: str, i: int, spike: int | None) -> float:
    base = 20.0 + 0.5 * math.sin(i / 15) + rng.gauss(0, 0.05)
    if metric == "load":
        return round(base / 20.0, 4)
    return base + (15.0 if i == spike else 0.0)


def _publish_device(
    agent: FakeAgent, device: str, t0: float, steps: range, *, spike: int | None, skip: range = range(0)
) -> int:
    rng = random.Random(device)
    sent = 0
    rows: list[tuple[Any, ...]] = []
    for i in steps:
        for k, metric in enumerate(("temp", "load")):
            if i not in skip:
                rows.append(
                    (
                        2 * i + k + 1,
                        t0 + i,
                        "sys",
                        metric,
                        _value(rng, metric, i, spike),
                        "C" if k == 0 else "",
                    )
                )
        if len(rows) >= 20 or (i == steps[-1] and rows):
            agent.publish(device, "e1", rows)
            sent += len(rows)
            rows = []
    return sent


def _status(
    agent: FakeAgent, device: str, event: StatusEvent, counters: dict[str, float] | None = None
) -> None:
    payload = wire.encode_status(Status(device, event, time.time(), "e1", "0.1.0", counters or {}))
    agent.publish_raw(wire.device_topic(device, "status"), payload)


def _settle(agent: FakeAgent, expected: dict[str, int]) -> None:
    """Wait until every reading is confirmed (resending the unconfirmed now and then)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if all(agent.acked_count(d, "e1") >= n for d, n in expected.items()):
            return
        agent.resend_unacked(older_than=3.0)
        time.sleep(0.1)
    raise AssertionError(f"not all readings confirmed: {agent.acked}")


def _stored(db: str, what: Callable[[Store], T]) -> T:
    with open_store(db, readonly=True) as store:
        return what(store)


@pytest.fixture(scope="module", params=STORE_BACKENDS)
def fleet(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """Once per store backend: every operator command is tested on SQLite and on PostgreSQL."""
    work = tmp_path_factory.mktemp("fleet")
    mq = Mosquitto(work / "broker")
    mq.start()
    config, log = work / "aggregator.toml", work / "aggregator.log"
    if request.param == "sqlite":
        db = str(work / "cloud.db")
    else:
        db = request.getfixturevalue("postgres_server").create_database()
    config.write_text(
        "[aggregator]\n"
        f'broker = "{mq.url}"\n'
        f'db = "{db}"\n'
        "ack_interval = 0.05\n"
        "tick_interval = 0.1\n"
        "batch_linger = 0.005\n"
        "silent_after = 3600.0\n"  # only the last will makes a device silent here
        "reconnect_base = 1.5\n"
        "reconnect_cap = 1\n"
    )
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgewatch", "cloud", "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    agent: FakeAgent | None = None
    try:
        wait_for(lambda: "connected to" in log.read_text() or proc.poll() is not None, what="aggregator up")
        assert proc.poll() is None, log.read_text()
        agent = FakeAgent(mq, "fleet-publisher")
        t0 = time.time() - N - 60
        sent = {
            "f-0": _publish_device(agent, "f-0", t0, range(N), spike=SPIKE_F0),
            "f-1": _publish_device(agent, "f-1", t0, range(N), spike=SPIKE_F1, skip=GAP_F1),
            "f-2": _publish_device(agent, "f-2", t0, range(F2_STEPS), spike=None),
        }
        _status(agent, "f-0", StatusEvent.BIRTH, COUNTERS_F0)
        _settle(agent, sent)
        for topic, payload in DEAD:
            agent.publish_raw(topic, payload)
        dead = lambda s: sum(s.dead_letter_counts().values())  # noqa: E731
        wait_for(lambda: _stored(db, dead) == len(DEAD), what="dead letters")
        _status(agent, "f-2", StatusEvent.BIRTH)
        births = lambda s: sum(d.status_event == "birth" for d in s.list_devices())  # noqa: E731
        wait_for(lambda: _stored(db, births) == 2, what="births")
        _status(agent, "f-2", StatusEvent.WILL)

        def alerts(device: str, kind: str, state: str) -> int:
            return len(_stored(db, lambda s: s.list_alerts(device=device, kind=kind, state=state)))

        wait_for(lambda: alerts("f-0", "anomaly", "closed") == 1, what="f-0 episode closed")
        wait_for(lambda: alerts("f-1", "anomaly", "open") == 1, what="f-1 episode open")
        wait_for(lambda: alerts("f-2", "silent", "open") == 1, what="f-2 silent")
        wait_for(lambda: _stored(db, lambda s: s.pending_publications()) == [], what="alerts published")
        yield Fleet(db, config, t0, work)
    finally:
        if agent is not None:
            agent.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        mq.stop(kill=True)
    assert "Traceback" not in log.read_text()


def cli(*args: str, env: dict[str, str] | None = None) -> Any:
    """Run the typer app in-process; fail with its output if it raised something unexpected."""
    result = runner.invoke(app, list(args), env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{args}: {result.exception!r}\n{result.output}") from result.exception
    return result


def cli_json(*args: str) -> Any:
    result = cli(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def alerts_by_device(fleet: Fleet) -> dict[str, dict[str, Any]]:
    return {a["device"]: a for a in cli_json("alerts", "list", "--db", str(fleet.db))}


# ---------------------------------------------------------------------------------------------
# alerts list


def test_alerts_list_json_has_every_alert_newest_first_with_unix_and_iso_times(fleet: Fleet) -> None:
    alerts = cli_json("alerts", "list", "--db", str(fleet.db))
    assert [(a["device"], a["kind"], a["state"]) for a in alerts] == [
        ("f-2", "silent", "open"),
        ("f-1", "anomaly", "open"),
        ("f-0", "anomaly", "closed"),
    ]
    with open_store(fleet.db, readonly=True) as store:
        stored = {a.device: a.alert_id for a in store.list_alerts()}
    assert {a["device"]: a["alert_id"] for a in alerts} == stored
    f0, f1 = alerts[2], alerts[1]
    assert f0["start"] == pytest.approx(fleet.t0 + SPIKE_F0)
    assert f1["start"] == pytest.approx(fleet.t0 + SPIKE_F1)
    assert (f0["sensor"], f0["metric"], f0["late"]) == ("sys", "temp", False)
    assert 33 < f0["value"] < 37 and f0["expected_low"] < 25 < f0["value"]
    assert f0["end"] >= f0["start"] and f0["closed_at"] is not None and f0["duration"] >= 0
    assert f1["end"] is None and f1["end_iso"] is None and f1["duration"] is None
    # Why, in the series' unit (the detector's own words, or the episode machine's fallback).
    for a in (f0, f1):
        assert a["evidence"] and " C" in a["evidence"] and "{unit}" not in a["evidence"], a
        assert a["why"].endswith(a["evidence"]) and a["peak_ts"] == pytest.approx(a["start"])
    assert alerts[0]["why"].startswith("its last will arrived") and alerts[0]["evidence"] == ""
    for a in alerts:
        for field in ("start", "opened_at"):
            parsed = time.mktime(time.strptime(a[f"{field}_iso"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
            assert abs(parsed - a[field]) < 1.0, (field, a)
        assert {"alert_id", "severity", "peak_score", "detector", "msg_id", "acked_at", "note"} <= a.keys()


def test_alerts_list_filters(fleet: Fleet) -> None:
    db = ("--db", str(fleet.db))

    def devices(*args: str) -> list[str]:
        return [a["device"] for a in cli_json("alerts", "list", *db, *args)]

    assert devices("--open") == ["f-2", "f-1"]
    assert devices("--device", "f-0") == ["f-0"]
    assert devices("--metric", "temp") == ["f-1", "f-0"]
    assert devices("--metric", "pressure") == []
    assert devices("--kind", "silent") == ["f-2"]
    severity = alerts_by_device(fleet)["f-0"]["severity"]
    assert "f-0" in devices("--severity", severity)
    assert devices("--severity", "no-such-severity") == []
    # --since keeps what was active since then: the open ones, and f-0 only if it ended after.
    assert devices("--since", "10s") == ["f-2", "f-1"]
    start_f0 = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(fleet.t0 + SPIKE_F0 - 5))
    assert devices("--since", start_f0) == ["f-2", "f-1", "f-0"]
    assert devices("--limit", "1") == ["f-2"]


def test_alerts_list_table_marks_open_alerts(fleet: Fleet) -> None:
    result = cli("alerts", "list", "--db", str(fleet.db), env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    alerts = alerts_by_device(fleet)
    for device, alert in alerts.items():
        assert device in result.stdout and alert["alert_id"][:12] in result.stdout
    assert result.stdout.count("OPEN") == 2 and "closed" in result.stdout
    assert "3 alerts" in result.stdout
    assert "why" in result.stdout and "its last will arrived" in result.stdout


def test_bad_since_is_a_usage_error(fleet: Fleet) -> None:
    result = cli("alerts", "list", "--db", str(fleet.db), "--since", "yesterday-ish")
    assert result.exit_code == 2
    assert "neither a duration" in result.output


# ---------------------------------------------------------------------------------------------
# alerts show


def test_alerts_show_plots_the_window_and_expected_range_and_writes_a_png(
    fleet: Fleet, tmp_path: Path
) -> None:
    from cloud.ops import views

    alert = alerts_by_device(fleet)["f-0"]
    image = tmp_path / "alert.png"
    result = cli(
        "alerts", "show", alert["alert_id"][:8], "--db", str(fleet.db), "--png", str(image), "--width", "120"
    )
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert alert["alert_id"] in out and "closed" in out and "f-0" in out
    assert views.WINDOW_LABEL in out and views.EXPECTED_LABEL in out
    assert f"{alert['expected_low']:.4g}..{alert['expected_high']:.4g}" in out
    assert "\x1b[" not in out  # not a terminal: plain text
    # The window's vertical lines cross the frame (┬ on top, ┴ or ┼ below) at x = 0 on the
    # axis, the alert's start; the expected range's horizontal lines cross the left border.
    lines = out.splitlines()
    top = next(line for line in lines if line.lstrip().startswith("┌") and line.rstrip().endswith("┐"))
    i_bottom = next(
        i for i, line in enumerate(lines) if line.lstrip().startswith("└") and line.rstrip().endswith("┘")
    )
    bottom, labels = lines[i_bottom], [float(v) for v in lines[i_bottom + 1].split()]
    window = [c for c, ch in enumerate(top) if ch == "┬"]
    ticks = [c for c, ch in enumerate(bottom) if ch in "┬┼"]
    assert window and all(bottom[c] in "┴┼" for c in window), out
    assert len(ticks) == len(labels) >= 2, out
    per_col = (labels[-1] - labels[0]) / (ticks[-1] - ticks[0])
    for c in window:
        assert abs(labels[0] + (c - ticks[0]) * per_col) <= 1.5 * abs(per_col), (c, out)
    border = top.index("┌")
    assert any(line[border : border + 1] in ("├", "┼") for line in lines[lines.index(top) + 1 : i_bottom]), (
        out
    )
    # The reason, whole, in the details.
    assert alert["why"] and alert["evidence"] in " ".join(out.split())
    # PNG: valid, decoded by matplotlib's own reader, at the default size.
    from matplotlib import image as mpimg

    pixels = mpimg.imread(image, format="png")
    assert pixels.shape[:2] == (600, 1200) and image.stat().st_size > 20_000
    sized = tmp_path / "small.png"
    result = cli(
        "alerts",
        "show",
        alert["alert_id"],
        "--db",
        str(fleet.db),
        "--png",
        str(sized),
        "--png-size",
        "640x320",
    )
    assert result.exit_code == 0, result.output
    assert mpimg.imread(sized, format="png").shape[:2] == (320, 640)
    result = cli(
        "alerts", "show", alert["alert_id"], "--db", str(fleet.db), "--png", str(sized), "--png-size", "big"
    )
    assert result.exit_code == 2 and "not a size like 1200x600" in result.output


def test_alerts_show_json_carries_the_readings_around_the_episode(fleet: Fleet) -> None:
    alert = alerts_by_device(fleet)["f-0"]
    data = cli_json("alerts", "show", alert["alert_id"], "--db", str(fleet.db), "--margin", "1m")
    assert data["alert_id"] == alert["alert_id"]
    plot = data["plot"]
    assert plot["since"] <= alert["start"] - 60 and plot["until"] >= alert["end"] + 60
    readings = plot["readings"]
    assert all(plot["since"] <= ts < plot["until"] for ts, _ in readings)
    values = dict(readings)
    assert values[alert["start"]] == pytest.approx(alert["value"])  # the spike is in there
    assert max(v for _, v in readings) == pytest.approx(alert["value"])
    assert len(readings) == pytest.approx(2 * 60 + alert["duration"] + 1, abs=2)  # 1 s apart


def test_alerts_show_of_a_silent_alert_has_no_plot_and_png_is_refused(fleet: Fleet, tmp_path: Path) -> None:
    alert = alerts_by_device(fleet)["f-2"]
    result = cli("alerts", "show", alert["alert_id"], "--db", str(fleet.db))
    assert result.exit_code == 0 and "silent" in result.stdout
    result = cli("alerts", "show", alert["alert_id"], "--db", str(fleet.db), "--png", str(tmp_path / "x.png"))
    assert result.exit_code == 1 and "no readings" in result.output
    assert not (tmp_path / "x.png").exists()


def test_unknown_or_ambiguous_alert_ids_are_clear_errors(fleet: Fleet) -> None:
    for args, expected in (
        (("alerts", "show", "ffffffffffff"), "does not exist"),
        (("alerts", "show", "abc"), "at least 6 characters"),
        (("alerts", "ack", "ffffffffffff"), "does not exist"),
    ):
        result = cli(*args, "--db", str(fleet.db))
        assert result.exit_code == 1, result.output
        assert "error:" in result.output and expected in result.output
        assert "Traceback" not in result.output


# ---------------------------------------------------------------------------------------------
# devices


def test_devices_list_json_reports_presence_counts_completeness_and_counters(fleet: Fleet) -> None:
    devices = {d["device"]: d for d in cli_json("devices", "list", "--db", str(fleet.db))}
    assert sorted(devices) == ["f-0", "f-1", "f-2"]
    f0, f1, f2 = devices["f-0"], devices["f-1"], devices["f-2"]
    assert (f0["status"], f0["online"], f0["agent_version"], f0["status_event"]) == (
        "online",
        True,
        "0.1.0",
        "birth",
    )
    assert (f0["readings"], f0["received"], f0["missing"], f0["completeness"]) == (2 * N, 2 * N, 0, 1.0)
    assert (f0["backlog"], f0["dropped"], f0["dropped_unconfirmed"]) == (3.0, 2.0, 1.0)
    assert f0["counters"] == COUNTERS_F0 and f0["open_alerts"] == 0
    missing = 2 * len(GAP_F1)
    assert (f1["readings"], f1["missing"]) == (2 * N - missing, missing)
    assert f1["completeness"] == pytest.approx((2 * N - missing) / (2 * N))
    assert f1["open_alerts"] == 1 and f1["backlog"] is None
    (epoch,) = f1["epochs"]
    assert (epoch["epoch"], epoch["first_seq"], epoch["last_seq"], epoch["received"]) == (
        "e1",
        1,
        2 * N,
        2 * N - missing,
    )
    assert (f2["status"], f2["online"], f2["status_event"]) == ("offline", False, "will")
    assert (f2["readings"], f2["open_alerts"]) == (2 * F2_STEPS, 1)
    for d in devices.values():
        assert d["last_seen_iso"].endswith("Z") and 0 <= d["last_seen_ago"] < 600


def test_devices_list_table(fleet: Fleet) -> None:
    result = cli("devices", "list", "--db", str(fleet.db), env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "3 devices, 2 online" in out
    row = {line.split()[1]: line for line in out.splitlines() if line.strip().startswith("│ f-")}
    assert "online" in row["f-0"] and "0.1.0" in row["f-0"] and "100%" in row["f-0"]
    assert "97.50%" in row["f-1"] and "20" in row["f-1"]
    assert "offline" in row["f-2"]


def test_devices_show_json_has_gaps_series_and_open_alerts(fleet: Fleet) -> None:
    data = cli_json("devices", "show", "f-1", "--db", str(fleet.db), "--window", "1h")
    (epoch,) = data["epochs"]
    assert epoch["gaps"] == [[2 * GAP_F1[0] + 1, 2 * GAP_F1[-1] + 2]]  # seqs 101..120
    assert epoch["missing"] == 20 and epoch["completeness"] == pytest.approx(0.975)
    assert data["gaps"] == 1 and "gaps" not in cli_json("devices", "list", "--db", str(fleet.db))[1]
    series = {s["metric"]: s for s in data["series"]}
    assert sorted(series) == ["load", "temp"]
    assert series["temp"]["count"] == N - len(GAP_F1) and series["load"]["count"] == N - len(GAP_F1)
    assert (series["temp"]["unit"], series["temp"]["sensor"]) == ("C", "sys")
    assert series["temp"]["last_ts"] == pytest.approx(fleet.t0 + N - 1)
    (alert,) = data["alerts"]
    assert (alert["device"], alert["state"]) == ("f-1", "open")
    assert series["temp"]["max"] == pytest.approx(alert["value"])
    assert data["window"]["until"] == pytest.approx(fleet.t0 + N - 1)


def test_devices_show_table_has_sparklines_and_gap_ranges(fleet: Fleet) -> None:
    result = cli("devices", "show", "f-1", "--db", str(fleet.db), env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "sys/temp" in out and "sys/load" in out and "101-120" in out and "97.50%" in out
    spark = next(line for line in out.splitlines() if "sys/temp" in line)
    assert sum(ch in "▁▂▃▄▅▆▇█" for ch in spark) >= 20 and "█" in spark


def test_unknown_device_is_a_clear_error(fleet: Fleet) -> None:
    result = cli("devices", "show", "no-such-device", "--db", str(fleet.db))
    assert result.exit_code == 1 and "is not known" in result.output


# ---------------------------------------------------------------------------------------------
# which database, and wrong ones


def test_config_and_env_name_the_database(fleet: Fleet) -> None:
    via_config = cli_json("devices", "list", "--config", str(fleet.config))
    via_env = json.loads(cli("devices", "list", "--json", env={"EDGEWATCH_DB": str(fleet.db)}).stdout)
    assert [d["device"] for d in via_config] == [d["device"] for d in via_env] == ["f-0", "f-1", "f-2"]


def test_missing_and_wrong_databases_are_clear_errors_and_left_untouched(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n" * 10)
    foreign = tmp_path / "other.sqlite"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE t (x)")
    before = foreign.read_bytes()
    bad_config = tmp_path / "bad.toml"
    bad_config.write_text("[aggregator]\nnope = 1\n")
    cases = [
        (["--db", str(tmp_path / "missing.db")], "no database at"),
        (["--db", str(text)], "not a SQLite file"),
        (["--db", str(foreign)], "not an edgewatch store"),
        (["--db", str(tmp_path)], "is not a file"),
        (["--config", str(bad_config)], "aggregator.nope"),
    ]
    for command in (
        ["alerts", "list"],
        ["devices", "list"],
        ["devices", "show", "x"],
        ["alerts", "ack", "abcdef"],
    ):
        for args, expected in cases:
            result = cli(*command, *args)
            assert result.exit_code == 1, (command, args, result.output)
            assert "error: " in result.output and expected in result.output, result.output
    assert foreign.read_bytes() == before  # never migrated into an edgewatch store
    assert not (tmp_path / "missing.db").exists()


def test_read_only_store_refuses_writes(fleet: Fleet) -> None:
    from cloud.errors import StoreError
    from cloud.store.api import open_store

    with open_store(fleet.db, readonly=True) as store:
        alert = store.list_alerts(limit=1)[0]
        with pytest.raises(StoreError):
            store.ack_alert(alert.alert_id, now=time.time())


def _copy_of(db: str, where: Path) -> Path:
    """A consistent copy of the live store (SQLite's backup API), closed: no -wal, no -shm."""
    if "://" in db:
        pytest.skip("about a SQLite file: a PostgreSQL operator's read-only open is its own session")
    where.mkdir(parents=True, exist_ok=True)
    copy = where / "copy.db"
    src, dst = sqlite3.connect(db), sqlite3.connect(copy)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()
    return copy


def _every_read_command(db: Path) -> None:
    some = cli_json("alerts", "list", "--db", str(db))
    assert some
    for args in (
        ("alerts", "list"),
        ("alerts", "show", some[0]["alert_id"]),
        ("devices", "list"),
        ("devices", "show", "f-0"),
    ):
        result = cli(*args, "--db", str(db))
        assert result.exit_code == 0, (args, result.output)
    words = f"edgewatch alerts show --db {db} "
    cli(env={"_EDGEWATCH_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": "5"})


def test_operator_commands_never_write_the_store(fleet: Fleet, tmp_path: Path) -> None:
    """Read commands open the store read-only: no byte changes, no -wal or -shm appears."""
    import hashlib

    copy = _copy_of(fleet.db, tmp_path / "ro")
    before = hashlib.sha256(copy.read_bytes()).hexdigest()
    _every_read_command(copy)
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in copy.parent.iterdir()) == ["copy.db"]


def test_operator_commands_work_on_a_read_only_filesystem(
    fleet: Fleet, tmp_path: Path, small_filesystem: Any
) -> None:
    where = small_filesystem(16 * 1024 * 1024)
    copy = _copy_of(fleet.db, where / "store")
    subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
    _every_read_command(copy)


# ---------------------------------------------------------------------------------------------
# dead letters


def test_deadletters_list_filters_and_counts(fleet: Fleet) -> None:
    letters = cli_json("deadletters", "list", "--db", str(fleet.db))
    assert [d["reason"] for d in letters] == ["malformed_json", "malformed_json"]
    assert [d["device"] for d in letters] == ["f-1", "f-0"]  # newest first
    assert all(d["received_at_iso"] and d["topic"] and d["payload_bytes"] for d in letters)
    only_f0 = cli_json("deadletters", "list", "--device", "f-0", "--db", str(fleet.db))
    assert [d["device"] for d in only_f0] == ["f-0"]
    assert cli_json("deadletters", "list", "--reason", "future_ts", "--db", str(fleet.db)) == []
    table = cli("deadletters", "list", "--db", str(fleet.db))
    assert table.exit_code == 0 and "malformed_json 2" in table.output


def test_deadletters_show_prints_the_payload_safely(fleet: Fleet) -> None:
    import base64

    by_device = {d["device"]: d["id"] for d in cli_json("deadletters", "list", "--db", str(fleet.db))}
    text = cli("deadletters", "show", str(by_device["f-0"]), "--db", str(fleet.db))
    assert text.exit_code == 0, text.output
    assert "\x1b" not in text.output and "\\x1b[31mred" in text.output  # escaped, never sent raw
    binary = cli("deadletters", "show", str(by_device["f-1"]), "--db", str(fleet.db))
    assert "ff fe 00 01" in binary.output  # a hex dump
    data = cli_json("deadletters", "show", str(by_device["f-1"]), "--db", str(fleet.db))
    assert base64.b64decode(data["payload_base64"]) == DEAD[1][1] and data["payload_text"] is None
    missing = cli("deadletters", "show", "999999", "--db", str(fleet.db))
    assert missing.exit_code == 1 and "does not exist" in missing.output


def test_devices_show_counts_dead_letters_per_reason(fleet: Fleet) -> None:
    assert cli_json("devices", "show", "f-0", "--db", str(fleet.db))["dead_letters"] == {"malformed_json": 1}
    assert cli_json("devices", "show", "f-2", "--db", str(fleet.db))["dead_letters"] == {}
    panel = cli("devices", "show", "f-1", "--db", str(fleet.db))
    assert "malformed_json 1" in panel.output


# ---------------------------------------------------------------------------------------------
# ack (writes beside the running aggregator), last so the other tests see unacked alerts


def test_alerts_ack_marks_the_alert_in_list_and_show(fleet: Fleet) -> None:
    alert = alerts_by_device(fleet)["f-1"]
    assert alert["acked"] is False
    acked = cli_json(
        "alerts", "ack", alert["alert_id"][:10], "--db", str(fleet.db), "--note", "fan checked", "--by", "ops"
    )
    assert (acked["alert_id"], acked["acked"], acked["acked_by"], acked["note"]) == (
        alert["alert_id"], True, "ops", "fan checked",
    )  # fmt: skip
    assert abs(acked["acked_at"] - time.time()) < 60
    listed = alerts_by_device(fleet)
    assert listed["f-1"]["acked"] is True and listed["f-1"]["acked_at"] == acked["acked_at"]
    assert listed["f-0"]["acked"] is False and listed["f-1"]["state"] == "open"
    table = cli("alerts", "list", "--db", str(fleet.db), env={"COLUMNS": "200"}).stdout
    assert "✓ acked ops" in table
    shown = cli("alerts", "show", alert["alert_id"], "--db", str(fleet.db), "--width", "100").stdout
    assert "acked" in shown and "fan checked" in shown
    again = cli_json("alerts", "ack", alert["alert_id"], "--db", str(fleet.db), "--by", "ops")
    assert again["acked_at"] == acked["acked_at"] and again["note"] == "fan checked"


# ---------------------------------------------------------------------------------------------
# the real `edgewatch` command, and shell completion


def test_the_real_command_in_a_subprocess(fleet: Fleet) -> None:
    env = {**os.environ, "EDGEWATCH_DB": str(fleet.db)}
    done = subprocess.run(
        [sys.executable, "-m", "edgewatch", "alerts", "list", "--open", "--json"],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [a["device"] for a in json.loads(done.stdout)] == ["f-2", "f-1"]
    done = subprocess.run(
        [sys.executable, "-m", "edgewatch", "devices", "show", "f-0", "--db", str(fleet.workdir / "nope.db")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1 and done.stderr.startswith("error: no database at")
    assert "Traceback" not in done.stderr + done.stdout


def test_shell_completion_offers_commands_and_alert_ids(fleet: Fleet) -> None:
    # typer finds the shell among the parent processes, as when a user types it in bash (the
    # trailing `exit` keeps bash from exec-ing the command, so bash stays the parent).
    script = subprocess.run(
        ["bash", "-c", f"{shlex.quote(sys.executable)} -m edgewatch --show-completion; exit $?"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert script.returncode == 0 and "complete" in script.stdout and "_COMPLETE" in script.stdout

    def complete(words: str) -> list[str]:
        env = {
            **os.environ,
            "_EDGEWATCH_COMPLETE": "complete_bash",
            "COMP_WORDS": words,
            "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1)),
        }
        done = subprocess.run(
            [str(Path(sys.executable).parent / "edgewatch")],
            capture_output=True, text=True, timeout=60, env=env, check=False,
        )  # fmt: skip
        return done.stdout.split()

    assert "show" in complete("edgewatch alerts sh")
    assert {"list", "show"} <= set(complete("edgewatch devices "))
    alert = alerts_by_device(fleet)["f-0"]["alert_id"]
    assert complete(f"edgewatch alerts show --db {fleet.db} {alert[:4]}") == [alert]
    assert complete(f"edgewatch devices show --db {fleet.db} f-") == ["f-0", "f-1", "f-2"]

"""Agent and aggregator as operators deploy them: provisioned bundles, TLS, the production broker.

The agent runs as `python -m edgewatch agent run --config <provisioned agent.toml>` and the
aggregator as `python -m edgewatch cloud run --config <provisioned cloud.toml>`; the only edits
to the provisioned files are the test's paths and faster intervals.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import TypeVar

import pytest

from cloud.errors import StoreError
from cloud.provision.bundles import ProvisionResult, Role, provision
from cloud.store.api import Store, open_store
from devices import wire
from edge.errors import OutboxError
from edge.outbox import OutboxStats, read_stats
from tests.agent_helpers import outbox_seqs
from tests.confirmer import Confirmer, wait_for
from tests.deploy_helpers import Client, ProductionBroker, make_ca

T = TypeVar("T")

pytestmark = pytest.mark.broker

EDGEWATCH = [sys.executable, "-m", "edgewatch"]
FAST_PUBLISH = """
[publish]
linger_s = 0.05
ack_timeout_s = 2.0
reconnect_base_s = 0.1
reconnect_max_s = 0.5
heartbeat_s = 1.0
"""


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[ProductionBroker]:
    mq = ProductionBroker(tmp_path / "broker", make_ca(tmp_path / "pki")).start()
    try:
        yield mq
    finally:
        mq.stop()


def prov(broker: ProductionBroker, tmp: Path, name: str | None, role: Role = Role.DEVICE) -> ProvisionResult:
    out = tmp / "bundles"
    return provision(
        name,
        role=role,
        broker_url=f"mqtts://localhost:{broker.tls_port}",
        out_dir=out,
        passwd_file=broker.passwd,
        acl_file=broker.acl,
        ca_dir=broker.certs,
        install_dir=PurePosixPath(out / (name or role.value)),
        state_dir=PurePosixPath(tmp / f"state-{name}"),
        cloud_db=PurePosixPath(tmp / "cloud.db"),
    )


def outbox_stats(outbox: Path) -> OutboxStats | None:
    """The outbox's stats, or None while the agent is still creating it."""
    try:
        return read_stats(outbox, 1)
    except (OutboxError, KeyError):  # KeyError: the meta table is not filled in yet
        return None


def fast_agent_config(result: ProvisionResult) -> Path:
    """The provisioned file with a quick sensor and quick retries: what an operator would edit."""
    text = result.config.read_text()
    text, n = re.subn(r"(?m)^interval_s = 10\.0$", "interval_s = 0.1", text)
    assert n == 1
    result.config.write_text(text + FAST_PUBLISH)
    return result.config


def start(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([*EDGEWATCH, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def stop(proc: subprocess.Popen[bytes]) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        rc = -9
    err = proc.stderr.read().decode() if proc.stderr else ""
    assert rc == 0, err
    return err


def test_agent_delivers_over_tls_with_provisioned_credentials(
    broker: ProductionBroker, tmp_path: Path
) -> None:
    dev = prov(broker, tmp_path, "pi-1")
    agg = prov(broker, tmp_path, None, Role.AGGREGATOR)
    broker.reload()
    # The test's stand-in for the aggregator, with the aggregator's credentials.
    confirmer = Confirmer(broker.host, broker.tls_port, client_id="edgewatch-aggregator")
    password = re.search(r"aggregator:([^@]+)@", agg.config.read_text())
    assert password
    confirmer.client.username_pw_set("aggregator", password.group(1))
    confirmer.client.tls_set(ca_certs=str(agg.bundle / "ca.crt"))
    confirmer.start()
    agent = start("agent", "run", "--config", str(fast_agent_config(dev)), "--log-level", "warning")
    outbox = tmp_path / "state-pi-1" / "outbox.db"
    try:
        wait_for(lambda: (s := outbox_stats(outbox)) is not None and s.confirmed >= 20, 30, "20 confirmed")
    finally:
        err = stop(agent)
    stats = read_stats(outbox, 1)
    assert stats.dropped == 0
    got = confirmer.seqs("pi-1", stats.epoch)
    leftover = outbox_seqs(outbox)
    assert got | leftover >= set(range(1, stats.last_seq + 1)), err
    confirmer.stop()


def _read(db: Path, what: Callable[[Store], T], default: T) -> T:
    """Read the aggregator's store while it runs, through the read model: read-only, never
    migrating (that is its job); `default` until the aggregator has created it."""
    try:
        with open_store(db, readonly=True) as store:
            return what(store)
    except StoreError:
        return default


def _count(db: Path, device: str | None = None) -> int:
    return _read(db, lambda s: s.count_readings(device), 0)


def _dead(db: Path) -> dict[str, int]:
    return _read(db, lambda s: s.dead_letter_counts(), {})


def test_agent_to_aggregator_end_to_end_over_tls(broker: ProductionBroker, tmp_path: Path) -> None:
    dev = prov(broker, tmp_path, "pi-1")
    other = prov(broker, tmp_path, "pi-2")
    agg = prov(broker, tmp_path, None, Role.AGGREGATOR)
    broker.reload()
    db = tmp_path / "cloud.db"
    config = fast_agent_config(dev)
    outbox = tmp_path / "state-pi-1" / "outbox.db"
    aggregator = start("cloud", "run", "--config", str(agg.config), "--log-level", "warning")
    try:
        agent = start("agent", "run", "--config", str(config), "--log-level", "warning")
        try:
            wait_for(lambda: _count(db, "pi-1") >= 20, 45, "20 readings stored by the aggregator")
        finally:
            stop(agent)
        sampled = read_stats(outbox, 1)
        assert sampled.dropped == 0
        # Restarted without sensors, the agent only drains: the outbox must empty, every reading
        # confirmed by the aggregator after it stored it.
        config.write_text(config.read_text().split("[[sensors]]")[0] + FAST_PUBLISH)
        agent = start("agent", "run", "--config", str(config), "--log-level", "warning")
        try:
            wait_for(
                lambda: (s := outbox_stats(outbox)) is not None and s.backlog == 0, 30, "the outbox to empty"
            )
        finally:
            stop(agent)
        assert _count(db, "pi-1") == sampled.last_seq

        # pi-2 is a real device. A payload it sends claiming to be pi-1 passes the broker (it is
        # on pi-2's own topic) and is dead-lettered by the aggregator; the same payload on pi-1's
        # topic is dropped by the broker and never reaches the aggregator at all.
        epoch = "e" * 32
        lie = wire.encode_readings("pi-1", epoch, [(1, time.time(), "s", "m", 1.0, "")], sent_at=time.time())
        for topic in (wire.device_topic("pi-1", wire.TELEMETRY), wire.device_topic("pi-2", wire.TELEMETRY)):
            pi2 = Client(broker.tls_port, "pi-2", _password(other), broker.certs / "ca.crt", client_id="p2")
            assert not pi2.connect().is_failure
            pi2.publish(topic, lie)
            if topic.startswith("edgewatch/v1/pi-1/"):
                wait_for(lambda c=pi2: c.dropped, 10, "the broker to drop the forger")  # type: ignore[misc]
            pi2.close()
        # The broker is single-threaded and PUBACKed the forgery first: by the time the
        # mismatch is dead-lettered, a forgery let through would have been stored.
        wait_for(lambda: _dead(db).get("device_mismatch", 0) >= 1, 20, "the mismatched payload dead-lettered")
        assert _count(db) == sampled.last_seq, "only pi-1's own readings are stored"
    finally:
        stop(aggregator)


def _password(result: ProvisionResult) -> str:
    found = re.search(r'(?m)^password = "([^"]+)"$', result.config.read_text())
    assert found
    return found.group(1)

"""OPC UA servers (asyncua, the `opcua` extra): PLC tags and SCADA points, polled.

Each read asks for every configured node's Value in one Read service call, at the sensor's
interval; a subscription would save little at the intervals an agent samples at and would add
a second source of timing next to the agent's schedule. asyncua is asynchronous: the driver
runs its client on a private event loop thread (asyncua.sync.ThreadLoop) and waits for each
call with the configured timeout, so the agent's sensor thread stays a plain blocking read.

A read is all or nothing: a node whose status is not Good, whose value is not a number (bools
read as 0/1), a NaN, a timeout or a dropped connection fails the read with a SensorReadError
naming the node; the connection is then closed and opened afresh on the next read.

Security: `security_policy` (None, Basic256Sha256, Aes128Sha256RsaOaep, Aes256Sha256RsaPss) and
`security_mode` (Sign or SignAndEncrypt) with this client's `certificate` and `private_key`
files (PEM or DER; `server_certificate` pins the server's, otherwise it is taken from the
endpoint list), and/or `username` with `password`. asyncua is imported only when the first
read connects.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import math
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar

from devices.drivers.base import reject_unknown_params
from devices.errors import DriverConfigError, SensorReadError
from devices.model import Measurement
from devices.wire import MAX_NAME_LEN

if TYPE_CHECKING:
    from asyncua.client.client import Client
    from asyncua.common.node import Node
    from asyncua.sync import ThreadLoop

DRIVER: Final = "opcua"
PARAMS: Final = frozenset(
    {
        "endpoint",
        "security_policy",
        "security_mode",
        "certificate",
        "private_key",
        "server_certificate",
        "application_uri",
        "username",
        "password",
        "timeout_s",
        "nodes",
    }
)
NODE_KEYS: Final = frozenset({"node_id", "metric", "unit"})
POLICIES: Final = ("None", "Basic256Sha256", "Aes128Sha256RsaOaep", "Aes256Sha256RsaPss")
MODES: Final = ("Sign", "SignAndEncrypt")
DEFAULT_TIMEOUT_S: Final = 4.0
SHOWN_VALUE: Final = 40

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class NodeSpec:
    node_id: str
    metric: str
    unit: str


@dataclass(frozen=True, slots=True)
class NodeValue:
    """What one node gave: its variant type and value as read, and the number sent on."""

    node: NodeSpec
    variant: str
    raw: object
    value: float


def _fail(key: str, problem: str, value: Any) -> DriverConfigError:
    return DriverConfigError(f"{DRIVER}: param {key!r} {problem}, got {value!r}")


def _string(params: Mapping[str, Any], key: str, *, where: str | None = None) -> str | None:
    value = params.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        raise _fail(where or key, "must be a non-empty string", value)
    return value


def _name(entry: Mapping[str, Any], key: str, *, required: bool, where: str) -> str:
    value = entry.get(key, None if required else "")
    if value is None:
        raise DriverConfigError(f"{DRIVER}: param {where!r} is required")
    if not isinstance(value, str) or len(value) > MAX_NAME_LEN or (required and not value):
        raise _fail(where, f"must be a string of at most {MAX_NAME_LEN} characters", value)
    return value


def parse_nodes(params: Mapping[str, Any]) -> tuple[NodeSpec, ...]:
    entries = params.get("nodes")
    if not isinstance(entries, list | tuple) or not entries:
        raise _fail("nodes", "must be a non-empty list of tables", entries)
    out: list[NodeSpec] = []
    for i, entry in enumerate(entries):
        at = f"nodes[{i}]"
        if not isinstance(entry, Mapping):
            raise _fail(at, "must be a table", entry)
        unknown = sorted(set(entry) - NODE_KEYS)
        if unknown:
            raise DriverConfigError(
                f"{DRIVER}: param {at + '.' + unknown[0]!r} is not a node key; "
                f"valid keys: {', '.join(sorted(NODE_KEYS))}"
            )
        node_id = _string(entry, "node_id", where=f"{at}.node_id")
        if node_id is None or not (node_id.startswith(("ns=", "i=", "s=", "g=", "b=", "nsu="))):
            raise _fail(f"{at}.node_id", "must be a node id such as 'ns=2;s=Line1.Temperature'", node_id)
        spec = NodeSpec(
            node_id,
            _name(entry, "metric", required=True, where=f"{at}.metric"),
            _name(entry, "unit", required=False, where=f"{at}.unit"),
        )
        if any(n.metric == spec.metric for n in out):
            raise _fail(f"{at}.metric", "names a metric an earlier node already gives", spec.metric)
        out.append(spec)
    return tuple(out)


def as_number(value: object) -> float | None:
    """A node's value as a float, or None if it is not a scalar number (bools are 0/1)."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return None


class OpcUaDriver:
    """A set of variable nodes on one OPC UA server, read together."""

    def __init__(self, params: Mapping[str, Any]) -> None:
        reject_unknown_params(DRIVER, params, PARAMS)
        endpoint = _string(params, "endpoint")
        if endpoint is None or not endpoint.startswith("opc.tcp://"):
            raise _fail("endpoint", "must be an opc.tcp:// URL", endpoint)
        self.endpoint = endpoint
        policy = params.get("security_policy", "None")
        if policy not in POLICIES:
            raise _fail("security_policy", f"must be one of {', '.join(POLICIES)}", policy)
        self.security_policy: str = policy
        mode = params.get("security_mode", "None" if policy == "None" else "SignAndEncrypt")
        if policy == "None" and mode != "None":
            raise _fail("security_mode", "needs a security_policy other than 'None'", mode)
        if policy != "None" and mode not in MODES:
            raise _fail("security_mode", f"must be one of {', '.join(MODES)}", mode)
        self.security_mode: str = mode
        self.certificate = _string(params, "certificate")
        self.private_key = _string(params, "private_key")
        self.server_certificate = _string(params, "server_certificate")
        self.application_uri = _string(params, "application_uri")
        if policy != "None":
            for key in ("certificate", "private_key"):
                if params.get(key) is None:
                    raise DriverConfigError(
                        f"{DRIVER}: param {key!r} is required with security_policy {policy!r}"
                    )
        elif self.certificate or self.private_key or self.server_certificate:
            raise _fail("security_policy", "must be set when certificates are given", policy)
        self.username = _string(params, "username")
        self.password = _string(params, "password")
        if (self.username is None) != (self.password is None):
            raise DriverConfigError(f"{DRIVER}: params 'username' and 'password' go together")
        timeout = params.get("timeout_s", DEFAULT_TIMEOUT_S)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout < math.inf:
            raise _fail("timeout_s", "must be a positive number of seconds", timeout)
        self.timeout_s = float(timeout)
        self.nodes = parse_nodes(params)
        if importlib.util.find_spec("asyncua") is None:
            raise DriverConfigError(
                f"{DRIVER}: asyncua is not installed; install the 'edgewatch[opcua]' extra"
            )
        self.last_read: tuple[NodeValue, ...] = ()
        self._loop: ThreadLoop | None = None
        self._client: Client | None = None
        self._handles: list[Node] = []

    @property
    def _where(self) -> str:
        return f"{DRIVER} {self.endpoint}"

    def _run(self, loop: ThreadLoop, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the client's loop, bounded by the timeout (asyncua's own covers each
        request, not a connect that has to list endpoints and open a session first)."""
        return loop.post(asyncio.wait_for(coro, self.timeout_s * 3))

    def _connect(self) -> tuple[ThreadLoop, Client]:
        from asyncua import ua  # noqa: PLC0415
        from asyncua.client.client import Client  # noqa: PLC0415
        from asyncua.crypto import security_policies  # noqa: PLC0415
        from asyncua.sync import ThreadLoop  # noqa: PLC0415

        loop = ThreadLoop(timeout=self.timeout_s * 3 + 1)
        loop.daemon = True
        loop.start()
        client = Client(self.endpoint, timeout=self.timeout_s)
        self._loop, self._client = loop, client
        if self.application_uri:
            client.application_uri = self.application_uri
        if self.username is not None and self.password is not None:
            client.set_user(self.username)
            client.set_password(self.password)
        if self.security_policy != "None":
            assert self.certificate is not None and self.private_key is not None
            policy = getattr(security_policies, f"SecurityPolicy{self.security_policy}")
            self._run(
                loop,
                client.set_security(
                    policy,
                    self.certificate,
                    self.private_key,
                    server_certificate=self.server_certificate,
                    mode=getattr(ua.MessageSecurityMode, self.security_mode),
                ),
            )
        self._run(loop, client.connect())
        self._handles = [client.get_node(n.node_id) for n in self.nodes]
        return loop, client

    def _read(self) -> list[NodeValue]:
        if self._loop is None or self._client is None:
            loop, client = self._connect()
        else:
            loop, client = self._loop, self._client
        results = self._run(loop, client.read_attributes(self._handles))
        if len(results) != len(self.nodes):
            raise SensorReadError(f"{self._where}: asked for {len(self.nodes)} values, got {len(results)}")
        out = []
        for node, result in zip(self.nodes, results, strict=True):
            status = result.StatusCode
            if status is not None and not status.is_good():
                raise SensorReadError(f"{self._where}: {node.node_id}: status {status.name}")
            variant = result.Value
            raw = None if variant is None else variant.Value
            kind = "Null" if variant is None else variant.VariantType.name
            value = as_number(raw)
            if value is None:
                raise SensorReadError(
                    f"{self._where}: {node.node_id} is a {kind} ({str(raw)[:SHOWN_VALUE]!r}), not a number"
                )
            if not math.isfinite(value):
                raise SensorReadError(f"{self._where}: {node.node_id} is {value}")
            out.append(NodeValue(node, kind, raw, value))
        return out

    def read(self) -> list[Measurement]:
        try:
            values = self._read()
        except SensorReadError:
            self.close()
            raise
        except Exception as exc:  # asyncua raises UaError, OSError, timeouts, ...; all end this session
            self.close()
            detail = str(exc) or type(exc).__name__
            raise SensorReadError(f"{self._where}: {detail}") from exc
        self.last_read = tuple(values)
        return [Measurement(v.node.metric, v.value, v.node.unit) for v in values]

    def describe_last_read(self) -> list[str]:
        """Each node of the last successful read: its variant type and value as the server sent it."""
        return [
            f"{v.node.metric}: {v.node.node_id} {v.variant} {str(v.raw)[:SHOWN_VALUE]} -> {v.value:g} "
            f"{v.node.unit}".rstrip()
            for v in self.last_read
        ]

    def close(self) -> None:
        loop, client, self._loop, self._client = self._loop, self._client, None, None
        self._handles = []
        if loop is None:
            return
        if client is not None:
            # A session that already broke has nothing left to close politely.
            with contextlib.suppress(Exception):
                loop.post(asyncio.wait_for(client.disconnect(), self.timeout_s))
        loop.stop()

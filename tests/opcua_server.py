"""An asyncua OPC UA server owned by one test, on a free loopback port, on its own loop thread.

It holds a few variables under `ns=<ns>;s=Line1.*` (the namespace registered first gets index
2), optionally only over Basic256Sha256 with a username and password, with certificates that
`make_certificates` generates for the server and the client.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.server import Server
from asyncua.sync import ThreadLoop
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.mosquitto import free_port, wait_port

CLIENT_URI = "urn:edgewatch:test:client"
SERVER_URI = "urn:edgewatch:test:server"
VARIABLES: dict[str, Any] = {
    "Temperature": 72.5,
    "Count": ua.Variant(41, ua.VariantType.Int32),
    "Running": True,
    "Name": "line one",
}


@dataclass(frozen=True)
class Certificates:
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_certificates(tmp: Path) -> Certificates:
    certs = Certificates(tmp / "server.der", tmp / "server.pem", tmp / "client.der", tmp / "client.pem")

    async def generate() -> None:
        subject = {"countryName": "DE", "organizationName": "edgewatch tests"}
        await setup_self_signed_certificate(
            certs.server_key, certs.server_cert, SERVER_URI, "127.0.0.1",
            [ExtendedKeyUsageOID.SERVER_AUTH], subject,
        )  # fmt: skip
        await setup_self_signed_certificate(
            certs.client_key, certs.client_cert, CLIENT_URI, "127.0.0.1",
            [ExtendedKeyUsageOID.CLIENT_AUTH], subject,
        )  # fmt: skip

    asyncio.run(generate())
    return certs


class PasswordUsers:
    """Admits one username and password, refuses everyone else (anonymous included)."""

    def __init__(self, username: str, password: str) -> None:
        self.username, self.password = username, password

    def get_user(
        self, iserver: Any, username: str | None = None, password: str | None = None, certificate: Any = None
    ) -> User | None:
        if (username, password) == (self.username, self.password):
            return User(role=UserRole.User)
        return None


class OpcUaServer:
    def __init__(
        self,
        *,
        certs: Certificates | None = None,
        users: PasswordUsers | None = None,
        port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self.endpoint = f"opc.tcp://127.0.0.1:{self.port}/edgewatch/"
        self.certs = certs
        self.users = users
        self.ns = 0
        self.nodes: dict[str, Any] = {}
        self._loop = ThreadLoop(timeout=30)
        self._loop.daemon = True
        self._server: Server | None = None

    async def _start(self) -> None:
        server = Server(user_manager=self.users)  # type: ignore[arg-type]
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name("edgewatch test PLC")
        await server.set_application_uri(SERVER_URI)
        if self.certs is not None:
            await server.load_certificate(str(self.certs.server_cert))
            await server.load_private_key(str(self.certs.server_key))
            server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
        if self.users is not None:
            server.set_identity_tokens([ua.UserNameIdentityToken])
        self.ns = await server.register_namespace("urn:edgewatch:test")
        line = await server.nodes.objects.add_object(self.ns, "Line1")
        for name, value in VARIABLES.items():
            self.nodes[name] = await line.add_variable(ua.NodeId(f"Line1.{name}", self.ns), name, value)
        await server.start()
        self._server = server

    def node_id(self, name: str) -> str:
        return f"ns={self.ns};s=Line1.{name}"

    def set(self, name: str, value: Any) -> None:
        self._loop.post(self.nodes[name].write_value(value))

    def __enter__(self) -> OpcUaServer:
        self._loop.start()
        self._loop.post(self._start())
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._loop.post(self._server.stop())
            self._server = None

    def __exit__(self, *exc: object) -> None:
        """Stops the server and its loop; safe to call again."""
        if self._loop.is_alive():
            self.stop()
            self._loop.stop()

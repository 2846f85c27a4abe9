"""Broker addresses as users write them: `mqtt://user:pass@host:1883`, `mqtts://host`."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from devices.errors import EdgewatchError


class BrokerURLError(EdgewatchError):
    """A broker URL we cannot connect with; the message says which part is wrong."""


@dataclass(frozen=True, slots=True)
class BrokerURL:
    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None

    def redacted(self) -> str:
        """The URL without the password, for logs and status output."""
        user = f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port}"


def parse_broker_url(url: str) -> BrokerURL:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise BrokerURLError(f"broker URL {url!r}: {exc}") from exc
    if parts.scheme not in ("mqtt", "mqtts"):
        raise BrokerURLError(f"broker URL {url!r}: scheme must be mqtt:// or mqtts://")
    if not parts.hostname:
        raise BrokerURLError(f"broker URL {url!r}: no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise BrokerURLError(f"broker URL {url!r}: unexpected path or query")
    tls = parts.scheme == "mqtts"
    return BrokerURL(
        host=parts.hostname,
        port=port or (8883 if tls else 1883),
        tls=tls,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )

"""The sink registry: one module per sink type, looked up by the `type` of a [[notify.sinks]] entry."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from cloud.notify.sinks.alertmanager import AlertmanagerSink
from cloud.notify.sinks.base import HttpRequest, Sink
from cloud.notify.sinks.webhook import WebhookSink

if TYPE_CHECKING:
    from cloud.notify.config import SinkConfig

SINKS: Final[dict[str, Callable[[SinkConfig], Sink]]] = {
    "alertmanager": AlertmanagerSink,
    "webhook": WebhookSink,
}


def make_sink(config: SinkConfig) -> Sink:
    """The sink a config names (secret files are read here: ConfigError if one is unreadable)."""
    return SINKS[config.type](config)


__all__ = ["SINKS", "HttpRequest", "Sink", "make_sink"]

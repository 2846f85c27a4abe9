"""A plain webhook: a JSON POST of alert transitions, optionally signed and Slack-compatible.

The body (`devices.wire.encode_webhook`) is `{"v": "1.1", "kind": "alert_events", "events":
[...]}`, one event per transition in queue order, each the alert with the same fields as
`edgewatch alerts list --json` plus `transition_id` (stable: de-duplicate on it, delivery is at
least once) and `transition` ("open" or "closed"). With `slack_text` the body also has a `text`
line per event, which a Slack (or Mattermost, Rocket.Chat) incoming webhook
shows. With `secret_file`, `X-Edgewatch-Signature: sha256=<hex>` is the HMAC-SHA256 of the exact
body bytes under that key, so the receiver can check who sent it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from cloud.notify.queue import Notice
from cloud.notify.sinks.base import HttpRequest, common_headers, explain, read_secret, show_command
from devices import wire

if TYPE_CHECKING:
    from cloud.notify.config import SinkConfig


def sign(body: bytes, key: bytes) -> str:
    """The signature header's value: HMAC-SHA256 of the exact body bytes.

    >>> sign(b"{}", b"k")
    'sha256=add853b103fbcc936a194f9eb15e29c4ff08af6e47d5d1bca4f20218e31e4fff'
    """
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def event(notice: Notice) -> dict[str, Any]:
    return {**notice.alert, "transition_id": notice.transition_id, "transition": notice.state}


def slack_line(alert: Mapping[str, Any], transition: str) -> str:
    mark = ":rotating_light:" if transition == "open" else ":white_check_mark:"
    state = "OPEN" if transition == "open" else "closed"
    return f"{mark} [{alert.get('severity', '')}] {state}: {explain(alert)} - `{show_command(alert)}`"


class WebhookSink:
    per_device = True  # people read these: one message per device (within group_s)
    resends = False  # a webhook receives events, not state: nothing to refresh

    def __init__(self, config: SinkConfig) -> None:
        self.config = config
        self.headers = common_headers(config)
        self.key = (
            read_secret(config.secret_file, f"notify sink {config.name}: secret_file").encode()
            if config.secret_file
            else None
        )

    def render(self, notices: Sequence[Notice], now: float) -> HttpRequest:
        text = "\n".join(slack_line(n.alert, n.state) for n in notices) if self.config.slack_text else None
        raw = wire.encode_webhook([event(n) for n in notices], text=text)
        headers = self.headers
        if self.key is not None:
            headers = (*headers, (self.config.signature_header, sign(raw, self.key)))
        return HttpRequest(self.config.url, raw, headers)

    def resend(self, open_alerts: Sequence[Mapping[str, Any]], now: float) -> HttpRequest | None:
        return None

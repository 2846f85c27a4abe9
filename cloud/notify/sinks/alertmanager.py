"""Prometheus Alertmanager: POST /api/v2/alerts, the same API Prometheus itself uses.

Alertmanager is state-based: an alert is its label set, firing while `endsAt` is absent or in
the future, resolved once `endsAt` has passed. A notification therefore carries each alert's
latest state only; a closed episode is sent with its `endsAt`. Alertmanager forgets a firing
alert that is not re-posted within its `resolve_timeout` (default 5 minutes) and a restarted
one knows nothing, so open alerts are re-posted every `resend_s`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from cloud.notify.queue import Notice
from cloud.notify.sinks.base import HttpRequest, common_headers, expected_range, explain, show_command
from devices import wire

if TYPE_CHECKING:
    from cloud.notify.config import SinkConfig

ALERTNAMES: Final = {"anomaly": "EdgewatchAnomaly", "silent": "EdgewatchSilent"}
LABELS: Final = ("device", "sensor", "metric", "kind", "severity", "alert_id")


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def am_alert(alert: Mapping[str, Any]) -> dict[str, Any]:
    """One edgewatch alert as an Alertmanager postable alert (empty labels left out: Alertmanager
    treats an empty label as an absent one).

    >>> a = am_alert({"alert_id": "a1", "device": "pi-1", "sensor": "", "metric": "temp",
    ...               "kind": "anomaly", "severity": "warning", "state": "open", "start": 0.0,
    ...               "end": None, "value": 30.0, "expected_low": 1.0, "expected_high": 2.0,
    ...               "peak_score": 0.9})
    >>> a["labels"]
    {'alertname': 'EdgewatchAnomaly', 'device': 'pi-1', 'metric': 'temp', 'kind': 'anomaly', \
'severity': 'warning', 'alert_id': 'a1'}
    >>> a["startsAt"], "endsAt" in a
    ('1970-01-01T00:00:00.000Z', False)
    """
    kind = str(alert.get("kind", ""))
    labels = {"alertname": ALERTNAMES.get(kind, "EdgewatchAlert")}
    labels.update({k: str(alert[k]) for k in LABELS if alert.get(k) not in (None, "")})
    annotations = {
        "summary": explain(alert),
        "explanation": explain(alert),
        "command": show_command(alert),
    }
    if alert.get("value") is not None:
        annotations["value"] = f"{alert['value']:.6g}"
    if expected_range(alert):
        annotations["expected_range"] = expected_range(alert)
    out: dict[str, Any] = {
        "labels": labels,
        "annotations": annotations,
        "startsAt": _rfc3339(float(alert["start"])),
    }
    if alert.get("state") == "closed":
        end = alert.get("end") if alert.get("end") is not None else alert.get("closed_at")
        out["endsAt"] = _rfc3339(float(end if end is not None else alert["start"]))
    return out


class AlertmanagerSink:
    per_device = False  # Alertmanager groups by itself: a fleet's storm goes in one request
    resends = True  # it resolves a firing alert not re-posted within its resolve_timeout

    def __init__(self, config: SinkConfig) -> None:
        self.config = config
        self.url = config.url.rstrip("/") + "/api/v2/alerts"
        self.headers = common_headers(config)

    def _request(self, alerts: Sequence[Mapping[str, Any]]) -> HttpRequest:
        return HttpRequest(self.url, wire.encode_alertmanager([am_alert(a) for a in alerts]), self.headers)

    def render(self, notices: Sequence[Notice], now: float) -> HttpRequest:
        latest: dict[str, Mapping[str, Any]] = {}
        for notice in notices:  # in queue order: a close replaces its open
            latest[notice.alert_id] = notice.alert
        return self._request(list(latest.values()))

    def resend(self, open_alerts: Sequence[Mapping[str, Any]], now: float) -> HttpRequest | None:
        return self._request(open_alerts) if open_alerts else None

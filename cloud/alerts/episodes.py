"""Alert episodes as pure state machines: verdicts and presence in, transitions out.

No I/O and no clock: every call takes the reading's `ts` or the caller's `now`, so a test drives
a whole episode in microseconds and a replay after a crash reproduces exactly the same
transitions. Both machines are tables from (phase, event) to a handler, as in h11.

`EpisodeTracker` (one per stream, one more for late readings): an episode opens on the first
anomalous verdict and closes after `close_after` consecutive normal readings, or on a normal
reading `close_after_seconds` after the last anomalous one. `SilenceWatch` (one for the fleet):
a device silent past its expected interval, or whose last will arrives, gets a silent episode
that closes when the device is heard from again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from cloud.alerts.explain import fallback_evidence
from cloud.detect.base import Verdict
from devices.model import AlertKind, AlertState


def alert_id(device: str, sensor: str, metric: str, kind: str, start: float, *, late: bool = False) -> str:
    """Deterministic id of an episode, so replaying the same readings can never double it.

    >>> alert_id("pi-1", "cpu", "temp", "anomaly", 1700000000.0)
    '2edb00bc7fcf57370576'
    """
    key = f"{device}|{sensor}|{metric}|{kind}|{start!r}|{int(late)}"
    return hashlib.sha256(key.encode()).hexdigest()[:20]


# ---------------------------------------------------------------------------------------------
# anomaly episodes


class Phase(StrEnum):
    NORMAL = "normal"
    OPEN = "open"


@dataclass(frozen=True, slots=True)
class EpisodePolicy:
    close_after: int = 5
    close_after_seconds: float = 300.0


@dataclass(frozen=True, slots=True)
class Transition:
    """An episode opened or closed.

    `value`, `peak_ts`, the expected range and `evidence` all describe ONE reading, the one at
    the peak score: the range is the one the detector gave for that reading, never another
    reading's. `kind` is what the opening reading was (it stays the episode's kind, so routing
    labels do not change between open and close); `opening_evidence` is that reading's reason.
    """

    state: AlertState
    start: float
    end: float | None
    peak_score: float
    value: float
    expected_low: float | None
    expected_high: float | None
    msg_id: str  # the message that carried the opening reading
    kind: str = ""  # one of cloud.detect.base.ANOMALY_KINDS, or "" when the detector did not say
    evidence: str = ""  # the peak reading's reason, "{unit}" for the unit (never empty, see explain)
    opening_evidence: str = ""
    peak_ts: float | None = None


class EpisodeTracker:
    """One stream's episode state. Feed it every verdict in order; it answers with transitions.

    >>> t = EpisodeTracker(EpisodePolicy(close_after=2))
    >>> t.observe(1.0, 50.0, Verdict(0.9, True, 0.0, 10.0), msg_id="m1").state
    <AlertState.OPEN: 'open'>
    >>> t.observe(2.0, 5.0, Verdict(0.1, False, 0.0, 10.0)) is None
    True
    >>> closed = t.observe(3.0, 5.0, Verdict(0.1, False, 0.0, 10.0))
    >>> (closed.state, closed.start, closed.end, closed.peak_score, closed.value)
    (<AlertState.CLOSED: 'closed'>, 1.0, 2.0, 0.9, 50.0)
    """

    __slots__ = (
        "evidence",
        "expected_high",
        "expected_low",
        "kind",
        "last_anomalous",
        "msg_id",
        "normal_run",
        "opening_evidence",
        "peak_score",
        "peak_ts",
        "peak_value",
        "phase",
        "policy",
        "recovered_at",
        "start",
    )

    def __init__(self, policy: EpisodePolicy = EpisodePolicy()) -> None:
        self.policy = policy
        self.phase = Phase.NORMAL
        self.start = 0.0
        self.last_anomalous = 0.0
        self.recovered_at = 0.0
        self.peak_score = 0.0
        self.peak_value = 0.0
        self.expected_low: float | None = None
        self.expected_high: float | None = None
        self.normal_run = 0
        self.msg_id = ""
        self.kind = ""
        self.opening_evidence = ""
        self.evidence = ""
        self.peak_ts: float | None = None  # None in a checkpoint written before it was kept

    def observe(self, ts: float, value: float, verdict: Verdict, *, msg_id: str = "") -> Transition | None:
        """Feed one scored reading (in stream order); returns the transition it caused, if any."""
        handler = _EPISODE_TABLE[self.phase, verdict.anomalous]
        return handler(self, ts, value, verdict, msg_id)

    # handlers: (phase, anomalous?) -> what happens

    def _stay(self, ts: float, value: float, verdict: Verdict, msg_id: str) -> None:
        return None

    def _open(self, ts: float, value: float, verdict: Verdict, msg_id: str) -> Transition:
        self.phase = Phase.OPEN
        self.start = self.last_anomalous = ts
        self._peak(ts, value, verdict)
        self.kind, self.opening_evidence = verdict.kind, self.evidence
        self.normal_run = 0
        self.msg_id = msg_id
        return self._transition(AlertState.OPEN, None)

    def _extend(self, ts: float, value: float, verdict: Verdict, msg_id: str) -> None:
        self.last_anomalous = ts
        self.normal_run = 0
        if verdict.score > self.peak_score:
            self._peak(ts, value, verdict)

    def _peak(self, ts: float, value: float, verdict: Verdict) -> None:
        # Everything shown about the peak comes from its own verdict, a missing range included:
        # keeping an earlier reading's range beside this value is how an alert came to show an
        # "expected" range far from anything the stream did.
        self.peak_score, self.peak_value, self.peak_ts = verdict.score, value, ts
        low, high = self.expected_low, self.expected_high = verdict.expected_low, verdict.expected_high
        self.evidence = verdict.evidence or fallback_evidence(value, low, high, verdict.score)

    def _settle(self, ts: float, value: float, verdict: Verdict, msg_id: str) -> Transition | None:
        if self.normal_run == 0:
            # An older reading arriving late on the live topic (an agent's resend) cannot end
            # the episode before it began: seen in the demo, an alert ending 30 min before its start.
            self.recovered_at = max(ts, self.last_anomalous)
        self.normal_run += 1
        quiet_for = ts - self.last_anomalous
        if self.normal_run < self.policy.close_after and not (
            self.policy.close_after_seconds > 0 and quiet_for >= self.policy.close_after_seconds
        ):
            return None
        self.phase = Phase.NORMAL
        self.normal_run = 0
        return self._transition(AlertState.CLOSED, self.recovered_at)

    def _transition(self, state: AlertState, end: float | None) -> Transition:
        return Transition(
            state,
            self.start,
            end,
            self.peak_score,
            self.peak_value,
            self.expected_low,
            self.expected_high,
            self.msg_id,
            self.kind,
            self.evidence,
            self.opening_evidence,
            self.peak_ts,
        )

    # checkpoints (JSON-able, so a checkpoint stays readable)

    def to_state(self) -> dict[str, Any]:
        """Every slot but the policy; `from_state` fills slots an older checkpoint lacks with
        their defaults (a tracker checkpointed before kind and evidence existed still loads)."""
        return {name: getattr(self, name) for name in self.__slots__ if name != "policy"}

    @classmethod
    def from_state(cls, state: dict[str, Any], policy: EpisodePolicy = EpisodePolicy()) -> EpisodeTracker:
        tracker = cls(policy)
        for name, value in state.items():
            if name in cls.__slots__ and name != "policy":
                setattr(tracker, name, Phase(value) if name == "phase" else value)
        return tracker


_Handler = Callable[["EpisodeTracker", float, float, Verdict, str], Transition | None]
_EPISODE_TABLE: Final[dict[tuple[Phase, bool], _Handler]] = {
    (Phase.NORMAL, False): EpisodeTracker._stay,
    (Phase.NORMAL, True): EpisodeTracker._open,
    (Phase.OPEN, True): EpisodeTracker._extend,
    (Phase.OPEN, False): EpisodeTracker._settle,
}


# ---------------------------------------------------------------------------------------------
# silent devices


class Presence(StrEnum):
    ONLINE = "online"  # heard from recently, or not yet overdue
    SILENT = "silent"  # overdue or its last will arrived: a silent episode is open
    STOPPED = "stopped"  # said goodbye (clean shutdown): silence is expected


class PresenceEvent(StrEnum):
    SEEN = "seen"
    WILL = "will"
    SHUTDOWN = "shutdown"
    TIMEOUT = "timeout"


@dataclass(frozen=True, slots=True)
class SilencePolicy:
    silent_after: float = 120.0  # never call a device silent sooner than this
    factor: float = 3.0  # ...or than this many of its usual message intervals


@dataclass(frozen=True, slots=True)
class SilenceTransition:
    device: str
    state: AlertState
    start: float  # when the device was last heard from (or when its will came)
    end: float | None
    reason: str  # "timeout" or "will" when opening, "returned" or "shutdown" when closing

    @property
    def alert_id(self) -> str:
        return alert_id(self.device, "", "", AlertKind.SILENT, self.start)


@dataclass(slots=True)
class _Watch:
    phase: Presence
    last_seen: float
    interval: float | None = None  # EWMA of the gaps between messages
    since: float = 0.0  # start of the open silent episode


class SilenceWatch:
    """Presence of every device, driven by messages (`seen`, `will`, `shutdown`) and `check(now)`.

    >>> w = SilenceWatch(SilencePolicy(silent_after=10))
    >>> w.seen("pi-1", 100.0)
    >>> [(t.state.value, t.start) for t in w.check(111.0)]
    [('open', 100.0)]
    >>> w.seen("pi-1", 112.0).state
    <AlertState.CLOSED: 'closed'>
    """

    def __init__(self, policy: SilencePolicy = SilencePolicy()) -> None:
        self.policy = policy
        self._devices: dict[str, _Watch] = {}

    def restore(self, device: str, phase: Presence, last_seen: float, *, since: float = 0.0) -> None:
        """Resume after a restart; pass `last_seen` no older than the restart to give a grace period."""
        self._devices[device] = _Watch(phase, last_seen, None, since)

    def phase(self, device: str) -> Presence | None:
        watch = self._devices.get(device)
        return watch.phase if watch else None

    def threshold(self, device: str) -> float:
        watch = self._devices.get(device)
        interval = watch.interval if watch and watch.interval else 0.0
        return max(self.policy.silent_after, self.policy.factor * interval)

    def seen(self, device: str, now: float) -> SilenceTransition | None:
        return self._event(device, PresenceEvent.SEEN, now)

    def will(self, device: str, now: float) -> SilenceTransition | None:
        return self._event(device, PresenceEvent.WILL, now)

    def shutdown(self, device: str, now: float) -> SilenceTransition | None:
        return self._event(device, PresenceEvent.SHUTDOWN, now)

    def check(self, now: float) -> list[SilenceTransition]:
        """Open a silent episode for every online device overdue at `now`."""
        out: list[SilenceTransition] = []
        for device, watch in self._devices.items():
            if watch.phase is Presence.ONLINE and now - watch.last_seen > self.threshold(device):
                transition = self._event(device, PresenceEvent.TIMEOUT, now)
                if transition is not None:
                    out.append(transition)
        return out

    def _event(self, device: str, event: PresenceEvent, now: float) -> SilenceTransition | None:
        watch = self._devices.get(device)
        if watch is None:
            watch = self._devices[device] = _Watch(Presence.ONLINE, now)
        handler = _PRESENCE_TABLE[watch.phase, event]
        return handler(self, device, watch, now)

    # handlers: (phase, event) -> what happens

    def _nothing(self, device: str, watch: _Watch, now: float) -> None:
        return None

    def _heard(self, device: str, watch: _Watch, now: float) -> None:
        gap = now - watch.last_seen
        if 0 < gap < self.threshold(device):
            watch.interval = gap if watch.interval is None else watch.interval + 0.1 * (gap - watch.interval)
        watch.last_seen = max(watch.last_seen, now)

    def _overdue(self, device: str, watch: _Watch, now: float) -> SilenceTransition:
        watch.phase, watch.since = Presence.SILENT, watch.last_seen
        return SilenceTransition(device, AlertState.OPEN, watch.since, None, "timeout")

    def _lost(self, device: str, watch: _Watch, now: float) -> SilenceTransition:
        watch.phase, watch.since = Presence.SILENT, now
        return SilenceTransition(device, AlertState.OPEN, now, None, "will")

    def _returned(self, device: str, watch: _Watch, now: float) -> SilenceTransition:
        watch.phase, watch.last_seen, watch.interval = Presence.ONLINE, now, None
        return SilenceTransition(device, AlertState.CLOSED, watch.since, now, "returned")

    def _stopped(self, device: str, watch: _Watch, now: float) -> None:
        watch.phase, watch.last_seen = Presence.STOPPED, now

    def _stopped_while_silent(self, device: str, watch: _Watch, now: float) -> SilenceTransition:
        watch.phase, watch.last_seen = Presence.STOPPED, now
        return SilenceTransition(device, AlertState.CLOSED, watch.since, now, "shutdown")

    def _restarted(self, device: str, watch: _Watch, now: float) -> None:
        watch.phase, watch.last_seen, watch.interval = Presence.ONLINE, now, None


_PresenceHandler = Callable[[SilenceWatch, str, _Watch, float], SilenceTransition | None]
_PRESENCE_TABLE: Final[dict[tuple[Presence, PresenceEvent], _PresenceHandler]] = {
    (Presence.ONLINE, PresenceEvent.SEEN): SilenceWatch._heard,
    (Presence.ONLINE, PresenceEvent.WILL): SilenceWatch._lost,
    (Presence.ONLINE, PresenceEvent.SHUTDOWN): SilenceWatch._stopped,
    (Presence.ONLINE, PresenceEvent.TIMEOUT): SilenceWatch._overdue,
    (Presence.SILENT, PresenceEvent.SEEN): SilenceWatch._returned,
    (Presence.SILENT, PresenceEvent.WILL): SilenceWatch._nothing,
    (Presence.SILENT, PresenceEvent.SHUTDOWN): SilenceWatch._stopped_while_silent,
    (Presence.SILENT, PresenceEvent.TIMEOUT): SilenceWatch._nothing,
    (Presence.STOPPED, PresenceEvent.SEEN): SilenceWatch._restarted,
    (Presence.STOPPED, PresenceEvent.WILL): SilenceWatch._nothing,
    (Presence.STOPPED, PresenceEvent.SHUTDOWN): SilenceWatch._nothing,
    (Presence.STOPPED, PresenceEvent.TIMEOUT): SilenceWatch._nothing,
}

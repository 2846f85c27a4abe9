"""What a batch of readings messages adds up to, kept the same way by every backend.

Both stores write a batch the same way after their own insert: per message a `messages` row and a
`StoredMessage` for the pipeline, per source the seq range and counts, per device the time last
seen and the counts. Only the SQL that writes these differs; this is the arithmetic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cloud.store.api import ReadingsItem, StoredMessage


@dataclass(slots=True)
class BatchTally:
    """Accumulates one batch: `add` per message in arrival order, then write the three lists."""

    out: list[StoredMessage] = field(default_factory=list)
    messages: list[tuple[Any, ...]] = field(default_factory=list)
    """(id, msg_id, device, epoch, kind, received_at, sent_at, readings, stored, duplicates,
    rejected, source_id, lo_seq, hi_seq, min_ts, max_ts) per message."""
    sources: dict[int, list[float]] = field(default_factory=dict)  # [stored, rejected, lo, hi, seen]
    devices: dict[str, list[float]] = field(default_factory=dict)  # [seen_at, messages, readings]

    def add(
        self,
        mid: int,
        item: ReadingsItem,
        src: int,
        *,
        seqs: Sequence[int],
        tss: Sequence[float],
        new: list[tuple[int, float, float]],
        rejected: int,
    ) -> None:
        """One message: `seqs`/`tss` of the readings it stored, `new` their (series, ts, value)."""
        stored = len(new)
        msg = item.batch
        confirmable = [r.seq for r in item.accepted] + [d.seq for d in item.dead if d.seq is not None]
        if confirmable:
            lo, hi = min(confirmable), max(confirmable)
            acc = self.sources.get(src)
            if acc is None:
                self.sources[src] = [stored, rejected, lo, hi, item.received_at]
            else:
                acc[0] += stored
                acc[1] += rejected
                acc[2] = min(acc[2], lo)
                acc[3] = max(acc[3], hi)
                acc[4] = max(acc[4], item.received_at)
        dev = self.devices.get(msg.device)
        if dev is None:
            self.devices[msg.device] = [item.received_at, 1, stored]
        else:
            dev[0] = max(dev[0], item.received_at)
            dev[1] += 1
            dev[2] += stored
        self.messages.append(
            (
                mid, msg.msg_id, msg.device, msg.epoch, "backfill" if item.late else "telemetry",
                item.received_at, msg.sent_at, len(item.accepted) + len(item.dead), stored,
                len(item.accepted) - stored, len(item.dead), src if stored else None,
                min(seqs) if stored else None, max(seqs) if stored else None,
                min(tss) if tss else None, max(tss) if tss else None,
            )
        )  # fmt: skip
        self.out.append(StoredMessage(mid, item, new, len(item.accepted) - stored, rejected))

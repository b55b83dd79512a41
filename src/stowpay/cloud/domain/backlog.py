"""Readers' offline backlogs as their heartbeats report them: the money a reader holds.

A heartbeat may carry the reader's backlog (`docs/reader-protocol.md`): how many payments it
holds, their sums by currency and when the oldest was stored. The latest report is kept on
the reader (private fields, never served on `/v1`), and a sample goes into `reader_samples`
(migration 6) whenever the backlog changed, or once a minute otherwise, for the dashboard's
chart of amounts at risk over time. What a reader holds while it cannot reach the cloud is
known only once it reports again: the cloud shows the last report and its age.

The reader's software version is tracked too: when it last changed (`_sw_updated_at`), the
basis of the 30-day offline-readiness shown on the dashboard (Stripe's rule: a reader that has
not connected online, or whose software was not updated, within 30 days cannot go offline).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..storage import Tx, reports

#: The private reader fields this module keeps.
BACKLOG_FIELD = "_offline_backlog"
SAMPLED_FIELD = "_backlog_sampled_at"
SW_UPDATED_FIELD = "_sw_updated_at"
#: A sample at least this often (seconds) while a reader reports an unchanged backlog.
SAMPLE_EVERY = 60.0
#: Stripe's window for offline use after the last online connection and software update.
READINESS_WINDOW = 30 * 86400.0


@dataclass(frozen=True)
class Backlog:
    """A reader's offline backlog, as it reported it."""

    stored_count: int
    amounts: dict[str, int]
    oldest_stored_at: float | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "stored_count": self.stored_count,
            "amounts": dict(sorted(self.amounts.items())),
            "oldest_stored_at": self.oldest_stored_at,
        }


def note_software(reader: dict[str, Any], version: str, now: float) -> None:
    """Before a heartbeat is recorded: keep when the reader's software version last changed."""
    if reader.get("device_sw_version") != version or SW_UPDATED_FIELD not in reader:
        reader[SW_UPDATED_FIELD] = now


def note_backlog(
    tx: Tx, account_id: str, reader: dict[str, Any], backlog: Backlog | None, now: float
) -> None:
    """Before a heartbeat is recorded: keep the reported backlog on the reader, and a sample
    when it changed or the last one is a minute old."""
    if backlog is None:
        return
    report = backlog.as_dict()
    previous = reader.get(BACKLOG_FIELD)
    last_sample = reader.get(SAMPLED_FIELD)
    changed = previous is None or {k: v for k, v in previous.items() if k != "at"} != report
    reader[BACKLOG_FIELD] = {**report, "at": now}
    if changed or last_sample is None or now - float(last_sample) >= SAMPLE_EVERY:
        reader[SAMPLED_FIELD] = now
        reports.add_sample(
            tx,
            account_id,
            reader["id"],
            at=now,
            stored_count=backlog.stored_count,
            amounts=report["amounts"],
            oldest_stored_at=backlog.oldest_stored_at,
        )


def samples(tx: Tx, account_id: str, *, since: float, limit: int = 5000) -> list[dict[str, Any]]:
    """The account's backlog samples since `since`, oldest first."""
    return reports.samples(tx, account_id, since=since, limit=limit)


def series(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The account's total backlog after each sample: every reader's latest report summed."""
    latest: dict[str, dict[str, Any]] = {}
    out: list[dict[str, Any]] = []
    for p in points:
        latest[p["reader"]] = p
        amounts: dict[str, int] = {}
        for sample in latest.values():
            for currency, amount in sample["amounts"].items():
                amounts[currency] = amounts.get(currency, 0) + int(amount)
        count = sum(int(x["stored_count"]) for x in latest.values())
        out.append({"at": p["at"], "stored_count": count, "amounts": amounts})
    return out


def readiness_until(reader: dict[str, Any]) -> float | None:
    """Until when the reader may take offline payments by the 30-day rule (None: unknown).

    The reader counts its software as checked at each heartbeat the cloud answers, and its
    online connection as the last one: both are the last time the cloud saw it.
    """
    seen_ms = reader.get("last_seen_at")
    if not isinstance(seen_ms, int | float):
        return None
    return float(seen_ms) / 1000.0 + READINESS_WINDOW


def reported(reader: dict[str, Any]) -> dict[str, Any] | None:
    """The last backlog the reader reported (with `at`), or None."""
    found = reader.get(BACKLOG_FIELD)
    return dict(found) if isinstance(found, dict) else None

"""What the dashboard's pages show, read for one account inside the caller's transaction."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .. import reconcile
from ..domain import backlog
from ..domain import terminal as terminal_domain
from ..storage import Tx, reports

#: A reader not heard from in this long shows as offline (heartbeats come every 10 s).
ONLINE_WITHIN = 60.0
#: Warn when the oldest stored payment has used this share of the merchant's maximum age.
AGE_WARNING_SHARE = 0.75
#: How far back the payments page and the chart look.
PAGE_WINDOW = 30 * 86400.0
CHART_WINDOW = 24 * 3600.0
MAX_DELIVERIES = 200


def payments(
    tx: Tx, account_id: str, filters: Mapping[str, str], *, now: float
) -> tuple[list[dict[str, Any]], list[str]]:
    """The payments table's rows (newest first, filtered) and the readers to filter by."""
    since = now - PAGE_WINDOW
    day = filters.get("date") or ""
    start = end = None
    if day:
        try:
            start, end = reconcile.parse_day(day)
        except ValueError:
            start = end = None
        else:
            since = min(since, start)
    rows = reconcile.report(tx, account_id, since=since, now=now).rows
    readers = sorted({str(r["reader"]) for r in rows if r["reader"]})
    status, offline, reader = filters.get("status"), filters.get("offline"), filters.get("reader")
    shown = []
    for r in rows:
        if status and r["status"] != status:
            continue
        if offline in ("yes", "no") and r["offline"] != (offline == "yes"):
            continue
        if reader and r["reader"] != reader:
            continue
        sold = r["stored_at"] if r["offline"] and r["stored_at"] else r["created"]
        if start is not None and end is not None and not start <= sold < end:
            continue
        shown.append(r)
    return shown, readers


def payment(
    tx: Tx, account_id: str, pi_id: str
) -> (
    tuple[
        dict[str, Any],
        dict[str, Any],
        list[dict[str, Any]],
        list[tuple[dict[str, Any], list[dict[str, Any]]]],
    ]
    | None
):
    """One payment: its report row, the PaymentIntent, its charges, and its events with their
    webhook deliveries (attempts included). None when the account has no such payment."""
    pi = tx.get(account_id, pi_id, "payment_intent")
    if pi is None:
        return None
    row = reconcile.payment_rows(tx, account_id, [pi])[0]
    charges = reports.objects(tx, account_id, "charge", refs=[pi_id], oldest_first=True)
    refs = [pi_id, *(ch["id"] for ch in charges)]
    events = reports.objects(tx, account_id, "event", refs=refs, oldest_first=True)
    return row, pi, charges, [(e, tx.deliveries(account_id, e["id"])) for e in events]


def readers(tx: Tx, account_id: str, *, now: float) -> list[dict[str, Any]]:
    """Each reader: network, last seen, software, readiness, and what it holds offline."""
    found = reports.objects(tx, account_id, terminal_domain.READER, oldest_first=True)
    out = []
    for reader in found:
        seen_ms = reader.get("last_seen_at")
        seen = float(seen_ms) / 1000 if isinstance(seen_ms, int | float) else None
        held = backlog.reported(reader) or {}
        oldest = held.get("oldest_stored_at") if held.get("stored_count") else None
        oldest_age = (now - float(oldest)) if isinstance(oldest, int | float) else None
        config = terminal_domain.effective_configuration(tx, account_id, reader.get("location"))
        policy = config.get("stowpay_offline_policy") or {}
        max_age = policy.get("max_record_age")
        warning, expired = None, False
        if isinstance(max_age, int | float) and oldest_age is not None:
            if oldest_age >= max_age:
                warning, expired = "past the maximum age: forward now", True
            elif oldest_age >= AGE_WARNING_SHARE * max_age:
                warning = f"maximum age in {_duration(max_age - oldest_age)}"
        until = backlog.readiness_until(reader)
        out.append(
            {
                "id": reader["id"],
                "label": reader.get("label"),
                "online": seen is not None
                and now - seen <= ONLINE_WITHIN
                and reader.get("status") == "online",
                "last_seen": seen,
                "software": reader.get("device_sw_version"),
                "ready_days": None if until is None else (until - now) / 86400,
                "stored_count": held.get("stored_count", 0) if held else None,
                "amounts": held.get("amounts") or {},
                "oldest_age": oldest_age,
                "max_record_age": max_age,
                "age_warning": warning,
                "age_expired": expired,
                "reported_at": held.get("at"),
            }
        )
    return out


def _duration(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def backlog_series(tx: Tx, account_id: str, *, now: float) -> list[dict[str, Any]]:
    """The account's total backlog over the last day, for the chart."""
    return backlog.series(backlog.samples(tx, account_id, since=now - CHART_WINDOW))


def deliveries(tx: Tx, account_id: str) -> list[dict[str, Any]]:
    """The account's newest webhook deliveries, with their event's type and endpoint's URL."""
    rows = reports.newest_deliveries(tx, account_id, MAX_DELIVERIES)
    out = []
    events: dict[str, dict[str, Any] | None] = {}
    endpoints: dict[str, dict[str, Any] | None] = {}
    for row in rows:
        event_id, endpoint_id = row["event_id"], row["endpoint_id"]
        if event_id not in events:
            events[event_id] = tx.get(account_id, event_id, "event")
        if endpoint_id not in endpoints:
            endpoints[endpoint_id] = tx.get(account_id, endpoint_id, "webhook_endpoint")
        event, endpoint = events[event_id], endpoints[endpoint_id]
        row["event_type"] = event.get("type") if event else None
        row["url"] = endpoint.get("url") if endpoint else None
        out.append(row)
    return out


def resend(tx: Tx, account_id: str, delivery_id: str, *, new_id: str, now: float) -> str | None:
    """Queue the delivery's event to its endpoint again, as a new delivery; its id, or None
    when the account has no such delivery."""
    row = reports.delivery(tx, account_id, delivery_id)
    if row is None:
        return None
    tx.insert_delivery(
        {
            "id": new_id,
            "account_id": account_id,
            "endpoint_id": row["endpoint_id"],
            "event_id": row["event_id"],
            "created": int(now),
            "state": "pending",
            "attempts": 0,
            "next_attempt_at": now,
        }
    )
    return new_id

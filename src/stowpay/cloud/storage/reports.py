"""Reads for the dashboard and reconciliation, and the readers' backlog samples (migration 6).

Every function is scoped to the account it is given, like `Tx`'s own methods.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa

from . import tables as t
from .store import Tx

_CHUNK = 500
_o = t.objects.c


def _chunks(items: Sequence[str]) -> Iterable[list[str]]:
    unique = list(dict.fromkeys(items))
    for start in range(0, len(unique), _CHUNK):
        yield unique[start : start + _CHUNK]


def objects(
    tx: Tx,
    account_id: str,
    type_: str,
    *,
    since: float | None = None,
    refs: Sequence[str] | None = None,
    limit: int | None = None,
    oldest_first: bool = False,
) -> list[dict[str, Any]]:
    """The account's objects of a type, newest first: all, made since `since`, and/or with
    one of `refs` as their `ref` (a charge's PaymentIntent, an event's object)."""
    q = sa.select(_o.body).where(_o.account_id == account_id, _o.type == type_)
    if since is not None:
        q = q.where(_o.created >= int(since))
    q = q.order_by(_o.seq.asc() if oldest_first else _o.seq.desc())
    if refs is None:
        if limit is not None:
            q = q.limit(limit)
        return [json.loads(r.body) for r in tx.conn.execute(q)]
    out: list[dict[str, Any]] = []
    for chunk in _chunks(refs):
        out.extend(json.loads(r.body) for r in tx.conn.execute(q.where(_o.ref.in_(chunk))))
    return out


def deliveries_by_event(
    tx: Tx, account_id: str, event_ids: Sequence[str]
) -> dict[str, list[dict[str, Any]]]:
    """Each event's webhook deliveries (rows of `webhook_deliveries`, oldest first)."""
    d = t.webhook_deliveries.c
    found: dict[str, list[dict[str, Any]]] = {}
    for chunk in _chunks(event_ids):
        rows = tx.conn.execute(
            sa.select(t.webhook_deliveries)
            .where(d.account_id == account_id, d.event_id.in_(chunk))
            .order_by(d.created, d.id)
        ).all()
        for r in rows:
            found.setdefault(str(r.event_id), []).append(r._asdict())
    return found


def newest_deliveries(tx: Tx, account_id: str, limit: int) -> list[dict[str, Any]]:
    """The account's newest webhook deliveries."""
    d = t.webhook_deliveries.c
    rows = tx.conn.execute(
        sa.select(t.webhook_deliveries)
        .where(d.account_id == account_id)
        .order_by(d.created.desc(), d.id.desc())
        .limit(limit)
    ).all()
    return [r._asdict() for r in rows]


def delivery(tx: Tx, account_id: str, delivery_id: str) -> dict[str, Any] | None:
    """One of the account's webhook deliveries, or None."""
    d = t.webhook_deliveries.c
    row = tx.conn.execute(
        sa.select(t.webhook_deliveries).where(d.id == delivery_id, d.account_id == account_id)
    ).first()
    return None if row is None else row._asdict()


def secret_key_hash(tx: Tx, account_id: str) -> str | None:
    """The stored hash of the account's secret key, or None when there is no such account."""
    row = tx.conn.execute(
        sa.select(t.accounts.c.secret_key_hash).where(t.accounts.c.id == account_id)
    ).first()
    return None if row is None else str(row.secret_key_hash)


# -- readers' backlog samples ----------------------------------------------------------------


def add_sample(
    tx: Tx,
    account_id: str,
    reader_id: str,
    *,
    at: float,
    stored_count: int,
    amounts: dict[str, int],
    oldest_stored_at: float | None,
) -> None:
    """Keep one report of a reader's backlog."""
    tx.conn.execute(
        t.reader_samples.insert().values(
            account_id=account_id,
            reader_id=reader_id,
            at=at,
            stored_count=stored_count,
            amounts=json.dumps(amounts, sort_keys=True),
            oldest_stored_at=oldest_stored_at,
        )
    )


def samples(tx: Tx, account_id: str, *, since: float, limit: int) -> list[dict[str, Any]]:
    """The account's newest `limit` backlog samples since `since`, oldest first."""
    s = t.reader_samples.c
    rows = tx.conn.execute(
        sa.select(s.reader_id, s.at, s.stored_count, s.amounts, s.oldest_stored_at)
        .where(s.account_id == account_id, s.at >= since)
        .order_by(s.at.desc(), s.seq.desc())
        .limit(limit)
    ).all()
    out = [
        {
            "reader": r.reader_id,
            "at": float(r.at),
            "stored_count": int(r.stored_count),
            "amounts": json.loads(r.amounts),
            "oldest_stored_at": r.oldest_stored_at,
        }
        for r in rows
    ]
    out.reverse()
    return out

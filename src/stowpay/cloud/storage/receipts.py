"""The receipt outbox and receipt pages, in the caller's transaction (see `docs/receipts.md`).

Writes go straight to the transaction's connection, also under a `BatchTx`: they commit with
the capture or refund that made them, or not at all.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from . import tables as t
from .store import Tx

_e = t.receipt_emails.c
_p = t.receipt_pages.c
# Built once: every approved charge gets a page, so this runs on the payment's hot path.
_ADD_PAGE = t.receipt_pages.insert()
_QUEUED = sa.select(_e.id).where(_e.dedup_key == sa.bindparam("b_key"))
_QUEUE = t.receipt_emails.insert()


def queue_email(tx: Tx, row: dict[str, Any]) -> bool:
    """Queue one email receipt; False (and nothing written) when its `dedup_key` is queued
    already: a receipt exists once, however often the same capture is reported."""
    if tx._rows(_QUEUED, {"b_key": row["dedup_key"]}):
        return False
    tx._run(_QUEUE, row)
    return True


def add_page(tx: Tx, token_hash: str, account_id: str, charge_id: str) -> None:
    """Make a receipt page for a charge, found by the hash of its token."""
    tx._run(_ADD_PAGE, {"token_hash": token_hash, "account_id": account_id, "charge_id": charge_id})


def page(tx: Tx, token_hash: str) -> tuple[str, str] | None:
    """The (account, charge) a receipt page shows, or None."""
    row = tx.conn.execute(
        sa.select(_p.account_id, _p.charge_id).where(_p.token_hash == token_hash)
    ).first()
    return None if row is None else (str(row.account_id), str(row.charge_id))


def claim_emails(tx: Tx, now: float, lease: float, limit: int) -> list[dict[str, Any]]:
    """Take up to `limit` due receipts, leasing each for `lease` seconds; a receipt whose
    sender died is due again when its lease ends."""
    q = (
        sa.select(t.receipt_emails)
        .where(_e.state == "pending", _e.next_attempt_at <= now)
        .order_by(_e.next_attempt_at)
        .limit(limit)
    )
    if tx.conn.dialect.name == "postgresql":
        # Several cloud processes: each row goes to one of them.
        q = q.with_for_update(skip_locked=True)
    rows = [dict(r._asdict()) for r in tx.conn.execute(q).all()]
    for r in rows:
        tx.conn.execute(
            t.receipt_emails.update().where(_e.id == r["id"]).values(next_attempt_at=now + lease)
        )
    return rows


def finish_email(
    tx: Tx,
    email_id: str,
    *,
    at: float,
    state: str,
    error: str | None,
    next_attempt_at: float | None,
) -> None:
    """Record one attempt: sent, to be retried at `next_attempt_at`, or failed for good."""
    tx.conn.execute(
        t.receipt_emails.update()
        .where(_e.id == email_id)
        .values(
            attempts=_e.attempts + 1,
            state=state,
            last_attempt_at=at,
            last_error=error,
            next_attempt_at=next_attempt_at,
            sent_at=at if state == "sent" else None,
        )
    )


def emails(
    tx: Tx,
    account_id: str,
    *,
    charge_id: str | None = None,
    state: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """An account's email receipts, newest first (of one charge, or in one state)."""
    q = sa.select(t.receipt_emails).where(_e.account_id == account_id)
    if charge_id is not None:
        q = q.where(_e.charge_id == charge_id)
    if state is not None:
        q = q.where(_e.state == state)
    q = q.order_by(_e.created.desc(), _e.id.desc()).limit(limit)
    return [dict(r._asdict()) for r in tx.conn.execute(q).all()]

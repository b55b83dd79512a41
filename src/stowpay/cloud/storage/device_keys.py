"""Storage for readers' device keys: a hash of each key and the reader it speaks for.

A device key is a reader's own credential on the device API. Like an account's secret key,
only its SHA-256 is kept (migration 4), so a copied database gives no device access. Each
reader has at most one live key: storing a new one replaces the old in one statement, which
holds on SQLite and on PostgreSQL alike when two activations race.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from . import tables as t
from .store import Tx

_k = t.terminal_device_keys.c


def replace_device_key(
    tx: Tx, key_hash: str, *, account_id: str, reader_id: str, created: float
) -> None:
    """Make `key_hash` the reader's only key; any older key of the reader stops working."""
    values = {
        "key_hash": key_hash,
        "account_id": account_id,
        "reader_id": reader_id,
        "created": created,
    }
    stmt: Any
    if tx.conn.dialect.name == "postgresql":
        stmt = postgresql.insert(t.terminal_device_keys).values(**values)
    else:
        stmt = sqlite.insert(t.terminal_device_keys).values(**values)
    stmt = stmt.on_conflict_do_update(
        index_elements=[_k.reader_id],
        set_={"key_hash": stmt.excluded.key_hash, "account_id": account_id, "created": created},
    )
    tx.conn.execute(stmt)


def device_key_owner(tx: Tx, key_hash: str) -> tuple[str, str] | None:
    """The (account, reader) a key belongs to, or None for an unknown or replaced key."""
    row = tx.conn.execute(
        sa.select(_k.account_id, _k.reader_id).where(_k.key_hash == key_hash)
    ).first()
    return None if row is None else (str(row.account_id), str(row.reader_id))


def forget_device_keys(tx: Tx, reader_id: str) -> int:
    """Drop the key of a reader that is gone; how many rows went."""
    return int(
        tx.conn.execute(t.terminal_device_keys.delete().where(_k.reader_id == reader_id)).rowcount
    )

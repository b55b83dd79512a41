"""Storage for the terminal's pending registrations, connection tokens and the sealing key.

These rows are not API objects of one account: a registration code exists before the reader
belongs to anyone, and a connection token is presented by a reader that has no API key. So
they live in their own tables (migration 2), looked up by a hash of the secret, and every
"use once" rule is a conditional write whose row count says who won, which holds on SQLite
and on PostgreSQL alike when two requests race.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from . import tables as t
from .store import Tx


def _insert_ignoring_conflict(tx: Tx, table: sa.Table, key: str, values: dict[str, Any]) -> bool:
    """Insert a row unless one with the same `key` exists; True when this call inserted it."""
    if tx.conn.dialect.name == "postgresql":
        stmt: Any = postgresql.insert(table).on_conflict_do_nothing(index_elements=[key])
    else:
        stmt = sqlite.insert(table).on_conflict_do_nothing(index_elements=[key])
    return bool(tx.conn.execute(stmt.values(**values)).rowcount == 1)


# -- objects made on first use -------------------------------------------------------------


def insert_object_once(tx: Tx, account_id: str, obj: dict[str, Any], *, ref: str | None) -> bool:
    """Store `obj` unless an object with its id exists already; True when this call stored it.

    For objects whose id is fixed in advance (an account's default configuration): two
    requests making it at the same moment both succeed, and one row results. Such objects
    carry no metadata (the metadata index is not written here).
    """
    if obj.get("metadata"):
        raise ValueError("insert_object_once is for objects without metadata")
    return _insert_ignoring_conflict(
        tx,
        t.objects,
        "id",
        {
            "id": obj["id"],
            "account_id": account_id,
            "type": obj["object"],
            "created": obj["created"],
            "ref": ref,
            "status": obj.get("status"),
            "amount": None,
            "body": json.dumps(obj),
        },
    )


def secret_once(tx: Tx, name: str, make: Callable[[], bytes], created: int) -> bytes:
    """The cloud secret `name`, made with `make()` and stored if there is none yet.

    When two processes make it at the same moment, one value is kept and both get that one.
    """
    found = tx.secret(name)
    if found is not None:
        return found
    _insert_ignoring_conflict(
        tx, t.cloud_secrets, "name", {"name": name, "value": make(), "created": created}
    )
    kept = tx.secret(name)
    if kept is None:  # pragma: no cover - the insert above or a racing one wrote it
        raise RuntimeError(f"cloud secret {name!r} could not be stored")
    return kept


# -- registration codes --------------------------------------------------------------------

_r = t.terminal_registrations.c


def put_registration(
    tx: Tx, code_hash: str, device: dict[str, Any], *, created: float, expires_at: float
) -> None:
    """Keep a pending registration: a device waiting for a merchant to enter its code."""
    tx.conn.execute(
        t.terminal_registrations.insert().values(
            code_hash=code_hash,
            created=created,
            expires_at=expires_at,
            device=json.dumps(device),
        )
    )


def claim_registration(
    tx: Tx, code_hash: str, *, account_id: str, reader_id: str, now: float
) -> dict[str, Any] | None:
    """Give a pending, unexpired registration to a reader; its device details, or None.

    The condition `reader_id IS NULL` in the same statement makes the claim single-use even
    when two merchants enter the same code at once.
    """
    claimed = tx.conn.execute(
        t.terminal_registrations.update()
        .where(_r.code_hash == code_hash, _r.reader_id.is_(None), _r.expires_at > now)
        .values(account_id=account_id, reader_id=reader_id, redeemed_at=now)
    ).rowcount
    if claimed != 1:
        return None
    row = tx.conn.execute(sa.select(_r.device).where(_r.code_hash == code_hash)).one()
    return json.loads(row.device)  # type: ignore[no-any-return]


def registration(tx: Tx, code_hash: str) -> dict[str, Any] | None:
    """A registration's row (pending or claimed), or None."""
    row = tx.conn.execute(
        sa.select(
            _r.created, _r.expires_at, _r.device, _r.account_id, _r.reader_id, _r.redeemed_at
        ).where(_r.code_hash == code_hash)
    ).first()
    if row is None:
        return None
    found = row._asdict()
    found["device"] = json.loads(found["device"])
    return found


def prune_registrations(tx: Tx, expired_before: float) -> int:
    """Forget registrations that expired before `expired_before`; how many went."""
    return int(
        tx.conn.execute(
            t.terminal_registrations.delete().where(_r.expires_at < expired_before)
        ).rowcount
    )


# -- connection tokens ---------------------------------------------------------------------

_c = t.terminal_connection_tokens.c


def put_connection_token(
    tx: Tx,
    secret_hash: str,
    *,
    account_id: str,
    location: str | None,
    created: float,
    expires_at: float,
) -> None:
    """Keep a connection token (by the hash of its secret) until it is used or expires."""
    tx.conn.execute(
        t.terminal_connection_tokens.insert().values(
            secret_hash=secret_hash,
            account_id=account_id,
            location=location,
            created=created,
            expires_at=expires_at,
        )
    )


def take_connection_token(tx: Tx, secret_hash: str, now: float) -> tuple[str, str | None] | None:
    """Use a connection token up: its (account, location) if it was unused and unexpired.

    The row is deleted whatever its expiry; only the request whose delete removed it may
    use it, so of two racing redemptions exactly one succeeds.
    """
    row = tx.conn.execute(
        sa.select(_c.account_id, _c.location, _c.expires_at).where(_c.secret_hash == secret_hash)
    ).first()
    if row is None:
        return None
    removed = tx.conn.execute(
        t.terminal_connection_tokens.delete().where(_c.secret_hash == secret_hash)
    ).rowcount
    if removed != 1 or row.expires_at <= now:
        return None
    return str(row.account_id), row.location


def prune_connection_tokens(tx: Tx, now: float) -> int:
    """Forget expired connection tokens; how many went."""
    return int(
        tx.conn.execute(t.terminal_connection_tokens.delete().where(_c.expires_at <= now)).rowcount
    )

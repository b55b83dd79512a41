"""Versioned schema migrations, applied in order, each in its own transaction.

A migration is a function of a connection, registered with its version. Add new ones at the
end; never edit one that has shipped.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import sqlalchemy as sa

from . import tables as t

Migration = Callable[[sa.Connection], None]
MIGRATIONS: list[tuple[int, str, Migration]] = []


def migration(version: int, name: str) -> Callable[[Migration], Migration]:
    def register(fn: Migration) -> Migration:
        MIGRATIONS.append((version, name, fn))
        return fn

    return register


@migration(1, "initial")
def _initial(conn: sa.Connection) -> None:
    for table in (
        t.accounts,
        t.objects,
        t.object_metadata,
        t.idempotency_keys,
        t.webhook_deliveries,
        t.webhook_attempts,
        t.cloud_secrets,
    ):
        table.create(conn)


@migration(2, "terminal registration codes and connection tokens")
def _terminal(conn: sa.Connection) -> None:
    for table in (t.terminal_registrations, t.terminal_connection_tokens):
        table.create(conn)


@migration(3, "64-bit creation times")
def _wide_created(conn: sa.Connection) -> None:
    # A 32-bit `created` ends in January 2038. SQLite's integers are 64-bit already.
    if conn.dialect.name != "postgresql":
        return
    wide = (t.accounts, t.objects, t.idempotency_keys, t.webhook_deliveries, t.cloud_secrets)
    for table in wide:
        conn.execute(sa.text(f"ALTER TABLE {table.name} ALTER COLUMN created TYPE BIGINT"))


@migration(4, "reader device keys")
def _device_keys(conn: sa.Connection) -> None:
    t.terminal_device_keys.create(conn)


@migration(5, "receipt emails and receipt pages")
def _receipts(conn: sa.Connection) -> None:
    for table in (t.receipt_emails, t.receipt_pages):
        table.create(conn)


@migration(6, "reader backlog samples")
def _reader_samples(conn: sa.Connection) -> None:
    t.reader_samples.create(conn)


@migration(7, "longer object ids")
def _long_object_ids(conn: sa.Connection) -> None:
    # A kept offline rejection's id names its reader, sequence and a content digest: past
    # 64 characters. SQLite does not enforce a VARCHAR's length; PostgreSQL does.
    if conn.dialect.name != "postgresql":
        return
    conn.execute(sa.text("ALTER TABLE objects ALTER COLUMN id TYPE VARCHAR(128)"))
    conn.execute(sa.text("ALTER TABLE object_metadata ALTER COLUMN object_id TYPE VARCHAR(128)"))


@migration(8, "fewer index pages per write")
def _fewer_index_pages(conn: sa.Connection) -> None:
    # Each index a request's insert touches is one more page its commit writes and flushes.
    # `objects_by_ref` keeps only objects with a parent (every lookup names one); the age
    # index on idempotency keys is kept on PostgreSQL only (SQLite prunes in rowid order).
    # Migration 1 builds tables from the current definitions, so a new database has the
    # narrow `objects_by_ref` already: it is built anew all the same (empty, at once).
    conn.execute(sa.text("DROP INDEX IF EXISTS objects_by_ref"))
    next(i for i in t.objects.indexes if i.name == "objects_by_ref").create(conn)
    if conn.dialect.name == "postgresql":
        conn.execute(
            sa.text("CREATE INDEX IF NOT EXISTS idempotency_by_age ON idempotency_keys (created)")
        )
    else:
        conn.execute(sa.text("DROP INDEX IF EXISTS idempotency_by_age"))


#: The PostgreSQL advisory lock migrations run under (any fixed number would do).
_LOCK = 0x5354_4F57


def apply(engine: sa.Engine) -> list[int]:
    """Bring the database up to date; return the versions applied now.

    On PostgreSQL several cloud processes may start at once on one database: they take turns
    (an advisory lock), so each migration runs once and the others find it done.
    """
    if engine.dialect.name != "postgresql":
        return _apply(engine)
    with engine.connect() as lock:
        lock.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": _LOCK})
        try:
            return _apply(engine)
        finally:
            lock.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _LOCK})
            lock.commit()


def _apply(engine: sa.Engine) -> list[int]:
    with engine.begin() as conn:
        t.schema_migrations.create(conn, checkfirst=True)
    applied: list[int] = []
    for version, name, fn in sorted(MIGRATIONS, key=lambda m: m[0]):
        with engine.begin() as conn:
            done = conn.execute(
                sa.select(t.schema_migrations.c.version).where(
                    t.schema_migrations.c.version == version
                )
            ).first()
            if done is not None:
                continue
            fn(conn)
            conn.execute(
                t.schema_migrations.insert().values(
                    version=version, name=name, applied_at=time.time()
                )
            )
            applied.append(version)
    return applied

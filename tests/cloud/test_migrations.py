"""Migrations bring a database made by an earlier version to the current schema."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from stowpay.cloud.storage import IdempotencyRecord, Store


def _index_sql(store: Store, name: str) -> str | None:
    with store.read() as tx:
        if store.is_sqlite:
            query = "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = :n"
        else:
            query = "SELECT indexdef FROM pg_indexes WHERE indexname = :n"
        found = tx.conn.execute(sa.text(query), {"n": name}).scalar()
    return None if found is None else str(found)


def _obj(object_id: str, type_: str) -> dict[str, Any]:
    return {"id": object_id, "object": type_, "created": 1_700_000_000, "metadata": {}}


def test_migration_8_narrows_the_indexes_of_an_earlier_database(db_url: str) -> None:
    store = Store(db_url)
    store.migrate()
    # Back to the indexes as versions before migration 8 made them, with objects stored.
    with store.write() as tx:
        tx.conn.execute(sa.text("DROP INDEX objects_by_ref"))
        tx.conn.execute(sa.text("CREATE INDEX objects_by_ref ON objects (account_id, ref, type)"))
        tx.conn.execute(
            sa.text("CREATE INDEX IF NOT EXISTS idempotency_by_age ON idempotency_keys (created)")
        )
        tx.conn.execute(sa.text("DELETE FROM schema_migrations WHERE version = 8"))
        tx.insert("acct_1", _obj("pi_1", "payment_intent"))
        tx.insert("acct_1", _obj("ch_1", "charge"), ref="pi_1")
    assert _index_sql(store, "idempotency_by_age") is not None

    assert store.migrate() == [8]
    by_ref = _index_sql(store, "objects_by_ref")
    assert by_ref is not None and "WHERE" in by_ref and "ref IS NOT NULL" in by_ref
    by_age = _index_sql(store, "idempotency_by_age")
    assert (by_age is None) is store.is_sqlite  # kept on PostgreSQL only
    with store.read() as tx:
        found = tx.list_page("acct_1", "charge", limit=10, filters={"ref": "pi_1"})
    assert [o["id"] for o in found.data] == ["ch_1"]
    assert store.migrate() == []
    store.close()


def test_a_new_database_has_the_narrow_indexes(db_url: str) -> None:
    store = Store(db_url)
    store.migrate()
    by_ref = _index_sql(store, "objects_by_ref")
    assert by_ref is not None and "ref IS NOT NULL" in by_ref
    assert (_index_sql(store, "idempotency_by_age") is None) is store.is_sqlite
    store.close()


def _put(store: Store, key: str, created: int) -> None:
    with store.write() as tx:
        tx.idempotency_put("acct_1", key, IdempotencyRecord("f" * 64, created, 200, "req", b"{}"))


def _keys(store: Store) -> set[str]:
    with store.read() as tx:
        rows = tx.conn.execute(sa.text("SELECT key FROM idempotency_keys")).all()
    return {r[0] for r in rows}


def test_pruning_forgets_the_expired_idempotency_keys_and_keeps_the_rest(db_url: str) -> None:
    store = Store(db_url)
    store.migrate()
    for n in range(10):
        _put(store, f"old-{n}", 1_000 + n)
    for n in range(5):
        _put(store, f"new-{n}", 2_000 + n)
    with store.write() as tx:
        assert tx.idempotency_prune(1_500) == 10
        assert tx.idempotency_prune(1_500) == 0
    assert _keys(store) == {f"new-{n}" for n in range(5)}
    with store.write() as tx:
        assert tx.idempotency_prune(3_000) == 5  # every key expired
    assert _keys(store) == set()
    store.close()


def test_a_key_stored_out_of_order_is_never_forgotten_early(db_url: str) -> None:
    store = Store(db_url)
    store.migrate()
    _put(store, "a", 1_000)
    _put(store, "b", 2_000)
    _put(store, "c", 1_100)  # the clock was set back
    with store.write() as tx:
        tx.idempotency_prune(1_500)
    kept = _keys(store)
    assert {"a"}.isdisjoint(kept) and "b" in kept
    # SQLite's walk stops at "b" and leaves "c" to a later round; nothing unexpired goes.
    assert ("c" in kept) is store.is_sqlite
    with store.write() as tx:
        tx.idempotency_prune(2_500)
    assert _keys(store) == set()
    store.close()

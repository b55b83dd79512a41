"""`Store` transactions: what commits, what rolls back, and SQLite's kept connections."""

from __future__ import annotations

import gc
import sqlite3
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from stowpay.cloud.storage import IdempotencyRecord, Store
from stowpay.cloud.storage import tables as t


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store(db_url)
    s.migrate()
    yield s
    s.close()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    s = Store(str(tmp_path / "cloud.db"))
    s.migrate()
    yield s
    s.close()


def _record(n: int = 0) -> IdempotencyRecord:
    return IdempotencyRecord("f" * 64, 1_700_000_000 + n, 200, f"req_{n}", b"{}")


def _obj(object_id: str, metadata: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "id": object_id,
        "object": "payment_intent",
        "created": 1_700_000_000,
        "status": "requires_payment_method",
        "amount": 1000,
        "metadata": metadata or {},
    }


def _keys(store: Store) -> int:
    with store.read() as tx:
        return int(
            tx.conn.execute(sa.select(sa.func.count()).select_from(t.idempotency_keys)).scalar_one()
        )


def test_a_block_that_fails_leaves_nothing(store: Store) -> None:
    with pytest.raises(KeyError), store.write() as tx:
        tx.idempotency_put("acct_1", "k", _record())
        tx.insert("acct_1", _obj("pi_1"))
        raise KeyError("boom")
    with store.read() as tx:
        assert tx.idempotency_get("acct_1", "k") is None
        assert tx.get("acct_1", "pi_1") is None
    with store.write() as tx:  # and the next transaction starts clean
        tx.idempotency_put("acct_1", "k", _record())
    assert _keys(store) == 1


def test_work_through_sqlalchemy_is_in_the_same_transaction(store: Store) -> None:
    row = {"name": "a", "value": b"1", "created": 1}
    with pytest.raises(KeyError), store.write() as tx:
        tx.conn.execute(t.cloud_secrets.insert().values(**row))
        tx.idempotency_put("acct_1", "k", _record())
        raise KeyError("boom")
    with store.read() as tx:
        assert tx.secret("a") is None
    with store.write() as tx:
        tx.conn.execute(t.cloud_secrets.insert().values(**row))
        tx.idempotency_put("acct_1", "k", _record())
    with store.read() as tx:
        assert tx.secret("a") == b"1"
        assert tx.idempotency_get("acct_1", "k") is not None


def test_metadata_index_follows_every_update(store: Store) -> None:
    def found(key: str, value: str) -> list[str]:
        with store.read() as tx:
            page = tx.list_page("acct_1", "payment_intent", limit=10, metadata={key: value})
            assert page is not None
            return [o["id"] for o in page.data]

    with store.write() as tx:
        tx.insert("acct_1", _obj("pi_bare"))
        tx.insert("acct_1", _obj("pi_tagged", {"order": "A-1"}))
    with store.write() as tx:  # loaded without metadata, then given some
        pi = tx.get("acct_1", "pi_bare")
        assert pi is not None
        pi["metadata"] = {"order": "B-2"}
        tx.update("acct_1", pi)
        tagged = tx.get("acct_1", "pi_tagged")
        assert tagged is not None
        tagged["metadata"] = {"order": "C-3"}
        tx.update("acct_1", tagged)
    assert found("order", "B-2") == ["pi_bare"]
    assert found("order", "C-3") == ["pi_tagged"]
    assert found("order", "A-1") == []
    with store.write() as tx:  # inserted without metadata and updated with some, in one go
        tx.insert("acct_1", _obj("pi_late"))
        tx.update("acct_1", _obj("pi_late", {"order": "D-4"}))
        tx.update("acct_1", _obj("pi_bare"))  # and metadata taken away again
    assert found("order", "D-4") == ["pi_late"]
    assert found("order", "B-2") == []


def test_insert_and_update_return_the_stored_json(store: Store) -> None:
    obj = _obj("pi_1", {"k": "v"})
    with store.write() as tx:
        inserted = tx.insert("acct_1", obj)
        obj["status"] = "succeeded"
        updated = tx.update("acct_1", obj)
        row = tx.conn.execute(sa.select(t.objects.c.body).where(t.objects.c.id == "pi_1")).one()
    assert inserted is not None and '"requires_payment_method"' in inserted
    assert updated == row.body


def test_many_threads_at_once_each_keep_a_working_connection(sqlite_store: Store) -> None:
    # More threads than SQLAlchemy's SingletonThreadPool keeps by default (5): past that it
    # closes a connection another thread may be using, which crashes sqlite3.
    threads_n, rounds = 12, 3
    barrier = threading.Barrier(threads_n, timeout=30)
    failures: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for r in range(rounds):
                with sqlite_store.write() as tx:
                    tx.idempotency_put("acct_1", f"k-{n}-{r}", _record(n))
                barrier.wait()
                with sqlite_store.read() as tx:
                    assert tx.idempotency_get("acct_1", f"k-{n}-{r}") is not None
        except BaseException as exc:  # reported below, in the test's own thread
            failures.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(n,)) for n in range(threads_n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert failures == []
    assert _keys(sqlite_store) == threads_n * rounds


def test_a_thread_that_ends_gives_its_connection_back(sqlite_store: Store) -> None:
    def work() -> None:
        with sqlite_store.write() as tx:
            tx.idempotency_put("acct_1", "from-thread", _record())

    gc.collect()  # garbage of earlier tests (their connections) is not this test's
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        th = threading.Thread(target=work)
        th.start()
        th.join()
        gc.collect()
    # SQLAlchemy warns when the garbage collector finds a connection never given back.
    assert [str(w.message) for w in caught] == []
    assert _keys(sqlite_store) == 1


def test_a_connection_the_pool_closed_is_replaced(sqlite_store: Store) -> None:
    with sqlite_store.write() as tx:
        tx.idempotency_put("acct_1", "before", _record())
    sqlite_store.engine.pool.dispose()  # closes every connection it holds, ours included
    with sqlite_store.write() as tx:
        tx.idempotency_put("acct_1", "after", _record())
    assert _keys(sqlite_store) == 2


def test_a_second_transaction_on_the_same_thread_is_refused(sqlite_store: Store) -> None:
    with sqlite_store.write() as tx:
        tx.idempotency_put("acct_1", "outer", _record())
        refused = (sa.exc.OperationalError, sqlite3.OperationalError)
        with pytest.raises(refused), sqlite_store.engine.begin() as conn:
            conn.execute(t.cloud_secrets.insert().values(name="x", value=b"1", created=1))
        tx.idempotency_put("acct_1", "outer-2", _record())
    # The refused one neither committed nor ended the outer transaction early.
    with sqlite_store.read() as tx:
        assert tx.secret("x") is None
    assert _keys(sqlite_store) == 2


def test_sqlite_connections_are_durable(sqlite_store: Store) -> None:
    with sqlite_store.read() as tx:
        assert tx.conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert tx.conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert tx.conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 4000


def test_checkpoint_copies_the_wal_into_the_database_file(
    sqlite_store: Store, tmp_path: Path
) -> None:
    db = tmp_path / "cloud.db"
    sqlite_store.checkpoint()
    before, writes = db.stat().st_size, sqlite_store.writes
    for n in range(50):
        with sqlite_store.write() as tx:
            tx.insert("acct_1", _obj(f"pi_{n:04}", {"order": "x" * 200}))
    with sqlite_store.read() as tx:
        tx.get("acct_1", "pi_0000")
    with pytest.raises(KeyError), sqlite_store.write() as tx:
        raise KeyError("not committed")
    # Committed write transactions are counted (reads and failed blocks are not) ...
    assert sqlite_store.writes == writes + 50
    # ... and are in the WAL only: far fewer pages than a commit's own checkpoint waits for.
    assert db.stat().st_size == before
    sqlite_store.checkpoint()
    assert db.stat().st_size > before
    with sqlite_store.read() as tx:
        assert tx.get("acct_1", "pi_0049") is not None


def test_checkpoint_on_postgresql_does_nothing(store: Store) -> None:
    with store.write() as tx:
        tx.insert("acct_1", _obj("pi_1"))
    store.checkpoint()
    with store.read() as tx:
        assert tx.get("acct_1", "pi_1") is not None

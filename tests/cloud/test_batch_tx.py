"""`BatchTx`: held writes land exactly as the row-by-row `Tx` would have written them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from stowpay.cloud.storage import Store, Tx
from stowpay.cloud.storage import tables as t
from stowpay.cloud.storage.store import BatchTx

ACCOUNT = "acct_batch"
OTHER = "acct_other"


@pytest.fixture(params=["sqlite", "postgres"])
def make_store(
    request: pytest.FixtureRequest, make_db_url: Callable[[str], str]
) -> Iterator[Callable[[str], Store]]:
    """Fresh stores of one kind: SQLite files, or PostgreSQL databases."""
    stores: list[Store] = []

    def make(name: str) -> Store:
        store = Store(make_db_url(request.param))
        store.migrate()
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


def script(tx: Tx) -> None:
    """Writes as the ingest makes them: insert, change and update, events, deliveries."""
    seq_state = tx.get(ACCOUNT, "rsq_1")
    assert seq_state is not None
    seq_state["high_water"] = 2
    for n in (1, 2):
        pi: dict[str, Any] = {
            "id": f"pi_{n}",
            "object": "payment_intent",
            "created": n,
            "amount": 1000 + n,
            "status": "requires_payment_method",
            "metadata": {"order_id": f"A-{n}", "till": "1"},
            "payment_method": None,
        }
        tx.insert(ACCOUNT, pi)
        event = {"id": f"evt_{n}a", "object": "event", "created": n, "data": {"object": pi}}
        tx.insert(ACCOUNT, event, ref=pi["id"], status="payment_intent.created")
        # Changed after the event: the event keeps the state it was inserted with.
        pi["payment_method"] = f"pm_{n}"
        pi.update(status="succeeded", metadata={"order_id": f"A-{n}"})
        tx.update(ACCOUNT, pi, ref="ref_after")
        charge = {"id": f"ch_{n}", "object": "charge", "created": n, "amount": 1000 + n}
        tx.insert(ACCOUNT, charge, ref=pi["id"], status="succeeded")
        tx.insert_delivery(
            {
                "id": f"whd_{n}",
                "account_id": ACCOUNT,
                "endpoint_id": "we_1",
                "event_id": event["id"],
                "created": n,
                "state": "pending",
                "attempts": 0,
                "next_attempt_at": float(n),
            }
        )
    tx.update(ACCOUNT, seq_state)


def seed(store: Store) -> None:
    with store.write() as tx:
        tx.insert(
            ACCOUNT,
            {
                "id": "rsq_1",
                "object": "stowpay.reader_sequence",
                "created": 0,
                "high_water": 0,
                "metadata": {"kept": "no"},
            },
        )


def contents(store: Store) -> dict[str, Any]:
    with store.read() as tx:
        o = t.objects.c
        objects = tx.conn.execute(
            sa.select(
                o.id, o.account_id, o.type, o.created, o.ref, o.status, o.amount, o.body
            ).order_by(o.seq)
        ).all()
        metadata = tx.conn.execute(
            sa.select(t.object_metadata).order_by(
                t.object_metadata.c.object_id, t.object_metadata.c.key
            )
        ).all()
        deliveries = tx.conn.execute(
            sa.select(t.webhook_deliveries).order_by(t.webhook_deliveries.c.id)
        ).all()
    return {
        "objects": [tuple(r) for r in objects],
        "metadata": [tuple(r) for r in metadata],
        "deliveries": [tuple(r) for r in deliveries],
    }


def test_flush_writes_what_row_by_row_writes_write(make_store: Callable[[str], Store]) -> None:
    plain, batched = make_store("plain"), make_store("batched")
    seed(plain)
    seed(batched)
    with plain.write() as tx:
        script(tx)
        plain_queued = tx.queued_deliveries
    with batched.write() as tx:
        batch = BatchTx(tx)
        script(batch)
        batch.flush()
        batched_queued = tx.queued_deliveries
    assert plain_queued == batched_queued == 2
    expected = contents(plain)
    assert contents(batched) == expected
    # The PaymentIntents are stored in their final state, the events as they were.
    bodies = {row[0]: row[-1] for row in expected["objects"]}
    assert '"status":"succeeded"' in bodies["pi_1"]
    assert '"payment_method":null' in bodies["evt_1a"]


def test_nothing_is_written_without_flush_or_when_the_block_fails(
    make_store: Callable[[str], Store],
) -> None:
    store = make_store("s")
    seed(store)
    before = contents(store)
    with store.write() as tx:
        script(BatchTx(tx))
    assert contents(store) == before
    with pytest.raises(RuntimeError), store.write() as tx:
        batch = BatchTx(tx)
        script(batch)
        batch.flush()
        raise RuntimeError("the request failed after the flush")
    assert contents(store) == before


def test_reads_see_held_writes_as_copies_and_only_the_owners(
    make_store: Callable[[str], Store],
) -> None:
    store = make_store("s")
    seed(store)
    with store.write() as tx:
        batch = BatchTx(tx)
        held = {"id": "pm_1", "object": "payment_method", "created": 1, "type": "card_present"}
        batch.insert(ACCOUNT, held)
        seen = batch.get(ACCOUNT, "pm_1", "payment_method")
        assert seen == held and seen is not held
        assert seen is not None
        seen["type"] = "changed"
        assert batch.get(ACCOUNT, "pm_1") == held
        assert batch.get(OTHER, "pm_1") is None
        assert batch.get(ACCOUNT, "pm_1", "charge") is None
        assert tx.get(ACCOUNT, "pm_1") is None  # not in the database before the flush

        batch.prefetch(ACCOUNT, ["rsq_1", "rsq_missing"], "stowpay.reader_sequence")
        found = batch.get(ACCOUNT, "rsq_1", "stowpay.reader_sequence")
        assert found is not None and found["high_water"] == 0
        assert batch.get(ACCOUNT, "rsq_missing", "stowpay.reader_sequence") is None
        with pytest.raises(ValueError, match="inserted twice"):
            batch.insert(ACCOUNT, dict(held))

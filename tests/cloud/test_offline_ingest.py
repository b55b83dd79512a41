"""Ingestion of forwarded offline payments: charged once per (reader, sequence), whatever comes."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from stowpay.cloud.api import Context
from stowpay.cloud.domain.accounts import create_account
from stowpay.cloud.domain.offline_ingest import REJECTION, ForwardedPayment, digest_of, ingest
from stowpay.cloud.storage import Store
from stowpay.wire import sealed
from stowpay.wire.clock import ManualClock
from stowpay.wire.ids import RandomIds

KEY = X25519PrivateKey.generate()
PUBLIC = KEY.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
READER = {"id": "tmr_test", "object": "terminal.reader", "created": 0, "location": "tml_1"}


class World:
    def __init__(self, db: str) -> None:
        self.db = db
        self.clock = ManualClock()
        self.ids = RandomIds()
        self.store = Store(db)
        self.store.migrate()
        with self.store.write() as tx:
            self.account = create_account(tx, self.clock, self.ids).account
            tx.insert(self.account["id"], dict(READER))

    def record(
        self, seq: int, amount: int = 1299, number: str = "4242424242424242", **over: Any
    ) -> ForwardedPayment:
        card = json.dumps({"number": number, "exp_month": 12, "exp_year": 2030}).encode()
        aad = sealed.associated_data(self.account["id"], READER["id"], seq)
        blob = sealed.seal(PUBLIC, "k1", card, aad)
        fields = {
            "sequence": seq,
            "stored_at": 1_700_000_000.0 + seq,
            "amount": amount,
            "currency": "usd",
            "capture_method": "automatic",
            "metadata": {"order_id": f"A-{seq}"},
            "description": None,
            "local_id": f"pio_{seq}",
            "display": {
                "read_method": "contact_emv",
                "cardholder_name": "Ada",
                "exp_month": 12,
                "exp_year": 2030,
            },
        }
        blob = over.pop("sealed", blob)
        fields.update(over)
        return ForwardedPayment(**{**fields, "sealed": blob, "digest": digest_of(fields, blob)})

    def ingest(self, batch: list[ForwardedPayment]) -> list[Any]:
        with self.store.write() as tx:
            ctx = Context(
                account=self.account,
                tx=tx,
                clock=self.clock,
                ids=self.ids,
                request_id="req_t",
                idempotency_key=None,
            )
            return ingest(
                ctx,
                READER,
                batch,
                unseal=lambda blob, aad: sealed.open_sealed(KEY, blob, aad),
                associated_data=sealed.associated_data,
            )

    def count(self, type_: str) -> int:
        with self.store.read() as tx:
            page = tx.list_page(self.account["id"], type_, limit=100)
            assert page is not None
            return len(page.data)

    def charge(self, pi: dict[str, Any]) -> dict[str, Any]:
        with self.store.read() as tx:
            got = tx.get(self.account["id"], pi["latest_charge"], "charge")
            assert got is not None
            return got


@pytest.fixture
def world(db_url: str) -> Iterator[World]:
    w = World(db_url)
    yield w
    w.store.close()


def test_approved_record_becomes_an_offline_charge(world: World) -> None:
    (out,) = world.ingest([world.record(1)])
    assert out.status == "approved" and not out.replayed
    pi = out.payment_intent
    assert pi["status"] == "succeeded" and pi["metadata"] == {"order_id": "A-1"}
    details = world.charge(pi)["payment_method_details"]["card_present"]
    assert details["offline"] == {"stored_at": 1_700_000_001, "type": "deferred"}
    assert details["last4"] == "4242" and details["read_method"] == "contact_emv"


def test_same_record_again_is_not_charged_again(world: World) -> None:
    rec = world.record(1)  # the reader forwards the very record it stored, every time
    first = world.ingest([rec])[0]
    for _ in range(3):
        again = world.ingest([rec])[0]
        assert again.replayed and again.payment_intent["id"] == first.payment_intent["id"]
    assert world.count("charge") == 1 and world.count("payment_intent") == 1


def test_other_record_under_a_used_sequence_is_rejected(world: World) -> None:
    world.ingest([world.record(1)])
    (out,) = world.ingest([world.record(1, amount=5000)])
    assert out.status == "rejected" and out.error["code"] == "offline_record_conflict"
    assert world.count("charge") == 1


def test_sealed_data_for_another_sequence_is_rejected(world: World) -> None:
    other = world.record(2)
    (out,) = world.ingest([world.record(1, sealed=other.sealed)])
    assert out.status == "rejected" and out.error["code"] == "offline_record_unreadable"
    assert world.count("charge") == 0


def test_declines_are_outcomes_too(world: World) -> None:
    declined = world.record(1, number="4000000000000002")
    outs = world.ingest([declined, world.record(2, amount=1205)])
    assert [o.status for o in outs] == ["declined", "declined"]
    assert outs[0].error["decline_code"] == "generic_decline"
    assert outs[1].payment_intent["status"] == "requires_payment_method"
    # A decline is final: forwarding it again changes nothing.
    assert world.ingest([declined])[0].replayed


def test_manual_capture_waits_for_capture(world: World) -> None:
    (out,) = world.ingest([world.record(1, capture_method="manual")])
    assert out.payment_intent["status"] == "requires_capture"


def test_gaps_in_the_sequence_are_noted(world: World) -> None:
    world.ingest([world.record(1), world.record(4)])
    with world.store.read() as tx:
        state = tx.get(world.account["id"], "rsq_tmr_test")
    assert state is not None and state["gaps"] == [2, 3] and state["high_water"] == 4
    world.ingest([world.record(2)])
    with world.store.read() as tx:
        state = tx.get(world.account["id"], "rsq_tmr_test")
    assert state is not None and state["gaps"] == [3]


def test_no_card_number_in_the_cloud_database(
    world: World, db_bytes: Callable[[str], bytes]
) -> None:
    world.ingest([world.record(i) for i in range(1, 6)])
    world.store.close()
    stored = db_bytes(world.db)
    assert b"ofr_tmr_test_5" in stored  # the scan sees the database's rows
    assert b"4242424242424242" not in stored


def rejections(world: World) -> list[dict[str, Any]]:
    with world.store.read() as tx:
        page = tx.list_page(world.account["id"], REJECTION, limit=100)
        assert page is not None
        return list(page.data)


def test_a_rejection_is_kept_and_the_same_record_gets_it_again(world: World) -> None:
    forged = world.record(1, sealed=world.record(2).sealed)
    (first,) = world.ingest([forged])
    assert first.status == "rejected" and not first.replayed
    (again,) = world.ingest([forged])
    assert again.status == "rejected" and again.replayed
    assert again.error["code"] == first.error["code"] == "offline_record_unreadable"
    (kept,) = rejections(world)
    assert kept["reader"] == READER["id"] and kept["sequence"] == 1
    assert kept["amount"] == 1299 and kept["error"]["code"] == "offline_record_unreadable"
    # It never took the sequence: the genuine record under it is still charged.
    (genuine,) = world.ingest([world.record(1)])
    assert genuine.status == "approved" and not genuine.replayed
    # And the forged one, sent once more, is still the rejection it was.
    assert world.ingest([forged])[0].replayed
    assert world.count("charge") == 1 and len(rejections(world)) == 1


def test_a_conflict_is_kept_once_and_replayed(world: World) -> None:
    world.ingest([world.record(1)])
    other = world.record(1, amount=5000)
    outs = world.ingest([other, other])  # twice in one batch, and again below
    assert [o.replayed for o in outs] == [False, True]
    assert world.ingest([other])[0].replayed
    assert all(o.error["code"] == "offline_record_conflict" for o in outs)
    (kept,) = rejections(world)
    assert kept["amount"] == 5000 and kept["error"]["code"] == "offline_record_conflict"
    with world.store.read() as tx:
        state = tx.get(world.account["id"], "rsq_tmr_test")
    assert state is not None and state["conflicts"] == [1]
    assert world.count("charge") == 1


def test_a_record_no_payment_can_be_made_from_is_kept_without_taking_its_sequence(
    world: World,
) -> None:
    odd = world.record(1, capture_method="someday")
    assert not world.ingest([odd])[0].replayed
    assert world.ingest([odd])[0].replayed
    assert [r["error"]["param"] for r in rejections(world)] == ["capture_method"]
    assert world.ingest([world.record(1)])[0].status == "approved"

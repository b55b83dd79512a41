"""Terminal domain rules that need a moving clock: connection tokens and registration codes
expire, and each is good for one use; the default configuration and sealing key are made once."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives import serialization

from stowpay.cloud.api import Context
from stowpay.cloud.domain import terminal
from stowpay.cloud.domain.accounts import create_account
from stowpay.cloud.sealing import private_sealing_key, public_sealing_key
from stowpay.cloud.settings import Settings
from stowpay.cloud.storage import Store, Tx
from stowpay.wire import sealed
from stowpay.wire.clock import ManualClock
from stowpay.wire.errors import InvalidRequestError

TTL = 300


@dataclass
class World:
    settings: Settings
    clock: ManualClock
    store: Store
    account_id: str

    def ctx(self, tx: Tx) -> Context:
        return Context(
            account={"id": self.account_id},
            tx=tx,
            clock=self.clock,
            ids=self.settings.ids,
            request_id="req_test",
            idempotency_key=None,
            settings=self.settings,
        )


@pytest.fixture
def world(db_url: str) -> Iterator[World]:
    """A store with one account, over SQLite and (when configured) PostgreSQL."""
    clock = ManualClock()
    settings = Settings(db=db_url, clock=clock, connection_token_ttl=TTL)
    store = Store(settings.db)
    store.migrate()
    with store.write() as tx:
        account = create_account(tx, clock, settings.ids).account
    yield World(settings, clock, store, account["id"])
    store.close()


def new_token(world: World, location: str | None = None) -> str:
    with world.store.write() as tx:
        token = terminal.create_connection_token(world.ctx(tx), location)
    return str(token["secret"])


def redeem(world: World, secret: str) -> tuple[str, str | None] | None:
    with world.store.write() as tx:
        return terminal.redeem_connection_token(tx, secret, world.clock.now())


def test_connection_token_is_single_use(world: World) -> None:
    secret = new_token(world)
    assert redeem(world, secret) == (world.account_id, None)
    assert redeem(world, secret) is None


def test_connection_token_expires(world: World) -> None:
    early, late = new_token(world), new_token(world)
    world.clock.advance(TTL - 1)
    assert redeem(world, early) == (world.account_id, None)
    world.clock.advance(1)  # exactly its lifetime: over
    assert redeem(world, late) is None
    # Expired, it stays unusable even if the clock were turned back.
    world.clock.advance(-10)
    assert redeem(world, late) is None


def test_connection_token_with_location(world: World) -> None:
    with world.store.write() as tx:
        location = terminal.create_location(
            world.ctx(tx),
            display_name="Shop",
            address={"country": "us"},
            configuration_overrides=None,
            metadata=None,
            phone=None,
        )
    assert location["address"]["country"] == "US"
    secret = new_token(world, location["id"])
    assert redeem(world, secret) == (world.account_id, location["id"])
    with world.store.write() as tx, pytest.raises(InvalidRequestError) as err:
        terminal.create_connection_token(world.ctx(tx), "tml_missing")
    assert err.value.param == "location"


def test_unknown_secrets_do_not_redeem(world: World) -> None:
    secret = new_token(world)
    for wrong in ("", "pst_test_", secret + "x", secret[:-1], "sk_test_" + secret[9:]):
        assert redeem(world, wrong) is None
    assert redeem(world, secret) is not None


def test_expired_tokens_are_pruned(world: World) -> None:
    import sqlalchemy as sa

    from stowpay.cloud.storage import tables

    for _ in range(3):
        new_token(world)
    world.clock.advance(TTL)
    new_token(world)  # making one drops the expired ones
    with world.store.read() as tx:
        count = tx.conn.execute(
            sa.select(sa.func.count()).select_from(tables.terminal_connection_tokens)
        ).scalar_one()
    assert count == 1


DEVICE = terminal.DeviceInfo(device_type="bbpos_wisepos_e", serial_number="WSC1")


def test_registration_code_expires(world: World) -> None:
    with world.store.write() as tx:
        code = terminal.issue_registration_code(tx, DEVICE, now=world.clock.now(), ttl=60)
    world.clock.advance(60)
    with world.store.write() as tx:
        got = terminal.redeem_registration_code(
            tx, code, account_id=world.account_id, reader_id="tmr_1", now=world.clock.now()
        )
        assert got is None
        assert terminal.registration_outcome(tx, code) is None


def test_registration_code_is_single_use(world: World) -> None:
    with world.store.write() as tx:
        code = terminal.issue_registration_code(tx, DEVICE, now=world.clock.now())
    assert len(code) == 17 and code.count("-") == 2
    with world.store.write() as tx:
        got = terminal.redeem_registration_code(
            tx, code, account_id=world.account_id, reader_id="tmr_1", now=world.clock.now()
        )
        again = terminal.redeem_registration_code(
            tx, code, account_id="acct_other", reader_id="tmr_2", now=world.clock.now()
        )
        outcome = terminal.registration_outcome(tx, code)
    assert got == DEVICE
    assert again is None
    assert outcome == (world.account_id, "tmr_1")


def test_simulated_reader_is_seen_now_in_milliseconds(world: World) -> None:
    with world.store.write() as tx:
        ctx = world.ctx(tx)
        location = terminal.create_location(
            ctx,
            display_name="Shop",
            address={"country": "GB"},
            configuration_overrides=None,
            metadata=None,
            phone=None,
        )
        reader = terminal.register_reader(
            ctx,
            registration_code="simulated-s700",
            location_id=location["id"],
            label=None,
            metadata=None,
        )
    assert reader["device_type"] == "simulated_stripe_s700"
    assert reader["last_seen_at"] == int(world.clock.now() * 1000)


def test_default_configuration_is_made_once(world: World) -> None:
    with world.store.write() as tx:
        first = terminal.default_configuration(tx, world.account_id)
        second = terminal.default_configuration(tx, world.account_id)
        page = tx.list_page(world.account_id, terminal.CONFIGURATION, limit=10)
    assert first == second and first["is_account_default"] is True
    assert page is not None and [c["id"] for c in page.data] == [first["id"]]


def test_default_configuration_cannot_be_deleted(world: World) -> None:
    with world.store.write() as tx:
        ctx = world.ctx(tx)
        default = terminal.get_configuration(ctx, terminal.default_configuration_id(ctx.account_id))
        with pytest.raises(InvalidRequestError):
            terminal.delete_configuration(ctx, default)


def test_sealing_key_is_made_once_and_pairs(world: World) -> None:
    with world.store.write() as tx:
        public = public_sealing_key(tx, world.clock)
        assert public_sealing_key(tx, world.clock) == public
        private = private_sealing_key(tx, world.clock)
    assert public["alg"] == "X25519-HKDF-SHA256-AES256GCM"
    assert set(public) == {"kid", "public_key", "alg"}
    raw = base64.b64decode(public["public_key"])
    assert len(raw) == 32
    # What a reader seals to the served half, the kept half opens.
    aad = sealed.associated_data(world.account_id, "tmr_1", 1)
    envelope = sealed.seal(raw, public["kid"], b"4242424242424242", aad)
    assert sealed.key_id_of(envelope) == public["kid"]
    assert sealed.open_sealed(private, envelope, aad) == b"4242424242424242"
    private_raw = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    assert private_raw != raw
    with world.store.read() as tx:
        assert public_sealing_key(tx, world.clock) == public


def test_racing_redemptions_have_one_winner(world: World, db_url: str) -> None:
    """Two transactions redeeming one token at once: exactly one gets it."""
    if "://" not in db_url:
        pytest.skip("SQLite serialises writers; the race needs PostgreSQL")
    secret = new_token(world)
    with world.store.write() as tx:
        code = terminal.issue_registration_code(tx, DEVICE, now=world.clock.now())
    barrier = threading.Barrier(2, timeout=10)
    results: list[object] = []

    def race(n: int) -> None:
        with world.store.write() as tx:
            barrier.wait()
            token = terminal.redeem_connection_token(tx, secret, world.clock.now())
            device = terminal.redeem_registration_code(
                tx, code, account_id=world.account_id, reader_id=f"tmr_{n}", now=world.clock.now()
            )
            default = terminal.default_configuration(tx, world.account_id)
            results.append((token, device, default["id"]))

    threads = [threading.Thread(target=race, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(results) == 2
    assert sorted(r[0] is None for r in results) == [False, True]  # type: ignore[index]
    assert sorted(r[1] is None for r in results) == [False, True]  # type: ignore[index]
    assert len({r[2] for r in results}) == 1  # type: ignore[index]


def test_housekeeping_sweeps_expired_tokens_and_old_registrations(world: World) -> None:
    import sqlalchemy as sa

    from stowpay.cloud.app import Cloud
    from stowpay.cloud.storage import tables

    def rows(table: sa.Table) -> int:
        with world.store.read() as tx:
            return int(tx.conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())

    for _ in range(3):
        new_token(world)
    with world.store.write() as tx:
        terminal.issue_registration_code(tx, DEVICE, now=world.clock.now())
    cloud = Cloud(world.settings, world.store)
    cloud.prune()  # nothing has expired yet
    assert rows(tables.terminal_connection_tokens) == 3
    assert rows(tables.terminal_registrations) == 1
    world.clock.advance(terminal.REGISTRATION_CODE_TTL + terminal.REGISTRATION_KEPT + 1)
    assert cloud.prune() >= 4
    assert rows(tables.terminal_connection_tokens) == 0
    assert rows(tables.terminal_registrations) == 0

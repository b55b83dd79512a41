"""A full disk: on store the payment is declined and nothing is harmed; on forward bookkeeping
nothing is charged twice.

The disk fills in two ways. `disk_kit.SimulatedDisk` fails the Nth write with SQLITE_FULL (as
ENOSPC reaches SQLite), once or from then on, for N = 1, 2, … until the operation completes
without meeting the fault, as SQLite's own I/O-error loops do. ``PRAGMA max_page_count`` caps
the database on the standard library's SQLite, deterministically. After each case the vault is
reopened with the standard library's sqlite3 and must pass ``integrity_check`` and its own
verification with every acknowledged payment, and no declined one; the end-to-end cases then
forward everything through the real forwarder to a live cloud, where each acknowledged payment
must be charged exactly once and no declined one at all.

The canaries plant a bug each test must catch (strict expected failures): a vault that answers
"stored" although its COMMIT failed, and a forwarder that removes records before the cloud's
outcome.
"""

from __future__ import annotations

import contextlib
import random
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from disk_kit import SimulatedDisk
from reader_kit import Rig, Shop, connect_online, make_shop, open_rig, register, sell
from vault_kit import SEALING, payment

from stowpay.cloud.testing import LiveCloud
from stowpay.reader.core import ReaderError
from stowpay.reader.forwarder import Forwarder
from stowpay.reader.vault import StoredPayment, Vault, VaultError, VaultWriteError
from stowpay.wire.clock import ManualClock
from stowpay.wire.terminal_codes import ErrorCode

MODES = ("once", "persistent")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1_780_000_000.0)


def _reopen_and_check(directory: Path, clock: ManualClock) -> list[StoredPayment]:
    """Open the vault with the standard library's sqlite3: it must verify; what it holds."""
    vault = Vault.open(directory, clock=clock, sealing_key=SEALING)
    try:
        report = vault.verify(integrity=True)
        assert report.ok, [f.detail for f in report.findings]
        return vault.pending()
    finally:
        vault.close()


# -- store, at the vault: N = 1.. until done, once and persistently ----------------------------


@pytest.mark.parametrize("mode", MODES)
def test_enospc_on_the_nth_write_of_a_store(tmp_path: Path, clock: ManualClock, mode: str) -> None:
    declined = 0
    for n in range(1, 200):
        directory = (tmp_path / f"{mode}{n}").resolve()
        disk = SimulatedDisk(random.Random(n))
        try:
            vault = Vault.open(
                directory, clock=clock, sealing_key=SEALING, connector=disk.connector()
            )
            earlier = [
                vault.store(payment(100 + i, local_id=f"pio_early{i}"), card_tag=f"{i:064x}")
                for i in range(3)
            ]
            disk.full_from, disk.full_once = disk.writes + n, mode == "once"
            acknowledged = list(earlier)
            refused: list[str] = []
            for attempt in range(2):  # the POS tries again after a decline
                local_id = f"pio_try{attempt}"
                try:
                    acknowledged.append(vault.store(payment(500, local_id=local_id)))
                    break
                except VaultWriteError as exc:
                    assert exc.sqlite_error == "SQLITE_FULL" and not exc.indeterminate
                    refused.append(local_id)
            hit = disk.full_hits
            disk.full_from = None  # room again
            if len(acknowledged) == len(earlier):
                acknowledged.append(vault.store(payment(500, local_id="pio_after")))
            # Every earlier record is intact and still forwardable from the same vault.
            assert [p.local_id for p in vault.pending()] == [p.local_id for p in acknowledged]
            vault.close()
        finally:
            disk.close()
        held = _reopen_and_check(directory, clock)
        assert held == acknowledged
        assert not {p.local_id for p in held} & set(refused)
        declined += len(refused)
        if not hit:
            break  # the store no longer reaches the Nth write: every write has been failed
    assert n > 3, "a store writes more than three times"
    if mode == "once":
        # One failed write declines one attempt; the POS's retry then goes through.
        assert declined == n - 1
    print(f"\nENOSPC {mode}: N = 1..{n}, {declined} attempts declined, 0 harmed")


# -- store, at the POS -------------------------------------------------------------------------


@dataclass
class Till:
    """A registered reader at a shop on a live cloud, a POS session, and what it was told."""

    rig: Rig
    shop: Shop
    session: str
    told_stored: list[str] = field(default_factory=list)
    told_declined: list[str] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)

    def sell(self, order: str) -> None:
        try:
            sell(self.rig.core, self.session, 700, metadata={"order_id": order})
        except ReaderError as exc:
            self.codes[str(exc.code)] += 1
            assert exc.code == ErrorCode.OFFLINE_TRANSACTION_DECLINED, exc
            self.told_declined.append(order)
        else:
            self.told_stored.append(order)

    def charges(self) -> Counter[str]:
        """Orders charged at the cloud, counted."""
        page = self.shop.client.v1.payment_intents.list(params={"limit": 100})
        return Counter(
            str(pi.metadata["order_id"]) for pi in page.auto_paging_iter() if pi.metadata
        )

    def check_held(self) -> None:
        """The vault holds, intact, exactly the orders the POS was told are stored."""
        vault = self.rig.vault
        assert vault.verify().ok
        held = sorted(p.metadata["order_id"] for p in vault.pending())
        assert held == sorted(self.told_stored), "the vault and the POS disagree"

    def check_settled(self) -> None:
        """Forward everything; each order told "stored" charged once, no other charged."""
        self.rig.line.down = False
        result = self.rig.core.forwarder.drain()
        assert result.error is None and result.remaining == 0, result
        charged = self.charges()
        lost = [o for o in self.told_stored if charged[o] == 0]
        doubled = [o for o, n in charged.items() if n > 1]
        strangers = [o for o in charged if o not in self.told_stored]
        assert (lost, doubled, strangers) == ([], [], []), "lost, doubled, charged though declined"


@pytest.fixture
def till_factory(
    tmp_path: Path, cloud: LiveCloud, clock: ManualClock
) -> Iterator[Callable[..., Till]]:
    opened: list[Rig] = []

    def _open(**vault_options: Any) -> Till:
        rig = open_rig(
            tmp_path / "reader",
            cloud,
            clock,
            vault_options=vault_options,
            unattended_forwarding=True,
        )
        opened.append(rig)
        shop = make_shop(cloud)
        register(rig, shop)
        session = connect_online(rig, shop)["session"]
        return Till(rig, shop, session)

    yield _open
    for rig in opened:
        rig.close()


@pytest.fixture
def disk() -> Iterator[SimulatedDisk]:
    simulated = SimulatedDisk(random.Random(5))
    yield simulated
    simulated.close()


def _store_sweep(till: Till, disk: SimulatedDisk, mode: str) -> int:
    """ENOSPC at the Nth write of a sale for N = 1.. until a sale no longer meets it."""
    for n in range(1, 200):
        disk.full_hits = 0
        disk.full_from, disk.full_once = disk.writes + n, mode == "once"
        till.sell(f"{mode}-{n}-a")
        if mode == "persistent":
            till.sell(f"{mode}-{n}-b")  # still full: declined again if the first was
        disk.full_from = None
        till.sell(f"{mode}-{n}-after")  # room again: stored
        assert till.told_stored[-1] == f"{mode}-{n}-after"
        if not disk.full_hits:
            return n
    raise AssertionError("a sale kept meeting the fault")


def test_a_sale_meeting_a_full_disk_is_declined_at_the_pos_and_nothing_is_charged_twice(
    till_factory: Callable[..., Till], disk: SimulatedDisk, clock: ManualClock
) -> None:
    till = till_factory(connector=disk.connector())
    till.sell("before")
    rounds = {mode: _store_sweep(till, disk, mode) for mode in MODES}
    till.check_held()
    till.check_settled()
    assert till.told_declined, "the fault never reached a sale"
    till.rig.vault.close()
    assert _reopen_and_check(till.rig.state.vault_dir, clock) == []
    print(
        f"\nENOSPC at the POS: N = 1..{rounds}, {len(till.told_declined)} sales declined "
        f"({dict(till.codes)}), {len(till.told_stored)} stored and charged once each"
    )


def test_max_page_count_declines_at_the_pos_and_the_vault_stays_whole(
    till_factory: Callable[..., Till], clock: ManualClock
) -> None:
    till = till_factory()
    for i in range(3):
        till.sell(f"early-{i}")
    conn = till.rig.vault._conn
    assert conn is not None
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")
    for i in range(40):
        till.sell(f"full-{i}")
    assert till.told_declined, "the capped database never filled"
    till.check_held()
    conn.execute("PRAGMA max_page_count = 1073741823")
    till.sell("room-again")
    assert till.told_stored[-1] == "room-again"
    till.check_settled()
    till.rig.vault.close()
    assert _reopen_and_check(till.rig.state.vault_dir, clock) == []
    print(
        f"\nmax_page_count at the POS: {len(till.told_declined)} sales declined "
        f"({dict(till.codes)}), {len(till.told_stored)} stored and charged once each"
    )


# -- forward bookkeeping -----------------------------------------------------------------------


def _bookkeeping_sweep(till: Till, disk: SimulatedDisk, mode: str) -> tuple[int, int]:
    """ENOSPC at the Nth write after the cloud's outcome, for N = 1.. until a drain is clean."""
    failed = 0
    for n in range(1, 200):
        for i in range(3):
            till.sell(f"fwd-{mode}-{n}-{i}")
        # A forward attempt that cannot reach the cloud first: every record must stay.
        till.rig.line.down = True
        assert till.rig.core.forwarder.drain().error is not None
        till.rig.line.down = False
        disk.full_hits = 0
        disk.full_from, disk.full_once = disk.writes + n, mode == "once"
        result = till.rig.core.forwarder.drain()
        if mode == "persistent":
            result = till.rig.core.forwarder.drain()  # still full: the cloud answers again
        disk.full_from = None
        failed += result.error is not None
        if not disk.full_hits:
            return n, failed
        till.check_settled()
    raise AssertionError("forwarding kept meeting the fault")


def test_a_full_disk_during_forward_bookkeeping_charges_nothing_twice(
    till_factory: Callable[..., Till], disk: SimulatedDisk, clock: ManualClock
) -> None:
    till = till_factory(connector=disk.connector())
    rounds = {mode: _bookkeeping_sweep(till, disk, mode) for mode in MODES}
    till.check_settled()
    vault_dir = till.rig.state.vault_dir
    till.rig.vault.close()
    assert _reopen_and_check(vault_dir, clock) == []
    print(
        f"\nENOSPC in forward bookkeeping (N, drains failed): {rounds}; "
        f"{len(till.told_stored)} payments, each charged once"
    )


# -- canaries ----------------------------------------------------------------------------------


@pytest.fixture
def answers_before_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The planted bug: the vault answers "stored" whether or not its COMMIT succeeded."""

    @contextlib.contextmanager
    def careless(self: Vault) -> Iterator[sqlite3.Connection]:
        conn = self._connection()
        self._summary = None
        conn.execute("BEGIN IMMEDIATE")
        yield conn
        with contextlib.suppress(sqlite3.Error):
            conn.execute("COMMIT")
        if conn.in_transaction:
            conn.execute("ROLLBACK")

    monkeypatch.setattr(Vault, "_transaction", careless)


@pytest.fixture
def removes_before_the_outcome(monkeypatch: pytest.MonkeyPatch) -> None:
    """The planted bug: the forwarder removes a batch before the cloud has answered for it."""
    real = Forwarder._send

    def hasty(self: Forwarder, device_key: str, batch: Any, token: str | None) -> Any:
        with contextlib.suppress(VaultError):
            self._vault.remove_many([r.sequence for r in batch])
        return real(self, device_key, batch, token)

    monkeypatch.setattr(Forwarder, "_send", hasty)


@pytest.mark.xfail(strict=True, raises=AssertionError, reason="canary: stored before COMMIT")
def test_canary_a_sale_answered_before_commit(
    till_factory: Callable[..., Till],
    disk: SimulatedDisk,
    clock: ManualClock,
    answers_before_commit: None,
) -> None:
    test_a_sale_meeting_a_full_disk_is_declined_at_the_pos_and_nothing_is_charged_twice(
        till_factory, disk, clock
    )


@pytest.mark.xfail(strict=True, raises=AssertionError, reason="canary: removed before outcome")
def test_canary_removing_before_the_outcome(
    till_factory: Callable[..., Till],
    disk: SimulatedDisk,
    clock: ManualClock,
    removes_before_the_outcome: None,
) -> None:
    test_a_full_disk_during_forward_bookkeeping_charges_nothing_twice(till_factory, disk, clock)

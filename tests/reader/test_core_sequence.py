"""A reader whose whole data directory was restored from an older copy: the cloud's heartbeat
tells it how far its sequence got, and the payments it takes next are charged."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from reader_kit import Line, Rig, Shop, connect_online, make_shop, open_rig, register, sell

from stowpay.cloud.testing import LiveCloud
from stowpay.reader.core import ReaderError
from stowpay.wire.clock import ManualClock
from stowpay.wire.terminal_codes import ErrorCode


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1_780_000_000.0)


@pytest.fixture
def shop(cloud: LiveCloud) -> Shop:
    return make_shop(cloud)


@pytest.fixture
def opened() -> Iterator[list[Rig]]:
    rigs: list[Rig] = []
    yield rigs
    for rig in rigs:
        rig.close()


def charged_orders(shop: Shop) -> dict[str, list[int]]:
    """order id -> amounts of its PaymentIntents that were charged."""
    out: dict[str, list[int]] = {}
    for pi in shop.client.v1.payment_intents.list(params={"limit": 100}).data:
        if pi.status == "succeeded":
            out.setdefault(pi.metadata["order_id"], []).append(int(pi.amount))
    return out


def sell_order(rig: Rig, session: str, order: str, amount: int) -> dict[str, Any]:
    return sell(rig.core, session, amount, metadata={"order_id": order})


def restored_reader(
    tmp_path: Path, cloud: LiveCloud, clock: ManualClock, shop: Shop, opened: list[Rig]
) -> tuple[Path, Path, dict[str, int]]:
    """A reader sells O-0 and O-1 (held), its whole directory is copied, then it forwards them
    and sells and forwards O-2. Returns (data directory, the copy, order -> amount)."""
    data = tmp_path / "reader"
    rig = open_rig(data, cloud, clock, unattended_forwarding=True)
    opened.append(rig)
    register(rig, shop)
    session = connect_online(rig, shop)["session"]
    sold = {"O-0": 1200, "O-1": 1300}
    for order, amount in sold.items():
        sell_order(rig, session, order, amount)
    rig.close()
    snapshot = tmp_path / "snapshot"
    shutil.copytree(data, snapshot, ignore=shutil.ignore_patterns("*.lock", "*-shm"))

    rig = open_rig(data, cloud, clock, unattended_forwarding=True)
    opened.append(rig)
    rig.core.heartbeat()
    assert rig.core.forwarder.drain().approved == 2
    session = connect_online(rig, shop)["session"]
    sold["O-2"] = 1400
    sell_order(rig, session, "O-2", 1400)
    assert rig.core.forwarder.drain().approved == 1
    rig.close()
    return data, snapshot, sold


def put_back(data: Path, snapshot: Path) -> None:
    shutil.rmtree(data)
    shutil.copytree(snapshot, data)


def test_a_payment_after_a_whole_directory_restore_is_charged(
    tmp_path: Path, cloud: LiveCloud, clock: ManualClock, shop: Shop, opened: list[Rig]
) -> None:
    data, snapshot, sold = restored_reader(tmp_path, cloud, clock, shop, opened)
    put_back(data, snapshot)

    rig = open_rig(data, cloud, clock, unattended_forwarding=True)
    opened.append(rig)
    assert rig.vault.head_sequence == 2  # the copy's counter: sequence 3 was O-2's
    rig.core.heartbeat()
    assert rig.vault.head_sequence == 3
    status = rig.core.status()["sequence_check"]
    assert status["checked"] is True and status["blocked"] is None
    assert status["advanced"] is not None
    assert (status["advanced"]["from"], status["advanced"]["to"]) == (2, 3)

    session = connect_online(rig, shop)["session"]
    sold["O-3"] = 1500
    stored = sell_order(rig, session, "O-3", 1500)
    assert stored["status"] == "succeeded"
    result = rig.core.forwarder.drain()
    # The restored O-0 and O-1 are answered as replays; O-3 is charged under sequence 4.
    assert (result.approved, result.rejected) == (3, 0), result
    assert rig.vault.summary().count == 0
    assert charged_orders(shop) == {order: [amount] for order, amount in sold.items()}


def test_after_a_start_the_first_offline_payment_asks_the_cloud_first(
    tmp_path: Path, cloud: LiveCloud, clock: ManualClock, shop: Shop, opened: list[Rig]
) -> None:
    data, snapshot, sold = restored_reader(tmp_path, cloud, clock, shop, opened)
    put_back(data, snapshot)

    # No heartbeat yet: the confirm itself asks the cloud before storing.
    rig = open_rig(data, cloud, clock, unattended_forwarding=True)
    opened.append(rig)
    session = connect_online(rig, shop)["session"]
    assert rig.core.status()["sequence_check"]["checked"] is False
    sold["O-3"] = 1500
    sell_order(rig, session, "O-3", 1500)
    assert rig.vault.head_sequence == 4
    assert rig.core.forwarder.drain().rejected == 0
    assert charged_orders(shop) == {order: [amount] for order, amount in sold.items()}


def test_offline_after_a_start_the_vault_alone_decides(
    tmp_path: Path, cloud: LiveCloud, clock: ManualClock, shop: Shop, opened: list[Rig]
) -> None:
    rig = open_rig(tmp_path / "reader", cloud, clock)
    opened.append(rig)
    register(rig, shop)
    pairing = connect_online(rig, shop)["pairing_secret"]
    rig.close()
    line = Line(rig.line.link)
    line.down = True
    again = open_rig(tmp_path / "reader", cloud, clock, line=line)
    opened.append(again)
    session = again.core.connect(pos_id="till-1", pairing_secret=pairing)["session"]
    # The cloud cannot be reached: the payment is stored (the residual risk is documented).
    assert sell(again.core, session, behavior="prefer_online")["status"] == "succeeded"
    assert again.core.status()["sequence_check"]["checked"] is True


def test_a_vault_that_cannot_catch_up_refuses_to_store(
    tmp_path: Path, cloud: LiveCloud, clock: ManualClock, shop: Shop, opened: list[Rig]
) -> None:
    rig = open_rig(tmp_path / "reader", cloud, clock)
    opened.append(rig)
    register(rig, shop)
    session = connect_online(rig, shop)["session"]
    sell(rig.core, session)
    # As if the cloud held a sequence far ahead of the held record (more than may be skipped
    # while records are held): the reader must not store until it caught up.
    rig.core._catch_up(10**9, clock.now())
    blocked = rig.core.status()["sequence_check"]
    assert blocked["checked"] is False and "behind" in blocked["blocked"]
    with pytest.raises(ReaderError) as exc:
        sell(rig.core, session)
    assert exc.value.code == ErrorCode.OFFLINE_TRANSACTION_DECLINED
    assert rig.vault.summary().count == 1

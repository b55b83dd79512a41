"""Records stored while no POS listens are forwarded as soon as one subscribes, without
waiting for another payment or a change of connectivity (found by the simulator, seed 6)."""

from __future__ import annotations

from pathlib import Path

from reader_kit import connect_online, make_shop, open_rig, register, sell

from stowpay.cloud.testing import LiveCloud
from stowpay.reader.core import Event
from stowpay.wire.clock import ManualClock


def test_a_pos_subscribing_wakes_the_waiting_records(cloud: LiveCloud, tmp_path: Path) -> None:
    shop = make_shop(cloud)
    rig = open_rig(tmp_path / "reader", cloud, ManualClock(1_780_000_000.0))
    try:
        register(rig, shop)
        session = str(connect_online(rig, shop)["session"])
        sell(rig.core, session)
        forwarder = rig.core.forwarder
        waited = forwarder.step()  # woken by the payment: no POS listens, so nothing goes
        assert waited is not None and waited.forwarded == 0 and waited.remaining == 1
        assert forwarder.step() is None  # and nothing is due until something wakes it

        def pos(event: Event | None) -> None:
            if event is not None and event[0] == "connection_token_request":
                rig.core.answer_token_request(
                    session, event[1]["request_id"], connection_token=shop.token()
                )

        rig.core.subscribe(session, pos)
        drained = forwarder.step()
        assert drained is not None and drained.forwarded == 1 and drained.remaining == 0
    finally:
        rig.close()

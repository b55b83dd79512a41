"""The reader core's online payments against a live cloud, through the real `HttpCloudLink`:
PaymentIntents created and confirmed at the cloud, online declines, cancel and capture, the
LAN address reported for discovery, and the money case, a confirm whose answer never comes
back, with the fault proxy in the line. The merchant checks everything with `stripe`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2 as httpx
import pytest
import stripe
from reader_kit import Line, Rig, Shop, card, connect_online, make_shop, open_rig, wait_until
from reader_kit import register as register_rig
from starlette.testclient import TestClient

from stowpay.cloud.testing import LiveCloud
from stowpay.reader.cloud_link import CloudUnreachable, HttpCloudLink
from stowpay.reader.core import Event, ReaderError
from stowpay.reader.daemon import ReaderConfig, ReaderDaemon
from stowpay.reader.lan import create_lan_app
from stowpay.sim.proxy import FaultProxy, Faults
from stowpay.wire.clock import ManualClock, SystemClock
from stowpay.wire.terminal_codes import ErrorCode

Factory = Any
APPROVED = "4242424242424242"
DECLINED = "4000000000009995"  # insufficient_funds


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1_780_000_000.0)


@pytest.fixture
def shop(cloud: LiveCloud) -> Shop:
    return make_shop(cloud)


@pytest.fixture
def rigs(tmp_path: Path, cloud: LiveCloud, clock: ManualClock) -> Iterator[Factory]:
    """Open readers (closed at teardown); `rigs(name, **options)`."""
    opened: list[Rig] = []

    def _open(name: str = "reader", **kw: Any) -> Rig:
        rig = open_rig(tmp_path / name, cloud, clock, **kw)
        opened.append(rig)
        return rig

    yield _open
    for rig in opened:
        rig.close()


@pytest.fixture
def rig(rigs: Factory, shop: Shop) -> Rig:
    """A registered reader at `shop`, online."""
    r: Rig = rigs()
    register_rig(r, shop)
    return r


class LosingLine(Line):
    """The real link, which can lose a confirm's answer after the cloud acted on it."""

    def __init__(self, link: HttpCloudLink) -> None:
        super().__init__(link)
        self.lose_confirm_answers = False
        self.confirms = 0

    def confirm_payment_intent(
        self, device_key: str, payment_intent: str, *, sealed: bytes, display: Any
    ) -> Any:
        self.confirms += 1
        answer = super().confirm_payment_intent(
            device_key, payment_intent, sealed=sealed, display=display
        )
        if self.lose_confirm_answers:
            raise CloudUnreachable("the answer was lost on the way back")
        return answer


def intents(shop: Shop) -> list[stripe.PaymentIntent]:
    return list(shop.client.v1.payment_intents.list(params={"limit": 100}).data)


def charges(shop: Shop) -> list[stripe.Charge]:
    return list(shop.client.v1.charges.list(params={"limit": 100}).data)


def create(rig: Rig, session: str, behavior: str = "prefer_online", **kw: Any) -> dict[str, Any]:
    kw.setdefault("amount", 1299)
    kw.setdefault("currency", "usd")
    kw.setdefault("metadata", {"order_id": "A-17"})
    return rig.core.create_payment_intent(session, offline_behavior=behavior, **kw)


def code_of(caught: pytest.ExceptionInfo[ReaderError]) -> ErrorCode:
    return caught.value.code


def pos_events(rig: Rig, session: str, shop: Shop) -> list[Event]:
    """Listen as the connected POS does, answering token requests with the shop's tokens."""
    seen: list[Event] = []

    def deliver(event: Event | None) -> None:
        if event is None:
            return
        seen.append(event)
        name, data = event
        if name == "connection_token_request":
            rig.core.answer_token_request(
                session, data["request_id"], connection_token=shop.token()
            )

    rig.core.subscribe(session, deliver)
    return seen


# -- online, answered ----------------------------------------------------------------------------


def test_an_online_payment_is_one_payment_intent_at_the_cloud(rig: Rig, shop: Shop) -> None:
    session = connect_online(rig, shop)["session"]
    pi = create(rig, session)
    assert pi["id"].startswith("pi_") and pi["local_id"].startswith("pio_")
    assert pi["status"] == "requires_payment_method" and pi["offline_details"] is None
    collected = rig.core.collect(session, pi["local_id"], card(APPROVED))
    assert collected["status"] == "requires_confirmation" and collected["id"] == pi["id"]
    done = rig.core.confirm(session, pi["id"])  # by its cloud id, or its local id
    assert done["status"] == "succeeded" and done["offline_details"] is None
    assert done["amount_received"] == 1299 and done["local_id"] == pi["local_id"]
    # A retried confirm answers the same payment.
    assert rig.core.confirm(session, pi["local_id"]) == done
    # The merchant's view: one PaymentIntent, charged once, card present at this reader.
    [seen] = intents(shop)
    assert seen.id == pi["id"] and seen.status == "succeeded"
    assert seen.metadata["order_id"] == "A-17"
    [charge] = charges(shop)
    details = charge.payment_method_details.card_present
    assert charge.paid and details.offline is None and details.last4 == "4242"
    assert rig.state.identity is not None and details.reader == rig.state.identity.reader
    assert rig.vault.summary().count == 0


def test_an_online_decline_carries_the_payment_intent_and_allows_another_card(
    rig: Rig, shop: Shop
) -> None:
    session = connect_online(rig, shop)["session"]
    pi = create(rig, session)
    rig.core.collect(session, pi["local_id"], card(DECLINED))
    with pytest.raises(ReaderError) as declined:
        rig.core.confirm(session, pi["local_id"])
    assert code_of(declined) == ErrorCode.DECLINED_BY_STRIPE_API
    assert declined.value.decline_code == "insufficient_funds"
    after = declined.value.payment_intent
    assert after is not None and after["id"] == pi["id"]
    assert after["status"] == "requires_payment_method"
    # Nothing to confirm until a card is read again; then it goes through.
    with pytest.raises(ReaderError) as uncollected:
        rig.core.confirm(session, pi["local_id"])
    assert code_of(uncollected) == ErrorCode.INVALID_REQUIRED_PARAMETER
    rig.core.collect(session, pi["local_id"], card(APPROVED))
    assert rig.core.confirm(session, pi["local_id"])["status"] == "succeeded"
    assert sorted(c.paid for c in charges(shop)) == [False, True]
    assert [p.id for p in intents(shop)] == [pi["id"]]


def test_online_card_rules_are_the_issuers_not_the_offline_ones(rig: Rig, shop: Shop) -> None:
    session = connect_online(rig, shop)["session"]
    # A swipe is refused offline (CARD_SWIPE_NOT_AVAILABLE), not online.
    pi = create(rig, session)
    swiped = card(APPROVED, read_method="magnetic_stripe_track2")
    rig.core.collect(session, pi["local_id"], swiped)
    assert rig.core.confirm(session, pi["local_id"])["status"] == "succeeded"
    offline = create(rig, session, "force_offline")
    with pytest.raises(ReaderError) as refused:
        rig.core.collect(session, offline["local_id"], swiped)
    assert code_of(refused) == ErrorCode.CARD_SWIPE_NOT_AVAILABLE


def test_cancel_and_capture_online(rig: Rig, shop: Shop) -> None:
    session = connect_online(rig, shop)["session"]
    manual = create(rig, session, capture_method="manual")
    rig.core.collect(session, manual["local_id"], card(APPROVED))
    assert rig.core.confirm(session, manual["local_id"])["status"] == "requires_capture"
    captured = rig.core.capture_payment_intent(session, manual["id"], amount_to_capture=1000)
    assert captured["status"] == "succeeded" and captured["amount_received"] == 1000
    assert shop.client.v1.payment_intents.retrieve(manual["id"]).amount_received == 1000

    dropped = create(rig, session)
    rig.core.collect(session, dropped["local_id"], card(APPROVED))
    assert rig.core.cancel_payment_intent(session, dropped["local_id"])["status"] == "canceled"
    assert shop.client.v1.payment_intents.retrieve(dropped["id"]).status == "canceled"
    with pytest.raises(ReaderError) as late:
        rig.core.confirm(session, dropped["local_id"])
    assert code_of(late) == ErrorCode.INVALID_REQUIRED_PARAMETER
    # An offline one is canceled on the reader; a cloud id the reader never held, at the cloud.
    local = create(rig, session, "force_offline")
    assert rig.core.cancel_payment_intent(session, local["local_id"])["status"] == "canceled"
    web = shop.client.v1.payment_intents.create(
        params={"amount": 700, "currency": "usd", "payment_method_types": ["card_present"]}
    )
    assert rig.core.cancel_payment_intent(session, web.id)["status"] == "canceled"
    assert charges(shop)[0].amount_captured == 1000 and len(charges(shop)) == 1


def test_creating_online_falls_back_or_fails_by_offline_behavior(rig: Rig, shop: Shop) -> None:
    session = connect_online(rig, shop)["session"]
    rig.line.down = True
    with pytest.raises(ReaderError) as required:
        create(rig, session, "require_online")
    assert code_of(required) == ErrorCode.NOT_CONNECTED_TO_INTERNET_AND_REQUIRE_ONLINE_SET
    assert rig.core.online  # require_online tries without judging the line
    preferred = create(rig, session)
    assert preferred["id"] is None and preferred["local_id"].startswith("pio_")
    assert not rig.core.online  # the failed create told the reader the cloud is gone
    assert intents(shop) == []


# -- online, unanswered: the money case ----------------------------------------------------------


def test_require_online_unanswered_is_a_connection_error_and_not_stored(
    rigs: Factory, cloud: LiveCloud, shop: Shop
) -> None:
    line = LosingLine(HttpCloudLink(cloud.url))
    rig: Rig = rigs(line=line)
    register_rig(rig, shop)
    session = connect_online(rig, shop)["session"]
    pi = create(rig, session, "require_online")
    rig.core.collect(session, pi["local_id"], card(APPROVED))
    line.lose_confirm_answers = True
    with pytest.raises(ReaderError) as unanswered:
        rig.core.confirm(session, pi["local_id"])
    assert code_of(unanswered) == ErrorCode.STRIPE_API_CONNECTION_ERROR
    assert rig.vault.summary().count == 0
    # The cloud did charge. Confirming again, once answers come back, tells so: no second charge.
    line.lose_confirm_answers = False
    done = rig.core.confirm(session, pi["local_id"])
    assert done["status"] == "succeeded" and line.confirms == 2
    assert [p.id for p in intents(shop)] == [pi["id"]] and len(charges(shop)) == 1


@pytest.mark.parametrize("fault", ["drop_response", "drop_request"])
def test_prefer_online_unanswered_is_stored_under_its_id_and_charged_once(
    rigs: Factory, cloud: LiveCloud, shop: Shop, fault: str
) -> None:
    """The fault proxy loses every confirm: after the cloud charged (drop_response), or
    before it saw it (drop_request). Either way the payment is charged exactly once."""
    where = urlsplit(cloud.url)
    faults = Faults(**{fault: 1.0}, only="/device/v1/payment_intents/")
    proxy = FaultProxy((where.hostname or "127.0.0.1", where.port or 80), faults).start()
    try:
        rig: Rig = rigs(line=Line(HttpCloudLink(proxy.url)), unattended_forwarding=True)
        register_rig(rig, shop)
        session = connect_online(rig, shop)["session"]
        forwarded = pos_events(rig, session, shop)
        pi = create(rig, session, capture_method="manual")
        rig.core.collect(session, pi["local_id"], card(APPROVED))
        kept = rig.core.confirm(session, pi["local_id"])
        assert proxy.counts[fault] == 1
        # Answered as stored offline, keeping its PaymentIntent's id.
        assert kept["id"] == pi["id"] and kept["status"] == "requires_capture"
        assert kept["offline_details"]["requires_upload"] is True
        assert kept["offline_details"]["card_present_details"]["last4"] == "4242"
        [record] = rig.vault.pending()
        assert record.local_id == pi["id"]
        charged_before = len(charges(shop))
        assert charged_before == (1 if fault == "drop_response" else 0)

        rig.core.start()

        def outcomes() -> list[dict[str, Any]]:
            return [data for name, data in forwarded if name == "payment_intent_forwarded"]

        wait_until(lambda: bool(outcomes()), "the record was forwarded")
        [event] = outcomes()
        assert rig.vault.summary().count == 0
        assert event["status"] == "approved" and event["local_id"] == pi["id"]
        assert event["payment_intent"]["id"] == pi["id"]
        # One PaymentIntent, one charge, whatever happened to the confirm.
        [seen] = intents(shop)
        assert seen.id == pi["id"] and seen.status == "requires_capture"
        assert seen.metadata["order_id"] == "A-17"
        [charge] = charges(shop)
        offline = charge.payment_method_details.card_present.offline
        assert (offline is None) == (fault == "drop_response")
        # Forwarded, it is captured by its id like any online one; the reader forgot it.
        proxy.faults = Faults()
        captured = rig.core.capture_payment_intent(session, pi["id"])
        assert captured["status"] == "succeeded" and captured["local_id"] is None
    finally:
        proxy.stop()


def test_prefer_online_with_the_cloud_gone_since_the_create_is_stored_unasked(
    rigs: Factory, cloud: LiveCloud, shop: Shop
) -> None:
    line = LosingLine(HttpCloudLink(cloud.url))
    rig: Rig = rigs(line=line, unattended_forwarding=True)
    register_rig(rig, shop)
    session = connect_online(rig, shop)["session"]
    pi = create(rig, session)
    rig.core.collect(session, pi["local_id"], card(APPROVED))
    line.down = True
    rig.core.set_online(False)
    kept = rig.core.confirm(session, pi["local_id"])
    assert kept["id"] == pi["id"] and kept["offline_details"]["requires_upload"] is True
    assert line.confirms == 0 and rig.vault.summary().count == 1
    line.down = False
    rig.core.set_online(True)
    rig.core.start()
    wait_until(lambda: rig.vault.summary().count == 0, "the record was forwarded")
    seen = shop.client.v1.payment_intents.retrieve(pi["id"], params={"expand": ["latest_charge"]})
    assert seen.status == "succeeded"
    assert seen.latest_charge.payment_method_details.card_present.offline.type == "deferred"
    assert len(intents(shop)) == 1 and len(charges(shop)) == 1


def test_a_stored_payment_is_captured_only_once_forwarded(
    rigs: Factory, cloud: LiveCloud, shop: Shop
) -> None:
    line = LosingLine(HttpCloudLink(cloud.url))
    rig: Rig = rigs(line=line)
    register_rig(rig, shop)
    session = connect_online(rig, shop)["session"]
    pi = create(rig, session, capture_method="manual")
    rig.core.collect(session, pi["local_id"], card(APPROVED))
    line.lose_confirm_answers = True
    rig.core.confirm(session, pi["local_id"])
    with pytest.raises(ReaderError) as early:
        rig.core.capture_payment_intent(session, pi["id"])
    assert code_of(early) == ErrorCode.INVALID_REQUIRED_PARAMETER
    with pytest.raises(ReaderError) as stored:
        rig.core.cancel_payment_intent(session, pi["local_id"])
    assert code_of(stored) == ErrorCode.INVALID_REQUIRED_PARAMETER
    assert rig.vault.summary().count == 1


# -- discovery and the LAN API -------------------------------------------------------------------


def test_the_reader_reports_its_lan_address_for_discovery(
    rigs: Factory, cloud: LiveCloud, shop: Shop
) -> None:
    rig: Rig = rigs(lan_url=lambda: "http://127.0.0.1:4399")
    register_rig(rig, shop)
    rig.core.heartbeat()
    with HttpCloudLink(cloud.url) as link:
        [found] = link.discover(shop.token(), location=shop.location)
    assert rig.state.identity is not None and found["id"] == rig.state.identity.reader
    assert found["lan_url"] == "http://127.0.0.1:4399"


def test_a_running_reader_daemon_is_found_at_its_address(
    tmp_path: Path, cloud: LiveCloud, shop: Shop
) -> None:
    lines: list[str] = []
    daemon = ReaderDaemon(
        ReaderConfig(
            cloud_url=cloud.url,
            data_dir=tmp_path / "daemon",
            port=0,
            registration_interval=0.05,
            heartbeat_interval=0.2,
        ),
        clock=SystemClock(),
        out=lines.append,
    )
    url = daemon.start()
    try:
        wait_until(lambda: any(x.startswith("Registration code: ") for x in lines), "a code")
        shop.register(next(x for x in lines if x.startswith("Registration code: ")).split()[-1])
        wait_until(lambda: daemon.core is not None and daemon.core.online, "online")
        with HttpCloudLink(cloud.url) as link:
            [found] = link.discover(shop.token())
        assert found["lan_url"] == url
        # What discovery gives is where a POS reaches this reader.
        assert httpx.get(found["lan_url"] + "/v1/status").json()["reader"] == found["id"]
    finally:
        daemon.stop()


def test_the_lan_api_serves_online_payments(rig: Rig, shop: Shop) -> None:
    with TestClient(create_lan_app(rig.core)) as client:
        r = client.post("/v1/connect", json={"pos_id": "till-1", "connection_token": shop.token()})
        client.headers["Authorization"] = f"Bearer {r.json()['session']}"
        pi = client.post(
            "/v1/payment_intents",
            json={"amount": 1299, "currency": "usd", "offline_behavior": "require_online"},
        ).json()
        assert pi["id"].startswith("pi_")
        number = {"number": DECLINED, "exp_month": 12, "exp_year": 2031}
        client.post(f"/v1/payment_intents/{pi['id']}/collect", json={"card": number})
        r = client.post(f"/v1/payment_intents/{pi['id']}/confirm")
        assert r.status_code == 402, r.text
        error = r.json()["error"]
        assert error["type"] == "terminal_error" and error["code"] == "DECLINED_BY_STRIPE_API"
        assert error["decline_code"] == "insufficient_funds" and error["message"]
        assert error["payment_intent"]["id"] == pi["id"]
        assert error["payment_intent"]["status"] == "requires_payment_method"
        r = client.post(f"/v1/payment_intents/{pi['local_id']}/cancel")
        assert r.status_code == 200 and r.json()["status"] == "canceled"
        r = client.post(f"/v1/payment_intents/{pi['id']}/capture", json={"amount_to_capture": 0})
        assert r.status_code == 400
        r = client.post("/v1/payment_intents/pio_nothing/capture")
        assert (
            r.status_code == 404 and r.json()["error"]["code"] == "OFFLINE_PAYMENT_INTENT_NOT_FOUND"
        )

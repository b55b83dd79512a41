"""The device API's online calls against a live cloud: ping, discovery, a reader's PaymentIntents
(create, confirm with a sealed card read, cancel, capture), and the forwarded record of a payment
whose online confirm went unanswered, which must settle that PaymentIntent and never charge
twice. The reader side is the real `HttpCloudLink`; the merchant looks through `stripe`."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import stripe

from stowpay.cloud.settings import Settings
from stowpay.cloud.testing import LiveCloud, live_cloud
from stowpay.reader.cloud_link import (
    CloudDeclined,
    CloudRefused,
    DeviceDescription,
    HttpCloudLink,
    OnlinePayment,
)
from stowpay.reader.online import seal_for_online
from stowpay.reader.vault import CardRead, OfflinePayment, SealingKey, StoredPayment, Vault
from stowpay.wire import sealed as sealing
from stowpay.wire.clock import ManualClock

START = 1_780_000_000.0
APPROVED = "4242424242424242"
DECLINED = "4000000000009995"  # insufficient_funds
ADDRESS = {"line1": "1 Main St", "city": "Springfield", "country": "US"}


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def live(db_url: str, clock: ManualClock) -> Iterator[LiveCloud]:
    """Two accounts, over each store; webhooks are polled for once an hour, so a prompt
    delivery shows a wake."""
    server = live_cloud(Settings(db=db_url, clock=clock, webhook_poll_interval=3600.0))
    server.new_account()
    server.new_account()
    yield server
    server.stop()


@pytest.fixture
def link(live: LiveCloud) -> Iterator[HttpCloudLink]:
    with HttpCloudLink(live.url) as client:
        yield client


def merchant(cloud: LiveCloud, n: int = 0) -> stripe.StripeClient:
    return stripe.StripeClient(
        cloud.accounts[n].secret_key, base_addresses={"api": cloud.url}, max_network_retries=0
    )


@dataclass
class Device:
    """A registered reader: its identity, key, Location, the cloud's sealing key, the merchant."""

    account: str
    reader: str
    key: str
    location: str
    sealing: SealingKey
    stripe: stripe.StripeClient


def register(
    link: HttpCloudLink,
    cloud: LiveCloud,
    n: int = 0,
    *,
    location: str | None = None,
    lan_url: str | None = None,
) -> Device:
    c = merchant(cloud, n)
    if location is None:
        config = c.v1.terminal.configurations.create(params={"offline": {"enabled": True}})
        location = c.v1.terminal.locations.create(
            params={
                "display_name": "Shop",
                "address": ADDRESS,
                "configuration_overrides": config.id,
            }
        ).id
    code = link.request_registration_code(DeviceDescription("bbpos_wisepos_e", "SN-1", "1.0"))
    reader = c.v1.terminal.readers.create(
        params={"registration_code": code.code, "location": location}
    )
    activation = link.activate(code.code)
    assert activation is not None and activation.reader == reader.id
    context = link.heartbeat(
        activation.device_key,
        status="online",
        ip_address="10.0.0.7",
        device_sw_version="1.0",
        lan_url=lan_url,
    )
    return Device(
        activation.account,
        activation.reader,
        activation.device_key,
        location,
        SealingKey.from_document(context.sealing_key),
        c,
    )


def card(number: str = APPROVED) -> CardRead:
    return CardRead(
        number=number,
        exp_month=12,
        exp_year=2031,
        brand="visa",
        read_method="contact_emv",
        cardholder_name="Ada Lovelace",
        emv_data={"9F26": "8E19ED4BCA5C670A"},
        receipt={"application_preferred_name": "VISA CREDIT"},
    )


def create(
    link: HttpCloudLink, device: Device, local_id: str, amount: int = 1299, **over: Any
) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "amount": amount,
        "currency": "usd",
        "capture_method": "automatic",
        "metadata": {"order_id": "A-17"},
        "description": "coffee",
        "local_id": local_id,
    }
    fields.update(over)
    return dict(link.create_payment_intent(device.key, OnlinePayment(**fields)))


def confirm(
    link: HttpCloudLink, device: Device, pi: dict[str, Any], number: str = APPROVED
) -> dict[str, Any]:
    read = seal_for_online(
        card(number),
        device.sealing,
        account=device.account,
        reader=device.reader,
        amount=pi["amount"],
        currency=pi["currency"],
        capture_method=pi["capture_method"],
    )
    return dict(
        link.confirm_payment_intent(device.key, pi["id"], sealed=read.sealed, display=read.display)
    )


def charges(device: Device) -> list[stripe.Charge]:
    return list(device.stripe.v1.charges.list(params={"limit": 100}).data)


def intents(device: Device) -> list[stripe.PaymentIntent]:
    return list(device.stripe.v1.payment_intents.list(params={"limit": 100}).data)


# -- ping and discovery ----------------------------------------------------------------------


def test_ping_needs_no_credential_and_tells_the_cloud_time(
    live: LiveCloud, link: HttpCloudLink, clock: ManualClock
) -> None:
    assert link.ping() == START
    clock.advance(5)
    r = httpx.get(live.url + "/device/v1/ping")
    assert r.status_code == 200 and r.json() == {"ok": True, "server_time": START + 5}
    assert r.headers["Request-Id"].startswith("req_")


def test_discovery_finds_the_tokens_readers_with_their_lan_address(
    live: LiveCloud, link: HttpCloudLink
) -> None:
    here = register(link, live, lan_url="http://127.0.0.1:4300")
    there = register(link, live)  # another Location of the same account, no LAN address
    register(link, live, 1, lan_url="http://127.0.0.1:4301")  # another account's reader

    token = str(here.stripe.v1.terminal.connection_tokens.create().secret)
    found = link.discover(token)
    assert {r["id"]: r["lan_url"] for r in found} == {
        here.reader: "http://127.0.0.1:4300",
        there.reader: None,
    }
    [shown] = [r for r in found if r["id"] == here.reader]
    assert shown["object"] == "terminal.reader" and shown["location"] == here.location
    assert shown["status"] == "online" and shown["ip_address"] == "10.0.0.7"
    assert shown["serial_number"] == "SN-1" and shown["last_seen_at"] is not None
    assert not [k for k in shown if k.startswith("_")]
    # The token was used up by the discovery.
    with pytest.raises(CloudRefused) as used:
        link.discover(token)
    assert used.value.status == 401 and used.value.code == "connection_token_invalid"

    # At one Location only; a token scoped to a Location finds that Location's readers.
    token = str(here.stripe.v1.terminal.connection_tokens.create().secret)
    assert [r["id"] for r in link.discover(token, location=there.location)] == [there.reader]
    scoped = here.stripe.v1.terminal.connection_tokens.create(params={"location": here.location})
    assert [r["id"] for r in link.discover(str(scoped.secret))] == [here.reader]
    scoped = here.stripe.v1.terminal.connection_tokens.create(params={"location": here.location})
    with pytest.raises(CloudRefused) as elsewhere:
        link.discover(str(scoped.secret), location=there.location)
    assert elsewhere.value.status == 403 and elsewhere.value.code == "location_mismatch"
    # Another account's Location is not found with this account's token.
    other = merchant(live, 1).v1.terminal.locations.list().data[0].id
    token = str(here.stripe.v1.terminal.connection_tokens.create().secret)
    with pytest.raises(CloudRefused) as foreign:
        link.discover(token, location=other)
    assert foreign.value.status == 404

    # The LAN address stays private on /v1.
    raw = httpx.get(
        f"{live.url}/v1/terminal/readers/{here.reader}",
        headers={"Authorization": f"Bearer {live.accounts[0].secret_key}"},
    )
    assert raw.status_code == 200 and "lan_url" not in raw.text and "4300" not in raw.text


def test_a_heartbeat_lan_url_must_be_an_http_address(live: LiveCloud, link: HttpCloudLink) -> None:
    device = register(link, live)
    for bad in ("ftp://127.0.0.1:21", "http://", "javascript:alert(1)", "http://a b:1"):
        r = httpx.post(
            live.url + "/device/v1/heartbeat",
            json={"status": "online", "device_sw_version": "1.0", "lan_url": bad},
            headers={"Authorization": f"Bearer {device.key}"},
        )
        assert r.status_code == 400, bad
        assert r.json()["error"]["param"] == "lan_url"


# -- a reader's PaymentIntents -----------------------------------------------------------------


def test_create_is_the_v1_payment_intent_and_idempotent_per_local_id(
    live: LiveCloud, link: HttpCloudLink
) -> None:
    device = register(link, live)
    pi = create(link, device, "pio_1")
    assert pi["id"].startswith("pi_") and pi["status"] == "requires_payment_method"
    assert pi["payment_method_types"] == ["card_present"]
    seen = device.stripe.v1.payment_intents.retrieve(pi["id"])
    assert seen.amount == 1299 and seen.metadata["order_id"] == "A-17"
    assert seen.description == "coffee" and seen.capture_method == "automatic"
    # The same local id again (an answer lost): the same PaymentIntent, not a second one.
    assert create(link, device, "pio_1")["id"] == pi["id"]
    assert [p.id for p in intents(device)] == [pi["id"]]
    # The same local id for another payment is refused.
    with pytest.raises(CloudRefused) as reused:
        create(link, device, "pio_1", amount=500)
    assert reused.value.status == 400 and reused.value.error["type"] == "idempotency_error"
    # Another local id is another payment.
    assert create(link, device, "pio_2")["id"] != pi["id"]
    with pytest.raises(CloudRefused) as small:
        create(link, device, "pio_3", amount=10)
    assert small.value.code == "amount_too_small"


def test_an_approved_confirm_charges_once_however_often_it_is_asked(
    live: LiveCloud, link: HttpCloudLink
) -> None:
    device = register(link, live)
    pi = create(link, device, "pio_1")
    done = confirm(link, device, pi)
    assert done["id"] == pi["id"] and done["status"] == "succeeded"
    assert done["amount_received"] == 1299
    # Asked again (its answer was lost): the charged PaymentIntent, no second charge.
    assert confirm(link, device, pi)["latest_charge"] == done["latest_charge"]
    [charge] = charges(device)
    details = charge.payment_method_details.card_present
    assert charge.id == done["latest_charge"] and charge.paid and charge.captured
    assert details.reader == device.reader and details.last4 == "4242"
    assert details.offline is None and details.read_method == "contact_emv"
    assert details.receipt["application_preferred_name"] == "VISA CREDIT"
    assert charge.metadata["order_id"] == "A-17"
    types = [e.type for e in device.stripe.v1.events.list().data]
    assert types.count("payment_intent.succeeded") == 1 and "payment_intent.created" in types


def test_a_decline_is_a_card_error_with_the_payment_intent(
    live: LiveCloud, link: HttpCloudLink
) -> None:
    device = register(link, live)
    pi = create(link, device, "pio_1")
    with pytest.raises(CloudDeclined) as declined:
        confirm(link, device, pi, DECLINED)
    assert declined.value.status == 402 and declined.value.code == "card_declined"
    assert declined.value.decline_code == "insufficient_funds"
    after = declined.value.payment_intent
    assert after is not None and after["id"] == pi["id"]
    assert after["status"] == "requires_payment_method"
    assert after["last_payment_error"]["decline_code"] == "insufficient_funds"
    # The decline is kept (as on /v1), and another card may be tried.
    assert device.stripe.v1.payment_intents.retrieve(pi["id"]).status == "requires_payment_method"
    assert confirm(link, device, pi)["status"] == "succeeded"
    assert sorted(c.paid for c in charges(device)) == [False, True]


def test_manual_capture_and_cancel(live: LiveCloud, link: HttpCloudLink) -> None:
    device = register(link, live)
    manual = create(link, device, "pio_1", capture_method="manual")
    assert confirm(link, device, manual)["status"] == "requires_capture"
    captured = dict(link.capture_payment_intent(device.key, manual["id"], amount_to_capture=1000))
    assert captured["status"] == "succeeded" and captured["amount_received"] == 1000
    again = link.capture_payment_intent(device.key, manual["id"])
    assert again["amount_received"] == 1000
    assert device.stripe.v1.charges.retrieve(captured["latest_charge"]).amount_captured == 1000

    dropped = create(link, device, "pio_2")
    assert link.cancel_payment_intent(device.key, dropped["id"])["status"] == "canceled"
    assert link.cancel_payment_intent(device.key, dropped["id"])["status"] == "canceled"
    assert device.stripe.v1.payment_intents.retrieve(dropped["id"]).status == "canceled"
    with pytest.raises(CloudRefused) as late:
        confirm(link, device, dropped)
    assert late.value.code == "payment_intent_unexpected_state"


def test_a_seal_made_for_anything_else_does_not_open(live: LiveCloud, link: HttpCloudLink) -> None:
    device = register(link, live)
    other = register(link, live)
    pi = create(link, device, "pio_1")
    plain = json.dumps({"number": APPROVED, "exp_month": 12, "exp_year": 2031}).encode()
    display = {"brand": "visa", "last4": "4242", "receipt": {}}
    for aad in (
        sealing.associated_data(device.account, device.reader, 1),  # an offline record's
        sealing.associated_data(device.account, other.reader, 0),  # another reader's
    ):
        blob = sealing.seal(device.sealing.public_key, device.sealing.key_id, plain, aad)
        with pytest.raises(CloudRefused) as refused:
            link.confirm_payment_intent(device.key, pi["id"], sealed=blob, display=display)
        assert refused.value.code == "sealed_card_unreadable"
    assert charges(device) == []


def test_readers_reach_only_their_accounts_payment_intents(
    live: LiveCloud, link: HttpCloudLink
) -> None:
    mine = register(link, live)
    theirs = register(link, live, 1)
    pi = create(link, mine, "pio_1")
    for act in (
        lambda: confirm(link, theirs, pi),
        lambda: link.cancel_payment_intent(theirs.key, pi["id"]),
        lambda: link.capture_payment_intent(theirs.key, pi["id"]),
    ):
        with pytest.raises(CloudRefused) as hidden:
            act()
        assert hidden.value.status == 404
    # A PaymentIntent the backend made for cards online is not a reader's to take.
    web = mine.stripe.v1.payment_intents.create(params={"amount": 500, "currency": "usd"})
    with pytest.raises(CloudRefused) as refused:
        confirm(
            link,
            mine,
            {"id": web.id, "amount": 500, "currency": "usd", "capture_method": "automatic"},
        )
    assert refused.value.code == "payment_intent_unexpected_state"
    # And none of it without a device key.
    for path in ("/payment_intents", f"/payment_intents/{pi['id']}/confirm"):
        r = httpx.post(live.url + "/device/v1" + path, json={})
        assert r.status_code == 401 and r.json()["error"]["code"] == "device_key_invalid"


class Receiver:
    """A merchant's webhook receiver on loopback."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.events.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int) -> list[str]:
        deadline = time.monotonic() + 20
        while len(self.events) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return [e["type"] for e in self.events]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_online_events_wake_the_webhook_dispatcher_declines_too(
    live: LiveCloud, link: HttpCloudLink
) -> None:
    receiver = Receiver()
    try:
        device = register(link, live)
        device.stripe.v1.webhook_endpoints.create(
            params={
                "url": receiver.url,
                "enabled_events": ["payment_intent.succeeded", "payment_intent.payment_failed"],
            }
        )
        pi = create(link, device, "pio_1")
        with pytest.raises(CloudDeclined):
            confirm(link, device, pi, DECLINED)
        # Polled once an hour here: only a wake delivers these promptly.
        assert receiver.wait_for(1) == ["payment_intent.payment_failed"]
        confirm(link, device, pi)
        assert receiver.wait_for(2) == ["payment_intent.payment_failed", "payment_intent.succeeded"]
        assert receiver.events[1]["data"]["object"]["id"] == pi["id"]
    finally:
        receiver.close()


# -- the record of a payment whose online confirm went unanswered -------------------------------


@pytest.fixture
def vaults(tmp_path: Path, clock: ManualClock) -> Iterator[Any]:
    opened: list[Vault] = []

    def open_for(device: Device) -> Vault:
        vault = Vault.open(
            tmp_path / f"vault{len(opened)}", clock=clock, sealing_key=device.sealing
        )
        opened.append(vault)
        return vault

    yield open_for
    for vault in opened:
        vault.close()


def keep(vault: Vault, device: Device, pi: dict[str, Any], number: str = APPROVED) -> StoredPayment:
    """What the reader does when the confirm is unanswered: store it under the pi_ id."""
    return vault.store(
        OfflinePayment(
            account=device.account,
            reader=device.reader,
            amount=pi["amount"],
            currency=pi["currency"],
            capture_method=pi["capture_method"],
            card=card(number),
            metadata=pi["metadata"],
            description=pi["description"],
            local_id=pi["id"],
        )
    )


def forward(link: HttpCloudLink, device: Device, *records: StoredPayment) -> list[Any]:
    return link.forward(device.key, list(records), connection_token=None)


def test_a_forwarded_record_of_a_charged_payment_answers_that_charge(
    live: LiveCloud, link: HttpCloudLink, vaults: Any
) -> None:
    device = register(link, live)
    pi = create(link, device, "pio_1")
    charged = confirm(link, device, pi)  # the cloud charged; say the answer was lost
    record = keep(vaults(device), device, pi)
    [outcome] = forward(link, device, record)
    assert outcome.status == "approved" and not outcome.replayed
    assert outcome.payment_intent is not None and outcome.payment_intent["id"] == pi["id"]
    assert outcome.payment_intent["latest_charge"] == charged["latest_charge"]
    # Forwarded again: the same outcome, replayed; still one PaymentIntent and one charge.
    [again] = forward(link, device, record)
    assert again.status == "approved" and again.replayed
    assert [p.id for p in intents(device)] == [pi["id"]]
    assert [c.id for c in charges(device)] == [charged["latest_charge"]]


def test_a_forwarded_record_of_an_unconfirmed_payment_confirms_it_offline(
    live: LiveCloud, link: HttpCloudLink, vaults: Any, clock: ManualClock
) -> None:
    device = register(link, live)
    pi = create(link, device, "pio_1", capture_method="manual")
    record = keep(vaults(device), device, pi)  # the confirm never reached the cloud
    clock.advance(60)
    [outcome] = forward(link, device, record)
    assert outcome.status == "approved"
    assert outcome.payment_intent is not None and outcome.payment_intent["id"] == pi["id"]
    seen = device.stripe.v1.payment_intents.retrieve(pi["id"], params={"expand": ["latest_charge"]})
    assert seen.status == "requires_capture" and seen.metadata["order_id"] == "A-17"
    offline = seen.latest_charge.payment_method_details.card_present.offline
    assert offline.type == "deferred" and offline.stored_at == int(START)
    assert [p.id for p in intents(device)] == [pi["id"]] and len(charges(device)) == 1
    # A confirm arriving late (it was held up on the way) charges nothing more.
    assert confirm(link, device, pi)["latest_charge"] == seen.latest_charge.id
    assert len(charges(device)) == 1
    captured = device.stripe.v1.payment_intents.capture(pi["id"])
    assert captured.status == "succeeded" and captured.amount_received == 1299


def test_a_forwarded_record_of_a_declined_payment_is_declined_not_tried_again(
    live: LiveCloud, link: HttpCloudLink, vaults: Any
) -> None:
    device = register(link, live)
    pi = create(link, device, "pio_1")
    with pytest.raises(CloudDeclined):
        confirm(link, device, pi, DECLINED)  # declined; say the answer was lost
    vault = vaults(device)
    [outcome] = forward(link, device, keep(vault, device, pi, DECLINED))
    assert outcome.status == "declined"
    assert outcome.error is not None and outcome.error["decline_code"] == "insufficient_funds"
    assert len(charges(device)) == 1
    # Declined, then another card whose confirm went unanswered: that card is charged.
    [other] = forward(link, device, keep(vault, device, pi, APPROVED))
    assert other.status == "approved"
    assert device.stripe.v1.payment_intents.retrieve(pi["id"]).status == "succeeded"
    assert sorted(c.paid for c in charges(device)) == [False, True]


def test_a_late_online_confirm_after_a_forwarded_decline_does_not_try_the_card_again(
    live: LiveCloud, link: HttpCloudLink, vaults: Any
) -> None:
    # Found by the simulator (seed 171): the confirm was held up in the network, the reader
    # stored the payment, forwarded it and told the POS "declined"; then the confirm arrived.
    device = register(link, live)
    pi = create(link, device, "pio_1")
    [outcome] = forward(link, device, keep(vaults(device), device, pi, DECLINED))
    assert outcome.status == "declined" and len(charges(device)) == 1
    with pytest.raises(CloudRefused) as late:
        confirm(link, device, pi, DECLINED)
    assert late.value.code == "payment_intent_unexpected_state"
    assert len(charges(device)) == 1


def test_records_naming_a_payment_intent_they_do_not_match_are_rejected(
    live: LiveCloud, link: HttpCloudLink, vaults: Any
) -> None:
    device = register(link, live)
    theirs = register(link, live, 1)
    vault = vaults(device)
    foreign = create(link, theirs, "pio_1")
    pi = create(link, device, "pio_1")
    canceled = create(link, device, "pio_2")
    link.cancel_payment_intent(device.key, canceled["id"])
    records = [
        keep(vault, device, foreign),  # another account's PaymentIntent
        keep(vault, device, pi | {"amount": 999}),  # not what the PaymentIntent says
        keep(vault, device, canceled),  # canceled by the merchant meanwhile
    ]
    outcomes = forward(link, device, *records)
    assert [o.status for o in outcomes] == ["rejected"] * 3
    assert [o.error["code"] for o in outcomes if o.error] == [
        "offline_record_unknown_payment_intent",
        "offline_record_mismatch",
        "payment_intent_unexpected_state",
    ]
    assert charges(device) == [] and charges(theirs) == []


def test_online_calls_and_their_forwarded_records_leave_no_card_number(
    live: LiveCloud, link: HttpCloudLink, vaults: Any, db_bytes: Callable[[str], bytes]
) -> None:
    device = register(link, live)
    confirm(link, device, create(link, device, "pio_1"))
    forward(link, device, keep(vaults(device), device, create(link, device, "pio_2")))
    stored = db_bytes(live.settings.db)
    assert b"pio_2" in stored  # the scan sees the database's rows
    assert APPROVED.encode() not in stored

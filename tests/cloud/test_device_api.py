"""The device API (`/device/v1`) against a live cloud: activation, heartbeats, connection tokens
and forwarding of records made by a real vault, with the merchant acting through the official
`stripe` client."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Annotated, Any

import httpx2 as httpx
import pytest
import stripe
from pydantic import Field

from stowpay.cloud.routes import device as device_routes
from stowpay.cloud.schemas import object_schemas
from stowpay.cloud.settings import Settings
from stowpay.cloud.testing import LiveCloud, live_cloud
from stowpay.reader.cloud_link import ForwardOutcome, HttpCloudLink, forward_document
from stowpay.reader.forwarder import Forwarder, ForwardingError
from stowpay.reader.vault import (
    CardRead,
    OfflinePayment,
    SealingKey,
    StoredPayment,
    Vault,
    forward_key_for,
)
from stowpay.wire.clock import ManualClock

START = 1_780_000_000.0
APPROVED = "4242424242424242"
DECLINED = "4000000000000002"  # wire/cards.py: generic_decline
ADDRESS = {"line1": "1 Main St", "city": "Springfield", "country": "US"}


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def live(db_url: str, clock: ManualClock) -> Iterator[LiveCloud]:
    """A cloud on a clock the test moves, with two accounts, over each store. Webhooks are
    polled for only once an hour, so a delivery that arrives at once shows the dispatcher was
    woken."""
    server = live_cloud(Settings(db=db_url, clock=clock, webhook_poll_interval=3600.0))
    server.new_account()
    server.new_account()
    yield server
    server.stop()


def merchant(cloud: LiveCloud, n: int = 0) -> stripe.StripeClient:
    return stripe.StripeClient(
        cloud.accounts[n].secret_key, base_addresses={"api": cloud.url}, max_network_retries=0
    )


def post(
    cloud: LiveCloud, path: str, body: Any = None, *, key: str | None = None, raw: bytes = b""
) -> httpx.Response:
    """A device API call; every answer carries a request id, whatever it says."""
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}".strip()
    content = raw if body is None else json.dumps(body).encode()
    r = httpx.post(f"{cloud.url}/device/v1{path}", content=content, headers=headers)
    assert r.headers["Request-Id"].startswith("req_")
    assert r.status_code < 500, r.text
    return r


def error_code(r: httpx.Response) -> str:
    error = r.json()["error"]
    assert set(error) >= {"type", "message"}
    return str(error.get("code"))


@dataclass
class Device:
    """A registered device: its account, reader, key, and the merchant's view."""

    account: str
    reader: str
    key: str
    location: str
    stripe: stripe.StripeClient


def new_code(cloud: LiveCloud, serial: str = "SN-1") -> str:
    r = post(
        cloud,
        "/registration_codes",
        {"device_type": "bbpos_wisepos_e", "serial_number": serial, "device_sw_version": "1.0.0"},
    )
    assert r.status_code == 200, r.text
    return str(r.json()["registration_code"])


def register(
    cloud: LiveCloud, n: int = 0, *, location: str | None = None, serial: str = "SN-1"
) -> Device:
    """A device asks for a code, the merchant registers it, the device activates."""
    c = merchant(cloud, n)
    if location is None:
        location = c.v1.terminal.locations.create(
            params={"display_name": "Shop", "address": ADDRESS}
        ).id
    code = new_code(cloud, serial)
    reader = c.v1.terminal.readers.create(params={"registration_code": code, "location": location})
    got = post(cloud, "/activations", {"registration_code": code}).json()
    assert got["status"] == "registered" and got["reader"] == reader.id
    return Device(got["account"], reader.id, got["device_key"], location, c)


def heartbeat(cloud: LiveCloud, device: Device, **over: Any) -> httpx.Response:
    body = {"status": "online", "device_sw_version": "1.0.1", **over}
    return post(cloud, "/heartbeat", body, key=device.key)


# -- records made by a real vault ------------------------------------------------------------


class Till:
    """A device's vault, sealing to the key the cloud's heartbeat hands out."""

    def __init__(self, cloud: LiveCloud, device: Device, directory: Path, clock: ManualClock):
        sealing = heartbeat(cloud, device).json()["sealing_key"]
        self.device = device
        self.vault = Vault.open(
            directory, clock=clock, sealing_key=SealingKey.from_document(sealing)
        )

    def take(
        self,
        number: str = APPROVED,
        amount: int = 1299,
        *,
        account: str | None = None,
        capture_method: str = "automatic",
        order: str = "A-1",
    ) -> StoredPayment:
        card = CardRead(
            number=number,
            exp_month=12,
            exp_year=2031,
            brand="visa",
            read_method="contact_emv",
            cardholder_name="Ada Lovelace",
            receipt={"application_preferred_name": "VISA CREDIT"},
        )
        return self.vault.store(
            OfflinePayment(
                account=account or self.device.account,
                reader=self.device.reader,
                amount=amount,
                currency="usd",
                capture_method=capture_method,
                card=card,
                metadata={"order_id": order},
                description="coffee",
            )
        )


@pytest.fixture
def tills(tmp_path: Path, clock: ManualClock) -> Iterator[Callable[[LiveCloud, Device], Till]]:
    made: list[Till] = []

    def make(cloud: LiveCloud, device: Device) -> Till:
        till = Till(cloud, device, tmp_path / f"vault{len(made)}", clock)
        made.append(till)
        return till

    yield make
    for till in made:
        till.vault.close()


def forward(
    cloud: LiveCloud, device: Device, records: list[dict[str, Any]], **extra: Any
) -> httpx.Response:
    return post(cloud, "/offline_payments", {"records": records, **extra}, key=device.key)


def outcomes(r: httpx.Response) -> list[dict[str, Any]]:
    assert r.status_code == 200, r.text
    return list(r.json()["outcomes"])


def intents(device: Device) -> list[stripe.PaymentIntent]:
    return list(device.stripe.v1.payment_intents.list(params={"limit": 100}).data)


# -- activation ------------------------------------------------------------------------------


def test_registration_flow_end_to_end(live: LiveCloud) -> None:
    code = new_code(live, "WSC513-0001")
    assert post(live, "/activations", {"registration_code": code}).json() == {"status": "pending"}

    c = merchant(live)
    location = c.v1.terminal.locations.create(params={"display_name": "Shop", "address": ADDRESS})
    reader = c.v1.terminal.readers.create(
        params={"registration_code": code, "location": location.id, "label": "Till 1"}
    )
    assert reader.serial_number == "WSC513-0001" and reader.device_type == "bbpos_wisepos_e"
    assert reader.status == "offline" and reader.device_sw_version == "1.0.0"

    first = post(live, "/activations", {"registration_code": code}).json()
    assert first["status"] == "registered"
    assert first["reader"] == reader.id and first["account"] == live.accounts[0].account["id"]
    assert first["device_key"].startswith("rdk_test_")

    # Asking again (a device that lost the answer) rotates the key: the older one stops.
    again = post(live, "/activations", {"registration_code": code.upper()}).json()
    assert again["device_key"] != first["device_key"]
    old = post(
        live, "/heartbeat", {"status": "online", "device_sw_version": "1"}, key=first["device_key"]
    )
    assert old.status_code == 401 and error_code(old) == "device_key_invalid"
    new = post(
        live, "/heartbeat", {"status": "online", "device_sw_version": "1"}, key=again["device_key"]
    )
    assert new.status_code == 200


def test_device_key_is_kept_only_as_a_hash(live: LiveCloud, tmp_path: Path) -> None:
    device = register(live)
    live.stop()
    for f in tmp_path.iterdir():
        if f.is_file():
            assert device.key.encode() not in f.read_bytes(), f


def test_codes_that_lead_nowhere(live: LiveCloud, clock: ManualClock) -> None:
    r = post(live, "/activations", {"registration_code": "purple-monkey-dishes"})
    assert r.status_code == 404 and error_code(r) == "registration_code_invalid"

    stale = new_code(live)
    clock.advance(31 * 60)  # a code shown but never entered expires after 30 minutes
    r = post(live, "/activations", {"registration_code": stale})
    assert r.status_code == 404 and error_code(r) == "registration_code_invalid"

    device_code = new_code(live)
    c = merchant(live)
    location = c.v1.terminal.locations.create(params={"display_name": "Shop", "address": ADDRESS})
    c.v1.terminal.readers.create(params={"registration_code": device_code, "location": location.id})
    clock.advance(23 * 3600)
    assert post(live, "/activations", {"registration_code": device_code}).status_code == 200
    clock.advance(2 * 3600)  # a registered code may be activated again for 24 hours
    r = post(live, "/activations", {"registration_code": device_code})
    assert r.status_code == 404 and error_code(r) == "registration_code_invalid"


# -- heartbeat and the offline policy ------------------------------------------------------------


def test_heartbeat_marks_online_and_answers_the_context(
    live: LiveCloud, clock: ManualClock
) -> None:
    c = merchant(live)
    config = c.v1.terminal.configurations.create(
        params={
            "offline": {"enabled": True},
            "stowpay_offline_policy": {
                "max_transaction": {"usd": 50000, "eur": 40000},
                "max_stored_total": {"usd": 500000},
                "max_stored_count": 20,
                "max_record_age": 86400,
                "max_uses_per_card": 3,
            },
        }
    )
    location = c.v1.terminal.locations.create(
        params={"display_name": "Shop", "address": ADDRESS, "configuration_overrides": config.id}
    )
    device = register(live, location=location.id)
    clock.advance(5)

    r = heartbeat(live, device, ip_address="192.168.1.20", device_sw_version="2.3.1")
    assert r.status_code == 200, r.text
    ctx = r.json()
    assert ctx["account"] == device.account
    assert ctx["reader"]["id"] == device.reader and ctx["reader"]["status"] == "online"
    assert ctx["location"]["id"] == location.id and ctx["location"]["address"]["country"] == "US"
    assert ctx["configuration"]["id"] == config.id
    assert ctx["configuration"]["offline"] == {"enabled": True}
    assert ctx["configuration"]["stowpay_offline_policy"] == {
        "max_transaction": {"eur": 40000, "usd": 50000},
        "max_stored_total": {"usd": 500000},
        "max_stored_count": 20,
        "max_record_age": 86400,
        "max_uses_per_card": 3,
    }
    assert set(ctx["sealing_key"]) == {"kid", "public_key", "alg"}
    assert len(base64.b64decode(ctx["sealing_key"]["public_key"])) == 32
    assert ctx["server_time"] == START + 5

    seen = c.v1.terminal.readers.retrieve(device.reader)
    assert seen.status == "online" and seen.last_seen_at == int((START + 5) * 1000)
    assert seen.ip_address == "192.168.1.20" and seen.device_sw_version == "2.3.1"
    online = c.v1.terminal.readers.list(params={"status": "online"})
    assert [x.id for x in online.data] == [device.reader]


def test_offline_policy_updates_and_unsets(live: LiveCloud) -> None:
    c = merchant(live)
    device = register(live)
    default = heartbeat(live, device).json()["configuration"]
    assert default["is_account_default"] and default["stowpay_offline_policy"] is None

    config = c.v1.terminal.configurations.update(
        default["id"],
        params={"stowpay_offline_policy": {"max_transaction": {"usd": 50000, "cad": 60000}}},
    )
    assert config.stowpay_offline_policy.max_transaction.to_dict() == {"cad": 60000, "usd": 50000}
    config = c.v1.terminal.configurations.update(
        config.id,
        params={"stowpay_offline_policy": {"max_transaction": {"cad": ""}, "max_stored_count": 0}},
    )
    policy = heartbeat(live, device).json()["configuration"]["stowpay_offline_policy"]
    assert policy["max_transaction"] == {"usd": 50000} and policy["max_stored_count"] == 0

    config = c.v1.terminal.configurations.update(config.id, params={"stowpay_offline_policy": ""})
    assert config.stowpay_offline_policy is None
    assert heartbeat(live, device).json()["configuration"]["stowpay_offline_policy"] is None


@pytest.mark.parametrize(
    ("policy", "param"),
    [
        ({"max_transaction": {"USD": 100}}, "stowpay_offline_policy[max_transaction][USD]"),
        ({"max_transaction": {"xyz": 100}}, "stowpay_offline_policy[max_transaction][xyz]"),
        ({"max_stored_total": {"usd": -1}}, "stowpay_offline_policy[max_stored_total][usd]"),
        ({"max_stored_count": -5}, "stowpay_offline_policy[max_stored_count]"),
        ({"max_record_age": "soon"}, "stowpay_offline_policy[max_record_age]"),
        ({"max_uses": 2}, "stowpay_offline_policy[max_uses]"),
    ],
)
def test_offline_policy_is_validated(live: LiveCloud, policy: dict[str, Any], param: str) -> None:
    with pytest.raises(stripe.InvalidRequestError) as err:
        merchant(live).v1.terminal.configurations.create(params={"stowpay_offline_policy": policy})
    assert err.value.http_status == 400 and err.value.param == param


def test_deleted_reader_key_fails(live: LiveCloud) -> None:
    device = register(live)
    assert heartbeat(live, device).status_code == 200
    device.stripe.v1.terminal.readers.delete(device.reader)
    for r in (
        heartbeat(live, device),
        forward(live, device, []),
        post(live, "/connection_tokens/redeem", {"connection_token": "pst_test_x"}, key=device.key),
    ):
        assert r.status_code == 401 and error_code(r) == "device_key_invalid"


@pytest.mark.parametrize(
    "key", [None, "", "sk_test_nope", "rdk_test_madeup", "rdk_test_" + "x" * 300]
)
def test_calls_without_a_valid_device_key_are_refused(live: LiveCloud, key: str | None) -> None:
    r = post(live, "/heartbeat", {"status": "online", "device_sw_version": "1"}, key=key)
    assert r.status_code == 401 and error_code(r) == "device_key_invalid"


# -- connection tokens ---------------------------------------------------------------------------


def test_connection_token_redemption(live: LiveCloud, clock: ManualClock) -> None:
    device = register(live)
    c = device.stripe

    def redeem(secret: str) -> httpx.Response:
        return post(live, "/connection_tokens/redeem", {"connection_token": secret}, key=device.key)

    token = c.v1.terminal.connection_tokens.create().secret
    r = redeem(token)
    assert r.status_code == 200 and r.json() == {
        "account": device.account,
        "location": device.location,
    }
    again = redeem(token)
    assert again.status_code == 401 and error_code(again) == "connection_token_invalid"

    scoped = c.v1.terminal.connection_tokens.create(params={"location": device.location}).secret
    assert redeem(scoped).status_code == 200

    other_place = c.v1.terminal.locations.create(params={"display_name": "B", "address": ADDRESS})
    elsewhere = c.v1.terminal.connection_tokens.create(params={"location": other_place.id}).secret
    r = redeem(elsewhere)
    assert r.status_code == 403 and error_code(r) == "location_mismatch"

    foreign = merchant(live, 1).v1.terminal.connection_tokens.create().secret
    r = redeem(foreign)
    assert r.status_code == 403 and error_code(r) == "account_mismatch"

    late = c.v1.terminal.connection_tokens.create().secret
    clock.advance(16 * 60)
    r = redeem(late)
    assert r.status_code == 401 and error_code(r) == "connection_token_invalid"


# -- forwarding ------------------------------------------------------------------------------


def test_forwarding_approvals_and_declines(live: LiveCloud, tills: Any) -> None:
    device = register(live)
    till = tills(live, device)
    records = [
        till.take(APPROVED, 1299, order="A-1"),
        till.take(DECLINED, 2500, order="A-2"),
        till.take(APPROVED, 4000, capture_method="manual", order="A-3"),
    ]
    token = device.stripe.v1.terminal.connection_tokens.create().secret
    got = outcomes(
        forward(live, device, [forward_document(r) for r in records], connection_token=token)
    )

    assert [o["sequence"] for o in got] == [r.sequence for r in records]
    assert [o["status"] for o in got] == ["approved", "declined", "approved"]
    assert not any(o["replayed"] for o in got)
    approved, declined, manual = (o["payment_intent"] for o in got)
    assert approved["status"] == "succeeded" and approved["amount_received"] == 1299
    assert declined["status"] == "requires_payment_method"
    assert declined["last_payment_error"]["decline_code"] == "generic_decline"
    assert got[1]["error"]["decline_code"] == "generic_decline"
    assert manual["status"] == "requires_capture" and manual["amount_capturable"] == 4000
    # Served as /v1 serves it: no private keys at any depth.
    assert "_test" not in json.dumps(got)

    for record, outcome in zip(records, got, strict=True):
        pi = device.stripe.v1.payment_intents.retrieve(
            outcome["payment_intent"]["id"], params={"expand": ["latest_charge"]}
        )
        assert pi.metadata.to_dict() == {"order_id": record.metadata["order_id"]}
        assert pi.amount == record.amount and pi.description == "coffee"
        present = pi.latest_charge.payment_method_details.card_present
        assert present.offline.to_dict() == {"stored_at": int(record.stored_at), "type": "deferred"}
        assert present.last4 == record.display.last4 and present.read_method == "contact_emv"

    captured = device.stripe.v1.payment_intents.capture(manual["id"])
    assert captured.status == "succeeded"

    kinds = [e.type for e in device.stripe.v1.events.list(params={"limit": 100}).data]
    assert kinds.count("payment_intent.created") == 3
    assert "payment_intent.succeeded" in kinds
    assert "payment_intent.payment_failed" in kinds
    assert "payment_intent.amount_capturable_updated" in kinds


def test_same_batch_twice_charges_once(live: LiveCloud, tills: Any) -> None:
    device = register(live)
    till = tills(live, device)
    records = [till.take(APPROVED, 1000 + 100 * i, order=f"R-{i}") for i in range(5)]
    documents = [forward_document(r) for r in records]

    first = outcomes(forward(live, device, documents))
    second = outcomes(forward(live, device, documents))  # the first answer was "lost"
    assert all(o["status"] == "approved" and not o["replayed"] for o in first)
    assert all(o["replayed"] for o in second)
    assert [o["payment_intent"]["id"] for o in first] == [o["payment_intent"]["id"] for o in second]

    listed = intents(device)
    assert len(listed) == len(records)
    for record in records:
        found = [pi for pi in listed if pi.metadata.to_dict() == dict(record.metadata)]
        assert len(found) == 1
        charge = device.stripe.v1.charges.retrieve(found[0].latest_charge)
        offline = charge.payment_method_details.card_present.offline
        assert offline.stored_at == int(record.stored_at) == record.stored_at
    assert len(device.stripe.v1.charges.list(params={"limit": 100}).data) == len(records)


def test_forged_key_or_foreign_account_is_rejected(live: LiveCloud, tills: Any) -> None:
    device = register(live)
    till = tills(live, device)
    forged = forward_document(till.take(order="F-1"))
    forged["forward_key"] = forward_key_for(device.account, device.reader, forged["sequence"] + 1)
    elsewhere = forward_document(till.take(account=live.accounts[1].account["id"], order="F-2"))
    honest = forward_document(till.take(order="F-3"))

    got = outcomes(forward(live, device, [forged, elsewhere, honest]))
    assert [o["status"] for o in got] == ["rejected", "rejected", "approved"]
    assert got[0]["error"]["code"] == "offline_record_key_invalid"
    assert got[1]["error"]["code"] == "offline_record_account_mismatch"
    assert got[0]["payment_intent"] is None and got[1]["payment_intent"] is None
    assert [pi.metadata["order_id"] for pi in intents(device)] == ["F-3"]
    assert merchant(live, 1).v1.payment_intents.list().data == []


def offline_rejections(device: Device, **query: Any) -> dict[str, Any]:
    """The merchant's backend reads the reader's rejected records (a Stowpay extension)."""
    answer = device.stripe.raw_request(
        "get", f"/v1/terminal/readers/{device.reader}/stowpay_offline_rejections", **query
    )
    doc: dict[str, Any] = json.loads(answer.body)
    return doc


def test_rejections_are_kept_replayed_and_listed_for_the_merchant(
    live: LiveCloud, tills: Any
) -> None:
    device = register(live)
    till = tills(live, device)
    genuine = forward_document(till.take(order="G-1"))
    forged = dict(genuine, forward_key=forward_key_for(device.account, device.reader, 99))
    elsewhere = dict(genuine, account=live.accounts[1].account["id"])

    first = outcomes(forward(live, device, [forged, elsewhere]))
    assert [o["status"] for o in first] == ["rejected", "rejected"]
    assert not any(o["replayed"] for o in first)
    again = outcomes(forward(live, device, [forged, elsewhere]))
    assert all(o["replayed"] for o in again)
    assert [o["error"]["code"] for o in again] == [o["error"]["code"] for o in first]
    # Kept under what arrived, not under the sequence: the genuine record is still charged.
    (honest,) = outcomes(forward(live, device, [genuine]))
    assert honest["status"] == "approved" and not honest["replayed"]
    assert [pi.metadata["order_id"] for pi in intents(device)] == ["G-1"]

    listed = offline_rejections(device)
    assert listed["object"] == "list" and listed["has_more"] is False
    codes = sorted(r["error"]["code"] for r in listed["data"])
    assert codes == ["offline_record_account_mismatch", "offline_record_key_invalid"]
    documented = object_schemas()["stowpay.offline_rejection"]
    for kept in listed["data"]:
        # Exactly the fields the OpenAPI document names (the fuzz tests see only empty lists).
        assert set(kept) == set(documented["properties"]), kept
        assert set(kept["error"]) == set(documented["properties"]["error"]["properties"])
        assert kept["object"] == "stowpay.offline_rejection" and kept["reader"] == device.reader
        assert kept["sequence"] == genuine["sequence"] and kept["amount"] == genuine["amount"]
        assert kept["local_id"] == genuine["local_id"]
    assert len(offline_rejections(device, limit=1)["data"]) == 1
    # Another account does not find them.
    with pytest.raises(stripe.InvalidRequestError) as err:
        merchant(live, 1).raw_request(
            "get", f"/v1/terminal/readers/{device.reader}/stowpay_offline_rejections"
        )
    assert err.value.http_status == 404
    # Deleting the reader does not hide the money it never got.
    device.stripe.v1.terminal.readers.delete(device.reader)
    assert len(offline_rejections(device)["data"]) == 2


def test_the_heartbeat_tells_the_highest_sequence_seen(live: LiveCloud, tills: Any) -> None:
    device = register(live)
    assert heartbeat(live, device).json()["highest_sequence"] == 0
    till = tills(live, device)
    records = [till.take(order=f"H-{i}") for i in range(3)]
    outcomes(forward(live, device, [forward_document(records[0]), forward_document(records[2])]))
    assert heartbeat(live, device).json()["highest_sequence"] == records[2].sequence


def test_another_accounts_token_refuses_the_whole_batch(live: LiveCloud, tills: Any) -> None:
    device = register(live)
    till = tills(live, device)
    documents = [forward_document(till.take(order=f"M-{i}")) for i in range(3)]
    foreign = merchant(live, 1).v1.terminal.connection_tokens.create().secret

    r = forward(live, device, documents, connection_token=foreign)
    assert r.status_code == 403 and error_code(r) == "account_id_mismatch"
    assert intents(device) == [] and merchant(live, 1).v1.payment_intents.list().data == []

    used = device.stripe.v1.terminal.connection_tokens.create().secret
    assert (
        post(
            live, "/connection_tokens/redeem", {"connection_token": used}, key=device.key
        ).status_code
        == 200
    )
    r = forward(live, device, documents, connection_token=used)
    assert r.status_code == 401 and error_code(r) == "connection_token_invalid"
    assert intents(device) == []
    # Unattended (no token): the device key alone drains the records.
    assert [o["status"] for o in outcomes(forward(live, device, documents))] == ["approved"] * 3


def test_accounts_are_isolated(live: LiveCloud, tills: Any) -> None:
    a = register(live, 0, serial="A-1")
    b = register(live, 1, serial="B-1")
    a_records = [forward_document(tills(live, a).take(order="ISO-1"))]
    (a_outcome,) = outcomes(forward(live, a, a_records))
    pi_id = a_outcome["payment_intent"]["id"]

    # B's device sending A's record gets no PaymentIntent of A's back, and charges nothing.
    (b_outcome,) = outcomes(forward(live, b, a_records))
    assert b_outcome["status"] == "rejected" and b_outcome["payment_intent"] is None
    assert pi_id not in json.dumps(b_outcome)
    with pytest.raises(stripe.InvalidRequestError) as err:
        b.stripe.v1.payment_intents.retrieve(pi_id)
    assert err.value.http_status == 404
    assert intents(b) == [] and len(intents(a)) == 1
    # B's key does not act for A's reader, whatever the body says.
    ctx = heartbeat(live, b).json()
    assert ctx["account"] == b.account and ctx["reader"]["id"] == b.reader


# -- webhooks --------------------------------------------------------------------------------


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

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_forwarded_events_wake_the_webhook_dispatcher(live: LiveCloud, tills: Any) -> None:
    receiver = Receiver()
    try:
        device = register(live)
        device.stripe.v1.webhook_endpoints.create(
            params={"url": receiver.url, "enabled_events": ["payment_intent.succeeded"]}
        )
        (outcome,) = outcomes(forward(live, device, [forward_document(tills(live, device).take())]))
        # The dispatcher polls once an hour here: only a wake delivers this promptly.
        deadline = time.monotonic() + 20
        while not receiver.events and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [e["type"] for e in receiver.events] == ["payment_intent.succeeded"]
        assert receiver.events[0]["data"]["object"]["id"] == outcome["payment_intent"]["id"]
    finally:
        receiver.close()


# -- bad input -------------------------------------------------------------------------------


def _record(device: Device, **over: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "sequence": 1,
        "stored_at": START,
        "amount": 1299,
        "currency": "usd",
        "capture_method": "automatic",
        "metadata": {},
        "description": None,
        "local_id": "pio_1",
        "account": device.account,
        "sealed": base64.b64encode(b"\x01\x00sealed").decode(),
        "display": {"brand": "visa", "last4": "4242", "receipt": {}},
        "forward_key": forward_key_for(device.account, device.reader, 1),
    }
    record.update(over)
    return record


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{", "invalid_json"),
        (b"[]", "invalid_json"),
        (b'"records"', "invalid_json"),
        (b"", "invalid_json"),
        (b'{"records": [{"stored_at": NaN}]}', "invalid_json"),
        (b'{"records": [], "x": "\\u0000"}', "parameter_invalid"),
        (b'{"records": [], "connection_token": "\\ud800"}', "invalid_json"),
        # The same surrogate as raw UTF-8 bytes, and in a UTF-16 body: no escape to see.
        (b'{"records": [], "connection_token": "\xed\xa0\x80"}', "invalid_json"),
        (
            '{"records": [], "connection_token": "\ud800"}'.encode("utf-16-le", "surrogatepass"),
            "invalid_json",
        ),
        (b"[" * 100_000 + b"]" * 100_000, "invalid_json"),
    ],
)
def test_bodies_that_are_not_json_objects(live: LiveCloud, raw: bytes, code: str) -> None:
    device = register(live)
    r = post(live, "/offline_payments", key=device.key, raw=raw)
    assert r.status_code == 400 and error_code(r) == code


@pytest.mark.parametrize(
    ("record", "param"),
    [
        ({"sequence": "7"}, "records[0][sequence]"),
        ({"sequence": 0}, "records[0][sequence]"),
        ({"sequence": True}, "records[0][sequence]"),
        ({"sequence": None}, "records[0][sequence]"),
        ({}, "records[0][sequence]"),
        ("visa", "records[0]"),
    ],
)
def test_a_record_whose_sequence_cannot_be_read_refuses_the_batch(
    live: LiveCloud, tills: Any, record: Any, param: str
) -> None:
    device = register(live)
    fine = forward_document(tills(live, device).take(order="S-1"))
    odd = dict(_record(device), **record) if isinstance(record, dict) else record
    if record == {}:
        del odd["sequence"]
    r = forward(live, device, [odd, fine])
    assert r.status_code == 400 and r.json()["error"]["param"] == param
    assert intents(device) == []


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"amount": 12.5}, "amount"),
        ({"amount": 2**64}, "amount"),
        ({"metadata": {"k": 1}}, "metadata[k]"),
        ({"sealed": "not base64!"}, "sealed"),
        ({"display": {"last4": 4242}}, "display[last4]"),
        ({"display": "visa"}, "display"),
        ({"extra": 1}, "extra"),
        ({"forward_key": None}, "forward_key"),
        ({"local_id": "pio_4242424242424242"}, "local_id"),
        ({"description": "card 4242 4242 4242 4242"}, "description"),
        # A field's name is echoed by its error: a card number in it never is, nor kept.
        ({"4242424242424242": 1}, "*" * 16),
        ({"metadata": {"4242424242424242": 1}}, "metadata[" + "*" * 16 + "]"),
    ],
)
def test_a_record_of_the_wrong_shape_is_rejected_alone(
    live: LiveCloud, tills: Any, change: dict[str, Any], param: str
) -> None:
    """A rule the cloud holds and a reader did not costs that one record, never the payments
    forwarded with it (a whole-batch 400 would hold every one of them on the reader)."""
    device = register(live)
    till = tills(live, device)
    odd = forward_document(till.take(order="W-1"))
    odd.update(change)
    fine = forward_document(till.take(order="W-2"))
    got = outcomes(forward(live, device, [odd, fine]))
    assert [o["status"] for o in got] == ["rejected", "approved"]
    assert [o["sequence"] for o in got] == [odd["sequence"], fine["sequence"]]
    assert got[0]["error"]["param"] == param and got[0]["payment_intent"] is None
    assert [pi.metadata["order_id"] for pi in intents(device)] == ["W-2"]
    # Kept for the merchant, with what of it was valid, and never a card number.
    (kept,) = offline_rejections(device)["data"]
    assert kept["sequence"] == odd["sequence"] and kept["error"]["param"] == param
    assert kept["amount"] == (odd["amount"] if param != "amount" else 0)
    assert kept["local_id"] == (odd["local_id"] if param != "local_id" else "")
    assert "4242424242424242" not in json.dumps(kept).replace(" ", "")
    # The same record again gets the same rejection; the genuine one is still charged.
    (again,) = outcomes(forward(live, device, [odd]))
    assert again["status"] == "rejected" and again["replayed"]
    genuine = forward_document(till.vault.pending(1)[0])
    assert genuine["sequence"] == odd["sequence"]
    (charged,) = outcomes(forward(live, device, [genuine]))
    assert charged["status"] == "approved"


def test_a_reader_drains_past_a_record_a_stricter_cloud_refuses(
    live: LiveCloud, tills: Any, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cloud that holds a rule its readers do not (here: amounts of at most 50.00, checked
    with the body's shape) costs the one record that breaks it. The reader's own forwarder,
    over HTTP, drains everything else in one pass and is told of that one record."""

    class StricterRecord(device_routes.RecordBody):
        amount: Annotated[int, Field(ge=0, le=5000)]

    monkeypatch.setattr(device_routes, "RecordBody", StricterRecord)
    device = register(live)
    till = tills(live, device)
    amounts = [1200, 1300, 9900, 1400, 1500]
    stored = [till.take(amount=a, order=f"D-{i}") for i, a in enumerate(amounts)]
    heard: list[tuple[int, ForwardOutcome]] = []

    class Heard:
        def on_payment_forwarded(self, record: StoredPayment, outcome: ForwardOutcome) -> None:
            heard.append((record.sequence, outcome))

        def on_forwarding_failure(self, error: ForwardingError) -> None:
            raise AssertionError(f"forwarding failed: {error}")

    with HttpCloudLink(live.url) as link:
        result = Forwarder(
            till.vault,
            link,
            device_key=lambda: device.key,
            unattended=True,
            clock=clock,
            listener=Heard(),
        ).drain()
    assert result.error is None and result.forwarded == 5 and result.remaining == 0
    assert till.vault.pending() == []
    statuses = {seq: o.status for seq, o in heard}
    assert statuses == {r.sequence: "rejected" if r.amount == 9900 else "approved" for r in stored}
    (odd,) = [o for _, o in heard if o.status == "rejected"]
    assert odd.error is not None and odd.error.get("param") == "amount"
    charged = sorted(pi.amount for pi in intents(device))
    assert charged == [1200, 1300, 1400, 1500]
    (kept,) = offline_rejections(device)["data"]
    assert kept["amount"] == 9900 and kept["local_id"] == stored[2].local_id


def test_missing_fields_and_oversize_batches(live: LiveCloud) -> None:
    device = register(live)
    record = _record(device)
    del record["local_id"]
    (missing,) = outcomes(forward(live, device, [record]))
    assert missing["status"] == "rejected" and missing["error"]["code"] == "parameter_missing"
    assert missing["error"]["param"] == "local_id"

    r = post(live, "/offline_payments", {"connection_token": "pst_test_x"}, key=device.key)
    assert r.status_code == 400 and r.json()["error"]["param"] == "records"

    many = [_record(device, sequence=i + 1) for i in range(501)]
    r = forward(live, device, many)
    assert r.status_code == 400 and r.json()["error"]["param"] == "records"
    assert "500" in r.json()["error"]["message"]

    r = post(live, "/heartbeat", {"status": "asleep", "device_sw_version": "1"}, key=device.key)
    assert r.status_code == 400 and r.json()["error"]["param"] == "status"
    r = post(
        live,
        "/heartbeat",
        {"status": "online", "device_sw_version": "1", "ip_address": "x"},
        key=device.key,
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "ip_address"
    r = post(live, "/registration_codes", {"device_type": "bbpos_wisepos_e"})
    assert r.status_code == 400 and error_code(r) == "parameter_missing"
    r = post(live, "/activations", {"registration_code": 42})
    assert r.status_code == 400 and r.json()["error"]["param"] == "registration_code"


def test_records_no_payment_can_be_made_from_are_rejected_alone(
    live: LiveCloud, tills: Any
) -> None:
    device = register(live)
    till = tills(live, device)
    odd = forward_document(till.take(order="X-1"))
    odd["capture_method"] = "someday"
    tiny = forward_document(till.take(amount=10, order="X-2"))
    fine = forward_document(till.take(order="X-3"))
    got = outcomes(forward(live, device, [odd, tiny, fine]))
    assert [o["status"] for o in got] == ["rejected", "rejected", "approved"]
    assert got[1]["error"]["code"] == "amount_too_small"
    assert [pi.metadata["order_id"] for pi in intents(device)] == ["X-3"]


def test_unknown_device_paths_answer_in_stripe_shape(live: LiveCloud) -> None:
    for method, path in (("POST", "/device/v1/nothing"), ("GET", "/device/v1/heartbeat")):
        r = httpx.request(method, live.url + path)
        assert r.status_code == 404 and r.headers["Request-Id"].startswith("req_")
        assert r.json()["error"]["type"] == "invalid_request_error"


def test_device_routes_are_not_in_the_openapi_document(live: LiveCloud) -> None:
    document = httpx.get(live.url + "/openapi.json").json()
    assert not [p for p in document["paths"] if p.startswith("/device")]
    config = document["components"]["schemas"]["terminal.configuration"]
    assert "stowpay_offline_policy" in config["required"]

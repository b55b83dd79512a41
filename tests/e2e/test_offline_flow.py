"""The offline flow with real processes: payments taken while the cloud is down reach it once.

A cloud and a reader run as `stowpay` processes on loopback. The merchant acts through the
official `stripe` client; the POS through the reader's LAN API. The cloud process is stopped,
payments are taken, the cloud is started again, and the reader forwards every payment by
itself.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import stripe
from procs import create_account, free_port, start_cloud, start_reader, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

ADDRESS = {"line1": "1 Main St", "city": "Springfield", "postal_code": "62701", "country": "US"}

#: (amount, card number, capture method, read method) of the payments taken offline
SALES = [
    (1299, "4242424242424242", "automatic", "contact_emv"),
    (500, "5555555555554444", "automatic", "contactless_emv"),
    (7450, "378282246310005", "manual", "contact_emv"),
    (2000, "4000000000000002", "automatic", "contact_emv"),  # declined by the issuer
    (99, "6011111111111117", "automatic", "contactless_emv"),
]


class Pos:
    """A POS app talking to the reader's LAN API."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=10)

    def call(self, method: str, path: str, **body: Any) -> dict[str, Any]:
        r = self.http.request(method, path, json=body if method != "GET" else None)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def connect(self, **how: Any) -> dict[str, Any]:
        answer = self.call("POST", "/v1/connect", pos_id="till-1", fail_if_in_use=True, **how)
        self.http.headers["Authorization"] = f"Bearer {answer['session']}"
        return answer

    def sell(
        self, amount: int, number: str, capture: str, read_method: str, order: str
    ) -> dict[str, Any]:
        intent = self.call(
            "POST",
            "/v1/payment_intents",
            amount=amount,
            currency="usd",
            capture_method=capture,
            metadata={"order_id": order},
            offline_behavior="prefer_online",
        )
        assert intent["id"] is None and "payment_method" not in intent
        local = intent["local_id"]
        card = {
            "number": number,
            "exp_month": 12,
            "exp_year": 2034,
            "read_method": read_method,
            "cardholder_name": "Ada Lovelace",
            "cvm": "offline_pin" if read_method == "contact_emv" else "none",
        }
        self.call("POST", f"/v1/payment_intents/{local}/collect", card=card)
        return self.call("POST", f"/v1/payment_intents/{local}/confirm")


def test_payments_taken_while_the_cloud_is_down_are_forwarded_once(tmp_path: Path) -> None:
    db = str(tmp_path / "cloud.db")
    account = create_account(db)
    cloud_port, reader_port = free_port(), free_port()
    cloud_url, reader_url = f"http://127.0.0.1:{cloud_port}", f"http://127.0.0.1:{reader_port}"
    merchant = stripe.StripeClient(
        account["secret_key"], base_addresses={"api": cloud_url}, max_network_retries=0
    )
    cloud = start_cloud(db, cloud_port, tmp_path)
    reader, code = start_reader(
        cloud_url,
        tmp_path / "reader",
        reader_port,
        tmp_path,
        "--unattended-forwarding",
        fresh=True,
    )
    try:
        # The merchant enables offline payments at a Location and registers the reader there.
        config = merchant.v1.terminal.configurations.create(params={"offline": {"enabled": True}})
        location = merchant.v1.terminal.locations.create(
            params={
                "display_name": "Main St",
                "address": ADDRESS,
                "configuration_overrides": config.id,
            }
        )
        assert code is not None
        registered = merchant.v1.terminal.readers.create(
            params={"registration_code": code, "location": location.id, "label": "Till 1"}
        )
        pos = Pos(reader_url)
        status = wait_for(
            "the reader to activate and report online",
            lambda: (
                (s := pos.call("GET", "/v1/status"))["network"] == "online"
                and s.get("reader") == registered.id
                and s
            ),
        )
        assert status["account"] == account["account"]
        assert merchant.v1.terminal.readers.retrieve(registered.id).status == "online"

        # The POS connects online once (that is what allows connecting offline later).
        token = merchant.v1.terminal.connection_tokens.create(params={"location": location.id})
        connected = pos.connect(connection_token=token.secret)
        assert connected["offline"] is False and connected["location"] == location.id

        cloud.stop()
        wait_for("the reader to see the cloud gone", lambda: not_online(pos), timeout=60)

        sold: dict[str, dict[str, Any]] = {}
        for i, (amount, number, capture, method) in enumerate(SALES):
            before = time.time()
            intent = pos.sell(amount, number, capture, method, order=f"A-{i}")
            expected = "succeeded" if capture == "automatic" else "requires_capture"
            assert intent["status"] == expected
            details = intent["offline_details"]
            assert details["requires_upload"] is True
            assert before - 1 <= details["stored_at"] <= time.time() + 1
            card = details["card_present_details"]
            assert card["last4"] == number[-4:] and number not in str(intent)
            sold[f"A-{i}"] = intent
        status = pos.call("GET", "/v1/status")
        assert status["offline"]["count"] == len(SALES)
        assert status["offline"]["amounts"] == {"usd": sum(s[0] for s in SALES)}

        # The cloud comes back; the reader forwards by itself (no call from this test).
        cloud = start_cloud(db, cloud_port, tmp_path)
        wait_for(
            "the backlog to drain",
            lambda: pos.call("GET", "/v1/status")["offline"]["count"] == 0,
            timeout=60,
        )
        status = pos.call("GET", "/v1/status")
        assert status["offline"]["amounts"] == {}

        for order, intent in sold.items():
            found = merchant.v1.payment_intents.search(
                params={"query": f"metadata['order_id']:'{order}'"}
            ).data
            assert len(found) == 1, f"{order}: {len(found)} PaymentIntents"
            pi = merchant.v1.payment_intents.retrieve(
                found[0].id, params={"expand": ["latest_charge"]}
            )
            assert pi.metadata.to_dict() == {"order_id": order}
            assert pi.amount == intent["amount"]
            charge = pi.latest_charge
            assert not isinstance(charge, str) and charge is not None
            offline = charge.payment_method_details.card_present.offline
            assert offline.type == "deferred"
            assert offline.stored_at == int(intent["offline_details"]["stored_at"])
            if order == "A-3":
                assert pi.status == "requires_payment_method" and charge.status == "failed"
            elif intent["capture_method"] == "manual":
                assert pi.status == "requires_capture"
            else:
                assert pi.status == "succeeded" and charge.captured
        everything = merchant.v1.payment_intents.list(params={"limit": 100}).data
        assert len(everything) == len(SALES)
    finally:
        reader.stop()
        cloud.stop()


def not_online(pos: Pos) -> bool:
    return bool(pos.call("GET", "/v1/status")["network"] == "offline")

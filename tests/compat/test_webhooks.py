"""Webhooks: delivered from the outbox, signed so `stripe.Webhook.construct_event` accepts them."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import stripe

from stowpay.cloud.settings import Settings
from stowpay.cloud.testing import LiveCloud, live_cloud


class Receiver:
    """A merchant's webhook receiver on loopback; fails the first `fail_first` requests."""

    def __init__(self, fail_first: int = 0) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.fail_first = fail_first
        self.calls = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.calls += 1
                if receiver.calls <= receiver.fail_first:
                    self.send_response(500)
                    self.end_headers()
                    return
                receiver.received.append((dict(self.headers), body))
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


def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


@pytest.fixture
def fast_cloud(db_url: str) -> Iterator[LiveCloud]:
    server = live_cloud(Settings(db=db_url, webhook_poll_interval=0.05, webhook_first_retry=0.1))
    server.new_account()
    yield server
    server.stop()


def client(cloud: LiveCloud) -> stripe.StripeClient:
    return stripe.StripeClient(
        cloud.accounts[0].secret_key, base_addresses={"api": cloud.url}, max_network_retries=0
    )


def test_every_event_verifies_with_construct_event(fast_cloud: LiveCloud) -> None:
    receiver = Receiver()
    try:
        c = client(fast_cloud)
        endpoint = c.v1.webhook_endpoints.create(
            params={"url": receiver.url, "enabled_events": ["*"]}
        )
        secret = endpoint.secret
        assert secret is not None and secret.startswith("whsec_")
        # The secret is shown once: a later read does not carry it.
        assert "secret" not in c.v1.webhook_endpoints.retrieve(endpoint.id).to_dict()
        pi = c.v1.payment_intents.create(
            params={
                "amount": 2500,
                "currency": "usd",
                "capture_method": "manual",
                "payment_method": "pm_card_visa",
                "confirm": True,
            }
        )
        c.v1.payment_intents.capture(pi.id)
        c.v1.refunds.create(params={"payment_intent": pi.id})
        expected = {
            "payment_intent.created",
            "charge.succeeded",
            "payment_intent.amount_capturable_updated",
            "charge.captured",
            "payment_intent.succeeded",
            "refund.created",
            "charge.refunded",
        }
        wait_for(lambda: len(receiver.received) >= len(expected))
        types = set()
        for headers, body in receiver.received:
            event = stripe.Webhook.construct_event(body, headers["Stripe-Signature"], secret)
            types.add(event.type)
            assert event.data.object["object"] in {"payment_intent", "charge", "refund"}
        assert types == expected
        # Tampering with a delivered body is caught by the receiver.
        headers, body = receiver.received[0]
        with pytest.raises(stripe.SignatureVerificationError):
            stripe.Webhook.construct_event(
                body.replace(b"usd", b"eur"), headers["Stripe-Signature"], secret
            )
    finally:
        receiver.close()


def test_failed_delivery_is_retried_and_attempts_are_visible(fast_cloud: LiveCloud) -> None:
    receiver = Receiver(fail_first=2)
    try:
        c = client(fast_cloud)
        endpoint = c.v1.webhook_endpoints.create(
            params={"url": receiver.url, "enabled_events": ["payment_intent.created"]}
        )
        c.v1.payment_intents.create(params={"amount": 1000, "currency": "usd"})
        wait_for(lambda: len(receiver.received) == 1)
        headers, body = receiver.received[0]
        event = stripe.Webhook.construct_event(
            body, headers["Stripe-Signature"], str(endpoint.secret)
        )

        def deliveries() -> list[dict[str, Any]]:
            raw = c.raw_request("get", f"/v1/events/{event.id}/deliveries")
            return list(json.loads(raw.body)["data"])

        # The receiver holds the body before it answers, so the cloud records that answer
        # a moment after the receiver has it.
        wait_for(lambda: deliveries()[0]["state"] != "pending")
        (delivery,) = deliveries()
        assert delivery["state"] == "delivered"
        assert [a["status"] for a in delivery["attempt_log"]] == [500, 500, 200]
    finally:
        receiver.close()


def test_events_list_and_filter(fast_cloud: LiveCloud) -> None:
    c = client(fast_cloud)
    pi = c.v1.payment_intents.create(
        params={
            "amount": 1000,
            "currency": "usd",
            "payment_method": "pm_card_visa",
            "confirm": True,
        }
    )
    events = c.v1.events.list(params={"type": "payment_intent.succeeded"}).data
    assert [e.data.object["id"] for e in events] == [pi.id]
    every_pi = c.v1.events.list(params={"type": "payment_intent.*"}).data
    assert {e.type for e in every_pi} == {"payment_intent.created", "payment_intent.succeeded"}
    assert c.v1.events.retrieve(events[0].id).id == events[0].id

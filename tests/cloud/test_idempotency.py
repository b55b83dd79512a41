"""Idempotency keys: replay byte for byte, refuse other parameters, 409 while in flight."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx2 as httpx
import pytest

from stowpay.cloud.settings import Settings
from stowpay.cloud.testing import LiveCloud, live_cloud
from stowpay.wire.clock import ManualClock

BODY = b"amount=1000&currency=usd&payment_method=pm_card_visa&confirm=true"


def post(cloud: LiveCloud, key: str, body: bytes = BODY, account: int = 0) -> httpx.Response:
    return httpx.post(
        cloud.url + "/v1/payment_intents",
        content=body,
        headers={
            "Authorization": f"Bearer {cloud.accounts[account].secret_key}",
            "Idempotency-Key": key,
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )


def test_replay_is_byte_for_byte_and_marked(cloud: LiveCloud) -> None:
    first = post(cloud, "k-1")
    again = post(cloud, "k-1")
    assert first.status_code == again.status_code == 200
    assert again.content == first.content
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["Original-Request"] == first.headers["Request-Id"]
    assert again.headers["Request-Id"] != first.headers["Request-Id"]


def test_other_parameters_with_same_key_is_idempotency_error(cloud: LiveCloud) -> None:
    post(cloud, "k-2")
    other = post(cloud, "k-2", BODY.replace(b"1000", b"2000"))
    assert other.status_code == 400
    assert other.json()["error"]["type"] == "idempotency_error"


def test_keys_are_scoped_per_account(cloud: LiveCloud) -> None:
    a = post(cloud, "shared-key", account=0)
    b = post(cloud, "shared-key", account=1)
    assert a.status_code == b.status_code == 200
    assert a.json()["id"] != b.json()["id"]


def test_declines_replay_too(cloud: LiveCloud) -> None:
    body = BODY.replace(b"pm_card_visa", b"pm_card_chargeDeclined")
    first = post(cloud, "k-decline", body)
    again = post(cloud, "k-decline", body)
    assert first.status_code == again.status_code == 402
    assert again.content == first.content


def test_validation_failures_do_not_burn_the_key(cloud: LiveCloud) -> None:
    bad = post(cloud, "k-3", b"amount=abc&currency=usd")
    assert bad.status_code == 400
    good = post(cloud, "k-3", b"amount=500&currency=usd")
    assert good.status_code == 200


def test_concurrent_request_with_same_key_gets_409(cloud: LiveCloud) -> None:
    port = int(cloud.url.rsplit(":", 1)[1])
    head = (
        "POST /v1/payment_intents HTTP/1.1\r\n"
        "Host: 127.0.0.1\r\n"
        f"Authorization: Bearer {cloud.accounts[0].secret_key}\r\n"
        "Idempotency-Key: k-slow\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(BODY)}\r\n\r\n"
    ).encode()
    slow = socket.create_connection(("127.0.0.1", port))
    try:
        slow.sendall(head + BODY[:10])  # the first request is in flight, its body unfinished
        time.sleep(0.3)
        second = post(cloud, "k-slow")
        assert second.status_code == 409
        assert second.json()["error"]["code"] == "idempotency_key_in_use"
        slow.sendall(BODY[10:])
        reply = b""
        while b"\r\n\r\n" not in reply:
            reply += slow.recv(65536)
        assert reply.startswith(b"HTTP/1.1 200")
    finally:
        slow.close()
    third = post(cloud, "k-slow")
    assert third.status_code == 200 and third.headers["Idempotent-Replayed"] == "true"


@pytest.fixture
def clocked(db_url: str) -> Iterator[tuple[LiveCloud, ManualClock]]:
    clock = ManualClock(start=time.time())
    server = live_cloud(Settings(db=db_url, clock=clock, background=False))
    server.new_account()
    yield server, clock
    server.stop()


def test_keys_are_kept_24_hours_then_forgotten(clocked: tuple[LiveCloud, ManualClock]) -> None:
    cloud, clock = clocked
    first = post(cloud, "k-day")
    clock.advance(23.9 * 3600)
    assert post(cloud, "k-day").content == first.content
    clock.advance(0.2 * 3600)
    fresh = post(cloud, "k-day")
    assert fresh.status_code == 200 and fresh.json()["id"] != first.json()["id"]


def test_stripe_account_header_naming_another_account_is_refused(cloud: LiveCloud) -> None:
    headers = {"Authorization": f"Bearer {cloud.accounts[0].secret_key}"}
    other = httpx.get(
        cloud.url + "/v1/payment_intents",
        headers={**headers, "Stripe-Account": cloud.accounts[1].account["id"]},
    )
    assert other.status_code == 403
    assert other.json()["error"]["code"] == "stripe_account_not_supported"
    own = httpx.get(
        cloud.url + "/v1/payment_intents",
        headers={**headers, "Stripe-Account": cloud.accounts[0].account["id"]},
    )
    assert own.status_code == 200

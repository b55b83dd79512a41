"""The reader's LAN API: the payment flow over HTTP, answers to garbage, and the event stream
served by a real reader daemon on loopback."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from reader_kit import Rig, Shop, make_shop, open_rig, register, wait_until
from starlette.testclient import TestClient

from stowpay.cloud.testing import LiveCloud
from stowpay.reader.daemon import ReaderConfig, ReaderDaemon
from stowpay.reader.lan import MAX_BODY, create_lan_app
from stowpay.wire.clock import ManualClock, SystemClock

CARD = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2031}


@pytest.fixture
def shop(cloud: LiveCloud) -> Shop:
    return make_shop(cloud)


@pytest.fixture
def rig(tmp_path: Path, cloud: LiveCloud, shop: Shop) -> Iterator[Rig]:
    r = open_rig(tmp_path / "reader", cloud, ManualClock(1_780_000_000.0))
    register(r, shop)
    yield r
    r.close()


@pytest.fixture
def client(rig: Rig) -> Iterator[TestClient]:
    with TestClient(create_lan_app(rig.core)) as c:
        yield c


def connect(client: TestClient, shop: Shop, pos_id: str = "till-1") -> str:
    r = client.post("/v1/connect", json={"pos_id": pos_id, "connection_token": shop.token()})
    assert r.status_code == 200, r.text
    session = str(r.json()["session"])
    client.headers["Authorization"] = f"Bearer {session}"
    return session


def error(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    assert body["error"]["type"] in ("terminal_error", "invalid_request_error")
    assert body["error"]["message"]
    assert "Traceback" not in r.text
    return dict(body["error"])


def test_status_needs_no_session(client: TestClient, rig: Rig, shop: Shop) -> None:
    r = client.get("/v1/status")
    assert r.status_code == 200
    status = r.json()
    assert status["registered"] is True and status["location"] == shop.location
    assert status["network"] == "online"
    assert status["offline"] == {
        "count": 0,
        "amounts": {},
        "oldest_stored_at": None,
        "oldest_age": None,
        "quarantined": 0,
        "missing": [],
        "next_retry_at": None,
        "forwarding": False,
        "last_error": None,
    }


def test_an_offline_payment_over_http(client: TestClient, rig: Rig, shop: Shop) -> None:
    connect(client, shop)
    r = client.post(
        "/v1/payment_intents",
        json={
            "amount": 1299,
            "currency": "usd",
            "metadata": {"order_id": "A-17"},
            "offline_behavior": "force_offline",
        },
    )
    assert r.status_code == 200, r.text
    pi = r.json()
    assert pi["id"] is None
    local_id = pi["local_id"]
    r = client.post(f"/v1/payment_intents/{local_id}/collect", json={"card": CARD})
    assert r.status_code == 200, r.text
    assert r.json()["offline_details"]["card_present_details"]["last4"] == "4242"
    r = client.post(f"/v1/payment_intents/{local_id}/confirm")
    assert r.status_code == 200, r.text
    confirmed = r.json()
    assert confirmed["status"] == "succeeded"
    assert confirmed["offline_details"]["requires_upload"] is True
    assert "payment_method" not in confirmed
    status = client.get("/v1/status").json()
    assert status["offline"]["count"] == 1 and status["offline"]["amounts"] == {"usd": 1299}
    assert status["connected_pos"] == "till-1"
    assert client.post("/v1/disconnect").json() == {}
    assert client.get("/v1/status").json()["connected_pos"] is None


def test_rule_errors_carry_the_terminal_code(client: TestClient, shop: Shop) -> None:
    connect(client, shop)
    r = client.post(
        "/v1/payment_intents",
        json={"amount": 2_000_000, "currency": "usd", "offline_behavior": "force_offline"},
    )
    assert error(r, 400)["code"] == "AMOUNT_EXCEEDS_MAX_OFFLINE_AMOUNT"
    r = client.post(
        "/v1/payment_intents",
        json={"amount": 100, "currency": "usd", "offline_behavior": "force_offline"},
    )
    local_id = r.json()["local_id"]
    expired = {**CARD, "exp_year": 2025}
    r = client.post(f"/v1/payment_intents/{local_id}/collect", json={"card": expired})
    assert error(r, 402)["code"] == "OFFLINE_AND_CARD_EXPIRED"
    r = client.post("/v1/payment_intents/pio_nope/confirm")
    assert error(r, 404)["code"] == "OFFLINE_PAYMENT_INTENT_NOT_FOUND"


def test_a_second_pos_gets_reader_busy(client: TestClient, shop: Shop) -> None:
    connect(client, shop, "till-1")
    r = client.post(
        "/v1/connect",
        json={"pos_id": "till-2", "connection_token": shop.token(), "fail_if_in_use": True},
    )
    assert error(r, 409)["code"] == "READER_BUSY"


def test_calls_without_a_session_are_refused(client: TestClient) -> None:
    for path in ("/v1/payment_intents", "/v1/disconnect", "/v1/connection_token"):
        assert error(client.post(path, json={}), 401)["code"] == "NOT_CONNECTED_TO_READER"
    r = client.post("/v1/payment_intents/pio_x/confirm", headers={"Authorization": "Bearer x"})
    assert error(r, 401)["code"] == "NOT_CONNECTED_TO_READER"
    assert error(client.get("/v1/events"), 401)["code"] == "NOT_CONNECTED_TO_READER"
    # forward_now only wakes the forwarder: the operator's command may call it without one.
    assert client.post("/v1/forward_now").json() == {"started": True}


GARBAGE: list[tuple[str, bytes]] = [
    ("/v1/connect", b"{not json"),
    ("/v1/connect", b"[1, 2, 3]"),
    ("/v1/connect", b'"a string"'),
    ("/v1/connect", b"\xff\xfe\x00garbage"),
    ("/v1/connect", b"[" * 60_000),
    ("/v1/connect", json.dumps({"pos_id": 7, "connection_token": "x"}).encode()),
    ("/v1/connect", json.dumps({"pos_id": "p", "fail_if_in_use": "yes"}).encode()),
    ("/v1/connect", json.dumps({"pos_id": "p"}).encode()),
    ("/v1/connect", json.dumps({"pos_id": "p", "surprise": 1}).encode()),
    ("/v1/connect", json.dumps({"pos_id": "p" * 10_000}).encode()),
    ("/v1/connect", b"{" + b'"a":' * 1 + b"1" * (MAX_BODY + 10) + b"}"),
    ("/v1/payment_intents", b"{"),
    ("/v1/payment_intents", json.dumps({"amount": "100", "currency": "usd"}).encode()),
    ("/v1/payment_intents", json.dumps({"amount": 1.5, "currency": "usd"}).encode()),
    ("/v1/payment_intents", json.dumps({"amount": True, "currency": "usd"}).encode()),
    ("/v1/payment_intents", json.dumps({"amount": 100, "currency": None}).encode()),
    (
        "/v1/payment_intents",
        json.dumps({"amount": 100, "currency": "usd", "metadata": []}).encode(),
    ),
    (
        "/v1/payment_intents",
        json.dumps({"amount": 100, "currency": "usd", "metadata": {"k": {"n": 1}}}).encode(),
    ),
    ("/v1/payment_intents", json.dumps({"amount": 10**30, "currency": "usd"}).encode()),
    ("/v1/payment_intents", json.dumps({"amount": -5, "currency": "usd"}).encode()),
    (
        "/v1/payment_intents",
        json.dumps({"amount": 5, "currency": "usd", "capture_method": "later"}).encode(),
    ),
    ("/v1/payment_intents/pio_x/collect", b"{}"),
    ("/v1/payment_intents/pio_x/collect", json.dumps({"card": None}).encode()),
    ("/v1/payment_intents/pio_x/collect", json.dumps({"card": {**CARD, "cvc": "1"}}).encode()),
    ("/v1/payment_intents/pio_x/confirm", json.dumps({"anything": 1}).encode()),
    ("/v1/connection_token", json.dumps({"request_id": "ctr_nope", "error": "x"}).encode()),
    ("/v1/connection_token", json.dumps({"request_id": "ctr_nope"}).encode()),
]


@pytest.mark.parametrize(("path", "body"), GARBAGE)
def test_garbage_gets_a_json_error_never_a_500(
    client: TestClient, shop: Shop, path: str, body: bytes
) -> None:
    if not path.endswith("/connect"):
        connect(client, shop)
    r = client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert 400 <= r.status_code < 500, r.text
    err = error(r, r.status_code)
    assert err["code"] in (
        "INVALID_REQUIRED_PARAMETER",
        "OFFLINE_PAYMENT_INTENT_NOT_FOUND",
    )


@pytest.mark.parametrize(
    "body",
    [
        {"amount": 100, "currency": "usd", "4242424242424242": 1},
        {"amount": 100, "currency": "usd", "metadata": {"4242 4242 4242 4242": {"n": 1}}},
    ],
)
def test_a_card_number_the_pos_sent_as_a_name_is_not_echoed(
    client: TestClient, shop: Shop, body: dict[str, Any]
) -> None:
    connect(client, shop)
    r = client.post("/v1/payment_intents", json=body)
    err = error(r, 400)
    assert err["code"] == "INVALID_REQUIRED_PARAMETER" and "*" * 16 in err["message"], err
    assert "4242" not in r.text, r.text


def test_unknown_routes_and_methods_are_json(client: TestClient) -> None:
    assert error(client.get("/v1/nothing"), 404)["code"] == "resource_missing"
    assert error(client.get("/v1/connect"), 405)["code"] == "method_not_allowed"
    assert error(client.delete("/v1/status"), 405)["type"] == "invalid_request_error"


# -- the event stream, on a real reader daemon -------------------------------------------------


@pytest.fixture
def daemon(tmp_path: Path, cloud: LiveCloud, shop: Shop) -> Iterator[ReaderDaemon]:
    lines: list[str] = []
    d = ReaderDaemon(
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
    url = d.start()
    assert url.startswith("http://127.0.0.1:")
    wait_until(lambda: any(x.startswith("Registration code: ") for x in lines), "a code")
    code = next(x for x in lines if x.startswith("Registration code: ")).split()[-1]
    shop.register(code)
    wait_until(lambda: d.core is not None and d.core.online, "registered and online")
    yield d
    d.stop()


def read_events(response: httpx.Response, into: list[tuple[str, Any]]) -> None:
    name = None
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: ") and name is not None:
            into.append((name, json.loads(line[len("data: ") :])))
            name = None


def test_events_carry_status_token_requests_and_forwarded_payments(
    daemon: ReaderDaemon, shop: Shop
) -> None:
    pos = httpx.Client(base_url=daemon.url, timeout=10)
    r = pos.post("/v1/connect", json={"pos_id": "till-1", "connection_token": shop.token()})
    assert r.status_code == 200, r.text
    pos.headers["Authorization"] = f"Bearer {r.json()['session']}"
    events: list[tuple[str, Any]] = []
    with httpx.Client(base_url=daemon.url, timeout=None) as streamer:
        stream = streamer.stream("GET", "/v1/events", headers=dict(pos.headers))
        response = stream.__enter__()
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        reader = threading.Thread(target=read_events, args=(response, events), daemon=True)
        reader.start()
        try:
            wait_until(lambda: any(n == "offline_status" for n, _ in events), "first status")

            # The POS answers each token request from its backend (here: the merchant).
            def answer_tokens() -> None:
                answered: set[str] = set()
                while not any(n == "payment_intent_forwarded" for n, _ in events):
                    for name, data in list(events):
                        if name == "connection_token_request":
                            rid = data["request_id"]
                            if rid not in answered:
                                answered.add(rid)
                                pos.post(
                                    "/v1/connection_token",
                                    json={"request_id": rid, "connection_token": shop.token()},
                                )
                    threading.Event().wait(0.02)

            answerer = threading.Thread(target=answer_tokens, daemon=True)
            answerer.start()
            pi = pos.post(
                "/v1/payment_intents",
                json={"amount": 1299, "currency": "usd", "offline_behavior": "force_offline"},
            ).json()
            pos.post(f"/v1/payment_intents/{pi['local_id']}/collect", json={"card": CARD})
            confirmed = pos.post(f"/v1/payment_intents/{pi['local_id']}/confirm")
            assert confirmed.status_code == 200, confirmed.text
            wait_until(lambda: any(n == "payment_intent_forwarded" for n, _ in events), "forwarded")
            answerer.join(timeout=10)
        finally:
            # Disconnecting ends the stream on the reader's side.
            pos.post("/v1/disconnect")
            reader.join(timeout=10)
            stream.__exit__(None, None, None)
    assert not reader.is_alive()
    forwarded = [d for n, d in events if n == "payment_intent_forwarded"]
    assert forwarded[0]["local_id"] == pi["local_id"]
    assert forwarded[0]["status"] == "approved"
    assert forwarded[0]["payment_intent"]["id"].startswith("pi_")
    assert any(n == "connection_token_request" for n, _ in events)
    status = httpx.get(daemon.url + "/v1/status").json()
    assert status["offline"]["count"] == 0
    pos.close()

"""The /v1 request path: its direct route to the operations, and the JSON it answers with.

Operations are reached without Starlette's router, and answers and events reuse the JSON an
object was just stored as. These tests hold both to what the general path gives.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from stowpay.cloud import create_app
from stowpay.cloud.domain.accounts import create_account
from stowpay.cloud.domain.events import public, public_json
from stowpay.cloud.settings import Settings
from stowpay.cloud.storage import tables as t
from stowpay.wire import jsontext

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
def clients(tmp_path: Path) -> Iterator[tuple[TestClient, TestClient, Any]]:
    """The same app twice: as served (direct path), and through Starlette's router.

    A `root_path` that is not a prefix of the request paths routes exactly as none does, but
    the app leaves such requests to Starlette.
    """
    app = create_app(Settings(db=str(tmp_path / "cloud.db"), background=False))
    cloud = app.state.cloud
    with TestClient(app) as direct, TestClient(app, root_path="/elsewhere") as routed:
        with cloud.store.write() as tx:
            key = create_account(tx, cloud.settings.clock, cloud.settings.ids).secret_key
        for c in (direct, routed):
            c.headers["Authorization"] = f"Bearer {key}"
        yield direct, routed, cloud
    cloud.store.close()


def _flow(client: TestClient, key: str) -> list[bytes]:
    created = client.post(
        "/v1/payment_intents",
        content=b"amount=1000&currency=usd&capture_method=manual&payment_method=pm_card_visa",
        headers={**FORM, "Idempotency-Key": key + "-1"},
    )
    pi = created.json()["id"]
    confirmed = client.post(
        f"/v1/payment_intents/{pi}/confirm", headers={"Idempotency-Key": key + "-2"}
    )
    captured = client.post(
        f"/v1/payment_intents/{pi}/capture", headers={"Idempotency-Key": key + "-3"}
    )
    statuses = [r.json()["status"] for r in (created, confirmed, captured)]
    assert statuses == ["requires_confirmation", "requires_capture", "succeeded"]
    return [created.content, confirmed.content, captured.content]


def _headers(response: Any) -> list[tuple[str, str]]:
    return [(k, v) for k, v in response.headers.items() if k != "request-id"]


def test_answers_are_one_line_json_in_the_stored_layout(
    clients: tuple[TestClient, TestClient, Any],
) -> None:
    direct, _, _ = clients
    for body in _flow(direct, "layout"):
        compact = json.dumps(json.loads(body), separators=(",", ":"), ensure_ascii=False)
        assert body == compact.encode()
        assert b"_test" not in body


def test_an_answer_reusing_stored_json_equals_one_serialized_afresh(
    clients: tuple[TestClient, TestClient, Any],
) -> None:
    direct, _, _ = clients
    captured = _flow(direct, "afresh")[-1]
    pi = json.loads(captured)["id"]
    # A retrieve serializes the object it loads; capture answered with the text it stored.
    assert direct.get(f"/v1/payment_intents/{pi}").content == captured


def test_direct_and_routed_requests_answer_alike(
    clients: tuple[TestClient, TestClient, Any],
) -> None:
    direct, routed, _ = clients
    pi = json.loads(_flow(direct, "alike")[-1])["id"]
    requests: list[tuple[str, str, dict[str, str]]] = [
        ("GET", f"/v1/payment_intents/{pi}", {}),
        ("GET", "/v1/payment_intents/search?query=status:'succeeded'", {}),
        ("GET", f"/v1/payment_intents/{pi}?expand[]=latest_charge", {}),
        ("GET", "/v1/payment_intents/pi_missing", {}),
        ("POST", f"/v1/payment_intents/{pi}/capture", {"Idempotency-Key": "alike-3"}),  # replay
        ("POST", f"/v1/payment_intents/{pi}/cancel", {}),  # refused: already succeeded
        ("GET", "/v1/charges?limit=1", {}),
    ]
    for method, path, headers in requests:
        a = direct.request(method, path, headers=headers)
        b = routed.request(method, path, headers=headers)
        assert (a.status_code, _headers(a), a.content) == (b.status_code, _headers(b), b.content)


def test_what_is_not_an_operation_goes_through_starlette(
    clients: tuple[TestClient, TestClient, Any],
) -> None:
    direct, _, _ = clients
    pi = json.loads(_flow(direct, "other")[-1])["id"]
    head = direct.head(f"/v1/payment_intents/{pi}")
    assert head.status_code == 200 and head.content == b""
    for method, path in (("GET", "/v1/nowhere"), ("DELETE", f"/v1/payment_intents/{pi}")):
        r = direct.request(method, path)
        assert r.status_code == 404
        assert r.json()["error"]["message"].startswith("Unrecognized request URL")
    assert direct.get("/openapi.json").json()["openapi"].startswith("3.")


def test_events_embed_the_object_as_served(
    clients: tuple[TestClient, TestClient, Any],
) -> None:
    direct, _, cloud = clients
    pi = json.loads(_flow(direct, "events")[-1])["id"]
    with cloud.store.read() as tx:
        rows = tx.conn.execute(
            sa.select(t.objects.c.status, t.objects.c.body)
            .where(t.objects.c.type == "event", t.objects.c.ref.is_not(None))
            .order_by(t.objects.c.seq)
        ).all()
    assert [r.status for r in rows] == [
        "payment_intent.created",
        "charge.succeeded",
        "payment_intent.amount_capturable_updated",
        "charge.captured",
        "payment_intent.succeeded",
    ]
    for row in rows:
        event = json.loads(row.body)
        assert row.body == jsontext.dumps(event)  # exactly the text serializing it gives
        assert "_test" not in event["data"]["object"]
    objects = [json.loads(r.body)["data"]["object"] for r in rows]
    assert [o["status"] for o in objects[::2]] == [
        "requires_confirmation",
        "requires_capture",
        "succeeded",
    ]
    assert objects[1]["captured"] is False and objects[3]["captured"] is True
    assert all(o["id"] == pi for o in objects[::2])


@pytest.mark.parametrize(
    "obj",
    [
        {"id": "x", "a": 1},
        {"id": "x", "a": {"b": [1, "two"]}, "_test": {"decline": None}},
        {"id": "x", "_first": 1, "a": 2},
        {"id": "x", "a": {"_nested": 1}, "_test": 2},
        {"id": "x", "a": "_looks private", "_test": 2},
        {"id": "x", "a": 1, "_p": 1, "_q": [1, {"r": "é"}]},
        {"_only": 1},
    ],
)
def test_public_json_is_the_public_object_serialized(obj: dict[str, Any]) -> None:
    served = public_json(obj, jsontext.dumps(obj))
    # It may decline (None), never differ.
    assert served is None or served == jsontext.dumps(public(obj))
    if not any(k.startswith("_") for k in jsontext.dumps(obj).split('"')[1::2]):
        assert served == jsontext.dumps(obj)


def test_public_json_cuts_trailing_private_keys() -> None:
    charge = {"id": "ch_1", "amount": 1000, "metadata": {}, "_test": {"decline": None}}
    assert public_json(charge, jsontext.dumps(charge)) == jsontext.dumps(public(charge))
    # Not cut when the text is not the object's (it changed after it was stored).
    assert public_json(charge, jsontext.dumps({**charge, "_test": {"decline": "x"}})) is None

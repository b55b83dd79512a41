"""Accounts are isolated: every operation on another account's id is a 404, every list omits it.

The test walks every registered operation, so a new resource is covered the day it lands (and
fails here until its path parameter is mapped to an object below).
"""

from __future__ import annotations

import re
from typing import Any

import httpx2 as httpx
import pytest

from stowpay.cloud.api import api
from stowpay.cloud.testing import LiveCloud


def call(
    cloud: LiveCloud,
    n: int,
    method: str,
    path: str,
    data: dict[str, str] | None = None,
) -> httpx.Response:
    return httpx.request(
        method,
        cloud.url + path,
        data=data,
        headers={"Authorization": f"Bearer {cloud.accounts[n].secret_key}"},
    )


def make_objects(cloud: LiveCloud) -> dict[str, str]:
    """One object of every kind, owned by account 0; path parameter name -> id."""

    def post(path: str, **data: str) -> dict[str, Any]:
        r = call(cloud, 0, "POST", path, data)
        assert r.status_code == 200, r.text
        return dict(r.json())

    pi = post(
        "/v1/payment_intents",
        amount="2000",
        currency="usd",
        payment_method="pm_card_visa",
        confirm="true",
    )
    refund = post("/v1/refunds", payment_intent=pi["id"], amount="100")
    endpoint = post(
        "/v1/webhook_endpoints", url="http://127.0.0.1:9/x", **{"enabled_events[0]": "*"}
    )
    events = call(cloud, 0, "GET", "/v1/events?limit=1").json()["data"]
    ids = {
        "intent": pi["id"],
        "charge": pi["latest_charge"],
        "refund": refund["id"],
        "payment_method": pi["payment_method"],
        "event_id": events[0]["id"],
        "webhook_endpoint": endpoint["id"],
    }
    if any("/v1/terminal/" in op.path for op in api.operations):
        location = post(
            "/v1/terminal/locations",
            display_name="Shop",
            **{
                "address[country]": "US",
                "address[line1]": "1 Main St",
                "address[city]": "Springfield",
                "address[postal_code]": "12345",
                "address[state]": "IL",
            },
        )
        config = post("/v1/terminal/configurations", **{"offline[enabled]": "true"})
        reader = post(
            "/v1/terminal/readers", registration_code="simulated-wpe", location=location["id"]
        )
        ids.update(location=location["id"], configuration=config["id"], reader=reader["id"])
    return ids


@pytest.fixture
def owned(cloud: LiveCloud) -> dict[str, str]:
    return make_objects(cloud)


def test_every_operation_on_a_foreign_id_is_404(cloud: LiveCloud, owned: dict[str, str]) -> None:
    checked = 0
    for op in api.operations:
        names = re.findall(r"{(\w+)}", op.path)
        if not names:
            continue
        path = op.path
        for name in names:
            assert name in owned, f"map path parameter {name!r} of {op.path} in make_objects"
            path = path.replace("{" + name + "}", owned[name])
        r = call(cloud, 1, op.method, path)
        assert r.status_code == 404, (op.method, op.path, r.status_code, r.text)
        # The 404 may echo the id the caller sent, and nothing else of the owner's.
        named = {owned[n] for n in names}
        for foreign in set(owned.values()) - named:
            assert foreign not in r.text, (op.path, foreign)
        checked += 1
    assert checked >= 10


def test_lists_and_search_show_nothing_foreign(cloud: LiveCloud, owned: dict[str, str]) -> None:
    lists = [op for op in api.operations if op.method == "GET" and "{" not in op.path]
    assert len(lists) >= 5
    for op in lists:
        query = "?query=amount>0" if op.path.endswith("/search") else ""
        mine = call(cloud, 0, "GET", op.path + query)
        theirs = call(cloud, 1, "GET", op.path + query)
        assert mine.status_code == theirs.status_code == 200, (op.path, theirs.text)
        for object_id in owned.values():
            assert object_id not in theirs.text, (op.path, object_id)
        assert theirs.json()["data"] == [] or all(
            o.get("object") == "terminal.configuration" for o in theirs.json()["data"]
        ), op.path


def test_cursor_from_another_account_is_404(cloud: LiveCloud, owned: dict[str, str]) -> None:
    r = call(cloud, 1, "GET", f"/v1/payment_intents?starting_after={owned['intent']}")
    assert r.status_code == 404


def test_refund_of_foreign_payment_is_404(cloud: LiveCloud, owned: dict[str, str]) -> None:
    r = call(cloud, 1, "POST", "/v1/refunds", {"payment_intent": owned["intent"]})
    assert r.status_code == 404
    r = call(cloud, 1, "POST", "/v1/refunds", {"charge": owned["charge"]})
    assert r.status_code == 404
    r = call(
        cloud,
        1,
        "POST",
        "/v1/payment_intents",
        {"amount": "100", "currency": "usd", "payment_method": owned["payment_method"]},
    )
    assert r.status_code == 404

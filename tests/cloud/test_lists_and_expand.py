"""Cursor lists, `created` filters and `expand[]` over the wire."""

from __future__ import annotations

import json
from typing import Any

import httpx2 as httpx
import sqlalchemy as sa

from stowpay.cloud.storage import tables as t
from stowpay.cloud.testing import LiveCloud


def get(cloud: LiveCloud, path: str, **params: Any) -> httpx.Response:
    return httpx.get(cloud.url + path, params=params, auth=(cloud.accounts[0].secret_key, ""))


def post(cloud: LiveCloud, path: str, **data: str) -> dict[str, Any]:
    r = httpx.post(cloud.url + path, data=data, auth=(cloud.accounts[0].secret_key, ""))
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_pages_walk_both_ways(cloud: LiveCloud) -> None:
    ids = [
        post(cloud, "/v1/payment_intents", amount=str(100 + i), currency="usd")["id"]
        for i in range(7)
    ]
    newest_first = list(reversed(ids))
    page1 = get(cloud, "/v1/payment_intents", limit=3).json()
    assert [p["id"] for p in page1["data"]] == newest_first[:3] and page1["has_more"]
    assert page1["url"] == "/v1/payment_intents"
    page2 = get(
        cloud, "/v1/payment_intents", limit=3, starting_after=page1["data"][-1]["id"]
    ).json()
    assert [p["id"] for p in page2["data"]] == newest_first[3:6] and page2["has_more"]
    back = get(cloud, "/v1/payment_intents", limit=3, ending_before=page2["data"][0]["id"]).json()
    assert [p["id"] for p in back["data"]] == newest_first[:3]
    both = get(cloud, "/v1/payment_intents", starting_after=ids[0], ending_before=ids[1])
    assert both.status_code == 400


def test_created_filters(cloud: LiveCloud) -> None:
    pi = post(cloud, "/v1/payment_intents", amount="500", currency="usd")
    t = pi["created"]
    assert [
        p["id"] for p in get(cloud, "/v1/payment_intents", **{"created[gte]": t}).json()["data"]
    ] == [pi["id"]]
    assert get(cloud, "/v1/payment_intents", **{"created[gt]": t}).json()["data"] == []
    assert get(cloud, "/v1/payment_intents", **{"created[lt]": t}).json()["data"] == []
    assert len(get(cloud, "/v1/payment_intents", created=t).json()["data"]) == 1


def test_expand_dotted_and_in_lists(cloud: LiveCloud) -> None:
    pi = post(
        cloud,
        "/v1/payment_intents",
        amount="800",
        currency="usd",
        payment_method="pm_card_visa",
        confirm="true",
    )
    refund = post(cloud, "/v1/refunds", payment_intent=pi["id"])
    got = get(
        cloud,
        f"/v1/refunds/{refund['id']}",
        **{"expand[]": ["charge.payment_intent.latest_charge"]},
    ).json()
    assert got["charge"]["payment_intent"]["latest_charge"]["id"] == pi["latest_charge"]
    listing = get(cloud, "/v1/payment_intents", **{"expand[]": ["data.latest_charge"]}).json()
    assert listing["data"][0]["latest_charge"]["object"] == "charge"
    too_deep = get(
        cloud,
        f"/v1/refunds/{refund['id']}",
        **{"expand[]": ["charge.payment_intent.latest_charge.payment_intent.x"]},
    )
    assert too_deep.status_code == 400
    assert too_deep.json()["error"]["param"] == "expand"
    not_expandable = get(cloud, f"/v1/payment_intents/{pi['id']}", **{"expand[]": ["currency"]})
    assert not_expandable.status_code == 400


def test_search_clauses(cloud: LiveCloud) -> None:
    a = post(
        cloud,
        "/v1/payment_intents",
        amount="1500",
        currency="usd",
        **{"metadata[order_id]": "A-17"},
    )
    b = post(
        cloud, "/v1/payment_intents", amount="300", currency="eur", **{"metadata[order_id]": "A-18"}
    )

    def search(q: str) -> list[str]:
        r = get(cloud, "/v1/payment_intents/search", query=q)
        assert r.status_code == 200, r.text
        return [p["id"] for p in r.json()["data"]]

    assert search("metadata['order_id']:'A-17'") == [a["id"]]
    assert search("amount>1000") == [a["id"]]
    assert search("currency:'eur'") == [b["id"]]
    assert search("status:'requires_payment_method' AND amount<=300") == [b["id"]]
    assert set(search("metadata['order_id']:'A-17' OR metadata['order_id']:'A-18'")) == {
        a["id"],
        b["id"],
    }
    assert search("-currency:'eur'") == [a["id"]]
    for bad in ["amount>'x'", "nosuchfield:'1'", "a AND OR b", "x:'1' AND y:'2' OR z:'3'", ""]:
        r = get(cloud, "/v1/payment_intents/search", query=bad)
        assert r.status_code == 400, bad


def test_search_finds_objects_in_either_stored_layout(cloud: LiveCloud) -> None:
    """Objects are stored as compact UTF-8 JSON; those stored by earlier versions kept the
    standard library's layout (a space after each colon, non-ASCII escaped). A search by a
    field read from the stored text finds both."""
    new = post(cloud, "/v1/payment_intents", amount="700", currency="usd", description="Café 1")
    old = post(cloud, "/v1/payment_intents", amount="700", currency="usd", description="Café 1")
    o = t.objects.c
    with cloud.store.write() as tx:
        body = tx.conn.execute(sa.select(o.body).where(o.id == old["id"])).scalar_one()
        spaced = json.dumps(json.loads(body))  # the standard library's layout, as stored before
        tx.conn.execute(sa.update(t.objects).where(o.id == old["id"]).values(body=spaced))
    with cloud.store.read() as tx:
        bodies = dict(tx.conn.execute(sa.select(t.objects.c.id, t.objects.c.body)).all())
    assert '"description":"Café 1"' in bodies[new["id"]]
    assert '"description": "Caf\\u00e9 1"' in bodies[old["id"]]

    r = get(cloud, "/v1/payment_intents/search", query="description:'Café 1'")
    assert r.status_code == 200, r.text
    assert {p["id"] for p in r.json()["data"]} == {new["id"], old["id"]}
    r = get(cloud, "/v1/payment_intents/search", query="-description:'Café 1' AND amount:700")
    assert r.json()["data"] == []

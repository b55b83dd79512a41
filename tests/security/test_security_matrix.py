"""Tenants: 3 accounts x 3 readers x every endpoint x {own id, foreign id}.

One cloud (the real app, in process over ASGI, on a SQLite file and a clock the test moves)
holds three accounts; each has payments in several states, a refund, a webhook endpoint,
events, a configuration, two Locations and three registered readers (two at the first
Location, one at the second), and each reader made a PaymentIntent through the device API.

- Every `/v1` operation is called by every account with every other account's ids, in the
  path, in body fields that name objects and in list filters and cursors: each answer is a
  4xx, and it names no object of another account beyond the id the caller sent.
- Every `/device/v1` call is made with every reader's credential against every other
  reader's PaymentIntents, Locations and connection tokens: another account's are 404/403.
- The database is byte for byte the same after all the foreign calls: nothing created, nothing
  changed (a refused connection token is not even used up).
- The same calls on the caller's own ids are not 404s (the ids were real), so the matrix
  could fail.
- Connection tokens expire after their TTL and serve once, for one purpose; a reader
  credential serves its own account and Location only.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from stowpay.cloud.api import api
from stowpay.cloud.app import create_app
from stowpay.cloud.domain.accounts import create_account
from stowpay.cloud.settings import Settings
from stowpay.wire import formcodec
from stowpay.wire.clock import ManualClock

START = 1_780_000_000.0
ADDRESS = {"line1": "1 Main St", "city": "Springfield", "country": "US"}
TTL = 15 * 60


@dataclass
class Reader:
    id: str
    key: str
    location: str
    intent: str  # a PaymentIntent it created through the device API


@dataclass
class Account:
    n: int
    id: str
    key: str
    ids: dict[str, str] = field(default_factory=dict)  # path parameter name -> id
    readers: list[Reader] = field(default_factory=list)
    everything: set[str] = field(default_factory=set)  # every id and credential it holds


@dataclass
class World:
    client: TestClient
    clock: ManualClock
    db: Path
    accounts: list[Account]
    calls: int = 0

    def v1(
        self, account: Account, method: str, path: str, data: dict[str, Any] | None = None
    ) -> Any:
        self.calls += 1
        headers = {"Authorization": f"Bearer {account.key}"}
        if method == "GET":
            query = formcodec.encode(data or {})
            return self.client.get(path + (f"?{query}" if query else ""), headers=headers)
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        return self.client.request(
            method, path, content=formcodec.encode(data or {}), headers=headers
        )

    def device(self, key: str | None, path: str, body: dict[str, Any] | None = None) -> Any:
        self.calls += 1
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return self.client.post("/device/v1" + path, json=body or {}, headers=headers)

    def ok(self, account: Account, path: str, data: dict[str, Any]) -> dict[str, Any]:
        r = self.v1(account, "POST", path, data)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def foreign_ids(self, caller: Account, sent: set[str]) -> set[str]:
        """What must not appear in an answer to `caller` that sent `sent`."""
        out: set[str] = set()
        for other in self.accounts:
            if other is not caller:
                out |= other.everything
        return out - sent

    def snapshot(self) -> list[tuple[str, list[tuple[Any, ...]]]]:
        with sqlite3.connect(self.db) as conn:
            tables = [
                t
                for (t,) in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
                )
            ]
            dump = [(t, sorted(map(tuple, conn.execute(f'SELECT * FROM "{t}"')))) for t in tables]
        conn.close()
        return dump


def _register(world: World, account: Account, location: str, serial: str) -> Reader:
    device = {"device_type": "bbpos_wisepos_e", "serial_number": serial, "device_sw_version": "1"}
    code = world.client.post("/device/v1/registration_codes", json=device).json()
    reader = world.ok(
        account,
        "/v1/terminal/readers",
        {"registration_code": code["registration_code"], "location": location},
    )
    got = world.client.post(
        "/device/v1/activations", json={"registration_code": code["registration_code"]}
    ).json()
    assert got["reader"] == reader["id"] and got["account"] == account.id
    r = world.device(
        got["device_key"],
        "/payment_intents",
        {"amount": 700, "currency": "usd", "local_id": f"dev-{serial}"},
    )
    assert r.status_code == 200, r.text
    return Reader(reader["id"], got["device_key"], location, r.json()["id"])


def _populate(world: World, account: Account) -> None:
    card = {"currency": "usd", "payment_method": "pm_card_visa"}
    paid = world.ok(account, "/v1/payment_intents", {**card, "amount": 2000, "confirm": True})
    held = world.ok(
        account,
        "/v1/payment_intents",
        {**card, "amount": 3000, "confirm": True, "capture_method": "manual"},
    )
    fresh = world.ok(account, "/v1/payment_intents", {"amount": 1000, "currency": "usd"})
    refund = world.ok(account, "/v1/refunds", {"payment_intent": paid["id"], "amount": 100})
    endpoint = world.ok(
        account,
        "/v1/webhook_endpoints",
        {"url": "https://example.invalid/hook", "enabled_events": ["*"]},
    )
    config = world.ok(account, "/v1/terminal/configurations", {"offline": {"enabled": True}})
    first = world.ok(
        account,
        "/v1/terminal/locations",
        {"display_name": "Shop", "address": ADDRESS, "configuration_overrides": config["id"]},
    )
    second = world.ok(
        account, "/v1/terminal/locations", {"display_name": "Kiosk", "address": ADDRESS}
    )
    account.readers = [
        _register(world, account, loc, f"SN-{account.n}-{i}")
        for i, loc in enumerate([first["id"], first["id"], second["id"]])
    ]
    # Listing configurations makes the account's default one (lazily): made here, before the
    # matrix compares the database.
    world.v1(account, "GET", "/v1/terminal/configurations")
    events = world.v1(account, "GET", "/v1/events", {"limit": 100}).json()["data"]
    account.ids = {
        "intent": held["id"],
        "charge": paid["latest_charge"],
        "refund": refund["id"],
        "payment_method": paid["payment_method"],
        "event_id": events[0]["id"],
        "webhook_endpoint": endpoint["id"],
        "location": first["id"],
        "configuration": config["id"],
        "reader": account.readers[0].id,
    }
    account.everything = {
        account.id,
        account.key,
        fresh["id"],
        paid["id"],
        held["latest_charge"],
        second["id"],
        endpoint["secret"],
        *account.ids.values(),
        *(e["id"] for e in events),
    }
    for reader in account.readers:
        account.everything |= {reader.id, reader.key, reader.intent}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    db = tmp_path_factory.mktemp("matrix") / "cloud.db"
    clock = ManualClock(START)
    app = create_app(Settings(db=str(db), clock=clock, background=False, connection_token_ttl=TTL))
    cloud = app.state.cloud
    with TestClient(app) as client:
        accounts = []
        for n in range(3):
            with cloud.store.write() as tx:
                new = create_account(tx, clock, cloud.settings.ids)
            accounts.append(Account(n, new.account["id"], new.secret_key))
        world = World(client, clock, db, accounts)
        for account in accounts:
            _populate(world, account)
        yield world


# -- the calls -------------------------------------------------------------------------------


def path_ops() -> list[Any]:
    """Every operation with ids in its path (the route modules register with the app)."""
    return [op for op in api.operations if "{" in op.path]


#: Bodies that would do something on the caller's own objects (the rest send none).
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/v1/payment_intents/{intent}"): {"description": "changed"},
    ("POST", "/v1/payment_intents/{intent}/capture"): {"amount_to_capture": 3000},
    ("POST", "/v1/terminal/locations/{location}"): {"display_name": "Changed"},
    ("POST", "/v1/terminal/configurations/{configuration}"): {"name": "Changed"},
    ("POST", "/v1/terminal/readers/{reader}"): {"label": "Changed"},
    ("POST", "/v1/webhook_endpoints/{webhook_endpoint}"): {"description": "changed"},
}


def _path_calls(owner: Account) -> list[tuple[str, str, dict[str, Any], set[str]]]:
    """(method, path, body, ids sent) for every operation with ids in its path."""
    calls = []
    for op in path_ops():
        names = re.findall(r"{(\w+)}", op.path)
        path = op.path
        for name in names:
            assert name in owner.ids, f"map the path parameter {name!r} of {op.path}"
            path = path.replace("{" + name + "}", owner.ids[name])
        body = BODIES.get((op.method, op.path), {})
        calls.append((op.method, path, body, {owner.ids[n] for n in names}))
    return calls


def _body_calls(
    caller: Account, owner: Account, code: str
) -> list[tuple[str, str, dict[str, Any], set[str]]]:
    """Calls on paths without ids that name the owner's objects in their body or query."""
    o = owner.ids
    mine = caller.ids
    calls: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/v1/refunds", {"payment_intent": o["intent"]}),
        ("POST", "/v1/refunds", {"charge": o["charge"]}),
        (
            "POST",
            "/v1/payment_intents",
            {"amount": 500, "currency": "usd", "payment_method": o["payment_method"]},
        ),
        ("POST", f"/v1/payment_intents/{mine['intent']}", {"payment_method": o["payment_method"]}),
        (
            "POST",
            "/v1/terminal/locations",
            {
                "display_name": "X",
                "address": ADDRESS,
                "configuration_overrides": o["configuration"],
            },
        ),
        (
            "POST",
            f"/v1/terminal/locations/{mine['location']}",
            {"configuration_overrides": o["configuration"]},
        ),
        ("POST", "/v1/terminal/readers", {"registration_code": code, "location": o["location"]}),
        ("POST", "/v1/terminal/connection_tokens", {"location": o["location"]}),
        ("GET", "/v1/charges", {"payment_intent": o["intent"]}),
        ("GET", "/v1/refunds", {"payment_intent": o["intent"]}),
        ("GET", "/v1/refunds", {"charge": o["charge"]}),
        ("GET", "/v1/terminal/readers", {"location": o["location"]}),
    ]
    cursors = {
        "/v1/payment_intents": "intent",
        "/v1/charges": "charge",
        "/v1/refunds": "refund",
        "/v1/events": "event_id",
        "/v1/webhook_endpoints": "webhook_endpoint",
        "/v1/terminal/locations": "location",
        "/v1/terminal/configurations": "configuration",
        "/v1/terminal/readers": "reader",
    }
    for path, name in cursors.items():
        calls.append(("GET", path, {"starting_after": o[name]}))
        calls.append(("GET", path, {"ending_before": o[name]}))
    sent = set(o.values())
    return [(m, p, b, sent) for m, p, b in calls]


def _lists() -> list[str]:
    return [op.path for op in api.operations if op.method == "GET" and "{" not in op.path]


def _check_refused(world: World, caller: Account, r: Any, what: Any, sent: set[str]) -> None:
    assert r.status_code in (400, 403, 404) or (
        r.status_code == 200 and r.json().get("data") == []
    ), (caller.n, what, r.status_code, r.text)
    leaked = [x for x in world.foreign_ids(caller, sent) if x in r.text]
    assert leaked == [], (caller.n, what, leaked)


def _new_code(world: World, serial: str) -> str:
    device = {"device_type": "bbpos_wisepos_e", "serial_number": serial, "device_sw_version": "1"}
    r = world.client.post("/device/v1/registration_codes", json=device)
    return str(r.json()["registration_code"])


def test_no_account_reaches_another_accounts_objects(world: World) -> None:
    assert len(path_ops()) >= 20 and len(_lists()) >= 8
    pairs = [(c, o) for c in world.accounts for o in world.accounts if c is not o]
    codes = {(c.n, o.n): _new_code(world, f"X-{c.n}-{o.n}") for c, o in pairs}
    before = world.snapshot()
    start = world.calls
    refused = 0
    for caller, owner in pairs:
        code = codes[caller.n, owner.n]
        for method, path, body, sent in _path_calls(owner) + _body_calls(caller, owner, code):
            r = world.v1(caller, method, path, body)
            _check_refused(world, caller, r, (method, path, body), sent)
            refused += 1
        # Every list and the search show the caller's own objects only.
        for path in _lists():
            query = {"query": "amount>0"} if path.endswith("/search") else {"limit": 100}
            r = world.v1(caller, "GET", path, query)
            assert r.status_code == 200, (path, r.text)
            leaked = [x for x in world.foreign_ids(caller, set()) if x in r.text]
            assert leaked == [], (caller.n, path, leaked)
    after = world.snapshot()
    changed = [
        (table, sorted(set(rows) ^ set(dict(before)[table])))
        for table, rows in after
        if rows != dict(before).get(table)
    ]
    assert changed == [], f"a foreign call created or changed something: {changed}"
    print(
        f"security matrix /v1: {len(world.accounts)} accounts, {len(path_ops())} operations with "
        f"ids, {refused} foreign calls refused, {world.calls - start} calls in all; "
        "cross-account successes = 0, foreign ids in bodies = 0"
    )
    # The registration codes a refused call named were not used up.
    caller, owner = pairs[0]
    world.ok(
        caller,
        "/v1/terminal/readers",
        {"registration_code": codes[caller.n, owner.n], "location": caller.ids["location"]},
    )


# -- the device API --------------------------------------------------------------------------

SEALED = {"sealed": "AQID", "display": {"brand": "visa", "last4": "4242"}}


def _device_calls(target: Reader, owner: Account) -> list[tuple[str, dict[str, Any]]]:
    """Device calls that name `target`'s (or its account's) objects."""
    pi = target.intent
    return [
        (f"/payment_intents/{pi}/confirm", SEALED),
        (f"/payment_intents/{pi}/cancel", {}),
        (f"/payment_intents/{pi}/capture", {}),
        # A `/v1` PaymentIntent of the owner, by its id.
        (f"/payment_intents/{owner.ids['intent']}/capture", {}),
        (f"/payment_intents/{owner.ids['intent']}/cancel", {}),
    ]


def _token(world: World, account: Account, location: str | None = None) -> str:
    data = {"location": location} if location else {}
    return str(world.ok(account, "/v1/terminal/connection_tokens", data)["secret"])


def test_no_reader_reaches_another_accounts_objects(world: World) -> None:
    readers = [(a, r) for a in world.accounts for r in a.readers]
    assert len(readers) == 9
    # Tokens made before the snapshot: a refused redemption must not use them up.
    tokens = {
        (a.n, loc): _token(world, a, loc)
        for a in world.accounts
        for loc in a.ids.values()
        if loc.startswith("tml_")
    }
    tokens |= {(a.n, None): _token(world, a) for a in world.accounts}
    before = world.snapshot()
    start = world.calls
    refused = 0
    for caller, reader in readers:
        for owner, target in readers:
            if owner is caller:
                continue
            for path, body in _device_calls(target, owner):
                r = world.device(reader.key, path, body)
                assert r.status_code == 404, (caller.n, path, r.status_code, r.text)
                _check_refused(world, caller, r, path, {target.intent, owner.ids["intent"]})
                refused += 1
        for owner in world.accounts:
            if owner is caller:
                continue
            for (n, _location), token in tokens.items():
                if n != owner.n:
                    continue
                # Another account's connection token: not for this reader, to redeem or to
                # forward with; and not usable to discover this reader either.
                for path, body in [
                    ("/connection_tokens/redeem", {"connection_token": token}),
                    ("/offline_payments", {"connection_token": token, "records": []}),
                ]:
                    r = world.device(reader.key, path, body)
                    assert r.status_code in (401, 403), (path, r.status_code, r.text)
                    _check_refused(world, caller, r, path, {token})
                    refused += 1
            # Discovery with the owner's token at the caller's Location finds nothing of it.
            r = world.device(
                None,
                "/discover",
                {"connection_token": tokens[owner.n, None], "location": reader.location},
            )
            assert r.status_code in (403, 404), r.text
            _check_refused(world, owner, r, "discover", {reader.location})
            refused += 1
    after = world.snapshot()
    assert after == before, "a foreign device call created or changed something"
    print(
        f"security matrix /device/v1: {len(readers)} readers x {len(readers) - 3} foreign "
        f"readers' objects, {refused} foreign calls refused, {world.calls - start} calls; "
        "cross-account successes = 0, foreign ids in bodies = 0"
    )
    # The tokens the refused calls named are still good for their own account's readers.
    for owner in world.accounts:
        r = world.device(
            owner.readers[0].key,
            "/connection_tokens/redeem",
            {"connection_token": tokens[owner.n, None]},
        )
        assert r.status_code == 200, r.text
        assert r.json() == {"account": owner.id, "location": owner.readers[0].location}


def test_own_ids_are_not_404s(world: World) -> None:
    """The control: the same calls on the caller's own objects find them."""
    for account in world.accounts:
        for reader in account.readers:
            for path, body in _device_calls(reader, account)[:1]:
                r = world.device(reader.key, path, body)
                assert r.status_code == 400, r.text
                assert r.json()["error"]["code"] == "sealed_card_unreadable"
        # Another reader of the same account may act on its PaymentIntents.
        first, second = account.readers[:2]
        r = world.device(second.key, f"/payment_intents/{first.intent}/cancel")
        assert r.status_code == 200 and r.json()["status"] == "canceled", r.text
        # Last: these calls change and delete the account's objects (its first reader too).
        for method, path, body, _ in _path_calls(account):
            r = world.v1(account, method, path, body)
            # A refusal for the object's state is fine; "no such object" is not.
            assert r.status_code != 404, (method, path, r.text)


# -- connection tokens and reader credentials --------------------------------------------------


def test_connection_tokens_expire_and_serve_once(world: World) -> None:
    account = world.accounts[0]
    reader = account.readers[1]  # the first was deleted above

    def redeem(token: str, key: str = reader.key) -> int:
        r = world.device(key, "/connection_tokens/redeem", {"connection_token": token})
        return int(r.status_code)

    def discover(token: str) -> int:
        r = world.device(None, "/discover", {"connection_token": token})
        return int(r.status_code)

    def forward(token: str) -> int:
        r = world.device(
            reader.key, "/offline_payments", {"connection_token": token, "records": []}
        )
        return int(r.status_code)

    uses = [redeem, discover, forward]
    # Each use once; then no use of any kind again.
    for first in uses:
        token = _token(world, account)
        assert first(token) == 200
        assert [use(token) for use in uses] == [401, 401, 401], first.__name__
    # Good until its TTL, refused after it.
    for use in uses:
        token = _token(world, account)
        world.clock.advance(TTL - 1)
        assert use(token) == 200, use.__name__
        late = _token(world, account)
        world.clock.advance(TTL + 1)
        assert [u(late) for u in uses] == [401, 401, 401], use.__name__
    # A made-up or mangled token is refused the same way.
    token = _token(world, account)
    for forged in ("pst_test_" + "A" * 24, token[:-1], token + "x", "", "sk_test_x"):
        assert redeem(forged) in (400, 401), forged


def test_a_reader_credential_serves_its_own_account_and_location(world: World) -> None:
    account = world.accounts[1]
    _, at_first, at_second = account.readers  # the first was deleted above
    assert at_first.location != at_second.location
    scoped = _token(world, account, at_second.location)
    r = world.device(at_first.key, "/connection_tokens/redeem", {"connection_token": scoped})
    assert r.status_code == 403 and r.json()["error"]["code"] == "location_mismatch", r.text
    # The refusal did not use the token: the reader at that Location can.
    r = world.device(at_second.key, "/connection_tokens/redeem", {"connection_token": scoped})
    assert r.status_code == 200, r.text
    # Discovery with a Location-scoped token finds that Location's readers only.
    found = world.device(
        None, "/discover", {"connection_token": _token(world, account, at_first.location)}
    ).json()["readers"]
    assert {r["id"] for r in found} == {at_first.id}
    # A heartbeat answers for the credential's own reader and account, whatever the body says.
    r = world.device(at_first.key, "/heartbeat", {"status": "online", "device_sw_version": "1"})
    assert r.status_code == 200, r.text
    leaked = [x for x in world.foreign_ids(account, set()) if x in r.text]
    assert leaked == []
    assert at_first.id in r.text and at_second.id not in r.text
    # Without a credential, or with a forged or mangled one, nothing is served.
    for key in (None, "rdk_test_" + "A" * 32, at_first.key[:-1], account.key):
        for path in (
            "/heartbeat",
            "/payment_intents",
            f"/payment_intents/{at_first.intent}/cancel",
        ):
            r = world.device(key, path, {"status": "online", "device_sw_version": "1"})
            assert r.status_code == 401, (key, path, r.text)

"""The dashboard and the reconciliation API on a live cloud: payments forwarded by a real
vault, seen by their own account only, and reconciled with the gaps and declines they have."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from test_device_api import (
    APPROVED,
    DECLINED,
    START,
    Device,
    Till,
    forward,
    heartbeat,
    outcomes,
    register,
)

from stowpay.cloud import reconcile
from stowpay.cloud.dashboard import session as sessions
from stowpay.cloud.settings import Settings
from stowpay.cloud.testing import LiveCloud, live_cloud
from stowpay.reader.cloud_link import forward_document
from stowpay.wire.clock import ManualClock


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def live(
    request: pytest.FixtureRequest, make_db_url: Callable[[str], str], clock: ManualClock
) -> Iterator[LiveCloud]:
    """A cloud with two accounts, over SQLite (or PostgreSQL for tests marked `BOTH`)."""
    db = make_db_url(getattr(request, "param", "sqlite"))
    server = live_cloud(Settings(db=db, clock=clock, webhook_poll_interval=3600.0))
    server.new_account()
    server.new_account()
    yield server
    server.stop()


#: The account-isolation and reconciliation queries run on both databases.
BOTH = pytest.mark.parametrize("live", ["sqlite", "postgres"], indirect=True)


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


def sign_in(cloud: LiveCloud, secret: str) -> httpx.Client:
    client = httpx.Client(base_url=cloud.url, follow_redirects=False)
    r = client.post("/dashboard/login", data={"key": secret})
    assert r.status_code == 303, r.text
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert secret not in cookie
    return client


def csrf_of(page: str) -> str:
    found = re.search(r'name=csrf value="([^"]+)"', page)
    assert found is not None
    return found.group(1)


@pytest.fixture
def shop(
    live: LiveCloud, clock: ManualClock, tills: Callable[[LiveCloud, Device], Till]
) -> dict[str, Any]:
    """Account 0: a reader that sold four payments offline (one declined, an order id that is
    markup), reported its backlog, and forwarded all but the third. A webhook endpoint on a
    closed port leaves deliveries failing."""
    device = register(live)
    device.stripe.v1.webhook_endpoints.create(
        params={"url": "http://127.0.0.1:9/hooks", "enabled_events": ["*"]}
    )
    till = tills(live, device)
    sold = [
        till.take(APPROVED, 1299, order="A-1"),
        till.take(DECLINED, 2000, order="A-2"),
        till.take(APPROVED, 500, order="A-3"),
        till.take(APPROVED, 750, order="<script>alert(1)</script>"),
    ]
    summary = till.vault.summary()
    r = heartbeat(
        live,
        device,
        offline={
            "stored_count": summary.count,
            "amounts": summary.amounts,
            "oldest_stored_at": summary.oldest_stored_at,
        },
    )
    assert r.status_code == 200, r.text
    clock.advance(90)
    sent = [forward_document(p) for p in sold if p.sequence != 3]
    got = outcomes(forward(live, device, sent))
    assert [o["status"] for o in got] == ["approved", "declined", "approved"]
    # The reader still holds the third one and says so.
    r = heartbeat(
        live,
        device,
        offline={"stored_count": 1, "amounts": {"usd": 500}, "oldest_stored_at": sold[2].stored_at},
    )
    assert r.status_code == 200
    return {"device": device, "sold": sold, "outcomes": got}


def test_sign_in_needs_a_valid_key_and_the_cookie_never_holds_it(live: LiveCloud) -> None:
    client = httpx.Client(base_url=live.url, follow_redirects=False)
    assert client.get("/dashboard/payments").headers["location"] == "/dashboard/login"
    bad = client.post("/dashboard/login", data={"key": "sk_test_nope"})
    assert bad.status_code == 401 and "not valid" in bad.text
    assert (
        client.post("/dashboard/login", data={"key": live.accounts[0].publishable_key}).status_code
        == 401
    )
    forger = httpx.Client(base_url=live.url, cookies={sessions.COOKIE: "e30.AAAA"})
    assert forger.get("/dashboard/payments", follow_redirects=False).status_code == 303
    signed = sign_in(live, live.accounts[0].secret_key)
    page = signed.get("/dashboard/payments")
    assert page.status_code == 200
    assert page.headers["content-security-policy"].startswith("default-src 'none'")
    assert live.accounts[0].secret_key not in page.text


def test_a_dashboard_token_signs_in_without_the_secret_key(
    live: LiveCloud, shop: dict[str, Any]
) -> None:
    account = live.accounts[0].account["id"]
    made = cli("cloud", "dashboard-token", "--db", live.settings.db, "--account", account, env={})
    assert made.exit_code == 0, made.output
    token = made.stdout.strip()
    assert token.startswith("dsh_") and live.accounts[0].secret_key not in token
    client = sign_in(live, token)
    assert len(re.findall(r'<tr data-pi="', client.get("/dashboard/payments").text)) == 3
    # A token altered by one character signs nobody in.
    forged = token[:-1] + ("A" if token[-1] != "A" else "B")
    bad = httpx.post(live.url + "/dashboard/login", data={"key": forged})
    assert bad.status_code == 401
    unknown = cli(
        "cloud", "dashboard-token", "--db", live.settings.db, "--account", "acct_x", env={}
    )
    assert unknown.exit_code == 1 and "no such account" in unknown.output


def test_payments_page_shows_offline_payments_with_their_times_and_declines(
    live: LiveCloud, shop: dict[str, Any]
) -> None:
    client = sign_in(live, live.accounts[0].secret_key)
    page = client.get("/dashboard/payments").text
    rows = re.findall(r'<tr data-pi="(pi_[^"]+)" data-order="([^"]*)">', page)
    assert len(rows) == 3
    assert {o for _, o in rows} == {"A-1", "A-2", "&lt;script&gt;alert(1)&lt;/script&gt;"}
    assert "<script>" not in page
    assert page.count('class="b off">offline') == 3
    assert "card_declined" in page or "generic_decline" in page
    # The lag: sold at START, forwarded 90 s later.
    assert "90s" in page
    declined = client.get("/dashboard/payments", params={"status": "requires_payment_method"})
    assert len(re.findall(r'<tr data-pi="', declined.text)) == 1
    online_only = client.get("/dashboard/payments", params={"offline": "no"})
    assert "No payments match." in online_only.text
    reader = shop["device"].reader
    by_reader = client.get("/dashboard/payments", params={"reader": reader})
    assert len(re.findall(r'<tr data-pi="', by_reader.text)) == 3
    # A payment's page: its charge, events and webhook attempts.
    pi = next(p for p, o in rows if o == "A-2")
    detail = client.get(f"/dashboard/payments/{pi}").text
    assert "payment_intent.payment_failed" in detail and "charge.failed" in detail
    assert "Webhook deliveries" in detail and "pending" in detail


def test_readers_page_shows_what_each_reader_holds_with_a_chart(
    live: LiveCloud, shop: dict[str, Any], clock: ManualClock
) -> None:
    client = sign_in(live, live.accounts[0].secret_key)
    page = client.get("/dashboard/readers").text
    reader = shop["device"].reader
    row = re.search(rf'<tr data-reader="{reader}">(.*?)</tr>', page)
    assert row is not None
    assert "5.00 USD" in row.group(1) and ">1<" in row.group(1)
    assert "1.0.1" in row.group(1) and "30 days left" in row.group(1)
    assert page.count("<polyline") == 2  # the backlog and the USD at risk
    assert "backlog (max 4)" in page


def test_a_reader_nearing_the_maximum_age_is_flagged(
    live: LiveCloud, shop: dict[str, Any], clock: ManualClock
) -> None:
    device: Device = shop["device"]
    config = device.stripe.v1.terminal.configurations.create(
        params={"offline": {"enabled": True}, "stowpay_offline_policy": {"max_record_age": 3600}}
    )
    device.stripe.v1.terminal.locations.update(
        device.location, params={"configuration_overrides": config.id}
    )
    client = sign_in(live, live.accounts[0].secret_key)
    assert "maximum age in" not in client.get("/dashboard/readers").text
    clock.advance(2900)
    assert "maximum age in" in client.get("/dashboard/readers").text
    clock.advance(800)
    page = client.get("/dashboard/readers").text
    assert "past the maximum age" in page and "offline</span>" in page


@BOTH
def test_a_session_sees_only_its_own_account(live: LiveCloud, shop: dict[str, Any]) -> None:
    own = sign_in(live, live.accounts[0].secret_key)
    other = sign_in(live, live.accounts[1].secret_key)
    pis = re.findall(r'<tr data-pi="(pi_[^"]+)"', own.get("/dashboard/payments").text)
    assert len(pis) == 3
    theirs = other.get("/dashboard/payments").text
    assert "No payments match." in theirs and not any(p in theirs for p in pis)
    assert other.get(f"/dashboard/payments/{pis[0]}").status_code == 404
    assert shop["device"].reader not in other.get("/dashboard/readers").text
    hooks = own.get("/dashboard/webhooks").text
    delivery = re.findall(r'data-delivery="(whd_[^"]+)"', hooks)[0]
    assert delivery not in other.get("/dashboard/webhooks").text
    other_page = other.get("/dashboard/webhooks").text
    r = other.post(f"/dashboard/webhooks/{delivery}/resend", data={"csrf": csrf_of(other_page)})
    assert r.status_code == 404
    # The API answers for the key's account only, too.
    api = httpx.get(
        live.url + "/v1/stowpay/reconciliation",
        headers={"Authorization": f"Bearer {live.accounts[1].secret_key}"},
    ).json()
    assert api["payments"] == [] and api["not_forwarded"] == []
    day = reconcile.iso(START)[:10]
    exports = {
        n: httpx.get(
            f"{live.url}/v1/stowpay/audit_exports/{day}",
            headers={"Authorization": f"Bearer {live.accounts[n].secret_key}"},
        )
        for n in (0, 1)
    }
    assert len(exports[0].content.splitlines()) == 4  # three payments and the signature
    assert len(exports[1].content.splitlines()) == 1  # the signature alone
    assert all(p not in exports[1].text for p in pis)


@BOTH
def test_resend_queues_the_event_again_and_needs_the_forms_csrf_token(
    live: LiveCloud, shop: dict[str, Any]
) -> None:
    client = sign_in(live, live.accounts[0].secret_key)
    page = client.get("/dashboard/webhooks").text
    deliveries = re.findall(r'data-delivery="(whd_[^"]+)"', page)
    assert deliveries
    target = deliveries[-1]
    refused = client.post(f"/dashboard/webhooks/{target}/resend", data={"csrf": "x"})
    assert refused.status_code == 403
    done = client.post(f"/dashboard/webhooks/{target}/resend", data={"csrf": csrf_of(page)})
    assert done.status_code == 303
    new_id = done.headers["location"].split("resent=")[1]
    after = client.get("/dashboard/webhooks").text
    assert f'data-delivery="{new_id}"' in after
    assert len(re.findall(r'data-delivery="', after)) == len(deliveries) + 1


@BOTH
def test_reconciliation_joins_orders_and_reports_gaps_declines_and_backlog(
    live: LiveCloud, shop: dict[str, Any]
) -> None:
    r = httpx.get(
        live.url + "/v1/stowpay/reconciliation",
        params={"since": "1d"},
        headers={"Authorization": f"Bearer {live.accounts[0].secret_key}"},
    )
    assert r.status_code == 200, r.text
    found = r.json()
    by_order = {p["order"]: p for p in found["payments"]}
    assert set(by_order) == {"A-1", "A-2", "<script>alert(1)</script>"}
    a1 = by_order["A-1"]
    assert a1["charge"].startswith("ch_") and a1["offline"] and a1["sequence"] == 1
    assert a1["status"] == "succeeded" and a1["lag"] == pytest.approx(90, abs=1)
    hooks = a1["webhooks"]
    # payment_intent.created, .succeeded and charge.succeeded, each to the one endpoint,
    # which is down: every delivery still pending.
    assert hooks["events"] == 3 and hooks["deliveries"] == 3
    assert hooks["delivered"] == 0 and hooks["pending"] == 3
    assert [d["order"] for d in found["forwarded_declined"]] == ["A-2"]
    reader = shop["device"].reader
    assert found["sequence_gaps"] == [
        {"reader": reader, "high_water": 4, "missing": [3], "conflicts": []}
    ]
    assert found["not_forwarded"][0]["stored_count"] == 1
    assert found["not_forwarded"][0]["amounts"] == {"usd": 500}
    bad = httpx.get(
        live.url + "/v1/stowpay/reconciliation",
        params={"since": "yesterday-ish"},
        headers={"Authorization": f"Bearer {live.accounts[0].secret_key}"},
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "since"
    nokey = httpx.get(live.url + "/v1/stowpay/reconciliation")
    assert nokey.status_code == 401 and nokey.json()["error"]["type"] == "invalid_request_error"
    page = sign_in(live, live.accounts[0].secret_key).get("/dashboard/reconciliation").text
    assert "A-2" in page and "No gaps." not in page and "Nothing held by readers." not in page


def test_audit_export_is_signed_and_any_change_is_caught(
    live: LiveCloud, shop: dict[str, Any], tmp_path: Path
) -> None:
    key = live.accounts[0].secret_key
    env = {"STOWPAY_API_KEY": key, "STOWPAY_API_BASE": live.url}
    day = reconcile.iso(START)[:10]
    out = tmp_path / "audit.jsonl"
    run = cli("reconcile", "--export-day", day, "-o", str(out), env=env)
    assert run.returncode == 0, run.stderr
    lines = out.read_bytes().splitlines()
    assert len(lines) == 4  # three forwarded offline payments and the signature
    assert json.loads(lines[0])["sequence"] == 1
    ok = cli("reconcile", "--verify", str(out), env=env)
    assert ok.returncode == 0 and ok.stdout.startswith("OK: 3 offline payment(s)")
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_bytes(out.read_bytes().replace(b'"amount": 1299', b'"amount": 129', 1))
    bad = cli("reconcile", "--verify", str(tampered), env=env)
    assert bad.returncode == 1 and "altered" in bad.stderr
    assert "Traceback" not in bad.stderr
    other_key = reconcile.Ed25519PrivateKey.generate().public_key()
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    stranger = other_key.public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    with pytest.raises(reconcile.ExportError):
        reconcile.verify_export(out.read_bytes(), stranger)


def test_reconcile_command_prints_table_csv_and_json(live: LiveCloud, shop: dict[str, Any]) -> None:
    env = {"STOWPAY_API_KEY": live.accounts[0].secret_key, "STOWPAY_API_BASE": live.url}
    table = cli("reconcile", "--since", "2d", env=env)
    assert table.returncode == 0, table.stderr
    assert "A-1" in table.stdout and "Forwarded but declined: 1" in table.stdout
    assert "missing 3" in table.stdout and "1 payment(s), 5.00 USD" in table.stdout
    as_csv = cli("reconcile", "--format", "csv", env=env)
    assert as_csv.stdout.splitlines()[0].startswith("order,payment_intent,status")
    assert len(as_csv.stdout.splitlines()) == 4
    as_json = json.loads(cli("reconcile", "--format", "json", env=env).stdout)
    assert len(as_json["payments"]) == 3
    wrong = cli("reconcile", env={**env, "STOWPAY_API_KEY": "sk_test_wrong"})
    assert wrong.returncode == 1 and wrong.stderr.startswith("Error: Invalid API Key")
    assert cli("reconcile", "--since", "soon", env=env).returncode == 1


def cli(*args: str, env: dict[str, str]) -> Any:
    """The `stowpay` command, run in this process (`stdout`, `stderr`, `returncode`)."""
    from click.testing import CliRunner

    from stowpay.cli import main

    result = CliRunner().invoke(main, list(args), env=env)
    result.returncode = result.exit_code
    return result


def test_a_heartbeat_with_a_malformed_backlog_is_refused_and_changes_nothing(
    live: LiveCloud, shop: dict[str, Any]
) -> None:
    device: Device = shop["device"]
    for bad in (
        {"stored_count": -1, "amounts": {}},
        {"stored_count": 1, "amounts": {"usd": "500"}},
        {"stored_count": 1, "amounts": {"usd": 500}, "oldest_stored_at": "yesterday"},
        {"stored_count": 1, "amounts": {}, "extra": True},
    ):
        r = heartbeat(live, device, offline=bad)
        assert r.status_code == 400, bad
        assert r.json()["error"]["type"] == "invalid_request_error"
    found = httpx.get(
        live.url + "/v1/stowpay/reconciliation",
        headers={"Authorization": f"Bearer {live.accounts[0].secret_key}"},
    ).json()
    assert found["not_forwarded"][0]["stored_count"] == 1

"""The dashboard in a real browser: payments taken offline appear forwarded on the page.

A cloud and a reader run as `stowpay` processes; the POS is the Terminal SDK. The merchant
signs in to `/dashboard` in headless Chromium (Debian's `chromium`, driven by Playwright for
Python; `playwright install` is never needed). The cloud is stopped, the POS takes payments
offline, the cloud comes back, and the test reloads the Payments page until the reader has
forwarded them all. Screenshots of each page are kept in `$STOWPAY_TEST_ARTIFACTS/dashboard`
(default: the test's tmp directory, printed on failure). No page's source may contain the
secret key or a card number.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from browser import ARGS, CHROMIUM, artifacts_dir, browser_or_skip
from procs import Site, card_number_forms, register_reader, start_cloud, wait_for

from stowpay.terminal import (
    ConnectionTokenProvider,
    CreateConfiguration,
    DiscoveryConfiguration,
    OfflineBehavior,
    PaymentIntentParameters,
    SimulatedCard,
    Terminal,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

#: (order, amount, card number) taken while the cloud is down; the second one is declined.
SALES = [
    ("B-1", 1299, "4242424242424242"),
    ("B-2", 2000, "4000000000000002"),
    ("B-3", 450, "5555555555554444"),
]


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    return artifacts_dir(tmp_path, "dashboard")


class Tokens(ConnectionTokenProvider):
    def __init__(self, site: Site) -> None:
        self.site = site

    def fetch_connection_token(self) -> str:
        return self.site.token()


class Receiver:
    """The merchant's webhook endpoint on loopback: answers 200 and notes each event id."""

    def __init__(self) -> None:
        self.events: list[str] = []
        received = self.events

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append(str(json.loads(body)["id"]))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    yield made
    made.close()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    made = Site(tmp_path)
    yield made
    made.close()


def test_offline_payments_appear_forwarded_on_the_dashboard(
    site: Site, tmp_path: Path, artifacts: Path, receiver: Receiver
) -> None:
    sync_playwright = browser_or_skip()
    site.merchant.v1.webhook_endpoints.create(params={"url": receiver.url, "enabled_events": ["*"]})
    reader, reader_url, reader_id = register_reader(
        site, tmp_path / "reader", "--unattended-forwarding"
    )
    secret = site.account["secret_key"]
    terminal = Terminal(Tokens(site), api_base=site.url, data_dir=tmp_path / "pos")
    try:
        found = terminal.discover_readers(DiscoveryConfiguration(location=site.location))
        terminal.connect_reader(found[0], location=site.location)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 800})
                sources: list[str] = []

                def shot(name: str) -> None:
                    sources.append(page.content())
                    page.screenshot(path=str(artifacts / f"{name}.png"), full_page=True)

                # Signing in: the key goes in a form, and is nowhere on the pages after.
                page.goto(site.url + "/dashboard")
                assert page.url.endswith("/dashboard/login")
                page.fill("input[name=key]", secret)
                page.click("button")
                page.wait_for_url(re.compile(r".*/dashboard/payments$"))
                assert "No payments match." in page.content()
                cookie = next(c for c in page.context.cookies() if c["name"].startswith("stowpay"))
                assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
                assert secret not in cookie["value"]

                # The cloud goes away; the POS sells through the reader, which stores.
                site.cloud.stop()
                wait_for(
                    "the reader to see the cloud gone",
                    lambda: httpx.get(reader_url + "/v1/status").json()["network"] == "offline",
                    timeout=60,
                )
                for order, amount, number in SALES:
                    terminal.simulated_card = SimulatedCard(number=number, cvm="offline_pin")
                    pi = terminal.create_payment_intent(
                        PaymentIntentParameters(
                            amount=amount, currency="usd", metadata={"order_id": order}
                        ),
                        CreateConfiguration(offline_behavior=OfflineBehavior.PREFER_ONLINE),
                    )
                    pi = terminal.confirm_payment_intent(terminal.collect_payment_method(pi))
                    assert pi.offline_details is not None and pi.id is None

                # The cloud comes back; the merchant watches the payments arrive.
                site.cloud = start_cloud(site.db, site.port, site.logs)

                def forwarded() -> bool:
                    page.goto(site.url + "/dashboard/payments")
                    orders = re.findall(r'data-order="(B-\d)"', page.content())
                    return sorted(orders) == ["B-1", "B-2", "B-3"]

                wait_for("the payments on the dashboard", forwarded, timeout=90)
                html = page.content()
                assert html.count('class="b off">offline') == len(SALES)
                row = page.locator('tr[data-order="B-2"]').inner_text()
                assert "requires_payment_method" in row and "generic_decline" in row
                assert "succeeded" in page.locator('tr[data-order="B-1"]').inner_text()
                shot("payments")

                page.click('tr[data-order="B-2"] a')
                page.wait_for_url(re.compile(r".*/dashboard/payments/pi_.*"))
                assert "charge.failed" in page.content()
                shot("payment")

                # The reader reports an empty backlog at its next heartbeat; the chart shows
                # the backlog it reported on reconnecting, and the drop to zero.
                def drained() -> bool:
                    page.goto(site.url + "/dashboard/readers")
                    cell = page.locator(f'tr[data-reader="{reader_id}"] td').nth(5)
                    return cell.inner_text().strip() == "0"

                wait_for("the reader to report an empty backlog", drained, timeout=60)
                assert page.locator("svg polyline").count() == 2
                assert f"backlog (max {len(SALES)})" in page.content()
                assert "online" in page.locator(f'tr[data-reader="{reader_id}"]').inner_text()
                shot("readers")

                page.goto(site.url + "/dashboard/reconciliation?since=1d")
                declined = page.locator("h2:has-text('Forwarded but declined') + table")
                assert "B-2" in declined.inner_text()
                shot("reconciliation")

                # Every webhook was delivered; one is sent again from the page.
                def delivered() -> bool:
                    page.goto(site.url + "/dashboard/webhooks")
                    states = page.locator("tr[data-delivery] td:nth-child(4)").all_inner_texts()
                    return len(states) >= len(SALES) and all("delivered" in x for x in states)

                wait_for("the webhooks to be delivered", delivered, timeout=60)
                before = len(receiver.events)
                first = page.locator("tr[data-delivery]").last
                event_id = first.locator("td:nth-child(2) code").inner_text()
                first.locator("button").click()
                page.wait_for_url(re.compile(r".*/dashboard/webhooks\?resent=whd_.*"))
                wait_for(
                    "the resent event", lambda: receiver.events[before:] == [event_id], timeout=30
                )
                page.goto(site.url + "/dashboard/webhooks")
                shot("webhooks")
            finally:
                browser.close()
    finally:
        terminal.close()
        reader.stop()
    for source in sources:
        assert secret not in source
        for _, _, number in SALES:
            assert not any(f in source.encode() for f in card_number_forms(number))
    assert sorted(p.name for p in artifacts.iterdir()) == [
        "payment.png",
        "payments.png",
        "readers.png",
        "reconciliation.png",
        "webhooks.png",
    ]

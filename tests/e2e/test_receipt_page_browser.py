"""A charge's `receipt_url` rendered in a real browser (headless Chromium, as the dashboard's).

The page needs no key: the token in its address is the only way in. What a customer sees must
name the amount, the order and the card's last four digits, and no page source may carry a
card number, the account's secret key or the PaymentIntent's client secret.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import stripe
from browser import ARGS, CHROMIUM, artifacts_dir, browser_or_skip
from procs import card_number_forms

from stowpay.cloud.settings import Settings
from stowpay.cloud.testing import LiveCloud, live_cloud

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

CARD = "4242424242424242"  # what pm_card_visa stands for


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[LiveCloud]:
    server = live_cloud(Settings(db=str(tmp_path / "cloud.db"), webhook_poll_interval=0.05))
    server.new_account()
    yield server
    server.stop()


def test_the_receipt_page_renders_what_the_customer_paid_and_nothing_secret(
    cloud: LiveCloud, tmp_path: Path
) -> None:
    sync_playwright = browser_or_skip()
    shots = artifacts_dir(tmp_path, "receipts")
    client = stripe.StripeClient(
        cloud.accounts[0].secret_key, base_addresses={"api": cloud.url}, max_network_retries=0
    )
    pi = client.v1.payment_intents.create(
        params={
            "amount": 1299,
            "currency": "usd",
            "payment_method": "pm_card_visa",
            "confirm": True,
            "receipt_email": "ada@example.com",
            "metadata": {"order_id": "A-17"},
        }
    )
    assert pi.status == "succeeded"
    charge = client.v1.charges.retrieve(str(pi.latest_charge))
    url = str(charge.receipt_url)
    assert url.startswith(cloud.url + "/receipts/")
    token = url.rsplit("/", 1)[1]
    wrong = token[:-1] + ("a" if token[-1] != "a" else "b")

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page()
            answer = page.goto(url)
            assert answer is not None and answer.status == 200
            page.screenshot(path=str(shots / "receipt.png"), full_page=True)
            shown = page.inner_text("body")
            source = page.content()
            near_miss = page.goto(f"{cloud.url}/receipts/{wrong}")
            assert near_miss is not None and near_miss.status == 404
        finally:
            browser.close()

    assert "USD 12.99" in shown
    assert "A-17" in shown
    assert "4242" in shown
    assert str(charge.receipt_number) in shown
    raw = source.encode()
    for form in card_number_forms(CARD):
        assert form not in raw
    for secret in (cloud.accounts[0].secret_key, str(pi.client_secret)):
        assert secret not in source
    assert (shots / "receipt.png").stat().st_size > 0

"""Email receipts through a real SMTP server on loopback, and the receipt page.

The cloud runs in-process on loopback with the official `stripe` client as the merchant; the
SMTP server is aiosmtpd, started by the test. "Exactly once" is checked after every receipt is
marked sent: nothing is retried after that, so the count the server holds then is final.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import stripe

from smtp_sink import SmtpSink, free_port
from stowpay.cloud.settings import Settings
from stowpay.cloud.storage import receipts as outbox
from stowpay.cloud.testing import LiveCloud, live_cloud

CARD = "4242424242424242"


def wait_until(condition: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    """Wait for the cloud's background work (the deadline only stops a hang)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting: {what}")
        time.sleep(0.02)


def settings(db: str, smtp_url: str | None) -> Settings:
    return Settings(
        db=db,
        smtp_url=smtp_url,
        receipt_poll_interval=0.05,
        receipt_first_retry=0.05,
        receipt_max_delay=0.2,
        smtp_timeout=5.0,
        webhook_poll_interval=0.05,
    )


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    server = SmtpSink().start()
    yield server
    server.stop()


@pytest.fixture
def mailing_cloud(db_url: str, sink: SmtpSink) -> Iterator[LiveCloud]:
    """A cloud that mails receipts, over SQLite and over PostgreSQL."""
    server = live_cloud(settings(db_url, sink.url))
    server.new_account()
    yield server
    server.stop()


def client(cloud: LiveCloud) -> stripe.StripeClient:
    return stripe.StripeClient(
        cloud.accounts[0].secret_key, base_addresses={"api": cloud.url}, max_network_retries=0
    )


def outbox_states(cloud: LiveCloud) -> list[str]:
    with cloud.store.read() as tx:
        return [r["state"] for r in outbox.emails(tx, cloud.accounts[0].account["id"])]


def all_sent(cloud: LiveCloud, n: int) -> bool:
    states = outbox_states(cloud)
    return len(states) == n and all(s == "sent" for s in states)


def pay(c: stripe.StripeClient, email: str | None, **extra: Any) -> Any:
    params: dict[str, Any] = {
        "amount": 1299,
        "currency": "usd",
        "payment_method": "pm_card_visa",
        "confirm": True,
        "metadata": {"order_id": "A-17"},
        **extra,
    }
    if email is not None:
        params["receipt_email"] = email
    return c.v1.payment_intents.create(params=params)


def test_one_email_per_captured_payment_none_for_declines_or_cancels(
    mailing_cloud: LiveCloud, sink: SmtpSink
) -> None:
    c = client(mailing_cloud)
    auto = pay(c, "ada@example.com")
    manual = pay(c, "bob@example.com", capture_method="manual")
    pay(c, None)  # no address: no receipt
    with pytest.raises(stripe.CardError):
        pay(c, "eve@example.com", payment_method="pm_card_chargeDeclined")
    canceled = pay(c, "carl@example.com", capture_method="manual")
    c.v1.payment_intents.cancel(canceled.id)

    wait_until(lambda: all_sent(mailing_cloud, 1), "the automatic payment's receipt")
    assert [m["To"] for m in sink.received()] == ["ada@example.com"]

    # Manual capture: the receipt comes with the capture, not the authorization.
    c.v1.payment_intents.capture(manual.id)
    wait_until(lambda: all_sent(mailing_cloud, 2), "the captured payment's receipt")
    # Capturing again is refused and sends nothing more.
    with pytest.raises(stripe.InvalidRequestError):
        c.v1.payment_intents.capture(manual.id)
    received = sink.received()
    assert sorted(m["To"] for m in received) == ["ada@example.com", "bob@example.com"]
    assert len({m["Message-ID"] for m in received}) == 2

    charge = c.v1.charges.retrieve(str(auto.latest_charge))
    assert charge.receipt_email == "ada@example.com"
    assert charge.receipt_number and charge.receipt_number in received[0]["Subject"]
    emails = charge["receipt_emails"]
    assert [(e["kind"], e["status"], e["to"]) for e in emails] == [
        ("payment", "sent", "ada@example.com")
    ]
    text = received[0].get_body(preferencelist=("plain",)).get_content()
    assert "USD 12.99" in text and "**** 4242" in text and "A-17" in text
    assert CARD not in received[0].as_string()

    # The same address again sends nothing; a new address gets its own receipt.
    c.v1.payment_intents.update(auto.id, params={"receipt_email": "ada@example.com"})
    c.v1.payment_intents.update(auto.id, params={"receipt_email": "ada2@example.com"})
    wait_until(lambda: all_sent(mailing_cloud, 3), "the receipt to the new address")
    assert len(sink.to("ada2@example.com")) == 1 and len(sink.to("ada@example.com")) == 1


def test_a_refund_sends_a_refund_receipt(mailing_cloud: LiveCloud, sink: SmtpSink) -> None:
    c = client(mailing_cloud)
    pi = pay(c, "ada@example.com")
    refund = c.v1.refunds.create(params={"payment_intent": pi.id, "amount": 500})
    assert refund.receipt_number
    wait_until(lambda: all_sent(mailing_cloud, 2), "the payment and refund receipts")
    subjects = sorted(m["Subject"] for m in sink.to("ada@example.com"))
    assert len(subjects) == 2
    assert any("refund" in s and refund.receipt_number in s for s in subjects)
    refund_mail = next(m for m in sink.received() if "refund" in m["Subject"])
    assert "USD 5.00" in refund_mail.get_body(preferencelist=("plain",)).get_content()


def test_the_longest_address_is_mailed_and_a_longer_one_refused(
    mailing_cloud: LiveCloud, sink: SmtpSink
) -> None:
    # 254 characters is the longest deliverable address. A longer one once reached the
    # receipt outbox on confirm and PostgreSQL refused the row: a 500.
    longest = "a" * 64 + "@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 57 + ".com"
    assert len(longest) == 254
    c = client(mailing_cloud)
    pi = c.v1.payment_intents.create(
        params={"amount": 700, "currency": "usd", "payment_method": "pm_card_visa"}
    )
    with pytest.raises(stripe.InvalidRequestError) as refused:
        c.v1.payment_intents.confirm(pi.id, params={"receipt_email": "e" + longest})
    assert refused.value.http_status == 400 and refused.value.param == "receipt_email"
    assert c.v1.payment_intents.retrieve(pi.id).status == "requires_confirmation"

    c.v1.payment_intents.confirm(pi.id, params={"receipt_email": longest})
    wait_until(lambda: all_sent(mailing_cloud, 1), "the receipt to the longest address")
    assert [m["To"] for m in sink.received()] == [longest]


def test_a_mailbox_refused_for_good_is_not_retried(
    mailing_cloud: LiveCloud, sink: SmtpSink
) -> None:
    c = client(mailing_cloud)
    pi = pay(c, "nobody@example.com")
    pay(c, "ada@example.com")

    def settled() -> list[dict[str, Any]] | None:
        rows = c.v1.charges.retrieve(str(pi.latest_charge))["receipt_emails"]
        return rows if rows and rows[0]["status"] != "pending" else None

    [row] = wait_until(settled, "the refused receipt to settle")
    assert row["status"] == "failed" and row["attempts"] == 1 and "550" in row["last_error"]
    wait_until(lambda: sink.to("ada@example.com"), "the other receipt")
    assert sink.to("nobody@example.com") == []


def test_smtp_down_for_a_while_then_up_delivers_each_receipt_once(tmp_path: Path) -> None:
    port = free_port()  # nothing listens here yet: the mail server is down
    cloud = live_cloud(settings(str(tmp_path / "cloud.db"), f"smtp://127.0.0.1:{port}"))
    sink = SmtpSink(port)
    try:
        cloud.new_account()
        c = client(cloud)
        ids = [pay(c, f"customer{i}@example.com").id for i in range(4)]

        def retried() -> bool:
            with cloud.store.read() as tx:
                rows = outbox.emails(tx, cloud.accounts[0].account["id"])
            return len(rows) == 4 and all(
                r["state"] == "pending" and r["attempts"] >= 2 and r["last_error"] for r in rows
            )

        wait_until(retried, "every receipt to have failed at least twice")
        sink.start()
        wait_until(lambda: all_sent(cloud, 4), "every receipt sent once the server is up")
        received = sink.received()
        assert sorted(m["To"] for m in received) == [f"customer{i}@example.com" for i in range(4)]
        assert len({m["Message-ID"] for m in received}) == 4
        assert len(ids) == 4
    finally:
        cloud.stop()
        sink.stop()


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        if data.strip():
            self.text.append(data.strip())


def test_without_a_mail_server_receipts_wait_and_the_page_shows_no_secret(
    tmp_path: Path,
) -> None:
    cloud = live_cloud(settings(str(tmp_path / "cloud.db"), None))
    try:
        cloud.new_account()
        c = client(cloud)
        pi = pay(c, "ada@example.com")
        assert pi.status == "succeeded"  # nothing fails without a mail server
        charge = c.v1.charges.retrieve(str(pi.latest_charge))
        [queued] = charge["receipt_emails"]
        assert queued["status"] == "pending" and queued["attempts"] == 0
        assert queued["receipt_number"] == charge.receipt_number

        url = str(charge.receipt_url)
        assert url.startswith(cloud.url + "/receipts/")
        answer = httpx.get(url)  # no API key
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/html")
        assert answer.headers["cache-control"] == "no-store"
        page = _Page()
        page.feed(answer.text)
        page.close()
        assert "table" in page.tags and "USD 12.99" in page.text and "**** 4242" in page.text
        body = answer.text
        for secret in (CARD, cloud.accounts[0].secret_key, str(pi.client_secret), "_secret_"):
            assert secret not in body
        # Another token, or a near miss of this one, shows nothing.
        token = url.rsplit("/", 1)[1]
        wrong = token[:-1] + ("a" if token[-1] != "a" else "b")
        assert httpx.get(f"{cloud.url}/receipts/{wrong}").status_code == 404
        assert httpx.get(f"{cloud.url}/receipts/..%2F..%2Fv1").status_code == 404
    finally:
        cloud.stop()

"""Receipts of offline payments, end to end: a till receipt printed while offline, and email
receipts only once the reader forwarded the payments and they were captured.

All real and on loopback: `stowpay cloud serve --smtp-url` as a child process (stopped to take
the internet away), a reader daemon, the SDK, the official `stripe` client as the merchant's
backend, and an aiosmtpd server started by the test.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from terminal_kit import (
    CLI,
    BackendTokens,
    Cloud,
    ReaderBox,
    Recorder,
    make_merchant,
    wait_until,
)

from smtp_sink import SmtpSink
from stowpay.terminal import (
    CreateConfiguration,
    NetworkStatus,
    OfflineBehavior,
    PaymentIntent,
    PaymentIntentParameters,
    SimulatedCard,
    Terminal,
    format_receipt,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

VISA = SimulatedCard(number="4242424242424242", read_method="contact_emv", cvm="offline_pin")
DECLINED = SimulatedCard(number="4000000000000002")


class MailingCloud(Cloud):
    """The cloud process, emailing receipts through `smtp_url`."""

    def __init__(self, root: Path, smtp_url: str) -> None:
        self.smtp_url = smtp_url
        super().__init__(root)

    def start(self) -> None:
        args = ["cloud", "serve", "--db", self.db, "--port", str(self.port)]
        args += ["--log-level", "warning", "--smtp-url", self.smtp_url]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [*CLI, *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        wait_until(self._answers, "the cloud to answer", timeout=60)


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    server = SmtpSink().start()
    yield server
    server.stop()


def sale(terminal: Terminal, order: str, capture: str, card: SimulatedCard) -> PaymentIntent:
    pi = terminal.create_payment_intent(
        PaymentIntentParameters(
            amount=1299, currency="usd", metadata={"order_id": order}, capture_method=capture
        ),
        CreateConfiguration(offline_behavior=OfflineBehavior.PREFER_ONLINE),
    )
    terminal.simulated_card = card
    return terminal.confirm_payment_intent(terminal.collect_payment_method(pi))


def test_offline_receipts_printed_at_once_and_emailed_only_after_capture(
    tmp_path: Path, sink: SmtpSink
) -> None:
    cloud = MailingCloud(tmp_path / "cloud", sink.url)
    reader = ReaderBox(cloud, tmp_path / "reader")
    terminal: Terminal | None = None
    try:
        merchant = make_merchant(cloud)
        stripe_client = merchant.client
        reader_id = reader.register(merchant)
        events = Recorder()
        terminal = Terminal(BackendTokens(merchant), events, api_base=cloud.url)
        wait_until(lambda: events.saw_network(NetworkStatus.ONLINE), "the SDK online")
        terminal.connect_reader(reader.as_reader(reader_id), location=merchant.location)

        # The POS keeps its Location's name and address for receipts, as it does its reader.
        location = stripe_client.v1.terminal.locations.retrieve(merchant.location).to_dict()
        cloud.stop()
        wait_until(lambda: events.saw_network(NetworkStatus.OFFLINE), "the SDK offline")
        auto = sale(terminal, "R-1", "automatic", VISA)
        manual = sale(terminal, "R-2", "manual", VISA)
        sale(terminal, "R-3", "automatic", DECLINED)  # declined by the issuer once forwarded

        # The till receipt, at the time of sale: what the card gave, no issuer answer yet.
        till = format_receipt(auto, 32, location=location)
        assert "Offline \N{EM DASH} authorization pending" in till
        assert "**** 4242" in till and "4242424242424242" not in till
        assert "Main St" in till and "USD 12.99" in till
        assert "Account type" not in till and "Response code" not in till
        assert auto.offline_details is not None and manual.offline_details is not None

        cloud.start()
        wait_until(lambda: len(events.forwarded) >= 3, "all three forwarded", timeout=90)
        found = {order: pis[-1] for order, pis in events.forwarded_orders().items()}
        ids = {order: str(pi.id) for order, pi in found.items() if pi.id}
        assert set(ids) == {"R-1", "R-2", "R-3"}

        # After forwarding the issuer's fields are on the charge.
        charge = stripe_client.v1.charges.retrieve(
            str(stripe_client.v1.payment_intents.retrieve(ids["R-1"]).latest_charge)
        )
        card_present = charge.payment_method_details.card_present  # type: ignore[union-attr]
        assert card_present is not None and card_present.offline is not None
        receipt = card_present.receipt
        assert receipt is not None and receipt.account_type == "credit"
        assert receipt.authorization_response_code == "3030"
        assert receipt.dedicated_file_name == "A0000000031010"

        # The offline intents carried no address: the backend gives one once forwarded.
        for order in ("R-1", "R-2", "R-3"):
            stripe_client.v1.payment_intents.update(
                ids[order], params={"receipt_email": f"{order.lower()}@example.com"}
            )
        wait_until(lambda: sink.to("r-1@example.com"), "the captured payment's receipt")
        # Authorized but not captured: no receipt yet; declined: none ever.
        pending = stripe_client.v1.payment_intents.retrieve(ids["R-2"])
        assert pending.status == "requires_capture"
        pending_charge = stripe_client.v1.charges.retrieve(str(pending.latest_charge))
        assert pending_charge["receipt_emails"] == []
        assert sink.to("r-2@example.com") == []

        stripe_client.v1.payment_intents.capture(ids["R-2"])

        def both_sent() -> bool:
            a = stripe_client.v1.charges.retrieve(str(charge.id))["receipt_emails"]
            b = stripe_client.v1.charges.retrieve(str(pending.latest_charge))["receipt_emails"]
            return [e["status"] for e in a + b] == ["sent", "sent"]

        wait_until(both_sent, "both receipts sent")
        received = sink.received()
        assert sorted(m["To"] for m in received) == ["r-1@example.com", "r-2@example.com"]
        for message in received:
            assert "4242424242424242" not in message.as_string()
            text = message.get_body(preferencelist=("plain",)).get_content()
            assert "Taken offline, authorized later" in text and "3030" in text
        declined = stripe_client.v1.payment_intents.retrieve(ids["R-3"])
        assert declined.status == "requires_payment_method"
    finally:
        if terminal is not None:
            terminal.close()
        reader.stop()
        cloud.stop()

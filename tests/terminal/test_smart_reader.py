"""The offline guide, step by step, on a smart reader: a cloud process, a reader daemon on
loopback, the SDK in the test and the merchant's backend through the official `stripe`
client. The cloud process is really stopped to take the internet away."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from terminal_kit import BackendTokens, Cloud, Merchant, ReaderBox, Recorder, wait_until

from stowpay.terminal import (
    CollectConfiguration,
    CreateConfiguration,
    DiscoveryConfiguration,
    ErrorCode,
    NetworkStatus,
    OfflineBehavior,
    OfflineRiskPolicy,
    PaymentIntent,
    PaymentIntentParameters,
    SimulatedCard,
    Terminal,
    TerminalException,
    format_receipt,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

VISA = SimulatedCard(number="4242424242424242", read_method="contact_emv", cvm="offline_pin")


def sale(
    terminal: Terminal,
    order: str,
    amount: int = 1299,
    *,
    capture: str = "automatic",
    behavior: OfflineBehavior = OfflineBehavior.PREFER_ONLINE,
    card: SimulatedCard = VISA,
) -> PaymentIntent:
    """Create, collect and confirm one payment; the confirmed PaymentIntent."""
    pi = terminal.create_payment_intent(
        PaymentIntentParameters(
            amount=amount, currency="usd", metadata={"order_id": order}, capture_method=capture
        ),
        CreateConfiguration(offline_behavior=behavior),
    )
    terminal.simulated_card = card
    pi = terminal.collect_payment_method(pi, CollectConfiguration(update_payment_intent=False))
    return terminal.confirm_payment_intent(pi)


def refused(code: ErrorCode, call: object) -> TerminalException:
    assert callable(call)
    with pytest.raises(TerminalException) as caught:
        call()
    assert caught.value.code is code, caught.value
    assert caught.value.message
    return caught.value


def test_the_offline_guide_on_a_smart_reader(
    tmp_path: Path, cloud: Cloud, merchant: Merchant, smart_reader: ReaderBox
) -> None:
    reader_id = smart_reader.register(merchant)
    tokens = BackendTokens(merchant)
    events = Recorder()
    terminal = Terminal(
        token_provider=tokens,
        offline_listener=events,
        api_base=cloud.url,
        data_dir=tmp_path / "pos",
    )
    try:
        wait_until(lambda: events.saw_network(NetworkStatus.ONLINE), "the SDK to see the cloud")

        # Discover the Location's readers through the cloud, with their LAN address.
        [found] = terminal.discover_readers(DiscoveryConfiguration(location=merchant.location))
        assert found.id == reader_id and found.lan_url == smart_reader.url
        assert found.network_status is NetworkStatus.ONLINE

        # Connect online once: what allows connecting offline later.
        reader = terminal.connect_reader(found, location=merchant.location)
        assert reader.id == reader_id and reader.location == merchant.location
        status = terminal.get_offline_status()
        assert status.reader is not None and status.reader.offline_payments_count == 0

        # Online, PREFER_ONLINE gives a real PaymentIntent at once; a decline says why.
        online = sale(terminal, "O-1", 2000)
        assert online.id is not None and online.id.startswith("pi_")
        assert online.status == "succeeded" and online.offline_details is None
        declined = refused(
            ErrorCode.DECLINED_BY_STRIPE_API,
            lambda: sale(terminal, "O-2", 2000, card=SimulatedCard(number="4000000000009995")),
        )
        assert declined.decline_code == "insufficient_funds"
        assert declined.payment_intent is not None and declined.payment_intent.id is not None

        # The internet goes: the SDK notices by itself and says so.
        cloud.stop()
        wait_until(lambda: events.saw_network(NetworkStatus.OFFLINE), "the SDK to see the outage")
        wait_until(lambda: smart_reader.status()["network"] == "offline", "the reader too")

        # Offline discovery: the readers of the last online discovery, status unknown.
        [cached] = terminal.discover_readers(DiscoveryConfiguration(location=merchant.location))
        assert cached.id == reader_id and cached.lan_url == smart_reader.url
        assert cached.network_status is NetworkStatus.UNKNOWN

        # Connect while offline, with the pairing of the online connection.
        terminal.disconnect_reader()
        assert terminal.get_offline_status().reader is None
        again = terminal.connect_reader(cached)
        assert again.id == reader_id

        # Create, collect, confirm while offline.
        first = sale(terminal, "A-1", 1299)
        assert first.id is None and first.local_id is not None
        assert first.status == "succeeded"
        details = first.offline_details
        assert details is not None and details.requires_upload is True
        assert details.stored_at is not None
        card = details.card_present_details
        assert card is not None and card.last4 == "4242" and card.brand == "visa"
        assert card.read_method == "contact_emv"
        receipt = card.receipt_details
        assert receipt is not None
        assert receipt.account_type is None and receipt.authorization_response_code is None
        assert receipt.application_cryptogram and receipt.dedicated_file_name
        text = format_receipt(first, merchant="Main St")
        assert re.search(r"^VISA +\*\*\*\* 4242$", text, re.M) and "4242424242424242" not in text
        assert "USD 12.99" in text and "authorization pending" in text

        manual = sale(terminal, "A-2", 1299, capture="manual")
        assert manual.status == "requires_capture" and manual.id is None
        refused(
            ErrorCode.INVALID_REQUIRED_PARAMETER, lambda: terminal.capture_payment_intent(manual)
        )
        refused(
            ErrorCode.INVALID_REQUIRED_PARAMETER, lambda: terminal.cancel_payment_intent(manual)
        )

        # The counts are exact as soon as confirm returned.
        status = terminal.get_offline_status()
        assert status.sdk.network_status is NetworkStatus.OFFLINE
        assert status.sdk.offline_payments_count == 0
        assert status.reader is not None
        assert status.reader.offline_payments_count == 2
        assert status.reader.offline_payment_amounts_by_currency == {"usd": 2598}

        # Each offline refusal, with its code.
        params = PaymentIntentParameters(amount=1_000_001, currency="usd")
        refused(
            ErrorCode.AMOUNT_EXCEEDS_MAX_OFFLINE_AMOUNT,
            lambda: terminal.create_payment_intent(params),
        )
        refused(
            ErrorCode.NOT_CONNECTED_TO_INTERNET_AND_REQUIRE_ONLINE_SET,
            lambda: sale(terminal, "R-1", behavior=OfflineBehavior.REQUIRE_ONLINE),
        )
        for code, card_ in [
            (
                ErrorCode.CARD_SWIPE_NOT_AVAILABLE,
                SimulatedCard(read_method="magnetic_stripe_track2"),
            ),
            (ErrorCode.INTERAC_NOT_SUPPORTED_OFFLINE, SimulatedCard(number="4506445006931933")),
            (ErrorCode.ONLINE_PIN_NOT_SUPPORTED_OFFLINE, SimulatedCard(cvm="online_pin")),
            (ErrorCode.OFFLINE_AND_CARD_EXPIRED, SimulatedCard(exp_year=2020)),
        ]:
            refused(code, lambda card_=card_: sale(terminal, "R-2", card=card_))
        ghost = PaymentIntent(
            id=None,
            amount=100,
            currency="usd",
            status="requires_confirmation",
            capture_method="automatic",
            metadata={},
            local_id="pio_0000",
        )
        refused(
            ErrorCode.OFFLINE_PAYMENT_INTENT_NOT_FOUND,
            lambda: terminal.confirm_payment_intent(ghost),
        )
        # The app's own risk policy: over its limits, the payment must go online.
        terminal.offline_risk_policy = OfflineRiskPolicy(
            max_transaction={"usd": 5_000}, max_stored_total={"usd": 3_000}
        )
        refused(
            ErrorCode.NOT_CONNECTED_TO_INTERNET_AND_REQUIRE_ONLINE_SET,
            lambda: sale(terminal, "R-3", 999),
        )
        terminal.offline_risk_policy = None
        status = terminal.get_offline_status()
        assert status.reader is not None and status.reader.offline_payments_count == 2

        # The internet comes back: forwarding starts with no call from the app.
        cloud.start()
        wait_until(lambda: len(events.forwarded) >= 2, "both payments forwarded", timeout=90)
        wait_until(lambda: events.saw_network(NetworkStatus.ONLINE), "the SDK online again")
        orders = events.forwarded_orders()
        assert sorted(orders) == ["A-1", "A-2"]
        assert all(len(pis) == 1 for pis in orders.values())
        for pi, error in events.forwarded:
            assert error is None
            assert pi.id is not None and pi.id.startswith("pi_")
            assert pi.offline_details is not None and pi.offline_details.requires_upload is False
        assert events.threads == {"stowpay-terminal-listener"}
        wait_until(
            lambda: (
                (s := terminal.get_offline_status().reader) is not None
                and s.offline_payments_count == 0
            ),
            "the reader's count back to 0",
        )
        status = terminal.get_offline_status()
        assert status.reader is not None
        assert status.reader.offline_payment_amounts_by_currency == {}

        # Capture the manual one from the SDK, now that it was forwarded.
        forwarded_manual = orders["A-2"][0]
        assert forwarded_manual.status == "requires_capture" and forwarded_manual.ready_to_capture
        captured = terminal.capture_payment_intent(forwarded_manual)
        assert captured.status == "succeeded" and captured.id == forwarded_manual.id

        # Examine from the backend: one PaymentIntent per order, marked as taken offline.
        for order in ("A-1", "A-2"):
            [one] = merchant.by_order(order)
            pi = merchant.client.v1.payment_intents.retrieve(
                one.id, params={"expand": ["latest_charge"]}
            )
            assert pi.status == "succeeded" and pi.metadata.to_dict() == {"order_id": order}
            charge = pi.latest_charge
            assert charge is not None and not isinstance(charge, str)
            assert charge.payment_method_details.card_present.offline.type == "deferred"
        assert len(events.forwarded) == 2
    finally:
        terminal.close()

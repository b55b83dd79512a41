"""The same offline story with the reader's core in the app's process: a simulated mobile
reader (BLUETOOTH_SCAN) and the POS app running on the reader (HANDOFF). The SDK itself
stores the offline payments, in its data directory: `OfflineStatus.sdk` counts them."""

from __future__ import annotations

from pathlib import Path

import pytest
from terminal_kit import BackendTokens, Cloud, Merchant, Recorder, wait_until

from stowpay.terminal import (
    CreateConfiguration,
    DiscoveryConfiguration,
    DiscoveryMethod,
    ErrorCode,
    NetworkStatus,
    OfflineBehavior,
    PaymentIntent,
    PaymentIntentParameters,
    SimulatedCard,
    Terminal,
    TerminalException,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def sale(terminal: Terminal, order: str, amount: int, capture: str = "automatic") -> PaymentIntent:
    pi = terminal.create_payment_intent(
        PaymentIntentParameters(
            amount=amount, currency="usd", metadata={"order_id": order}, capture_method=capture
        ),
        CreateConfiguration(offline_behavior=OfflineBehavior.PREFER_ONLINE),
    )
    terminal.simulated_card = SimulatedCard(number="5555555555554444", cvm="offline_pin")
    return terminal.confirm_payment_intent(terminal.collect_payment_method(pi))


@pytest.mark.parametrize("method", [DiscoveryMethod.BLUETOOTH_SCAN, DiscoveryMethod.HANDOFF])
def test_the_offline_story_in_process(
    tmp_path: Path, cloud: Cloud, merchant: Merchant, method: DiscoveryMethod
) -> None:
    tokens = BackendTokens(merchant)
    events = Recorder()
    data = tmp_path / "pos"
    terminal = Terminal(tokens, events, api_base=cloud.url, data_dir=data)
    try:
        wait_until(lambda: events.saw_network(NetworkStatus.ONLINE), "the SDK online")
        discovery = DiscoveryConfiguration(method=method, simulated=True)
        [found] = terminal.discover_readers(discovery)
        assert found.id is None and found.registration_code
        assert found.discovery_method is method and found.lan_url is None

        # Not registered yet: connecting says so, with the code to register.
        with pytest.raises(TerminalException) as caught:
            terminal.connect_reader(found, location=merchant.location)
        assert caught.value.code is ErrorCode.MISSING_PREREQUISITE
        assert found.registration_code in caught.value.message
        reader_id = merchant.register(found.registration_code)

        reader = terminal.connect_reader(found, location=merchant.location)
        assert reader.id == reader_id and reader.location == merchant.location
        assert terminal.get_offline_status().reader is None

        cloud.stop()
        wait_until(lambda: events.saw_network(NetworkStatus.OFFLINE), "the SDK offline")
        terminal.disconnect_reader()
        terminal.connect_reader(found, location=merchant.location)

        first = sale(terminal, "M-1", 2500)
        manual = sale(terminal, "M-2", 1000, capture="manual")
        assert first.id is None and first.status == "succeeded"
        assert manual.status == "requires_capture"
        assert first.offline_details is not None and first.offline_details.requires_upload
        with pytest.raises(TerminalException) as caught:
            terminal.create_payment_intent(
                PaymentIntentParameters(amount=1_000_001, currency="usd")
            )
        assert caught.value.code is ErrorCode.AMOUNT_EXCEEDS_MAX_OFFLINE_AMOUNT
        with pytest.raises(TerminalException) as caught:
            terminal.create_payment_intent(
                PaymentIntentParameters(amount=100, currency="usd"),
                CreateConfiguration(offline_behavior=OfflineBehavior.REQUIRE_ONLINE),
            )
        assert caught.value.code is ErrorCode.NOT_CONNECTED_TO_INTERNET_AND_REQUIRE_ONLINE_SET

        status = terminal.get_offline_status()
        assert status.reader is None
        assert status.sdk.offline_payments_count == 2
        assert status.sdk.offline_payment_amounts_by_currency == {"usd": 3500}

        # The app restarts while offline: the payments are still there.
        terminal.close()
        events = Recorder()
        terminal = Terminal(tokens, events, api_base=cloud.url, data_dir=data)
        [found] = terminal.discover_readers(discovery)
        assert found.id == reader_id
        assert terminal.get_offline_status().sdk.offline_payments_count == 2
        terminal.connect_reader(found, location=merchant.location)

        cloud.start()
        wait_until(lambda: len(events.forwarded) >= 2, "both forwarded", timeout=90)
        orders = events.forwarded_orders()
        assert sorted(orders) == ["M-1", "M-2"] and all(len(p) == 1 for p in orders.values())
        for pi, error in events.forwarded:
            assert error is None and pi.id is not None
        wait_until(
            lambda: terminal.get_offline_status().sdk.offline_payments_count == 0,
            "the SDK's store empty",
        )
        assert terminal.get_offline_status().sdk.offline_payment_amounts_by_currency == {}
        for order, amount, state in (("M-1", 2500, "succeeded"), ("M-2", 1000, "requires_capture")):
            [pi] = merchant.by_order(order)
            assert pi.amount == amount and pi.status == state
    finally:
        terminal.close()

"""A sample POS app using the whole public API of `stowpay.terminal`, checked by
``mypy --strict`` (tests/typing/test_typing.py): the SDK's types must let it through as is."""

from __future__ import annotations

import asyncio

import stripe

from stowpay.terminal import (
    AsyncTerminal,
    CollectConfiguration,
    ConnectionTokenProvider,
    CreateConfiguration,
    DiscoveryConfiguration,
    DiscoveryMethod,
    ErrorCode,
    NetworkStatus,
    OfflineBehavior,
    OfflineCardPresentDetails,
    OfflineDetails,
    OfflineListener,
    OfflineRiskPolicy,
    OfflineStatus,
    OfflineStatusDetails,
    PaymentIntent,
    PaymentIntentParameters,
    Reader,
    ReceiptDetails,
    SimulatedCard,
    Terminal,
    TerminalException,
    format_receipt,
)


class Tokens(ConnectionTokenProvider):
    def __init__(self, backend: stripe.StripeClient) -> None:
        self.backend = backend

    def fetch_connection_token(self) -> str:
        return str(self.backend.v1.terminal.connection_tokens.create().secret)


class Events(OfflineListener):
    def __init__(self) -> None:
        self.forwarded: dict[str, str | None] = {}

    def on_offline_status_change(self, status: OfflineStatus) -> None:
        sdk: OfflineStatusDetails = status.sdk
        online: bool = sdk.network_status is NetworkStatus.ONLINE
        reader = status.reader
        stored = 0 if reader is None else reader.offline_payments_count
        print(online, stored, sdk.offline_payment_amounts_by_currency.get("usd", 0))

    def on_payment_intent_forwarded(
        self, payment_intent: PaymentIntent, error: TerminalException | None
    ) -> None:
        order: str | None = payment_intent.metadata.get("order_id")
        if order is not None:
            self.forwarded[order] = payment_intent.id
        if error is not None and error.code is ErrorCode.DECLINED_BY_STRIPE_API:
            print("declined:", error.decline_code)

    def on_forwarding_failure(self, error: TerminalException) -> None:
        print(error.code.value, error.message)


def describe(pi: PaymentIntent) -> str:
    details: OfflineDetails | None = pi.offline_details
    if details is None:
        return f"{pi.id} {pi.status}"
    card: OfflineCardPresentDetails | None = details.card_present_details
    receipt: ReceiptDetails | None = None if card is None else card.receipt_details
    stored = details.stored_at.isoformat() if details.stored_at is not None else "-"
    name = None if receipt is None else receipt.application_preferred_name
    return f"{pi.local_id} stored {stored} upload={details.requires_upload} {name}"


def checkout(terminal: Terminal, order: str, amount: int) -> PaymentIntent | None:
    terminal.simulated_card = SimulatedCard(number="4242424242424242", read_method="contact_emv")
    try:
        pi = terminal.create_payment_intent(
            PaymentIntentParameters(
                amount=amount,
                currency="usd",
                metadata={"order_id": order},
                capture_method="automatic",
            ),
            CreateConfiguration(offline_behavior=OfflineBehavior.PREFER_ONLINE),
        )
        pi = terminal.collect_payment_method(pi, CollectConfiguration(update_payment_intent=False))
        pi = terminal.confirm_payment_intent(pi)
    except TerminalException as exc:
        if exc.code is ErrorCode.AMOUNT_EXCEEDS_MAX_OFFLINE_AMOUNT:
            return None
        raise
    print(describe(pi), format_receipt(pi, merchant="Main St"))
    return pi


def main(backend: stripe.StripeClient, location: str) -> None:
    events = Events()
    policy = OfflineRiskPolicy(
        max_transaction={"usd": 100_000}, max_stored_total={"usd": 1_000_000}
    )
    with Terminal(
        token_provider=Tokens(backend),
        offline_listener=events,
        api_base="http://127.0.0.1:4242",
        data_dir="pos-data",
        offline_risk_policy=policy,
    ) as terminal:
        readers: list[Reader] = terminal.discover_readers(DiscoveryConfiguration(location=location))
        reader = terminal.connect_reader(readers[0], location=location)
        print(reader.id, reader.network_status.value, terminal.connected_reader)
        pi = checkout(terminal, "A-17", 1299)
        if pi is not None and pi.ready_to_capture:
            terminal.capture_payment_intent(pi)
        status = terminal.get_offline_status()
        if status.reader is not None:
            amounts: dict[str, int] = status.reader.offline_payment_amounts_by_currency
            print(status.reader.offline_payments_count, amounts)
        mobile = DiscoveryConfiguration(method=DiscoveryMethod.BLUETOOTH_SCAN, simulated=True)
        print([r.registration_code for r in terminal.discover_readers(mobile)])
        terminal.disconnect_reader()


async def main_async(backend: stripe.StripeClient) -> None:
    terminal = AsyncTerminal(Tokens(backend), Events(), data_dir="pos-data")
    readers = await terminal.discover_readers(DiscoveryConfiguration())
    await terminal.connect_reader(readers[0])
    pi = await terminal.create_payment_intent(PaymentIntentParameters(amount=500, currency="usd"))
    pi = await terminal.confirm_payment_intent(await terminal.collect_payment_method(pi))
    if pi.status == "requires_payment_method":
        await terminal.cancel_payment_intent(pi)
    status: OfflineStatus = await terminal.get_offline_status()
    print(status.sdk.network_status)
    await terminal.close()


if __name__ == "__main__":
    client = stripe.StripeClient("sk_test_...", base_addresses={"api": "http://127.0.0.1:4242"})
    main(client, "tml_...")
    asyncio.run(main_async(client))

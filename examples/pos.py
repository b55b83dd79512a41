"""A small point of sale on the Stowpay Terminal SDK: copy it and make it yours.

It discovers the readers of a Location, connects to the first one, takes one payment (online
when the cloud answers, stored on the reader when it does not), prints the receipt and the
offline status, and with ``--wait`` stays until stored payments are forwarded.

Run it against a cloud and a registered reader, e.g. the services ``stowpay demo --keep``
leaves running::

    python examples/pos.py --api-base http://127.0.0.1:4242 --secret-key sk_test_... \\
        --location tml_... --amount 1299 --order A-17

The connection tokens come from "the backend": here the official ``stripe`` client with the
secret key, for brevity. In a real POS the secret key stays on your server and the app asks
your server for each token (``fetch_connection_token`` below makes that one call).
"""

from __future__ import annotations

import argparse
import threading

import stripe

from stowpay.terminal import (
    ConnectionTokenProvider,
    CreateConfiguration,
    DiscoveryConfiguration,
    NetworkStatus,
    OfflineBehavior,
    OfflineListener,
    OfflineStatus,
    PaymentIntent,
    PaymentIntentParameters,
    SimulatedCard,
    Terminal,
    TerminalException,
    format_receipt,
)


class BackendTokens(ConnectionTokenProvider):
    """Asks the backend for a connection token (single use: one per call)."""

    def __init__(self, backend: stripe.StripeClient, location: str) -> None:
        self.backend = backend
        self.location = location

    def fetch_connection_token(self) -> str:
        token = self.backend.v1.terminal.connection_tokens.create(
            params={"location": self.location}
        )
        return str(token.secret)


class Till(OfflineListener):
    """What the till shows about the network and about forwarded payments."""

    def __init__(self, order: str) -> None:
        self.order = order
        #: set once this till's order was forwarded
        self.forwarded = threading.Event()

    def on_offline_status_change(self, status: OfflineStatus) -> None:
        stored = status.reader or status.sdk
        print(
            f"[network {status.sdk.network_status.value}] stored offline: "
            f"{stored.offline_payments_count} {stored.offline_payment_amounts_by_currency}"
        )

    def on_payment_intent_forwarded(
        self, payment_intent: PaymentIntent, error: TerminalException | None
    ) -> None:
        order = payment_intent.metadata.get("order_id")
        outcome = "ok" if error is None else f"{error.code.value} ({error.decline_code})"
        print(f"[forwarded] order {order} -> {payment_intent.id}: {outcome}")
        if order == self.order:
            self.forwarded.set()

    def on_forwarding_failure(self, error: TerminalException) -> None:
        print(f"[forwarding failed] {error.code.value}: {error.message}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api-base", default=None, help="the cloud (else $STOWPAY_API_BASE)")
    parser.add_argument("--secret-key", required=True, help="the backend's secret key")
    parser.add_argument("--location", required=True, help="the Location (tml_...)")
    parser.add_argument("--data-dir", default="pos-data", help="where the SDK keeps its state")
    parser.add_argument("--amount", type=int, default=1299, help="minor units")
    parser.add_argument("--currency", default="usd")
    parser.add_argument("--order", default="A-17", help="your order id, kept in metadata")
    parser.add_argument("--manual", action="store_true", help="manual capture")
    parser.add_argument("--force-offline", action="store_true")
    parser.add_argument("--wait", action="store_true", help="stay until forwarded")
    args = parser.parse_args()

    backend = stripe.StripeClient(
        args.secret_key,
        base_addresses={"api": args.api_base or "http://127.0.0.1:4242"},
        max_network_retries=0,
    )
    till = Till(args.order)
    with Terminal(
        token_provider=BackendTokens(backend, args.location),
        offline_listener=till,
        api_base=args.api_base,
        data_dir=args.data_dir,
    ) as terminal:
        readers = terminal.discover_readers(DiscoveryConfiguration(location=args.location))
        if not readers:
            print("No reader at this Location (offline, discovery shows the last ones seen).")
            return 1
        reader = terminal.connect_reader(readers[0], location=args.location)
        print(f"Connected to {reader.label or reader.id} ({reader.serial_number})")

        behavior = OfflineBehavior.FORCE_OFFLINE if args.force_offline else None
        terminal.simulated_card = SimulatedCard(number="4242424242424242", cvm="offline_pin")
        try:
            pi = terminal.create_payment_intent(
                PaymentIntentParameters(
                    amount=args.amount,
                    currency=args.currency,
                    metadata={"order_id": args.order},
                    capture_method="manual" if args.manual else "automatic",
                ),
                CreateConfiguration(offline_behavior=behavior or OfflineBehavior.PREFER_ONLINE),
            )
            pi = terminal.collect_payment_method(pi)
            pi = terminal.confirm_payment_intent(pi)
        except TerminalException as exc:
            print(f"Payment refused: {exc.code.value}: {exc.message}")
            return 2
        print(format_receipt(pi, merchant="Stowpay example shop"))

        status = terminal.get_offline_status()
        if args.wait and pi.offline_details is not None:
            if status.sdk.network_status is not NetworkStatus.ONLINE:
                print("Waiting for the internet to come back; the reader forwards by itself.")
            till.forwarded.wait()
        terminal.disconnect_reader()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The SDK's values: reading the reader's documents, the risk policy, receipts, the API."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

import stowpay.terminal as sdk
from stowpay.terminal import (
    ErrorCode,
    NetworkStatus,
    OfflineBehavior,
    OfflineRiskPolicy,
    OfflineStatus,
    OfflineStatusDetails,
    PaymentIntent,
    PaymentIntentParameters,
    format_receipt,
)
from stowpay.wire import terminal_codes

OFFLINE_PI = {
    "id": None,
    "object": "payment_intent",
    "local_id": "pio_1",
    "amount": 1299,
    "amount_capturable": 0,
    "amount_received": 1299,
    "capture_method": "automatic",
    "created": 1_780_000_000,
    "currency": "usd",
    "description": None,
    "livemode": False,
    "metadata": {"order_id": "A-17"},
    "offline_behavior": "prefer_online",
    "status": "succeeded",
    "offline_details": {
        "stored_at": 1_780_000_001.5,
        "requires_upload": True,
        "card_present_details": {
            "brand": "visa",
            "cardholder_name": "Ada Lovelace",
            "exp_month": 12,
            "exp_year": 2031,
            "last4": "4242",
            "read_method": "contact_emv",
            "receipt_details": {
                "account_type": None,
                "application_cryptogram": "ABCDEF0123456789",
                "application_preferred_name": "VISA CREDIT",
                "authorization_code": None,
                "authorization_response_code": None,
                "cardholder_verification_method": "offline_pin",
                "dedicated_file_name": "A0000000031010",
                "terminal_verification_results": "0000000000",
                "transaction_status_information": "E800",
            },
        },
    },
}


def test_an_offline_payment_intent_from_the_reader() -> None:
    pi = PaymentIntent._from_wire(OFFLINE_PI)
    assert pi.id is None and pi.local_id == "pio_1" and pi.metadata == {"order_id": "A-17"}
    details = pi.offline_details
    assert details is not None and details.requires_upload
    assert details.stored_at == datetime.fromtimestamp(1_780_000_001.5, UTC)
    card = details.card_present_details
    assert card is not None and card.last4 == "4242" and card.exp_year == 2031
    assert card.receipt_details is not None
    assert card.receipt_details.account_type is None
    assert card.receipt_details.application_preferred_name == "VISA CREDIT"
    assert not pi.ready_to_capture


def test_the_receipt_says_what_an_offline_receipt_can() -> None:
    text = format_receipt(PaymentIntent._from_wire(OFFLINE_PI), merchant="Main St")
    lines = [" ".join(line.split()) for line in text.splitlines()]
    assert lines[0] == "Main St"
    assert "TOTAL USD 12.99" in lines and "VISA **** 4242" in lines
    assert "AID A0000000031010" in lines and "Verification PIN verified" in lines
    assert "Order A-17" in lines and "Ref pio_1" in lines
    assert not any(line.startswith(("Account type", "Response code")) for line in lines)
    assert "Offline \N{EM DASH} authorization pending" in lines


def status(
    reader: dict[str, int] | None = None, sdk_: dict[str, int] | None = None
) -> OfflineStatus:
    return OfflineStatus(
        sdk=OfflineStatusDetails(NetworkStatus.OFFLINE, 0, sdk_ or {}),
        reader=None
        if reader is None
        else OfflineStatusDetails(NetworkStatus.OFFLINE, len(reader), reader),
    )


@pytest.mark.parametrize(
    ("amount", "stored", "expected"),
    [
        (100_000, {}, OfflineBehavior.PREFER_ONLINE),
        (100_001, {}, OfflineBehavior.REQUIRE_ONLINE),
        (50_000, {"usd": 950_000}, OfflineBehavior.PREFER_ONLINE),
        (50_001, {"usd": 950_000}, OfflineBehavior.REQUIRE_ONLINE),
        (50_001, {"eur": 950_000}, OfflineBehavior.PREFER_ONLINE),
    ],
)
def test_the_risk_policy(amount: int, stored: dict[str, int], expected: OfflineBehavior) -> None:
    policy = OfflineRiskPolicy(
        max_transaction={"usd": 100_000}, max_stored_total={"usd": 1_000_000}
    )
    params = PaymentIntentParameters(amount=amount, currency="USD")
    assert policy.offline_behavior(params, status(reader=stored)) is expected
    # The SDK's own store counts as well.
    assert policy.offline_behavior(params, status(sdk_=stored)) is expected
    assert (
        policy.offline_behavior(params, status(), OfflineBehavior.REQUIRE_ONLINE)
        is OfflineBehavior.REQUIRE_ONLINE
    )


def test_error_codes_are_the_wire_ones_with_messages() -> None:
    assert sdk.ErrorCode is terminal_codes.ErrorCode
    error = sdk.TerminalException(ErrorCode.AMOUNT_EXCEEDS_MAX_OFFLINE_AMOUNT)
    assert "maximum" in error.message and str(error).startswith("AMOUNT_EXCEEDS")
    assert {s.name for s in NetworkStatus} == {"ONLINE", "OFFLINE", "UNKNOWN"}
    assert {b.name for b in OfflineBehavior} == {"PREFER_ONLINE", "REQUIRE_ONLINE", "FORCE_OFFLINE"}


CONTRACT = """Terminal ConnectionTokenProvider OfflineListener DiscoveryConfiguration
DiscoveryMethod Reader SimulatedCard PaymentIntentParameters CreateConfiguration
CollectConfiguration OfflineBehavior PaymentIntent OfflineDetails OfflineCardPresentDetails
ReceiptDetails OfflineStatus OfflineStatusDetails NetworkStatus TerminalException
ErrorCode""".split()


def test_the_public_api_is_the_contract_and_documented() -> None:
    assert set(CONTRACT) <= set(sdk.__all__)
    for name in sdk.__all__:
        value = getattr(sdk, name)
        assert value.__doc__, name
        for attr, member in vars(value).items() if isinstance(value, type) else []:
            if callable(member) and not attr.startswith("_"):
                assert member.__doc__, f"{name}.{attr}"

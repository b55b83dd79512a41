"""Stripe Terminal's error codes for offline operation, and what each tells the user to do.

The reader core raises them, the LAN API carries them as strings, and the SDK exposes them as
`stowpay.terminal.ErrorCode`. Names are Stripe Terminal's (React Native / Android spelling).
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Why a terminal operation failed."""

    # Connecting
    NO_LAST_SEEN_ACCOUNT = "NO_LAST_SEEN_ACCOUNT"
    READER_CONNECTION_NOT_AVAILABLE_OFFLINE = "READER_CONNECTION_NOT_AVAILABLE_OFFLINE"
    LOCATION_CONNECTION_NOT_AVAILABLE_OFFLINE = "LOCATION_CONNECTION_NOT_AVAILABLE_OFFLINE"
    UNSUPPORTED_READER_VERSION = "UNSUPPORTED_READER_VERSION"
    MISSING_PREREQUISITE = "MISSING_PREREQUISITE"
    READER_BUSY = "READER_BUSY"
    NOT_CONNECTED_TO_READER = "NOT_CONNECTED_TO_READER"
    # Creating
    NOT_CONNECTED_TO_INTERNET_AND_REQUIRE_ONLINE_SET = (
        "NOT_CONNECTED_TO_INTERNET_AND_REQUIRE_ONLINE_SET"
    )
    FORCE_OFFLINE_WITH_FEATURE_DISABLED = "FORCE_OFFLINE_WITH_FEATURE_DISABLED"
    INVALID_OFFLINE_CURRENCY = "INVALID_OFFLINE_CURRENCY"
    # Collecting and confirming
    AMOUNT_EXCEEDS_MAX_OFFLINE_AMOUNT = "AMOUNT_EXCEEDS_MAX_OFFLINE_AMOUNT"
    CARD_SWIPE_NOT_AVAILABLE = "CARD_SWIPE_NOT_AVAILABLE"
    INTERAC_NOT_SUPPORTED_OFFLINE = "INTERAC_NOT_SUPPORTED_OFFLINE"
    CONTACTLESS_NOT_AVAILABLE_OFFLINE = "CONTACTLESS_NOT_AVAILABLE_OFFLINE"
    OFFLINE_AND_CARD_EXPIRED = "OFFLINE_AND_CARD_EXPIRED"
    OFFLINE_TRANSACTION_DECLINED = "OFFLINE_TRANSACTION_DECLINED"
    ONLINE_PIN_NOT_SUPPORTED_OFFLINE = "ONLINE_PIN_NOT_SUPPORTED_OFFLINE"
    OFFLINE_PAYMENTS_DATABASE_TOO_LARGE = "OFFLINE_PAYMENTS_DATABASE_TOO_LARGE"
    OFFLINE_COLLECT_AND_CONFIRM_MISMATCH = "OFFLINE_COLLECT_AND_CONFIRM_MISMATCH"
    OFFLINE_PAYMENT_INTENT_NOT_FOUND = "OFFLINE_PAYMENT_INTENT_NOT_FOUND"
    MISSING_EMV_DATA = "MISSING_EMV_DATA"
    # The merchant's offline risk policy (a Stowpay extension on the Configuration)
    OFFLINE_STORED_TOTAL_EXCEEDED = "OFFLINE_STORED_TOTAL_EXCEEDED"
    OFFLINE_STORED_COUNT_EXCEEDED = "OFFLINE_STORED_COUNT_EXCEEDED"
    OFFLINE_RECORD_TOO_OLD = "OFFLINE_RECORD_TOO_OLD"
    OFFLINE_CARD_VELOCITY_EXCEEDED = "OFFLINE_CARD_VELOCITY_EXCEEDED"
    # Forwarding
    CONNECTION_TOKEN_PROVIDER_ERROR_WHILE_FORWARDING = (
        "CONNECTION_TOKEN_PROVIDER_ERROR_WHILE_FORWARDING"
    )
    ACCOUNT_ID_MISMATCH_WHILE_FORWARDING = "ACCOUNT_ID_MISMATCH_WHILE_FORWARDING"
    # Online
    DECLINED_BY_STRIPE_API = "DECLINED_BY_STRIPE_API"
    STRIPE_API_CONNECTION_ERROR = "STRIPE_API_CONNECTION_ERROR"
    STRIPE_API_ERROR = "STRIPE_API_ERROR"
    CONNECTION_TOKEN_PROVIDER_ERROR = "CONNECTION_TOKEN_PROVIDER_ERROR"
    INVALID_REQUIRED_PARAMETER = "INVALID_REQUIRED_PARAMETER"
    UNEXPECTED_SDK_ERROR = "UNEXPECTED_SDK_ERROR"


#: What each code tells the person at the till or the developer to do.
MESSAGES: dict[ErrorCode, str] = {
    ErrorCode.NO_LAST_SEEN_ACCOUNT: (
        "No account is known to associate offline payments with. Connect to a reader online first."
    ),
    ErrorCode.READER_CONNECTION_NOT_AVAILABLE_OFFLINE: (
        "The selected reader must be paired online at this location before it can be used to "
        "collect payments offline."
    ),
    ErrorCode.LOCATION_CONNECTION_NOT_AVAILABLE_OFFLINE: (
        "The reader last connected online at a different location. Connect online at this "
        "location within the last 30 days to use it offline."
    ),
    ErrorCode.UNSUPPORTED_READER_VERSION: (
        "The selected reader requires a software update before it can be used to collect "
        "payments offline."
    ),
    ErrorCode.NOT_CONNECTED_TO_INTERNET_AND_REQUIRE_ONLINE_SET: (
        "The device is offline and the PaymentIntent requires online processing. Retry when "
        "online, or use OfflineBehavior.PREFER_ONLINE."
    ),
    ErrorCode.FORCE_OFFLINE_WITH_FEATURE_DISABLED: (
        "An attempt was made to create a PaymentIntent with offline behavior of force offline "
        "and the reader in use is not configured to operate offline. Enable offline mode on "
        "the Location's Configuration (offline[enabled]=true) and reconnect."
    ),
    ErrorCode.INVALID_OFFLINE_CURRENCY: (
        "This currency is not enabled for offline payments at this location. Take the payment "
        "online, or in a currency enabled for offline use."
    ),
    ErrorCode.AMOUNT_EXCEEDS_MAX_OFFLINE_AMOUNT: (
        "The amount is above the maximum allowed for an offline payment. Take it online or "
        "split it."
    ),
    ErrorCode.CARD_SWIPE_NOT_AVAILABLE: (
        "Swiped cards cannot be accepted offline. Insert the card instead."
    ),
    ErrorCode.INTERAC_NOT_SUPPORTED_OFFLINE: "Interac cards cannot be accepted offline.",
    ErrorCode.CONTACTLESS_NOT_AVAILABLE_OFFLINE: (
        "Contactless payments are not accepted offline at this location (strong customer "
        "authentication). Insert the card instead."
    ),
    ErrorCode.OFFLINE_AND_CARD_EXPIRED: "The card has expired. Try another card.",
    ErrorCode.ONLINE_PIN_NOT_SUPPORTED_OFFLINE: (
        "This card asks for an online PIN, which cannot be verified offline. Try another card."
    ),
    ErrorCode.OFFLINE_PAYMENTS_DATABASE_TOO_LARGE: (
        "The reader holds as many offline payments as it can. Go online to forward them before "
        "collecting more."
    ),
    ErrorCode.OFFLINE_PAYMENT_INTENT_NOT_FOUND: (
        "This PaymentIntent has no create request on record, usually because it was created "
        "offline and already forwarded. Create a new PaymentIntent."
    ),
    ErrorCode.CONNECTION_TOKEN_PROVIDER_ERROR_WHILE_FORWARDING: (
        "The connection token provider failed while forwarding offline payments; they stay "
        "stored and forwarding will be retried."
    ),
    ErrorCode.ACCOUNT_ID_MISMATCH_WHILE_FORWARDING: (
        "The connection token belongs to a different account than the stored payment; the "
        "payment stays stored until a token of its account is available."
    ),
}


def message_for(code: ErrorCode) -> str:
    """The user-facing message for `code`."""
    return MESSAGES.get(code, code.value.replace("_", " ").capitalize() + ".")

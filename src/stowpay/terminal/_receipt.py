"""`format_receipt`: a plain-text card-present receipt, online or offline."""

from __future__ import annotations

from datetime import UTC, datetime

from ..wire.money import format_amount
from ._models import PaymentIntent

_READ_METHODS = {
    "contact_emv": "Chip",
    "contactless_emv": "Contactless",
    "contactless_magstripe_mode": "Contactless (magstripe)",
    "magnetic_stripe_fallback": "Swipe (fallback)",
    "magnetic_stripe_track2": "Swipe",
}


def format_receipt(payment_intent: PaymentIntent, *, merchant: str | None = None) -> str:
    """The receipt of a confirmed card-present payment, as lines of text.

    Offline it shows what the card gave (brand, last4, application, cryptogram, verification)
    and says the payment is stored for authorization; the account type and authorization
    response code are absent until the issuer has answered.
    """
    pi = payment_intent
    details = pi.offline_details
    card = details.card_present_details if details is not None else None
    receipt = card.receipt_details if card is not None else None
    when = details.stored_at if details is not None and details.stored_at is not None else None
    if when is None:
        when = datetime.fromtimestamp(pi.created, UTC)
    lines: list[str] = []
    if merchant:
        lines.append(merchant)
    lines.append(when.strftime("%Y-%m-%d %H:%M:%S UTC"))
    lines.append("SALE" if pi.capture_method == "automatic" else "AUTHORIZATION")
    lines.append(f"Amount: {format_amount(pi.amount, pi.currency.lower())}")
    if card is not None:
        brand = (card.brand or "card").upper()
        lines.append(f"Card: {brand} **** {card.last4 or '????'}")
        if card.cardholder_name:
            lines.append(f"Cardholder: {card.cardholder_name}")
        if card.read_method:
            lines.append(f"Entry: {_READ_METHODS.get(card.read_method, card.read_method)}")
    if receipt is not None:
        rows = [
            ("Application", receipt.application_preferred_name),
            ("AID", receipt.dedicated_file_name),
            ("Account type", receipt.account_type),
            ("Cryptogram", receipt.application_cryptogram),
            ("TVR", receipt.terminal_verification_results),
            ("TSI", receipt.transaction_status_information),
            ("Verification", receipt.cardholder_verification_method),
            ("Auth code", receipt.authorization_code),
            ("Response code", receipt.authorization_response_code),
        ]
        lines.extend(f"{label}: {value}" for label, value in rows if value)
    reference = pi.id or pi.local_id
    if reference:
        lines.append(f"Reference: {reference}")
    for key, value in sorted(pi.metadata.items()):
        lines.append(f"{key}: {value}")
    if details is not None and details.requires_upload:
        lines.append("Stored offline: authorized when the reader is back online.")
    lines.append(f"Status: {pi.status}")
    return "\n".join(lines) + "\n"

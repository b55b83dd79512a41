"""Stripe's test cards: numbers, brands, and the outcome each one asks of the issuer.

Used by the cloud's test-mode issuer and by the simulated reader. A card number never leaves
this module in a log line: callers keep only brand, last4 and a fingerprint.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class TestCard:
    """What a test card number stands for."""

    number: str
    brand: str
    funding: str = "credit"
    country: str = "US"
    #: decline_code the issuer answers with; None approves.
    decline: str | None = None
    #: the CVM the card asks for on a reader.
    cvm: str | None = None


def _cards(*cards: TestCard) -> dict[str, TestCard]:
    return {c.number: c for c in cards}


CARDS: dict[str, TestCard] = _cards(
    TestCard("4242424242424242", "visa"),
    TestCard("4000056655665556", "visa", "debit"),
    TestCard("5555555555554444", "mastercard"),
    TestCard("2223003122003222", "mastercard"),
    TestCard("5200828282828210", "mastercard", "debit"),
    TestCard("5105105105105100", "mastercard", "prepaid"),
    TestCard("378282246310005", "amex"),
    TestCard("371449635398431", "amex"),
    TestCard("6011111111111117", "discover"),
    TestCard("6011000990139424", "discover"),
    TestCard("3056930009020004", "diners"),
    TestCard("36227206271667", "diners"),
    TestCard("3566002020360505", "jcb", country="JP"),
    TestCard("6200000000000005", "unionpay", country="CN"),
    TestCard("4506445006931933", "interac", "debit", "CA"),
    TestCard("6280000360000978", "eftpos_au", "debit", "AU"),
    TestCard("4000050360000001", "visa", "debit", "AU"),
    TestCard("5555050360000080", "mastercard", "debit", "AU"),
    TestCard("4000002500001001", "cartes_bancaires", "debit", "FR"),
    TestCard("5555552500001001", "cartes_bancaires", "debit", "FR"),
    TestCard("4711009900000316877", "girocard", "debit", "DE"),
    TestCard("4001007020000002", "visa", cvm="offline_pin"),
    TestCard("4000008260000075", "visa", cvm="offline_pin"),
    TestCard("4001000360000005", "visa", cvm="online_pin"),
    TestCard("4000002760000008", "visa", cvm="online_pin"),
    TestCard("4000000000000002", "visa", decline="generic_decline"),
    TestCard("4000000000009995", "visa", decline="insufficient_funds"),
    TestCard("4000000000009987", "visa", decline="lost_card"),
    TestCard("4000000000009979", "visa", decline="stolen_card"),
    TestCard("4000000000000069", "visa", decline="expired_card"),
    TestCard("4000000000000127", "visa", decline="incorrect_cvc"),
    TestCard("4000000000000119", "visa", decline="processing_error"),
    TestCard("4100000000000019", "visa", decline="fraudulent"),
    TestCard("4000000000005126", "visa"),
)

#: Stripe's test PaymentMethod ids for card-not-present flows, mapped to card numbers.
TEST_PAYMENT_METHODS: dict[str, str] = {
    "pm_card_visa": "4242424242424242",
    "pm_card_visa_debit": "4000056655665556",
    "pm_card_mastercard": "5555555555554444",
    "pm_card_mastercard_debit": "5200828282828210",
    "pm_card_mastercard_prepaid": "5105105105105100",
    "pm_card_amex": "378282246310005",
    "pm_card_discover": "6011111111111117",
    "pm_card_diners": "3056930009020004",
    "pm_card_jcb": "3566002020360505",
    "pm_card_unionpay": "6200000000000005",
    "pm_card_chargeDeclined": "4000000000000002",
    "pm_card_visa_chargeDeclined": "4000000000000002",
    "pm_card_chargeDeclinedInsufficientFunds": "4000000000009995",
    "pm_card_visa_chargeDeclinedInsufficientFunds": "4000000000009995",
    "pm_card_chargeDeclinedLostCard": "4000000000009987",
    "pm_card_visa_chargeDeclinedLostCard": "4000000000009987",
    "pm_card_chargeDeclinedStolenCard": "4000000000009979",
    "pm_card_visa_chargeDeclinedStolenCard": "4000000000009979",
    "pm_card_chargeDeclinedExpiredCard": "4000000000000069",
    "pm_card_visa_chargeDeclinedExpiredCard": "4000000000000069",
    "pm_card_chargeDeclinedIncorrectCvc": "4000000000000127",
    "pm_card_visa_chargeDeclinedIncorrectCvc": "4000000000000127",
    "pm_card_chargeDeclinedProcessingError": "4000000000000119",
    "pm_card_visa_chargeDeclinedProcessingError": "4000000000000119",
    "pm_card_chargeDeclinedFraudulent": "4100000000000019",
    "pm_card_visa_chargeDeclinedFraudulent": "4100000000000019",
}


def brand_of(number: str) -> str:
    """The card brand a number belongs to, by Stripe's test table or its prefix."""
    known = CARDS.get(number)
    if known is not None:
        return known.brand
    if number.startswith("4"):
        return "visa"
    if number[:2] in {"51", "52", "53", "54", "55"} or "2221" <= number[:4] <= "2720":
        return "mastercard"
    if number[:2] in {"34", "37"}:
        return "amex"
    if number.startswith(("6011", "65", "644", "645", "646", "647", "648", "649")):
        return "discover"
    if number[:2] in {"30", "36", "38", "39"}:
        return "diners"
    if number[:2] == "35":
        return "jcb"
    if number[:2] == "62":
        return "unionpay"
    return "unknown"


def luhn_ok(number: str) -> bool:
    """True when `number` is all digits with a valid Luhn check digit."""
    if not number.isdigit() or not 12 <= len(number) <= 19:
        return False
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def lookup(number: str) -> TestCard:
    """The test card for `number`; an unlisted valid number is an approving card."""
    known = CARDS.get(number)
    if known is not None:
        return known
    return TestCard(number, brand_of(number))


def fingerprint(number: str, salt: str) -> str:
    """A stable, per-account fingerprint of a card number (never reversible to it)."""
    digest = hashlib.sha256(f"{salt}:{number}".encode()).digest()
    # Letters and digits, as Stripe's: a hex digest is all digits about once in 2,000 cards,
    # and such a fingerprint can itself pass for a card number.
    return "".join(_FINGERPRINT_ALPHABET[b % 62] for b in digest[:16])


_FINGERPRINT_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

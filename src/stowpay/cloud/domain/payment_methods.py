"""PaymentMethods: Stripe's `pm_card_*` test ids for card-not-present flows.

A card number is used here only long enough to derive brand, last4, a per-account
fingerprint and the test outcome; none of it is stored in full.
"""

from __future__ import annotations

from typing import Any

from ...wire import cards
from ...wire.errors import InvalidRequestError, NotFoundError
from ..api import Context


def _empty_billing() -> dict[str, Any]:
    return {
        "address": {k: None for k in ("city", "country", "line1", "line2", "postal_code", "state")},
        "email": None,
        "name": None,
        "phone": None,
    }


def card_details(ctx: Context, number: str, exp_month: int, exp_year: int) -> dict[str, Any]:
    """The served `card` fields of a card number (brand, last4, fingerprint, ...)."""
    card = cards.lookup(number)
    return {
        "brand": card.brand,
        "country": card.country,
        "display_brand": card.brand,
        "exp_month": exp_month,
        "exp_year": exp_year,
        "fingerprint": cards.fingerprint(number, ctx.account["_fingerprint_salt"]),
        "funding": card.funding,
        "last4": number[-4:],
    }


def test_outcome(number: str) -> dict[str, Any]:
    """What the test-mode issuer needs to remember of a card: never the number itself."""
    card = cards.lookup(number)
    return {"decline": card.decline, "refund_fails": number == "4000000000005126"}


def resolve(ctx: Context, payment_method: str, *, param: str = "payment_method") -> dict[str, Any]:
    """The PaymentMethod a request names: a stored one, or a new one for a `pm_card_*` id."""
    number = cards.TEST_PAYMENT_METHODS.get(payment_method)
    if number is None:
        found = ctx.tx.get(ctx.account_id, payment_method, "payment_method")
        if found is None:
            raise NotFoundError("PaymentMethod", payment_method, param=param)
        return found
    year = int(ctx.clock.now() // (365.25 * 86400)) + 1970 + 3
    details = card_details(ctx, number, 12, year)
    pm: dict[str, Any] = {
        "id": ctx.ids.new("pm"),
        "object": "payment_method",
        "allow_redisplay": "unspecified",
        "billing_details": _empty_billing(),
        "card": {
            **details,
            "checks": {
                "address_line1_check": None,
                "address_postal_code_check": None,
                "cvc_check": "pass",
            },
            "generated_from": None,
            "networks": {"available": [details["brand"]], "preferred": None},
            "three_d_secure_usage": {"supported": True},
            "wallet": None,
        },
        "created": ctx.now(),
        "customer": None,
        "livemode": False,
        "metadata": {},
        "type": "card",
        "_test": test_outcome(number),
    }
    ctx.tx.insert(ctx.account_id, pm)
    return pm


def require_type(pm: dict[str, Any], allowed: list[str]) -> None:
    """Refuse a PaymentMethod whose type the PaymentIntent does not accept."""
    if pm["type"] not in allowed:
        raise InvalidRequestError(
            f"The PaymentMethod provided ({pm['type']}) is not allowed for this PaymentIntent. "
            "Please attach a PaymentMethod of one of the following types: "
            f"{', '.join(allowed)}.",
            code="payment_intent_invalid_parameter",
            param="payment_method",
        )

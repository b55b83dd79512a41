"""The test-mode issuer: approves or declines by Stripe's test cards and amount endings."""

from __future__ import annotations

from dataclasses import dataclass

#: decline_code -> (error code, customer-facing message)
DECLINES: dict[str, tuple[str, str]] = {
    "generic_decline": ("card_declined", "Your card was declined."),
    "insufficient_funds": ("card_declined", "Your card has insufficient funds."),
    "lost_card": ("card_declined", "Your card was declined."),
    "stolen_card": ("card_declined", "Your card was declined."),
    "fraudulent": ("card_declined", "Your card was declined."),
    "expired_card": ("expired_card", "Your card has expired."),
    "incorrect_cvc": ("incorrect_cvc", "Your card's security code is incorrect."),
    "processing_error": (
        "processing_error",
        "An error occurred while processing your card. Try again in a little bit.",
    ),
    "call_issuer": ("card_declined", "Your card was declined."),
    "offline_pin_required": ("card_declined", "Your card was declined."),
    "online_or_offline_pin_required": ("card_declined", "Your card was declined."),
    "incorrect_pin": ("card_declined", "Your card was declined."),
    "withdrawal_count_limit_exceeded": ("card_declined", "Your card was declined."),
    "pin_try_exceeded": ("card_declined", "Your card was declined."),
}

#: Card-present test amounts: the last two digits of the amount in minor units.
AMOUNT_ENDINGS: dict[int, str] = {
    1: "call_issuer",
    2: "offline_pin_required",
    3: "online_or_offline_pin_required",
    5: "generic_decline",
    55: "incorrect_pin",
    65: "withdrawal_count_limit_exceeded",
    75: "pin_try_exceeded",
}


@dataclass(frozen=True)
class Decision:
    """The issuer's answer."""

    approved: bool
    decline_code: str | None = None

    @property
    def error_code(self) -> str | None:
        return None if self.decline_code is None else DECLINES[self.decline_code][0]

    @property
    def message(self) -> str | None:
        return None if self.decline_code is None else DECLINES[self.decline_code][1]

    def outcome(self, risk_score: int) -> dict[str, object]:
        """The charge's `outcome` for this decision."""
        if self.approved:
            return {
                "network_status": "approved_by_network",
                "reason": None,
                "risk_level": "normal",
                "risk_score": risk_score,
                "seller_message": "Payment complete.",
                "type": "authorized",
            }
        return {
            "network_status": "declined_by_network",
            "reason": self.decline_code,
            "risk_level": "normal",
            "risk_score": risk_score,
            "seller_message": "The bank did not return any further details with this decline.",
            "type": "issuer_declined",
        }


def decide(*, card_decline: str | None, amount: int, card_present: bool) -> Decision:
    """Approve or decline a charge.

    The card's own test outcome comes first. For card-present payments the last two digits
    of the amount in minor units then pick a decline; for a zero-decimal currency those are
    the two rightmost digits of the amount itself, so one rule serves both.
    """
    if card_decline is not None:
        return Decision(False, card_decline)
    if card_present:
        code = AMOUNT_ENDINGS.get(amount % 100)
        if code is not None:
            return Decision(False, code)
    return Decision(True)

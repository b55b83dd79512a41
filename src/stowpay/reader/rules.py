"""The offline rules: when a reader may connect, collect and store a payment without the cloud.

Pure functions of their inputs and an injected time, so every 30-day window and every limit
is testable by moving a clock. Each refusal is a `RuleError` carrying Stripe Terminal's code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..wire.money import minor_units
from ..wire.terminal_codes import ErrorCode, message_for

DAY = 86400.0
#: How long an online connection (and a software update) keeps offline use open.
OFFLINE_WINDOW = 30 * DAY

#: Stripe's ceiling for one offline payment: 10,000 USD or about the same in other currencies,
#: in minor units. A currency missing here cannot be used offline.
MAX_OFFLINE_AMOUNT: dict[str, int] = {
    "usd": 1_000_000,
    "cad": 1_350_000,
    "eur": 950_000,
    "gbp": 800_000,
    "chf": 900_000,
    "aud": 1_500_000,
    "nzd": 1_700_000,
    "sgd": 1_350_000,
    "hkd": 7_800_000,
    "myr": 4_700_000,
    "jpy": 1_500_000,
    "sek": 10_500_000,
    "nok": 10_700_000,
    "dkk": 7_000_000,
    "pln": 4_000_000,
    "czk": 23_000_000,
    "huf": 370_000_000,
    "ron": 4_600_000,
    "bgn": 1_850_000,
    "mxn": 17_000_000,
}

#: Locations in these countries require strong customer authentication, so a contactless tap
#: (which an offline reader cannot step up to a PIN) is refused offline there.
SCA_COUNTRIES = frozenset(
    "AT BE BG HR CY CZ DK EE FI FR DE GR HU IE IS IT LV LI LT LU MT NL NO PL PT RO SK SI ES "
    "SE CH GB".split()
)

SWIPE_METHODS = frozenset({"magnetic_stripe_track2", "magnetic_stripe_fallback"})
CONTACTLESS_METHODS = frozenset({"contactless_emv", "contactless_magstripe_mode"})


class RuleError(Exception):
    """An offline rule refused the operation."""

    def __init__(self, code: ErrorCode, message: str | None = None) -> None:
        super().__init__(message or message_for(code))
        self.code = code
        self.message = message or message_for(code)


@dataclass(frozen=True)
class RiskPolicy:
    """The merchant's offline risk policy, set once on the Configuration.

    Amounts are in minor units per currency; `None` means no limit of that kind.
    """

    max_transaction: Mapping[str, int] = field(default_factory=dict)
    max_stored_total: Mapping[str, int] = field(default_factory=dict)
    max_stored_count: int | None = None
    max_record_age: float | None = None
    max_uses_per_card: int | None = None

    @classmethod
    def from_config(cls, data: Mapping[str, Any] | None) -> RiskPolicy:
        """Read the policy from a Configuration's `stowpay_offline_policy` extension."""
        if not data:
            return cls()
        return cls(
            max_transaction=dict(data.get("max_transaction") or {}),
            max_stored_total=dict(data.get("max_stored_total") or {}),
            max_stored_count=data.get("max_stored_count"),
            max_record_age=data.get("max_record_age"),
            max_uses_per_card=data.get("max_uses_per_card"),
        )


@dataclass(frozen=True)
class ConnectionHistory:
    """What the reader remembers of its online life, for connecting offline."""

    account: str | None
    #: (device_type, location) -> when it last connected online there
    online_at: Mapping[tuple[str, str], float]
    software_updated_at: float | None
    network_id: str | None


def check_connect_offline(
    history: ConnectionHistory,
    *,
    device_type: str,
    location: str,
    network_id: str | None,
    now: float,
) -> str:
    """Allow an offline connection or raise; returns the account to store payments for."""
    if history.account is None:
        raise RuleError(ErrorCode.NO_LAST_SEEN_ACCOUNT)
    here = history.online_at.get((device_type, location))
    if here is None or now - here > OFFLINE_WINDOW:
        elsewhere = [t for (d, _), t in history.online_at.items() if d == device_type]
        if any(now - t <= OFFLINE_WINDOW for t in elsewhere):
            raise RuleError(ErrorCode.LOCATION_CONNECTION_NOT_AVAILABLE_OFFLINE)
        raise RuleError(ErrorCode.READER_CONNECTION_NOT_AVAILABLE_OFFLINE)
    if history.software_updated_at is None or now - history.software_updated_at > OFFLINE_WINDOW:
        raise RuleError(ErrorCode.UNSUPPORTED_READER_VERSION)
    if history.network_id is not None and network_id != history.network_id:
        raise RuleError(
            ErrorCode.READER_CONNECTION_NOT_AVAILABLE_OFFLINE,
            "The POS and the reader must stay on the local network they used online to "
            "connect offline.",
        )
    return history.account


def check_amount(
    amount: int,
    currency: str,
    *,
    offline_currencies: frozenset[str] | None,
    policy: RiskPolicy,
) -> None:
    """Refuse an offline payment over a ceiling, or in a currency not enabled offline."""
    if currency not in MAX_OFFLINE_AMOUNT or (
        offline_currencies is not None and currency not in offline_currencies
    ):
        raise RuleError(ErrorCode.INVALID_OFFLINE_CURRENCY)
    ceiling = min(MAX_OFFLINE_AMOUNT[currency], policy.max_transaction.get(currency, 1 << 62))
    if amount > ceiling:
        digits = minor_units(currency)
        shown = f"{ceiling / 10**digits:,.{digits}f} {currency.upper()}"
        raise RuleError(
            ErrorCode.AMOUNT_EXCEEDS_MAX_OFFLINE_AMOUNT,
            f"The amount is above the offline maximum of {shown}. Take it online or split it.",
        )


def check_stored(
    amount: int,
    currency: str,
    *,
    policy: RiskPolicy,
    stored_count: int,
    stored_totals: Mapping[str, int],
    oldest_stored_at: float | None,
    uses_of_card: int,
    now: float,
) -> None:
    """The merchant's limits on what may be held offline at once."""
    if policy.max_stored_count is not None and stored_count + 1 > policy.max_stored_count:
        raise RuleError(
            ErrorCode.OFFLINE_STORED_COUNT_EXCEEDED,
            "The reader holds the most offline payments the merchant allows. Take this payment "
            "online, or once the stored ones are forwarded.",
        )
    cap = policy.max_stored_total.get(currency)
    if cap is not None and stored_totals.get(currency, 0) + amount > cap:
        raise RuleError(
            ErrorCode.OFFLINE_STORED_TOTAL_EXCEEDED,
            "This payment would take the offline total above the merchant's limit. Take it "
            "online, or once the stored payments are forwarded.",
        )
    if (
        policy.max_record_age is not None
        and oldest_stored_at is not None
        and now - oldest_stored_at > policy.max_record_age
    ):
        raise RuleError(
            ErrorCode.OFFLINE_RECORD_TOO_OLD,
            "An offline payment has waited longer than the merchant allows; go "
            "online to forward it before taking more.",
        )
    if policy.max_uses_per_card is not None and uses_of_card + 1 > policy.max_uses_per_card:
        raise RuleError(
            ErrorCode.OFFLINE_CARD_VELOCITY_EXCEEDED,
            "This card has been used offline as often as the merchant allows. Ask for another "
            "card, or take the payment online.",
        )


def check_card(
    *,
    brand: str,
    read_method: str,
    cvm: str | None,
    exp_month: int,
    exp_year: int,
    location_country: str | None,
    now_year: int,
    now_month: int,
) -> None:
    """Refuse a card read that cannot be accepted offline."""
    if read_method in SWIPE_METHODS:
        raise RuleError(ErrorCode.CARD_SWIPE_NOT_AVAILABLE)
    if brand == "interac":
        raise RuleError(ErrorCode.INTERAC_NOT_SUPPORTED_OFFLINE)
    if read_method in CONTACTLESS_METHODS and (location_country or "") in SCA_COUNTRIES:
        raise RuleError(ErrorCode.CONTACTLESS_NOT_AVAILABLE_OFFLINE)
    if (exp_year, exp_month) < (now_year, now_month):
        raise RuleError(ErrorCode.OFFLINE_AND_CARD_EXPIRED)
    if cvm == "online_pin":
        raise RuleError(ErrorCode.ONLINE_PIN_NOT_SUPPORTED_OFFLINE)

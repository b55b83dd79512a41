"""`OfflineRiskPolicy`: the offline guide's risk advice as a helper the app can use.

Stripe's guide leaves limits to the app: refuse offline payments over a per-payment amount,
and all offline payments once the stored sum would pass a ceiling, by asking for
REQUIRE_ONLINE. This does exactly that, from `OfflineStatus` (the reader's and the SDK's
stores together).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ._models import OfflineBehavior, OfflineStatus, PaymentIntentParameters


@dataclass(frozen=True)
class OfflineRiskPolicy:
    """Per-currency limits in minor units; a currency not named has no limit.

    `max_transaction`: the most one offline payment may be. `max_stored_total`: the most
    the stored offline payments may add up to, this one included.
    """

    max_transaction: Mapping[str, int] = field(default_factory=dict)
    max_stored_total: Mapping[str, int] = field(default_factory=dict)

    def offline_behavior(
        self,
        params: PaymentIntentParameters,
        status: OfflineStatus,
        requested: OfflineBehavior = OfflineBehavior.PREFER_ONLINE,
    ) -> OfflineBehavior:
        """`requested`, or REQUIRE_ONLINE when taking this payment offline would pass a limit."""
        if requested is OfflineBehavior.REQUIRE_ONLINE:
            return requested
        return OfflineBehavior.REQUIRE_ONLINE if self.exceeded(params, status) else requested

    def exceeded(self, params: PaymentIntentParameters, status: OfflineStatus) -> bool:
        """Whether this payment, taken offline, would pass a limit."""
        currency = params.currency.lower()
        most = _limit(self.max_transaction, currency)
        if most is not None and params.amount > most:
            return True
        ceiling = _limit(self.max_stored_total, currency)
        if ceiling is None:
            return False
        stored = status.sdk.offline_payment_amounts_by_currency.get(currency, 0)
        if status.reader is not None:
            stored += status.reader.offline_payment_amounts_by_currency.get(currency, 0)
        return stored + params.amount > ceiling


def _limit(limits: Mapping[str, int], currency: str) -> int | None:
    for key, value in limits.items():
        if key.lower() == currency:
            return value
    return None

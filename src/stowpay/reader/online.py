"""A card read sent for an online confirm: sealed to the cloud's key as an offline record is.

The reader confirms an online PaymentIntent by sending the card read to the cloud. It goes
sealed, exactly as the vault seals a stored payment's (`{number, exp_month, exp_year, emv}`,
checked by the same rules), but bound to sequence 0 (`ONLINE_SEQUENCE`) in the associated data:
an online read can never be replayed as an offline record, nor a record as an online read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..wire import sealed as sealing
from .vault import CardRead, OfflinePayment, SealingKey, _prepare

#: The sequence in a sealed online read's associated data; stored records start at 1.
ONLINE_SEQUENCE = 0


@dataclass(frozen=True)
class SealedRead:
    """What an online confirm carries: the sealed card data, and what may be shown."""

    sealed: bytes
    display: dict[str, Any]


def seal_for_online(
    card: CardRead,
    key: SealingKey,
    *,
    account: str,
    reader: str,
    amount: int,
    currency: str,
    capture_method: str,
) -> SealedRead:
    """Seal `card` for an online confirm of a payment; `VaultInputError` if it could not be
    stored offline either (the same checks)."""
    # The vault's own preparation, so online and offline seal the very same fields.
    plain, display, _ = _prepare(
        OfflinePayment(
            account=account,
            reader=reader,
            amount=amount,
            currency=currency,
            capture_method=capture_method,
            card=card,
        )
    )
    aad = sealing.associated_data(account, reader, ONLINE_SEQUENCE)
    return SealedRead(sealing.seal(key.public_key, key.key_id, plain, aad), display.as_dict())

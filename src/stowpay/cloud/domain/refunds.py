"""Refunds of captured charges, in full or in part."""

from __future__ import annotations

from typing import Any

from ...wire.errors import InvalidRequestError, NotFoundError
from ...wire.money import format_amount
from ..api import Context
from . import receipts
from .events import emit


def create(
    ctx: Context,
    *,
    charge_id: str | None,
    payment_intent_id: str | None,
    amount: int | None,
    reason: str | None,
    metadata: dict[str, str],
) -> dict[str, Any]:
    """Refund a charge (named directly or through its PaymentIntent)."""
    charge = _charge_to_refund(ctx, charge_id, payment_intent_id)
    remaining = charge["amount_captured"] - charge["amount_refunded"]
    if charge["refunded"] or remaining <= 0:
        raise InvalidRequestError(
            f"Charge {charge['id']} has already been refunded.", code="charge_already_refunded"
        )
    amount = remaining if amount is None else amount
    if amount > remaining:
        raise InvalidRequestError(
            f"Refund amount ({format_amount(amount, charge['currency'])}) is greater than "
            f"unrefunded amount on charge ({format_amount(remaining, charge['currency'])})",
            code="amount_too_large",
            param="amount",
        )
    fails = bool((charge.get("_test") or {}).get("refund_fails"))
    refund: dict[str, Any] = {
        "id": ctx.ids.new("re"),
        "object": "refund",
        "amount": amount,
        "balance_transaction": None,
        "charge": charge["id"],
        "created": ctx.now(),
        "currency": charge["currency"],
        "destination_details": None,
        "failure_reason": "expired_or_canceled_card" if fails else None,
        "metadata": metadata,
        "payment_intent": charge["payment_intent"],
        "reason": reason,
        "receipt_number": None,
        "source_transfer_reversal": None,
        "status": "failed" if fails else "succeeded",
        "transfer_reversal": None,
    }
    receipts.queue_refund(ctx, charge, refund)
    ctx.tx.insert(ctx.account_id, refund, ref=charge["id"])
    emit(ctx, "refund.created", refund)
    if fails:
        emit(ctx, "refund.failed", refund)
        return refund
    previous = {"amount_refunded": charge["amount_refunded"], "refunded": charge["refunded"]}
    charge["amount_refunded"] += amount
    charge["refunded"] = charge["amount_refunded"] >= charge["amount_captured"]
    ctx.tx.update(ctx.account_id, charge)
    emit(ctx, "charge.refunded", charge, previous)
    return refund


def _charge_to_refund(
    ctx: Context, charge_id: str | None, payment_intent_id: str | None
) -> dict[str, Any]:
    if (charge_id is None) == (payment_intent_id is None):
        raise InvalidRequestError(
            "You must provide exactly one of these parameters: charge, payment_intent.",
            code="parameter_missing",
            param="charge" if charge_id is None else "payment_intent",
        )
    if payment_intent_id is not None:
        pi = ctx.tx.get(ctx.account_id, payment_intent_id, "payment_intent")
        if pi is None:
            raise NotFoundError("payment_intent", payment_intent_id, param="payment_intent")
        if pi["status"] != "succeeded" or pi["latest_charge"] is None:
            raise InvalidRequestError(
                f"This PaymentIntent ({pi['id']}) does not have a successful charge to refund.",
                code="charge_not_refundable",
                param="payment_intent",
            )
        charge_id = pi["latest_charge"]
    assert charge_id is not None
    charge = ctx.tx.get(ctx.account_id, charge_id, "charge")
    if charge is None:
        raise NotFoundError("charge", charge_id, param="charge")
    if not charge["captured"]:
        raise InvalidRequestError(
            f"Charge {charge['id']} has not been captured and cannot be refunded; cancel its "
            "PaymentIntent instead.",
            code="charge_not_refundable",
        )
    return charge

"""PaymentIntents and their Charges: the status machine Stripe documents.

requires_payment_method ──(payment_method)──▶ requires_confirmation ──confirm──┐
      ▲                                                                        │
      └──────────────────────── declined (last_payment_error) ◀── issuer ◀─────┘
                                               approved ──▶ succeeded (automatic)
                                                        └─▶ requires_capture ──capture──▶ succeeded
any of requires_* / processing ──cancel──▶ canceled
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any

from ...wire.errors import CardError, InvalidRequestError, NotFoundError
from ...wire.ids import random_token
from ...wire.money import SUPPORTED, format_amount, minimum_amount
from ..api import Context
from . import issuer, payment_methods, receipts
from .events import emit, public

CANCELABLE = (
    "requires_payment_method",
    "requires_capture",
    "requires_confirmation",
    "requires_action",
    "processing",
)
UPDATABLE = ("requires_payment_method", "requires_confirmation", "requires_action")
PAYMENT_METHOD_TYPES = ("card", "card_present", "interac_present")


def get(ctx: Context, pi_id: str) -> dict[str, Any]:
    pi = ctx.tx.get(ctx.account_id, pi_id, "payment_intent")
    if pi is None:
        raise NotFoundError("payment_intent", pi_id, param="intent")
    return pi


def check_amount(amount: int, currency: str, param: str = "amount") -> None:
    if currency not in SUPPORTED:
        raise InvalidRequestError(
            f"Invalid currency: {currency}. Stripe currently supports these currencies: "
            f"{', '.join(sorted(SUPPORTED))}",
            param="currency",
            code="parameter_invalid",
        )
    low = minimum_amount(currency)
    if amount < low:
        raise InvalidRequestError(
            f"Amount must be at least {format_amount(low, currency)}",
            code="amount_too_small",
            param=param,
        )


def merge_metadata(current: dict[str, str], given: dict[str, str] | str | None) -> dict[str, str]:
    """Stripe's metadata update: "" clears all, a key set to "" is removed, others are set."""
    if given is None:
        return current
    if given == "":
        return {}
    assert isinstance(given, dict)
    merged = dict(current)
    for k, v in given.items():
        if v == "":
            merged.pop(k, None)
        else:
            merged[k] = v
    if len(merged) > 50:
        raise InvalidRequestError("metadata can have at most 50 keys", param="metadata")
    return merged


def create(
    ctx: Context, fields: dict[str, Any], *, payment_method: str | None, confirm: bool
) -> dict[str, Any]:
    """Create a PaymentIntent (and confirm it at once when asked)."""
    currency = fields["currency"].lower()
    check_amount(fields["amount"], currency)
    types = fields.get("payment_method_types") or ["card"]
    pi_id = ctx.ids.new("pi")
    pi: dict[str, Any] = {
        "id": pi_id,
        "object": "payment_intent",
        "amount": fields["amount"],
        "amount_capturable": 0,
        "amount_details": {"tip": {}},
        "amount_received": 0,
        "application": None,
        "application_fee_amount": None,
        "automatic_payment_methods": fields.get("automatic_payment_methods"),
        "canceled_at": None,
        "cancellation_reason": None,
        "capture_method": fields.get("capture_method") or "automatic",
        "client_secret": f"{pi_id}_secret_{random_token(18)}",
        "confirmation_method": "automatic",
        "created": ctx.now(),
        "currency": currency,
        "customer": None,
        "description": fields.get("description"),
        "last_payment_error": None,
        "latest_charge": None,
        "livemode": False,
        "metadata": merge_metadata({}, fields.get("metadata")),
        "next_action": None,
        "on_behalf_of": None,
        "payment_method": None,
        "payment_method_configuration_details": None,
        "payment_method_options": {
            t: (
                {}
                if t != "card_present"
                else {
                    "request_extended_authorization": False,
                    "request_incremental_authorization_support": False,
                }
            )
            for t in types
        },
        "payment_method_types": types,
        "processing": None,
        "receipt_email": fields.get("receipt_email"),
        "review": None,
        "setup_future_usage": None,
        "shipping": None,
        "source": None,
        "statement_descriptor": fields.get("statement_descriptor"),
        "statement_descriptor_suffix": fields.get("statement_descriptor_suffix"),
        "status": "requires_payment_method",
        "transfer_data": None,
        "transfer_group": None,
    }
    pm = None
    if payment_method is not None:
        pm = payment_methods.resolve(ctx, payment_method)
        payment_methods.require_type(pm, types)
        pi["payment_method"] = pm["id"]
        pi["status"] = "requires_confirmation"
    stored = ctx.tx.insert(ctx.account_id, pi)
    emit(ctx, "payment_intent.created", pi, stored=stored)
    if confirm:
        return do_confirm(ctx, pi, pm)
    return ctx.answered(pi, stored)


def update(ctx: Context, pi: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """Update a PaymentIntent; money and method fields only before it is confirmed."""
    locked = {"amount", "currency", "payment_method", "payment_method_types", "capture_method"}
    if pi["status"] not in UPDATABLE and locked & {k for k, v in fields.items() if v is not None}:
        raise _unexpected_state(pi, "update")
    previous: dict[str, Any] = {}
    before = copy.deepcopy(pi)
    if "metadata" in fields:
        pi["metadata"] = merge_metadata(pi["metadata"], fields.pop("metadata"))
    for name in (
        "description",
        "receipt_email",
        "statement_descriptor",
        "statement_descriptor_suffix",
    ):
        if name in fields:
            pi[name] = fields[name]  # an empty value (None) clears it
    for name in ("capture_method", "amount"):
        if fields.get(name) is not None:
            pi[name] = fields[name]  # these cannot be cleared: an empty value changes nothing
    if "currency" in fields and fields["currency"] is not None:
        pi["currency"] = fields["currency"].lower()
    if fields.get("payment_method_types"):
        pi["payment_method_types"] = fields["payment_method_types"]
    if fields.get("amount") is not None or fields.get("currency") is not None:
        check_amount(pi["amount"], pi["currency"])
    if fields.get("payment_method") is not None:
        pm = payment_methods.resolve(ctx, fields["payment_method"])
        payment_methods.require_type(pm, pi["payment_method_types"])
        pi["payment_method"] = pm["id"]
        pi["status"] = "requires_confirmation"
    for k, v in before.items():
        if pi.get(k) != v:
            previous[k] = v
    if "receipt_email" in previous and pi["receipt_email"] and pi["latest_charge"]:
        # A new address for a captured payment gets its own receipt (Stripe sends one too).
        charge = ctx.tx.get(ctx.account_id, pi["latest_charge"], "charge")
        if charge is not None and receipts.queue_payment(ctx, pi, charge):
            ctx.tx.update(ctx.account_id, charge)
    stored = ctx.tx.update(ctx.account_id, pi)
    if previous:
        emit(ctx, "payment_intent.updated", pi, previous, stored=stored)
    return ctx.answered(pi, stored)


def confirm(
    ctx: Context, pi: dict[str, Any], payment_method: str | None, fields: dict[str, Any]
) -> dict[str, Any]:
    """Confirm: attach the method if given, then ask the issuer."""
    if pi["status"] not in ("requires_payment_method", "requires_confirmation", "requires_action"):
        raise _unexpected_state(pi, "confirm")
    for name in ("receipt_email", "capture_method"):
        if fields.get(name) is not None:
            pi[name] = fields[name]
    pm = None
    if payment_method is not None:
        pm = payment_methods.resolve(ctx, payment_method)
        payment_methods.require_type(pm, pi["payment_method_types"])
        pi["payment_method"] = pm["id"]
    elif pi["payment_method"] is None:
        raise InvalidRequestError(
            "You cannot confirm this PaymentIntent because it's missing a payment method. To "
            "confirm the PaymentIntent with cus_/pm_, specify a payment method attached to this "
            "customer along with the customer ID.",
            code="payment_intent_unexpected_state",
            param="payment_method",
        )
    return do_confirm(ctx, pi, pm)


def do_confirm(
    ctx: Context,
    pi: dict[str, Any],
    pm: dict[str, Any] | None,
    *,
    offline: dict[str, Any] | None = None,
    receipt: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Charge the PaymentIntent's method. A decline is recorded, then raised as `CardError`.

    `offline` (`{stored_at, type}`) and `receipt` are set when the charge comes from a reader.
    """
    if pm is None:
        if not pi.get("payment_method"):
            raise InvalidRequestError(
                "You cannot confirm this PaymentIntent because it's missing a payment method. "
                "Update the PaymentIntent with a payment method and then confirm it again.",
                code="payment_intent_unexpected_state",
            )
        pm = ctx.tx.get(ctx.account_id, pi["payment_method"], "payment_method")
        if pm is None:  # pragma: no cover - a stored PaymentIntent names a stored method
            raise NotFoundError("PaymentMethod", pi["payment_method"])
    card_present = pm["type"] in ("card_present", "interac_present")
    test = pm.get("_test") or {}
    decision = issuer.decide(
        card_decline=test.get("decline"), amount=pi["amount"], card_present=card_present
    )
    charge = _new_charge(ctx, pi, pm, decision, offline=offline, receipt=receipt)
    pi["latest_charge"] = charge["id"]
    if not decision.approved:
        return _decline(ctx, pi, pm, charge, decision)
    if pi["capture_method"] == "automatic":
        pi.update(
            status="succeeded",
            amount_received=pi["amount"],
            amount_capturable=0,
            last_payment_error=None,
        )
        receipts.queue_payment(ctx, pi, charge)
    else:
        pi.update(
            status="requires_capture", amount_capturable=pi["amount"], last_payment_error=None
        )
    charge_json = ctx.tx.insert(ctx.account_id, charge, ref=pi["id"])
    stored = ctx.tx.update(ctx.account_id, pi)
    emit(ctx, "charge.succeeded", charge, stored=charge_json)
    if pi["status"] == "succeeded":
        emit(ctx, "payment_intent.succeeded", pi, stored=stored)
    else:
        emit(ctx, "payment_intent.amount_capturable_updated", pi, stored=stored)
    return ctx.answered(pi, stored)


def _decline(
    ctx: Context,
    pi: dict[str, Any],
    pm: dict[str, Any],
    charge: dict[str, Any],
    decision: issuer.Decision,
) -> dict[str, Any]:
    error = {
        "charge": charge["id"],
        "code": decision.error_code,
        "decline_code": decision.decline_code,
        "doc_url": _doc_url(decision.error_code),
        "message": decision.message,
        "payment_method": public(pm),
        "type": "card_error",
    }
    pi.update(status="requires_payment_method", payment_method=None, last_payment_error=error)
    charge_json = ctx.tx.insert(ctx.account_id, charge, ref=pi["id"])
    stored = ctx.tx.update(ctx.account_id, pi)
    emit(ctx, "charge.failed", charge, stored=charge_json)
    emit(ctx, "payment_intent.payment_failed", pi, stored=stored)
    raise CardError(
        str(decision.message),
        code=decision.error_code,
        decline_code=decision.decline_code,
        extra={"charge": charge["id"], "payment_intent": public(pi), "payment_method": public(pm)},
    )


def _doc_url(code: str | None) -> str:
    return f"https://stripe.com/docs/error-codes/{str(code).replace('_', '-')}"


def _risk_score(pi_id: str) -> int:
    return int(hashlib.sha256(pi_id.encode()).hexdigest()[:4], 16) % 60 + 5


def _new_charge(
    ctx: Context,
    pi: dict[str, Any],
    pm: dict[str, Any],
    decision: issuer.Decision,
    *,
    offline: dict[str, Any] | None,
    receipt: dict[str, Any] | None,
) -> dict[str, Any]:
    approved = decision.approved
    auto = pi["capture_method"] == "automatic"
    kind = pm["type"]
    source = pm[kind]
    details: dict[str, Any] = {
        "amount_authorized": pi["amount"] if approved else None,
        "brand": source["brand"],
        "country": source.get("country"),
        "exp_month": source["exp_month"],
        "exp_year": source["exp_year"],
        "fingerprint": source["fingerprint"],
        "funding": source.get("funding"),
        "last4": source["last4"],
        "network": source["brand"] if approved else None,
        "network_transaction_id": (ctx.ids.new("ntx")[4:20] if approved else None),
    }
    if kind == "card":
        details.update(
            checks=source.get("checks"),
            extended_authorization={"status": "disabled"},
            incremental_authorization={"status": "unavailable"},
            installments=None,
            mandate=None,
            multicapture={"status": "unavailable"},
            network_token={"used": False},
            overcapture={"maximum_amount_capturable": pi["amount"], "status": "unavailable"},
            three_d_secure=None,
            wallet=None,
        )
    else:
        details.update(
            cardholder_name=source.get("cardholder_name"),
            capture_before=(ctx.now() + 2 * 86400) if approved and not auto else None,
            emv_auth_data=None,
            generated_card=None,
            incremental_authorization_supported=False,
            location=source.get("location"),
            offline=offline,
            overcapture_supported=False,
            preferred_locales=source.get("preferred_locales") or ["en"],
            read_method=source.get("read_method"),
            reader=source.get("reader"),
            receipt=receipts.issuer_receipt(
                ctx, receipt, approved=approved, funding=source.get("funding")
            ),
            wallet=None,
        )
    charge = {
        "id": ctx.ids.new("ch"),
        "object": "charge",
        "amount": pi["amount"],
        "amount_captured": pi["amount"] if approved and auto else 0,
        "amount_refunded": 0,
        "application": None,
        "application_fee": None,
        "application_fee_amount": None,
        "balance_transaction": None,
        "billing_details": pm.get("billing_details"),
        "calculated_statement_descriptor": "STOWPAY",
        "captured": approved and auto,
        "created": ctx.now(),
        "currency": pi["currency"],
        "customer": None,
        "description": pi["description"],
        "disputed": False,
        "failure_balance_transaction": None,
        "failure_code": decision.error_code,
        "failure_message": decision.message,
        "fraud_details": {},
        "livemode": False,
        "metadata": dict(pi["metadata"]),
        "on_behalf_of": None,
        "outcome": decision.outcome(_risk_score(pi["id"])),
        "paid": approved,
        "payment_intent": pi["id"],
        "payment_method": pm["id"],
        "payment_method_details": {kind: details, "type": kind},
        "receipt_email": pi["receipt_email"],
        "receipt_number": None,
        "receipt_url": None,
        "refunded": False,
        "review": None,
        "shipping": None,
        "source_transfer": None,
        "statement_descriptor": pi["statement_descriptor"],
        "statement_descriptor_suffix": pi["statement_descriptor_suffix"],
        "status": "succeeded" if approved else "failed",
        "transfer_data": None,
        "transfer_group": None,
        "_test": pm.get("_test"),
    }
    if approved:
        receipts.add_page(ctx, charge)
    return charge


def capture(ctx: Context, pi: dict[str, Any], amount_to_capture: int | None) -> dict[str, Any]:
    """Capture an authorized PaymentIntent, in full or in part."""
    if pi["status"] != "requires_capture":
        raise _unexpected_state(pi, "capture")
    amount = pi["amount_capturable"] if amount_to_capture is None else amount_to_capture
    if amount > pi["amount_capturable"]:
        raise InvalidRequestError(
            f"The amount_to_capture ({amount}) must be less than or equal to the "
            f"amount_capturable ({pi['amount_capturable']}).",
            code="amount_too_large",
            param="amount_to_capture",
        )
    charge = ctx.tx.get(ctx.account_id, pi["latest_charge"], "charge")
    assert charge is not None
    pi.update(status="succeeded", amount_received=amount, amount_capturable=0)
    charge.update(captured=True, amount_captured=amount)
    receipts.queue_payment(ctx, pi, charge)
    charge_json = ctx.tx.update(ctx.account_id, charge)
    stored = ctx.tx.update(ctx.account_id, pi)
    emit(ctx, "charge.captured", charge, stored=charge_json)
    emit(ctx, "payment_intent.succeeded", pi, stored=stored)
    return ctx.answered(pi, stored)


def cancel(ctx: Context, pi: dict[str, Any], reason: str | None) -> dict[str, Any]:
    """Cancel a PaymentIntent; an uncaptured authorization is released."""
    if pi["status"] not in CANCELABLE:
        raise _unexpected_state(pi, "cancel")
    if pi["status"] == "requires_capture":
        charge = ctx.tx.get(ctx.account_id, pi["latest_charge"], "charge")
        assert charge is not None
        charge.update(refunded=True, amount_refunded=charge["amount"])
        ctx.tx.update(ctx.account_id, charge)
    pi.update(
        status="canceled", canceled_at=ctx.now(), cancellation_reason=reason, amount_capturable=0
    )
    stored = ctx.tx.update(ctx.account_id, pi)
    emit(ctx, "payment_intent.canceled", pi, stored=stored)
    return ctx.answered(pi, stored)


def _unexpected_state(pi: dict[str, Any], action: str) -> InvalidRequestError:
    allowed = {
        "cancel": CANCELABLE,
        "capture": ("requires_capture",),
        "confirm": ("requires_payment_method", "requires_confirmation", "requires_action"),
        "update": UPDATABLE,
    }[action]
    return InvalidRequestError(
        f"You cannot {action} this PaymentIntent because it has a status of {pi['status']}. "
        f"Only a PaymentIntent with one of the following statuses may be {action}"
        f"{'d' if action.endswith('e') else 'ed'}: {', '.join(allowed)}.",
        code="payment_intent_unexpected_state",
        extra={"payment_intent": public(pi)},
    )

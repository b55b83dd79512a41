"""Receipts: the chip receipt's issuer fields, receipt pages, and email receipts queued once.

An email receipt is queued in the transaction that captures the payment (or refunds it), never
earlier: for a payment taken offline that is after the reader forwarded it and it was captured.
A decline or a cancel queues none. Each receipt exists once (a key per charge and address, or
per refund), and leaves through the outbox `stowpay.cloud.mailer` drains. See `docs/receipts.md`.
"""

from __future__ import annotations

import hashlib
from typing import Any

from ...wire.ids import random_token
from ..api import Context
from ..storage import receipts as outbox

#: What the issuer's answer tells of the account, by the card's funding.
_ACCOUNT_TYPES = {"credit": "credit", "debit": "checking", "prepaid": "prepaid"}
#: EMV tag 8A (authorization response code) as the hex of its two ASCII characters.
APPROVED_ARC = "3030"  # "00"
DECLINED_ARC = "3035"  # "05"


def token_hash(token: str) -> str:
    """The hash a receipt page is stored under (its token is never stored)."""
    return hashlib.sha256(token.encode()).hexdigest()


def issuer_receipt(
    ctx: Context, receipt: dict[str, Any] | None, *, approved: bool, funding: str | None
) -> dict[str, Any] | None:
    """The reader's receipt fields with what only the issuer's answer gives filled in:
    `account_type`, `authorization_response_code` and (approved) `authorization_code`."""
    if receipt is None:
        return None
    filled = dict(receipt)
    filled["account_type"] = _ACCOUNT_TYPES.get(funding or "", "unknown")
    filled["authorization_response_code"] = APPROVED_ARC if approved else DECLINED_ARC
    if approved:
        digits = int(hashlib.sha256(ctx.ids.new("auth").encode()).hexdigest()[:8], 16)
        filled["authorization_code"] = f"{digits % 1_000_000:06d}"
    return filled


def add_page(ctx: Context, charge: dict[str, Any]) -> None:
    """Give a charge its `receipt_url`: a page anyone with the address may see, found by a
    random token (only its hash is stored)."""
    token = random_token(24)
    outbox.add_page(ctx.tx, token_hash(token), ctx.account_id, charge["id"])
    base = getattr(ctx.settings, "public_url", None) or "http://127.0.0.1:4242"
    charge["receipt_url"] = f"{base.rstrip('/')}/receipts/{token}"


def queue_payment(ctx: Context, pi: dict[str, Any], charge: dict[str, Any]) -> bool:
    """Queue the email receipt of a captured charge to the PaymentIntent's `receipt_email`.

    Sets the charge's `receipt_email` and (the first time) `receipt_number`; the caller stores
    the charge. False when there is nothing to send or it was queued already.
    """
    email = pi.get("receipt_email")
    if not email or not charge.get("captured") or not charge.get("paid"):
        return False
    charge["receipt_email"] = email
    number = _queue(
        ctx, charge["id"], None, "payment", f"{charge['id']}:payment:{email.lower()}", email
    )
    if number is None:
        return False
    if not charge.get("receipt_number"):
        charge["receipt_number"] = number
    return True


def queue_refund(ctx: Context, charge: dict[str, Any], refund: dict[str, Any]) -> bool:
    """Queue the refund receipt of a successful refund to the charge's `receipt_email`; sets
    the refund's `receipt_number` (the caller stores the refund)."""
    email = charge.get("receipt_email")
    if not email or refund.get("status") != "succeeded":
        return False
    number = _queue(ctx, charge["id"], refund["id"], "refund", f"{refund['id']}:refund", email)
    if number is None:
        return False
    refund["receipt_number"] = number
    return True


def _queue(
    ctx: Context, charge_id: str, refund_id: str | None, kind: str, key: str, email: str
) -> str | None:
    email_id = ctx.ids.new("rcpt")
    digits = int(hashlib.sha256(email_id.encode()).hexdigest()[:12], 16) % 100_000_000
    number = f"{digits // 10_000:04d}-{digits % 10_000:04d}"
    queued = outbox.queue_email(
        ctx.tx,
        {
            "id": email_id,
            "account_id": ctx.account_id,
            "charge_id": charge_id,
            "refund_id": refund_id,
            "kind": kind,
            "dedup_key": key,
            "to_address": email,
            "receipt_number": number,
            "created": ctx.now(),
            "state": "pending",
            "attempts": 0,
            "next_attempt_at": float(ctx.clock.now()),
        },
    )
    if queued:
        ctx.queued_receipts = True
    return number if queued else None


def public_emails(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Outbox rows as the API shows them beside a charge (`receipt_emails`)."""
    return [
        {
            "id": r["id"],
            "kind": r["kind"],
            "refund": r["refund_id"],
            "to": r["to_address"],
            "receipt_number": r["receipt_number"],
            "status": r["state"],
            "attempts": r["attempts"],
            "created": r["created"],
            "next_attempt_at": r["next_attempt_at"] if r["state"] == "pending" else None,
            "sent_at": r["sent_at"],
            "last_error": r["last_error"],
        }
        for r in rows
    ]


def list_emails(
    ctx: Context, *, charge_id: str | None = None, state: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """This account's email receipts (all, of one charge, or in one state), newest first: what
    the dashboard shows of the outbox."""
    return public_emails(
        outbox.emails(ctx.tx, ctx.account_id, charge_id=charge_id, state=state, limit=limit)
    )

"""A charge's receipt as the customer sees it: the page at `receipt_url` and the email.

Built from the stored charge, its PaymentIntent and its Location when a receipt is shown or
sent, so it says what is true then. Only the card's brand and last four digits appear.
"""

from __future__ import annotations

import html
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any

from ..terminal import format_receipt
from ..terminal._receipt import money
from .domain.events import public
from .storage import Tx


def view(tx: Tx, account_id: str, charge_id: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The PaymentIntent (with `latest_charge` expanded to this charge) and its Location."""
    charge = tx.get(account_id, charge_id, "charge")
    if charge is None:
        raise LookupError(charge_id)
    pi = tx.get(account_id, charge["payment_intent"], "payment_intent") or {}
    shown = {
        "id": charge["payment_intent"],
        "amount": charge["amount_captured"] or charge["amount"],
        "currency": charge["currency"],
        "capture_method": pi.get("capture_method", "automatic"),
        "metadata": charge.get("metadata") or {},
        "status": pi.get("status", charge["status"]),
        "created": charge["created"],
        "latest_charge": public(charge),
    }
    details = charge.get("payment_method_details") or {}
    card = details.get(details.get("type", "")) or {}
    location = None
    if isinstance(card, dict) and card.get("location"):
        location = tx.get(account_id, str(card["location"]), "terminal.location")
    if location is None:
        account = tx.account(account_id) or {}
        name = (account.get("business_profile") or {}).get("name")
        location = {"display_name": name} if name else None
    return shown, location


def page(tx: Tx, account_id: str, charge_id: str) -> str:
    """The receipt page's HTML."""
    shown, location = view(tx, account_id, charge_id)
    body = format_receipt(shown, 42, html=True, location=location)
    charge = shown["latest_charge"]
    if charge.get("receipt_number"):
        # The number the email's subject quotes, so a customer can match the two.
        number = html.escape(str(charge["receipt_number"]))
        body = body.replace("</table>", f'</table><p class="c">Receipt #{number}</p>', 1)
    if charge.get("amount_refunded"):
        refunded = html.escape(money(charge["amount_refunded"], charge["currency"]))
        body = body.replace("</table>", f'</table><p class="c">Refunded: {refunded}</p>', 1)
    return body


def email(tx: Tx, row: dict[str, Any], *, sender: str) -> EmailMessage:
    """The email of one queued receipt: text (42 columns) and HTML, with a Message-ID fixed by
    the receipt's id, so a copy sent twice is recognisably the same message."""
    shown, location = view(tx, row["account_id"], row["charge_id"])
    name = (location or {}).get("display_name") or "your purchase"
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = row["to_address"]
    msg["Date"] = formatdate(row["created"], usegmt=True)
    msg["Message-ID"] = f"<{row['id']}@stowpay.receipts>"
    if row["kind"] == "refund":
        refund = tx.get(row["account_id"], row["refund_id"], "refund") or {}
        amount = money(int(refund.get("amount") or 0), str(refund.get("currency") or "usd"))
        msg["Subject"] = f"Your refund from {name} [#{row['receipt_number']}]"
        charge = shown["latest_charge"]
        card = (charge.get("payment_method_details") or {}).get("card_present") or {}
        text = (
            f"Refund {amount} for {charge['id']}\n"
            f"Card: {str(card.get('brand') or 'card').upper()} **** {card.get('last4') or '????'}\n"
            f"Refund receipt #{row['receipt_number']}\n"
        )
        msg.set_content(text)
        return msg
    msg["Subject"] = f"Your receipt from {name} [#{row['receipt_number']}]"
    text = format_receipt(shown, 42, location=location)
    msg.set_content(f"Receipt #{row['receipt_number']}\n\n{text}")
    msg.add_alternative(format_receipt(shown, 42, html=True, location=location), subtype="html")
    return msg

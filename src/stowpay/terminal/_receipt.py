"""`format_receipt`: the till receipt of a card-present payment, as text or HTML.

A receipt is laid out for a roll printer of 32, 42 or 48 columns (58 mm and 80 mm rolls in
their usual fonts). It shows what a card-present receipt must and nothing more: the merchant,
the time, the amount in the currency's minor units, the card's brand and last four digits,
how it was read and verified, the chip's application id and cryptogram, the order id. A
payment taken offline says its authorization is pending, and has no account type or issuer
response code yet: only the issuer can tell those.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..wire.money import minor_units
from ._models import PaymentIntent

#: The printer widths a receipt is laid out for (characters per line).
PRINTER_WIDTHS = (32, 42, 48)

_READ_METHODS = {
    "contact_emv": "Chip",
    "contactless_emv": "Contactless",
    "contactless_magstripe_mode": "Contactless (magstripe)",
    "magnetic_stripe_fallback": "Swipe (chip fallback)",
    "magnetic_stripe_track2": "Swipe",
}
_CVMS = {
    "offline_pin": "PIN verified",
    "online_pin": "PIN verified online",
    "offline_pin_and_signature": "PIN verified, signature",
    "signature": "Signature",
    "none": "No verification",
    "approval": "No verification",
    "failure": "Verification failed",
}
_OFFLINE_PENDING = "Offline \N{EM DASH} authorization pending"
_OFFLINE_DONE = "Taken offline, authorized later"


@dataclass
class _Receipt:
    """What a receipt shows, whichever shape the PaymentIntent came in."""

    merchant: list[str] = field(default_factory=list)
    when: datetime | None = None
    kind: str = "SALE"
    amount: str = ""
    order: str | None = None
    brand: str | None = None
    last4: str | None = None
    cardholder: str | None = None
    read_method: str | None = None
    cvm: str | None = None
    rows: list[tuple[str, str]] = field(default_factory=list)
    offline_pending: bool = False
    offline_done: bool = False
    reference: str | None = None
    status: str = ""


def format_receipt(
    payment_intent: PaymentIntent | Mapping[str, Any],
    width: int = 42,
    *,
    html: bool = False,
    merchant: str | None = None,
    location: Mapping[str, Any] | None = None,
) -> str:
    """The till receipt of a confirmed card-present payment.

    `payment_intent` is the SDK's `PaymentIntent` (an offline one carries its card details in
    `offline_details`) or the cloud's PaymentIntent as a mapping with `latest_charge` expanded
    (the charge's `payment_method_details.card_present` then gives the card). `location` is
    the Terminal Location (its `display_name` and `address` head the receipt); `merchant`
    names the shop when there is no Location. `width` is the printer's line width (32, 42 or
    48 are the usual ones; at least 24). With `html=True` the same receipt comes as an HTML
    document. Only the card's brand and last four digits are ever shown.
    """
    if width < 24:
        raise ValueError(f"a receipt needs at least 24 columns, not {width}")
    receipt = _read(payment_intent)
    receipt.merchant = _merchant_lines(merchant, location)
    if html:
        return _html(receipt, width)
    return _text(receipt, width)


# -- reading the PaymentIntent ----------------------------------------------------------------


def _read(pi: PaymentIntent | Mapping[str, Any]) -> _Receipt:
    if isinstance(pi, PaymentIntent):
        return _from_sdk(pi)
    return _from_wire(pi)


def _from_sdk(pi: PaymentIntent) -> _Receipt:
    r = _Receipt(
        kind="SALE" if pi.capture_method == "automatic" else "AUTHORIZATION",
        amount=money(pi.amount, pi.currency),
        order=pi.metadata.get("order_id"),
        reference=pi.id or pi.local_id,
        status=pi.status,
    )
    details = pi.offline_details
    r.when = details.stored_at if details is not None else None
    if r.when is None and pi.created:
        r.when = datetime.fromtimestamp(pi.created, UTC)
    card = details.card_present_details if details is not None else None
    if details is not None:
        r.offline_pending = details.requires_upload
        r.offline_done = not details.requires_upload
    if card is not None:
        r.brand, r.last4, r.cardholder = card.brand, card.last4, card.cardholder_name
        r.read_method = card.read_method
        rd = card.receipt_details
        if rd is not None:
            r.cvm = rd.cardholder_verification_method
            r.rows = _emv_rows(
                {
                    "application_preferred_name": rd.application_preferred_name,
                    "dedicated_file_name": rd.dedicated_file_name,
                    "application_cryptogram": rd.application_cryptogram,
                    "terminal_verification_results": rd.terminal_verification_results,
                    "transaction_status_information": rd.transaction_status_information,
                    "account_type": rd.account_type,
                    "authorization_code": rd.authorization_code,
                    "authorization_response_code": rd.authorization_response_code,
                }
            )
    return r


def _from_wire(pi: Mapping[str, Any]) -> _Receipt:
    metadata = pi.get("metadata") or {}
    r = _Receipt(
        kind="SALE" if pi.get("capture_method", "automatic") == "automatic" else "AUTHORIZATION",
        amount=money(int(pi.get("amount") or 0), str(pi.get("currency") or "usd")),
        order=metadata.get("order_id") if isinstance(metadata, Mapping) else None,
        reference=pi.get("id") or pi.get("local_id"),
        status=str(pi.get("status") or ""),
    )
    created = pi.get("created")
    card: Mapping[str, Any] | None = None
    receipt: Mapping[str, Any] | None = None
    offline = pi.get("offline_details")
    charge = pi.get("latest_charge")
    if isinstance(charge, Mapping):
        created = charge.get("created", created)
        details = charge.get("payment_method_details") or {}
        card = details.get(details.get("type", "card_present")) or details.get("card_present")
        if isinstance(card, Mapping):
            receipt = card.get("receipt")
            mark = card.get("offline")
            if isinstance(mark, Mapping):
                r.offline_done = True
                if mark.get("stored_at") is not None:
                    created = mark["stored_at"]
    elif isinstance(offline, Mapping):
        card = offline.get("card_present_details")
        r.offline_pending = offline.get("requires_upload") is not False
        r.offline_done = not r.offline_pending
        if offline.get("stored_at") is not None:
            created = offline["stored_at"]
        if isinstance(card, Mapping):
            receipt = card.get("receipt_details")
    if isinstance(created, int | float) and created:
        r.when = datetime.fromtimestamp(float(created), UTC)
    if isinstance(card, Mapping):
        r.brand, r.last4 = _str(card.get("brand")), _str(card.get("last4"))
        r.cardholder, r.read_method = (
            _str(card.get("cardholder_name")),
            _str(card.get("read_method")),
        )
    if isinstance(receipt, Mapping):
        r.cvm = _str(receipt.get("cardholder_verification_method"))
        r.rows = _emv_rows(receipt)
    return r


def _emv_rows(receipt: Mapping[str, Any]) -> list[tuple[str, str]]:
    labels = (
        ("application_preferred_name", "Application"),
        ("dedicated_file_name", "AID"),
        ("application_cryptogram", "Cryptogram"),
        ("terminal_verification_results", "TVR"),
        ("transaction_status_information", "TSI"),
        ("account_type", "Account type"),
        ("authorization_code", "Auth code"),
        ("authorization_response_code", "Response code"),
    )
    return [(label, str(receipt[key])) for key, label in labels if receipt.get(key)]


def _merchant_lines(merchant: str | None, location: Mapping[str, Any] | None) -> list[str]:
    lines: list[str] = []
    if location is not None:
        name = _str(location.get("display_name"))
        if name:
            lines.append(name)
        address = location.get("address") or {}
        if isinstance(address, Mapping):
            for key in ("line1", "line2"):
                if address.get(key):
                    lines.append(str(address[key]))
            town = " ".join(
                str(address[k]) for k in ("city", "state", "postal_code") if address.get(k)
            )
            if town:
                lines.append(town)
            if address.get("country"):
                lines.append(str(address["country"]))
    if merchant and merchant not in lines:
        lines.insert(0, merchant)
    return lines


def money(amount: int, currency: str) -> str:
    """`1299, "usd"` -> `"USD 12.99"`; `1200, "jpy"` -> `"JPY 1,200"` (no minor units)."""
    digits = minor_units(currency.lower())
    sign = "-" if amount < 0 else ""
    whole, frac = divmod(abs(amount), 10**digits)
    text = f"{whole:,}" + (f".{frac:0{digits}d}" if digits else "")
    return f"{currency.upper()} {sign}{text}"


def _str(value: object) -> str | None:
    return None if value is None or value == "" else str(value)


# -- laying it out ----------------------------------------------------------------------------


def _lines(r: _Receipt) -> list[tuple[str, str | None]]:
    """The receipt as (left, right) rows; "-" alone is a rule, right None a full line."""
    out: list[tuple[str, str | None]] = [("^" + m, None) for m in r.merchant]
    out.append(("-", None))
    if r.when is not None:
        out.append((r.when.strftime("%Y-%m-%d"), r.when.strftime("%H:%M:%S UTC")))
    out.append((r.kind, None))
    if r.order:
        out.append(("Order", r.order))
    out.append(("-", None))
    out.append(("TOTAL", r.amount))
    out.append(("-", None))
    if r.brand or r.last4:
        out.append(((r.brand or "card").upper(), f"**** {r.last4 or '????'}"))
    if r.cardholder:
        out.append((r.cardholder, None))
    if r.read_method:
        out.append(("Entry", _READ_METHODS.get(r.read_method, r.read_method)))
    if r.cvm:
        out.append(("Verification", _CVMS.get(r.cvm, r.cvm)))
    out.extend(r.rows)
    if r.cvm in ("signature", "offline_pin_and_signature"):
        out.append(("", None))
        out.append(("x" + "_" * 20, None))
    if r.offline_pending or r.offline_done:
        out.append(("-", None))
        out.append(("^" + (_OFFLINE_PENDING if r.offline_pending else _OFFLINE_DONE), None))
    out.append(("-", None))
    if r.reference:
        out.append(("Ref", r.reference))
    if r.status:
        out.append(("Status", r.status))
    return out


def _wrap(text: str, width: int) -> list[str]:
    words, lines, line = text.split(" "), [], ""
    for word in words:
        while len(word) > width:
            if line:
                lines.append(line)
                line = ""
            lines.append(word[:width])
            word = word[width:]
        if not line:
            line = word
        elif len(line) + 1 + len(word) <= width:
            line += " " + word
        else:
            lines.append(line)
            line = word
    if line or not lines:
        lines.append(line)
    return lines


def _text(r: _Receipt, width: int) -> str:
    out: list[str] = []
    for left, right in _lines(r):
        if left == "-" and right is None:
            out.append("-" * width)
        elif right is None:
            center = left.startswith("^")
            for piece in _wrap(left.removeprefix("^"), width):
                out.append(piece.center(width).rstrip() if center else piece)
        elif len(left) + 1 + len(right) <= width:
            out.append(left + " " * (width - len(left) - len(right)) + right)
        else:  # too long for one line: the value goes right-aligned under its label
            out.extend(_wrap(left, width))
            out.extend(piece.rjust(width) for piece in _wrap(right, width))
    return "\n".join(out) + "\n"


def _html(r: _Receipt, width: int) -> str:
    e = html.escape
    rows: list[str] = []
    for left, right in _lines(r):
        if left == "-" and right is None:
            rows.append('<tr><td colspan="2"><hr></td></tr>')
        elif right is None:
            cls = ' class="c"' if left.startswith("^") else ""
            rows.append(f'<tr><td colspan="2"{cls}>{e(left.removeprefix("^"))}</td></tr>')
        else:
            rows.append(f'<tr><td>{e(left)}</td><td class="r">{e(right)}</td></tr>')
    title = e(r.merchant[0] if r.merchant else "Receipt")
    return (
        "<!doctype html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{title} receipt</title>\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        "<style>body{font-family:ui-monospace,monospace}"
        f"table{{max-width:{width}ch;margin:auto;border-collapse:collapse}}"
        "td{padding:0 .2em;vertical-align:top}.r{text-align:right}.c{text-align:center}"
        "hr{border:0;border-top:1px dashed}</style></head>\n"
        f'<body><table class="receipt">\n{chr(10).join(rows)}\n</table></body></html>\n'
    )

"""`format_receipt` against golden files: each printer width, online and offline, USD and JPY.

The files in `golden/` are the receipts as a person checked them. After a deliberate change to
the layout, rewrite them with `STOWPAY_UPDATE_GOLDEN=1 pytest tests/terminal/test_receipt_golden.py`
and read the diff before committing it.
"""

from __future__ import annotations

import copy
import os
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from stowpay.terminal import PaymentIntent, format_receipt

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("STOWPAY_UPDATE_GOLDEN") == "1"
CARD_NUMBERS = ("4242424242424242", "5555555555554444")

LOCATION = {
    "id": "tml_1",
    "display_name": "Main St Coffee",
    "address": {
        "line1": "1 Main St",
        "line2": None,
        "city": "Springfield",
        "state": "IL",
        "postal_code": "62701",
        "country": "US",
    },
}
TOKYO = {
    "id": "tml_2",
    "display_name": "Ginza Kissa",
    "address": {
        "line1": "4-6-16 Ginza",
        "city": "Chuo-ku",
        "state": "Tokyo",
        "postal_code": "104-0061",
        "country": "JP",
    },
}
RECEIPT = {
    "account_type": None,
    "application_cryptogram": "8F1A2B3C4D5E6F70",
    "application_preferred_name": "VISA CREDIT",
    "authorization_code": None,
    "authorization_response_code": None,
    "cardholder_verification_method": "offline_pin",
    "dedicated_file_name": "A0000000031010",
    "terminal_verification_results": "0000000000",
    "transaction_status_information": "E800",
}
MC_RECEIPT = RECEIPT | {
    "application_cryptogram": "0123456789ABCDEF",
    "application_preferred_name": "MASTERCARD",
    "cardholder_verification_method": "none",
    "dedicated_file_name": "A0000000041010",
    "transaction_status_information": "6800",
}


def offline(currency: str) -> PaymentIntent:
    usd = currency == "usd"
    return PaymentIntent._from_wire(
        {
            "id": None,
            "local_id": "pio_5f0c2d9e8b7a4c3d",
            "amount": 1299 if usd else 1200,
            "currency": currency,
            "capture_method": "automatic",
            "created": 1_780_000_000,
            "metadata": {"order_id": "A-17" if usd else "T-3"},
            "status": "succeeded",
            "offline_details": {
                "stored_at": 1_780_000_001,
                "requires_upload": True,
                "card_present_details": {
                    "brand": "visa" if usd else "mastercard",
                    "cardholder_name": None,
                    "exp_month": 12,
                    "exp_year": 2031,
                    "last4": "4242" if usd else "4444",
                    "read_method": "contact_emv" if usd else "contactless_emv",
                    "receipt_details": RECEIPT if usd else MC_RECEIPT,
                },
            },
        }
    )


def online(currency: str) -> dict[str, Any]:
    """The cloud's PaymentIntent with `latest_charge` expanded, as a backend retrieves it."""
    usd = currency == "usd"
    receipt = copy.deepcopy(RECEIPT if usd else MC_RECEIPT)
    receipt.update(
        account_type="credit", authorization_code="123456", authorization_response_code="3030"
    )
    return {
        "id": "pi_3QabcDEF",
        "object": "payment_intent",
        "amount": 250_000 if usd else 1_234_567,
        "currency": currency,
        "capture_method": "automatic",
        "created": 1_780_000_000,
        "metadata": {"order_id": "A-18" if usd else "T-4"},
        "status": "succeeded",
        "latest_charge": {
            "id": "ch_3QabcDEF",
            "object": "charge",
            "created": 1_780_000_005,
            "payment_method_details": {
                "type": "card_present",
                "card_present": {
                    "brand": "visa" if usd else "mastercard",
                    "cardholder_name": "ADA LOVELACE" if usd else None,
                    "last4": "4242" if usd else "4444",
                    "read_method": "contact_emv" if usd else "contactless_emv",
                    "offline": None,
                    "receipt": receipt,
                },
            },
        },
    }


CASES = [(kind, cur) for kind in ("online", "offline") for cur in ("usd", "jpy")]


def make(kind: str, currency: str) -> PaymentIntent | dict[str, Any]:
    return online(currency) if kind == "online" else offline(currency)


def check_golden(name: str, actual: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_text(actual)
    assert path.exists(), f"no golden file {path}; run with STOWPAY_UPDATE_GOLDEN=1"
    assert actual == path.read_text(), f"{name} differs from its golden file"


@pytest.mark.parametrize("width", [32, 42, 48])
@pytest.mark.parametrize(("kind", "currency"), CASES)
def test_text_receipt(kind: str, currency: str, width: int) -> None:
    location = LOCATION if currency == "usd" else TOKYO
    text = format_receipt(make(kind, currency), width, location=location)
    assert all(len(line) <= width for line in text.splitlines())
    assert not any(number in text for number in CARD_NUMBERS)
    pending = "Offline \N{EM DASH} authorization pending"
    assert (pending in text) is (kind == "offline")
    if kind == "offline":
        assert "Account type" not in text and "Response code" not in text
    check_golden(f"receipt_{kind}_{currency}_{width}.txt", text)


@pytest.mark.parametrize(("kind", "currency"), CASES)
def test_html_receipt(kind: str, currency: str) -> None:
    location = LOCATION if currency == "usd" else TOKYO
    page = format_receipt(make(kind, currency), html=True, location=location)
    parser = _Text()
    parser.feed(page)
    parser.close()
    assert parser.text[2] == location["display_name"]  # after the title and style
    assert any(t.startswith(("USD ", "JPY ")) for t in parser.text)
    assert not any(number in page for number in CARD_NUMBERS)
    check_golden(f"receipt_{kind}_{currency}.html", page)


def test_amounts_follow_the_currencys_minor_units() -> None:
    usd = format_receipt(online("usd"), 42)
    jpy = format_receipt(online("jpy"), 42)
    assert "USD 2,500.00" in usd
    assert "JPY 1,234,567" in jpy and "JPY 12,345.67" not in jpy


def test_markup_in_a_name_is_escaped() -> None:
    hostile = LOCATION | {"display_name": "<script>alert(1)</script>"}
    page = format_receipt(online("usd"), html=True, location=hostile)
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_a_width_too_narrow_is_refused() -> None:
    with pytest.raises(ValueError, match="24 columns"):
        format_receipt(online("usd"), 20)


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []

    def handle_data(self, data: str) -> None:
        if data.strip():
            self.text.append(data.strip())

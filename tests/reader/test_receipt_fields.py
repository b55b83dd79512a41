"""The receipt fields the simulated reader gives, per card and read method: plausible EMV
values, and none of what only the issuer can tell."""

from __future__ import annotations

import random

import pytest

from stowpay.reader.presentment import Presentment, read_card
from stowpay.reader.vault import RECEIPT_CHIP_FIELDS


@pytest.mark.parametrize(
    ("number", "read_method", "cvm", "aid", "name", "tvr", "tsi"),
    [
        ("4242424242424242", "contact_emv", "offline_pin", "A0000000031010", "VISA CREDIT",
         "0000000000", "E800"),
        ("4000056655665556", "contact_emv", "signature", "A0000000031010", "VISA DEBIT",
         "0000008000", "6800"),
        ("5555555555554444", "contactless_emv", "none", "A0000000041010", "MASTERCARD",
         "0000000000", "0000"),
        ("378282246310005", "contact_emv", "none", "A000000025010801", "AMERICAN EXPRESS",
         "0000000000", "6800"),
    ],
)  # fmt: skip
def test_receipt_fields_per_card_and_read_method(
    number: str, read_method: str, cvm: str, aid: str, name: str, tvr: str, tsi: str
) -> None:
    presented = Presentment(number, 12, 2031, read_method, None, cvm)
    reading = read_card(presented, amount=1299, currency="usd", now=1.78e9, rng=random.Random(1))
    receipt = dict(reading.card.receipt)
    assert receipt["dedicated_file_name"] == aid == reading.card.emv_data["84"]
    assert receipt["application_preferred_name"] == name
    assert receipt["terminal_verification_results"] == tvr
    assert receipt["transaction_status_information"] == tsi
    assert receipt["cardholder_verification_method"] == cvm
    cryptogram = receipt["application_cryptogram"]
    assert len(cryptogram) == 16 and int(cryptogram, 16) >= 0
    assert cryptogram == reading.card.emv_data["9F26"]
    # Only the issuer can tell these: absent until the payment is forwarded.
    assert receipt["account_type"] is None
    assert receipt["authorization_response_code"] is None
    assert receipt["authorization_code"] is None
    assert set(receipt) >= RECEIPT_CHIP_FIELDS
    assert number not in repr(receipt)


def test_each_read_gives_its_own_cryptogram() -> None:
    presented = Presentment("4242424242424242", 12, 2031)
    rng = random.Random(7)
    first, second = (
        read_card(presented, amount=100, currency="usd", now=1.78e9, rng=rng).card.receipt
        for _ in range(2)
    )
    assert first["application_cryptogram"] != second["application_cryptogram"]

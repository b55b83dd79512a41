"""Simulated card presentment: what a read yields, and what it never holds or shows."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from stowpay.reader.presentment import (
    Presentment,
    PresentmentError,
    card_present_details,
    read_card,
)
from stowpay.reader.vault import FORBIDDEN_EMV_TAGS, CardDisplay, OfflinePayment, _prepare
from stowpay.wire.cards import CARDS

NOW = 1_780_000_000.0  # 2026-05-28


def presented(number: str = "4242424242424242", **over: Any) -> Presentment:
    fields: dict[str, Any] = {"number": number, "exp_month": 12, "exp_year": 2031}
    fields.update(over)
    return Presentment(**fields)


def read(p: Presentment, seed: int = 1, amount: int = 1299) -> Any:
    return read_card(p, amount=amount, currency="usd", now=NOW, rng=random.Random(seed))


@pytest.mark.parametrize("number", sorted(CARDS))
def test_every_test_card_reads_with_its_brand_and_never_shows_its_number(number: str) -> None:
    reading = read(presented(number, cardholder_name="Ada Lovelace"))
    assert reading.brand == CARDS[number].brand
    assert reading.card.number == number
    details = card_present_details(reading.card)
    assert details["last4"] == number[-4:]
    shown = json.dumps(details) + repr(reading) + repr(reading.card)
    assert number not in shown
    # The vault's display (what an offline intent shows) holds no number either.
    payment = OfflinePayment("acct_1", "tmr_1", 100, "usd", "automatic", reading.card)
    _, display, metadata = _prepare(payment)
    assert isinstance(display, CardDisplay)
    assert number not in json.dumps(display.as_dict()) + repr(display) + metadata


def test_chip_data_is_shaped_like_an_offline_read_and_carries_no_card_secrets() -> None:
    reading = read(presented(cvm="offline_pin"), amount=1299)
    emv = reading.card.emv_data
    assert not set(emv) & FORBIDDEN_EMV_TAGS
    assert "5A" not in emv  # the PAN tag: the number is sealed once, as itself
    assert emv["9F02"] == "000000001299" and emv["5F2A"] == "0840"
    assert emv["9A"] == "260528"
    assert emv["84"] == "A0000000031010"
    assert emv["9F34"] == "010002"
    assert len(emv["9F26"]) == 16
    for value in emv.values():
        assert "4242424242424242" not in value
        int(value, 16)  # hex, as the vault requires
    receipt = reading.card.receipt
    assert receipt["cardholder_verification_method"] == "offline_pin"
    assert receipt["application_cryptogram"] == emv["9F26"]
    # What an offline read cannot know yet.
    assert receipt["authorization_code"] is None
    assert receipt["authorization_response_code"] is None
    assert receipt["account_type"] is None


def test_reads_are_reproducible_from_the_injected_rng() -> None:
    assert read(presented(), seed=5).card.emv_data == read(presented(), seed=5).card.emv_data
    assert read(presented(), seed=5).card.emv_data != read(presented(), seed=6).card.emv_data


def test_the_cvm_defaults_to_what_the_card_asks() -> None:
    assert read(presented("4001000360000005")).cvm == "online_pin"
    assert read(presented("4001007020000002")).cvm == "offline_pin"
    assert read(presented()).cvm == "none"
    assert read(presented(cvm="signature")).cvm == "signature"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ("4242", "card"),
        ({"number": "4242424242424242", "exp_month": 12, "exp_year": 2031, "cvc": "123"}, None),
        ({"number": "4242424242424242", "exp_month": 12, "exp_year": 2031, "pin": "1234"}, None),
        (
            {"number": "4242424242424242", "exp_month": 12, "exp_year": 2031, "track2": "x"},
            None,
        ),
        ({"number": "4242424242424241", "exp_month": 12, "exp_year": 2031}, "card[number]"),
        ({"number": 4242424242424242, "exp_month": 12, "exp_year": 2031}, "card[number]"),
        ({"number": "4242424242424242", "exp_month": 13, "exp_year": 2031}, "card[exp_month]"),
        ({"number": "4242424242424242", "exp_month": 12, "exp_year": 31}, "card[exp_year]"),
        ({"number": "4242424242424242", "exp_month": "x", "exp_year": 2031}, "card[exp_month]"),
        (
            {"number": "4242424242424242", "exp_month": 1, "exp_year": 2031, "read_method": "x"},
            "card[read_method]",
        ),
        (
            {"number": "4242424242424242", "exp_month": 1, "exp_year": 2031, "cvm": "pin"},
            "card[cvm]",
        ),
        (
            {
                "number": "4242424242424242",
                "exp_month": 1,
                "exp_year": 2031,
                "cardholder_name": "4242 4242 4242 4242",
            },
            "card[cardholder_name]",
        ),
    ],
)
def test_bad_presentments_are_refused(body: Any, param: str | None) -> None:
    with pytest.raises(PresentmentError) as caught:
        Presentment.from_request(body)
    if param is not None:
        assert caught.value.param == param
    else:
        assert "never takes" in caught.value.message
    assert "4242424242424242" not in caught.value.message


def test_a_well_formed_presentment_is_read() -> None:
    p = Presentment.from_request(
        {
            "number": "5555 5555 5555 4444",
            "exp_month": "7",
            "exp_year": 2030,
            "read_method": "contactless_emv",
            "cardholder_name": "GRACE HOPPER",
        }
    )
    assert p.number == "5555555555554444" and p.exp_month == 7
    assert "5555555555554444" not in repr(p)
    assert read(p).brand == "mastercard"

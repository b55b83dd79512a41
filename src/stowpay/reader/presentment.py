"""Simulated card presentment: what the simulated reader reads when a card is inserted or tapped.

The POS (or a test) names a card by its number, expiry, read method and cardholder verification
method; `read_card` turns that into the `vault.CardRead` a real reader's kernel would hand over:
the number and expiry (sealed later by the vault), synthetic chip data (a cryptogram, counters,
verification results) and the receipt fields a card-present receipt shows offline.

Only what a chip read yields is produced. There is no CVC, no track data and no PIN anywhere:
a presentment that names one is refused, and no EMV tag that carries them (or the PAN itself,
tag 5A) is ever made. Brands come from Stripe's test table in `stowpay.wire.cards`.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..wire.cards import lookup, luhn_ok
from .vault import CardRead

#: How a card can be read (Stripe's `read_method` values).
READ_METHODS = frozenset(
    {
        "contact_emv",
        "contactless_emv",
        "contactless_magstripe_mode",
        "magnetic_stripe_fallback",
        "magnetic_stripe_track2",
    }
)
#: Cardholder verification methods a presentment may ask for.
CVMS = frozenset({"offline_pin", "online_pin", "signature", "none"})
#: Fields a presentment may carry; anything else (a CVC, track data, a PIN) is refused.
FIELDS = frozenset({"number", "exp_month", "exp_year", "read_method", "cardholder_name", "cvm"})

#: Application identifiers (EMV tag 84) and preferred names (9F12) by brand.
_APPLICATIONS: dict[str, tuple[str, str]] = {
    "visa": ("A0000000031010", "VISA CREDIT"),
    "mastercard": ("A0000000041010", "MASTERCARD"),
    "amex": ("A000000025010801", "AMERICAN EXPRESS"),
    "discover": ("A0000001523010", "DISCOVER"),
    "diners": ("A0000001523010", "DINERS CLUB"),
    "jcb": ("A0000000651010", "JCB CREDIT"),
    "unionpay": ("A000000333010101", "UNIONPAY"),
    "interac": ("A0000002771010", "INTERAC"),
    "eftpos_au": ("A00000038410", "EFTPOS SAV"),
    "cartes_bancaires": ("A0000000421010", "CB"),
    "girocard": ("A0000003591010028001", "GIROCARD"),
}
#: CVM results (EMV 9F34) for each verification method: method, condition, result.
_CVM_RESULTS = {
    "offline_pin": "010002",
    "online_pin": "020000",
    "signature": "1E0300",
    "none": "1F0002",
}
#: ISO 4217 numeric codes (EMV 5F2A) of the currencies usable offline.
_CURRENCY_NUMBERS = {
    "usd": "0840",
    "cad": "0124",
    "eur": "0978",
    "gbp": "0826",
    "chf": "0756",
    "aud": "0036",
    "nzd": "0554",
    "sgd": "0702",
    "hkd": "0344",
    "myr": "0458",
    "jpy": "0392",
    "sek": "0752",
    "nok": "0578",
    "dkk": "0208",
    "pln": "0985",
    "czk": "0203",
    "huf": "0348",
    "ron": "0946",
    "bgn": "0975",
    "mxn": "0484",
}
_LONG_DIGIT_RUN = re.compile(r"\d[\d \-]{11,}\d")


class PresentmentError(ValueError):
    """The presented card cannot be read as given (a field missing, malformed or forbidden)."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True)
class Presentment:
    """A card as the customer presents it to the simulated reader."""

    number: str = field(repr=False)
    exp_month: int
    exp_year: int
    read_method: str = "contact_emv"
    cardholder_name: str | None = None
    #: None: what the card itself asks for (`TestCard.cvm`), else "none"
    cvm: str | None = None

    @classmethod
    def from_request(cls, body: object) -> Presentment:
        """Read and check the LAN API's `card` object; `PresentmentError` says what is wrong."""
        if not isinstance(body, Mapping):
            raise PresentmentError("card must be an object", param="card")
        extra = sorted(str(k) for k in body if k not in FIELDS)
        if extra:
            raise PresentmentError(
                f"card has fields the reader never takes: {', '.join(extra)} (a reader reads "
                "no CVC, track data or PIN into a payment)",
                param=f"card[{extra[0]}]",
            )
        number = body.get("number")
        if not isinstance(number, str):
            raise PresentmentError("card[number] must be a string of digits", param="card[number]")
        number = number.replace(" ", "")
        exp_month = _int(body.get("exp_month"), "card[exp_month]")
        exp_year = _int(body.get("exp_year"), "card[exp_year]")
        read_method = body.get("read_method", "contact_emv")
        name = body.get("cardholder_name")
        cvm = body.get("cvm")
        if name is not None and not isinstance(name, str):
            raise PresentmentError(
                "card[cardholder_name] must be a string", param="card[cardholder_name]"
            )
        if cvm is not None and not isinstance(cvm, str):
            raise PresentmentError("card[cvm] must be a string", param="card[cvm]")
        if not isinstance(read_method, str):
            raise PresentmentError("card[read_method] must be a string", param="card[read_method]")
        presentment = cls(number, exp_month, exp_year, read_method, name, cvm)
        presentment.check()
        return presentment

    def check(self) -> None:
        """Refuse a presentment no card could produce."""
        if not (self.number.isascii() and self.number.isdigit() and luhn_ok(self.number)):
            raise PresentmentError(
                "card[number] must be 12-19 digits with a valid check digit", param="card[number]"
            )
        if not 1 <= self.exp_month <= 12:
            raise PresentmentError("card[exp_month] must be 1-12", param="card[exp_month]")
        if not 2000 <= self.exp_year <= 2199:
            raise PresentmentError(
                "card[exp_year] must be a four-digit year", param="card[exp_year]"
            )
        if self.read_method not in READ_METHODS:
            raise PresentmentError(
                f"card[read_method] must be one of {', '.join(sorted(READ_METHODS))}",
                param="card[read_method]",
            )
        if self.cvm is not None and self.cvm not in CVMS:
            raise PresentmentError(
                f"card[cvm] must be one of {', '.join(sorted(CVMS))}", param="card[cvm]"
            )
        name = self.cardholder_name
        if name is not None:
            if not 0 < len(name) <= 100:
                raise PresentmentError(
                    "card[cardholder_name] must be 1-100 characters", param="card[cardholder_name]"
                )
            # A name is shown on receipts and kept in the clear: it must not carry a number.
            if self.number in re.sub(r"[ \-]", "", name) or _LONG_DIGIT_RUN.search(name):
                raise PresentmentError(
                    "card[cardholder_name] must not contain a card number",
                    param="card[cardholder_name]",
                )


@dataclass(frozen=True)
class CardReading:
    """The outcome of reading a presented card: the read itself and how it was verified."""

    card: CardRead
    cvm: str

    @property
    def brand(self) -> str:
        """The card's brand (lowercase, Stripe's spelling)."""
        return self.card.brand


def read_card(
    presentment: Presentment,
    *,
    amount: int,
    currency: str,
    now: float,
    rng: random.Random,
) -> CardReading:
    """Read a presented card for a payment of `amount` `currency` at `now`.

    The chip data is synthetic but shaped like a real offline read: an application cryptogram
    (9F26) and its counter (9F36), verification results (95, 9B, 9F34), the amount (9F02) and
    currency (5F2A), the date (9A). No tag carries the PAN, track data or a PIN.
    """
    presentment.check()
    test_card = lookup(presentment.number)
    brand = test_card.brand
    cvm = presentment.cvm or test_card.cvm or "none"
    aid, preferred_name = _APPLICATIONS.get(brand, ("A0000000000000", brand.upper()[:16]))
    if test_card.funding == "debit" and brand in ("visa", "mastercard"):
        preferred_name = f"{brand.upper()} DEBIT"
    cryptogram = f"{rng.getrandbits(64):016X}"
    tvr = "0000008000" if cvm == "signature" else "0000000000"
    if presentment.read_method.startswith("contactless"):
        # Contactless kernels finish in one tap and set no status bits (TSI 0000).
        tsi = "0000"
    else:
        tsi = "E800" if cvm in ("offline_pin", "online_pin") else "6800"
    day = datetime.fromtimestamp(now, UTC)
    emv = {
        "84": aid,
        "9F12": preferred_name.encode().hex().upper(),
        "9F26": cryptogram,
        # Cryptogram information: a TC (offline approval) for a payment stored offline.
        "9F27": "40",
        "9F36": f"{rng.randrange(1, 1 << 16):04X}",
        "9F10": f"06010A03{rng.getrandbits(24):06X}",
        "95": tvr,
        "9B": tsi,
        "9F34": _CVM_RESULTS[cvm],
        "9F02": f"{amount:012d}",
        "9A": day.strftime("%y%m%d"),
        "9C": "00",
        "9F37": f"{rng.getrandbits(32):08X}",
    }
    number = _CURRENCY_NUMBERS.get(currency)
    if number is not None:
        emv["5F2A"] = number
    receipt: dict[str, Any] = {
        "account_type": None,  # known only once the issuer answered
        "application_cryptogram": cryptogram,
        "application_preferred_name": preferred_name,
        "authorization_code": None,
        "authorization_response_code": None,
        "cardholder_verification_method": cvm,
        "dedicated_file_name": aid,
        "terminal_verification_results": tvr,
        "transaction_status_information": tsi,
    }
    card = CardRead(
        number=presentment.number,
        exp_month=presentment.exp_month,
        exp_year=presentment.exp_year,
        brand=brand,
        read_method=presentment.read_method,
        cardholder_name=presentment.cardholder_name,
        emv_data=emv,
        receipt=receipt,
    )
    return CardReading(card=card, cvm=cvm)


def card_present_details(card: CardRead) -> dict[str, Any]:
    """The `card_present_details` of an offline intent: brand, last4, expiry; never the number."""
    return {
        "brand": card.brand,
        "cardholder_name": card.cardholder_name,
        "exp_month": card.exp_month,
        "exp_year": card.exp_year,
        "last4": card.number[-4:],
        "read_method": card.read_method,
        "receipt_details": dict(card.receipt),
    }


def _int(value: object, param: str) -> int:
    if type(value) is int:
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 4:
        return int(value)
    raise PresentmentError(f"{param} must be an integer", param=param)

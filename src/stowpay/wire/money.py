"""Currencies: which exist, their minor units, and Stripe's per-charge bounds."""

from __future__ import annotations

#: Currencies whose amounts have no minor unit (an amount of 100 JPY is `100`).
ZERO_DECIMAL = frozenset("bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split())

#: Currencies whose amounts have three minor digits.
THREE_DECIMAL = frozenset("bhd jod kwd omr tnd".split())

#: Currencies the cloud accepts (Stripe's common settlement and presentment set).
SUPPORTED = frozenset(
    (
        "usd eur gbp cad aud nzd chf sek nok dkk pln czk huf ron bgn isk jpy sgd hkd myr "
        "mxn brl inr krw thb aed sar zar ils try twd php idr vnd clp cop pen bhd jod kwd "
        "omr tnd bif djf gnf kmf mga pyg rwf ugx vuv xaf xof xpf"
    ).split()
)

#: Stripe's minimum charge amounts, in minor units, where they differ from 50.
_MINIMUM = {
    "aed": 200,
    "bgn": 100,
    "czk": 1500,
    "dkk": 250,
    "gbp": 30,
    "hkd": 400,
    "huf": 17500,
    "jpy": 50,
    "mxn": 1000,
    "myr": 200,
    "nok": 300,
    "pln": 200,
    "ron": 200,
    "sek": 300,
    "thb": 1000,
    "inr": 50,
    "krw": 100,
    "isk": 7000,
    "twd": 1500,
    "php": 2500,
}

#: The largest amount Stripe accepts in any currency (eight digits).
MAXIMUM_AMOUNT = 99_999_999


def minor_units(currency: str) -> int:
    """How many digits follow the decimal point for this currency."""
    if currency in ZERO_DECIMAL:
        return 0
    if currency in THREE_DECIMAL:
        return 3
    return 2


def minimum_amount(currency: str) -> int:
    """The smallest chargeable amount in this currency, in minor units."""
    return _MINIMUM.get(currency, 50)


def format_amount(amount: int, currency: str) -> str:
    """`1299, "usd"` -> `"12.99 USD"`; `105, "jpy"` -> `"105 JPY"`."""
    digits = minor_units(currency)
    if digits == 0:
        return f"{amount} {currency.upper()}"
    sign = "-" if amount < 0 else ""
    whole, frac = divmod(abs(amount), 10**digits)
    return f"{sign}{whole}.{frac:0{digits}d} {currency.upper()}"

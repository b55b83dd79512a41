"""The offline rules, each refusal with its Stripe Terminal code."""

from __future__ import annotations

import pytest

from stowpay.reader.rules import (
    DAY,
    ConnectionHistory,
    RiskPolicy,
    RuleError,
    check_amount,
    check_card,
    check_connect_offline,
    check_stored,
)
from stowpay.wire.terminal_codes import ErrorCode

NOW = 1_800_000_000.0
WPE = "simulated_wisepos_e"


def history(**kw: object) -> ConnectionHistory:
    base: dict[str, object] = {
        "account": "acct_1",
        "online_at": {(WPE, "tml_1"): NOW - 10 * DAY},
        "software_updated_at": NOW - 5 * DAY,
        "network_id": "lan-1",
    }
    base.update(kw)
    return ConnectionHistory(**base)  # type: ignore[arg-type]


def code_of(fn: object, *args: object, **kw: object) -> ErrorCode:
    with pytest.raises(RuleError) as err:
        fn(*args, **kw)  # type: ignore[operator]
    return err.value.code


def test_connect_offline_within_30_days() -> None:
    got = check_connect_offline(
        history(), device_type=WPE, location="tml_1", network_id="lan-1", now=NOW
    )
    assert got == "acct_1"


@pytest.mark.parametrize(
    ("hist", "kw", "code"),
    [
        ({"account": None}, {}, ErrorCode.NO_LAST_SEEN_ACCOUNT),
        ({"online_at": {}}, {}, ErrorCode.READER_CONNECTION_NOT_AVAILABLE_OFFLINE),
        (
            {"online_at": {(WPE, "tml_1"): NOW - 31 * DAY}},
            {},
            ErrorCode.READER_CONNECTION_NOT_AVAILABLE_OFFLINE,
        ),
        (
            {"online_at": {(WPE, "tml_2"): NOW - DAY}},
            {},
            ErrorCode.LOCATION_CONNECTION_NOT_AVAILABLE_OFFLINE,
        ),
        (
            {"online_at": {("bbpos_wisepad3", "tml_1"): NOW - DAY}},
            {},
            ErrorCode.READER_CONNECTION_NOT_AVAILABLE_OFFLINE,
        ),
        ({"software_updated_at": NOW - 31 * DAY}, {}, ErrorCode.UNSUPPORTED_READER_VERSION),
        ({}, {"network_id": "other-lan"}, ErrorCode.READER_CONNECTION_NOT_AVAILABLE_OFFLINE),
    ],
)
def test_connect_offline_refusals(
    hist: dict[str, object], kw: dict[str, object], code: ErrorCode
) -> None:
    args: dict[str, object] = {
        "device_type": WPE,
        "location": "tml_1",
        "network_id": "lan-1",
        "now": NOW,
    }
    args.update(kw)
    assert code_of(check_connect_offline, history(**hist), **args) == code


def test_amount_ceiling_and_currencies() -> None:
    check_amount(1_000_000, "usd", offline_currencies=None, policy=RiskPolicy())
    assert (
        code_of(check_amount, 1_000_001, "usd", offline_currencies=None, policy=RiskPolicy())
        == ErrorCode.AMOUNT_EXCEEDS_MAX_OFFLINE_AMOUNT
    )
    assert (
        code_of(
            check_amount, 100, "usd", offline_currencies=frozenset({"eur"}), policy=RiskPolicy()
        )
        == ErrorCode.INVALID_OFFLINE_CURRENCY
    )
    assert (
        code_of(check_amount, 100, "xof", offline_currencies=None, policy=RiskPolicy())
        == ErrorCode.INVALID_OFFLINE_CURRENCY
    )
    tight = RiskPolicy(max_transaction={"usd": 5000})
    assert (
        code_of(check_amount, 5001, "usd", offline_currencies=None, policy=tight)
        == ErrorCode.AMOUNT_EXCEEDS_MAX_OFFLINE_AMOUNT
    )


def test_merchant_policy_limits() -> None:
    policy = RiskPolicy(
        max_stored_total={"usd": 10_000},
        max_stored_count=3,
        max_record_age=2 * DAY,
        max_uses_per_card=2,
    )
    ok = {
        "policy": policy,
        "stored_count": 1,
        "stored_totals": {"usd": 4000},
        "oldest_stored_at": NOW - DAY,
        "uses_of_card": 0,
        "now": NOW,
    }
    check_stored(6000, "usd", **ok)  # type: ignore[arg-type]
    cases = [
        ({"stored_count": 3}, ErrorCode.OFFLINE_STORED_COUNT_EXCEEDED),
        ({"stored_totals": {"usd": 4001}}, ErrorCode.OFFLINE_STORED_TOTAL_EXCEEDED),
        ({"oldest_stored_at": NOW - 3 * DAY}, ErrorCode.OFFLINE_RECORD_TOO_OLD),
        ({"uses_of_card": 2}, ErrorCode.OFFLINE_CARD_VELOCITY_EXCEEDED),
    ]
    for change, code in cases:
        assert code_of(check_stored, 6000, "usd", **{**ok, **change}) == code


@pytest.mark.parametrize(
    ("kw", "code"),
    [
        ({"read_method": "magnetic_stripe_track2"}, ErrorCode.CARD_SWIPE_NOT_AVAILABLE),
        ({"brand": "interac"}, ErrorCode.INTERAC_NOT_SUPPORTED_OFFLINE),
        (
            {"read_method": "contactless_emv", "location_country": "FR"},
            ErrorCode.CONTACTLESS_NOT_AVAILABLE_OFFLINE,
        ),
        ({"exp_year": 2026, "exp_month": 10}, ErrorCode.OFFLINE_AND_CARD_EXPIRED),
        ({"cvm": "online_pin"}, ErrorCode.ONLINE_PIN_NOT_SUPPORTED_OFFLINE),
    ],
)
def test_card_refusals(kw: dict[str, object], code: ErrorCode) -> None:
    args: dict[str, object] = {
        "brand": "visa",
        "read_method": "contact_emv",
        "cvm": None,
        "exp_month": 12,
        "exp_year": 2030,
        "location_country": "US",
        "now_year": 2026,
        "now_month": 11,
    }
    args.update(kw)
    assert code_of(check_card, **args) == code


def test_card_accepted_offline() -> None:
    check_card(
        brand="visa",
        read_method="contactless_emv",
        cvm="offline_pin",
        exp_month=11,
        exp_year=2026,
        location_country="US",
        now_year=2026,
        now_month=11,
    )

"""The official `stripe` client against a live cloud: the PaymentIntent flows."""

from __future__ import annotations

import pytest
import stripe

from stowpay.cloud.testing import LiveCloud


def client(any_cloud: LiveCloud, n: int = 0) -> stripe.StripeClient:
    return stripe.StripeClient(
        any_cloud.accounts[n].secret_key,
        base_addresses={"api": any_cloud.url},
        max_network_retries=0,
    )


def test_automatic_capture(any_cloud: LiveCloud) -> None:
    c = client(any_cloud)
    pi = c.v1.payment_intents.create(
        params={
            "amount": 1299,
            "currency": "usd",
            "payment_method": "pm_card_visa",
            "confirm": True,
            "metadata": {"order_id": "A-17"},
        }
    )
    assert pi.status == "succeeded"
    assert pi.amount_received == 1299
    charge = c.v1.charges.retrieve(str(pi.latest_charge))
    assert charge.captured and charge.amount_captured == 1299
    assert charge.payment_method_details is not None
    assert charge.payment_method_details.card is not None
    assert charge.payment_method_details.card.last4 == "4242"


def test_manual_partial_capture_and_refund(any_cloud: LiveCloud) -> None:
    c = client(any_cloud)
    pi = c.v1.payment_intents.create(
        params={
            "amount": 5000,
            "currency": "usd",
            "capture_method": "manual",
            "payment_method": "pm_card_mastercard",
            "confirm": True,
        }
    )
    assert pi.status == "requires_capture" and pi.amount_capturable == 5000
    pi = c.v1.payment_intents.capture(pi.id, params={"amount_to_capture": 3000})
    assert pi.status == "succeeded" and pi.amount_received == 3000
    refund = c.v1.refunds.create(params={"payment_intent": pi.id, "amount": 1000})
    assert refund.status == "succeeded" and refund.amount == 1000
    charge = c.v1.charges.retrieve(str(pi.latest_charge))
    assert charge.amount_refunded == 1000 and not charge.refunded
    with pytest.raises(stripe.InvalidRequestError) as err:
        c.v1.refunds.create(params={"payment_intent": pi.id, "amount": 2001})
    assert err.value.code == "amount_too_large"


@pytest.mark.parametrize(
    ("pm", "code", "decline_code"),
    [
        ("pm_card_chargeDeclined", "card_declined", "generic_decline"),
        ("pm_card_chargeDeclinedInsufficientFunds", "card_declined", "insufficient_funds"),
        ("pm_card_chargeDeclinedExpiredCard", "expired_card", "expired_card"),
    ],
)
def test_decline_raises_card_error(
    any_cloud: LiveCloud, pm: str, code: str, decline_code: str
) -> None:
    c = client(any_cloud)
    with pytest.raises(stripe.CardError) as err:
        c.v1.payment_intents.create(
            params={"amount": 2000, "currency": "usd", "payment_method": pm, "confirm": True}
        )
    assert err.value.code == code
    assert err.value.error is not None and err.value.error.decline_code == decline_code
    pi_id = err.value.error.payment_intent["id"]  # type: ignore[index]
    pi = c.v1.payment_intents.retrieve(pi_id)
    assert pi.status == "requires_payment_method"
    assert pi.last_payment_error is not None
    assert pi.last_payment_error.decline_code == decline_code


def test_cancel_with_reason(any_cloud: LiveCloud) -> None:
    c = client(any_cloud)
    pi = c.v1.payment_intents.create(params={"amount": 700, "currency": "eur"})
    pi = c.v1.payment_intents.cancel(pi.id, params={"cancellation_reason": "abandoned"})
    assert pi.status == "canceled" and pi.cancellation_reason == "abandoned"
    with pytest.raises(stripe.InvalidRequestError) as err:
        c.v1.payment_intents.capture(pi.id)
    assert err.value.code == "payment_intent_unexpected_state"


def test_idempotent_retry_returns_same_object(any_cloud: LiveCloud) -> None:
    c = client(any_cloud)
    params = {"amount": 1500, "currency": "usd", "payment_method": "pm_card_visa", "confirm": True}
    a = c.v1.payment_intents.create(params=params, options={"idempotency_key": "order-1"})
    b = c.v1.payment_intents.create(params=params, options={"idempotency_key": "order-1"})
    assert a.id == b.id
    assert len(c.v1.charges.list(params={"payment_intent": a.id}).data) == 1
    with pytest.raises(stripe.IdempotencyError):
        c.v1.payment_intents.create(
            params={**params, "amount": 1600}, options={"idempotency_key": "order-1"}
        )


def test_auto_paging_and_search_and_expand(any_cloud: LiveCloud) -> None:
    c = client(any_cloud)
    for i in range(250):
        c.v1.payment_intents.create(
            params={"amount": 100 + i, "currency": "usd", "metadata": {"order_id": f"o-{i}"}}
        )
    seen = [pi.id for pi in c.v1.payment_intents.list(params={"limit": 100}).auto_paging_iter()]
    assert len(seen) == 250 and len(set(seen)) == 250
    found = c.v1.payment_intents.search(params={"query": "metadata['order_id']:'o-17'"})
    assert [pi.amount for pi in found.data] == [117]
    pi = c.v1.payment_intents.create(
        params={"amount": 999, "currency": "usd", "payment_method": "pm_card_visa", "confirm": True}
    )
    got = c.v1.payment_intents.retrieve(pi.id, params={"expand": ["latest_charge"]})
    assert isinstance(got.latest_charge, stripe.Charge)
    assert got.latest_charge.amount == 999


def test_other_account_sees_nothing(any_cloud: LiveCloud) -> None:
    a, b = client(any_cloud, 0), client(any_cloud, 1)
    pi = a.v1.payment_intents.create(params={"amount": 1000, "currency": "usd"})
    with pytest.raises(stripe.InvalidRequestError) as err:
        b.v1.payment_intents.retrieve(pi.id)
    assert err.value.http_status == 404
    assert pi.id not in [x.id for x in b.v1.payment_intents.list().data]


def test_unknown_key_is_401(any_cloud: LiveCloud) -> None:
    bad = stripe.StripeClient(
        "sk_test_nope", base_addresses={"api": any_cloud.url}, max_network_retries=0
    )
    with pytest.raises(stripe.AuthenticationError):
        bad.v1.payment_intents.list()

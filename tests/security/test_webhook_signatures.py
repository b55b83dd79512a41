"""`Stripe-Signature`: what our signer makes, the official `stripe` package and our verifier
both accept, and nothing else.

- the timestamp tolerance is 300 s both ways (the `stripe` package checks the past side only);
- a header carrying several `v1` (a secret being rolled) verifies with any of its secrets;
- any single bit changed in the body or the header is rejected (hypothesis, 1,000+ examples
  each, so the figure in docs/reliability.md is a count of examples actually run);
- the parser and verifier meet any text with `SignatureError` only, never another exception.
"""

from __future__ import annotations

import contextlib
import json
import os
import time

import pytest
import stripe
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stowpay.wire import signing

EXAMPLES = int(os.environ.get("STOWPAY_SIGNATURE_EXAMPLES", "1000"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)

SECRET = "whsec_" + "a1" * 16
OLD_SECRET = "whsec_" + "b2" * 16
NOW = 1_780_000_000
PAYLOAD = json.dumps(
    {"id": "evt_1", "object": "event", "type": "payment_intent.succeeded", "data": {}},
    indent=2,
).encode()


def stripe_accepts(payload: bytes, header: str, secret: str) -> bool:
    """Whether the official client takes the delivery (its clock is the real one)."""
    try:
        stripe.Webhook.construct_event(payload, header, secret, tolerance=300)
    except (stripe.SignatureVerificationError, ValueError, TypeError):
        # ValueError: a body that is not UTF-8 or not JSON never becomes an event either.
        # TypeError: the package's `hmac.compare_digest` on a `v1` that is not ASCII (ours
        # compares bytes and answers SignatureError); either way, nothing is accepted.
        return False
    return True


def ours_accepts(payload: bytes, header: str, secret: str, now: float = NOW) -> bool:
    try:
        signing.verify(secret, payload, header, now=now)
    except signing.SignatureError:
        return False
    return True


# -- tolerance ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("skew", "accepted"),
    [(-301, False), (-300, True), (-1, True), (0, True), (1, True), (300, True), (301, False)],
)
def test_our_verifier_allows_300_seconds_either_way(skew: int, accepted: bool) -> None:
    header = signing.header([SECRET], NOW + skew, PAYLOAD)
    assert ours_accepts(PAYLOAD, header, SECRET) is accepted


def test_the_stripe_package_accepts_our_signature_within_its_window() -> None:
    # The official client compares with the wall clock and checks the past side only; a
    # margin of 30 s keeps the test independent of how long it takes to run.
    now = int(time.time())
    assert stripe_accepts(PAYLOAD, signing.header([SECRET], now, PAYLOAD), SECRET)
    assert stripe_accepts(PAYLOAD, signing.header([SECRET], now - 270, PAYLOAD), SECRET)
    assert not stripe_accepts(PAYLOAD, signing.header([SECRET], now - 330, PAYLOAD), SECRET)
    event = stripe.Webhook.construct_event(PAYLOAD, signing.header([SECRET], now, PAYLOAD), SECRET)
    assert event.id == "evt_1"


def test_a_replay_past_the_window_is_rejected_by_both() -> None:
    header = signing.header([SECRET], NOW, PAYLOAD)
    assert ours_accepts(PAYLOAD, header, SECRET, now=NOW + 300)
    assert not ours_accepts(PAYLOAD, header, SECRET, now=NOW + 301)
    old = signing.header([SECRET], int(time.time()) - 301 - 30, PAYLOAD)
    assert not stripe_accepts(PAYLOAD, old, SECRET)


# -- several v1: a secret being rolled -------------------------------------------------------


def test_any_of_several_v1_verifies_during_a_secret_roll() -> None:
    header = signing.header([SECRET, OLD_SECRET], NOW, PAYLOAD)
    assert header.count("v1=") == 2
    assert ours_accepts(PAYLOAD, header, SECRET)
    assert ours_accepts(PAYLOAD, header, OLD_SECRET)
    assert not ours_accepts(PAYLOAD, header, "whsec_" + "c3" * 16)
    live = signing.header([SECRET, OLD_SECRET], int(time.time()), PAYLOAD)
    assert stripe_accepts(PAYLOAD, live, SECRET)
    assert stripe_accepts(PAYLOAD, live, OLD_SECRET)
    assert not stripe_accepts(PAYLOAD, live, "whsec_" + "c3" * 16)
    # The order of the entries does not matter, nor does a scheme the verifier does not know.
    _, first, second = header.split(",")
    shuffled = f"v0=00,{second},t={NOW},{first}"
    assert ours_accepts(PAYLOAD, shuffled, SECRET) and ours_accepts(PAYLOAD, shuffled, OLD_SECRET)


@pytest.mark.parametrize(
    "header",
    [
        "",
        "t=1780000000",
        "v1=" + "0" * 64,
        "t=,v1=" + "0" * 64,
        "t=abc,v1=" + "0" * 64,
        "t=²,v1=" + "0" * 64,  # str.isdigit() says yes, int() says no
        "t=1780000000,v1=é",  # hmac.compare_digest refuses non-ASCII text
        "t=1780000000,v1=\ud800",
        "t=" + "9" * 13 + ",v1=00",
        "garbage",
    ],
)
def test_malformed_headers_are_rejected_with_the_documented_error(header: str) -> None:
    assert not ours_accepts(PAYLOAD, header, SECRET)
    assert not stripe_accepts(PAYLOAD, header, SECRET)


# -- any bit changed -------------------------------------------------------------------------


def flip(data: bytes, bit: int) -> bytes:
    i, b = divmod(bit % (len(data) * 8), 8)
    return data[:i] + bytes([data[i] ^ (1 << b)]) + data[i + 1 :]


@FUZZ
@given(st.integers(min_value=0), st.integers(min_value=-300, max_value=300))
def test_any_bit_changed_in_the_body_is_rejected(bit: int, skew: int) -> None:
    header = signing.header([SECRET, OLD_SECRET], NOW, PAYLOAD)
    assert ours_accepts(PAYLOAD, header, SECRET, now=NOW + skew)
    forged = flip(PAYLOAD, bit)
    assert not ours_accepts(forged, header, SECRET, now=NOW + skew)
    assert not ours_accepts(forged, header, OLD_SECRET, now=NOW + skew)


@FUZZ
@given(st.integers(min_value=0))
def test_any_bit_changed_in_the_header_is_rejected(bit: int) -> None:
    now = int(time.time())
    header = signing.header([SECRET], now, PAYLOAD).encode()
    forged = flip(header, bit).decode("latin-1")
    assert not ours_accepts(PAYLOAD, forged, SECRET, now=now)
    assert not stripe_accepts(PAYLOAD, forged, SECRET)


@FUZZ
@given(st.integers(min_value=0))
def test_the_stripe_package_rejects_any_bit_changed_in_the_body(bit: int) -> None:
    now = int(time.time())
    header = signing.header([SECRET], now, PAYLOAD)
    assert not stripe_accepts(flip(PAYLOAD, bit), header, SECRET)


# -- the parser on any input -----------------------------------------------------------------

HEADERISH = st.lists(
    st.tuples(
        st.sampled_from(["t", "v1", "v0", "", "T", " t", "v1 "]) | st.text(max_size=4),
        st.sampled_from(["=", "", "=="]),
        st.text(max_size=70) | st.from_regex(r"[0-9]{0,14}", fullmatch=True),
    ).map(lambda kv: "".join(kv)),
    max_size=6,
).map(",".join)


@FUZZ
@given(HEADERISH | st.text(max_size=200), st.binary(max_size=64))
def test_parse_and_verify_raise_only_signature_error(header: str, payload: bytes) -> None:
    try:
        timestamp, signatures = signing.parse(header)
    except signing.SignatureError:
        pass
    else:
        assert 0 <= timestamp < 10**12 and signatures
    with contextlib.suppress(signing.SignatureError):
        signing.verify(SECRET, payload, header, now=NOW)

"""Bad input gets Stripe's error shapes and statuses, through a live cloud: never a 500."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from stowpay.cloud.settings import Settings
from stowpay.cloud.testing import LiveCloud, live_cloud


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[LiveCloud]:
    """Over SQLite only: parameters are checked before any store is asked (CI time)."""
    server = live_cloud(Settings(db=str(tmp_path / "cloud.db"), webhook_poll_interval=0.05))
    server.new_account()
    server.new_account()
    yield server
    server.stop()


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def call(
    cloud: LiveCloud,
    method: str,
    path: str,
    body: bytes | str | None = None,
    *,
    key: str | None = None,
) -> httpx.Response:
    key = cloud.accounts[0].secret_key if key is None else key
    headers = {**FORM, "Authorization": f"Bearer {key}"} if key else dict(FORM)
    content = body.encode() if isinstance(body, str) else body
    r = httpx.request(method, cloud.url + path, content=content, headers=headers)
    # Every answer, good or bad, names its request.
    assert r.headers["Request-Id"].startswith("req_"), r.headers
    return r


def error(r: httpx.Response, status: int) -> dict[str, Any]:
    """The Stripe error of an answer that must have `status`."""
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    err = r.json()["error"]
    assert isinstance(err["message"], str) and err["message"]
    return dict(err)


PI = "amount=1000&currency=usd"


def test_an_unknown_parameter_is_named(cloud: LiveCloud) -> None:
    err = error(call(cloud, "POST", "/v1/payment_intents", PI + "&colour=blue"), 400)
    assert err["type"] == "invalid_request_error"
    assert err["code"] == "parameter_unknown"
    assert err["param"] == "colour"
    assert "colour" in err["message"]


def test_an_unknown_nested_parameter_is_named_with_brackets(cloud: LiveCloud) -> None:
    body = PI + "&automatic_payment_methods[enabled]=true&automatic_payment_methods[x]=1"
    err = error(call(cloud, "POST", "/v1/payment_intents", body), 400)
    assert (err["code"], err["param"]) == ("parameter_unknown", "automatic_payment_methods[x]")


def test_an_unknown_query_parameter_is_named(cloud: LiveCloud) -> None:
    err = error(call(cloud, "GET", "/v1/payment_intents?colour=blue"), 400)
    assert (err["code"], err["param"]) == ("parameter_unknown", "colour")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ("currency=usd", "amount"),
        ("amount=1000", "currency"),
        (
            PI + "&automatic_payment_methods[allow_redirects]=never",
            "automatic_payment_methods[enabled]",
        ),
    ],
)
def test_a_missing_parameter_is_named(cloud: LiveCloud, body: str, param: str) -> None:
    err = error(call(cloud, "POST", "/v1/payment_intents", body), 400)
    assert (err["type"], err["code"], err["param"]) == (
        "invalid_request_error",
        "parameter_missing",
        param,
    )


@pytest.mark.parametrize(
    ("method", "path", "body", "param"),
    [
        ("POST", "/v1/payment_intents", "amount=ten&currency=usd", "amount"),
        ("POST", "/v1/payment_intents", "amount=10.5&currency=usd", "amount"),
        ("GET", "/v1/payment_intents?limit=many", None, "limit"),
        ("GET", "/v1/charges?created=yesterday", None, "created"),
    ],
)
def test_a_bad_integer_is_named(
    cloud: LiveCloud, method: str, path: str, body: str | None, param: str
) -> None:
    err = error(call(cloud, method, path, body), 400)
    assert (err["code"], err["param"]) == ("parameter_invalid_integer", param)


def test_a_bad_integer_that_is_a_card_number_is_not_quoted_back(cloud: LiveCloud) -> None:
    # A card number sent where an amount goes: refused, and the message does not repeat it.
    err = error(
        call(cloud, "POST", "/v1/payment_intents", "amount=4242 4242 4242 4242&currency=usd"), 400
    )
    assert err["code"] == "parameter_invalid_integer"
    assert "4242" not in err["message"] and "(a card number)" in err["message"]
    err = error(call(cloud, "POST", "/v1/payment_intents", "amount=12ab&currency=usd"), 400)
    assert err["message"] == "Invalid integer: 12ab"


@pytest.mark.parametrize(
    "metadata",
    [
        "&".join(f"metadata[k{i}]=v" for i in range(51)),  # 51 keys
        "metadata[" + "k" * 41 + "]=v",  # a 41-character key
        "metadata[k]=" + "v" * 501,  # a 501-character value
        "metadata[k][deeper]=v",  # not a string
        "metadata=not-a-hash",
    ],
)
def test_metadata_beyond_stripe_limits_is_refused(cloud: LiveCloud, metadata: str) -> None:
    err = error(call(cloud, "POST", "/v1/payment_intents", f"{PI}&{metadata}"), 400)
    assert err["type"] == "invalid_request_error"
    assert err["param"].startswith("metadata")


def test_metadata_at_stripe_limits_is_accepted(cloud: LiveCloud) -> None:
    keys = "&".join(f"metadata[k{i:02}]=v" for i in range(49))
    body = f"{PI}&{keys}&metadata[{'k' * 40}]={'v' * 500}"
    r = call(cloud, "POST", "/v1/payment_intents", body)
    assert r.status_code == 200, r.text
    assert len(r.json()["metadata"]) == 50


@pytest.mark.parametrize(
    "value", ["4242424242424242", "4242 4242 4242 4242", "card 4242-4242-4242-4242"]
)
def test_a_card_number_in_metadata_is_refused(cloud: LiveCloud, value: str) -> None:
    body = f"{PI}&metadata[note]={value.replace(' ', '+')}"
    err = error(call(cloud, "POST", "/v1/payment_intents", body), 400)
    assert err["param"].startswith("metadata")
    assert "4242" not in err["message"]  # the refusal does not echo the number


def test_a_long_number_that_is_no_card_stays_allowed(cloud: LiveCloud) -> None:
    # 16 digits failing the Luhn check: an order number, not a card.
    r = call(cloud, "POST", "/v1/payment_intents", f"{PI}&metadata[order]=4242424242424241")
    assert r.status_code == 200, r.text
    assert r.json()["metadata"] == {"order": "4242424242424241"}


@pytest.mark.parametrize("currency", ["xyz", "us", "dollars", "", "12$"])
def test_a_bad_currency_is_refused(cloud: LiveCloud, currency: str) -> None:
    err = error(call(cloud, "POST", "/v1/payment_intents", f"amount=1000&currency={currency}"), 400)
    assert err["type"] == "invalid_request_error"
    assert err["param"] == "currency"


@pytest.mark.parametrize("limit", ["0", "101", "-1"])
def test_a_list_limit_outside_1_to_100_is_refused(cloud: LiveCloud, limit: str) -> None:
    for path in ("/v1/payment_intents", "/v1/charges", "/v1/refunds", "/v1/events"):
        err = error(call(cloud, "GET", f"{path}?limit={limit}"), 400)
        assert (err["code"], err["param"]) == ("parameter_invalid", "limit")


def test_list_limits_1_and_100_are_accepted(cloud: LiveCloud) -> None:
    for limit in ("1", "100"):
        assert call(cloud, "GET", f"/v1/payment_intents?limit={limit}").status_code == 200


@pytest.mark.parametrize("cursor", ["starting_after", "ending_before"])
def test_a_cursor_naming_no_object_is_a_404(cloud: LiveCloud, cursor: str) -> None:
    err = error(call(cloud, "GET", f"/v1/payment_intents?{cursor}=pi_nosuchintent"), 404)
    assert (err["type"], err["code"], err["param"]) == (
        "invalid_request_error",
        "resource_missing",
        cursor,
    )


def test_both_cursors_at_once_are_refused(cloud: LiveCloud) -> None:
    error(call(cloud, "GET", "/v1/payment_intents?starting_after=pi_a&ending_before=pi_b"), 400)


def test_a_cursor_of_another_account_is_a_404(cloud: LiveCloud) -> None:
    theirs = call(cloud, "POST", "/v1/payment_intents", PI, key=cloud.accounts[1].secret_key)
    assert theirs.status_code == 200
    path = f"/v1/payment_intents?starting_after={theirs.json()['id']}"
    assert error(call(cloud, "GET", path), 404)["code"] == "resource_missing"


@pytest.mark.parametrize(
    "body",
    [
        b"amount=1000&currency=usd&description=\xff\xfe",
        b"\x80\x81\x82",
        b"description=caf\xe9",  # Latin-1, not UTF-8
    ],
)
def test_a_body_that_is_not_utf8_is_a_400(cloud: LiveCloud, body: bytes) -> None:
    err = error(call(cloud, "POST", "/v1/payment_intents", body), 400)
    assert err["type"] == "invalid_request_error"
    assert "UTF-8" in err["message"]


@pytest.mark.parametrize(
    "body",
    [
        "amount=1000&amount[x]=1&currency=usd",  # a scalar and a hash at once
        "expand=latest_charge&" + PI,  # `expand` must be an array
        f"{PI}&=nameless",
        f"{PI}&metadata[a=1",
        PI + "&description=" + "%F0%9F%92%B3" * 100,
    ],
)
def test_odd_bodies_are_answered_never_with_a_500(cloud: LiveCloud, body: str) -> None:
    r = call(cloud, "POST", "/v1/payment_intents", body)
    assert r.status_code in (200, 400), r.text
    assert "error" in r.json() or r.json()["object"] == "payment_intent"


def test_an_empty_value_unsets_what_can_be_unset_and_nothing_else(cloud: LiveCloud) -> None:
    made = call(cloud, "POST", "/v1/payment_intents", PI + "&description=shoes")
    path = f"/v1/payment_intents/{made.json()['id']}"
    r = call(cloud, "POST", path, "description=&amount=&capture_method=&currency=")
    assert r.status_code == 200, r.text
    pi = r.json()
    assert pi["description"] is None
    assert (pi["amount"], pi["capture_method"], pi["currency"]) == (1000, "automatic", "usd")


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/payment_intents", PI + "&metadata[k]=a%00b"),
        ("POST", "/v1/payment_intents", PI + "&description=%00"),
        ("GET", "/v1/payment_intents?starting_after=pi_%00", None),
        ("GET", "/v1/payment_intents/pi_%00", None),
        ("GET", "/v1/payment_intents/search?query=metadata['k']:'%00'", None),
    ],
)
def test_a_nul_character_is_refused(
    cloud: LiveCloud, method: str, path: str, body: str | None
) -> None:
    # (PostgreSQL cannot store NUL in text: it must be refused before it gets that far.)
    assert "NUL" in error(call(cloud, method, path, body), 400)["message"]


def test_auth_failures_are_401_with_a_stripe_body(cloud: LiveCloud) -> None:
    for key in ("", "sk_test_unknown", cloud.accounts[0].publishable_key):
        err = error(call(cloud, "GET", "/v1/payment_intents", key=key), 401)
        assert err["type"] == "invalid_request_error"


def test_unknown_urls_and_the_document_carry_a_request_id(cloud: LiveCloud) -> None:
    assert error(call(cloud, "GET", "/v1/no_such_thing"), 404)["type"] == "invalid_request_error"
    error(call(cloud, "DELETE", "/v1/payment_intents"), 404)
    assert call(cloud, "GET", "/openapi.json").status_code == 200


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/terminal/configurations", "offline[enabled]=0", "offline[enabled]"),
        ("/v1/terminal/configurations", "offline[enabled]=yes", "offline[enabled]"),
        ("/v1/payment_intents", PI + "&confirm=1", "confirm"),
        (
            "/v1/payment_intents",
            PI + "&automatic_payment_methods[enabled]=on",
            "automatic_payment_methods[enabled]",
        ),
    ],
)
def test_a_boolean_is_true_or_false(
    cloud: LiveCloud, path: str, body: str, param: str | None
) -> None:
    # The document says boolean, which a form writes as `true` or `false` (as Stripe takes
    # it); `0`, `1`, `yes`, `on` used to be read as booleans too.
    err = error(call(cloud, "POST", path, body), 400)
    if param is not None:
        assert err["param"] == param and "true or false" in err["message"]


def test_true_and_false_are_booleans(cloud: LiveCloud) -> None:
    for flag in ("true", "false"):
        r = call(cloud, "POST", "/v1/terminal/configurations", f"offline[enabled]={flag}")
        assert r.status_code == 200 and r.json()["offline"]["enabled"] == (flag == "true")
    r = call(cloud, "GET", "/v1/terminal/configurations?is_account_default=1")
    assert error(r, 400)["param"] == "is_account_default"
    r = call(cloud, "GET", "/v1/terminal/configurations?is_account_default=true")
    assert r.status_code == 200

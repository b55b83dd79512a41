"""The cloud's decoders of sealed records, fed mutated input by hypothesis.

A reader forwards each stored record with its card data sealed to the cloud's key, and seals
an online card read the same way. Three decoders, about 1,000 examples each
(`STOWPAY_DECODER_EXAMPLES` for more):

1. ``envelope``: `wire.sealed.open_sealed` and `key_id_of` on mutated envelopes (bit flips,
   the version and key-id length bytes, truncation, extension, another ephemeral key, nonce
   or tag, arbitrary bytes) and mutated associated data. Only `SealError` may come out, and
   plaintext only for the genuine envelope and associated data.
2. ``forwarded records``: ``POST /device/v1/offline_payments`` in process (Starlette's
   TestClient), a genuine record of a fresh sequence mutated: its sealed bytes, its base64
   text, the card read inside a seal made again with the cloud's public key (which any key
   holder can do), its identity (sequence, account, forward key), any other field given
   odd JSON (other types, 64-bit extremes, NUL, lone surrogates, nesting), or the body's
   raw bytes. The answer is a 400/401/403 in Stripe's error shape, or 200 with one outcome
   per record; never a 5xx. A record whose sealed bytes or identity were changed, or whose
   sealed card read is not one a reader makes, is ``rejected`` and nothing is charged for
   it. A record may be charged (once) only when its seal is genuine and every field it
   carries is one a PaymentIntent can have: amounts, metadata and display are the reader's
   word, and nothing but its key vouches for them.
3. ``online confirm``: ``POST /device/v1/payment_intents/{id}/confirm`` with a mutated
   ``sealed`` (the same mutations, and a seal of an offline record, sequence != 0) and
   ``display``: 400 ``sealed_card_unreadable`` (or another documented 4xx), or the charge
   for a genuine card read; never a 5xx.

At the end the charges in the database are counted: exactly one per record or confirm the
cloud answered as charged, none for anything else.

Found by it, and fixed (plain regression tests below): a card read that opens but is not
one (``exp_month`` a string or ``Infinity``, nesting too deep, a number that is a list)
reached the charge and answered 500 on both the forwarding and the confirm routes, and a
number of letters was charged as an "unknown" card. Both routes now read a card read with
`offline_ingest.open_card_read`, which refuses anything but what a reader seals.

How it was seen to fail: with the cloud's source as it was before the fix (``json.loads``
of the opened envelope, then ``card["number"]``), ``-k forwarded`` reports a card read
without ``exp_month`` charged (its month taken from the unauthenticated display), 500s for
a month that is text, and the final count finds more charges than answers said.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from stowpay.cloud.app import create_app
from stowpay.cloud.domain.accounts import create_account
from stowpay.cloud.settings import Settings
from stowpay.reader.vault import forward_key_for
from stowpay.wire import formcodec
from stowpay.wire import sealed as sealing

EXAMPLES = int(os.environ.get("STOWPAY_DECODER_EXAMPLES", "500"))

pytestmark = [pytest.mark.slow, pytest.mark.timeout(max(300, EXAMPLES // 2))]

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

APPROVED = "4242424242424242"
CARD = {"number": APPROVED, "exp_month": 12, "exp_year": 2031, "emv": {"9F26": "8E19ED4B"}}
DISPLAY = {
    "brand": "visa",
    "last4": "4242",
    "exp_month": 12,
    "exp_year": 2031,
    "cardholder_name": "Ada Lovelace",
    "read_method": "contact_emv",
    "receipt": {"application_preferred_name": "VISA CREDIT"},
}
#: Where an answer's errors may come from: a batch refused (400), a key refused (401), a
#: connection token of another account (403), a PaymentIntent unknown (404), a decline (402).
DOCUMENTED = {200, 400, 401, 402, 403, 404}

# -- mutations -----------------------------------------------------------------------------------

BAD_UTF8 = (b"\xff", b"\xc3(", b"\xed\xa0\x80", b"\xc0\x80")
ODD_JSON_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(1 << 70), 1 << 70),
    st.sampled_from([0, -1, (1 << 63) - 1, 1 << 63, -(1 << 63), (1 << 53) + 1]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
    st.sampled_from(["", "\x00", "a\x00b", "\ud800", "x" * 70000, "4242 4242 4242 4242"]),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
)


@st.composite
def mutated_bytes(draw: st.DrawFn, data: bytes) -> bytes:
    """`data` with a bit flipped, cut short, extended, a byte replaced, or other bytes."""
    how = draw(st.sampled_from(["flip", "flip", "truncate", "extend", "set", "splice", "any"]))
    # A position drawn apart from the length, so the draws do not depend on it (a body's
    # length changes with its sequence number).
    at = draw(st.integers(0, 1 << 16)) % max(len(data), 1)
    if how == "flip" and data:
        return data[:at] + bytes([data[at] ^ (1 << draw(st.integers(0, 7)))]) + data[at + 1 :]
    if how == "truncate":
        return data[:at]
    if how == "extend":
        return data + draw(st.binary(min_size=1, max_size=64))
    if how == "set" and data:
        return data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1 :]
    if how == "splice":
        return data[:at] + draw(st.binary(min_size=1, max_size=40)) + data[at:]
    return draw(st.binary(max_size=200))


@st.composite
def mutated_envelope(draw: st.DrawFn, envelope: bytes) -> bytes:
    """An envelope with one of its parts changed (see `wire.sealed` for the layout)."""
    kid = envelope[1]
    parts = {
        "version": (0, 1),
        "kid_length": (1, 2),
        "kid": (2, 2 + kid),
        "ephemeral": (2 + kid, 34 + kid),
        "nonce": (34 + kid, 46 + kid),
        "ciphertext": (46 + kid, len(envelope) - 16),
        "tag": (len(envelope) - 16, len(envelope)),
    }
    part = draw(st.sampled_from([*parts, "anywhere", "anywhere"]))
    if part == "anywhere":
        return draw(mutated_bytes(envelope))
    start, end = parts[part]
    if part == "ephemeral" and draw(st.booleans()):
        # Another key, or a point of low order (the X25519 exchange refuses those).
        new = draw(st.sampled_from([bytes(32), b"\x01" + bytes(31), os.urandom(32)]))
    else:
        new = draw(mutated_bytes(envelope[start:end]))
    return envelope[:start] + new + envelope[end:]


@st.composite
def odd_card_read(draw: st.DrawFn) -> tuple[bytes, bool]:
    """A card read near the genuine one, and whether it is still one a reader could seal."""
    how = draw(st.sampled_from(["field", "field", "drop", "raw"]))
    if how == "raw":
        return draw(
            st.sampled_from(
                [b"[]", b"null", b"1", b'"4242424242424242"', b"{", b"[" * 5000 + b"]" * 5000]
            )
            | st.binary(max_size=60)
        ), False
    doc: dict[str, Any] = json.loads(json.dumps(CARD))
    key = draw(st.sampled_from(sorted(doc)))
    if how == "drop":
        doc.pop(key)
    else:
        doc[key] = draw(
            ODD_JSON_VALUES
            | st.sampled_from(
                [float("inf"), 1e400, "12", "4242424242424242", "42424242424242424242"]
            )
            | st.integers(-3, 3000)
        )
    text = json.dumps(doc).encode()
    return text, _is_card_read(doc)


def _is_card_read(doc: Any) -> bool:
    """What a reader seals: the shape `open_card_read` documents."""
    if not isinstance(doc, dict):
        return False
    number, month, year = doc.get("number"), doc.get("exp_month"), doc.get("exp_year")
    emv = doc.get("emv", {})
    return (
        isinstance(number, str)
        and number.isascii()
        and number.isdigit()
        and 12 <= len(number) <= 19
        and type(month) is int
        and 1 <= month <= 12
        and type(year) is int
        and 2000 <= year <= 2199
        and isinstance(emv, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in emv.items())
    )


# -- 1. envelopes --------------------------------------------------------------------------------


def test_envelopes() -> None:
    private = X25519PrivateKey.generate()
    public = private.public_key().public_bytes_raw()
    aad = sealing.associated_data("acct_1", "tmr_1", 7)
    envelope = sealing.seal(public, "csk_test_1", json.dumps(CARD).encode(), aad)
    started, runs = time.perf_counter(), 0

    @FUZZ
    @given(st.data())
    def run(data: st.DataObject) -> None:
        nonlocal runs
        runs += 1
        blob = data.draw(mutated_envelope(envelope) | st.just(envelope), label="envelope")
        other = data.draw(
            st.sampled_from(
                [
                    aad,
                    sealing.associated_data("acct_1", "tmr_1", 8),
                    sealing.associated_data("acct_1", "tmr_1", 0),
                    sealing.associated_data("acct_2", "tmr_1", 7),
                    sealing.associated_data("acct_1", "tmr_2", 7),
                ]
            )
            | mutated_bytes(aad),
            label="aad",
        )
        with contextlib.suppress(sealing.SealError):
            sealing.key_id_of(blob)
        try:
            plain = sealing.open_sealed(private, blob, other, recipient=public)
        except sealing.SealError:
            return
        assert blob == envelope and other == aad, "a changed envelope opened"
        assert json.loads(plain) == CARD

    run()
    print(f"\nenvelopes: {runs} examples in {time.perf_counter() - started:.1f} s, findings 0")


# -- the cloud, in process -------------------------------------------------------------------------


@dataclass
class Cloud:
    """A cloud with one account, one registered reader, and its sealing key."""

    client: TestClient
    secret: str
    account: str
    reader: str
    device_key: str
    kid: str
    public: bytes
    db: str
    next_sequence: int = 1
    #: sequences and PaymentIntents the cloud answered as charged (approved or declined)
    charged: set[str] = field(default_factory=set)
    runs: int = 0

    def device(self, path: str, body: bytes | Any) -> Any:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.client.post(
            f"/device/v1{path}",
            content=content,
            headers={
                "Authorization": f"Bearer {self.device_key}",
                "Content-Type": "application/json",
            },
        )

    def seal(self, plain: bytes, sequence: int) -> bytes:
        aad = sealing.associated_data(self.account, self.reader, sequence)
        return sealing.seal(self.public, self.kid, plain, aad)

    def record(self, sequence: int) -> dict[str, Any]:
        """A record as a reader forwards it (`reader.cloud_link.forward_document`)."""
        return {
            "sequence": sequence,
            "stored_at": 1_780_000_000.25 + sequence,
            "amount": 1299,
            "currency": "usd",
            "capture_method": "automatic",
            "metadata": {"order_id": f"A-{sequence}"},
            "description": "coffee",
            "local_id": f"pio_{sequence:08d}",
            "account": self.account,
            "sealed": base64.b64encode(self.seal(json.dumps(CARD).encode(), sequence)).decode(),
            "display": dict(DISPLAY),
            "forward_key": forward_key_for(self.account, self.reader, sequence),
        }

    def charges(self) -> int:
        """Charges the database holds for the account (every page)."""
        store = self.client.app.state.cloud.store  # type: ignore[attr-defined]
        total, after = 0, None
        with store.read() as tx:
            while True:
                page = tx.list_page(self.account, "charge", limit=100, starting_after=after)
                if page is None or not page.data:
                    return total
                total += len(page.data)
                if not page.has_more:
                    return total
                after = page.data[-1]["id"]


@pytest.fixture
def cloud(db_url: str, request: pytest.FixtureRequest) -> Iterator[Cloud]:
    app = create_app(Settings(db=db_url, background=False))
    state = app.state.cloud
    started = time.perf_counter()
    with TestClient(app) as client:
        with state.store.write() as tx:
            made = create_account(tx, state.settings.clock, state.settings.ids)
        secret = made.secret_key
        auth = {
            "Authorization": f"Bearer {secret}",
            "Content-Type": "application/x-www-form-urlencoded",
        }
        address = {"line1": "1 Main", "city": "X", "country": "US"}
        location = client.post(
            "/v1/terminal/locations",
            content=formcodec.encode({"display_name": "Shop", "address": address}),
            headers=auth,
        ).json()["id"]
        device = {
            "device_type": "bbpos_wisepos_e",
            "serial_number": "F-1",
            "device_sw_version": "1",
        }
        code = client.post("/device/v1/registration_codes", json=device).json()["registration_code"]
        client.post(
            "/v1/terminal/readers",
            content=formcodec.encode({"registration_code": code, "location": location}),
            headers=auth,
        )
        got = client.post("/device/v1/activations", json={"registration_code": code}).json()
        beat = client.post(
            "/device/v1/heartbeat",
            json={"status": "online", "device_sw_version": "1"},
            headers={"Authorization": f"Bearer {got['device_key']}"},
        ).json()
        key = beat["sealing_key"]
        fx = Cloud(
            client,
            secret,
            got["account"],
            got["reader"],
            got["device_key"],
            key["kid"],
            base64.b64decode(key["public_key"]),
            db_url,
        )
        yield fx
        # Exactly one charge for each record or confirm answered as charged; none for the rest.
        assert fx.charges() == len(fx.charged), (fx.charges(), len(fx.charged))
    print(
        f"\n{request.node.name}: {fx.runs} examples in {time.perf_counter() - started:.1f} s, "
        f"{len(fx.charged)} charged, findings 0"
    )


def check_error(r: Any) -> dict[str, Any]:
    """A refusal in Stripe's shape, with a request id; never a 5xx."""
    assert r.status_code < 500, r.text
    assert r.status_code in DOCUMENTED, r.text
    assert r.headers["Request-Id"].startswith("req_")
    body = r.json()
    if r.status_code == 200:
        return dict(body)
    error = body["error"]
    assert isinstance(error["type"], str) and isinstance(error["message"], str), body
    return dict(error)


# -- 2. forwarded records ------------------------------------------------------------------------

FIELDS = (
    "sequence",
    "stored_at",
    "amount",
    "currency",
    "capture_method",
    "metadata",
    "description",
    "local_id",
    "display",
)


def test_forwarded_records(cloud: Cloud) -> None:
    @FUZZ
    @given(st.data())
    def run(data: st.DataObject) -> None:
        cloud.runs += 1
        seq = cloud.next_sequence
        cloud.next_sequence += 1
        record = cloud.record(seq)
        envelope = base64.b64decode(record["sealed"])
        what = data.draw(
            st.sampled_from(
                ["sealed", "sealed", "plaintext", "plaintext", "identity", "field", "body"]
            ),
            label="what",
        )
        # May it be charged? Only a genuine seal of a card read, under its own identity.
        chargeable = False
        body: bytes | None = None
        if what == "sealed":
            if data.draw(st.booleans(), label="as text"):
                text = data.draw(mutated_bytes(record["sealed"].encode()), label="base64")
                record["sealed"] = text.decode("latin-1")
                # Base64 has spare bits in its last character: other text, the same bytes.
                chargeable = _decoded(text) == envelope
            else:
                blob = data.draw(mutated_envelope(envelope), label="envelope")
                record["sealed"] = base64.b64encode(blob).decode()
                chargeable = blob == envelope  # a byte set to the value it had
        elif what == "plaintext":
            plain, chargeable = data.draw(odd_card_read(), label="card read")
            record["sealed"] = base64.b64encode(cloud.seal(plain, seq)).decode()
        elif what == "identity":
            name = data.draw(st.sampled_from(["sequence", "account", "forward_key"]))
            if name == "sequence":
                other = data.draw(st.integers(1, (1 << 63) - 2), label="sequence")
                record[name] = other + (other >= seq)
            else:
                record[name] = data.draw(
                    st.sampled_from(["acct_other", "", "x" * 300]) | st.text(max_size=20)
                )
        elif what == "field":
            name = data.draw(st.sampled_from(FIELDS), label="field")
            if name == "display":
                display = dict(DISPLAY)
                key = data.draw(st.sampled_from(sorted(display)), label="display field")
                display[key] = data.draw(ODD_JSON_VALUES, label=key)
                record["display"] = display
            else:
                record[name] = data.draw(ODD_JSON_VALUES, label=name)
            # The seal and identity are intact: charged if every field is one a
            # PaymentIntent can have. Identity fields are checked above.
            chargeable = name != "sequence" or record["sequence"] == seq
        else:
            raw = json.dumps({"records": [record]}).encode()
            body = data.draw(
                mutated_bytes(raw)
                | st.sampled_from([b"[]", b"null", b'"x"', b"{}", b'{"records": {}}'])
                | st.just(raw.replace(b"coffee", b"cof\\u0000fee"))
                | st.just(raw.replace(b"coffee", b"\xff\xfe"))
                | st.just(raw.replace(b'"coffee"', b'"\\ud800"')),
                label="body",
            )
            chargeable = _same_identity(body, record)
        with_genuine = data.draw(st.booleans(), label="with a genuine record")
        records = [record]
        if with_genuine:
            records.append(cloud.record(cloud.next_sequence))
            cloud.next_sequence += 1
        r = cloud.device("/offline_payments", body if body is not None else {"records": records})
        answer = check_error(r)
        if r.status_code != 200:
            return
        outcomes = answer["outcomes"]
        assert len(outcomes) == (len(records) if body is None else len(outcomes))
        for i, out in enumerate(outcomes):
            assert out["status"] in ("approved", "declined", "rejected"), out
            if out["status"] == "rejected":
                assert out["payment_intent"] is None and out["error"]["code"], out
                continue
            assert out["payment_intent"]["latest_charge"], out
            genuine = i == 1 or chargeable
            assert genuine, f"charged a record whose {what} was changed: {out}"
            cloud.charged.add(out["payment_intent"]["id"])

    run()


def _decoded(text: bytes) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        return None


def _same_identity(body: bytes, record: dict[str, Any]) -> bool:
    """Whether a changed body still carries `record`'s seal and identity (and so may be
    charged: everything else in it is the reader's word)."""
    try:
        (got,) = json.loads(body)["records"]
        return all(got[k] == record[k] for k in ("sealed", "sequence", "account", "forward_key"))
    except (ValueError, KeyError, TypeError):
        return False


# -- 3. online confirms ----------------------------------------------------------------------------


def test_online_confirms(cloud: Cloud) -> None:
    intent: list[str] = []

    def new_intent() -> str:
        r = cloud.device(
            "/payment_intents",
            {"amount": 1299, "currency": "usd", "local_id": f"lid_{cloud.next_sequence}"},
        )
        cloud.next_sequence += 1
        assert r.status_code == 200, r.text
        return str(r.json()["id"])

    @FUZZ
    @given(st.data())
    def run(data: st.DataObject) -> None:
        cloud.runs += 1
        if not intent:
            intent.append(new_intent())
        genuine = cloud.seal(json.dumps(CARD).encode(), 0)
        what = data.draw(st.sampled_from(["sealed", "plaintext", "offline seal", "display"]))
        chargeable = False
        display: Any = dict(DISPLAY)
        if what == "sealed":
            sealed = data.draw(mutated_envelope(genuine), label="envelope")
            chargeable = sealed == genuine  # a byte set to the value it had
        elif what == "plaintext":
            plain, chargeable = data.draw(odd_card_read(), label="card read")
            sealed = cloud.seal(plain, 0)
        elif what == "offline seal":
            sealed = cloud.seal(json.dumps(CARD).encode(), data.draw(st.integers(1, 1 << 62)))
        else:
            sealed, chargeable = genuine, True
            key = data.draw(st.sampled_from(sorted(DISPLAY)), label="display field")
            display[key] = data.draw(ODD_JSON_VALUES, label=key)
        body = {"sealed": base64.b64encode(sealed).decode(), "display": display}
        r = cloud.device(f"/payment_intents/{intent[0]}/confirm", body)
        answer = check_error(r)
        if r.status_code == 400 and what in ("sealed", "plaintext", "offline seal"):
            # Unreadable, or (an envelope cut to nothing) refused as a parameter.
            assert answer.get("code") == "sealed_card_unreadable" or answer["param"] == "sealed"
        if r.status_code == 200:
            intent.clear()  # charged: the next example needs another PaymentIntent
        if r.status_code in (200, 402):
            pi = answer if r.status_code == 200 else answer["payment_intent"]
            charge = f"{pi['id']}/{pi['latest_charge']}"
            assert charge not in cloud.charged, "a confirm answered with an earlier charge"
            assert chargeable, f"charged a confirm whose {what} was changed: {r.text}"
            cloud.charged.add(charge)

    run()


# -- regressions: what the fuzzer found, as plain tests --------------------------------------------


@pytest.mark.parametrize(
    "card",
    [
        {**CARD, "exp_month": "x"},
        {**CARD, "exp_year": float("inf")},
        {**CARD, "number": ["4242424242424242"]},
        {**CARD, "number": "abcdabcdabcdabcd"},
        {**CARD, "emv": [1]},
        "deep",
    ],
    ids=["month as text", "infinite year", "number as list", "letters", "emv list", "deep"],
)
def test_a_sealed_card_read_that_is_not_one_is_rejected(cloud: Cloud, card: Any) -> None:
    plain = b"[" * 20_000 + b"]" * 20_000 if card == "deep" else json.dumps(card).encode()
    record = cloud.record(1)
    record["sealed"] = base64.b64encode(cloud.seal(plain, 1)).decode()
    r = cloud.device("/offline_payments", {"records": [record]})
    assert r.status_code == 200, r.text
    (out,) = r.json()["outcomes"]
    assert out["status"] == "rejected" and out["error"]["code"] == "offline_record_unreadable"

    pi = cloud.device("/payment_intents", {"amount": 500, "currency": "usd", "local_id": "l1"})
    body = {"sealed": base64.b64encode(cloud.seal(plain, 0)).decode(), "display": DISPLAY}
    r = cloud.device(f"/payment_intents/{pi.json()['id']}/confirm", body)
    assert r.status_code == 400 and r.json()["error"]["code"] == "sealed_card_unreadable", r.text
    assert cloud.charges() == 0


def test_a_genuine_card_read_is_charged(cloud: Cloud) -> None:
    r = cloud.device("/offline_payments", {"records": [cloud.record(1)]})
    assert r.json()["outcomes"][0]["status"] == "approved", r.text
    cloud.charged.add("1")

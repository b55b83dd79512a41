"""Ingesting payments a reader stored offline: each (account, reader, sequence) charged once.

A forwarded record carries the PaymentIntent the app created offline (amount, currency,
capture method, metadata), the time of sale, display details, and the card data sealed to the
cloud's key. Ingestion unseals it, makes a card_present PaymentMethod (keeping only brand,
last4 and a fingerprint), creates and confirms the PaymentIntent with
`card_present.offline = {stored_at, type: "deferred"}`, and records the outcome under a
permanent key per (reader, sequence). The same record arriving again, however late, gets the
recorded outcome back and is never charged twice. The reader's sequence is watched: a gap
(records missing), a repeat, or a different record under a used sequence (a restored older
vault) is reported, and its high water is told to the reader in each heartbeat
(`highest_sequence`), so a reader whose vault went back in time moves past it.

A record rejected for good (another account, a forged forward key, a seal that does not open,
a field no PaymentIntent can have, a used sequence with other content) is kept as a
`stowpay.offline_rejection` the merchant can list. It is kept under a key made from what
arrived (`rejection_id`), never under the sequence alone: the same record arriving again gets
the same rejection back (`replayed`), while a forged record cannot take the sequence from the
genuine one, which is still charged when it comes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...wire import cards
from ...wire import metadata as metadata_limits
from ...wire.errors import CardError, InvalidRequestError
from ...wire.money import MAXIMUM_AMOUNT
from ..api import Context
from ..storage import Tx
from ..storage.store import BatchTx
from . import payment_intents as pis

RECORD = "stowpay.offline_record"
SEQUENCE = "stowpay.reader_sequence"
REJECTION = "stowpay.offline_rejection"

#: Opens a sealed envelope for (sealed, associated data); raises ValueError if it will not.
Unsealer = Callable[[bytes, bytes], bytes]


@dataclass(frozen=True)
class ForwardedPayment:
    """One record as the reader forwards it."""

    sequence: int
    stored_at: float
    amount: int
    currency: str
    capture_method: str
    metadata: dict[str, str]
    description: str | None
    local_id: str
    sealed: bytes
    display: dict[str, Any]
    #: computed by the cloud from what arrived (`digest_of`): a different record under a used
    #: sequence shows as a conflict, the same one as a repeat
    digest: str


@dataclass(frozen=True)
class Outcome:
    """What became of one forwarded record."""

    sequence: int
    status: str  # "approved" | "declined" | "rejected"
    payment_intent: dict[str, Any] | None
    error: dict[str, Any] | None
    replayed: bool


def record_id(reader_id: str, sequence: int) -> str:
    """The permanent key of a reader's record in the cloud."""
    return f"ofr_{reader_id}_{sequence}"


def sequence_id(reader_id: str) -> str:
    """The key of a reader's sequence state (high water, gaps, repeats, conflicts)."""
    return f"rsq_{reader_id}"


def highest_sequence(tx: Tx, account_id: str, reader_id: str) -> int:
    """The highest sequence the cloud has taken a record under from this reader (0: none)."""
    state = tx.get(account_id, sequence_id(reader_id), SEQUENCE)
    return 0 if state is None else int(state["high_water"])


def rejection_id(
    reader_id: str,
    sequence: int,
    digest: str,
    *,
    account: str | None = None,
    forward_key: str | None = None,
) -> str:
    """The key a rejected record is kept under: its reader, sequence and content.

    `account` and `forward_key` are given for a record refused for them (they are not in the
    digest), so a record with a forged key never shares a key with the genuine one; records
    that passed those checks carry the reader's own, and leave them out.
    """
    seen = "\x00".join((digest, account or "", forward_key or ""))
    return f"ofj_{reader_id}_{sequence}_{hashlib.sha256(seen.encode()).hexdigest()[:32]}"


def keep_rejection(
    ctx: Context,
    reader_id: str,
    p: ForwardedPayment,
    error: dict[str, Any],
    *,
    account: str | None = None,
    forward_key: str | None = None,
) -> Outcome:
    """Reject a record for good, keeping the rejection for the merchant; the same record again
    gets the rejection it got the first time (`replayed`)."""
    rid = rejection_id(reader_id, p.sequence, p.digest, account=account, forward_key=forward_key)
    prior = ctx.tx.get(ctx.account_id, rid, REJECTION)
    if prior is not None:
        return Outcome(p.sequence, "rejected", None, prior["error"], replayed=True)
    kept = {
        "type": str(error.get("type") or "invalid_request_error"),
        "code": str(error.get("code") or "offline_record_rejected"),
        "message": str(error.get("message") or "The record was rejected."),
        "param": error.get("param") if isinstance(error.get("param"), str) else None,
    }
    ctx.tx.insert(
        ctx.account_id,
        {
            "id": rid,
            "object": REJECTION,
            "created": ctx.now(),
            "livemode": False,
            "reader": reader_id,
            "sequence": p.sequence,
            "local_id": p.local_id,
            "amount": p.amount,
            "currency": p.currency,
            "stored_at": p.stored_at,
            "error": kept,
        },
        ref=reader_id,
    )
    return Outcome(p.sequence, "rejected", None, error, replayed=False)


def _prior_rejection(ctx: Context, reader_id: str, p: ForwardedPayment) -> Outcome | None:
    prior = ctx.tx.get(ctx.account_id, rejection_id(reader_id, p.sequence, p.digest), REJECTION)
    if prior is None:
        return None
    return Outcome(p.sequence, "rejected", None, prior["error"], replayed=True)


def ingest(
    ctx: Context,
    reader: dict[str, Any],
    batch: list[ForwardedPayment],
    *,
    unseal: Unsealer,
    associated_data: Callable[[str, str, int], bytes],
) -> list[Outcome]:
    """Ingest a batch in the caller's transaction; one outcome per record, in order.

    The records' permanent keys are read in one query, and everything the batch makes
    (PaymentMethods, PaymentIntents, Charges, events, webhook deliveries, records) is held
    and written at the end with one multi-row statement per kind (`BatchTx`), still inside
    the caller's transaction: the batch commits whole or not at all.
    """
    # One batch of a reader at a time, on every cloud process: the same records forwarded to
    # two processes at once are ingested by one; the other waits, then reads its outcomes.
    ctx.tx.lock(ctx.account_id, sequence_id(reader["id"]))
    tx = BatchTx(ctx.tx)
    bctx = dataclasses.replace(ctx, tx=tx)
    tx.prefetch(ctx.account_id, [record_id(reader["id"], p.sequence) for p in batch], RECORD)
    tx.prefetch(
        ctx.account_id,
        [rejection_id(reader["id"], p.sequence, p.digest) for p in batch],
        REJECTION,
    )
    seq_state = _sequence_state(bctx, reader["id"])
    outcomes = [
        _ingest_one(bctx, reader, p, seq_state, unseal, associated_data)
        for p in sorted(batch, key=lambda p: p.sequence)
    ]
    tx.update(ctx.account_id, seq_state)
    tx.flush()
    ctx.wrote_events = ctx.wrote_events or bctx.wrote_events
    order = {p.sequence: i for i, p in enumerate(batch)}
    return sorted(outcomes, key=lambda o: order[o.sequence])


def _sequence_state(ctx: Context, reader_id: str) -> dict[str, Any]:
    sid = sequence_id(reader_id)
    state = ctx.tx.get(ctx.account_id, sid, SEQUENCE)
    if state is None:
        state = {
            "id": sid,
            "object": SEQUENCE,
            "created": ctx.now(),
            "reader": reader_id,
            "high_water": 0,
            "gaps": [],
            "repeats": 0,
            "conflicts": [],
        }
        ctx.tx.insert(ctx.account_id, state, ref=reader_id)
    return state


def _note_sequence(state: dict[str, Any], sequence: int) -> None:
    hw = state["high_water"]
    if sequence > hw:
        state["gaps"].extend(range(hw + 1, min(sequence, hw + 1001)))
        state["high_water"] = sequence
    elif sequence in state["gaps"]:
        state["gaps"].remove(sequence)


def _ingest_one(
    ctx: Context,
    reader: dict[str, Any],
    p: ForwardedPayment,
    seq_state: dict[str, Any],
    unseal: Unsealer,
    associated_data: Callable[[str, str, int], bytes],
) -> Outcome:
    rid = record_id(reader["id"], p.sequence)
    # A record rejected before gets that rejection again, whatever came since.
    rejected = _prior_rejection(ctx, reader["id"], p)
    if rejected is not None:
        return rejected
    prior = ctx.tx.get(ctx.account_id, rid, RECORD)
    if prior is not None:
        if prior["digest"] != p.digest:
            # The same sequence with different content: the reader's vault went back in time.
            seq_state["conflicts"].append(p.sequence)
            return keep_rejection(
                ctx,
                reader["id"],
                p,
                _err(
                    "offline_record_conflict",
                    f"Sequence {p.sequence} of reader {reader['id']} was already used by another "
                    "record; the reader's vault may have been restored from an older copy.",
                ),
            )
        seq_state["repeats"] += 1
        pi = ctx.tx.get(ctx.account_id, prior["payment_intent"], "payment_intent")
        return Outcome(p.sequence, prior["outcome"], pi, prior.get("error"), replayed=True)
    try:
        card = open_card_read(
            unseal, p.sealed, associated_data(ctx.account_id, reader["id"], p.sequence)
        )
        number = card["number"]
    except ValueError:
        return keep_rejection(
            ctx,
            reader["id"],
            p,
            _err(
                "offline_record_unreadable",
                "The record's sealed card data does not open for this account, reader and "
                "sequence, or is not a card read; it was altered or belongs elsewhere.",
            ),
        )
    try:
        _check_fields(p)
    except InvalidRequestError as exc:
        # Refused before anything is made for it: no PaymentMethod, no sequence noted.
        return keep_rejection(ctx, reader["id"], p, exc.to_body()["error"])
    _note_sequence(seq_state, p.sequence)
    if p.local_id.startswith("pi_"):
        # Created online, stored when its confirm went unanswered: the cloud may have charged.
        from .device_payments import settle_forwarded

        return settle_forwarded(ctx, reader, p, card, number)
    pm = card_present_method(ctx, reader, p, card, number)
    del number, card
    fields = {
        "amount": p.amount,
        "currency": p.currency,
        "capture_method": p.capture_method,
        "metadata": p.metadata,
        "description": p.description,
        "payment_method_types": ["card_present"],
    }
    try:
        pis.check_amount(p.amount, p.currency)
        pi = pis.create(ctx, fields, payment_method=None, confirm=False)
        pi["payment_method"] = pm["id"]
        status, error = "approved", None
        try:
            pi = pis.do_confirm(
                ctx,
                pi,
                pm,
                offline={"stored_at": int(p.stored_at), "type": "deferred"},
                receipt=p.display.get("receipt"),
            )
        except CardError as exc:
            status = "declined"
            error = exc.to_body()["error"]
            pi = pis.get(ctx, pi["id"])
    except InvalidRequestError as exc:
        return keep_rejection(ctx, reader["id"], p, exc.to_body()["error"])
    return record_outcome(ctx, reader, p, status, pi, error)


def open_card_read(unseal: Unsealer, sealed: bytes, aad: bytes) -> dict[str, Any]:
    """The card read in a sealed envelope, as a reader seals it (`stowpay.reader.vault`):
    ``{"number": 12-19 digits, "exp_month": 1-12, "exp_year": 2000-2199, "emv": {hex: hex}}``
    (``emv`` may be absent). ValueError for an envelope that does not open, and for one that
    opens to anything else: a key holder can seal any bytes, and none of them may reach the
    charge as a number, a month or a year that is not one."""
    plain = unseal(sealed, aad)
    try:
        card = json.loads(plain)
    except RecursionError:
        raise ValueError("the card read nests too deeply") from None
    if not isinstance(card, dict):
        raise ValueError("the card read is not an object")
    number = card.get("number")
    if not (
        isinstance(number, str)
        and number.isascii()
        and number.isdigit()
        and 12 <= len(number) <= 19
    ):
        raise ValueError("the card read has no card number")
    for name, low, high in (("exp_month", 1, 12), ("exp_year", 2000, 2199)):
        value = card.get(name)
        if type(value) is not int or not low <= value <= high:
            raise ValueError(f"the card read's {name} is not one")
    emv = card.get("emv", {})
    if not isinstance(emv, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in emv.items()
    ):
        raise ValueError("the card read's chip data is not tags and values")
    return card


def record_outcome(
    ctx: Context,
    reader: dict[str, Any],
    p: ForwardedPayment,
    status: str,
    pi: dict[str, Any],
    error: dict[str, Any] | None,
) -> Outcome:
    """Keep a record's outcome under its permanent key (so it is never charged again)."""
    ctx.tx.insert(
        ctx.account_id,
        {
            "id": record_id(reader["id"], p.sequence),
            "object": RECORD,
            "created": ctx.now(),
            "reader": reader["id"],
            "sequence": p.sequence,
            "digest": p.digest,
            "stored_at": p.stored_at,
            "local_id": p.local_id,
            "payment_intent": pi["id"],
            "outcome": status,
            "error": error,
        },
        ref=reader["id"],
    )
    return Outcome(p.sequence, status, pi, error, replayed=False)


#: The capture methods an offline payment may have.
CAPTURE_METHODS = ("automatic", "manual")


def _check_fields(p: ForwardedPayment) -> None:
    """Refuse a record no PaymentIntent could be made from (`InvalidRequestError`)."""
    pis.check_amount(p.amount, p.currency)
    if p.amount > MAXIMUM_AMOUNT:
        raise InvalidRequestError(
            f"Amount must be no more than {MAXIMUM_AMOUNT} in minor units.",
            param="amount",
            code="amount_too_large",
        )
    if p.capture_method not in CAPTURE_METHODS:
        raise InvalidRequestError(
            f"Invalid capture_method: {p.capture_method[:40]!r}; an offline payment's is "
            "automatic or manual.",
            param="capture_method",
            code="parameter_invalid",
        )
    problem = metadata_limits.problem(p.metadata)
    if problem is not None:
        message, param = problem
        raise InvalidRequestError(message, param=param, code="parameter_invalid")


def card_present_method(
    ctx: Context, reader: dict[str, Any], p: ForwardedPayment, card: dict[str, Any], number: str
) -> dict[str, Any]:
    """The card_present PaymentMethod of an unsealed card read: brand, last4 and a per-account
    fingerprint are kept, never the number."""
    test = cards.lookup(number)
    pm: dict[str, Any] = {
        "id": ctx.ids.new("pm"),
        "object": "payment_method",
        "billing_details": {"address": None, "email": None, "name": None, "phone": None},
        "card_present": {
            "brand": test.brand,
            "cardholder_name": p.display.get("cardholder_name"),
            "country": test.country,
            "exp_month": int(card.get("exp_month") or p.display.get("exp_month") or 0),
            "exp_year": int(card.get("exp_year") or p.display.get("exp_year") or 0),
            "fingerprint": cards.fingerprint(number, ctx.account["_fingerprint_salt"]),
            "funding": test.funding,
            "last4": number[-4:],
            "location": reader.get("location"),
            "networks": {"available": [test.brand], "preferred": None},
            "preferred_locales": ["en"],
            "read_method": p.display.get("read_method"),
            "reader": reader["id"],
        },
        "created": ctx.now(),
        "customer": None,
        "livemode": False,
        "metadata": {},
        "type": "interac_present" if test.brand == "interac" else "card_present",
        "_test": {"decline": test.decline, "refund_fails": False},
    }
    if pm["type"] == "interac_present":
        pm["interac_present"] = pm.pop("card_present")
    ctx.tx.insert(ctx.account_id, pm)
    return pm


def digest_of(fields: dict[str, Any], sealed: bytes) -> str:
    """The content digest a reader sends with a record (and the cloud recomputes)."""
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical + b"\x00" + sealed).hexdigest()


def _err(code: str, message: str) -> dict[str, Any]:
    return {"type": "invalid_request_error", "code": code, "message": message}

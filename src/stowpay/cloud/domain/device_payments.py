"""Online payments through a registered reader, and finding readers from a POS.

The wire format is `docs/reader-protocol.md` ("Online payments", "Discovery"); the routes are
in `routes.device_payments`. Each function runs inside the caller's transaction.

A reader creates a PaymentIntent (idempotent per reader and `local_id`), then confirms it with
the card read sealed to the cloud's key exactly as for an offline record, but with sequence 0
in the associated data (`wire.sealed.associated_data(account, reader, 0)`): a sealed online
read never opens as an offline record, and the other way round. Everything else is the `/v1`
code (`domain.payment_intents`), so an online PaymentIntent has the same events, webhooks and
status machine as one made by the merchant's backend.

The money case is a confirm whose answer the reader never got: the cloud may or may not have
charged. The reader then stores the payment offline under the PaymentIntent's id, and its
forwarded record comes back through `settle_forwarded`: the PaymentIntent is confirmed then if
it is still unconfirmed, and its first outcome is answered if it was confirmed already. It is
never charged twice. Every attempt to charge a PaymentIntent first claims a row keyed by the
PaymentIntent and its latest charge, so two attempts racing on the same state (an online
confirm arriving late beside its forwarded record, on several cloud processes) cannot both
charge: the second fails its insert and is retried against the new state.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import partial
from typing import Any

from ...wire import cards
from ...wire import sealed as sealing
from ...wire.errors import (
    AuthenticationError,
    CardError,
    IdempotencyError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
)
from ..api import Context
from ..sealing import private_sealing_key
from ..storage import Tx
from . import payment_intents as pis
from . import terminal
from .events import public
from .offline_ingest import (
    ForwardedPayment,
    Outcome,
    card_present_method,
    keep_rejection,
    open_card_read,
    record_outcome,
)

#: The ids a reader's records carry when the payment was created online (a PaymentIntent's).
ONLINE_ID_PREFIX = "pi_"
#: The sequence in a sealed online card read's associated data (offline records start at 1).
ONLINE_SEQUENCE = 0
#: (reader, local_id) -> PaymentIntent: makes a reader's create idempotent.
DEVICE_PAYMENT = "stowpay.device_payment"
#: One claimed attempt to charge a PaymentIntent in a given state.
ATTEMPT = "stowpay.charge_attempt"
CONFIRMABLE = ("requires_payment_method", "requires_confirmation", "requires_action")
CHARGED = ("succeeded", "requires_capture")
#: Private mark on a PaymentIntent a forwarded record settled as declined: the sequence.
FORWARDED_DECLINE = "_stowpay_forwarded_decline"
#: Most readers one discovery answers.
MAX_DISCOVERED = 1000


@dataclass(frozen=True)
class NewPayment:
    """What a reader asks for when it creates a PaymentIntent online."""

    amount: int
    currency: str
    capture_method: str
    metadata: dict[str, str]
    description: str | None
    local_id: str


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def _require_card_present(pi: dict[str, Any]) -> None:
    if "card_present" not in pi["payment_method_types"]:
        raise InvalidRequestError(
            "This PaymentIntent does not accept card_present payments, so a reader cannot "
            "process it. Create it with payment_method_types[]=card_present.",
            code="payment_intent_unexpected_state",
            extra={"payment_intent": public(pi)},
        )


def _unexpected(pi: dict[str, Any], action: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"You cannot {action} this PaymentIntent because it has a status of {pi['status']}.",
        code="payment_intent_unexpected_state",
        extra={"payment_intent": public(pi)},
    )


# -- create, confirm, cancel, capture ------------------------------------------------------


def create(ctx: Context, reader: dict[str, Any], new: NewPayment) -> dict[str, Any]:
    """Create a card_present PaymentIntent for the reader; the same one for a repeated call.

    A `local_id` the reader used before with other parameters is refused
    (`idempotency_error`): it names a different payment.
    """
    mapping_id = "dpay_" + _digest(reader["id"], new.local_id)
    fields: dict[str, Any] = {
        "amount": new.amount,
        "currency": new.currency.lower(),
        "capture_method": new.capture_method,
        "metadata": new.metadata,
        "description": new.description,
        "payment_method_types": ["card_present"],
    }
    fingerprint = hashlib.sha256(
        json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    prior = ctx.tx.get(ctx.account_id, mapping_id, DEVICE_PAYMENT)
    if prior is not None:
        if prior["fingerprint"] != fingerprint:
            raise IdempotencyError(
                f"The local_id {new.local_id!r} was used by this reader for another payment; "
                "use a new local_id for a new payment."
            )
        return pis.get(ctx, prior["payment_intent"])
    pi = pis.create(ctx, fields, payment_method=None, confirm=False)
    ctx.tx.insert(
        ctx.account_id,
        {
            "id": mapping_id,
            "object": DEVICE_PAYMENT,
            "created": ctx.now(),
            "reader": reader["id"],
            "local_id": new.local_id,
            "payment_intent": pi["id"],
            "fingerprint": fingerprint,
        },
        ref=pi["id"],
    )
    return pi


def confirm(
    ctx: Context,
    reader: dict[str, Any],
    pi_id: str,
    *,
    sealed: bytes,
    display: dict[str, Any],
) -> dict[str, Any]:
    """Charge the sealed card read the reader sent; a decline raises `CardError` (kept).

    A confirm repeated after it charged (its answer was lost) answers the charged
    PaymentIntent again; it never charges twice.
    """
    pi = pis.get(ctx, pi_id)
    _require_card_present(pi)
    if pi["status"] in CHARGED:
        if _charged_by(ctx, pi, reader["id"]):
            return pi
        raise _unexpected(pi, "confirm")
    if pi["status"] not in CONFIRMABLE or pi.get(FORWARDED_DECLINE) is not None:
        # A confirm arriving after the reader's forwarded record was declined is an old
        # message (held in the network): the reader reported the decline and will not ask
        # again, so the card is not tried a second time.
        raise _unexpected(pi, "confirm")
    aad = sealing.associated_data(ctx.account_id, reader["id"], ONLINE_SEQUENCE)
    private = private_sealing_key(ctx.tx, ctx.clock)
    try:
        card = open_card_read(partial(sealing.open_sealed, private), sealed, aad)
        number = card["number"]
    except ValueError:
        raise InvalidRequestError(
            "The sealed card data does not open for this account and reader, or is not a card "
            "read; it was altered, sealed to another key, or sealed as an offline record.",
            code="sealed_card_unreadable",
            param="sealed",
        ) from None
    record = ForwardedPayment(
        sequence=ONLINE_SEQUENCE,
        stored_at=ctx.clock.now(),
        amount=pi["amount"],
        currency=pi["currency"],
        capture_method=pi["capture_method"],
        metadata=pi["metadata"],
        description=pi["description"],
        local_id=pi["id"],
        sealed=sealed,
        display=display,
        digest="",
    )
    return _charge(ctx, reader, pi, record, card, number, offline=None)


def cancel(ctx: Context, pi_id: str) -> dict[str, Any]:
    """Cancel a card_present PaymentIntent; one canceled already is answered as it is."""
    pi = pis.get(ctx, pi_id)
    _require_card_present(pi)
    if pi["status"] == "canceled":
        return pi
    return pis.cancel(ctx, pi, None)


def capture(ctx: Context, pi_id: str, amount_to_capture: int | None) -> dict[str, Any]:
    """Capture a card_present PaymentIntent; one captured already is answered as it is."""
    pi = pis.get(ctx, pi_id)
    _require_card_present(pi)
    if pi["status"] == "succeeded" and pi["capture_method"] == "manual":
        return pi  # a repeated capture whose first answer was lost
    return pis.capture(ctx, pi, amount_to_capture)


def _charged_by(ctx: Context, pi: dict[str, Any], reader_id: str) -> bool:
    """Whether the PaymentIntent's latest charge is a paid one taken through this reader."""
    charge = _latest_charge(ctx, pi)
    if charge is None or not charge.get("paid"):
        return False
    details = charge["payment_method_details"]
    return bool(details.get(details["type"], {}).get("reader") == reader_id)


def _latest_charge(ctx: Context, pi: dict[str, Any]) -> dict[str, Any] | None:
    if not pi.get("latest_charge"):
        return None
    return ctx.tx.get(ctx.account_id, pi["latest_charge"], "charge")


def _claim_attempt(ctx: Context, pi: dict[str, Any]) -> None:
    """Take the one right to charge the PaymentIntent in its current state (see above)."""
    ctx.tx.insert(
        ctx.account_id,
        {
            "id": "dpa_" + _digest(pi["id"], pi.get("latest_charge") or ""),
            "object": ATTEMPT,
            "created": ctx.now(),
            "payment_intent": pi["id"],
        },
        ref=pi["id"],
    )


def _charge(
    ctx: Context,
    reader: dict[str, Any],
    pi: dict[str, Any],
    record: ForwardedPayment,
    card: dict[str, Any],
    number: str,
    *,
    offline: dict[str, Any] | None,
) -> dict[str, Any]:
    kind = "interac_present" if cards.lookup(number).brand == "interac" else "card_present"
    if kind not in pi["payment_method_types"]:
        raise InvalidRequestError(
            f"This PaymentIntent does not accept {kind} payments.",
            code="payment_method_invalid_parameter",
            param="payment_method",
        )
    _claim_attempt(ctx, pi)
    pm = card_present_method(ctx, reader, record, card, number)
    pi["payment_method"] = pm["id"]
    return pis.do_confirm(ctx, pi, pm, offline=offline, receipt=record.display.get("receipt"))


# -- a forwarded record of a payment created online ----------------------------------------


def settle_forwarded(
    ctx: Context,
    reader: dict[str, Any],
    p: ForwardedPayment,
    card: dict[str, Any],
    number: str,
) -> Outcome:
    """The outcome of a forwarded record whose `local_id` is a PaymentIntent's id.

    The reader stored it offline because its online confirm went unanswered. Still
    unconfirmed: it is confirmed now, with the offline marks. Charged already: approved, as
    it is. Declined already for this card: declined, as it was. A PaymentIntent that is not
    the account's, or that does not match the record, makes the record rejected.
    """
    try:
        status, pi, error = _settle(ctx, reader, p, card, number)
    except InvalidRequestError as exc:
        return keep_rejection(ctx, reader["id"], p, exc.to_body()["error"])
    if status == "declined":
        pi[FORWARDED_DECLINE] = p.sequence
        ctx.tx.update(ctx.account_id, pi)
    return record_outcome(ctx, reader, p, status, pi, error)


def _settle(
    ctx: Context,
    reader: dict[str, Any],
    p: ForwardedPayment,
    card: dict[str, Any],
    number: str,
) -> tuple[str, dict[str, Any], dict[str, Any] | None]:
    pi = ctx.tx.get(ctx.account_id, p.local_id, "payment_intent")
    if pi is None:
        raise InvalidRequestError(
            f"The record names PaymentIntent {p.local_id}, which this account does not have; "
            "it is not charged.",
            code="offline_record_unknown_payment_intent",
        )
    if (pi["amount"], pi["currency"], pi["capture_method"]) != (
        p.amount,
        p.currency,
        p.capture_method,
    ):
        raise InvalidRequestError(
            f"The record's amount, currency or capture method differ from PaymentIntent "
            f"{pi['id']}'s; it is not charged.",
            code="offline_record_mismatch",
        )
    _require_card_present(pi)
    charge = _latest_charge(ctx, pi)
    if pi["status"] in CHARGED or (charge is not None and charge.get("paid")):
        # The online confirm did reach the cloud: that charge is the outcome.
        return "approved", pi, None
    if pi["status"] not in CONFIRMABLE:
        raise _unexpected(pi, "confirm")
    if pi["last_payment_error"] and charge is not None and _same_card(ctx, charge, number):
        # The online confirm reached the cloud and this card was declined: that is the outcome.
        return "declined", pi, pi["last_payment_error"]
    offline = {"stored_at": int(p.stored_at), "type": "deferred"}
    try:
        return "approved", _charge(ctx, reader, pi, p, card, number, offline=offline), None
    except CardError as exc:
        return "declined", pis.get(ctx, pi["id"]), exc.to_body()["error"]


def _same_card(ctx: Context, charge: dict[str, Any], number: str) -> bool:
    details = charge["payment_method_details"]
    seen = details.get(details["type"], {}).get("fingerprint")
    return bool(seen == cards.fingerprint(number, ctx.account["_fingerprint_salt"]))


# -- discovery -----------------------------------------------------------------------------


def _token_invalid() -> AuthenticationError:
    return AuthenticationError(
        "The connection token is invalid, expired or already used. Fetch a new one from the "
        "POS's connection token provider.",
        code="connection_token_invalid",
    )


def discover(tx: Tx, token: str, location: str | None, *, now: float) -> dict[str, Any]:
    """The readers of the connection token's account (at `location`), with their LAN address.

    The token is used up, as a connection is. One scoped to a Location finds that Location's
    readers only.
    """
    grant = terminal.redeem_connection_token(tx, token, now)
    if grant is None:
        raise _token_invalid()
    account_id, scoped = grant
    if location is not None and scoped is not None and location != scoped:
        raise PermissionDeniedError(
            "The connection token is scoped to another Location than the one asked for.",
            code="location_mismatch",
        )
    where = location or scoped
    if where is not None and tx.get(account_id, where, terminal.LOCATION) is None:
        raise NotFoundError("location", where, param="location")
    filters = {"ref": where} if where is not None else {}
    found: list[dict[str, Any]] = []
    after: str | None = None
    while len(found) < MAX_DISCOVERED:
        page = tx.list_page(
            account_id, terminal.READER, limit=100, starting_after=after, filters=filters
        )
        if page is None or not page.data:
            break
        found.extend(page.data)
        if not page.has_more:
            break
        after = page.data[-1]["id"]
    return {"readers": [discovered(r) for r in found[:MAX_DISCOVERED]]}


def discovered(reader: dict[str, Any]) -> dict[str, Any]:
    """A reader as discovery shows it: the `/v1` object and the LAN address it reported."""
    return public(reader) | {"lan_url": reader.get(LAN_URL_FIELD)}


#: Where a reader's LAN address (from its heartbeat) is kept: private, never on `/v1`.
LAN_URL_FIELD = "_lan_url"

"""Readers on the device API: their keys, activation, heartbeats, connection tokens, forwarding.

The wire format is `docs/reader-protocol.md` ("Device API"); `routes.device` speaks it and
calls these functions, each inside the caller's transaction.

A reader authenticates with its *device key* (`rdk_test_...`), handed out when the device
activates with the registration code a merchant registered. Only the key's hash is stored,
tied to (account, reader); a key works only while its reader exists, so deleting the reader
(`DELETE /v1/terminal/readers/{id}`) shuts its device out at once. The account a device acts
for always comes from its key, never from what it sends: a forwarded record naming another
account, or whose `forward_key` is not the one derived from (account, reader, sequence), is
rejected without being charged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ...reader.vault import forward_key_for
from ...wire import sealed as sealing
from ...wire.clock import Clock
from ...wire.errors import AuthenticationError, InvalidRequestError, PermissionDeniedError
from ...wire.ids import random_token
from ..api import Context
from ..sealing import private_sealing_key, public_sealing_key
from ..storage import Tx
from ..storage.device_keys import device_key_owner, replace_device_key
from . import terminal
from .offline_ingest import (
    ForwardedPayment,
    Outcome,
    digest_of,
    highest_sequence,
    ingest,
    keep_rejection,
)

DEVICE_KEY_PREFIX = "rdk_test_"


class RegistrationCodeInvalid(InvalidRequestError):
    """The code is unknown, expired, or its registration is too old to be activated again."""

    http_status = 404

    def __init__(self) -> None:
        super().__init__(
            "The registration code is not valid: it is unknown or expired. Ask for a new one.",
            code="registration_code_invalid",
            param="registration_code",
        )


def _key_invalid() -> AuthenticationError:
    return AuthenticationError(
        "Invalid device key: it is unknown, was replaced by a later activation, or its "
        "reader was deleted. Register the reader again.",
        code="device_key_invalid",
    )


def device_key_hash(key: str) -> str:
    """How a device key is stored: its SHA-256, never the key itself."""
    return hashlib.sha256(key.encode()).hexdigest()


def issue_device_key(tx: Tx, *, account_id: str, reader_id: str, now: float) -> str:
    """A new key for the reader; the one it had before stops working."""
    key = DEVICE_KEY_PREFIX + random_token(32)
    replace_device_key(
        tx, device_key_hash(key), account_id=account_id, reader_id=reader_id, created=now
    )
    return key


def authenticate(tx: Tx, key: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The (account, reader) a device key speaks for; `device_key_invalid` (401) otherwise."""
    if not key or not key.startswith(DEVICE_KEY_PREFIX) or len(key) > 255:
        raise _key_invalid()
    owner = device_key_owner(tx, device_key_hash(key))
    if owner is None:
        raise _key_invalid()
    account_id, reader_id = owner
    account = tx.account(account_id)
    reader = tx.get(account_id, reader_id, terminal.READER)
    if account is None or reader is None:
        raise _key_invalid()
    return account, reader


# -- activation ----------------------------------------------------------------------------


def activate(tx: Tx, code: str, *, now: float) -> dict[str, Any]:
    """The answer to a device polling with its code: pending, or registered with a new key.

    Each registered answer carries a fresh key and ends the previous one, so a device that
    lost an answer can ask again (for `terminal.REGISTRATION_KEPT`).
    """
    state = terminal.registration_state(tx, code, now=now)
    if state is None:
        raise RegistrationCodeInvalid()
    if state.status == "pending" or state.account_id is None or state.reader_id is None:
        return {"status": "pending"}
    if tx.get(state.account_id, state.reader_id, terminal.READER) is None:
        # The merchant deleted the reader already: the code leads nowhere.
        raise RegistrationCodeInvalid()
    key = issue_device_key(tx, account_id=state.account_id, reader_id=state.reader_id, now=now)
    return {
        "status": "registered",
        "reader": state.reader_id,
        "account": state.account_id,
        "device_key": key,
    }


# -- heartbeat -----------------------------------------------------------------------------


def heartbeat(
    tx: Tx,
    clock: Clock,
    account_id: str,
    reader: dict[str, Any],
    *,
    status: str,
    ip_address: str | None,
    device_sw_version: str,
) -> dict[str, Any]:
    """Record that the reader reported in; answer its context (`reader_context`)."""
    reader.update(
        status=status,
        last_seen_at=int(clock.now() * 1000),
        ip_address=ip_address if ip_address is not None else reader.get("ip_address"),
        device_sw_version=device_sw_version,
    )
    # `update` also keeps the `status` column, which the list filter reads, in step.
    tx.update(account_id, reader)
    return reader_context(tx, clock, account_id, reader)


def reader_context(tx: Tx, clock: Clock, account_id: str, reader: dict[str, Any]) -> dict[str, Any]:
    """The reader as the cloud sees it, its Location, Configuration and the sealing key.

    `highest_sequence` is the highest offline record sequence the cloud holds from this
    reader: a reader whose vault is behind it (restored from an older copy) moves past it
    before storing more, or its next payments would reuse sequences already taken.
    """
    location_id = reader.get("location")
    location = tx.get(account_id, location_id, terminal.LOCATION) if location_id else None
    configuration = terminal.effective_configuration(tx, account_id, location_id)
    # Configurations stored before the policy existed answer it as unset.
    configuration.setdefault("stowpay_offline_policy", None)
    return {
        "reader": reader,
        "account": account_id,
        "location": location,
        "configuration": configuration,
        "sealing_key": public_sealing_key(tx, clock),
        "server_time": clock.now(),
        "highest_sequence": highest_sequence(tx, account_id, reader["id"]),
    }


# -- connection tokens ---------------------------------------------------------------------


def _token_invalid() -> AuthenticationError:
    return AuthenticationError(
        "The connection token is invalid, expired or already used. Fetch a new one from the "
        "POS's connection token provider.",
        code="connection_token_invalid",
    )


def redeem_connection_token(
    tx: Tx, account_id: str, reader: dict[str, Any], token: str, *, now: float
) -> dict[str, Any]:
    """Use a POS's connection token (once) at this reader: `{account, location}`.

    `location` is where the token is good here: the reader's Location (a token scoped to
    another Location is refused).
    """
    grant = terminal.redeem_connection_token(tx, token, now)
    if grant is None:
        raise _token_invalid()
    token_account, token_location = grant
    if token_account != account_id:
        raise PermissionDeniedError(
            "The connection token belongs to another account than this reader's.",
            code="account_mismatch",
        )
    if token_location is not None and token_location != reader.get("location"):
        raise PermissionDeniedError(
            "The connection token is scoped to another Location than this reader's.",
            code="location_mismatch",
        )
    return {"account": token_account, "location": reader.get("location")}


# -- forwarding ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ArrivedRecord:
    """One forwarded record as it arrived (types checked, `sealed` decoded from base64)."""

    sequence: int
    stored_at: float
    amount: int
    currency: str
    capture_method: str
    metadata: dict[str, str]
    description: str | None
    local_id: str
    account: str
    sealed: bytes
    display: dict[str, Any]
    forward_key: str

    def payment(self) -> ForwardedPayment:
        """The record for ingestion, with the digest the cloud computes from what arrived."""
        fields: dict[str, Any] = {
            "sequence": self.sequence,
            "stored_at": self.stored_at,
            "amount": self.amount,
            "currency": self.currency,
            "capture_method": self.capture_method,
            "metadata": self.metadata,
            "description": self.description,
            "local_id": self.local_id,
            "display": self.display,
        }
        return ForwardedPayment(
            sequence=self.sequence,
            stored_at=self.stored_at,
            amount=self.amount,
            currency=self.currency,
            capture_method=self.capture_method,
            metadata=self.metadata,
            description=self.description,
            local_id=self.local_id,
            sealed=self.sealed,
            display=self.display,
            digest=digest_of(fields, self.sealed),
        )


@dataclass(frozen=True)
class MalformedRecord:
    """A forwarded record of a shape no record has (a field missing, of the wrong type, or
    holding a card number), under a sequence that could be read: rejected alone, never
    charged, so one such record never holds back the records forwarded with it.

    `stored_at`, `amount`, `currency` and `local_id` are the record's where each is valid on
    its own (else 0 or empty): they are kept with the rejection for the merchant, and
    nothing else of the record is. `digest` is made from everything that arrived.
    """

    sequence: int
    stored_at: float
    amount: int
    currency: str
    local_id: str
    digest: str
    error: dict[str, Any]

    def payment(self) -> ForwardedPayment:
        """The record as far as its rejection needs it."""
        return ForwardedPayment(
            sequence=self.sequence,
            stored_at=self.stored_at,
            amount=self.amount,
            currency=self.currency,
            capture_method="",
            metadata={},
            description=None,
            local_id=self.local_id,
            sealed=b"",
            display={},
            digest=self.digest,
        )


def _error(code: str, message: str) -> dict[str, Any]:
    return {"type": "invalid_request_error", "code": code, "message": message}


def _refusal(
    ctx: Context, reader_id: str, record: ArrivedRecord | MalformedRecord
) -> Outcome | None:
    """Why this reader may not forward this record (an outcome, kept), or None."""
    if isinstance(record, MalformedRecord):
        return keep_rejection(ctx, reader_id, record.payment(), record.error)
    error: dict[str, Any] | None = None
    if record.account != ctx.account_id:
        error = _error(
            "offline_record_account_mismatch",
            "The record was stored for another account than this reader's; it is not charged.",
        )
    elif record.forward_key != forward_key_for(ctx.account_id, reader_id, record.sequence):
        error = _error(
            "offline_record_key_invalid",
            "The record's forward_key is not the one of this account, reader and sequence; "
            "it is not charged.",
        )
    if error is None:
        return None
    # Kept under what arrived, account and key included: it never blocks the genuine record.
    return keep_rejection(
        ctx,
        reader_id,
        record.payment(),
        error,
        account=record.account,
        forward_key=record.forward_key,
    )


def forward(
    ctx: Context,
    reader: dict[str, Any],
    records: Sequence[ArrivedRecord | MalformedRecord],
    *,
    connection_token: str | None,
) -> list[dict[str, Any]]:
    """Ingest a batch in the caller's transaction: one outcome per record, in order.

    A `MalformedRecord` is rejected (and kept) like a record of another account.

    With a `connection_token` (the connected POS's), it is redeemed first, and one of
    another account refuses the whole batch (403 `account_id_mismatch`) before anything is
    ingested. Without one, the device key alone speaks for the reader (unattended mode).
    """
    if connection_token is not None:
        grant = terminal.redeem_connection_token(ctx.tx, connection_token, ctx.clock.now())
        if grant is None:
            raise _token_invalid()
        if grant[0] != ctx.account_id:
            raise PermissionDeniedError(
                "The connection token belongs to another account than this reader's; "
                "nothing was forwarded.",
                code="account_id_mismatch",
            )
    refusals = [_refusal(ctx, reader["id"], r) for r in records]
    accepted = [
        r.payment()
        for r, refused in zip(records, refusals, strict=True)
        if not refused and isinstance(r, ArrivedRecord)
    ]
    ingested: list[Outcome] = []
    if accepted:
        private = private_sealing_key(ctx.tx, ctx.clock)
        public = private.public_key().public_bytes_raw()
        ingested = ingest(
            ctx,
            reader,
            accepted,
            unseal=lambda blob, aad: sealing.open_sealed(private, blob, aad, recipient=public),
            associated_data=sealing.associated_data,
        )
    pending = iter(ingested)
    return [_outcome(refused or next(pending)) for refused in refusals]


def _outcome(outcome: Outcome) -> dict[str, Any]:
    return {
        "sequence": outcome.sequence,
        "status": outcome.status,
        "payment_intent": outcome.payment_intent,
        "error": outcome.error,
        "replayed": outcome.replayed,
    }

"""Reconciliation: the app's order id, the PaymentIntent, its charge and the webhooks sent.

`report` joins, for one account, every PaymentIntent made since a time with its metadata id
(`order_id` by default), its latest charge, the offline record it came from (reader,
sequence, time of sale, time forwarded) and the webhook deliveries of its events. Beside the
joined rows it lists what needs a merchant's attention:

- stored, not yet forwarded: each reader's backlog as its last heartbeat reported it
  (`domain.backlog`); what a reader took after its last report is not known until it reports;
- forwarded but declined: offline payments the issuer refused once they arrived, and records
  the cloud rejected for good (`stowpay.offline_rejection`);
- gaps in a reader's sequence: numbers below its highest that never arrived, and numbers
  used twice with different content (a vault restored from an older copy).

`audit_export` writes a day's offline payments as JSON lines, the last line an Ed25519
signature over the lines before it, by a key the cloud keeps for that purpose
(`audit_public_key`, served at `/v1/stowpay/audit_key`); `verify_export` checks one.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .domain import backlog
from .domain import terminal as terminal_domain
from .domain.offline_ingest import RECORD, REJECTION, SEQUENCE
from .storage import Tx
from .storage.reports import deliveries_by_event
from .storage.reports import objects as _objects
from .storage.terminal import secret_once

#: The cloud secret the audit exports are signed with.
AUDIT_KEY_NAME = "audit_signing_key_ed25519"
#: Rows one report holds at most (the newest ones): a report is a page, not a data dump.
MAX_ROWS = 5000
#: Per payment: its events, their webhook deliveries, and those deliveries by state.
_TALLY = ("events", "deliveries", "delivered", "pending", "failed")


class ExportError(ValueError):
    """An audit export that does not verify, or cannot be read."""


@dataclass
class Report:
    """What `report` found; `as_dict` is the JSON the API and the CLI give."""

    since: float
    rows: list[dict[str, Any]] = field(default_factory=list)
    not_forwarded: list[dict[str, Any]] = field(default_factory=list)
    declined: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    gaps: list[dict[str, Any]] = field(default_factory=list)
    truncated: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "object": "stowpay.reconciliation",
            "since": self.since,
            "payments": self.rows,
            "truncated": self.truncated,
            "not_forwarded": self.not_forwarded,
            "forwarded_declined": self.declined,
            "rejected": self.rejected,
            "sequence_gaps": self.gaps,
        }


def offline_of(charge: dict[str, Any] | None) -> dict[str, Any] | None:
    """A charge's `card_present.offline` (`{stored_at, type}`), when it was taken offline."""
    if not charge:
        return None
    details = charge.get("payment_method_details") or {}
    card = details.get("card_present") or {}
    offline = card.get("offline")
    return offline if isinstance(offline, dict) else None


def decline_of(pi: dict[str, Any], charge: dict[str, Any] | None) -> str | None:
    """Why the payment was declined (the decline code, else the error code), or None."""
    error = pi.get("last_payment_error")
    if isinstance(error, dict):
        return str(error.get("decline_code") or error.get("code") or "declined")
    if charge and charge.get("status") == "failed":
        return str(charge.get("failure_code") or "declined")
    return None


def payment_rows(
    tx: Tx, account_id: str, intents: Sequence[dict[str, Any]], *, metadata_key: str = "order_id"
) -> list[dict[str, Any]]:
    """A report row for each of these PaymentIntents (the account's), in their order."""
    if not intents:
        return []
    pi_ids = [pi["id"] for pi in intents]
    wanted = set(pi_ids)
    charges = {c["id"]: c for c in _objects(tx, account_id, "charge", refs=pi_ids)}
    # A record is written with its PaymentIntent, or later (one created online, then stored
    # when its confirm went unanswered): none is older than the oldest intent.
    oldest = min(float(pi["created"]) for pi in intents)
    records = {
        r["payment_intent"]: r
        for r in _objects(tx, account_id, RECORD, since=oldest)
        if r.get("payment_intent") in wanted
    }
    events = _objects(tx, account_id, "event", refs=[*pi_ids, *charges])
    deliveries = deliveries_by_event(tx, account_id, [e["id"] for e in events])
    hooks: dict[str, dict[str, int]] = {}
    for event in events:
        obj = (event.get("data") or {}).get("object") or {}
        is_pi = obj.get("object") == "payment_intent"
        pi_id = obj.get("id") if is_pi else obj.get("payment_intent")
        if not isinstance(pi_id, str):
            continue
        tally = hooks.setdefault(pi_id, dict.fromkeys(_TALLY, 0))
        tally["events"] += 1
        for d in deliveries.get(event["id"], []):
            tally["deliveries"] += 1
            tally[str(d["state"])] = tally.get(str(d["state"]), 0) + 1
    rows = []
    for pi in intents:
        charge = charges.get(pi.get("latest_charge") or "")
        offline = offline_of(charge)
        record = records.get(pi["id"])
        stored_at = record["stored_at"] if record else (offline or {}).get("stored_at")
        forwarded_at = record["created"] if record else (pi["created"] if offline else None)
        metadata = pi.get("metadata") or {}
        rows.append(
            {
                "order": metadata.get(metadata_key),
                "payment_intent": pi["id"],
                "status": pi["status"],
                "amount": pi["amount"],
                "currency": pi["currency"],
                "created": pi["created"],
                "charge": charge["id"] if charge else None,
                "charge_status": charge.get("status") if charge else None,
                "offline": offline is not None or record is not None,
                "reader": record["reader"] if record else _reader_of(charge),
                "sequence": record["sequence"] if record else None,
                "stored_at": stored_at,
                "forwarded_at": forwarded_at,
                "lag": (forwarded_at - stored_at) if stored_at and forwarded_at else None,
                "decline": decline_of(pi, charge),
                "webhooks": hooks.get(pi["id"], dict.fromkeys(_TALLY, 0)),
                "metadata": metadata,
            }
        )
    return rows


def report(
    tx: Tx,
    account_id: str,
    *,
    since: float,
    now: float,
    metadata_key: str = "order_id",
) -> Report:
    """The account's reconciliation since `since` (seconds); see the module's docstring."""
    out = Report(since=since)
    intents = _objects(tx, account_id, "payment_intent", since=since, limit=MAX_ROWS + 1)
    out.truncated = len(intents) > MAX_ROWS
    out.rows = payment_rows(tx, account_id, intents[:MAX_ROWS], metadata_key=metadata_key)
    out.declined = [r for r in out.rows if r["offline"] and r["decline"]]
    for r in _objects(tx, account_id, REJECTION, since=since):
        error = r.get("error") or {}
        out.rejected.append(
            {
                "id": r["id"],
                "reader": r.get("reader"),
                "sequence": r.get("sequence"),
                "amount": r.get("amount"),
                "currency": r.get("currency"),
                "stored_at": r.get("stored_at"),
                "code": error.get("code"),
                "message": error.get("message"),
            }
        )
    for reader in _objects(tx, account_id, terminal_domain.READER):
        held = backlog.reported(reader)
        if held and held.get("stored_count"):
            oldest = held.get("oldest_stored_at")
            out.not_forwarded.append(
                {
                    "reader": reader["id"],
                    "label": reader.get("label"),
                    "stored_count": held["stored_count"],
                    "amounts": held.get("amounts") or {},
                    "oldest_stored_at": oldest,
                    "oldest_age": (now - oldest) if oldest else None,
                    "reported_at": held.get("at"),
                }
            )
    for state in _objects(tx, account_id, SEQUENCE):
        if state.get("gaps") or state.get("conflicts"):
            out.gaps.append(
                {
                    "reader": state.get("reader"),
                    "high_water": state.get("high_water"),
                    "missing": list(state.get("gaps") or []),
                    "conflicts": list(state.get("conflicts") or []),
                }
            )
    return out


def _reader_of(charge: dict[str, Any] | None) -> str | None:
    if not charge:
        return None
    card = (charge.get("payment_method_details") or {}).get("card_present") or {}
    reader = card.get("reader")
    return reader if isinstance(reader, str) else None


# -- flat views ------------------------------------------------------------------------------

#: The columns of the table and CSV forms of a report's payments.
COLUMNS = (
    "order",
    "payment_intent",
    "status",
    "amount",
    "currency",
    "charge",
    "offline",
    "reader",
    "sequence",
    "stored_at",
    "forwarded_at",
    "lag",
    "decline",
    "webhooks",
)


def flat(row: dict[str, Any]) -> dict[str, str]:
    """A report row as strings (times in UTC ISO 8601, webhooks as delivered/events)."""
    out: dict[str, str] = {}
    for name in COLUMNS:
        value = row.get(name)
        if name in ("stored_at", "forwarded_at") and isinstance(value, int | float):
            out[name] = iso(value)
        elif name == "lag" and isinstance(value, int | float):
            out[name] = f"{value:.0f}s"
        elif name == "webhooks" and isinstance(value, dict):
            out[name] = f"{value.get('delivered', 0)}/{value.get('deliveries', 0)}"
            if value.get("failed"):
                out[name] += f" ({value['failed']} failed)"
        elif isinstance(value, bool):
            out[name] = "yes" if value else "no"
        else:
            out[name] = "" if value is None else str(value)
    return out


def iso(at: float) -> str:
    """A time in seconds as UTC ISO 8601 to the second."""
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- signed audit export ---------------------------------------------------------------------


def _signing_key(tx: Tx, now: float) -> Ed25519PrivateKey:
    raw = secret_once(
        tx,
        AUDIT_KEY_NAME,
        lambda: Ed25519PrivateKey.generate().private_bytes_raw(),
        int(now),
    )
    return Ed25519PrivateKey.from_private_bytes(raw)


def audit_public_key(tx: Tx, now: float) -> str:
    """The audit signing key's public half, hex (made on first use; needs a write tx)."""
    return _signing_key(tx, now).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def parse_day(day: str) -> tuple[float, float]:
    """A UTC day `YYYY-MM-DD` as [start, end) in seconds; ValueError when it is not one."""
    try:
        start = dt.datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=dt.UTC)
    except ValueError:
        raise ValueError(f"not a day (YYYY-MM-DD): {day!r}") from None
    return start.timestamp(), (start + dt.timedelta(days=1)).timestamp()


def audit_export(tx: Tx, account_id: str, day: str, *, now: float) -> bytes:
    """Every offline payment of the account sold on `day` (UTC, by time of sale), one JSON
    object a line, then a signature line. Needs a write transaction (the key is made on first
    use)."""
    start, end = parse_day(day)
    # Forwarded on the day of sale or later: look from the start of that day on.
    found = report(tx, account_id, since=start, now=now)
    lines = [
        {
            "order": r["order"],
            "payment_intent": r["payment_intent"],
            "charge": r["charge"],
            "status": r["status"],
            "decline": r["decline"],
            "amount": r["amount"],
            "currency": r["currency"],
            "reader": r["reader"],
            "sequence": r["sequence"],
            "stored_at": r["stored_at"],
            "forwarded_at": r["forwarded_at"],
            "metadata": r["metadata"],
        }
        for r in found.rows
        if r["offline"] and r["stored_at"] is not None and start <= r["stored_at"] < end
    ]
    lines.sort(key=lambda x: (x["reader"] or "", x["sequence"] or 0, x["payment_intent"]))
    body = b"".join(json.dumps(x, sort_keys=True).encode() + b"\n" for x in lines)
    key = _signing_key(tx, now)
    signature = {
        "signature": {
            "algorithm": "ed25519",
            "account": account_id,
            "day": day,
            "count": len(lines),
            "sha256": hashlib.sha256(body).hexdigest(),
            "public_key": key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex(),
            "value": base64.b64encode(key.sign(_signed(account_id, day, body))).decode(),
        }
    }
    return body + json.dumps(signature, sort_keys=True).encode() + b"\n"


def _signed(account_id: str, day: str, body: bytes) -> bytes:
    # The account and day are signed too: an export cannot be passed off as another's.
    return f"stowpay audit export\n{account_id}\n{day}\n".encode() + body


def verify_export(data: bytes, public_key_hex: str) -> dict[str, Any]:
    """Check an export against the cloud's audit key; its signature line, or `ExportError`."""
    lines = data.splitlines(keepends=True)
    if not lines:
        raise ExportError("the export is empty")
    try:
        sig = json.loads(lines[-1])["signature"]
        public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key_hex))
        value = base64.b64decode(sig["value"], validate=True)
        account, day = str(sig["account"]), str(sig["day"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ExportError(f"the export or the key cannot be read: {exc}") from None
    body = b"".join(lines[:-1])
    try:
        public.verify(value, _signed(account, day, body))
    except InvalidSignature:
        raise ExportError("the signature does not match: the export was altered") from None
    if sig.get("sha256") != hashlib.sha256(body).hexdigest() or sig.get("count") != len(lines) - 1:
        raise ExportError("the signature line does not describe the lines before it")
    return dict(sig)


#: How far back a report looks when no `since` is given.
DEFAULT_WINDOW = 30 * 86400.0
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_since(text: str | None, now: float) -> float:
    """`since` as seconds: `7d`, `24h`, `90m`, a UTC day `YYYY-MM-DD`, an ISO 8601 time or
    seconds since the epoch; 30 days back when empty. ValueError when it is none of these."""
    text = (text or "").strip()
    if not text:
        return now - DEFAULT_WINDOW
    unit = _UNITS.get(text[-1:].lower())
    if unit is not None and text[:-1].isdigit():
        return now - int(text[:-1]) * unit
    if text.isdigit():
        return float(text)
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"not a time: {text!r} (use 7d, 24h, 90m, YYYY-MM-DD, an ISO 8601 time or epoch "
            "seconds)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()

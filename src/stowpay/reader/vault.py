"""The reader's offline vault: payments kept durably, sealed, and chained until forwarded.

A payment taken offline lives here between the customer's tap and the cloud's answer. The vault
is a library (no HTTP): the reader daemon, the SDK's in-process reader and the `stowpay reader
vault` commands all open it the same way.

Files in the vault directory
----------------------------
- ``vault.db`` (+ ``-wal``, ``-shm``): SQLite, WAL, ``synchronous=FULL``, ``secure_delete=ON``.
  Every write is one ``BEGIN IMMEDIATE … COMMIT``; a payment is acknowledged only after COMMIT
  returned. The pragmas are read back after opening and the vault refuses weaker ones.
- ``device.key`` (or ``device_key_path``): 32 random bytes, mode 0600, made on first open. Two
  keys are derived from it with HKDF-SHA256: the chain MAC key, and one AES-256-GCM key per
  record for its display details (so no key ever encrypts twice and GCM's nonce limits never
  come near).
- ``vault.tip``: the highest state this vault is known to have reached (see "Rollback").
- ``vault.lock``: an exclusive ``flock`` so two processes never write one vault.

A record (table ``records``, one row per stored payment)
--------------------------------------------------------
``sequence`` (from a counter that only goes up; never reused, even after removals),
``prev_mac``, ``stored_at`` (float seconds from the injected clock), ``account``, ``reader``,
``amount``, ``currency``, ``capture_method``, ``metadata`` (JSON text), ``description``,
``local_id`` (``pio_`` + uuid4 hex), ``sealed`` and ``display`` (blobs), ``mac``.

- ``sealed``: ``{"number", "exp_month", "exp_year", "emv"}`` as JSON, sealed with
  `stowpay.wire.sealed.seal` to the cloud's X25519 key with ``associated_data(account, reader,
  sequence)``. The reader holds no key that opens it. CVC, track data and PIN have no field
  anywhere; EMV tags that carry track data or PIN data are refused.
- ``display``: nonce (12) | AES-256-GCM of ``{"brand", "last4", "exp_month", "exp_year",
  "cardholder_name", "read_method", "receipt"}``, under a per-record key
  ``HKDF(device key, salt=vault_id, info="stowpay vault display v1" | sequence)``, with the
  record's identity (vault, account, reader, sequence, local id) as associated data.

Table ``card_uses`` holds ``(tag, sequence)`` for each record stored with a card tag (the
reader's keyed hash of the card number, never the number), for the merchant's per-card limit.
It is written in the record's own transaction and deleted with it; like ``quarantine`` it is a
local annotation outside the chain.

The chain
---------
``mac = HMAC-SHA256(mac_key, prev_mac || canonical)`` where ``canonical`` is a domain tag, the
vault id and every column except ``prev_mac`` and ``mac`` in the order above, each written with
a type byte and (for text and blobs) a 4-byte length, so no two different rows encode alike.
``prev_mac`` is the ``mac`` of the record before it (or the genesis value
``HMAC(mac_key, "genesis" | vault_id)``). Because ``prev_mac`` is stored in the row and covered
by the row's own MAC, each record can be checked on its own (its bytes, its sequence, its
vault), and each link can be checked against its neighbour (order and completeness) — without
decrypting anything.

The single row of ``vault_state`` holds the counter (``head_sequence``, ``head_mac``), the
anchor (sequence and mac of the highest link below which every record has been removed), the
removed set's summary (``removed_count`` and ``removed_xor``, the XOR of a keyed hash of each
``removed_links`` entry, a set hash that a writer without the key cannot forge), the running
``removed_total``, and ``state_mac`` over all of it.

Removing a forwarded record deletes its row (``secure_delete`` zeroes its bytes). Removing the
lowest remaining record moves the anchor onto it; removing any other one records its
``(sequence, mac)`` in ``removed_links``, and the anchor later absorbs such links as the gap
below them closes. So the remainder always verifies, and a removed record that comes back is
recognised.

`Vault.verify` reports, per sequence: ``altered`` (bytes do not match the MAC), ``missing``
(issued, never removed, absent), ``reordered`` (an authentic record under another sequence),
``replayed`` (a removed record back, or a copy of another), ``chain_break`` (an authentic
record whose neighbour is a different authentic record: spliced from another copy),
``unissued`` (above the counter); and for the vault as a whole ``state`` (state row or removed
set altered), ``rollback`` (the tip file is ahead of the database) and ``structure``
(``PRAGMA integrity_check``). Every record with a finding is quarantined: never returned by
`Vault.pending`, kept and reported until removed. `Vault.pending` re-checks each record it
returns as well, so a record altered after the last verify is quarantined on the spot.

Rollback
--------
The tip file holds ``(vault_id, head_sequence, head_mac, removed_total, state_mac)`` under an
HMAC tag. It is written durably (temp file, fsync, rename, fsync directory) at open, after every
removal, at clean close, and every ``tip_every`` stores if asked. At open, a database whose
counter or removal count is behind the tip, or that reached the same counts by another history,
or whose link at the tip's sequence differs, is refused (`VaultRollbackError`); ``salvage=True``
opens it to forward what it holds but refuses to store.

What is caught locally: a database (or ``-wal``) replaced by a copy older than the last tip
write — that is, older than the last removal, open or clean close (or the last ``tip_every``
store); a copy from another history; a deleted tip file once the vault has held a record.
What is not: a copy of the whole directory (database and tip together), and a copy taken after
the last tip write (it looks like the vault after a crash). Those are left to the cloud, which
keeps per-(account, reader) sequence state: a re-sent record it has seen is answered from its
permanent record (never charged twice); a reused sequence with different content is refused as
a conflict; sequences it never receives show as gaps. Its heartbeat answer carries the highest
sequence it has seen from the reader, and the reader moves a counter that is behind past it
(`Vault.advance_sequence`) before storing more, so payments taken after such a restore get
fresh sequences and are charged. Payments acknowledged after the copy and never forwarded are
lost with such a rollback, and no party can see them. ``tip_every=1`` closes that window (to
the instant between a commit and its tip write) for the cost of two more fsyncs (the tip file
and its directory) per store.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import math
import os
import re
import sqlite3
import stat
import struct
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, NamedTuple

import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..wire import metadata as metadata_limits
from ..wire import sealed as sealing
from ..wire.clock import Clock
from ..wire.metadata import contains_card_number
from . import _durable
from ._seal_pool import SealPool

log = structlog.get_logger("stowpay.reader.vault")

FORMAT = 1
DB_NAME = "vault.db"
TIP_NAME = "vault.tip"
KEY_NAME = "device.key"
LOCK_NAME = "vault.lock"

#: Default capacity; past either limit `Vault.store` raises `VaultFullError`.
DEFAULT_MAX_RECORDS = 100_000
DEFAULT_MAX_BYTES = 512 * 1024 * 1024
#: Most sequences `Vault.advance_sequence` skips while records are held (each is kept as a
#: removed link until the records below it leave); with none held any jump is one change.
MAX_HELD_SKIP = 10_000
#: `advance_sequence` stays well inside SQLite's 64-bit integers.
_MAX_ADVANCE = 1 << 62

CAPTURE_METHODS = frozenset({"automatic", "automatic_async", "manual"})
#: EMV tags that carry track data (56, 57, 9F1F, 9F20, 9F6B) or PIN data (99): never stored.
FORBIDDEN_EMV_TAGS = frozenset({"56", "57", "9F1F", "9F20", "9F6B", "99"})

_KEY_LEN = 32
_MAC_LEN = 32
_NONCE_LEN = 12
_VAULT_ID_LEN = 16
_ID = re.compile(r"[A-Za-z0-9_\-]{1,255}")
_CURRENCY = re.compile(r"[a-z]{3}")
_HEX = re.compile(r"(?:[0-9A-Fa-f]{2})*")
_TAG = re.compile(r"[0-9a-f]{64}")
# Runs of 13-19 digits, possibly in groups split by one space or dash: how a PAN gets typed.
#: Receipt fields that carry the chip's own hex values (see `_prepare`).
RECEIPT_CHIP_FIELDS = frozenset(
    {
        "application_cryptogram",
        "dedicated_file_name",
        "terminal_verification_results",
        "transaction_status_information",
    }
)
#: Room for the pages a store can add beyond its bytes (b-tree splits in the record table,
#: its index and card_uses, an overflow page's slack): 16 of the largest pages SQLite has,
#: far more than one insert can take.
_SPLIT_ROOM = 16 * 65536
_SQLITE_FULL = 13
_SQLITE_BUSY = 5
#: SQLITE_IOERR, SQLITE_CORRUPT, SQLITE_NOTADB: the vault stops and must be reopened.
_STOP_CODES = frozenset({10, 11, 26})
#: What reading a damaged database can raise: SQLite's errors, and (from the sqlite3 module)
#: UnicodeDecodeError when SQLite's own message quotes damaged schema text.
_DB_ERRORS = (sqlite3.Error, UnicodeDecodeError)

#: Durability settings applied to every connection and read back; anything weaker refuses.
_DURABILITY_PRAGMAS = ("journal_mode=WAL", "synchronous=FULL", "secure_delete=ON")
_OTHER_PRAGMAS = ("cell_size_check=ON", "trusted_schema=OFF", "foreign_keys=OFF")

#: Opens the database file in autocommit mode (the vault issues BEGIN and COMMIT itself).
#: The standard library's sqlite3 unless another is injected: the power-cut tests run the
#: vault on a SQLite whose writes go through a simulated disk (see docs/reliability.md).
Connector = Callable[[str], sqlite3.Connection]


def _stdlib_connect(path: str) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None, check_same_thread=False)


# --- errors -----------------------------------------------------------------------------------


class VaultError(Exception):
    """Anything that stops the vault from doing what was asked."""


class VaultDurabilityError(VaultError):
    """SQLite did not accept WAL with synchronous=FULL (and secure_delete); refusing to open."""


class VaultKeyError(VaultError):
    """The device key is missing, malformed, readable by others, or not this vault's key."""


class VaultCorruptError(VaultError):
    """The database file or the vault's state is damaged; nothing can be trusted to store."""


class VaultRollbackError(VaultError):
    """The database is older than the tip file says it must be (a restored copy)."""


class VaultLockedError(VaultError):
    """Another process has this vault open."""


class VaultClosedError(VaultError):
    """The vault was closed, or stopped after an I/O error; open it again."""


class VaultConfigError(VaultError):
    """The vault lacks something it needs to store (the cloud's sealing key)."""


class VaultInputError(VaultError, ValueError):
    """The payment cannot be stored as given (bad field, card data where it must not be)."""


class VaultWriteError(VaultError):
    """A write failed; the payment is not stored and every earlier record is intact.

    `indeterminate` is True only when COMMIT itself failed with an I/O error: the OS may or
    may not have written the commit, so the payment must be declined and the vault reopened
    (SQLite's recovery then decides). `sqlite_error` names the SQLite code, e.g. SQLITE_FULL.
    """

    def __init__(
        self, message: str, *, indeterminate: bool = False, sqlite_error: str | None = None
    ) -> None:
        super().__init__(message)
        self.indeterminate = indeterminate
        self.sqlite_error = sqlite_error


class VaultFullError(VaultError):
    """The vault holds as many records or bytes as it may (OFFLINE_PAYMENTS_DATABASE_TOO_LARGE)."""

    def __init__(self, message: str, *, limit: str) -> None:
        super().__init__(message)
        #: "records" or "bytes"
        self.limit = limit


# --- what goes in and what comes out ----------------------------------------------------------


@dataclass(frozen=True)
class SealingKey:
    """The cloud's X25519 public key (raw 32 bytes) that card data is sealed to."""

    key_id: str
    public_key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.public_key) != 32 or not 0 < len(self.key_id.encode()) <= 255:
            raise VaultConfigError("a sealing key is a key id and a raw 32-byte X25519 key")

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> SealingKey:
        """Read the cloud's published key: ``{"kid", "public_key" (base64), "alg"}``."""
        if doc.get("alg") != sealing.ALGORITHM:
            raise VaultConfigError(
                f"the cloud's key is for {doc.get('alg')!r}, not {sealing.ALGORITHM}"
            )
        try:
            raw = base64.b64decode(str(doc["public_key"]), validate=True)
            return cls(str(doc["kid"]), raw)
        except (KeyError, ValueError) as exc:
            raise VaultConfigError("the cloud's sealing key document is malformed") from exc


@dataclass(frozen=True)
class CardRead:
    """What the reader read from the card. The vault decides what is sealed and what is shown.

    `emv_data` maps EMV tags (hex) to values (hex); it is sealed with the number. There is
    no field for CVC, track data or PIN, and tags carrying them are refused.
    """

    number: str = field(repr=False)
    exp_month: int
    exp_year: int
    brand: str
    read_method: str
    cardholder_name: str | None = None
    emv_data: Mapping[str, str] = field(default_factory=dict, repr=False)
    receipt: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OfflinePayment:
    """A payment confirmed offline, as the reader core hands it to the vault."""

    account: str
    reader: str
    amount: int
    currency: str
    capture_method: str
    card: CardRead
    metadata: Mapping[str, str] = field(default_factory=dict)
    description: str | None = None
    #: the app-local id; made (``pio_`` + uuid4 hex) when not given
    local_id: str | None = None


@dataclass(frozen=True)
class CardDisplay:
    """The card details an offline PaymentIntent may show (`card_present_details`)."""

    brand: str
    last4: str
    exp_month: int
    exp_year: int
    cardholder_name: str | None
    read_method: str
    receipt: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        """The details as a JSON-ready dict (the SDK's OfflineDetails, the forwarded record)."""
        return {
            "brand": self.brand,
            "last4": self.last4,
            "exp_month": self.exp_month,
            "exp_year": self.exp_year,
            "cardholder_name": self.cardholder_name,
            "read_method": self.read_method,
            "receipt": dict(self.receipt),
        }


@dataclass(frozen=True)
class StoredPayment:
    """A payment the vault holds: acknowledged, durable, waiting to be forwarded."""

    sequence: int
    stored_at: float
    account: str
    reader: str
    amount: int
    currency: str
    capture_method: str
    metadata: dict[str, str]
    description: str | None
    local_id: str
    #: the card data sealed to the cloud's key, passed through untouched for forwarding
    sealed: bytes = field(repr=False)
    display: CardDisplay

    @property
    def key_id(self) -> str:
        """The id of the cloud key the card data was sealed to."""
        return sealing.key_id_of(self.sealed)

    @property
    def forward_key(self) -> str:
        """The idempotency key this record is forwarded under, on every attempt."""
        return forward_key(self)


def forward_key_for(account: str, reader: str, sequence: int) -> str:
    """A deterministic idempotency key for (account, reader, sequence).

    Derived, never stored or generated, so it is the same across retries and restarts: the
    cloud answers a repeat from its permanent record of the first.
    """
    digest = hashlib.sha256(
        b"stowpay forward key v1\x00" + sealing.associated_data(account, reader, sequence)
    ).hexdigest()
    return "stowpay_fwd_" + digest[:48]


def forward_key(record: StoredPayment) -> str:
    """The idempotency key of a stored record (see `forward_key_for`)."""
    return forward_key_for(record.account, record.reader, record.sequence)


@dataclass(frozen=True)
class VaultSummary:
    """What the vault holds: every record, quarantined or not (both are money at risk)."""

    count: int
    #: exact sums in minor units, by currency
    amounts: dict[str, int]
    oldest_stored_at: float | None
    quarantined: int
    head_sequence: int


class FindingKind(StrEnum):
    """What `Vault.verify` can find."""

    ALTERED = "altered"
    MISSING = "missing"
    REORDERED = "reordered"
    REPLAYED = "replayed"
    CHAIN_BREAK = "chain_break"
    UNISSUED = "unissued"
    STATE = "state"
    ROLLBACK = "rollback"
    STRUCTURE = "structure"


#: Kinds that put the record at that sequence in quarantine.
RECORD_KINDS = frozenset(
    {
        FindingKind.ALTERED,
        FindingKind.REORDERED,
        FindingKind.REPLAYED,
        FindingKind.CHAIN_BREAK,
        FindingKind.UNISSUED,
    }
)


@dataclass(frozen=True)
class Finding:
    """One problem: a record's (with its sequence) or the vault's (sequence None)."""

    kind: FindingKind
    sequence: int | None
    detail: str


@dataclass(frozen=True)
class QuarantinedRecord:
    """A record that failed a check: kept, reported, never forwarded."""

    sequence: int
    kind: str
    detail: str
    at: float


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of `Vault.verify`; `ok` only when nothing is wrong and nothing is held back."""

    checked: int
    valid: int
    head_sequence: int
    anchor_sequence: int
    findings: tuple[Finding, ...]
    quarantined: tuple[QuarantinedRecord, ...]
    newly_quarantined: tuple[int, ...]

    @property
    def ok(self) -> bool:
        """True when every record verified and none is in quarantine."""
        return not self.findings and not self.quarantined

    def of_kind(self, kind: FindingKind) -> list[Finding]:
        """The findings of one kind."""
        return [f for f in self.findings if f.kind == kind]

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form, for `stowpay reader vault verify --json`."""
        return {
            "ok": self.ok,
            "checked": self.checked,
            "valid": self.valid,
            "head_sequence": self.head_sequence,
            "anchor_sequence": self.anchor_sequence,
            "findings": [
                {"kind": str(f.kind), "sequence": f.sequence, "detail": f.detail}
                for f in self.findings
            ],
            "quarantined": [
                {"sequence": q.sequence, "kind": q.kind, "detail": q.detail, "at": q.at}
                for q in self.quarantined
            ],
            "newly_quarantined": list(self.newly_quarantined),
        }


# --- encoding and keys ------------------------------------------------------------------------

Value = int | float | bytes | None


class _Malformed(Exception):
    """A stored value does not have the shape the vault writes."""


def _enc(*values: Value) -> bytes:
    """Unambiguous bytes for typed values: a type byte, then a fixed or length-prefixed body."""
    out: list[bytes] = []
    for v in values:
        if type(v) is bytes:
            out += (b"B", len(v).to_bytes(4, "big"), v)
        elif type(v) is int:
            if not -(1 << 63) <= v < (1 << 63):
                raise _Malformed("integer out of range")
            out += (b"I", v.to_bytes(8, "big", signed=True))
        elif type(v) is float:
            out += (b"F", struct.pack(">d", v))
        elif v is None:
            out.append(b"N")
        else:
            raise _Malformed(f"unexpected value type {type(v).__name__}")
    return b"".join(out)


def _mac(key: bytes, *parts: bytes) -> bytes:
    return hmac.new(key, b"".join(parts), hashlib.sha256).digest()


def _hkdf(secret: bytes, info: bytes, salt: bytes | None = None) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=_KEY_LEN, salt=salt, info=info).derive(secret)


class _Keys:
    """Keys derived from the device key; the device key itself stays here only."""

    def __init__(self, device_key: bytes) -> None:
        self._device = device_key
        self.mac = _hkdf(device_key, b"stowpay vault chain mac v1")

    def display(self, vault_id: bytes, sequence: int) -> bytes:
        return _hkdf(
            self._device,
            b"stowpay vault display v1" + sequence.to_bytes(8, "big", signed=True),
            salt=vault_id,
        )


# Columns of `records` in canonical order, with the SQLite storage type each must have.
_RECORD_COLUMNS: tuple[tuple[str, str], ...] = (
    ("sequence", "integer"),
    ("prev_mac", "blob"),
    ("stored_at", "real"),
    ("account", "text"),
    ("reader", "text"),
    ("amount", "integer"),
    ("currency", "text"),
    ("capture_method", "text"),
    ("metadata", "text"),
    ("description", "text?"),
    ("local_id", "text"),
    ("sealed", "blob"),
    ("display", "blob"),
    ("mac", "blob"),
)
_SELECT_RECORD = (
    "SELECT "
    + ", ".join(name for name, _ in _RECORD_COLUMNS)
    + ", "
    + " || ',' || ".join(f"typeof({name})" for name, _ in _RECORD_COLUMNS)
    + " FROM records"
)


class _Row(NamedTuple):
    """A record as stored: text columns as raw bytes, nothing decoded or decrypted."""

    sequence: int
    prev_mac: bytes
    stored_at: float
    account: bytes
    reader: bytes
    amount: int
    currency: bytes
    capture_method: bytes
    metadata: bytes
    description: bytes | None
    local_id: bytes
    sealed: bytes
    display: bytes
    mac: bytes

    def canonical(self, vault_id: bytes, sequence: int | None = None) -> bytes:
        """The bytes the MAC covers (after prev_mac); `sequence` to test another position."""
        return b"stowpay vault record v1\x00" + _enc(
            vault_id,
            self.sequence if sequence is None else sequence,
            self.stored_at,
            self.account,
            self.reader,
            self.amount,
            self.currency,
            self.capture_method,
            self.metadata,
            self.description,
            self.local_id,
            self.sealed,
            self.display,
        )

    def mac_ok(self, key: bytes, vault_id: bytes, sequence: int | None = None) -> bool:
        expected = _mac(key, self.prev_mac, self.canonical(vault_id, sequence))
        return hmac.compare_digest(expected, self.mac)


def _row_from(raw: tuple[Any, ...]) -> _Row | int:
    """A well-formed row, or just its sequence when a column has the wrong type or size."""
    *values, types = raw
    sequence = values[0]
    expected = []
    for (_, kind), value in zip(_RECORD_COLUMNS, values, strict=True):
        if kind == "text?":
            expected.append("null" if value is None else "text")
        else:
            expected.append(kind)
    if types != ",".join(expected).encode():
        return int(sequence)
    row = _Row(*values)
    if len(row.prev_mac) != _MAC_LEN or len(row.mac) != _MAC_LEN:
        return row.sequence
    return row


@dataclass(frozen=True)
class _State:
    format: int
    vault_id: bytes
    created_at: float
    key_check: bytes
    head: int
    head_mac: bytes
    anchor: int
    anchor_mac: bytes
    removed_total: int
    removed_count: int
    removed_xor: bytes
    state_mac: bytes

    def body(self) -> bytes:
        return b"stowpay vault state v1\x00" + _enc(
            self.format,
            self.vault_id,
            self.created_at,
            self.head,
            self.head_mac,
            self.anchor,
            self.anchor_mac,
            self.removed_total,
            self.removed_count,
            self.removed_xor,
        )

    def sealed_with(self, key: bytes, **changes: Any) -> _State:
        """A copy with `changes` applied and its MAC recomputed."""
        values = {**self.__dict__, **changes}
        new = _State(**values)
        try:
            values["state_mac"] = _mac(key, new.body())
        except _Malformed as exc:
            # Only a damaged state gets here (salvage mode reads past one): a counter at the
            # end of 64 bits that one more removal would overflow.
            raise VaultCorruptError(f"the vault's state cannot be updated: {exc}") from exc
        return _State(**values)


_STATE_COLUMNS = (
    "format",
    "vault_id",
    "created_at",
    "key_check",
    "head_sequence",
    "head_mac",
    "anchor_sequence",
    "anchor_mac",
    "removed_total",
    "removed_count",
    "removed_xor",
    "state_mac",
)
_STATE_TYPES = b"integer,blob,real,blob,integer,blob,integer,blob,integer,integer,blob,blob"

_SCHEMA = (
    """CREATE TABLE vault_state (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        format INTEGER NOT NULL,
        vault_id BLOB NOT NULL,
        created_at REAL NOT NULL,
        key_check BLOB NOT NULL,
        head_sequence INTEGER NOT NULL,
        head_mac BLOB NOT NULL,
        anchor_sequence INTEGER NOT NULL,
        anchor_mac BLOB NOT NULL,
        removed_total INTEGER NOT NULL,
        removed_count INTEGER NOT NULL,
        removed_xor BLOB NOT NULL,
        state_mac BLOB NOT NULL
    ) STRICT""",
    """CREATE TABLE records (
        sequence INTEGER PRIMARY KEY,
        prev_mac BLOB NOT NULL,
        stored_at REAL NOT NULL,
        account TEXT NOT NULL,
        reader TEXT NOT NULL,
        amount INTEGER NOT NULL,
        currency TEXT NOT NULL,
        capture_method TEXT NOT NULL,
        metadata TEXT NOT NULL,
        description TEXT,
        local_id TEXT NOT NULL,
        sealed BLOB NOT NULL,
        display BLOB NOT NULL,
        mac BLOB NOT NULL
    ) STRICT""",
    # Lets summary() read amounts without walking every record's blobs.
    "CREATE INDEX records_by_currency ON records (currency, amount, stored_at)",
    """CREATE TABLE removed_links (
        sequence INTEGER PRIMARY KEY,
        mac BLOB NOT NULL
    ) STRICT""",
    # A local annotation, not covered by any MAC: clearing it only makes pending() re-check
    # (and re-quarantine) the record; adding to it can only hold a record back.
    """CREATE TABLE quarantine (
        sequence INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        detail TEXT NOT NULL,
        at REAL NOT NULL
    ) STRICT""",
)
#: The card tag of each held record (see `Vault.card_uses`); made at open in older vaults.
#: A local annotation like ``quarantine``: it feeds the merchant's per-card limit only, so
#: it is not part of the chain, and it leaves with its record. One b-tree keyed by tag, so a
#: store writes one more page, not two; a removal scans it once per batch.
_CARD_USES_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS card_uses (
        tag BLOB NOT NULL,
        sequence INTEGER NOT NULL,
        PRIMARY KEY (tag, sequence)
    ) STRICT, WITHOUT ROWID""",
)
_INSERT_RECORD = (
    f"INSERT INTO records ({', '.join(n for n, _ in _RECORD_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(_RECORD_COLUMNS))})"
)
_SELECT_STATE = (
    f"SELECT {', '.join(_STATE_COLUMNS)}, "
    + " || ',' || ".join(f"typeof({c})" for c in _STATE_COLUMNS)
    + " FROM vault_state WHERE id = 1"
)
_UPDATE_STATE = (
    "UPDATE vault_state SET " + ", ".join(f"{c} = ?" for c in _STATE_COLUMNS) + " WHERE id = 1"
)


@dataclass(frozen=True)
class _Tip:
    vault_id: bytes
    head: int
    head_mac: bytes
    removed_total: int
    state_mac: bytes


# --- the vault --------------------------------------------------------------------------------


class Vault:
    """The offline vault of one reader. Open it with `Vault.open`; thread-safe."""

    def __init__(
        self,
        *,
        directory: Path,
        conn: sqlite3.Connection,
        lock: _durable.DirectoryLock,
        keys: _Keys,
        clock: Clock,
        max_records: int,
        max_bytes: int,
        sealing_key: SealingKey | None,
        salvage: bool,
        tip_every: int,
        write_hook: Callable[[str], None] | None = None,
    ) -> None:
        self.directory = directory
        self._write_hook = write_hook
        self._conn: sqlite3.Connection | None = conn
        self._lock_file = lock
        self._keys = keys
        self._clock = clock
        self.max_records = max_records
        self.max_bytes = max_bytes
        self._sealing_key = sealing_key
        #: Ephemeral keys for the sealing key made ahead, off the confirm's path.
        self._seal_pool = SealPool()
        if sealing_key is not None:
            self._seal_pool.use_key(sealing_key.public_key)
        self._salvage = salvage
        self._tip_every = tip_every
        self._stores_since_tip = 0
        self._tip_dirty = False
        #: Why store() is refused (salvage mode), or None.
        self._store_refused: VaultError | None = None
        self._failed: str | None = None
        self._mutex = threading.RLock()
        #: What `summary` answers, kept in step by `store` and dropped by every other write
        #: (recomputed on the next call), so a confirm does not walk every held record.
        self._summary: VaultSummary | None = None
        #: An upper bound of the bytes in use (see `_room_for`), or None to ask SQLite;
        #: dropped by every write but a store, like `_summary`.
        self._used_bound: int | None = None
        self._key_checks: dict[bytes, bytes] = {}
        #: The latest state this vault computed a MAC for (see `_checked_state`).
        self._last_sealed: _State | None = None
        #: The report of the verify run at open.
        self.last_report: VerifyReport | None = None

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        *,
        clock: Clock,
        device_key_path: str | os.PathLike[str] | None = None,
        max_records: int = DEFAULT_MAX_RECORDS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        sealing_key: SealingKey | None = None,
        first_sequence: int = 1,
        salvage: bool = False,
        tip_every: int = 0,
        check_integrity: bool = True,
        connector: Connector = _stdlib_connect,
        write_hook: Callable[[str], None] | None = None,
    ) -> Vault:
        """Open (or create) the vault in `directory`, check it, and quarantine bad records.

        Raises `VaultDurabilityError` if SQLite will not run WAL + synchronous=FULL,
        `VaultKeyError` for a missing, exposed or wrong device key, `VaultCorruptError` when
        the file or the vault's state is damaged, `VaultRollbackError` when the tip file shows
        an older copy, `VaultLockedError` when another process has it open. `salvage=True`
        opens a vault with state or rollback findings so what it holds can be forwarded;
        `store` then refuses. `first_sequence` applies only to a new vault (a replacement
        vault on a reader must start above every sequence the cloud has seen).
        `tip_every=N` also writes the tip file every N stores (see the module docstring).
        `connector` opens the SQLite connection (see `Connector`); the pragmas are applied
        and checked on it all the same.
        `write_hook`, when given, is called with a name just before and just after each
        durable write (``vault.commit``/``vault.committed``, ``vault.tip``/``vault.tip_written``):
        the simulator raises from it to crash the reader at that boundary (`stowpay.sim`).
        """
        if (
            not 1 <= first_sequence <= _MAX_ADVANCE
            or max_records < 1
            or max_bytes < 1
            or tip_every < 0
        ):
            raise VaultConfigError("first_sequence, max_records and max_bytes must be positive")
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            lock = _durable.DirectoryLock.acquire(root / LOCK_NAME)
        except BlockingIOError:
            raise VaultLockedError(f"the vault in {root} is open in another process") from None
        conn: sqlite3.Connection | None = None
        try:
            db_path = root / DB_NAME
            if not db_path.exists():
                # Made here so it is 0600 from the start (SQLite gives -wal and -shm the same).
                os.close(os.open(db_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            conn = _connect(db_path, connector)
            is_new = _is_empty(conn)
            key_path = Path(device_key_path) if device_key_path is not None else root / KEY_NAME
            keys = _Keys(_load_device_key(key_path, create=is_new))
            vault = cls(
                directory=root,
                conn=conn,
                lock=lock,
                keys=keys,
                clock=clock,
                max_records=max_records,
                max_bytes=max_bytes,
                sealing_key=sealing_key,
                salvage=salvage,
                tip_every=tip_every,
                write_hook=write_hook,
            )
            if is_new:
                vault._create(first_sequence)
            vault._start(check_integrity=check_integrity)
            return vault
        except BaseException:
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            lock.release()
            raise

    def _create(self, first_sequence: int) -> None:
        conn = self._connection()
        vault_id = os.urandom(_VAULT_ID_LEN)
        genesis = _mac(self._keys.mac, b"stowpay vault genesis v1\x00", vault_id)
        state = _State(
            format=FORMAT,
            vault_id=vault_id,
            created_at=float(self._clock.now()),
            key_check=self._key_check(vault_id),
            head=first_sequence - 1,
            head_mac=genesis,
            anchor=first_sequence - 1,
            anchor_mac=genesis,
            removed_total=0,
            removed_count=0,
            removed_xor=bytes(_MAC_LEN),
            state_mac=b"",
        ).sealed_with(self._keys.mac)
        try:
            conn.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA + _CARD_USES_SCHEMA:
                conn.execute(statement)
            conn.execute(
                f"INSERT INTO vault_state (id, {', '.join(_STATE_COLUMNS)}) "
                f"VALUES (1, {', '.join('?' * len(_STATE_COLUMNS))})",
                _state_values(state),
            )
            conn.execute(f"PRAGMA user_version = {FORMAT}")
            conn.execute("COMMIT")
        except _DB_ERRORS as exc:
            raise VaultWriteError(
                f"could not create the vault: {exc}", sqlite_error=_code_name(exc)
            ) from exc
        # SQLite syncs the WAL but not the directory entry of a new database file.
        _durable.fsync_directory(self.directory)

    def _start(self, *, check_integrity: bool) -> None:
        with self._reading() as conn:
            if check_integrity:
                problems = _integrity_problems(conn)
                if problems:
                    raise VaultCorruptError("integrity_check: " + "; ".join(problems[:5]))
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version != FORMAT:
                raise VaultCorruptError(f"unknown vault format {version!r}")
            has_card_uses = conn.execute(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'card_uses'"
            ).fetchone()[0]
        if not has_card_uses:
            with self._mutex, self._transaction() as conn:
                for statement in _CARD_USES_SCHEMA:
                    conn.execute(statement)
        with self._reading() as conn:
            state = self._read_state()
            removed = self._read_removed()
            findings = self._state_findings(state, removed) + self._tip_findings(state, removed)
        if findings:
            if not self._salvage:
                first = findings[0]
                rollback = first.kind == FindingKind.ROLLBACK
                error = VaultRollbackError if rollback else VaultCorruptError
                raise error("; ".join(f.detail for f in findings))
            self._store_refused = VaultRollbackError(
                "opened in salvage mode: " + "; ".join(f.detail for f in findings)
            )
        else:
            # Ratchet the tip up to what was just checked, narrowing the rollback window.
            self._write_tip()
        self.last_report = self.verify(integrity=False)
        if not self.last_report.ok:
            log.warning(
                "vault_findings",
                directory=str(self.directory),
                findings=len(self.last_report.findings),
                quarantined=len(self.last_report.quarantined),
            )

    # -- public operations ---------------------------------------------------------------------

    def set_sealing_key(self, key: SealingKey) -> None:
        """Use `key` (the cloud's current public key) for payments stored from now on."""
        with self._mutex:
            self._sealing_key = key
            self._seal_pool.use_key(key.public_key)

    def store(self, payment: OfflinePayment, *, card_tag: str | None = None) -> StoredPayment:
        """Store a payment durably; return only after COMMIT returned.

        `card_tag` (a keyed hash of the card number, never the number) is kept with the record
        in the same transaction, for `card_uses`, and leaves with it.

        Raises `VaultFullError` when over capacity, `VaultWriteError` for any write failure
        (a full disk included) — in both cases nothing of the payment is kept and every earlier
        record is intact — `VaultInputError` for a payment that cannot be stored as given.
        """
        sealed_plain, display, metadata_text = _prepare(payment)
        local_id = payment.local_id or new_local_id(lambda: uuid.uuid4().int)
        problem = _id_problem(local_id)
        if problem is not None:
            raise VaultInputError(problem)
        with self._mutex:
            if self._store_refused is not None:
                raise self._store_refused
            key = self._sealing_key
            if key is None:
                raise VaultConfigError("no sealing key: fetch the cloud's public key first")
            if card_tag is not None and not _TAG.fullmatch(card_tag):
                raise VaultInputError("a card tag is 64 hex digits (a keyed hash)")
            cached = self._summary
            used_bound = self._used_bound
            with self._transaction() as conn:
                state = self._checked_state()
                live = state.head - state.anchor - state.removed_count
                if live >= self.max_records:
                    raise VaultFullError(
                        f"the vault holds {live} records, its limit", limit="records"
                    )
                sequence = state.head + 1
                stored_at = float(self._clock.now())
                sealed_blob = sealing.seal(
                    key.public_key,
                    key.key_id,
                    sealed_plain,
                    sealing.associated_data(payment.account, payment.reader, sequence),
                    ephemeral=self._seal_pool.take(key.public_key),
                )
                display_blob = self._encrypt_display(
                    state.vault_id, sequence, payment, local_id, display
                )
                row = _Row(
                    sequence=sequence,
                    prev_mac=state.head_mac,
                    stored_at=stored_at,
                    account=payment.account.encode(),
                    reader=payment.reader.encode(),
                    amount=payment.amount,
                    currency=payment.currency.encode(),
                    capture_method=payment.capture_method.encode(),
                    metadata=metadata_text.encode(),
                    description=(
                        None if payment.description is None else payment.description.encode()
                    ),
                    local_id=local_id.encode(),
                    sealed=sealed_blob,
                    display=display_blob,
                    mac=b"",
                )
                size = sum(len(v) for v in row if isinstance(v, bytes)) + 128
                # The page count is asked of SQLite only when the bound kept since it was
                # last asked (each store adds its size and room for page splits) comes near
                # the limit: far from it, no store can cross it.
                growth = size + _SPLIT_ROOM
                if used_bound is None or used_bound + growth > self.max_bytes:
                    used_bound = _used_bytes(conn)
                    if used_bound + size > self.max_bytes:
                        raise VaultFullError(
                            f"the vault would exceed its {self.max_bytes} bytes", limit="bytes"
                        )
                used_bound += growth
                mac = _mac(self._keys.mac, row.prev_mac, row.canonical(state.vault_id))
                row = row._replace(mac=mac)
                conn.execute(_INSERT_RECORD, _sql_values(row))
                if card_tag is not None:
                    conn.execute(
                        "INSERT INTO card_uses (tag, sequence) VALUES (?, ?)",
                        (bytes.fromhex(card_tag), sequence),
                    )
                self._save_state(conn, state, head=sequence, head_mac=mac)
            # Committed: from here on nothing may raise, or the POS would decline a payment
            # that is stored and will be charged.
            self._used_bound = used_bound
            if cached is not None:
                amounts = dict(cached.amounts)
                amounts[payment.currency] = amounts.get(payment.currency, 0) + payment.amount
                oldest = cached.oldest_stored_at
                self._summary = VaultSummary(
                    count=cached.count + 1,
                    amounts=dict(sorted(amounts.items())),
                    oldest_stored_at=stored_at if oldest is None else min(oldest, stored_at),
                    quarantined=cached.quarantined,
                    head_sequence=sequence,
                )
            self._stores_since_tip += 1
            if self._tip_every and self._stores_since_tip >= self._tip_every:
                self._write_tip_quietly()
            return StoredPayment(
                sequence=sequence,
                stored_at=stored_at,
                account=payment.account,
                reader=payment.reader,
                amount=payment.amount,
                currency=payment.currency,
                capture_method=payment.capture_method,
                metadata=dict(payment.metadata),
                description=payment.description,
                local_id=local_id,
                sealed=sealed_blob,
                display=display,
            )

    def pending(self, limit: int | None = None, *, after: int | None = None) -> list[StoredPayment]:
        """Records to forward, lowest sequence first (above `after` if given), display details
        decrypted.

        Each is re-checked (its MAC, its link to the record before it, that it was never
        removed); one that fails is quarantined here and left out.
        """
        if limit is not None and limit < 1:
            return []
        with self._reading() as conn:
            state, removed = self._trusted_state(allow_salvage=True)
            out: list[StoredPayment] = []
            bad: list[Finding] = []
            after = -(1 << 63) if after is None else after
            prev: _Row | None = None
            while limit is None or len(out) < limit:
                want = 256 if limit is None else max(limit - len(out), 1)
                rows = conn.execute(
                    _SELECT_RECORD + " WHERE sequence > ? AND sequence NOT IN "
                    "(SELECT sequence FROM quarantine) ORDER BY sequence LIMIT ?",
                    (after, want),
                ).fetchall()
                if not rows:
                    break
                for raw in rows:
                    row = _row_from(raw)
                    seq = row if isinstance(row, int) else row.sequence
                    after = seq
                    if isinstance(row, int):
                        bad.append(_altered(seq, "a column has the wrong type or size"))
                        prev = None
                        continue
                    if prev is not None and prev.sequence == seq - 1:
                        pred: bytes | None = prev.mac
                    else:
                        pred = self._link_mac(state, removed, seq - 1)
                    finding = self._check_row(row, state, removed, pred)
                    if finding is None:
                        try:
                            out.append(self._to_payment(row, state.vault_id))
                        except _Malformed as exc:
                            finding = _altered(seq, str(exc))
                    if finding is not None:
                        bad.append(finding)
                        prev = None
                    else:
                        prev = row
            if bad:
                self._quarantine(bad)
            return out

    def remove(self, sequence: int) -> bool:
        """Delete a record whose outcome the cloud confirmed; False if it was already gone.

        Any record may go; the chain stays verifiable (see the module docstring). A quarantined
        record may be removed too, once an operator has dealt with it.
        """
        return bool(self.remove_many([sequence]))

    def remove_many(self, sequences: Iterable[int]) -> list[int]:
        """Delete a batch of confirmed records in one transaction; the ones removed now.

        Sequences already removed are skipped (a retried removal is harmless); one never
        issued raises `VaultInputError` and removes nothing. The tip file is rewritten durably
        afterwards; if that fails, `VaultWriteError` says so — the removal itself is committed,
        and the next removal or close writes the tip again.
        """
        wanted = sorted(set(sequences))
        with self._mutex:
            with self._transaction() as conn:
                state, _ = self._trusted_state(allow_salvage=True)
                links: list[tuple[int, bytes]] = []
                for seq in wanted:
                    hit = conn.execute(
                        "SELECT mac FROM records WHERE sequence = ?", (seq,)
                    ).fetchone()
                    if hit is None:
                        if not 0 < seq <= state.head:
                            raise VaultInputError(f"sequence {seq} was never issued")
                        continue
                    mac = hit[0]
                    # A damaged mac column (the record is quarantined for it) links to nothing.
                    ok = isinstance(mac, bytes) and len(mac) == _MAC_LEN
                    links.append((seq, mac if ok else bytes(_MAC_LEN)))
                if links:
                    done = [(seq,) for seq, _ in links]
                    conn.executemany("DELETE FROM records WHERE sequence = ?", done)
                    conn.executemany("DELETE FROM quarantine WHERE sequence = ?", done)
                    conn.execute(
                        "DELETE FROM card_uses WHERE sequence IN (SELECT value FROM json_each(?))",
                        (json.dumps([seq for seq, _ in links]),),
                    )
                    self._absorb_removals(conn, state, links)
            if links or self._tip_dirty:
                self._write_tip()
            return [seq for seq, _ in links]

    def advance_sequence(self, to: int) -> int:
        """Move the counter up to `to` (the next payment gets `to + 1`); how many were skipped.

        For a vault restored from an older copy (the whole directory, which no local check can
        tell from the genuine one): its counter is behind what the cloud has already seen from
        this reader, and its next payments would reuse sequences the cloud holds other records
        under (refused as conflicts: acknowledged at the till, never charged). The reader moves
        the counter past the cloud's high water before storing anything more.

        Never goes backwards: a `to` at or below the counter changes nothing (0). The skipped
        sequences count as removed, so `verify` finds none missing and a record turning up
        under one of them is a replay: with no record held, the anchor moves with the counter
        (one state change, whatever the jump); with records held, each skipped sequence is kept
        as a removed link (at most `MAX_HELD_SKIP`). One transaction, the state row re-MACed,
        then the tip file is written, so a copy from before the advance is refused at open.

        Raises `VaultInputError` for `to` out of range or a longer jump while records are held
        (forward them first), the salvage refusal (`VaultRollbackError`) in salvage mode,
        `VaultCorruptError` for an altered state, `VaultWriteError` if the write fails.
        """
        if type(to) is not int or not 0 <= to < _MAX_ADVANCE:
            raise VaultInputError(f"a sequence to advance to is an integer in [0, {_MAX_ADVANCE})")
        with self._mutex:
            if self._store_refused is not None:
                raise self._store_refused
            if to <= self.head_sequence:
                return 0
            with self._transaction() as conn:
                state, _ = self._trusted_state(allow_salvage=False)
                if to <= state.head:
                    return 0
                skipped = to - state.head
                to_mac = self._skip_mac(state.vault_id, to)
                if state.anchor == state.head:
                    self._save_state(
                        conn,
                        state,
                        head=to,
                        head_mac=to_mac,
                        anchor=to,
                        anchor_mac=to_mac,
                        removed_total=state.removed_total + skipped,
                    )
                else:
                    if skipped > MAX_HELD_SKIP:
                        raise VaultInputError(
                            f"cannot skip {skipped} sequences while records are held (at most "
                            f"{MAX_HELD_SKIP}); forward the held records first"
                        )
                    links = [
                        (s, self._skip_mac(state.vault_id, s)) for s in range(state.head + 1, to)
                    ]
                    links.append((to, to_mac))
                    moved = self._save_state(conn, state, head=to, head_mac=to_mac)
                    self._absorb_removals(conn, moved, links)
            log.warning(
                "vault_sequence_advanced",
                directory=str(self.directory),
                head=to - skipped,
                to=to,
            )
            self._write_tip_quietly()
            return skipped

    def _skip_mac(self, vault_id: bytes, sequence: int) -> bytes:
        """The link value of a sequence skipped by `advance_sequence` (no record has it)."""
        return _mac(self._keys.mac, b"stowpay vault skipped v1\x00", _enc(vault_id, sequence))

    def verify(self, *, integrity: bool = True) -> VerifyReport:
        """Check everything without decrypting anything; quarantine and report what fails.

        With `integrity`, `PRAGMA integrity_check` runs first. The state row, the removed set,
        the tip file, every record's MAC and every link are checked; see `FindingKind`.
        """
        with self._reading() as conn:
            findings: list[Finding] = []
            if integrity:
                findings += [
                    Finding(FindingKind.STRUCTURE, None, p) for p in _integrity_problems(conn)
                ]
            state = self._read_state()
            removed = self._read_removed()
            findings += self._state_findings(state, removed)
            findings += self._tip_findings(state, removed)
            record_findings, checked, valid = self._record_findings(state, removed)
            findings += record_findings
            newly = self._quarantine([f for f in findings if f.kind in RECORD_KINDS])
            return VerifyReport(
                checked=checked,
                valid=valid,
                head_sequence=state.head,
                anchor_sequence=state.anchor,
                findings=tuple(findings),
                quarantined=tuple(self.quarantined()),
                newly_quarantined=tuple(newly),
            )

    def quarantined(self) -> list[QuarantinedRecord]:
        """Records held back from forwarding, with why and since when."""
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT sequence, kind, detail, at FROM quarantine ORDER BY sequence"
            ).fetchall()
            return [
                QuarantinedRecord(_int(s), _text(k), _text(d), _float(a)) for s, k, d, a in rows
            ]

    def summary(self) -> VaultSummary:
        """Count and exact amounts by currency of every record held, and the oldest one's time.

        Computed from the records once, then kept up to date by `store`; any other write
        (a removal, a quarantine) has it computed again.
        """
        with self._reading() as conn:
            cached = self._summary
            if cached is not None:
                return VaultSummary(**{**cached.__dict__, "amounts": dict(cached.amounts)})
            rows = conn.execute(
                "SELECT CAST(currency AS TEXT), count(*), sum(amount), min(stored_at) "
                "FROM records GROUP BY 1 ORDER BY 1"
            ).fetchall()
            quarantined = conn.execute("SELECT count(*) FROM quarantine").fetchone()[0]
            state = self._read_state()
            oldest = [_float(t) for *_, t in rows]
            summary = VaultSummary(
                count=sum(_int(n) for _, n, _, _ in rows),
                amounts={_text(cur): _int(total) for cur, _, total, _ in rows},
                oldest_stored_at=min(oldest) if oldest else None,
                quarantined=_int(quarantined),
                head_sequence=state.head,
            )
            self._summary = summary
            return replace(summary, amounts=dict(summary.amounts))

    def card_uses(self, card_tag: str) -> int:
        """How many held records were stored with this card tag (see `store`)."""
        with self._reading() as conn:
            if not _TAG.fullmatch(card_tag):
                raise VaultInputError("a card tag is 64 hex digits (a keyed hash)")
            row = conn.execute(
                "SELECT count(*) FROM card_uses WHERE tag = ?", (bytes.fromhex(card_tag),)
            )
            return _int(row.fetchone()[0])

    def note_card_uses(self, uses: Mapping[str, Iterable[int]]) -> int:
        """Tag records already held (card tag -> sequences), for uses counted elsewhere before.

        Sequences no longer held, or tagged already, are skipped; returns how many were tagged.
        """
        pairs = [(seq, tag) for tag, seqs in uses.items() if _TAG.fullmatch(tag) for seq in seqs]
        if not pairs:
            return 0
        with self._mutex, self._transaction() as conn:
            before = conn.total_changes
            conn.executemany(
                "INSERT INTO card_uses (tag, sequence) SELECT ?, sequence FROM records "
                "WHERE sequence = ? AND NOT EXISTS "
                "(SELECT 1 FROM card_uses WHERE sequence = records.sequence)",
                [(bytes.fromhex(tag), seq) for seq, tag in pairs],
            )
            return int(conn.total_changes - before)

    @property
    def head_sequence(self) -> int:
        """The highest sequence ever issued (the next payment gets one more)."""
        with self._reading():
            return self._read_state().head

    @property
    def vault_id(self) -> str:
        """This vault's random id, in hex."""
        with self._reading():
            return self._read_state().vault_id.hex()

    @property
    def store_refused(self) -> str | None:
        """Why `store` refuses (a vault opened with `salvage=True` after findings), or None."""
        return None if self._store_refused is None else str(self._store_refused)

    def durability(self) -> dict[str, Any]:
        """The settings SQLite is actually running with, read back from the connection."""
        with self._reading() as conn:
            return _read_durability(conn)

    def checkpoint(self) -> None:
        """Move the WAL into the database and truncate it (old frames leave the disk)."""
        with self._mutex:
            try:
                self._connection().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except _DB_ERRORS as exc:
                raise VaultWriteError(
                    f"checkpoint failed: {exc}", sqlite_error=_code_name(exc)
                ) from exc

    def close(self) -> None:
        """Write the tip file, checkpoint, and release the vault (idempotent).

        Raises `VaultWriteError` (after releasing everything) if the tip could not be written.
        """
        self._seal_pool.close()
        with self._mutex:
            conn = self._conn
            if conn is None:
                return
            tip_error: VaultError | None = None
            try:
                if self._failed is None:
                    # A salvaged vault keeps the tip that shows what it was rolled back from.
                    if self._store_refused is None:
                        try:
                            self._write_tip()
                        except VaultError as exc:
                            tip_error = exc
                    with contextlib.suppress(*_DB_ERRORS):
                        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            finally:
                self._conn = None
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
                self._lock_file.release()
            if tip_error is not None:
                raise VaultWriteError(f"the tip file was not written at close: {tip_error}")

    def abandon(self) -> None:
        """Let go of the files as a crashed process would: the connection and the lock are
        dropped and nothing more is written (no tip file, unlike `close`); a transaction left
        open is lost. For simulators that crash a reader and reopen its files in-process."""
        with self._mutex:
            conn, self._conn = self._conn, None
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._lock_file.release()

    def __enter__(self) -> Vault:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals: transactions and state -----------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._failed is not None:
            raise VaultClosedError(f"the vault stopped after an I/O error ({self._failed})")
        if self._conn is None:
            raise VaultClosedError("the vault is closed")
        return self._conn

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """Hold the vault; a damaged database raises `VaultCorruptError`, never a raw error."""
        with self._mutex:
            conn = self._connection()
            try:
                yield conn
            except _DB_ERRORS as exc:
                raise VaultCorruptError(f"cannot read the vault: {exc}") from exc

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE … COMMIT; any SQLite error becomes `VaultWriteError` after rollback."""
        conn = self._connection()
        # Whatever this writes, the cached summary and size bound may no longer match it.
        self._summary = None
        self._used_bound = None
        committing = False
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield conn
            committing = True
            self._boundary("vault.commit")
            conn.execute("COMMIT")
        except BaseException as exc:
            self._rollback(conn, exc)
            if isinstance(exc, _DB_ERRORS):
                code = exc.sqlite_errorcode & 0xFF if isinstance(exc, sqlite3.Error) else None
                indeterminate = committing and code not in (_SQLITE_FULL, _SQLITE_BUSY)
                raise VaultWriteError(
                    f"write failed, nothing stored: {exc}",
                    indeterminate=indeterminate,
                    sqlite_error=_code_name(exc),
                ) from exc
            raise
        self._boundary("vault.committed")

    def _boundary(self, name: str) -> None:
        """Tell the write hook (a simulator's crash point) where the vault is."""
        if self._write_hook is not None:
            self._write_hook(name)

    def _rollback(self, conn: sqlite3.Connection, exc: BaseException) -> None:
        code = exc.sqlite_errorcode & 0xFF if isinstance(exc, sqlite3.Error) else None
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error as rollback_exc:
            self._fail(f"rollback failed: {rollback_exc}")
            return
        # After an I/O error the page cache may not match the disk: stop rather than go on
        # (a full disk or a busy lock is a clean refusal, not an I/O error).
        if code in _STOP_CODES:
            self._fail(str(exc))

    def _fail(self, reason: str) -> None:
        log.error("vault_stopped", directory=str(self.directory), reason=reason)
        self._failed = reason
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._lock_file.release()

    def _read_state(self) -> _State:
        raw = self._connection().execute(_SELECT_STATE).fetchone()
        if raw is None or raw[-1] != _STATE_TYPES:
            raise VaultCorruptError("the vault's state row is missing or malformed")
        state = _State(*raw[:-1])
        sizes = (state.key_check, state.head_mac, state.anchor_mac, state.removed_xor)
        if len(state.vault_id) != _VAULT_ID_LEN or any(len(v) != _MAC_LEN for v in sizes):
            raise VaultCorruptError("the vault's state row is malformed (a value's size)")
        if not hmac.compare_digest(state.key_check, self._key_check(state.vault_id)):
            raise VaultKeyError("the device key is not the key this vault was made with")
        return state

    def _checked_state(self, *, allow_salvage: bool = False) -> _State:
        state = self._read_state()
        # A row equal, field for field, to one this vault sealed itself carries that MAC:
        # checking it again would prove nothing more (and costs an HMAC per store).
        authentic = state == self._last_sealed or hmac.compare_digest(
            _mac(self._keys.mac, state.body()), state.state_mac
        )
        if not authentic and not (allow_salvage and self._salvage):
            raise VaultCorruptError("the vault's state row fails its MAC")
        return state

    def _trusted_state(self, *, allow_salvage: bool) -> tuple[_State, dict[int, bytes]]:
        """The state and the removed set, refusing (outside salvage) if either was altered."""
        state = self._read_state()
        removed = self._read_removed()
        problems = self._state_findings(state, removed)
        if problems and not (allow_salvage and self._salvage):
            raise VaultCorruptError("; ".join(f.detail for f in problems))
        return state, removed

    def _save_state(self, conn: sqlite3.Connection, state: _State, **changes: Any) -> _State:
        new = state.sealed_with(self._keys.mac, **changes)
        conn.execute(_UPDATE_STATE, _state_values(new))
        self._last_sealed = new
        return new

    def _key_check(self, vault_id: bytes) -> bytes:
        check = self._key_checks.get(vault_id)
        if check is None:
            check = _mac(self._keys.mac, b"stowpay vault key check v1\x00", vault_id)
            self._key_checks[vault_id] = check
        return check

    def _removed_hash(self, sequence: int, mac: bytes) -> bytes:
        return _mac(self._keys.mac, b"stowpay vault removed v1\x00", _enc(sequence, mac))

    def _read_removed(self) -> dict[int, bytes]:
        rows = self._connection().execute("SELECT sequence, mac FROM removed_links")
        # A link whose MAC is not bytes stays in the set (as no MAC at all), so the set no
        # longer matches its summary in the state row and is reported altered.
        return {s: m if isinstance(m, bytes) else b"" for s, m in rows if type(s) is int}

    def _absorb_removals(
        self, conn: sqlite3.Connection, state: _State, links: list[tuple[int, bytes]]
    ) -> None:
        """Move the anchor over removed links, or file them in removed_links; save the state."""
        anchor, anchor_mac = state.anchor, state.anchor_mac
        count, xor = state.removed_count, state.removed_xor
        for sequence, link_mac in sorted(links):
            if sequence == anchor + 1:
                anchor, anchor_mac = sequence, link_mac
                # Close the gap: links removed out of order earlier now sit above the anchor.
                while True:
                    nxt = conn.execute(
                        "SELECT mac FROM removed_links WHERE sequence = ?", (anchor + 1,)
                    ).fetchone()
                    if nxt is None:
                        break
                    conn.execute("DELETE FROM removed_links WHERE sequence = ?", (anchor + 1,))
                    anchor, anchor_mac = anchor + 1, nxt[0]
                    count -= 1
                    xor = _xor(xor, self._removed_hash(anchor, anchor_mac))
            else:
                conn.execute(
                    "INSERT INTO removed_links (sequence, mac) VALUES (?, ?)",
                    (sequence, link_mac),
                )
                count += 1
                xor = _xor(xor, self._removed_hash(sequence, link_mac))
        self._save_state(
            conn,
            state,
            anchor=anchor,
            anchor_mac=anchor_mac,
            removed_count=count,
            removed_xor=xor,
            removed_total=state.removed_total + len(links),
        )

    def _link_mac(self, state: _State, removed: Mapping[int, bytes], sequence: int) -> bytes | None:
        """The MAC of link `sequence` as the vault knows it (anchor, removed link or row)."""
        if sequence == state.anchor:
            return state.anchor_mac
        if sequence in removed:
            return removed[sequence]
        hit = (
            self._connection()
            .execute(_SELECT_RECORD + " WHERE sequence = ?", (sequence,))
            .fetchone()
        )
        if hit is None:
            return None
        row = _row_from(hit)
        # Only a link that verifies itself can vouch for its successor.
        if isinstance(row, int) or not row.mac_ok(self._keys.mac, state.vault_id):
            return None
        return row.mac

    # -- internals: checking -------------------------------------------------------------------

    def _state_findings(self, state: _State, removed: Mapping[int, bytes]) -> list[Finding]:
        out: list[Finding] = []
        if state.format != FORMAT:
            out.append(Finding(FindingKind.STATE, None, f"unknown format {state.format}"))
        if not hmac.compare_digest(_mac(self._keys.mac, state.body()), state.state_mac):
            out.append(Finding(FindingKind.STATE, None, "the state row fails its MAC"))
        xor = bytes(_MAC_LEN)
        for seq, mac in removed.items():
            xor = _xor(xor, self._removed_hash(seq, mac))
        if len(removed) != state.removed_count or not hmac.compare_digest(xor, state.removed_xor):
            out.append(Finding(FindingKind.STATE, None, "the set of removed records was altered"))
        if any(not state.anchor + 1 < s <= state.head for s in removed):
            out.append(Finding(FindingKind.STATE, None, "a removed link lies outside the chain"))
        if not state.anchor <= state.head:
            out.append(Finding(FindingKind.STATE, None, "the anchor is above the counter"))
        return out

    def _tip_findings(self, state: _State, removed: Mapping[int, bytes]) -> list[Finding]:
        """Compare the database with the tip file; findings mean an older or forked copy."""
        path = self.directory / TIP_NAME
        try:
            data = _durable.read_if_present(path)
        except OSError as exc:
            return [Finding(FindingKind.ROLLBACK, None, f"cannot read the tip file: {exc}")]
        if data is None:
            pristine = state.head == state.anchor and state.removed_total == 0
            if pristine:
                return []
            return [
                Finding(
                    FindingKind.ROLLBACK,
                    None,
                    "the tip file is missing although the vault has held records",
                )
            ]
        tip = self._parse_tip(data)
        if tip is None:
            return [Finding(FindingKind.ROLLBACK, None, "the tip file is damaged or forged")]
        if tip.vault_id != state.vault_id:
            return [Finding(FindingKind.ROLLBACK, None, "the tip file belongs to another vault")]
        if state.head < tip.head or state.removed_total < tip.removed_total:
            return [
                Finding(
                    FindingKind.ROLLBACK,
                    None,
                    f"the database is older than its tip: counter {state.head} < {tip.head} "
                    f"or removals {state.removed_total} < {tip.removed_total} (a restored copy)",
                )
            ]
        if (
            state.head == tip.head
            and state.removed_total == tip.removed_total
            and not hmac.compare_digest(state.state_mac, tip.state_mac)
        ):
            return [
                Finding(FindingKind.ROLLBACK, None, "the database reached its tip by another path")
            ]
        known = state.head_mac if tip.head == state.head else None
        if known is None:
            known = self._link_mac(state, removed, tip.head)
        if known is not None and not hmac.compare_digest(known, tip.head_mac):
            return [
                Finding(
                    FindingKind.ROLLBACK,
                    tip.head,
                    f"record {tip.head} is not the one the tip file recorded (a forked copy)",
                )
            ]
        return []

    def _check_row(
        self,
        row: _Row,
        state: _State,
        removed: Mapping[int, bytes],
        predecessor_mac: bytes | None,
    ) -> Finding | None:
        """One record on its own and against its predecessor (when that link is trusted)."""
        if not row.mac_ok(self._keys.mac, state.vault_id):
            return _altered(row.sequence, "its bytes do not match its MAC")
        return self._check_linked(row.sequence, row.prev_mac, state, removed, predecessor_mac)

    def _record_findings(
        self, state: _State, removed: Mapping[int, bytes]
    ) -> tuple[list[Finding], int, int]:
        key, vault_id = self._keys.mac, state.vault_id
        conn = self._connection()
        # Pass 1, streaming: each row's own MAC. Keep only what linking needs (~80 bytes each).
        macs: dict[int, bytes] = {}  # stored mac of every well-formed row
        prevs: dict[int, bytes] = {}
        valid: set[int] = set()
        suspects: list[_Row | int] = []
        checked = 0
        for raw in conn.execute(_SELECT_RECORD + " ORDER BY sequence"):
            checked += 1
            row = _row_from(raw)
            if isinstance(row, int):
                suspects.append(row)
                continue
            macs[row.sequence] = row.mac
            prevs[row.sequence] = row.prev_mac
            if row.mac_ok(key, vault_id):
                valid.add(row.sequence)
            else:
                suspects.append(row)

        # Which link a MAC belongs to: lets an authentic record found in the wrong place be
        # traced to where it came from (its prev_mac names its original predecessor).
        link_of: dict[bytes, int] = {state.anchor_mac: state.anchor}
        link_of.update({m: s for s, m in removed.items()})
        link_of.update({macs[s]: s for s in valid})

        findings: list[Finding] = []
        unresolved: list[_Row] = []
        for item in suspects:
            if isinstance(item, int):
                findings.append(_altered(item, "a column has the wrong type or size"))
            else:
                unresolved.append(item)
        # A record traced to its home names the home of the next one (a swap, a shifted run),
        # so trace again while that makes progress; a few rounds cover any realistic shuffle.
        for _ in range(8):
            still: list[_Row] = []
            for row in unresolved:
                home = self._home_of(row, state, link_of)
                if home is None:
                    still.append(row)
                else:
                    link_of.setdefault(row.mac, home)
                    findings.append(_misplaced(row, home, state, removed, macs, valid))
            if len(still) == len(unresolved):
                break
            unresolved = still
        findings += [_altered(r.sequence, "its bytes do not match its MAC") for r in unresolved]

        for seq in sorted(valid):
            if seq - 1 == state.anchor:
                pred: bytes | None = state.anchor_mac
            elif seq - 1 in removed:
                pred = removed[seq - 1]
            elif seq - 1 in valid:
                pred = macs[seq - 1]
            else:
                pred = None  # missing or itself bad: reported there, not blamed here
            row_finding = self._check_linked(seq, prevs[seq], state, removed, pred)
            if row_finding is not None:
                findings.append(row_finding)

        findings += _missing(state, removed, set(macs) | {s for s in suspects if type(s) is int})
        findings.sort(key=lambda f: (f.sequence or 0, f.kind))
        bad = {f.sequence for f in findings if f.kind in RECORD_KINDS}
        return findings, checked, len(valid - bad)

    def _check_linked(
        self,
        seq: int,
        prev_mac: bytes,
        state: _State,
        removed: Mapping[int, bytes],
        pred: bytes | None,
    ) -> Finding | None:
        if seq <= state.anchor or seq in removed:
            return Finding(
                FindingKind.REPLAYED, seq, f"record {seq} was removed and has reappeared"
            )
        if seq > state.head:
            return Finding(
                FindingKind.UNISSUED, seq, f"record {seq} is above the counter ({state.head})"
            )
        if pred is not None and not hmac.compare_digest(pred, prev_mac):
            return Finding(
                FindingKind.CHAIN_BREAK,
                seq,
                f"record {seq} was chained to another record {seq - 1} (spliced from a copy)",
            )
        return None

    def _home_of(self, row: _Row, state: _State, link_of: Mapping[bytes, int]) -> int | None:
        """The sequence an authentic record found in the wrong place was stored under."""
        origin = link_of.get(row.prev_mac)
        if origin is None or origin + 1 == row.sequence:
            return None
        home = origin + 1
        return home if row.mac_ok(self._keys.mac, state.vault_id, home) else None

    def _quarantine(self, findings: list[Finding]) -> list[int]:
        """Hold records back (latest reason wins, first time kept); the newly held ones."""
        targets = {f.sequence: f for f in findings if f.sequence is not None}
        if not targets:
            return []
        now = float(self._clock.now())
        with self._transaction() as conn:
            already = {
                int(s)
                for (s,) in conn.execute(
                    "SELECT sequence FROM quarantine WHERE sequence IN "
                    f"({', '.join('?' * len(targets))})",
                    list(targets),
                )
            }
            conn.executemany(
                "INSERT INTO quarantine (sequence, kind, detail, at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (sequence) DO UPDATE SET kind = excluded.kind, "
                "detail = excluded.detail",
                [(s, str(f.kind), f.detail, now) for s, f in targets.items()],
            )
        newly = sorted(s for s in targets if s not in already)
        for seq in newly:
            log.warning(
                "vault_record_quarantined",
                directory=str(self.directory),
                sequence=seq,
                kind=str(targets[seq].kind),
            )
        return newly

    # -- internals: display details and the tip file -------------------------------------------

    def _display_aad(
        self, vault_id: bytes, account: bytes, reader: bytes, sequence: int, local_id: bytes
    ) -> bytes:
        return b"stowpay vault display v1\x00" + _enc(vault_id, account, reader, sequence, local_id)

    def _encrypt_display(
        self,
        vault_id: bytes,
        sequence: int,
        payment: OfflinePayment,
        local_id: str,
        display: CardDisplay,
    ) -> bytes:
        plain = json.dumps(display.as_dict(), sort_keys=True, separators=(",", ":")).encode()
        nonce = os.urandom(_NONCE_LEN)
        aad = self._display_aad(
            vault_id,
            payment.account.encode(),
            payment.reader.encode(),
            sequence,
            local_id.encode(),
        )
        key = self._keys.display(vault_id, sequence)
        return nonce + AESGCM(key).encrypt(nonce, plain, aad)

    def _to_payment(self, row: _Row, vault_id: bytes) -> StoredPayment:
        """The record as stored, display details decrypted; `_Malformed` unless every field
        has the type and bounds `store` gives it (even under a valid MAC: a record the vault
        could not have stored is never handed out to be forwarded)."""
        aad = self._display_aad(vault_id, row.account, row.reader, row.sequence, row.local_id)
        key = self._keys.display(vault_id, row.sequence)
        try:
            plain = AESGCM(key).decrypt(row.display[:_NONCE_LEN], row.display[_NONCE_LEN:], aad)
            shown = _json_object(plain)
            metadata = _json_object(row.metadata)
            display = CardDisplay(
                brand=_typed(shown["brand"], str),
                last4=_typed(shown["last4"], str),
                exp_month=_typed(shown["exp_month"], int),
                exp_year=_typed(shown["exp_year"], int),
                cardholder_name=_typed(shown["cardholder_name"], str, nullable=True),
                read_method=_typed(shown["read_method"], str),
                receipt=_typed(shown["receipt"], dict),
            )
            payment = StoredPayment(
                sequence=row.sequence,
                stored_at=row.stored_at,
                account=row.account.decode(),
                reader=row.reader.decode(),
                amount=row.amount,
                currency=row.currency.decode(),
                capture_method=row.capture_method.decode(),
                metadata={_typed(k, str): _typed(v, str) for k, v in metadata.items()},
                description=None if row.description is None else row.description.decode(),
                local_id=row.local_id.decode(),
                sealed=row.sealed,
                display=display,
            )
        except (InvalidTag, ValueError, KeyError) as exc:
            raise _Malformed(f"its display details do not open ({type(exc).__name__})") from exc
        problem = _stored_problem(payment)
        if problem is not None:
            raise _Malformed(problem)
        return payment

    def _tip_tag(self, tip: _Tip) -> bytes:
        return _mac(
            self._keys.mac,
            b"stowpay vault tip v1\x00",
            _enc(tip.vault_id, tip.head, tip.head_mac, tip.removed_total, tip.state_mac),
        )

    def _parse_tip(self, data: bytes) -> _Tip | None:
        """The tip file's values if its tag is this vault's; None for anything else."""
        try:
            doc = _json_object(data)
            tip = _Tip(
                vault_id=bytes.fromhex(_typed(doc["vault_id"], str)),
                head=_int64(doc["head_sequence"]),
                head_mac=bytes.fromhex(_typed(doc["head_mac"], str)),
                removed_total=_int64(doc["removed_total"]),
                state_mac=bytes.fromhex(_typed(doc["state_mac"], str)),
            )
            tag = bytes.fromhex(_typed(doc["tag"], str))
        except (ValueError, KeyError):
            return None
        if doc.get("format") != FORMAT or not hmac.compare_digest(tag, self._tip_tag(tip)):
            return None
        return tip

    def _write_tip(self) -> None:
        """Record the current state in the tip file, durably; `VaultWriteError` if it fails."""
        try:
            # Never vouch for a state row that fails its MAC.
            state = self._checked_state()
        except _DB_ERRORS as exc:
            raise VaultCorruptError(f"cannot read the vault: {exc}") from exc
        tip = _Tip(state.vault_id, state.head, state.head_mac, state.removed_total, state.state_mac)
        doc = {
            "format": FORMAT,
            "vault_id": tip.vault_id.hex(),
            "head_sequence": tip.head,
            "head_mac": tip.head_mac.hex(),
            "removed_total": tip.removed_total,
            "state_mac": tip.state_mac.hex(),
            "tag": self._tip_tag(tip).hex(),
        }
        self._boundary("vault.tip")
        try:
            _durable.write_atomically(
                self.directory / TIP_NAME, json.dumps(doc, indent=1).encode() + b"\n"
            )
        except OSError as exc:
            self._tip_dirty = True
            raise VaultWriteError(f"the tip file was not updated: {exc}") from exc
        self._boundary("vault.tip_written")
        self._tip_dirty = False
        self._stores_since_tip = 0

    def _write_tip_quietly(self) -> None:
        try:
            self._write_tip()
        except VaultError as exc:
            log.error("vault_tip_not_written", directory=str(self.directory), error=str(exc))


def verify_directory(
    directory: str | os.PathLike[str],
    *,
    clock: Clock,
    device_key_path: str | os.PathLike[str] | None = None,
) -> VerifyReport:
    """Check a vault on disk for `stowpay reader vault verify`, reporting rather than refusing.

    Opens in salvage mode (so a rollback or an altered state row is a finding, not an error),
    runs `PRAGMA integrity_check` and `Vault.verify`, and closes. Records that fail are
    quarantined as usual. Raises `VaultError` only when checking is impossible: the vault is
    open in another process, the device key is missing or wrong, or SQLite cannot read it.
    """
    vault = Vault.open(
        directory,
        clock=clock,
        device_key_path=device_key_path,
        salvage=True,
        check_integrity=False,
    )
    try:
        return vault.verify(integrity=True)
    finally:
        vault.close()


# --- module helpers ---------------------------------------------------------------------------


def _connect(path: Path, connector: Connector = _stdlib_connect) -> sqlite3.Connection:
    try:
        conn = connector(str(path))
    except sqlite3.Error as exc:
        raise VaultCorruptError(f"cannot open {path}: {exc}") from exc
    # Text comes back as the stored bytes: the MAC covers exactly what is on disk, and bytes
    # that are not UTF-8 are a finding, not a crash.
    conn.text_factory = bytes
    try:
        for pragma in _DURABILITY_PRAGMAS + _OTHER_PRAGMAS:
            conn.execute(f"PRAGMA {pragma}").fetchall()
        settings = _read_durability(conn)
    except _DB_ERRORS as exc:
        conn.close()
        raise VaultCorruptError(f"cannot open {path}: {exc}") from exc
    weak = [
        f"{name}={value}"
        for name, value, ok in (
            ("journal_mode", settings["journal_mode"], settings["journal_mode"] == "wal"),
            ("synchronous", settings["synchronous"], settings["synchronous"] >= 2),
            ("secure_delete", settings["secure_delete"], settings["secure_delete"] == 1),
        )
        if not ok
    ]
    if weak:
        conn.close()
        raise VaultDurabilityError(
            "SQLite is not running durably (need journal_mode=wal, synchronous>=FULL, "
            f"secure_delete=1): {', '.join(weak)}"
        )
    return conn


def _read_durability(conn: sqlite3.Connection) -> dict[str, Any]:
    mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    return {
        "journal_mode": _text(mode).lower(),
        "synchronous": int(conn.execute("PRAGMA synchronous").fetchone()[0]),
        "secure_delete": int(conn.execute("PRAGMA secure_delete").fetchone()[0]),
    }


def _is_empty(conn: sqlite3.Connection) -> bool:
    try:
        count = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        return bool(count == 0)
    except _DB_ERRORS as exc:
        raise VaultCorruptError(f"cannot read the vault's schema: {exc}") from exc


def _integrity_problems(conn: sqlite3.Connection) -> list[str]:
    rows = [_text(r[0]) for r in conn.execute("PRAGMA integrity_check").fetchall()]
    return [] if rows == ["ok"] else rows


def _load_device_key(path: Path, *, create: bool) -> bytes:
    """The 32-byte device key; made (0600, durably) only for a new vault."""
    try:
        st = path.stat()
    except FileNotFoundError:
        if not create:
            raise VaultKeyError(
                f"the device key {path} is missing; without it no record can be verified"
            ) from None
        key = os.urandom(_KEY_LEN)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _durable.write_atomically(path, key, mode=0o600)
        return key
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise VaultKeyError(f"the device key {path} is open to other users; chmod 600 it")
    key = path.read_bytes()
    if len(key) != _KEY_LEN:
        raise VaultKeyError(f"the device key {path} is not {_KEY_LEN} bytes")
    return key


def _used_bytes(conn: sqlite3.Connection) -> int:
    """Bytes in pages that hold data (free pages excluded), as of this transaction."""
    row = conn.execute(
        "SELECT (p.page_count - f.freelist_count) * s.page_size "
        "FROM pragma_page_count() p, pragma_freelist_count() f, pragma_page_size() s"
    ).fetchone()
    return int(row[0])


def _state_values(state: _State) -> tuple[Any, ...]:
    return (
        state.format,
        state.vault_id,
        state.created_at,
        state.key_check,
        state.head,
        state.head_mac,
        state.anchor,
        state.anchor_mac,
        state.removed_total,
        state.removed_count,
        state.removed_xor,
        state.state_mac,
    )


#: Whether each record column is text (it goes in as str so STRICT stores it as TEXT).
_TEXT_COLUMN = tuple(kind.startswith("text") for _, kind in _RECORD_COLUMNS)


def _sql_values(row: _Row) -> tuple[Any, ...]:
    return tuple(
        value.decode() if text and isinstance(value, bytes) else value
        for text, value in zip(_TEXT_COLUMN, row, strict=True)
    )


def _missing(state: _State, removed: Mapping[int, bytes], present: set[int]) -> list[Finding]:
    """Issued sequences that are neither present nor removed (at most 1,000 listed one by one)."""
    out: list[Finding] = []
    expected = state.head - state.anchor - len(removed)
    here = sum(1 for s in present if state.anchor < s <= state.head and s not in removed)
    if here >= expected:
        return out
    seq, total = state.anchor + 1, expected - here
    while seq <= state.head and len(out) < 1000:
        if seq not in present and seq not in removed:
            out.append(Finding(FindingKind.MISSING, seq, f"record {seq} is missing"))
        seq += 1
    if total > len(out):
        out.append(
            Finding(
                FindingKind.MISSING,
                None,
                f"{total} records are missing in all ({total - len(out)} not listed)",
            )
        )
    return out


def _misplaced(
    row: _Row,
    home: int,
    state: _State,
    removed: Mapping[int, bytes],
    macs: Mapping[int, bytes],
    valid: set[int],
) -> Finding:
    """What it means that authentic record `home` sits at `row.sequence`."""
    seq = row.sequence
    if home <= state.anchor or home in removed:
        return Finding(
            FindingKind.REPLAYED, seq, f"record {home}, already removed, reappeared as {seq}"
        )
    if home in valid and macs.get(home) == row.mac:
        return Finding(FindingKind.REPLAYED, seq, f"a copy of record {home} sits at {seq}")
    return Finding(FindingKind.REORDERED, seq, f"record {home}'s content sits at {seq}")


def _altered(sequence: int, why: str) -> Finding:
    return Finding(FindingKind.ALTERED, sequence, f"record {sequence}: {why}")


def _int(value: object) -> int:
    if type(value) is not int:
        raise VaultCorruptError(f"expected an integer in the vault, found {type(value).__name__}")
    return value


def _float(value: object) -> float:
    if type(value) not in (int, float):
        raise VaultCorruptError(f"expected a number in the vault, found {type(value).__name__}")
    return float(value)  # type: ignore[arg-type]


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def _json_object(data: bytes) -> dict[str, Any]:
    """A JSON object from the vault's own files or columns; ValueError for anything else
    (other JSON, bytes that are not UTF-8, nesting too deep to parse)."""
    try:
        doc = json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    return doc


def _typed(value: Any, kind: type, *, nullable: bool = False) -> Any:
    """`value` if it has exactly type `kind` (so True is not an int), or is None and
    `nullable`; ValueError otherwise."""
    if type(value) is kind or (nullable and value is None):
        return value
    raise ValueError(f"expected {kind.__name__}, found {type(value).__name__}")


def _int64(value: Any) -> int:
    """An integer as SQLite holds it (64 bits); ValueError for anything else."""
    number: int = _typed(value, int)
    if not -(1 << 63) <= number < (1 << 63):
        raise ValueError("integer out of range")
    return number


def _stored_problem(p: StoredPayment) -> str | None:
    """What makes `p` something `Vault.store` would not have stored (`_prepare`'s rules), or
    None. Checked on the way out, so no record the cloud must refuse is ever forwarded."""
    d = p.display
    checks = (
        (_ID.fullmatch(p.account) and _ID.fullmatch(p.reader), "account or reader"),
        (_id_problem(p.local_id) is None, "local_id"),
        (0 < p.amount < (1 << 53), "amount"),
        (_CURRENCY.fullmatch(p.currency), "currency"),
        (p.capture_method in CAPTURE_METHODS, "capture_method"),
        (math.isfinite(p.stored_at) and p.stored_at >= 0, "stored_at"),
        (metadata_limits.problem(p.metadata) is None, "metadata"),
        (
            p.description is None
            or (len(p.description) <= 1000 and not contains_card_number(p.description)),
            "description",
        ),
        (1 <= d.exp_month <= 12 and 2000 <= d.exp_year <= 2199, "expiry"),
        (len(d.last4) == 4 and d.last4.isascii() and d.last4.isdigit(), "last4"),
        (_display_problem(d.brand, d.cardholder_name, d.read_method) is None, "card display"),
    )
    bad = [name for ok, name in checks if not ok]
    return f"its {bad[0]} is not one the vault stores" if bad else None


def _display_problem(brand: str, cardholder_name: str | None, read_method: str) -> str | None:
    """The display field out of the bounds the cloud's device API takes, or None: a record
    the cloud would refuse must be refused at the sale, not stored and then rejected
    uncharged when forwarded."""
    # The device API's own bounds, card-number check included (`ShownText` there).
    if len(brand) > metadata_limits.MAX_BRAND or contains_card_number(brand):
        return "brand"
    if cardholder_name is not None and (
        not 0 < len(cardholder_name) <= metadata_limits.MAX_CARDHOLDER_NAME
        or contains_card_number(cardholder_name)
    ):
        return "cardholder_name"
    if len(read_method) > metadata_limits.MAX_READ_METHOD or contains_card_number(read_method):
        return "read_method"
    return None


def new_local_id(random_128: Callable[[], int]) -> str:
    """A payment's local id, `pio_` and 32 hex digits drawn from `random_128`.

    About one draw in 1,200 holds a card number as `contains_card_number` reads one (a run of
    13-19 digits starting 2-6, passing Luhn), which the cloud refuses anywhere it keeps text
    in the clear; such a draw is replaced.
    """
    while True:
        local_id = f"pio_{random_128() & ((1 << 128) - 1):032x}"
        if not contains_card_number(local_id):
            return local_id


def _id_problem(local_id: str) -> str | None:
    """Why the cloud would refuse `local_id` as a payment's local id, or None."""
    if not _ID.fullmatch(local_id):
        return "local_id must be an id (letters, digits, '_', '-')"
    if contains_card_number(local_id):
        return "local_id must not contain a card number"
    return None


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _code_name(exc: BaseException) -> str | None:
    name = getattr(exc, "sqlite_errorname", None)
    return name if isinstance(name, str) else None


def _looks_like_pan(text: str, number: str) -> bool:
    """Whether `text` holds this card's number (however split) or any card number as the
    cloud reads one: the vault refuses exactly what the cloud would, and this card too."""
    if number and number in text.replace(" ", "").replace("-", ""):
        return True
    return contains_card_number(text)


def _prepare(payment: OfflinePayment) -> tuple[bytes, CardDisplay, str]:
    """Check a payment; split its card read into the sealed part and the display part."""
    p, card = payment, payment.card
    if not (_ID.fullmatch(p.account) and _ID.fullmatch(p.reader)):
        raise VaultInputError("account and reader must be ids (letters, digits, '_', '-')")
    if type(p.amount) is not int or not 0 < p.amount < (1 << 53):
        raise VaultInputError("amount must be a positive integer in minor units")
    if not _CURRENCY.fullmatch(p.currency):
        raise VaultInputError("currency must be a lowercase ISO 4217 code")
    if p.capture_method not in CAPTURE_METHODS:
        raise VaultInputError(f"capture_method must be one of {sorted(CAPTURE_METHODS)}")
    number = card.number
    if not (number.isascii() and number.isdigit() and 12 <= len(number) <= 19):
        raise VaultInputError("the card number must be 12-19 digits")
    if type(card.exp_month) is not int or not 1 <= card.exp_month <= 12:
        raise VaultInputError("exp_month must be 1-12")
    if type(card.exp_year) is not int or not 2000 <= card.exp_year <= 2199:
        raise VaultInputError("exp_year must be a four-digit year")
    emv: dict[str, str] = {}
    for tag, value in card.emv_data.items():
        upper = tag.upper()
        if not (upper and _HEX.fullmatch(upper) and _HEX.fullmatch(value)):
            raise VaultInputError("EMV data must map hex tags to hex values")
        if upper in FORBIDDEN_EMV_TAGS:
            raise VaultInputError(f"EMV tag {upper} carries track or PIN data; never stored")
        emv[upper] = value.upper()
    metadata = dict(p.metadata)
    if metadata_limits.problem(metadata) is not None:  # the cloud's rules, shared
        raise VaultInputError("metadata: at most 50 string keys (<=40, no brackets), values <=500")
    if p.description is not None and len(p.description) > 1000:
        raise VaultInputError("description is longer than 1000 characters")
    if _display_problem(card.brand, card.cardholder_name, card.read_method) is not None:
        raise VaultInputError(
            f"brand (<={metadata_limits.MAX_BRAND}), cardholder_name "
            f"(1-{metadata_limits.MAX_CARDHOLDER_NAME}) or read_method "
            f"(<={metadata_limits.MAX_READ_METHOD}) out of bounds"
        )
    try:
        receipt = json.loads(json.dumps(dict(card.receipt)))
    except (TypeError, ValueError) as exc:
        raise VaultInputError("receipt details must be JSON values") from exc
    metadata_text = json.dumps(metadata, sort_keys=True, separators=(",", ":"))
    # A receipt's chip values (cryptogram, AID, TVR, TSI) are hex from the card: one in a few
    # thousand is all digits and passes Luhn by chance, so they are checked for this card's
    # number only. Everything else gets the full check, which also catches other numbers.
    chip = {k: v for k, v in receipt.items() if k in RECEIPT_CHIP_FIELDS and isinstance(v, str)}
    free = {k: v for k, v in receipt.items() if k not in chip}
    shown_text = json.dumps(
        [card.brand, card.cardholder_name, card.read_method, free, p.description]
    )
    for text in (metadata_text, shown_text):
        # What the cloud would refuse must not be stored: forwarded, it would be rejected
        # and never charged.
        if _looks_like_pan(text, number):
            raise VaultInputError("a card number must not appear outside the sealed card data")
    if any(number in v for v in chip.values()):
        raise VaultInputError("a card number must not appear outside the sealed card data")
    display = CardDisplay(
        brand=card.brand,
        last4=number[-4:],
        exp_month=card.exp_month,
        exp_year=card.exp_year,
        cardholder_name=card.cardholder_name,
        read_method=card.read_method,
        receipt=receipt,
    )
    sealed_plain = json.dumps(
        {"number": number, "exp_month": card.exp_month, "exp_year": card.exp_year, "emv": emv},
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    return sealed_plain, display, metadata_text

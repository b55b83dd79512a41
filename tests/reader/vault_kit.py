"""Shared helpers for the vault tests: the cloud's key pair, test cards, payments, file scans."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from stowpay.reader.vault import CardRead, OfflinePayment, SealingKey, StoredPayment, Vault
from stowpay.wire import sealed
from stowpay.wire.cards import luhn_ok

#: The `open_vault` fixture: opens the test vault, closes it at teardown.
OpenVault = Callable[..., Vault]

#: The cloud's sealing key pair; only the cloud holds the private half.
CLOUD_PRIVATE = X25519PrivateKey.generate()
CLOUD_PUBLIC = CLOUD_PRIVATE.public_key().public_bytes(
    serialization.Encoding.Raw, serialization.PublicFormat.Raw
)
SEALING = SealingKey("csk_test_1", CLOUD_PUBLIC)

ACCOUNT = "acct_vault_test"
READER = "tmr_vault_test"

#: Sentinel card numbers pushed through the vault: none may ever be found on disk.
TEST_CARDS = (
    "4242424242424242",
    "5555555555554444",
    "378282246310005",
    "6011111111111117",
    "4000056655665556",
    "3566002020360505",
    "4001007020000002",
)
#: Chip data that is sealed with the number; its value is a sentinel too.
EMV = {"9F26": "8E19ED4BCA5C670A", "9F36": "0042", "9F10": "06010A03A0B800"}


def card(number: str = "4242424242424242", **over: Any) -> CardRead:
    """A card read as the simulated reader would hand it over."""
    fields: dict[str, Any] = {
        "number": number,
        "exp_month": 12,
        "exp_year": 2031,
        "brand": "visa",
        "read_method": "contact_emv",
        "cardholder_name": "Ada Lovelace",
        "emv_data": EMV,
        "receipt": {"application_preferred_name": "VISA CREDIT", "account_type": "credit"},
    }
    fields.update(over)
    return CardRead(**fields)


def payment(
    amount: int = 1299, currency: str = "usd", number: str = "4242424242424242", **over: Any
) -> OfflinePayment:
    """An offline payment for the test account and reader."""
    fields: dict[str, Any] = {
        "account": ACCOUNT,
        "reader": READER,
        "amount": amount,
        "currency": currency,
        "capture_method": "automatic",
        "card": card(number),
        "metadata": {"order_id": "A-1"},
        "description": "coffee",
    }
    fields.update(over)
    return OfflinePayment(**fields)


def unseal(record: StoredPayment) -> dict[str, Any]:
    """What the cloud reads from a record's sealed blob."""
    aad = sealed.associated_data(record.account, record.reader, record.sequence)
    doc: dict[str, Any] = json.loads(sealed.open_sealed(CLOUD_PRIVATE, record.sealed, aad))
    return doc


def pan_patterns(number: str) -> list[bytes]:
    """How a card number could sit in a file: plain digits, 4-digit groups, UTF-16."""
    groups = " ".join(number[i : i + 4] for i in range(0, len(number), 4))
    return [
        number.encode(),
        groups.encode(),
        number.replace("", "\x00")[1:].encode(),
        number.encode("utf-16-le"),
    ]


def scan_for_pans(directory: Path, numbers: tuple[str, ...] = TEST_CARDS) -> list[str]:
    """Every (file, number) where a sentinel card number appears in any file under directory."""
    hits = []
    for path in sorted(directory.rglob("*")):
        if not path.is_file():
            continue
        data = path.read_bytes()
        for number in numbers:
            if any(p in data for p in pan_patterns(number)):
                hits.append(f"{path.name}: {number[:6]}…{number[-4:]}")
        # Any Luhn-valid 13-19 digit run at all, not only the sentinels (runs inside hex
        # strings, such as MACs in the tip file, are not card numbers).
        for run in re.findall(rb"(?<![0-9A-Fa-f])\d{13,19}(?![0-9A-Fa-f])", data):
            # A 13-digit run starting with 1 is a time in milliseconds (`last_seen_at`): one in
            # ten passes Luhn by chance.
            if len(run) == 13 and run.startswith(b"1"):
                continue
            if luhn_ok(run.decode()):
                hits.append(f"{path.name}: a Luhn-valid run ending {run[-4:].decode()}")
    return hits


def side_connection(directory: Path) -> sqlite3.Connection:
    """A connection to the vault's database that bypasses the vault: the attacker's view."""
    conn = sqlite3.connect(str(directory / "vault.db"), isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 5000")
    return conn


def _varint(data: bytes, at: int) -> tuple[int, int]:
    """SQLite's varint at `at`: (value, length)."""
    value = 0
    for i in range(8):
        byte = data[at + i]
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, i + 1
    return (value << 8) | data[at + 8], 9


def allocated_bytes(db: Path) -> tuple[bytearray, dict[int, str], int]:
    """Which bytes of a SQLite file hold something, and which table or index owns each page.

    A byte is allocated if it is in the file header, a b-tree page header, a cell pointer, or
    a cell (parsed from the page itself). Everything else — the gap between the pointers and
    the cells, freeblocks, fragments, free pages — is slack that SQLite never reads as data.
    Overflow pages are counted as allocated in full (the vault's records do not overflow).
    """
    data = db.read_bytes()
    with sqlite3.connect(db) as conn:
        page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        owners = {int(p): str(n) for n, p in conn.execute("SELECT name, pageno FROM dbstat")}
        kinds = {int(p): str(t) for p, t in conn.execute("SELECT pageno, pagetype FROM dbstat")}
    used = bytearray(len(data))
    used[:100] = b"\x01" * 100
    for page, kind in kinds.items():
        base = (page - 1) * page_size
        if kind == "overflow":
            used[base : base + page_size] = b"\x01" * page_size
            continue
        hdr = base + (100 if page == 1 else 0)
        ptype = data[hdr]
        interior = ptype in (2, 5)
        ncells = int.from_bytes(data[hdr + 3 : hdr + 5], "big")
        head_len = (12 if interior else 8) + 2 * ncells
        used[hdr : hdr + head_len] = b"\x01" * head_len
        usable = page_size - data[20]
        for i in range(ncells):
            at = base + int.from_bytes(data[hdr + head_len - 2 * ncells + 2 * i :][:2], "big")
            pos = at
            if interior:
                pos += 4
            if ptype == 5:  # interior table: child pointer + rowid
                _, n = _varint(data, pos)
                pos += n
            else:
                size, n = _varint(data, pos)
                pos += n
                if ptype == 13:  # leaf table: then the rowid
                    _, n = _varint(data, pos)
                    pos += n
                max_local = usable - 35 if ptype == 13 else (usable - 12) * 64 // 255 - 23
                if size > max_local:
                    min_local = (usable - 12) * 32 // 255 - 23
                    local = min_local + (size - min_local) % (usable - 4)
                    size = (local if local <= max_local else min_local) + 4
                pos += size
            used[at:pos] = b"\x01" * (pos - at)
    return used, owners, page_size

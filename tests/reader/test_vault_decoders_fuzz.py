"""Every decoder of vault data, fed arbitrary and mutated input by hypothesis.

The vault reads what is on its disk: record rows, the state row, the removed links, its local
annotations (quarantine, card uses), the tip file and the device key. Each decoder here gets
about 500 examples (`STOWPAY_DECODER_EXAMPLES` for more) of mutated input: bit flips,
truncation, extension, NUL bytes, invalid UTF-8, JSON that is not an object or nests deeply,
each column in every other SQLite storage class, 64-bit extremes and infinities, fields swapped
within a row and between rows, rows moved to other sequences or copied there. What may
come out:

- a `VaultError` (any subclass), or a `Finding` with the record quarantined;
- never another exception type;
- never a record handed out for forwarding unless it is byte for byte a genuine one.

How the types get in: the vault's tables are STRICT, which SQLite enforces only when
writing. A damaged page can hold any storage class in any column, so each test rewrites the
schema of a copy without STRICT (SQLite's ``writable_schema``, the same records on disk) and writes
its mutations through a side connection, as an attacker with the files would. The vaults
live on tmpfs (``/dev/shm``) where there is one: what is tested is decoding, and the vault's
fsyncs cost nothing there.

Decoders:

1. ``record rows``: a record row changed in place, moved or copied; `Vault.verify`,
   `Vault.pending` and `Vault.summary` read it.
2. ``authenticated content``: a row whose MAC is made again with the vault's own key (a
   faulty build, or a key holder), with odd but well-typed columns and display details
   encrypted again from mutated JSON: `pending` opens it and must hand out only a payment of
   the shape the vault stores, or quarantine it.
3. ``state row``: the vault_state row, in a vault as opened and one opened with
   ``salvage=True`` (which reads past an altered state): verify, pending, summary, store,
   remove and advance_sequence.
4. ``side tables``: removed_links, quarantine and card_uses rows.
5. ``tip file``: its bytes, read as at open (`_tip_findings`), and a tenth as many through
   `Vault.open` itself.
6. ``device key``: the key file's bytes (`_load_device_key`).

Found by it, and fixed (each with a plain regression test below):

- the tip file's parser let ``Infinity`` (OverflowError), integers past 64 bits (an internal
  error from the MAC's encoder) and deep nesting (RecursionError) out of `Vault.open`;
- `pending` let an authenticated record with ``Infinity`` or deeply nested JSON in its
  details out as OverflowError or RecursionError, and handed out ones with types or values
  the vault never stores (a list as cardholder name, ``true`` as a year, a zero amount, an
  infinite time), which the cloud would refuse with the whole batch;
- `remove` in salvage mode raised ValueError on a removed-set summary of the wrong size
  (the state row's sizes are now checked where it is read) and an internal error on a
  removal count at the end of 64 bits; ``first_sequence`` past 2**62 is refused at open;
- a removed link whose MAC is not bytes was silently left out of the removed set, so the
  set still matched its summary: it is now reported as an altered set.

How it was seen to fail: with the vault's source as it was before these fixes, ``-k
tip_file`` fails at once, hypothesis reporting the internal ``_Malformed`` error for a tip
whose ``head_sequence`` is past 64 bits, and ``-k authenticated`` reports the OverflowError
and RecursionError above. A throwaway patch that drops ``KeyError`` from `_to_payment`'s
handler (so display details without a field escape) makes ``-k authenticated`` report
seven distinct failures, ``KeyError: 'brand'`` to ``KeyError: 'receipt'``, each with its
falsifying display JSON.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import math
import os
import shutil
import sqlite3
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vault_kit import SEALING, TEST_CARDS, payment

from stowpay.reader import vault as vault_module
from stowpay.reader.vault import (
    FindingKind,
    StoredPayment,
    Vault,
    VaultConfigError,
    VaultCorruptError,
    VaultError,
    VaultKeyError,
    VaultRollbackError,
)
from stowpay.wire.clock import ManualClock

EXAMPLES = int(os.environ.get("STOWPAY_DECODER_EXAMPLES", "500"))

pytestmark = [pytest.mark.slow, pytest.mark.timeout(max(300, EXAMPLES // 2))]

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

#: A cell as SQLite holds it: (storage class, value), text as its raw bytes.
Cell = tuple[str, Any]

TABLES: dict[str, tuple[str, ...]] = {
    "vault_state": ("id", *vault_module._STATE_COLUMNS),
    "records": tuple(name for name, _ in vault_module._RECORD_COLUMNS),
    "removed_links": ("sequence", "mac"),
    "quarantine": ("sequence", "kind", "detail", "at"),
    "card_uses": ("tag", "sequence"),
}


#: The tables without STRICT and without column types, so values stay as written: the same
#: rows, any storage class in any column. Real columns keep REAL affinity: SQLite keeps a
#: whole-numbered real as an integer on disk and reads it back as a real because of it.
def _loose(table: str, key: str, reals: tuple[str, ...] = ()) -> str:
    cols = [f"{c} REAL" if c in reals else c for c in TABLES[table] if c != key.split()[0]]
    return f"CREATE TABLE {table} ({key}, {', '.join(cols)})"


LOOSE_SCHEMA = {
    "vault_state": _loose("vault_state", "id INTEGER PRIMARY KEY", ("created_at",)),
    "records": _loose("records", "sequence INTEGER PRIMARY KEY", ("stored_at",)),
    "removed_links": _loose("removed_links", "sequence INTEGER PRIMARY KEY"),
    "quarantine": _loose("quarantine", "sequence INTEGER PRIMARY KEY", ("at",)),
    "card_uses": "CREATE TABLE card_uses (tag, sequence, PRIMARY KEY (tag, sequence)) "
    "WITHOUT ROWID",
}

# -- the vault under test ----------------------------------------------------------------------


def _side(directory: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(directory / "vault.db"), isolation_level=None)
    conn.text_factory = bytes
    conn.execute("PRAGMA busy_timeout = 5000")
    # The side writes are the test's, not the vault's: no need to wait for the disk.
    conn.execute("PRAGMA synchronous = OFF")
    return conn


def _loosen(directory: Path) -> None:
    """Drop STRICT and the column types from every table, keeping every row as it is."""
    conn = sqlite3.connect(str(directory / "vault.db"), isolation_level=None)
    version = conn.execute("PRAGMA schema_version").fetchone()[0]
    conn.execute("PRAGMA writable_schema = ON")
    for name, sql in LOOSE_SCHEMA.items():
        conn.execute("UPDATE sqlite_schema SET sql = ? WHERE name = ?", (sql, name))
    conn.execute(f"PRAGMA schema_version = {version + 1}")
    conn.execute("PRAGMA writable_schema = OFF")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


def read_table(conn: sqlite3.Connection, table: str) -> list[list[Cell]]:
    cols = TABLES[table]
    picks = ", ".join(f"typeof({c}), {c}" for c in cols)
    rows = conn.execute(f"SELECT {picks} FROM {table} ORDER BY 1, 2").fetchall()
    return [[(r[2 * i].decode(), r[2 * i + 1]) for i in range(len(cols))] for r in rows]


def write_row(conn: sqlite3.Connection, table: str, cells: list[Cell]) -> None:
    cols = TABLES[table]
    exprs = ", ".join("CAST(? AS TEXT)" if kind == "text" else "?" for kind, _ in cells)
    conn.execute(
        f"INSERT OR REPLACE INTO {table} ({', '.join(cols)}) VALUES ({exprs})",
        [value for _, value in cells],
    )


@dataclass
class Fixture:
    """A vault with records, removed links and a card use, and how to put it back."""

    directory: Path
    vault: Vault
    side: sqlite3.Connection
    snapshot: dict[str, list[list[Cell]]]
    tip: bytes
    genuine: dict[int, StoredPayment]
    clock: ManualClock
    runs: int = 0

    def restore(self) -> None:
        """Every table and the tip file back as they were (and the vault's caches dropped)."""
        self.side.execute("BEGIN")
        for table, rows in self.snapshot.items():
            self.side.execute(f"DELETE FROM {table}")
            for row in rows:
                write_row(self.side, table, row)
        self.side.execute("COMMIT")
        (self.directory / vault_module.TIP_NAME).write_bytes(self.tip)
        self.vault._summary = None
        self.vault._used_bound = None
        assert self.vault._failed is None, self.vault._failed

    def rows(self, table: str) -> list[list[Cell]]:
        return read_table(self.side, table)


def _build(root: Path, clock: ManualClock) -> tuple[Path, dict[int, StoredPayment]]:
    """A vault of 9 stored, 3 removed (one the anchor, two links), one card use; loosened."""
    directory = root / "pristine"
    vault = Vault.open(directory, clock=clock, sealing_key=SEALING)
    stored = []
    for i in range(9):
        clock.advance(1.5)
        stored.append(
            vault.store(
                payment(
                    100 + 7 * i,
                    ("usd", "eur", "gbp")[i % 3],
                    TEST_CARDS[i % len(TEST_CARDS)],
                    metadata={"order_id": f"A-{i}"},
                    description=None if i % 2 else f"coffee {i}",
                ),
                card_tag=f"{i:064x}" if i == 4 else None,
            )
        )
    vault.remove_many([1, 4, 7])
    vault.close()
    _loosen(directory)
    return directory, {p.sequence: p for p in stored if p.sequence not in (1, 4, 7)}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Where the vaults live: in memory (tmpfs) where there is one. What is tested here is
    decoding, not the disk; the vault's fsyncs cost nothing there, so the examples go 2-3
    times faster than on a disk."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path_factory.mktemp("decoders")
        return
    path = Path(tempfile.mkdtemp(prefix="stowpay-decoders-", dir=shm))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def built(workdir: Path) -> tuple[Path, dict[int, StoredPayment]]:
    return _build(workdir, ManualClock(1_780_000_000.0))


@pytest.fixture
def fixture(
    built: tuple[Path, dict[int, StoredPayment]], workdir: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Fixture]]:
    """Open a copy of the built vault (normally, or with ``salvage=True``)."""
    opened: list[Fixture] = []

    def make(name: str = "vault", **kw: Any) -> Fixture:
        src, genuine = built
        directory = Path(tempfile.mkdtemp(dir=workdir)) / name
        shutil.copytree(src, directory)
        clock = ManualClock(1_780_100_000.0)
        vault = Vault.open(directory, clock=clock, sealing_key=SEALING, **kw)
        assert vault.last_report is not None and vault.last_report.ok
        side = _side(directory)
        snapshot = {table: read_table(side, table) for table in TABLES}
        tip = (directory / vault_module.TIP_NAME).read_bytes()
        fx = Fixture(directory, vault, side, snapshot, tip, genuine, clock)
        opened.append(fx)
        return fx

    started = time.perf_counter()
    yield make
    took = time.perf_counter() - started
    for fx in opened:
        fx.side.close()
        with contextlib.suppress(VaultError):
            fx.vault.close()
        shutil.rmtree(fx.directory.parent, ignore_errors=True)
    runs = sum(fx.runs for fx in opened)
    # The figure for docs/reliability.md: examples run per decoder, findings (a failure
    # would have stopped the test with hypothesis's report): 0.
    print(f"\n{request.node.name}: {runs} examples in {took:.1f} s, findings 0")


# -- mutations of a cell -----------------------------------------------------------------------

INT64 = st.integers(-(1 << 63), (1 << 63) - 1)
EXTREME_INTS = st.sampled_from([0, -1, 1, (1 << 63) - 1, -(1 << 63), 1 << 31, (1 << 53) + 1])
FLOATS = st.floats(allow_nan=False) | st.sampled_from(
    [float("inf"), float("-inf"), -0.0, 5e-324, 1.7976931348623157e308]
)
#: Bytes that are not UTF-8: a stray continuation, a truncated sequence, an encoded surrogate,
#: an overlong NUL.
BAD_UTF8 = (b"\xff", b"\xc3(", b"\xed\xa0\x80", b"\xc0\x80", b"\xe2\x82")
#: JSON a decoder might meet where it expects an object, or an object it does not expect.
ODD_JSON = (
    b"[]",
    b"null",
    b"1",
    b'"x"',
    b"true",
    b"{}",
    b"Infinity",
    b'{"a": {"b": [1]}}',
    b'{"a": 1}',
    b'{"a": null}',
    b"[" * 3000 + b"]" * 3000,
    b'{"a":' * 3000 + b"1" + b"}" * 3000,
    b"{",
    b'{"a": "\\ud800"}',
    b'{"a": 1e999}',
)
ANY_CELL = st.one_of(
    st.tuples(st.just("integer"), INT64 | EXTREME_INTS),
    st.tuples(st.just("real"), FLOATS),
    st.tuples(st.just("text"), st.binary(max_size=80) | st.sampled_from(ODD_JSON)),
    st.tuples(st.just("blob"), st.binary(max_size=80)),
    st.just(("null", None)),
)


def _flip_int(value: int, bit: int) -> int:
    return int.from_bytes(
        (value ^ (1 << bit)).to_bytes(9, "big", signed=True)[1:], "big", signed=True
    )


def _flip_real(value: float, bit: int) -> float:
    (raw,) = struct.unpack(">Q", struct.pack(">d", value))
    (out,) = struct.unpack(">d", struct.pack(">Q", raw ^ (1 << bit)))
    return float(out)


def _retyped(cell: Cell, to: str) -> Cell:
    """The same content in another storage class, as near as it can be."""
    _, value = cell
    as_bytes = value if isinstance(value, bytes) else b"" if value is None else repr(value).encode()
    if to in ("text", "blob"):
        return to, as_bytes
    if to == "integer":
        if isinstance(value, float) and value == value and abs(value) < 2**63:
            return to, int(value)
        return to, int(value) if isinstance(value, int) else len(as_bytes)
    if to == "real":
        return to, float(value) if isinstance(value, int) else 0.0
    return "null", None


@st.composite
def mutated(
    draw: st.DrawFn, cell: Cell, row: list[Cell], others: list[list[Cell]], col: int
) -> Cell:
    """One mutation of `cell` (column `col` of `row`; `others` are rows of the same table)."""
    kind, value = cell
    how = draw(
        st.sampled_from(
            [
                "flip",
                "flip",
                "truncate",
                "extend",
                "nul",
                "bad_utf8",
                "retype",
                "int",
                "real",
                "json",
                "any",
                "swap_column",
                "swap_row",
            ]
        )
    )
    if how == "swap_column" and row:
        return row[draw(st.integers(0, len(row) - 1))]
    if how == "swap_row" and others:
        return draw(st.sampled_from(others))[col]
    if how == "retype":
        return _retyped(cell, draw(st.sampled_from(["integer", "real", "text", "blob", "null"])))
    if how == "int":
        return "integer", draw(EXTREME_INTS | INT64)
    if how == "real":
        return "real", draw(FLOATS)
    if how == "json":
        return "text", draw(st.sampled_from(ODD_JSON))
    if how == "any" or value is None:
        return draw(ANY_CELL)
    if kind == "integer":
        return kind, _flip_int(value, draw(st.integers(0, 63)))
    if kind == "real":
        return kind, _flip_real(value, draw(st.integers(0, 63)))
    data = bytes(value)
    at = draw(st.integers(0, len(data)))
    if how == "flip" and data:
        i = min(at, len(data) - 1)
        return kind, data[:i] + bytes([data[i] ^ (1 << draw(st.integers(0, 7)))]) + data[i + 1 :]
    if how == "truncate" and data:
        return kind, data[: min(at, len(data) - 1)]
    if how == "extend":
        return kind, data + draw(st.binary(min_size=1, max_size=40))
    if how == "nul":
        return kind, data[:at] + b"\x00" + data[at:]
    return "text", data[:at] + draw(st.sampled_from(BAD_UTF8)) + data[at:]


def _same(a: Cell, b: Cell) -> bool:
    return a[0] == b[0] and (
        a[1] == b[1] or (a[0] == "real" and struct.pack(">d", a[1]) == struct.pack(">d", b[1]))
    )


# -- what every call may do ----------------------------------------------------------------------


def outcome(call: Callable[[], Any]) -> Any:
    """The call's result, or the `VaultError` it raised; anything else fails the example."""
    try:
        return call()
    except VaultError as exc:
        return exc


def check_pending(fx: Fixture, pending: Any) -> list[StoredPayment]:
    """What pending handed out is, byte for byte, what was stored."""
    if isinstance(pending, VaultError):
        return []
    for p in pending:
        assert p == fx.genuine.get(p.sequence), f"record {p.sequence} was handed out altered"
    return list(pending)


# -- 1. record rows ------------------------------------------------------------------------------


def test_record_rows(fixture: Callable[..., Fixture]) -> None:
    fx = fixture()
    columns = TABLES["records"]
    base = fx.rows("records")
    by_seq = {row[0][1]: row for row in base}
    free = [0, -1, 1, 4, 7, 11, 12, 100, (1 << 63) - 1, -(1 << 63)]

    @FUZZ
    @given(st.data())
    def run(data: st.DataObject) -> None:
        fx.runs += 1
        seq = data.draw(st.sampled_from(sorted(by_seq)), label="sequence")
        row = list(by_seq[seq])
        others = [r for s, r in by_seq.items() if s != seq]
        for _ in range(data.draw(st.integers(1, 3), label="mutations")):
            col = data.draw(st.integers(1, len(columns) - 1), label="column")
            row[col] = data.draw(mutated(row[col], row, others, col), label=columns[col])
        where = data.draw(st.sampled_from(["in place", "in place", "moved", "copied"]))
        target = seq if where == "in place" else data.draw(st.sampled_from(free))
        with contextlib.suppress(sqlite3.Error):  # a float NaN or such: written as SQLite can
            if where == "moved":
                fx.side.execute("DELETE FROM records WHERE sequence = ?", (seq,))
            write_row(fx.side, "records", [("integer", target), *row[1:]])
        try:
            now = {r[0][1]: r for r in fx.rows("records")}
            changed = {
                s for s, r in now.items() if s not in by_seq or not all(map(_same, r, by_seq[s]))
            }
            report = outcome(lambda: fx.vault.verify(integrity=False))
            pending = check_pending(fx, outcome(fx.vault.pending))
            outcome(fx.vault.summary)
            outcome(fx.vault.quarantined)
            handed = {p.sequence for p in pending}
            assert not changed & handed, f"changed records {changed & handed} handed out"
            if not isinstance(report, VaultError):
                flagged = {f.sequence for f in report.findings}
                held = {q.sequence for q in report.quarantined}
                assert changed <= flagged and changed <= held, (changed, report.findings)
                # The records nobody touched still go.
                untouched = set(by_seq) - changed - ({seq} if where == "moved" else set())
                assert untouched <= handed, (untouched - handed, report.findings)
        finally:
            fx.restore()

    run()


# -- 2. authenticated content --------------------------------------------------------------------

#: Display details as the vault encrypts them, to be mutated field by field.
DISPLAY_FIELDS = (
    "brand",
    "last4",
    "exp_month",
    "exp_year",
    "cardholder_name",
    "read_method",
    "receipt",
)
ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(1 << 70), 1 << 70),
    st.floats(),
    st.text(max_size=20),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)


@st.composite
def odd_json(draw: st.DrawFn, genuine: dict[str, Any]) -> bytes:
    """JSON bytes near `genuine`: a field dropped, given another type, or no object at all."""
    how = draw(st.sampled_from(["field", "field", "drop", "raw"]))
    if how == "raw":
        return draw(st.sampled_from(ODD_JSON) | st.binary(max_size=40))
    doc = dict(genuine)
    keys = sorted(doc) or ["x"]
    key = draw(st.sampled_from(keys))
    if how == "drop":
        doc.pop(key, None)
    else:
        doc[key] = draw(ODD_VALUES)
    return json.dumps(doc).encode()


def test_authenticated_content(fixture: Callable[..., Fixture]) -> None:
    fx = fixture()
    vault = fx.vault
    keys, vault_id = vault._keys, vault._read_state().vault_id
    columns = TABLES["records"]
    base = {row[0][1]: row for row in fx.rows("records")}
    typed = {
        "account": st.sampled_from([b"", b"acct x", b"\xff", b"a" * 300]),
        "amount": EXTREME_INTS | st.integers(-5, 5),
        "currency": st.sampled_from([b"", b"USD", b"us", b"\xc3(", b"usdd"]),
        "capture_method": st.sampled_from([b"", b"later", b"\x00"]),
        "local_id": st.sampled_from([b"", b"pio x", b"\xed\xa0\x80"]),
        "description": st.sampled_from([None, b"", b"\xff", b"x" * 1001]),
        "stored_at": FLOATS,
    }

    @FUZZ
    @given(st.data())
    def run(data: st.DataObject) -> None:
        fx.runs += 1
        seq = data.draw(st.sampled_from(sorted(base)), label="sequence")
        row = vault_module._row_from(
            (*[v for _, v in base[seq]], ",".join(k for k, _ in base[seq]).encode())
        )
        assert not isinstance(row, int)
        original = row
        what = data.draw(st.sampled_from(["metadata", "display", "column"]), label="what")
        if what == "metadata":
            genuine = json.loads(row.metadata)
            row = row._replace(metadata=data.draw(odd_json(genuine), label="metadata"))
        elif what == "column":
            name = data.draw(st.sampled_from(sorted(typed)), label="column")
            row = row._replace(**{name: data.draw(typed[name], label=name)})
        if what == "display" or data.draw(st.booleans(), label="re-encrypt"):
            key = AESGCM(keys.display(vault_id, seq))
            nonce = row.display[:12]
            was = original
            aad = vault._display_aad(vault_id, was.account, was.reader, seq, was.local_id)
            genuine = json.loads(key.decrypt(nonce, row.display[12:], aad))
            aad = vault._display_aad(vault_id, row.account, row.reader, seq, row.local_id)
            plain = (
                data.draw(odd_json(genuine), label="display")
                if what == "display"
                else json.dumps(genuine).encode()
            )
            row = row._replace(display=nonce + key.encrypt(nonce, plain, aad))
        mac = vault_module._mac(keys.mac, row.prev_mac, row.canonical(vault_id))
        row = row._replace(mac=mac)
        cells = [
            ("null" if v is None else kind.rstrip("?"), v)
            for (_, kind), v in zip(vault_module._RECORD_COLUMNS, row, strict=True)
        ]
        write_row(fx.side, "records", cells)
        try:
            assert not isinstance(outcome(lambda: vault.verify(integrity=False)), Exception)
            for p in check_authentic(outcome(vault.pending)):
                if p.sequence != seq:
                    assert p == fx.genuine[p.sequence]
            outcome(vault.summary)
        finally:
            fx.restore()

    del columns
    run()


def check_authentic(pending: Any) -> list[StoredPayment]:
    """Handed out only with the shape and bounds the vault stores (`_prepare`'s rules)."""
    if isinstance(pending, VaultError):
        return []
    for p in pending:
        d = p.display
        assert vault_module._ID.fullmatch(p.account) and vault_module._ID.fullmatch(p.reader)
        assert vault_module._ID.fullmatch(p.local_id)
        assert type(p.amount) is int and 0 < p.amount < (1 << 53)
        assert vault_module._CURRENCY.fullmatch(p.currency)
        assert p.capture_method in vault_module.CAPTURE_METHODS
        assert all(type(k) is str and type(v) is str for k, v in p.metadata.items())
        assert p.description is None or (type(p.description) is str and len(p.description) <= 1000)
        assert type(p.stored_at) is float and math.isfinite(p.stored_at) and p.stored_at >= 0
        assert type(d.brand) is str and type(d.last4) is str and type(d.read_method) is str
        assert type(d.exp_month) is int and type(d.exp_year) is int
        assert d.cardholder_name is None or type(d.cardholder_name) is str
        assert type(d.receipt) is dict
        json.dumps(p.display.as_dict(), allow_nan=False)
    return list(pending)


# -- 3. the state row ----------------------------------------------------------------------------


def test_state_row(fixture: Callable[..., Fixture]) -> None:
    normal, salvage = fixture("normal"), fixture("salvage", salvage=True)
    columns = TABLES["vault_state"]

    @FUZZ
    @given(st.data())
    def run(data: st.DataObject) -> None:
        normal.runs += 1
        (row,) = normal.snapshot["vault_state"]
        row = list(row)
        for _ in range(data.draw(st.integers(1, 3), label="mutations")):
            col = data.draw(st.integers(1, len(columns) - 1), label="column")
            row[col] = data.draw(mutated(row[col], row, [], col), label=columns[col])
        for fx in (normal, salvage):
            with contextlib.suppress(sqlite3.Error):
                write_row(fx.side, "vault_state", row)
        try:
            (now,) = normal.rows("vault_state")
            changed = not all(map(_same, now, normal.snapshot["vault_state"][0]))
            for fx in (normal, salvage):
                vault = fx.vault
                report = outcome(partial(vault.verify, integrity=False))
                if changed and not isinstance(report, VaultError):
                    assert report.of_kind(FindingKind.STATE), report.findings
                pending = check_pending(fx, outcome(vault.pending))
                if changed and fx is normal:
                    assert not pending, "pending read past an altered state"
                outcome(vault.summary)
                outcome(partial(getattr, vault, "head_sequence"))
                stored = outcome(partial(vault.store, payment(999)))
                if changed:
                    assert isinstance(stored, VaultError), "stored on an altered state"
                skipped = outcome(partial(vault.advance_sequence, 20))
                if changed:  # refused, or nothing to do (the altered counter is ahead)
                    assert isinstance(skipped, VaultError) or skipped == 0, "advanced it"
                if pending:
                    outcome(partial(vault.remove, pending[0].sequence))
        finally:
            normal.restore()
            salvage.restore()

    run()


# -- 4. removed links, quarantine and card uses --------------------------------------------------


def test_side_tables(fixture: Callable[..., Fixture]) -> None:
    normal, salvage = fixture("normal"), fixture("salvage", salvage=True)
    tables = ("removed_links", "quarantine", "card_uses")
    seeds = {
        "removed_links": normal.snapshot["removed_links"],
        "quarantine": [[("integer", 3), ("text", b"altered"), ("text", b"x"), ("real", 1.0)]],
        "card_uses": normal.snapshot["card_uses"],
    }

    @FUZZ
    @given(st.data())
    def run(data: st.DataObject) -> None:
        normal.runs += 1
        table = data.draw(st.sampled_from(tables), label="table")
        columns = TABLES[table]
        rows = seeds[table]
        how = data.draw(st.sampled_from(["mutate", "mutate", "add", "delete"]), label="how")
        if how == "delete" or not rows:
            statement = (f"DELETE FROM {table}", ())
            row: list[Cell] = []
        else:
            row = list(data.draw(st.sampled_from(rows), label="row"))
            for _ in range(data.draw(st.integers(1, len(columns)), label="mutations")):
                col = data.draw(st.integers(0, len(columns) - 1), label="column")
                row[col] = data.draw(mutated(row[col], row, rows, col), label=columns[col])
            if table != "card_uses" and row[0][0] != "integer":
                row[0] = ("integer", data.draw(INT64))  # a rowid is an integer
        for fx in (normal, salvage):
            with contextlib.suppress(sqlite3.Error):
                if how == "delete":
                    fx.side.execute(*statement)
                else:
                    if how == "mutate" and table != "quarantine":
                        fx.side.execute(f"DELETE FROM {table}")
                    write_row(fx.side, table, row)
        try:
            links_changed = table == "removed_links" and _links(normal.rows(table)) != _links(
                normal.snapshot[table]
            )
            for fx in (normal, salvage):
                vault = fx.vault
                report = outcome(partial(vault.verify, integrity=False))
                if links_changed and not isinstance(report, VaultError):
                    assert report.of_kind(FindingKind.STATE), report.findings
                pending = check_pending(fx, outcome(vault.pending))
                if links_changed and fx is normal:
                    assert not pending, "pending read past an altered removed set"
                outcome(vault.summary)
                outcome(vault.quarantined)
                outcome(partial(vault.card_uses, f"{4:064x}"))
                if pending:
                    outcome(partial(vault.remove, pending[-1].sequence))
        finally:
            normal.restore()
            salvage.restore()

    run()


def _links(rows: list[list[Cell]]) -> set[tuple[Any, ...]]:
    """The removed set as the vault reads it: text and blob alike are the MAC's bytes."""
    return {
        (s, k in ("text", "blob"), bytes(m) if isinstance(m, bytes) else m)
        for (_, s), (k, m) in rows
    }


# -- 5. the tip file -----------------------------------------------------------------------------


def test_tip_file(fixture: Callable[..., Fixture]) -> None:
    fx = fixture()
    vault = fx.vault
    genuine = json.loads(fx.tip)
    state, removed = vault._read_state(), vault._read_removed()
    path = fx.directory / vault_module.TIP_NAME

    @FUZZ
    @given(st.data())
    def run(data: st.DataObject) -> None:
        fx.runs += 1
        how = data.draw(st.sampled_from(["json", "json", "bytes", "cell"]), label="how")
        if how == "json":
            tip = data.draw(odd_json(genuine), label="tip")
        elif how == "cell":
            doc = dict(genuine)
            key = data.draw(st.sampled_from(sorted(doc)), label="field")
            doc[key] = data.draw(
                EXTREME_INTS | FLOATS | st.sampled_from([-(1 << 64), 1 << 64, 10**400]),
                label=key,
            )
            tip = json.dumps(doc).encode()
        else:
            (_, tip) = data.draw(mutated(("blob", fx.tip), [], [], 0), label="tip")
            tip = tip if isinstance(tip, bytes) else repr(tip).encode()
        path.write_bytes(tip)
        try:
            findings = vault._tip_findings(state, removed)
            parsed = vault._parse_tip(tip)
            if parsed is not None:
                # Accepted only with the genuine values (the tag covers every one).
                assert parsed == vault._parse_tip(fx.tip)
            assert bool(findings) == (parsed is None), findings
        finally:
            path.write_bytes(fx.tip)

    run()


def test_tip_file_at_open(fixture: Callable[..., Fixture]) -> None:
    """Fewer examples: each opens the vault (a lock, an integrity check, a tip write)."""
    fx = fixture()
    fx.vault.close()
    genuine = json.loads(fx.tip)
    path = fx.directory / vault_module.TIP_NAME

    @settings(FUZZ, max_examples=max(EXAMPLES // 10, 20))
    @given(odd_json(genuine))
    def run(tip: bytes) -> None:
        fx.runs += 1
        path.write_bytes(tip)
        try:
            opened = outcome(lambda: Vault.open(fx.directory, clock=fx.clock))
            if isinstance(opened, Vault):
                opened.close()
                assert vault_module.Vault._parse_tip(opened, tip) is not None
            else:
                assert isinstance(opened, VaultRollbackError), opened
        finally:
            path.write_bytes(fx.tip)

    run()


# -- 6. the device key ---------------------------------------------------------------------------


def test_device_key(fixture: Callable[..., Fixture]) -> None:
    fx = fixture()
    path = fx.directory / vault_module.KEY_NAME
    genuine = path.read_bytes()

    @FUZZ
    @given(st.data())
    def run(data: st.DataObject) -> None:
        fx.runs += 1
        (_, key) = data.draw(mutated(("blob", genuine), [], [], 0), label="key")
        key = key if isinstance(key, bytes) else repr(key).encode()
        probe = fx.directory / "probe.key"
        probe.write_bytes(key)
        probe.chmod(0o600)
        got = outcome(lambda: vault_module._load_device_key(probe, create=False))
        if isinstance(got, VaultError):
            assert isinstance(got, VaultKeyError)
        else:
            assert got == key and len(key) == 32
            # Any other 32 bytes are not this vault's key.
            keys = vault_module._Keys(key)
            state = fx.vault._read_state()
            check = vault_module._mac(keys.mac, b"stowpay vault key check v1\x00", state.vault_id)
            assert hmac.compare_digest(check, state.key_check) == (key == genuine)

    run()


# -- regressions: what the fuzzer found, as plain tests ------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [
        ("head_sequence", float("inf")),
        ("head_sequence", 1 << 70),
        ("removed_total", -(1 << 64)),
        ("head_sequence", 10**400),
    ],
    ids=["infinity", "2**70", "-2**64", "10**400"],
)
def test_a_tip_with_numbers_past_64_bits_is_refused_as_forged(
    fixture: Callable[..., Fixture], field: str, value: Any
) -> None:
    fx = fixture()
    fx.vault.close()
    doc = json.loads(fx.tip)
    doc[field] = value
    (fx.directory / vault_module.TIP_NAME).write_text(json.dumps(doc))
    with pytest.raises(VaultRollbackError, match="damaged or forged"):
        Vault.open(fx.directory, clock=fx.clock)


def test_a_deeply_nested_tip_is_refused_as_forged(fixture: Callable[..., Fixture]) -> None:
    fx = fixture()
    fx.vault.close()
    (fx.directory / vault_module.TIP_NAME).write_bytes(b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(VaultRollbackError, match="damaged or forged"):
        Vault.open(fx.directory, clock=fx.clock)


def test_remove_in_salvage_mode_with_a_damaged_removed_summary_is_refused(
    fixture: Callable[..., Fixture],
) -> None:
    fx = fixture(salvage=True)
    fx.side.execute("UPDATE vault_state SET removed_xor = x''")
    with pytest.raises(VaultCorruptError, match="size"):
        fx.vault.remove(2)
    assert fx.rows("records") == fx.snapshot["records"]


def test_remove_in_salvage_mode_at_the_end_of_64_bits_is_refused(
    fixture: Callable[..., Fixture],
) -> None:
    fx = fixture(salvage=True)
    fx.side.execute("UPDATE vault_state SET removed_total = ?", ((1 << 63) - 1,))
    with pytest.raises(VaultCorruptError, match="cannot be updated"):
        fx.vault.remove(2)
    assert fx.rows("records") == fx.snapshot["records"]


def test_a_first_sequence_past_the_advance_limit_is_refused(tmp_path: Path) -> None:
    with pytest.raises(VaultConfigError):
        Vault.open(tmp_path / "v", clock=ManualClock(0.0), first_sequence=1 << 63)


def test_a_removed_link_that_is_not_bytes_is_reported(fixture: Callable[..., Fixture]) -> None:
    fx = fixture()
    fx.side.execute("INSERT INTO removed_links (sequence, mac) VALUES (5, 32)")
    report = fx.vault.verify(integrity=False)
    assert report.of_kind(FindingKind.STATE), report.findings
    with pytest.raises(VaultCorruptError):
        fx.vault.pending()


def _resealed(fx: Fixture, seq: int, **changes: Any) -> None:
    """Record `seq` with `changes` (and `display_doc`: its details), MACed with the vault's key."""
    vault, doc = fx.vault, changes.pop("display_doc", None)
    vault_id = vault._read_state().vault_id
    raw = fx.side.execute(vault_module._SELECT_RECORD + " WHERE sequence = ?", (seq,)).fetchone()
    row = vault_module._row_from(raw)
    assert not isinstance(row, int)
    row = row._replace(**changes)
    if doc is not None:
        aad = vault._display_aad(vault_id, row.account, row.reader, seq, row.local_id)
        nonce = os.urandom(12)
        sealed = AESGCM(vault._keys.display(vault_id, seq)).encrypt(nonce, doc, aad)
        row = row._replace(display=nonce + sealed)
    row = row._replace(
        mac=vault_module._mac(vault._keys.mac, row.prev_mac, row.canonical(vault_id))
    )
    write_row(
        fx.side,
        "records",
        [
            ("null" if v is None else kind.rstrip("?"), v)
            for (_, kind), v in zip(vault_module._RECORD_COLUMNS, row, strict=True)
        ],
    )


GOOD_DISPLAY = {
    "brand": "visa",
    "last4": "4242",
    "exp_month": 12,
    "exp_year": 2031,
    "cardholder_name": None,
    "read_method": "contact_emv",
    "receipt": {},
}


@pytest.mark.parametrize(
    "changes",
    [
        {"metadata": b"[" * 100_000 + b"]" * 100_000},
        {"display_doc": json.dumps({**GOOD_DISPLAY, "exp_month": float("inf")}).encode()},
        {"display_doc": json.dumps({**GOOD_DISPLAY, "cardholder_name": [1]}).encode()},
        {"display_doc": json.dumps({**GOOD_DISPLAY, "exp_year": True}).encode()},
        {"metadata": b'{"order_id": null}'},
        {"amount": 0},
        {"currency": b"USD"},
        {"stored_at": float("inf")},
    ],
    ids=[
        "nested metadata",
        "infinite month",
        "list as name",
        "true as year",
        "null in metadata",
        "zero amount",
        "upper-case currency",
        "infinite time",
    ],
)
def test_an_authenticated_record_the_vault_would_not_store_is_quarantined(
    fixture: Callable[..., Fixture], changes: dict[str, Any]
) -> None:
    fx = fixture()
    _resealed(fx, 5, **changes)
    # Its own MAC is good (record 6, still chained to the old one, is not).
    assert fx.vault.verify(integrity=False).findings[0].sequence != 5
    pending = fx.vault.pending()
    assert {p.sequence for p in pending} == set(fx.genuine) - {5, 6}
    assert [(q.sequence, q.kind) for q in fx.vault.quarantined()] == [
        (5, "altered"),
        (6, "chain_break"),
    ]

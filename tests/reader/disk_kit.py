"""A simulated disk under the vault's SQLite: power cuts below the page cache, and a full disk.

`SimulatedDisk` is an APSW VFS that inherits the default one, so reads and writes reach real
files (the page cache, as the process sees it). Beside that it keeps, per file, what is
durable: the file as of its last ``xSync``, and the writes and truncations issued since. A
power cut (`SimulatedDisk.cut`) writes out what a disk could hold after losing power: the
durable image with a random subset of the unsynced operations applied in a random order and
the last write of each file torn at a random byte. Every operation after the cut fails, as
with the power gone. ``xSync`` itself does not reach the real disk: durability here is the
simulation's, and the test files are scratch.

The vault is a stdlib-sqlite3 program and the standard library cannot register a VFS, so
`connector` gives it an APSW connection behind `ApswConnection`: the part of
``sqlite3.Connection`` the vault uses (execute, executemany, total_changes, in_transaction,
text_factory=bytes, close), raising ``sqlite3`` errors with the same SQLite codes. The vault
runs its own SQL and pragmas on it unchanged (`Vault.open(..., connector=...)`).
"""

from __future__ import annotations

import contextlib
import itertools
import random
import shutil
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import apsw

_names = itertools.count()

# A sqlite3 exception class for each primary SQLite code the vault may meet.
_ERROR_CLASSES: dict[int, type[sqlite3.Error]] = {
    apsw.SQLITE_CORRUPT: sqlite3.DatabaseError,
    apsw.SQLITE_NOTADB: sqlite3.DatabaseError,
    apsw.SQLITE_CONSTRAINT: sqlite3.IntegrityError,
    apsw.SQLITE_MISMATCH: sqlite3.IntegrityError,
    apsw.SQLITE_RANGE: sqlite3.ProgrammingError,
}


# Each APSW exception class's primary code: an exception raised inside this VFS reaches the
# caller as it was raised, without the result codes APSW sets on SQLite's own errors.
_CODES: dict[type, int] = {}
for _code in range(1, 29):
    with contextlib.suppress(Exception):
        _CODES.setdefault(type(apsw.exception_for(_code)), _code)


def _as_sqlite3(exc: apsw.Error) -> sqlite3.Error:
    """The sqlite3 error the standard library would raise for the same SQLite result."""
    code = next((c for t, c in _CODES.items() if isinstance(exc, t)), apsw.SQLITE_ERROR)
    extended = int(getattr(exc, "extendedresult", None) or getattr(exc, "result", None) or code)
    primary = extended & 0xFF
    out = _ERROR_CLASSES.get(primary, sqlite3.OperationalError)(str(exc))
    out.sqlite_errorcode = extended
    out.sqlite_errorname = apsw.mapping_extended_result_codes.get(
        extended, apsw.mapping_result_codes.get(primary, "SQLITE_ERROR")
    )
    return out


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except apsw.Error as exc:
        raise _as_sqlite3(exc) from exc


class _Cursor:
    def __init__(self, owner: ApswConnection, rows: Iterator[Any]) -> None:
        self._owner = owner
        self._rows = rows

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        while (row := self.fetchone()) is not None:
            yield row

    def fetchone(self) -> tuple[Any, ...] | None:
        with _translated():
            row = next(self._rows, None)
        return None if row is None else self._owner._convert(row)

    def fetchall(self) -> list[tuple[Any, ...]]:
        return list(self)


class ApswConnection:
    """The part of ``sqlite3.Connection`` the vault uses, on an APSW connection."""

    def __init__(self, conn: apsw.Connection) -> None:
        self._conn = conn
        self.text_factory: type = str
        #: Called just before each COMMIT runs (the canaries plant bugs here).
        self.before_commit: Callable[[], None] | None = None

    def _convert(self, row: Sequence[Any]) -> tuple[Any, ...]:
        if self.text_factory is bytes:
            return tuple(v.encode() if isinstance(v, str) else v for v in row)
        return tuple(row)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _Cursor:
        if self.before_commit is not None and sql.strip().upper() == "COMMIT":
            self.before_commit()
        with _translated():
            cursor = self._conn.execute(sql, tuple(params))
        return _Cursor(self, iter(cursor))

    def executemany(self, sql: str, seq: Iterable[Sequence[Any]]) -> _Cursor:
        rows = [tuple(p) for p in seq]
        with _translated():
            cursor = self._conn.executemany(sql, rows) if rows else None
        return _Cursor(self, iter(cursor) if cursor is not None else iter(()))

    @property
    def total_changes(self) -> int:
        return int(self._conn.total_changes())

    @property
    def in_transaction(self) -> bool:
        return not self._conn.get_autocommit()

    def close(self) -> None:
        # After a power cut every write fails: closing must not raise for that.
        with contextlib.suppress(apsw.Error):
            self._conn.close(True)


@dataclass
class _File:
    """What the disk holds durably for one file, and what was issued since its last sync."""

    #: None while no sync made the file exist on the disk
    durable: bytearray | None
    pending: list[tuple[str, int, bytes]] = field(default_factory=list)

    def settle(self) -> None:
        image = self.durable if self.durable is not None else bytearray()
        for op in self.pending:
            _apply(image, op)
        self.durable, self.pending = image, []


def _apply(image: bytearray, op: tuple[str, int, bytes]) -> None:
    kind, at, data = op
    if kind == "t":
        del image[at:]
        return
    if len(image) < at:
        image.extend(bytes(at - len(image)))
    image[at : at + len(data)] = data


#: The kinds of damage a power cut does to the writes not yet synced (see `SimulatedDisk.cut`).
DAMAGE = ("torn", "reordered", "dropped", "flushed")


class PowerOff(apsw.IOError):
    """Raised by every disk operation once the power is cut."""


class SimulatedDisk(apsw.VFS):
    """An APSW VFS on the default one that can cut the power and fill up (see the module)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.files: dict[str, _File] = {}
        #: operations (write, truncate, sync) so far; `cut_at` cuts before that operation
        self.ops = 0
        self.cut_at: int | None = None
        #: where `cut` writes its image when `cut_at` is reached, and the directory it images
        self.cut_into: Path | None = None
        self.directory: Path | None = None
        self.powered = True
        #: the damage the cut did (see `cut`)
        self.damage: str | None = None
        #: writes so far; `full_from` fails writes from that one on with SQLITE_FULL
        #: (`full_once`: that one only), as a disk that runs out of space would
        self.writes = 0
        self.full_from: int | None = None
        self.full_once = False
        self.full_hits = 0
        self.name = f"simdisk{next(_names)}"
        super().__init__(self.name, "")

    # -- what the vault gets --------------------------------------------------------------------

    def connector(
        self, before_commit: Callable[[], None] | None = None
    ) -> Callable[[str], sqlite3.Connection]:
        """A `Vault.open` connector whose connections run on this disk."""

        def connect(path: str) -> sqlite3.Connection:
            with _translated():
                conn = ApswConnection(apsw.Connection(path, vfs=self.name))
            conn.before_commit = before_commit
            return cast(sqlite3.Connection, conn)

        return connect

    def close(self) -> None:
        self.unregister()

    # -- the VFS --------------------------------------------------------------------------------

    def xOpen(self, name: Any, flags: list[int]) -> _SimFile:
        return _SimFile(self, name, flags)

    def xDelete(self, filename: str, syncdir: bool) -> None:
        self._tick()
        super().xDelete(filename, syncdir)
        self.files.pop(filename, None)

    def _tick(self) -> None:
        if not self.powered:
            raise PowerOff("the power is off")
        self.ops += 1
        if self.cut_at is not None and self.ops >= self.cut_at:
            assert self.cut_into is not None and self.directory is not None
            self.damage = self.cut(self.directory, self.cut_into)
            raise PowerOff("the power was cut")

    def _write_allowed(self) -> None:
        self.writes += 1
        if self.full_from is None:
            return
        if self.writes == self.full_from or (not self.full_once and self.writes > self.full_from):
            self.full_hits += 1
            raise apsw.FullError("no space left on the device (simulated ENOSPC)")

    # -- the power cut --------------------------------------------------------------------------

    def cut(self, directory: Path, into: Path) -> str:
        """Cut the power: write into `into` what `directory` could hold on the disk now.

        SQLite's files get their durable image plus what reached the disk of the operations
        issued since their last sync, by one of four kinds of damage (chosen at random, the
        first most often): ``torn``, a random subset applied in a random order with the last
        write torn at a random byte; ``reordered``, a random subset in a random order;
        ``dropped``, a random subset in order; ``flushed``, all of them in order (the sync
        never returned). Files SQLite does not write through this disk (the device key, the
        tip file) were written durably by the vault and are copied as they are; the ``-shm``
        index is never durable (SQLite rebuilds it from the WAL) and is left out. Returns the
        kind of damage.
        """
        self.powered = False
        into.mkdir(parents=True, exist_ok=True)
        damage = self.rng.choices(DAMAGE, (7, 1, 1, 1))[0]
        keep = 1.0 if damage == "flushed" else self.rng.choice((0.1, 0.5, 0.9, self.rng.random()))
        tracked = set()
        for name, state in sorted(self.files.items()):
            path = Path(name)
            if path.parent != directory:
                continue
            tracked.add(path.name)
            image = bytearray(state.durable) if state.durable is not None else None
            ops = [op for op in state.pending if self.rng.random() < keep]
            if damage in ("torn", "reordered"):
                self.rng.shuffle(ops)
            writes = [i for i, op in enumerate(ops) if op[0] == "w"]
            if writes and damage == "torn":
                kind, at, data = ops[writes[-1]]
                ops[writes[-1]] = (kind, at, data[: self.rng.randrange(len(data) + 1)])
            if ops and image is None:
                image = bytearray()
            for op in ops:
                assert image is not None
                _apply(image, op)
            if image is not None:
                (into / path.name).write_bytes(bytes(image))
        for path in sorted(directory.iterdir()):
            if path.name in tracked or path.name.endswith("-shm") or not path.is_file():
                continue
            shutil.copy2(path, into / path.name)
        return damage


class _SimFile(apsw.VFSFile):
    def __init__(self, disk: SimulatedDisk, name: Any, flags: list[int]) -> None:
        self.disk = disk
        filename = name.filename() if isinstance(name, apsw.URIFilename) else name
        self.path: str | None = filename if isinstance(filename, str) else None
        existed = self.path is not None and Path(self.path).exists()
        super().__init__("", name, flags)
        if self.path is not None and self.path not in disk.files:
            # A file that was on the disk before is durable as it is.
            durable = bytearray(Path(self.path).read_bytes()) if existed else None
            disk.files[self.path] = _File(durable)

    def _state(self) -> _File | None:
        return None if self.path is None else self.disk.files.get(self.path)

    def xWrite(self, data: bytes, offset: int) -> None:
        self.disk._tick()
        self.disk._write_allowed()
        super().xWrite(data, offset)
        state = self._state()
        if state is not None:
            state.pending.append(("w", offset, bytes(data)))

    def xTruncate(self, newsize: int) -> None:
        self.disk._tick()
        super().xTruncate(newsize)
        state = self._state()
        if state is not None:
            state.pending.append(("t", newsize, b""))

    def xSync(self, flags: int) -> None:
        self.disk._tick()
        state = self._state()
        if state is not None:
            state.settle()

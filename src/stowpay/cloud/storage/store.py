"""`Store` and `Tx`: transactions over the cloud's tables, for SQLite and PostgreSQL alike."""

from __future__ import annotations

import contextlib
import operator
import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from ...wire import jsontext
from . import migrations
from . import tables as t


@dataclass(frozen=True)
class Page:
    """One page of a list, newest first."""

    data: list[dict[str, Any]]
    has_more: bool


@dataclass(frozen=True)
class IdempotencyRecord:
    """The stored first answer to a request with an idempotency key."""

    fingerprint: str
    created: int
    status_code: int
    request_id: str
    body: bytes


#: Columns an object list may be filtered on, besides `created`.
FILTERS = ("ref", "status")


def _sqlite_url(url: str) -> str:
    if "://" in url:
        return url
    return "sqlite+pysqlite:///" + str(Path(url).expanduser().resolve())


class Store:
    """The cloud's database: a SQLite file by default, or a PostgreSQL URL."""

    def __init__(self, url: str) -> None:
        self.url = _sqlite_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        if self.is_sqlite:
            self.engine = sa.create_engine(
                self.url,
                poolclass=sa.pool.SingletonThreadPool,
                # Past this many threads' connections the pool closes one at random, even one
                # in use by another thread (which crashes sqlite3): keep it out of reach.
                pool_size=64,
            )
            sa.event.listen(self.engine, "connect", _sqlite_on_connect)
            sa.event.listen(self.engine, "begin", _sqlite_on_begin)
        else:
            url = self.url.replace("postgresql://", "postgresql+psycopg://", 1)
            self.engine = sa.create_engine(url, pool_size=5, pool_pre_ping=True)
        self._local = threading.local()
        #: every thread's kept connection, by the id of its driver connection
        self._held: weakref.WeakValueDictionary[int, _Held] = weakref.WeakValueDictionary()
        self._held_lock = threading.Lock()
        #: write transactions this process has committed (SQLite): `checkpoint`'s caller
        #: skips a round in which nothing was written
        self.writes = 0
        if self.is_sqlite:
            sa.event.listen(self.engine, "close", self._closed_by_pool)

    def migrate(self) -> list[int]:
        """Apply pending migrations."""
        return migrations.apply(self.engine)

    def write(self) -> AbstractContextManager[Tx]:
        """A transaction that may write; it commits durably when the block ends."""
        if self.is_sqlite:
            return _SqliteTransaction(self, "BEGIN IMMEDIATE")
        return self._transaction(write=True)

    def read(self) -> AbstractContextManager[Tx]:
        """A read-only transaction."""
        if self.is_sqlite:
            return _SqliteTransaction(self, "BEGIN")
        return self._transaction(write=False)

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Tx]:
        with self.engine.connect() as conn:
            if write:
                conn = conn.execution_options(stowpay_write=True)
            with conn.begin():
                yield Tx(conn)

    def checkpoint(self) -> None:
        """Copy the pages the SQLite WAL holds into the database file, on this thread's
        connection, without waiting for readers or writers (a PASSIVE checkpoint). Nothing
        to do on PostgreSQL.

        Run on a thread of its own, it takes the checkpoints that would otherwise fall to
        whichever request's commit fills the WAL (`WAL_AUTOCHECKPOINT`).

        A checkpoint copies the pages committed before it began; requests commit more while
        it copies. Another round copies those, a few rounds at most, until one finds nothing
        new. A write that begins after that starts the WAL again from its beginning (SQLite
        does so only when every page in it has been copied), which the first round alone
        seldom allowed under steady requests.
        """
        if not self.is_sqlite:
            return
        driver = self._held_connection().driver
        before = -1
        for _ in range(CHECKPOINT_ROUNDS):
            busy, pages, copied = driver.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if busy or copied < pages or pages == before:
                return  # a reader holds pages back, or all is copied
            before = pages

    def _held_connection(self) -> _Held:
        held: _Held | None = self._local.__dict__.get("held")
        if held is None or held.stale or held.conn.closed:
            held = self._hold()
        return held

    def _hold(self) -> _Held:
        old = self._local.__dict__.pop("held", None)
        if old is not None:
            old.close()
        held = self._local.held = _Held(self.engine.connect().execution_options(stowpay_held=True))
        with self._held_lock:
            self._held[id(held.driver)] = held
        return held

    def _closed_by_pool(self, dbapi_conn: Any, _record: Any) -> None:
        # SingletonThreadPool closes the oldest thread's connection when it holds too many;
        # the thread that kept it opens another on its next transaction.
        held = self._held.get(id(dbapi_conn))
        if held is not None and held.driver is dbapi_conn:
            held.stale = True

    def close(self) -> None:
        with self._held_lock:
            held = list(self._held.values())
            self._held.clear()
        for h in held:
            h.close()
        self.engine.dispose()


class _SqliteTransaction:
    """One SQLite transaction on this thread's kept connection.

    BEGIN and COMMIT go straight to the driver: checking a connection out of the pool,
    wrapping it and resetting it on return cost more than the statements of a request.
    """

    __slots__ = ("_begin", "_held", "_store")

    def __init__(self, store: Store, begin: str) -> None:
        self._store = store
        self._begin = begin

    def __enter__(self) -> Tx:
        held = self._held = self._store._held_connection()
        held.driver.execute(self._begin)
        return Tx(held.conn, held.driver)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        held = self._held
        driver = held.driver
        try:
            if exc_type is None:
                driver.commit()  # WAL + synchronous=FULL: on disk when this returns
                if self._begin == "BEGIN IMMEDIATE":
                    self._store.writes += 1
        finally:
            if driver.in_transaction:  # the block failed, or its commit did
                driver.rollback()
            # Work done through SQLAlchemy made it open its own (bookkeeping) transaction
            # inside ours; ours has ended, so ending that one touches nothing in the file.
            if held.conn.in_transaction():
                held.conn.rollback()


class _Held:
    """A thread's open SQLite connection, returned to the pool when the thread ends."""

    def __init__(self, conn: sa.Connection) -> None:
        self.conn = conn
        self.driver: Any = conn.connection.driver_connection
        #: set when the pool closed the driver connection under it
        self.stale = False

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closing at exit: nothing left to report to
            if self.stale:
                # Closed under it already: given back as unusable, with no rollback tried.
                self.conn.invalidate()
            self.conn.close()

    def __del__(self) -> None:
        # Runs when the thread's locals are dropped: a pooled connection given back
        # explicitly, rather than found by the garbage collector (which warns).
        self.close()


#: Pages in the WAL before a commit checkpoints them into the database file.
WAL_AUTOCHECKPOINT = 4000
#: At most this many checkpoints, one after another, in one `Store.checkpoint`.
CHECKPOINT_ROUNDS = 4


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    # Take transaction control from the driver so BEGIN IMMEDIATE is ours to issue.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is on disk before we answer; "stored" must survive a power cut.
    cur.execute("PRAGMA synchronous=FULL")
    # A checkpoint runs inside the commit that fills the WAL, unless the cloud's checkpoint
    # thread (`Store.checkpoint`) took it first. Every 4,000 pages rather than SQLite's
    # 1,000: an API request writes about 19 pages, many of them the same hot index pages,
    # so a longer interval copies each of those once for more commits (about 45 -> 27 µs of
    # checkpoint per commit; docs/benchmarks.md). The WAL file stays near 16 MiB.
    cur.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT}")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _sqlite_on_begin(conn: sa.Connection) -> None:
    # A writer takes the lock up front, so two writers never deadlock upgrading a read lock.
    # Issued on the driver's connection directly: it runs before every request.
    driver = conn.connection.driver_connection
    assert driver is not None
    options = conn.get_execution_options()
    if options.get("stowpay_held") and driver.in_transaction:
        return  # a kept connection, inside the transaction Store began on the driver itself
    if options.get("stowpay_write"):
        driver.execute("BEGIN IMMEDIATE")
    else:
        driver.execute("BEGIN")


def _load(body: str) -> dict[str, Any]:
    return jsontext.loads(body)  # type: ignore[no-any-return]


# The statements every request runs, built once: a statement object reused with bound
# parameters skips SQLAlchemy's construction and cache-key work on each execution.
_o = t.objects.c
_GET = sa.select(_o.body).where(
    _o.id == sa.bindparam("b_id"), _o.account_id == sa.bindparam("b_account")
)
_GET_TYPED = _GET.where(_o.type == sa.bindparam("b_type"))
_GET_MANY = sa.select(_o.id, _o.body).where(
    _o.account_id == sa.bindparam("b_account"),
    _o.type == sa.bindparam("b_type"),
    _o.id.in_(sa.bindparam("b_ids", expanding=True)),
)
# The same on SQLite, with the ids as one JSON array: a fixed statement, where SQLAlchemy
# compiles an expanding IN list again on every call (500 ids each). CROSS JOIN keeps
# SQLite's planner looking each id up in the id index: left to itself, it scans every object
# of the type, a cost that grows with the store.
_GET_MANY_SQLITE = (
    "SELECT o.id, o.body FROM json_each(?) AS wanted CROSS JOIN objects AS o"
    " ON o.id = wanted.value WHERE o.account_id = ? AND o.type = ?"
)
_INSERT = t.objects.insert()
_UPDATE = t.objects.update().where(
    _o.id == sa.bindparam("b_id"), _o.account_id == sa.bindparam("b_account")
)
_DELETE = t.objects.delete().where(
    _o.id == sa.bindparam("b_id"), _o.account_id == sa.bindparam("b_account")
)
_DELETE_METADATA = t.object_metadata.delete().where(
    t.object_metadata.c.object_id == sa.bindparam("b_id")
)
_INSERT_METADATA = t.object_metadata.insert()
_ik = t.idempotency_keys.c
_IDEMPOTENCY_GET = sa.select(
    _ik.fingerprint, _ik.created, _ik.status_code, _ik.request_id, _ik.body
).where(_ik.account_id == sa.bindparam("b_account"), _ik.key == sa.bindparam("b_key"))
_IDEMPOTENCY_PUT = t.idempotency_keys.insert()
_INSERT_DELIVERY = t.webhook_deliveries.insert()
_ENDPOINTS = (
    sa.select(_o.body)
    .where(_o.account_id == sa.bindparam("b_account"), _o.type == sa.bindparam("b_type"))
    .order_by(_o.seq.desc())
    .limit(sa.bindparam("b_limit"))
)

_Compiled = tuple[str, tuple[tuple[str, Any], ...]]
_SQLITE_SQL: dict[tuple[Any, tuple[str, ...]], _Compiled] = {}


def _sqlite_sql(stmt: Any, names: tuple[str, ...], dialect: sa.Dialect) -> _Compiled:
    """A prebuilt statement compiled for SQLite, once: its SQL, and its parameters in order
    with the values of those the statement fixes itself (such as an OFFSET 0)."""
    found = _SQLITE_SQL.get((stmt, names))
    if found is None:
        compiled = stmt.compile(dialect=dialect, column_keys=list(names))
        order = tuple(
            (n, None if n in names else compiled.binds[n].value) for n in compiled.positiontup
        )
        found = _SQLITE_SQL[(stmt, names)] = (compiled.string, order)
    return found


def _amount(obj: dict[str, Any]) -> int | None:
    amount = obj.get("amount")
    return amount if isinstance(amount, int) else None


class Tx:
    """One transaction. Every method is scoped to the account it is given."""

    def __init__(self, conn: sa.Connection, sqlite: Any = None) -> None:
        self.conn = conn
        # On SQLite the statements each request runs go straight to the driver's connection,
        # inside the same transaction: SQLAlchemy compiles them once, and an execution then
        # costs what sqlite3 costs. Other databases run them through SQLAlchemy.
        self._sqlite: Any = sqlite
        if sqlite is None and conn.dialect.name == "sqlite":
            self._sqlite = conn.connection.driver_connection
        #: webhook deliveries this transaction queued (the dispatcher is woken for them)
        self.queued_deliveries = 0
        self._endpoints: dict[str, list[dict[str, Any]]] = {}
        #: objects this transaction knows to have no metadata rows (so none to delete)
        self._bare: set[str] = set()

    # -- accounts ---------------------------------------------------------------------------

    def insert_account(
        self, account: dict[str, Any], secret_key_hash: str, publishable_key: str
    ) -> None:
        self.conn.execute(
            t.accounts.insert().values(
                id=account["id"],
                created=account["created"],
                secret_key_hash=secret_key_hash,
                publishable_key=publishable_key,
                body=jsontext.dumps(account),
            )
        )

    def account_by_key_hash(self, secret_key_hash: str) -> dict[str, Any] | None:
        row = self.conn.execute(
            sa.select(t.accounts.c.body).where(t.accounts.c.secret_key_hash == secret_key_hash)
        ).first()
        return None if row is None else _load(row.body)

    def account(self, account_id: str) -> dict[str, Any] | None:
        row = self.conn.execute(
            sa.select(t.accounts.c.body).where(t.accounts.c.id == account_id)
        ).first()
        return None if row is None else _load(row.body)

    def account_count(self) -> int:
        return int(
            self.conn.execute(sa.select(sa.func.count()).select_from(t.accounts)).scalar_one()
        )

    # -- objects ----------------------------------------------------------------------------

    def lock(self, account_id: str, object_id: str) -> None:
        """Hold the object's row until the transaction ends, if it exists.

        Work that reads then rewrites one object (a reader's sequence state) takes this first,
        so another cloud process doing the same waits and then reads the result. On SQLite
        a writing transaction holds the whole database already.
        """
        if self._sqlite is not None:
            return
        self.conn.execute(
            sa.select(_o.id)
            .where(_o.id == object_id, _o.account_id == account_id)
            .with_for_update()
        )

    def get(
        self, account_id: str, object_id: str, type_: str | None = None
    ) -> dict[str, Any] | None:
        """The object with this id if it belongs to `account_id` (and is of `type_`)."""
        params = {"b_id": object_id, "b_account": account_id}
        if type_ is None:
            rows = self._rows(_GET, params)
        else:
            params["b_type"] = type_
            rows = self._rows(_GET_TYPED, params)
        if not rows:
            return None
        obj = _load(rows[0][0])
        if not obj.get("metadata"):
            self._bare.add(object_id)
        return obj

    def insert(
        self,
        account_id: str,
        obj: dict[str, Any],
        *,
        ref: str | None = None,
        status: str | None = None,
        body: str | None = None,
    ) -> str | None:
        """Store a new object; `status` overrides the column an object's own status fills.

        `body` is `obj` as JSON, when the caller has it already. Returns the JSON stored,
        which is `obj` as it is now (None from a view that serializes later).
        """
        if body is None:
            body = jsontext.dumps(obj)
        self._run(
            _INSERT,
            {
                "id": obj["id"],
                "account_id": account_id,
                "type": obj["object"],
                "created": obj["created"],
                "ref": ref,
                "status": status if status is not None else obj.get("status"),
                "amount": _amount(obj),
                "body": body,
            },
        )
        self._touched(obj["object"])
        self._index_metadata(account_id, obj)
        return body

    def update(self, account_id: str, obj: dict[str, Any], *, ref: str | None = None) -> str | None:
        """Replace an object's stored body (and its filter columns).

        Returns the JSON stored, which is `obj` as it is now (None from a view that
        serializes later).
        """
        body = jsontext.dumps(obj)
        values: dict[str, Any] = {
            "status": obj.get("status"),
            "amount": _amount(obj),
            "body": body,
            "b_id": obj["id"],
            "b_account": account_id,
        }
        if ref is not None:
            values["ref"] = ref
        self._run(_UPDATE, values)
        if obj["id"] not in self._bare:
            self._run(_DELETE_METADATA, {"b_id": obj["id"]})
        self._touched(obj.get("object"))
        self._index_metadata(account_id, obj)
        return body

    def delete(self, account_id: str, object_id: str) -> None:
        self._run(_DELETE, {"b_id": object_id, "b_account": account_id})
        self._run(_DELETE_METADATA, {"b_id": object_id})
        self._bare.discard(object_id)
        self._endpoints.clear()

    def webhook_endpoints(self, account_id: str) -> list[dict[str, Any]]:
        """The account's webhook endpoints (the newest 100), read once per transaction."""
        found = self._endpoints.get(account_id)
        if found is None:
            rows = self._rows(
                _ENDPOINTS, {"b_account": account_id, "b_type": "webhook_endpoint", "b_limit": 100}
            )
            found = self._endpoints[account_id] = [_load(r[0]) for r in rows]
        return found

    def _touched(self, type_: str | None) -> None:
        if type_ == "webhook_endpoint":
            self._endpoints.clear()

    def _run(self, stmt: Any, params: dict[str, Any]) -> None:
        """Execute one of the prebuilt statements."""
        if self._sqlite is None:
            self.conn.execute(stmt, params)
            return
        sql, order = _sqlite_sql(stmt, tuple(params), self.conn.dialect)
        self._sqlite.execute(sql, [params.get(n, fixed) for n, fixed in order])

    def _rows(self, stmt: Any, params: dict[str, Any]) -> Sequence[Any]:
        """The rows (as tuples) of one of the prebuilt queries."""
        if self._sqlite is None:
            return self.conn.execute(stmt, params).all()
        sql, order = _sqlite_sql(stmt, tuple(params), self.conn.dialect)
        cursor = self._sqlite.execute(sql, [params.get(n, fixed) for n, fixed in order])
        return cursor.fetchall()  # type: ignore[no-any-return]

    def _index_metadata(self, account_id: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata")
        if not meta:
            self._bare.add(obj["id"])
            return
        self._bare.discard(obj["id"])
        self.conn.execute(
            _INSERT_METADATA,
            [
                {
                    "object_id": obj["id"],
                    "key": k,
                    "account_id": account_id,
                    "type": obj["object"],
                    "value": v,
                }
                for k, v in meta.items()
            ],
        )

    def _seq_of(self, account_id: str, type_: str, object_id: str) -> int | None:
        row = self.conn.execute(
            sa.select(t.objects.c.seq).where(
                t.objects.c.id == object_id,
                t.objects.c.account_id == account_id,
                t.objects.c.type == type_,
            )
        ).first()
        return None if row is None else int(row.seq)

    def list_page(
        self,
        account_id: str,
        type_: str,
        *,
        limit: int,
        starting_after: str | None = None,
        ending_before: str | None = None,
        created: dict[str, int] | None = None,
        filters: dict[str, str] | None = None,
        metadata: dict[str, str] | None = None,
    ) -> Page | None:
        """A page of objects, newest first; None when a cursor id is not one of them."""
        c = t.objects.c
        q: Any = sa.select(c.body, c.seq).where(c.account_id == account_id, c.type == type_)
        q = _where_created(q, created)
        for name, value in (filters or {}).items():
            if name not in FILTERS:
                raise ValueError(f"not a filter column: {name}")
            if value.endswith(".*"):
                # A prefix match (`payment_intent.*`); `%` and `_` are escaped.
                q = q.where(c[name].startswith(value[:-1], autoescape=True))
            else:
                q = q.where(c[name] == value)
        for key, value in (metadata or {}).items():
            q = q.where(_has_metadata(key, value))
        if starting_after is not None:
            seq = self._seq_of(account_id, type_, starting_after)
            if seq is None:
                return None
            q = q.where(c.seq < seq).order_by(c.seq.desc())
        elif ending_before is not None:
            seq = self._seq_of(account_id, type_, ending_before)
            if seq is None:
                return None
            q = q.where(c.seq > seq).order_by(c.seq.asc())
        else:
            q = q.order_by(c.seq.desc())
        rows = list(self.conn.execute(q.limit(limit + 1)).all())
        has_more = len(rows) > limit
        rows = rows[:limit]
        if ending_before is not None:
            rows.reverse()
        return Page([_load(r.body) for r in rows], has_more)

    def search(
        self,
        account_id: str,
        type_: str,
        where: sa.ColumnElement[bool],
        *,
        limit: int,
        before_seq: int | None,
    ) -> tuple[list[dict[str, Any]], int | None]:
        """Objects matching a compiled search condition; returns them and the next cursor."""
        c = t.objects.c
        q = sa.select(c.body, c.seq).where(c.account_id == account_id, c.type == type_, where)
        if before_seq is not None:
            q = q.where(c.seq < before_seq)
        rows = self.conn.execute(q.order_by(c.seq.desc()).limit(limit + 1)).all()
        more = len(rows) > limit
        rows = rows[:limit]
        cursor = int(rows[-1].seq) if more and rows else None
        return [_load(r.body) for r in rows], cursor

    def count(self, account_id: str, type_: str, where: sa.ColumnElement[bool]) -> int:
        c = t.objects.c
        q = sa.select(sa.func.count()).where(c.account_id == account_id, c.type == type_, where)
        return int(self.conn.execute(q).scalar_one())

    # -- idempotency ------------------------------------------------------------------------

    def idempotency_get(self, account_id: str, key: str) -> IdempotencyRecord | None:
        rows = self._rows(_IDEMPOTENCY_GET, {"b_account": account_id, "b_key": key})
        if not rows:
            return None
        fingerprint, created, status_code, request_id, body = rows[0]
        return IdempotencyRecord(fingerprint, created, status_code, request_id, bytes(body))

    def idempotency_put(self, account_id: str, key: str, record: IdempotencyRecord) -> None:
        self._run(
            _IDEMPOTENCY_PUT,
            {
                "account_id": account_id,
                "key": key,
                "fingerprint": record.fingerprint,
                "created": record.created,
                "status_code": record.status_code,
                "request_id": record.request_id,
                "body": record.body,
            },
        )

    def idempotency_forget(self, account_id: str, key: str) -> None:
        c = t.idempotency_keys.c
        self.conn.execute(
            t.idempotency_keys.delete().where(c.account_id == account_id, c.key == key)
        )

    def idempotency_prune(self, older_than: int) -> int:
        """Forget idempotency keys created before `older_than`; how many went."""
        c = t.idempotency_keys.c
        expired = c.created < older_than
        if self._sqlite is not None:
            # No age index on SQLite (migration 8): keys are stored in the order they were
            # made, so the expired ones are the rows before the first one that is not. The
            # walk reads only those; a key stored out of order (the clock set back) waits
            # for a later round, which only keeps it longer than its time to live.
            rowid: sa.ColumnClause[Any] = sa.literal_column("rowid")
            first_kept = self.conn.execute(
                sa.select(rowid)
                .select_from(t.idempotency_keys)
                .where(sa.not_(expired))
                .order_by(rowid)
                .limit(1)
            ).scalar()
            if first_kept is not None:
                expired = expired & (rowid < first_kept)
        result = self.conn.execute(t.idempotency_keys.delete().where(expired))
        return int(result.rowcount)

    # -- webhook outbox ---------------------------------------------------------------------

    def insert_delivery(self, delivery: dict[str, Any]) -> None:
        """Queue a delivery of an event to an endpoint, in the event's own transaction."""
        self._run(_INSERT_DELIVERY, delivery)
        self.queued_deliveries += 1

    def claim_deliveries(self, now: float, lease: float, limit: int) -> list[dict[str, Any]]:
        """Take up to `limit` due deliveries, leasing each for `lease` seconds.

        Each comes with its event's and endpoint's stored bodies. A delivery whose sender
        died is simply due again when its lease ends.

        Several cloud processes drain one outbox: on PostgreSQL the due rows are locked as
        they are read (`FOR UPDATE SKIP LOCKED`), so a delivery another process is claiming
        right now is passed over rather than read and leased twice; once this transaction
        commits, the lease itself keeps it from the others. On SQLite the write lock taken
        at `BEGIN IMMEDIATE` does the same (and SQLAlchemy leaves the clause out).
        """
        d = t.webhook_deliveries.c
        rows = self.conn.execute(
            sa.select(d.id, d.account_id, d.endpoint_id, d.event_id, d.created, d.attempts)
            .where(d.state == "pending", d.next_attempt_at <= now)
            .order_by(d.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
        out: list[dict[str, Any]] = []
        for r in rows:
            self.conn.execute(
                t.webhook_deliveries.update()
                .where(d.id == r.id)
                .values(next_attempt_at=now + lease)
            )
            event = self.get(r.account_id, r.event_id, "event")
            endpoint = self.get(r.account_id, r.endpoint_id, "webhook_endpoint")
            out.append({**r._asdict(), "event": event, "endpoint": endpoint})
        return out

    def finish_attempt(
        self,
        delivery_id: str,
        *,
        at: float,
        status: int | None,
        error: str | None,
        duration_ms: float,
        state: str,
        next_attempt_at: float | None,
    ) -> None:
        """Record one delivery attempt and what comes next (delivered, retry, or failed)."""
        d = t.webhook_deliveries.c
        self.conn.execute(
            t.webhook_deliveries.update()
            .where(d.id == delivery_id)
            .values(
                attempts=d.attempts + 1,
                state=state,
                next_attempt_at=next_attempt_at,
                last_attempt_at=at,
                last_status=status,
                last_error=error,
            )
        )
        self.conn.execute(
            t.webhook_attempts.insert().values(
                delivery_id=delivery_id,
                at=at,
                status=status,
                error=error,
                duration_ms=duration_ms,
            )
        )

    def deliveries(self, account_id: str, event_id: str) -> list[dict[str, Any]]:
        """Every delivery of one event, with its attempts."""
        d = t.webhook_deliveries.c
        rows = self.conn.execute(
            sa.select(t.webhook_deliveries).where(
                d.account_id == account_id, d.event_id == event_id
            )
        ).all()
        out = []
        for r in rows:
            a = t.webhook_attempts.c
            attempts = self.conn.execute(
                sa.select(a.at, a.status, a.error, a.duration_ms)
                .where(a.delivery_id == r.id)
                .order_by(a.seq)
            ).all()
            out.append({**r._asdict(), "attempt_log": [x._asdict() for x in attempts]})
        return out

    # -- cloud secrets ----------------------------------------------------------------------

    def secret(self, name: str) -> bytes | None:
        row = self.conn.execute(
            sa.select(t.cloud_secrets.c.value).where(t.cloud_secrets.c.name == name)
        ).first()
        return None if row is None else bytes(row.value)

    def put_secret(self, name: str, value: bytes, created: int) -> None:
        self.conn.execute(t.cloud_secrets.insert().values(name=name, value=value, created=created))


@dataclass
class _Pending:
    """An object write held back until `BatchTx.flush`."""

    account_id: str
    obj: dict[str, Any]
    ref: str | None
    status: str | None
    #: the JSON body, when it was taken at once (a snapshot, such as an event)
    body: str | None
    insert: bool


class BatchTx(Tx):
    """A write-behind view of a transaction, for work that writes many objects at once.

    Domain code runs against it unchanged. Inserts, updates and webhook deliveries are held
    in memory and written at `flush` with one multi-row statement per kind; an object
    inserted and then updated in the batch is written once, in its final state. Reads see
    the held writes first (a copy, as a read from the database would give).

    Inserts and updates are serialized when they are made, as `Tx` does, so the stored state
    is the one the row-by-row `Tx` would have stored, and the JSON is returned for an event
    about the object to embed (`events.emit(stored=...)`). Nothing is written unless `flush`
    is called, inside the same transaction.
    """

    def __init__(self, tx: Tx) -> None:
        super().__init__(tx.conn, tx._sqlite)
        self._outer = tx
        # One endpoint cache for both views of the transaction.
        self._endpoints = tx._endpoints
        self._pending: dict[str, _Pending] = {}
        self._loaded: dict[str, str | None] = {}
        self._deliveries: list[dict[str, Any]] = []

    def prefetch(self, account_id: str, object_ids: Sequence[str], type_: str) -> None:
        """Read these objects in one query, so that `get` answers them without one each."""
        wanted = [i for i in dict.fromkeys(object_ids) if i not in self._loaded]
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            rows: Sequence[Any]
            if self._sqlite is None:
                rows = self.conn.execute(
                    _GET_MANY, {"b_account": account_id, "b_type": type_, "b_ids": chunk}
                ).all()
            else:
                rows = self._sqlite.execute(
                    _GET_MANY_SQLITE, (jsontext.dumps(chunk), account_id, type_)
                ).fetchall()
            found = {str(r[0]): str(r[1]) for r in rows}
            for object_id in chunk:
                self._loaded[object_id] = found.get(object_id)

    def get(
        self, account_id: str, object_id: str, type_: str | None = None
    ) -> dict[str, Any] | None:
        pending = self._pending.get(object_id)
        if pending is not None:
            if pending.account_id != account_id or (
                type_ is not None and pending.obj.get("object") != type_
            ):
                return None
            return _load(pending.body or jsontext.dumps(pending.obj))
        if object_id in self._loaded:
            body = self._loaded[object_id]
            if body is None:
                return None
            obj = _load(body)
            # Prefetched for one account and type: anything else is not this object.
            return obj if type_ is None or obj.get("object") == type_ else None
        return super().get(account_id, object_id, type_)

    def insert(
        self,
        account_id: str,
        obj: dict[str, Any],
        *,
        ref: str | None = None,
        status: str | None = None,
        body: str | None = None,
    ) -> str | None:
        """Hold a new object, serialized now as `Tx.insert` stores it; that JSON is returned,
        so an event about the object embeds it instead of serializing the object again."""
        if obj["id"] in self._pending:
            raise ValueError(f"object {obj['id']} is inserted twice")
        if body is None:
            body = jsontext.dumps(obj)
        self._pending[obj["id"]] = _Pending(account_id, obj, ref, status, body, insert=True)
        self._touched(obj["object"])
        return body

    def update(self, account_id: str, obj: dict[str, Any], *, ref: str | None = None) -> str | None:
        """Hold the object's new state, serialized now as `Tx.update` would store it; that JSON
        is returned (an event about the object may embed it)."""
        body = jsontext.dumps(obj)
        held = self._pending.get(obj["id"])
        if held is not None and held.account_id == account_id:
            held.obj = obj
            held.body = body
            held.status = None  # as Tx.update: the status column follows the object
            if ref is not None:
                held.ref = ref
        else:
            self._pending[obj["id"]] = _Pending(account_id, obj, ref, None, body, insert=False)
        self._loaded.pop(obj["id"], None)
        self._touched(obj.get("object"))
        return body

    def delete(self, account_id: str, object_id: str) -> None:
        raise NotImplementedError("BatchTx holds inserts and updates only")

    def insert_delivery(self, delivery: dict[str, Any]) -> None:
        self._deliveries.append(delivery)
        self.queued_deliveries += 1

    def flush(self) -> None:
        """Write everything held, in the order it was first written, into the transaction."""
        inserts: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        metadata: list[dict[str, Any]] = []
        updated_ids: list[dict[str, Any]] = []
        for object_id, p in self._pending.items():
            obj = p.obj
            row: dict[str, Any] = {
                "status": p.status if p.status is not None else obj.get("status"),
                "amount": _amount(obj),
                "body": p.body if p.body is not None else jsontext.dumps(obj),
            }
            if p.insert:
                row.update(
                    id=object_id,
                    account_id=p.account_id,
                    type=obj["object"],
                    created=obj["created"],
                    ref=p.ref,
                )
                inserts.append(row)
            else:
                row.update(b_id=object_id, b_account=p.account_id)
                if p.ref is not None:
                    row["ref"] = p.ref
                updates.append(row)
                updated_ids.append({"b_id": object_id})
            meta = obj.get("metadata")
            if meta:
                metadata.extend(
                    {
                        "object_id": object_id,
                        "key": k,
                        "account_id": p.account_id,
                        "type": obj["object"],
                        "value": v,
                    }
                    for k, v in meta.items()
                )
        self._run_many(_INSERT, inserts)
        # One statement per shape: an update that sets `ref` has one more column.
        self._run_many(_UPDATE, [u for u in updates if "ref" not in u])
        self._run_many(_UPDATE, [u for u in updates if "ref" in u])
        self._run_many(_DELETE_METADATA, updated_ids)
        self._run_many(_INSERT_METADATA, metadata)
        self._run_many(_INSERT_DELIVERY, self._deliveries)
        self._outer.queued_deliveries += len(self._deliveries)
        self._pending.clear()
        self._loaded.clear()
        self._deliveries = []
        self.queued_deliveries = 0

    def _run_many(self, stmt: Any, rows: list[dict[str, Any]]) -> None:
        """Execute one of the prebuilt statements for many rows (of the same keys)."""
        if not rows:
            return
        if self._sqlite is None:
            self.conn.execute(stmt, rows)
            return
        sql, order = _sqlite_sql(stmt, tuple(rows[0]), self.conn.dialect)
        if all(n in rows[0] for n, _ in order):
            # Every parameter is a key of the rows (as they all are for an insert): picked
            # out by one C call per row; a comprehension per row cost half as much as
            # SQLite's own work.
            pick = operator.itemgetter(*(n for n, _ in order))
            params = map(pick, rows) if len(order) > 1 else ((pick(r),) for r in rows)
            self._sqlite.executemany(sql, params)
            return
        self._sqlite.executemany(sql, [[r.get(n, fixed) for n, fixed in order] for r in rows])


def _where_created(q: sa.Select[Any], created: dict[str, int] | None) -> sa.Select[Any]:
    if not created:
        return q
    c = t.objects.c.created
    ops = {"gt": c.__gt__, "gte": c.__ge__, "lt": c.__lt__, "lte": c.__le__, "eq": c.__eq__}
    for op, value in created.items():
        q = q.where(ops[op](value))
    return q


def _has_metadata(key: str, value: str) -> sa.ColumnElement[bool]:
    m = t.object_metadata.c
    return sa.exists().where(m.object_id == t.objects.c.id, m.key == key, m.value == value)


def metadata_condition(key: str, value: str) -> sa.ColumnElement[bool]:
    """Search: the object has metadata `key` equal to `value`."""
    return _has_metadata(key, value)


def column_condition(name: str, op: str, value: str | int) -> sa.ColumnElement[bool]:
    """Search: a filter column compared to a value (`status:'succeeded'`, `amount>100`)."""
    col = t.objects.c[name]
    ops = {":": col.__eq__, ">": col.__gt__, ">=": col.__ge__, "<": col.__lt__, "<=": col.__le__}
    return ops[op](value)


def body_contains(fragment: str) -> sa.ColumnElement[bool]:
    """Search: the stored JSON contains `fragment` (a coarse prefilter, checked again in Python)."""
    return t.objects.c.body.contains(fragment, autoescape=True)


def any_of(conditions: Sequence[sa.ColumnElement[bool]]) -> sa.ColumnElement[bool]:
    return sa.or_(*conditions)


def all_of(conditions: Sequence[sa.ColumnElement[bool]]) -> sa.ColumnElement[bool]:
    return sa.and_(*conditions)


def negate(condition: sa.ColumnElement[bool]) -> sa.ColumnElement[bool]:
    return sa.not_(condition)

"""`Store` and `Tx`: transactions over the cloud's tables, for SQLite and PostgreSQL alike."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

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
            )
            sa.event.listen(self.engine, "connect", _sqlite_on_connect)
            sa.event.listen(self.engine, "begin", _sqlite_on_begin)
        else:
            url = self.url.replace("postgresql://", "postgresql+psycopg://", 1)
            self.engine = sa.create_engine(url, pool_size=5, pool_pre_ping=True)

    def migrate(self) -> list[int]:
        """Apply pending migrations."""
        return migrations.apply(self.engine)

    @contextmanager
    def write(self) -> Iterator[Tx]:
        """A transaction that may write; it commits durably when the block ends."""
        with self.engine.connect() as conn:
            conn = conn.execution_options(stowpay_write=True)
            with conn.begin():
                yield Tx(conn)

    @contextmanager
    def read(self) -> Iterator[Tx]:
        """A read-only transaction."""
        with self.engine.connect() as conn, conn.begin():
            yield Tx(conn)

    def close(self) -> None:
        self.engine.dispose()


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    # Take transaction control from the driver so BEGIN IMMEDIATE is ours to issue.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is on disk before we answer; "stored" must survive a power cut.
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _sqlite_on_begin(conn: sa.Connection) -> None:
    # A writer takes the lock up front, so two writers never deadlock upgrading a read lock.
    if conn.get_execution_options().get("stowpay_write"):
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        conn.exec_driver_sql("BEGIN")


def _load(body: str) -> dict[str, Any]:
    return json.loads(body)  # type: ignore[no-any-return]


class Tx:
    """One transaction. Every method is scoped to the account it is given."""

    def __init__(self, conn: sa.Connection) -> None:
        self.conn = conn

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
                body=json.dumps(account),
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

    def get(
        self, account_id: str, object_id: str, type_: str | None = None
    ) -> dict[str, Any] | None:
        """The object with this id if it belongs to `account_id` (and is of `type_`)."""
        q = sa.select(t.objects.c.body).where(
            t.objects.c.id == object_id, t.objects.c.account_id == account_id
        )
        if type_ is not None:
            q = q.where(t.objects.c.type == type_)
        row = self.conn.execute(q).first()
        return None if row is None else _load(row.body)

    def insert(
        self,
        account_id: str,
        obj: dict[str, Any],
        *,
        ref: str | None = None,
        status: str | None = None,
    ) -> None:
        """Store a new object; `status` overrides the column an object's own status fills."""
        self.conn.execute(
            t.objects.insert().values(
                id=obj["id"],
                account_id=account_id,
                type=obj["object"],
                created=obj["created"],
                ref=ref,
                status=status if status is not None else obj.get("status"),
                amount=obj.get("amount") if isinstance(obj.get("amount"), int) else None,
                body=json.dumps(obj),
            )
        )
        self._index_metadata(account_id, obj)

    def update(self, account_id: str, obj: dict[str, Any], *, ref: str | None = None) -> None:
        """Replace an object's stored body (and its filter columns)."""
        values: dict[str, Any] = {
            "status": obj.get("status"),
            "amount": obj.get("amount") if isinstance(obj.get("amount"), int) else None,
            "body": json.dumps(obj),
        }
        if ref is not None:
            values["ref"] = ref
        self.conn.execute(
            t.objects.update()
            .where(t.objects.c.id == obj["id"], t.objects.c.account_id == account_id)
            .values(**values)
        )
        self.conn.execute(
            t.object_metadata.delete().where(t.object_metadata.c.object_id == obj["id"])
        )
        self._index_metadata(account_id, obj)

    def delete(self, account_id: str, object_id: str) -> None:
        self.conn.execute(
            t.objects.delete().where(
                t.objects.c.id == object_id, t.objects.c.account_id == account_id
            )
        )
        self.conn.execute(
            t.object_metadata.delete().where(t.object_metadata.c.object_id == object_id)
        )

    def _index_metadata(self, account_id: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata")
        if not meta:
            return
        self.conn.execute(
            t.object_metadata.insert(),
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
        c = t.idempotency_keys.c
        row = self.conn.execute(
            sa.select(c.fingerprint, c.created, c.status_code, c.request_id, c.body).where(
                c.account_id == account_id, c.key == key
            )
        ).first()
        if row is None:
            return None
        return IdempotencyRecord(
            row.fingerprint, row.created, row.status_code, row.request_id, bytes(row.body)
        )

    def idempotency_put(self, account_id: str, key: str, record: IdempotencyRecord) -> None:
        self.conn.execute(
            t.idempotency_keys.insert().values(
                account_id=account_id,
                key=key,
                fingerprint=record.fingerprint,
                created=record.created,
                status_code=record.status_code,
                request_id=record.request_id,
                body=record.body,
            )
        )

    def idempotency_forget(self, account_id: str, key: str) -> None:
        c = t.idempotency_keys.c
        self.conn.execute(
            t.idempotency_keys.delete().where(c.account_id == account_id, c.key == key)
        )

    def idempotency_prune(self, older_than: int) -> int:
        result = self.conn.execute(
            t.idempotency_keys.delete().where(t.idempotency_keys.c.created < older_than)
        )
        return int(result.rowcount)

    # -- webhook outbox ---------------------------------------------------------------------

    def insert_delivery(self, delivery: dict[str, Any]) -> None:
        """Queue a delivery of an event to an endpoint, in the event's own transaction."""
        self.conn.execute(t.webhook_deliveries.insert().values(**delivery))

    def claim_deliveries(self, now: float, lease: float, limit: int) -> list[dict[str, Any]]:
        """Take up to `limit` due deliveries, leasing each for `lease` seconds.

        Each comes with its event's and endpoint's stored bodies. A delivery whose sender
        died is simply due again when its lease ends.
        """
        d = t.webhook_deliveries.c
        rows = self.conn.execute(
            sa.select(d.id, d.account_id, d.endpoint_id, d.event_id, d.created, d.attempts)
            .where(d.state == "pending", d.next_attempt_at <= now)
            .order_by(d.next_attempt_at)
            .limit(limit)
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

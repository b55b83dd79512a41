from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stowpay.cloud.settings import Settings
from stowpay.cloud.testing import LiveCloud, live_cloud

#: Secrets and card numbers in logs, error bodies or written files fail the run (see there).
pytest_plugins = ["leak_scan"]

#: A PostgreSQL server for the storage-parametrised tests (CI sets it; locally optional).
POSTGRES_URL = os.environ.get("STOWPAY_TEST_POSTGRES_URL")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Files holding a `slow` test first, each file's own order kept: the two xdist workers
    take whole files, and a long one taken last leaves the other worker idle meanwhile."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)


#: A migrated database made once per run; fresh databases are copies of it.
_TEMPLATE: list[str] = []


def _server_url(name: str) -> str:
    assert POSTGRES_URL is not None
    return POSTGRES_URL.rsplit("/", 1)[0] + "/" + name


def _create_db(template: str | None = None) -> str:
    import psycopg

    assert POSTGRES_URL is not None
    name = "t_" + uuid.uuid4().hex[:12]
    clause = f' TEMPLATE "{template}"' if template else ""
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{clause}')
    return name


def _fresh_postgres_db(*, migrated: bool = True) -> str:
    """A new database on the test server, its schema migrated (a copy of a template migrated
    once per run, which is cheaper than migrating each); its URL."""
    if not migrated:
        return _server_url(_create_db())
    if not _TEMPLATE:
        from stowpay.cloud.storage import Store

        name = _create_db()
        store = Store(_server_url(name))
        store.migrate()
        store.close()  # a template may have no open connections when it is copied
        _TEMPLATE.append(name)
    return _server_url(_create_db(_TEMPLATE[0]))


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database: a SQLite file, or (when configured) a PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "cloud.db")
    if POSTGRES_URL is None:
        pytest.skip("STOWPAY_TEST_POSTGRES_URL is not set")
    return _fresh_postgres_db()


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[LiveCloud]:
    """A cloud on loopback over a fresh SQLite file, with two accounts."""
    server = live_cloud(Settings(db=str(tmp_path / "cloud.db"), webhook_poll_interval=0.05))
    server.new_account()
    server.new_account()
    yield server
    server.stop()


@pytest.fixture
def any_cloud(db_url: str) -> Iterator[LiveCloud]:
    """The same as `cloud`, once over SQLite and once over PostgreSQL."""
    server = live_cloud(Settings(db=db_url, webhook_poll_interval=0.05))
    server.new_account()
    server.new_account()
    yield server
    server.stop()


@pytest.fixture
def make_db_url(tmp_path: Path) -> Callable[[str], str]:
    """Make a fresh database of a kind ("sqlite" or "postgres"); its URL (or file)."""
    made = 0

    def make(kind: str) -> str:
        nonlocal made
        made += 1
        if kind == "sqlite":
            return str(tmp_path / f"cloud{made}.db")
        if POSTGRES_URL is None:
            pytest.skip("STOWPAY_TEST_POSTGRES_URL is not set")
        return _fresh_postgres_db()

    return make


def database_bytes(db: str) -> bytes:
    """Everything a cloud database holds, as bytes to search: a SQLite file with its WAL, or
    every row of every table of a PostgreSQL database as JSON text."""
    if "://" not in db:
        return b"".join(
            Path(db + suffix).read_bytes()
            for suffix in ("", "-wal", "-shm")
            if Path(db + suffix).exists()
        )
    import psycopg

    out: list[bytes] = []
    with psycopg.connect(db) as conn:
        names = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
        for (name,) in names:
            for (row,) in conn.execute(f'SELECT row_to_json(t)::text FROM "{name}" t'):
                out.append(str(row).encode())
    return b"\n".join(out)


@pytest.fixture
def db_bytes() -> Callable[[str], bytes]:
    """`database_bytes`, for a test to scan a cloud's database for what must not be in it."""
    return database_bytes

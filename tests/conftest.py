from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from stowpay.cloud.settings import Settings
from stowpay.cloud.testing import LiveCloud, live_cloud

#: Secrets and card numbers in logs, error bodies or written files fail the run (see there).
pytest_plugins = ["leak_scan"]

#: A PostgreSQL server for the storage-parametrised tests (CI sets it; locally optional).
POSTGRES_URL = os.environ.get("STOWPAY_TEST_POSTGRES_URL")


def _fresh_postgres_db() -> str:
    """A new, empty database on the test server; its URL."""
    import psycopg

    assert POSTGRES_URL is not None
    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return POSTGRES_URL.rsplit("/", 1)[0] + "/" + name


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

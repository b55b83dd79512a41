from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from stowpay.cloud.settings import Settings
from stowpay.cloud.testing import LiveCloud, live_cloud


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[LiveCloud]:
    """A cloud on loopback over a fresh SQLite file, with two accounts."""
    server = live_cloud(Settings(db=str(tmp_path / "cloud.db"), webhook_poll_interval=0.05))
    server.new_account()
    server.new_account()
    yield server
    server.stop()

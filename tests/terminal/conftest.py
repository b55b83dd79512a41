from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from terminal_kit import Cloud, Merchant, ReaderBox, make_merchant


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[Cloud]:
    """A cloud process with one account, on a port of its own."""
    server = Cloud(tmp_path / "cloud")
    yield server
    server.stop()


@pytest.fixture
def merchant(cloud: Cloud) -> Merchant:
    return make_merchant(cloud)


@pytest.fixture
def smart_reader(tmp_path: Path, cloud: Cloud) -> Iterator[ReaderBox]:
    """A reader daemon (not registered yet) talking to the cloud."""
    box = ReaderBox(cloud, tmp_path / "reader")
    yield box
    box.stop()

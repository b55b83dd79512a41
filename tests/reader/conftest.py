from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from vault_kit import SEALING, OpenVault

from stowpay.reader.vault import Vault, VaultError
from stowpay.wire.clock import ManualClock


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1_780_000_000.0)


@pytest.fixture
def vault_dir(tmp_path: Path) -> Path:
    return tmp_path / "vault"


@pytest.fixture
def open_vault(vault_dir: Path, clock: ManualClock) -> Iterator[OpenVault]:
    """Open the test vault (defaults: the test clock and the cloud's sealing key)."""
    opened: list[Vault] = []

    def _open(directory: Path | None = None, **kw: Any) -> Vault:
        kw.setdefault("clock", clock)
        kw.setdefault("sealing_key", SEALING)
        vault = Vault.open(directory or vault_dir, **kw)
        opened.append(vault)
        return vault

    yield _open
    for vault in opened:
        with contextlib.suppress(VaultError):
            vault.close()

"""Headless Chromium for the browser tests: Debian's `chromium`, driven by Playwright.

`playwright install` is never needed: the system browser is launched by path. Screenshots go
to `$STOWPAY_TEST_ARTIFACTS/<name>` (CI keeps that folder), else to the test's tmp directory.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("STOWPAY_CHROMIUM", "/usr/bin/chromium")
#: Without the background-networking flags Chromium keeps dialling out of a closed network.
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def browser_or_skip() -> Any:
    """Playwright's sync API, or a skip (a failure when STOWPAY_REQUIRE_BROWSER is set)."""
    missing = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "playwright is not installed"
    else:
        if not Path(CHROMIUM).exists():
            missing = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    if missing is not None:
        if os.environ.get("STOWPAY_REQUIRE_BROWSER"):
            pytest.fail(missing)
        pytest.skip(missing)
    return sync_playwright


def artifacts_dir(tmp_path: Path, name: str) -> Path:
    """An empty folder for one test's screenshots."""
    root = os.environ.get("STOWPAY_TEST_ARTIFACTS")
    where = (Path(root) if root else tmp_path / "artifacts") / name
    if where.exists():
        shutil.rmtree(where)
    where.mkdir(parents=True)
    return where

"""The public API's types: a sample app (pos_app.py) passes ``mypy --strict``, and the same
checker does catch a misuse (so the check is real)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
ROOT = HERE.parent.parent

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def mypy(target: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(cache), str(target)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )


def test_the_sample_app_passes_mypy_strict(tmp_path: Path) -> None:
    result = mypy(HERE / "pos_app.py", tmp_path / "cache")
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_misuse_is_caught(tmp_path: Path) -> None:
    app = tmp_path / "wrong_app.py"
    app.write_text(
        "from stowpay.terminal import OfflineBehavior, PaymentIntent\n"
        "def total(pi: PaymentIntent) -> int:\n"
        "    return pi.id + 1\n"
        "behavior: OfflineBehavior = 'prefer_online'\n"
    )
    result = mypy(app, tmp_path / "cache")
    assert result.returncode == 1
    assert 'Unsupported operand types for + ("None" and "int")' in result.stdout
    assert "Incompatible types in assignment" in result.stdout

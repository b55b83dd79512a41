"""examples/pos.py runs as its README says, against a real cloud and reader."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from terminal_kit import Cloud, Merchant, ReaderBox

EXAMPLE = Path(__file__).parent.parent.parent / "examples" / "pos.py"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def run(cloud: Cloud, merchant: Merchant, data: Path, *extra: str) -> str:
    args = ["--api-base", cloud.url, "--secret-key", cloud.account["secret_key"]]
    args += ["--location", merchant.location, "--data-dir", str(data), *extra]
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_the_example_pos_takes_payments(
    tmp_path: Path, cloud: Cloud, merchant: Merchant, smart_reader: ReaderBox
) -> None:
    smart_reader.register(merchant)
    out = run(cloud, merchant, tmp_path / "pos", "--order", "E-1")
    assert re.search(r"^Ref +pi_", out, re.M) and re.search(r"^Status +succeeded$", out, re.M)
    out = run(cloud, merchant, tmp_path / "pos", "--order", "E-2", "--force-offline", "--wait")
    assert "Offline \N{EM DASH} authorization pending" in out
    assert "[forwarded] order E-2 -> pi_" in out
    assert len(merchant.by_order("E-1")) == 1 and len(merchant.by_order("E-2")) == 1

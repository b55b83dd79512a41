"""`stowpay demo`, the README's first command: the whole story, exit 0."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def test_the_demo_tells_the_whole_story_and_exits_0() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "stowpay.cli", "demo", "--payments", "25"],
        capture_output=True,
        text=True,
        timeout=220,
        env={
            "COLUMNS": "160",
            "PATH": "/usr/bin:/bin",
            # A checkout run with PYTHONPATH (not installed) demonstrates its own code.
            **{k: v for k, v in os.environ.items() if k == "PYTHONPATH"},
        },
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert "Traceback" not in out
    assert re.search(r"A-1 .* succeeded online as pi_", out)
    assert "The SDK reports OFFLINE" in out
    assert "refused: AMOUNT_EXCEEDS_MAX_OFFLINE_AMOUNT" in out
    assert "refused: NOT_CONNECTED_TO_INTERNET_AND_REQUIRE_ONLINE_SET" in out
    assert "A-4: captured from the backend (succeeded)" in out
    # 1 online + 3 offline + 25 backlog, each charged once, and told by webhook.
    assert "29 payments, each charged once" in out
    assert ", 0 rejected" in out
    # The till receipt of an offline sale, printed at once; its card shown by last4 only.
    assert "Offline \N{EM DASH} authorization pending" in out
    assert "**** 4242" in out and "4242424242424242" not in out
    # The email receipts: one per captured A- payment, sent once the cloud was back.
    assert "4 email receipts sent once the cloud was back" in out
    assert "the mailbox holds 4" in out

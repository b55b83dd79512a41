"""The session-end leak scan (`tests/leak_scan.py`) finds what it must and nothing else.

Planted findings are written under a directory marked `.stowpay-planted`, which the scan of
this very run skips; an inner pytest run shows the plugin failing a run that leaks.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from leak_scan import PLANTED, find, scan_files
from stowpay.wire.cards import CARDS

SRC = Path(__file__).parents[2] / "src"
TESTS = Path(__file__).parents[1]


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    (tmp_path / PLANTED).touch()
    return tmp_path


@pytest.mark.parametrize(
    "text",
    [
        "paid with 4242424242424242 today",
        "card=4242 4242 4242 4242",
        "card=4000-0566-5566-5556",
        "amex 3782 822463 10005",
        "amex 378282246310005",
        '{"number":"5555555555554444"}',
        "x6011111111111117y",  # a test card is found whatever surrounds it
        "key sk_test_" + "A1b2" * 9,
        "rk_live_" + "Zz09" * 6,
        "secret whsec_" + "q" * 32,
        "Authorization: Bearer rdk_test_" + "ab-_" * 8,
        # Labelled a cryptogram, but not 16 digits, or a test card, or too far from the label.
        '"application_cryptogram":"629689642708009124"',
        '"application_cryptogram":"4242424242424242"',
        "cryptogram " + "x" * 48 + " 6296896427080099",
    ],
)
def test_finds_planted_secrets_and_card_numbers(text: str) -> None:
    assert find(text.encode()), text


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-27T07:12:42.123456Z",
        "created 1780000000 at 1780000000123 ms",  # 13-digit milliseconds start with 1
        "pi_000000000000000000000042",  # counting ids: 24 digits
        "pi_3Nx9aB7cD1eF2gH4iJ6kL8mN",
        "last4 4242, fingerprint 0f3a9c",
        "4242424242424241",  # fails Luhn
        "1234567890123452",  # Luhn-valid, but no card starts with 1
        "a97049aadb38135955644075aa9982",  # a hex digest (Luhn-valid digits inside)
        "id_X38135955644075",
        "99999999999999999999999",  # longer than any card
        "sk_test_****abcd and whsec_…",  # masked forms are what logs show
        "4242 4242-4242 4242",  # mixed separators
        "42424 24242 42424 2",  # groups no card is printed in
        # A chip's cryptogram is 16 random hex digits; about 1 in 40,000 reads like a card.
        '"receipt":{"application_cryptogram":"6296896427080099","x":1}',
        '"application_cryptogram": "6296896427080099"',
        "<td>Cryptogram</td><td>6296896427080099</td>",
    ],
)
def test_leaves_timestamps_ids_and_masked_forms_alone(text: str) -> None:
    assert find(text.encode()) == [], text


def test_every_test_card_is_found_in_every_form() -> None:
    for number in CARDS:
        groups = " ".join(number[i : i + 4] for i in range(0, len(number), 4))
        for form in (number.encode(), groups.encode(), number.encode("utf-16-le")):
            assert find(form), (number[-4:], form)


def test_files_secrets_only_in_logs_cards_everywhere(planted: Path) -> None:
    (planted / "logs").mkdir()
    (planted / "logs" / "cloud").write_text("key whsec_" + "k" * 32)
    (planted / "app.log").write_text("ok\n")
    (planted / "cloud.db").write_bytes(b"\x00whsec_" + b"k" * 32 + b"\x004111111111111111\x00")
    (planted / "deep" / "er").mkdir(parents=True)
    (planted / "deep" / "er" / "notes.bin").write_bytes(b"6011-1111-1111-1117")
    hits = sorted(
        h.split(planted.name + "/", 1)[1]
        for h in scan_files(planted.parent)
        if f"/{planted.name}/" in h
    )
    # The marked directory is skipped from above; scanned directly, everything is found.
    assert hits == []
    hits = sorted(h.split(planted.name + "/", 1)[1] for h in scan_files_unmarked(planted))
    assert hits == [
        "cloud.db: card number 4111…1111",
        "deep/er/notes.bin: card number 6011…1117",
        "logs/cloud: secret whsec_kk…kkkk",
    ], hits


def scan_files_unmarked(root: Path) -> list[str]:
    (root / PLANTED).unlink()
    try:
        return scan_files(root)
    finally:
        (root / PLANTED).touch()


INNER = """
import logging
import pytest
from stowpay.wire.errors import InvalidRequestError

def test_writes_a_log(tmp_path):
    (tmp_path / "reader.log").write_text(LINE)

def test_prints(capsys):
    print(PRINTED)

def test_logs(caplog):
    logging.getLogger("x").warning(LOGGED)

def test_error_body():
    InvalidRequestError(MESSAGE).to_body("req_1")
"""


def inner_run(planted: Path, workers: list[str], **values: str) -> subprocess.CompletedProcess[str]:
    lines = [f"{name} = {value!r}" for name, value in values.items()]
    (planted / "test_inner.py").write_text("\n".join(lines) + textwrap.dedent(INNER))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(TESTS)])}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "leak_scan",
            "-p",
            "no:cacheprovider",
            f"--basetemp={planted / 'inner'}",
            f"--rootdir={planted}",
            *workers,
            str(planted / "test_inner.py"),
        ],
        cwd=planted,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


CLEAN = {
    "LINE": "paid, last4 4242",
    "PRINTED": "key sk_test_****abcd",
    "LOGGED": "at 1780000000123",
    "MESSAGE": "No such payment_intent: pi_1",
}


@pytest.mark.slow
@pytest.mark.parametrize("workers", [["-n", "0"], ["-n", "2"]], ids=["one process", "xdist"])
def test_the_plugin_passes_a_clean_run_and_fails_a_leaking_one(
    planted: Path, workers: list[str]
) -> None:
    # Under xdist each worker scans and the leading process adds up: the same four findings.
    clean = inner_run(planted, workers, **CLEAN)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "findings = 0" in clean.stdout
    leaks = {
        "LINE": "card 4242 4242 4242 4242",
        "PRINTED": "key sk_test_" + "A1b2" * 9,
        "LOGGED": "key rdk_test_" + "x" * 24,
        # Error bodies never hold a card number (`to_body` masks one): a key, then.
        "MESSAGE": "bad key sk_test_" + "Z9y8" * 9,
    }
    run = inner_run(planted, workers, **leaks)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "findings = 4" in run.stdout, run.stdout
    for where in ("reader.log:", "test_prints (Captured stdout", "test_logs (Captured log"):
        assert where in run.stdout, (where, run.stdout)
    assert re.search(r"error body None in \S*test_error_body: secret sk_test_…Z9y8", run.stdout), (
        run.stdout
    )
    for leak in leaks.values():
        # The report names where, masked: the finding itself is never printed in full.
        secret = leak.split(" ", 1)[1]
        assert secret not in run.stdout and secret.replace(" ", "") not in run.stdout

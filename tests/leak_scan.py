"""A session-end scan for secrets and card numbers where they must never be (pytest plugin).

What is searched, across the whole test run:
- every captured log and output of every test (the report sections pytest keeps);
- every error body the cloud made in this process (`StripeError.to_body`, observed);
- every file written under the run's temporary directory (databases, WALs, reader vaults,
  the log files of cloud and reader processes): card numbers everywhere, secrets in log files.
  A database may hold a webhook endpoint's `whsec_` (the cloud signs with it) and a reader's
  data directory its own device key; a log may hold neither.

What counts as a finding:
- secret API keys (`sk_`/`rk_`), webhook secrets (`whsec_`) and device keys (`rdk_`) in full
  (masked forms like `sk_test_****abcd` are what logs and errors are meant to show);
- a card number: a run of 13 to 19 digits, plain or in groups of 4 (or Amex's 4-6-5) split by
  spaces or dashes, not inside a word (hex digests and ids hold digit runs), that starts
  with 2-6 (the card networks' first digits) and passes Luhn, unless it is a chip's
  cryptogram (16 digits labelled so just before them); and the test cards of
  `stowpay.wire.cards` anywhere, whatever surrounds them, also as UTF-16. Timestamps
  (13-digit milliseconds start with 1), counting ids (24+ digits) and dates do not match.

Any finding fails the run (exit status 1) after printing where it was, masked. A directory
holding a file named `.stowpay-planted` is skipped: tests that prove a scanner bites write
their planted card numbers there.

Under pytest-xdist (`-n 2`) each worker searches its own outputs, error bodies and temporary
directory, and the process leading them adds the findings up; a worker that ends without
reporting its search is itself a finding.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from stowpay.wire.cards import CARDS, luhn_ok

#: A directory holding a file of this name is left out of the file scan.
PLANTED = ".stowpay-planted"

_SECRETS = re.compile(
    rb"(?<![A-Za-z0-9])(?:(?:sk|rk)_(?:test|live)_[A-Za-z0-9]{16,}"
    rb"|whsec_[A-Za-z0-9]{16,}"
    rb"|rdk_(?:test|live)_[A-Za-z0-9_\-]{16,})"
)
#: Not inside a word: hex digests and base-62 ids hold digit runs that are no card numbers.
_DIGIT_RUN = re.compile(rb"(?<![0-9A-Za-z])[0-9](?:[ \-]?[0-9]){12,18}(?![0-9A-Za-z]|[ \-][0-9])")
#: Group sizes a card number is printed in.
_GROUPINGS = {(4, 4, 4, n) for n in range(1, 5)} | {(4, 4, 4, 4, n) for n in range(1, 4)}
_GROUPINGS |= {(4, 6, 5), (4, 6, 4)}
#: The test cards are also looked for anywhere, whatever is around them, and as UTF-16.
_KNOWN = [
    (number, form)
    for number in CARDS
    for form in (
        number.encode(),
        " ".join(number[i : i + 4] for i in range(0, len(number), 4)).encode(),
        "-".join(number[i : i + 4] for i in range(0, len(number), 4)).encode(),
        number.encode("utf-16-le"),
        number.encode("utf-16-be"),
    )
]
#: Files searched for secrets too (not only card numbers).
_LOG_SUFFIXES = (".log", ".out", ".err", ".txt")


def _is_card_number(run: bytes) -> bool:
    text = run.decode("ascii")
    digits = text.replace(" ", "").replace("-", "")
    if not 13 <= len(digits) <= 19 or digits[0] not in "23456" or not luhn_ok(digits):
        return False
    if digits == text:
        return True
    groups = re.split(r"[ \-]", text)
    if len({c for c in text if c in " -"}) != 1:
        return False  # "1234-5678 9012..." mixes separators: not how a card is written
    return tuple(len(g) for g in groups) in _GROUPINGS


#: A chip's application cryptogram is 16 random hex digits: about one in 40,000 is all digits,
#: starts with 2-6 and passes Luhn. Such a run, labelled a cryptogram just before it (a charge's
#: `"application_cryptogram":"..."`, a printed receipt's "Cryptogram" row), is not a card
#: number. The vault refuses the card's own number there, and the test cards are still found
#: anywhere (`_KNOWN`).
_CRYPTOGRAM_LABEL = re.compile(rb"cryptogram", re.IGNORECASE)


def _is_cryptogram(data: bytes, run: re.Match[bytes]) -> bool:
    if len(run.group()) != 16 or not run.group().isdigit():
        return False
    return _CRYPTOGRAM_LABEL.search(data, max(0, run.start() - 48), run.start()) is not None


def _mask(text: str) -> str:
    return text[:8] + "…" + text[-4:] if len(text) > 12 else "…"


def find(data: bytes, *, secrets: bool = True) -> list[str]:
    """What `data` holds that it must not: each finding named and masked."""
    found = []
    if secrets:
        found += [f"secret {_mask(m.group().decode())}" for m in _SECRETS.finditer(data)]
    seen = set()
    for m in _DIGIT_RUN.finditer(data):
        if _is_card_number(m.group()) and not _is_cryptogram(data, m):
            digits = m.group().decode().replace(" ", "").replace("-", "")
            seen.add(digits)
            found.append(f"card number {digits[:4]}…{digits[-4:]}")
    for number, form in _KNOWN:
        if number not in seen and form in data:
            seen.add(number)
            found.append(f"card number {number[:4]}…{number[-4:]} (a test card)")
    return found


def is_log_file(path: Path) -> bool:
    """Whether `path` is a log (searched for secrets too)."""
    return path.suffix in _LOG_SUFFIXES or path.parent.name == "logs"


def _files(root: Path) -> Iterator[Path]:
    if not root.is_dir() or (root / PLANTED).exists():
        return
    for path in sorted(root.iterdir()):
        if path.is_symlink():
            continue
        if path.is_dir():
            yield from _files(path)
        elif path.is_file():
            yield path


def scan_files(root: Path) -> list[str]:
    """Findings in every file under `root` ("path: finding")."""
    findings = []
    for path in _files(root):
        try:
            data = path.read_bytes()
        except OSError:
            continue  # removed while we looked (a process still winding down)
        findings += [f"{path}: {f}" for f in find(data, secrets=is_log_file(path))]
    return findings


@dataclass
class LeakScan:
    """The findings of one test run, and how much was searched."""

    findings: list[str] = field(default_factory=list)
    sections: int = 0
    error_bodies: int = 0
    files: int = 0

    def scan_sections(self, nodeid: str, sections: Iterable[tuple[str, str]]) -> None:
        for title, content in sections:
            self.sections += 1
            data = content.encode("utf-8", "surrogateescape")
            self.findings += [f"{nodeid} ({title}): {f}" for f in find(data)]

    def scan_error_body(self, body: dict[str, Any]) -> None:
        self.error_bodies += 1
        data = json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogateescape")
        code = body.get("error", {}).get("code")
        # Which test made it, so a finding can be traced (pytest keeps this variable current).
        test = os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" ", 1)[0]
        self.findings += [f"error body {code} in {test}: {f}" for f in find(data)]


# -- the plugin ------------------------------------------------------------------------------

_SCAN = LeakScan()
#: Whether this process only gathers the findings of pytest-xdist workers.
_LEADER = False


def pytest_configure(config: pytest.Config) -> None:
    from stowpay.wire.errors import StripeError

    to_body = StripeError.to_body
    if getattr(to_body, "_leak_scan", False):
        return

    def observed(self: StripeError, request_id: str | None = None) -> dict[str, Any]:
        body = to_body(self, request_id)
        _SCAN.scan_error_body(body)
        return body

    observed._leak_scan = True  # type: ignore[attr-defined]
    StripeError.to_body = observed  # type: ignore[method-assign]


def _leads_workers(config: pytest.Config) -> bool:
    """Whether this process hands the tests to pytest-xdist workers (`-n`): then each worker
    scans its own outputs, error bodies and files, and this process adds up their findings."""
    return config.pluginmanager.getplugin("dsession") is not None


def pytest_sessionstart(session: pytest.Session) -> None:
    # After every plugin's `pytest_configure`: pytest-xdist registers its session there.
    global _LEADER
    _LEADER = _leads_workers(session.config)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if _LEADER:
        return  # a worker's report, already scanned by that worker
    # A report repeats the sections of the phases before it: each is read once, at its phase.
    own = [(title, text) for title, text in report.sections if title.endswith(report.when)]
    _SCAN.scan_sections(report.nodeid, own)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """A worker finished (pytest-xdist): take in what its scan found."""
    done = getattr(node, "workeroutput", {}).get("leak_scan")
    if done is None:
        # A worker that died before its session ended scanned nothing: say so, loudly.
        _SCAN.findings.append(f"worker {getattr(node, 'gateway', node)} ended without a scan")
        return
    _SCAN.findings += done["findings"]
    _SCAN.sections += done["sections"]
    _SCAN.error_bodies += done["error_bodies"]
    _SCAN.files += done["files"]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is not None and not _LEADER:
        try:
            root = factory.getbasetemp()
        except (OSError, ValueError):
            root = None
        if root is not None:
            files = list(_files(root))
            _SCAN.files += len(files)
            _SCAN.findings += scan_files(root)
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["leak_scan"] = dataclasses.asdict(_SCAN)
    if _SCAN.findings and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    scan = _SCAN
    terminalreporter.write_line(
        f"leak scan: {scan.sections} captured outputs, {scan.error_bodies} error bodies, "
        f"{scan.files} files; findings = {len(scan.findings)}"
    )
    for finding in scan.findings[:50]:
        terminalreporter.write_line(f"  LEAK {finding}", red=True)

"""Crash safety with real processes: SIGKILL at random instants while storing and removing.

A process crash leaves the OS page cache intact, so this checks the vault's own ordering
(acknowledge only after COMMIT; counter and record in one transaction; recovery on open), not
power loss. STOWPAY_CRASH_RUNS sets the number of kills (20 by default); for an extended run,
e.g. ``STOWPAY_CRASH_RUNS=1000 python -m pytest tests/reader/test_vault_crash.py --timeout 0``.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from stowpay.reader.vault import Vault
from stowpay.wire.clock import ManualClock

CHILD = Path(__file__).with_name("vault_crash_child.py")


@pytest.fixture(autouse=True)
def _real_fsync() -> None:
    if "eatmydata" in os.environ.get("LD_PRELOAD", ""):
        pytest.fail("crash tests must not run with fsync disabled (libeatmydata is preloaded)")


@dataclass
class History:
    """What the children acknowledged, across all runs."""

    stored: dict[str, int | None] = field(default_factory=dict)  # local_id -> sequence
    removed: set[int] = field(default_factory=set)
    #: removals started but not acknowledged: either outcome is correct
    in_doubt: set[int] = field(default_factory=set)


def kill_child_at_random(directory: Path, run: int, rng: random.Random, *args: str) -> list[str]:
    """Start a child, SIGKILL it at a random instant after it opened the vault; its lines."""
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), str(directory), str(run), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=CHILD.parent,
    )
    assert proc.stdout is not None and proc.stderr is not None
    ready = proc.stdout.readline()
    if not ready.startswith("READY"):
        proc.kill()
        proc.wait()
        pytest.fail(f"child did not start: {ready!r} {proc.stderr.read()}")
    time.sleep(rng.uniform(0.0, 0.3))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    rest = proc.stdout.read()
    proc.stdout.close()
    proc.stderr.close()
    lines = rest.split("\n")
    return lines[:-1]  # the last piece is "" or a line cut off by the kill


def record(history: History, lines: list[str]) -> None:
    for line in lines:
        kind, *fields = line.split()
        if kind == "S":
            local_id, seq = fields
            history.stored[local_id] = None if seq == "?" else int(seq)
        elif kind == "X":
            history.in_doubt.add(int(fields[0]))
        elif kind == "R":
            history.removed.add(int(fields[0]))
            history.in_doubt.discard(int(fields[0]))


def check_after_crash(directory: Path, history: History) -> list[str]:
    """Reopen; integrity ok, chain ok; every acknowledged store present unless removed."""
    with sqlite3.connect(directory / "vault.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    vault = Vault.open(directory, clock=ManualClock())
    try:
        report = vault.verify()
        assert report.ok, report.findings
        present = {p.local_id: p.sequence for p in vault.pending()}
    finally:
        vault.close()
    lost = []
    for local_id, seq in history.stored.items():
        if seq is not None and seq in history.removed:
            assert local_id not in present, f"{local_id} came back after its removal"
        elif seq is not None and seq in history.in_doubt:
            if local_id not in present:  # the removal had committed: now it is known
                history.removed.add(seq)
                history.in_doubt.discard(seq)
        elif local_id not in present:
            lost.append(local_id)
        elif seq is not None:
            assert present[local_id] == seq
    assert not history.removed & set(present.values())
    return lost


@pytest.mark.slow
def test_sigkill_while_storing_and_removing_loses_nothing_acknowledged(tmp_path: Path) -> None:
    runs = int(os.environ.get("STOWPAY_CRASH_RUNS", "20"))
    rng = random.Random(int(os.environ.get("STOWPAY_CRASH_SEED", "7")))
    directory = tmp_path / "vault"
    history = History()
    for run in range(runs):
        record(history, kill_child_at_random(directory, run, rng))
        lost = check_after_crash(directory, history)
        assert lost == [], f"run {run}: acknowledged and lost: {lost}"
    sequences = [s for s in history.stored.values() if s is not None]
    assert len(sequences) == len(set(sequences)), "a sequence was issued twice"
    print(
        f"\n{runs} kills: {len(history.stored)} stores and {len(history.removed)} removals "
        "acknowledged, 0 lost, 0 sequences reused, integrity ok every time"
    )
    assert len(history.stored) >= runs  # the kills did land while payments were being stored


@pytest.mark.slow
def test_the_crash_test_catches_acknowledging_before_commit(tmp_path: Path) -> None:
    """The planted bug: a child that acknowledges before storing. The harness must see a loss."""
    rng = random.Random(11)
    directory = tmp_path / "vault"
    history = History()
    for run in range(10):
        record(
            history,
            kill_child_at_random(directory, run, rng, "--ack-early", "--remove-every", "0"),
        )
        if check_after_crash(directory, history):
            return
    pytest.fail("10 kills of a child that acknowledges before committing lost nothing")

"""Crash safety with real processes: a reader SIGKILLed at random instants loses nothing.

A cloud process stays up. A reader process is registered once, then killed again and again
on the same data directory, at random instants (a seeded generator) while its POS sells
force_offline payments, which the reader stores and, being online, forwards in the
background: so kills land while storing, while forwarding, and while starting up. After
each kill the vault's database passes `PRAGMA integrity_check`. At the end the reader
drains, and the merchant's view through the official `stripe` client is checked: every
payment the POS saw acknowledged (confirm answered 200) has exactly one PaymentIntent, no
order has two, and every PaymentIntent is for an order the POS started.

`STOWPAY_CRASH_KILLS=1000` runs the extended version (100 kills by default).

The same checker is shown to bite: `crash_child.py` runs the reader core in-process with a
planted bug (a vault that acknowledges a store before committing it); killed the same way,
the checker reports acknowledged payments lost. Run without the bug, the same harness passes.
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx2 as httpx
import pytest
from procs import (
    Ledger,
    Pos,
    Process,
    Site,
    Verdict,
    integrity_check,
    order_of,
    register_reader,
    restart_reader,
    wait_drained,
    wait_for,
)

KILLS = int(os.environ.get("STOWPAY_CRASH_KILLS", "100"))
CHILD = Path(__file__).with_name("crash_child.py")
#: A kill lands this long (uniformly drawn, seconds) after the POS connected.
MAX_DELAY = 0.5
#: Every this many rounds the kill lands during start-up instead (the backlog's first drain).
STARTUP_EVERY = 5


@dataclass
class Rounds:
    """What the kills hit."""

    kills: int = 0
    during_store: int = 0
    during_startup: int = 0
    #: the vault held records the cloud had already charged: killed between the cloud's
    #: commit and the record's removal (the forwarding window)
    forwarded_not_removed: int = 0
    #: the vault held records not yet at the cloud when the process died
    held_unforwarded: int = 0
    integrity: list[str] = field(default_factory=list)


def _vault_orders(copy: Path) -> list[str]:
    """The order ids of the records in a copy of the vault's database."""
    conn = sqlite3.connect(str(copy / "vault.db"))
    try:
        rows = conn.execute("SELECT CAST(metadata AS TEXT) FROM records").fetchall()
    finally:
        conn.close()
    return [str(json.loads(m).get("order_id")) for (m,) in rows]


def _killer(proc: Process, delay: float) -> threading.Timer:
    timer = threading.Timer(delay, lambda: proc.proc.send_signal(signal.SIGKILL))
    timer.start()
    return timer


def _round(
    n: int, reader: Process, pos: Pos, site: Site, rng: random.Random, ledger: Ledger
) -> str:
    """One life of the reader, ended by SIGKILL; what it was doing then ("starting up" or
    "selling", with forwarding in the background)."""
    phase = "starting up"
    timer: threading.Timer | None = None
    try:
        if n % STARTUP_EVERY == STARTUP_EVERY - 1:
            # Killed while it starts: reaching the cloud, draining what the last kill left.
            timer = _killer(reader, rng.uniform(0.0, 0.15))
            reader.proc.wait(30)
        else:
            wait_for("the reader online", lambda: pos.status()["network"] == "online")
            pos.connect(site.token())
            timer = _killer(reader, rng.uniform(0.0, MAX_DELAY))
            phase = "selling"
            for i in range(1_000_000):
                order, amount = f"r{n}-{i}", 100 + (n * 7919 + i * 104729) % 9900

                def begun(order: str = order, amount: int = amount) -> None:
                    ledger.started[order] = amount

                pos.sell(order, amount, on_started=begun)
                ledger.acknowledged.add(order)
    except (httpx.TransportError, AssertionError):
        # The kill cut a call short; anything else (the reader alive and refusing) is a failure.
        if reader.proc.wait(10) != -signal.SIGKILL:
            raise
    finally:
        pos.close()
        if timer is not None:
            timer.join()
    assert reader.stop() == -signal.SIGKILL, f"round {n}: the reader was not killed"
    return phase


@pytest.mark.slow
@pytest.mark.timeout(max(600, KILLS * 4))
def test_a_reader_killed_at_random_instants_loses_nothing_and_charges_nothing_twice(
    tmp_path: Path,
) -> None:
    rng = random.Random(20240611)
    site = Site(tmp_path)
    data = tmp_path / "reader"
    flags = ("--unattended-forwarding",)
    reader, url, _ = register_reader(site, data, *flags)
    ledger = Ledger()
    seen = Rounds()
    started = time.monotonic()
    try:
        for n in range(KILLS):
            if n:
                reader, url = restart_reader(site, data, *flags)
            phase = _round(n, reader, Pos(url, timeout=10), site, rng, ledger)
            seen.kills += 1
            if phase == "selling":
                seen.during_store += 1
            else:
                seen.during_startup += 1
            scratch = tmp_path / "copy"
            verdict = integrity_check(data / "vault", scratch)
            assert verdict == "ok", f"kill {n}: integrity_check says {verdict}"
            held = _vault_orders(scratch)
            if held:
                charged = {
                    order_of(pi)
                    for pi in site.merchant.v1.payment_intents.list(params={"limit": 100}).data
                }
                seen.forwarded_not_removed += any(o in charged for o in held)
                seen.held_unforwarded += any(o not in charged for o in held)
        rounds_took = time.monotonic() - started

        reader, url = restart_reader(site, data, *flags)
        status = wait_drained(url)
        assert status["offline"]["quarantined"] == 0
        verdict = Verdict(ledger, site.payment_intents())
    finally:
        reader.stop()
        site.close()
    figures = (
        f"{seen.kills} kills in {rounds_took:.0f}s ({rounds_took / max(seen.kills, 1):.2f}s each): "
        f"{seen.during_store} while selling, {seen.during_startup} during start-up; after "
        f"{seen.forwarded_not_removed} the vault held records the cloud had charged "
        f"(killed mid-forwarding), after {seen.held_unforwarded} records not yet forwarded; "
        f"{len(ledger.started)} payments started, {len(ledger.acknowledged)} acknowledged; "
        f"{verdict}"
    )
    print(figures)
    assert verdict.ok, figures
    assert seen.kills >= KILLS and seen.during_store and seen.during_startup, figures
    assert seen.forwarded_not_removed and seen.held_unforwarded, figures
    assert len(ledger.acknowledged) > KILLS, figures


# --- the checker bites: a planted bug, run through the same kills and the same checker ------


def _child_rounds(
    tmp_path: Path, rng: random.Random, rounds: int, *bug: str
) -> tuple[Verdict, Ledger]:
    site = Site(tmp_path)
    data = tmp_path / "reader"
    reader, _, _ = register_reader(site, data)
    reader.stop()
    ledger = Ledger()
    program = [sys.executable, str(CHILD)]
    try:
        for n in range(rounds):
            child = Process(
                ["sell", str(data), site.url, site.token(), f"c{n}", *bug],
                site.logs / "child.log",
                program=program,
            )
            child.expect("READY")
            timer = _killer(child, rng.uniform(0.1, 0.4))
            while True:
                try:
                    line = child.lines.get(timeout=0.5)
                except queue.Empty:
                    if child.finished():
                        break
                    continue
                kind, _, rest = line.partition(" ")
                if kind == "S":  # (other lines are the reader's log)
                    order, amount = rest.split()
                    ledger.started[order] = int(amount)
                elif kind == "A":
                    ledger.acknowledged.add(rest)
            timer.join()
            code = child.stop()
            assert code == -signal.SIGKILL, (
                f"the child ended by itself ({code}): " + (child.log_path.read_text()[-3000:])
            )
        drain = Process(["drain", str(data), site.url], site.logs / "child.log", program=program)
        drained = drain.expect("DRAINED", timeout=60)
        assert drain.proc.wait(30) == 0 and drained.split()[2] == "0", drained
        drain.stop()
        return Verdict(ledger, site.payment_intents()), ledger
    finally:
        site.close()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_checker_finds_the_loss_of_a_vault_that_acknowledges_before_commit(
    tmp_path: Path,
) -> None:
    rng = random.Random(99)
    verdict, ledger = _child_rounds(tmp_path / "bug", rng, 10, "--ack-before-commit")
    print(
        f"planted write-behind vault, 10 kills: {len(ledger.acknowledged)} acknowledged; {verdict}"
    )
    assert verdict.lost and not verdict.ok, str(verdict)

    control, ledger = _child_rounds(tmp_path / "control", rng, 10)
    acks = len(ledger.acknowledged)
    print(f"same harness without the bug, 10 kills: {acks} acknowledged; {control}")
    assert control.ok and ledger.acknowledged, str(control)

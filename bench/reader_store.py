"""Benchmark: durable offline confirms per second through the reader core, against raw fsync.

    python bench/reader_store.py [--seconds 10] [--runs 3]

What is timed, per run:

  core      `ReaderCore.create_payment_intent` -> `collect` -> `confirm` with
            offline_behavior=force_offline, one payment after the other in one thread. Each
            confirm returns only after the payment is committed in the vault (SQLite WAL,
            synchronous=FULL), exactly as the LAN API's confirm does.
  raw       a bare SQLite loop in the same directory: WAL, synchronous=FULL, one INSERT of a
            1 KiB row and one COMMIT per iteration. That is the rate of fsync'd commits this
            disk gives, the ceiling of any design that commits each payment on its own.

The reader is real: a cloud runs on 127.0.0.1 in this process only to register it (a
Location whose Configuration enables offline, a registration code, a heartbeat for the
sealing key); the cloud is then stopped and the reader marked offline, so nothing is forwarded
while the payments are taken. The runs alternate raw and core, so a noisy minute hurts both.
The vault keeps every payment across runs (it holds thousands by the last run), as a reader
that has been offline all day would.

It prints each rate (median of the runs, with the range) and the ratio core / raw (target
>= 0.5), and counts the fsync-family calls of one confirm when strace is available.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import stripe

from stowpay.cloud.settings import Settings
from stowpay.cloud.testing import LiveCloud, live_cloud
from stowpay.reader.cloud_link import HttpCloudLink
from stowpay.reader.core import ReaderCore, ReaderError
from stowpay.reader.presentment import Presentment
from stowpay.reader.state import ReaderState
from stowpay.reader.vault import Vault
from stowpay.wire.clock import SystemClock

#: Visa test cards that approve; payments rotate over them (a real queue holds many cards).
CARDS = ("4242424242424242", "4000056655665556", "4000002500003155", "4000000000003220")
ROW_BYTES = 1024
#: Payments whose first confirm was refused and collected again (see `sell`).
REFUSED: list[int] = []


@dataclass
class Reader:
    """A registered reader, offline, with a POS session."""

    directory: Path
    state: ReaderState
    vault: Vault
    core: ReaderCore
    session: str

    def close(self) -> None:
        self.core.close()
        self.vault.close()


def register_reader(directory: Path) -> Reader:
    """Register a reader at a fresh Location of a cloud on loopback, then cut the cloud."""
    clock = SystemClock()
    cloud: LiveCloud = live_cloud(
        Settings(db=str(directory / "cloud.db"), clock=clock, background=False)
    )
    try:
        account = cloud.new_account()
        client = stripe.StripeClient(
            account.secret_key, base_addresses={"api": cloud.url}, max_network_retries=0
        )
        config = client.v1.terminal.configurations.create(params={"offline": {"enabled": True}})
        location = client.v1.terminal.locations.create(
            params={
                "display_name": "Bench shop",
                "address": {
                    "line1": "1 Main St",
                    "city": "Springfield",
                    "postal_code": "62701",
                    "country": "US",
                },
                "configuration_overrides": config.id,
            }
        )
        rng = random.Random(7)
        state = ReaderState.open(directory / "reader", rng=rng)
        vault = Vault.open(state.vault_dir, clock=clock)
        codes: list[str] = []
        link = HttpCloudLink(cloud.url)
        core = ReaderCore(
            state, vault, link, clock=clock, rng=rng, on_registration_code=codes.append
        )
        if core.poll_registration():
            raise RuntimeError("a fresh reader is registered already")
        client.v1.terminal.readers.create(
            params={"registration_code": codes[-1], "location": location.id}
        )
        if not core.poll_registration():
            raise RuntimeError("the reader did not register")
        core.set_online(True)
        token = client.v1.terminal.connection_tokens.create().secret
        session = core.connect(pos_id="till-1", connection_token=token)["session"]
    finally:
        cloud.stop()
    core.set_online(False)
    return Reader(directory, state, vault, core, session)


def sell(reader: Reader, n: int) -> None:
    """One offline payment: create, collect, confirm (stored durably before it answers)."""
    core, session = reader.core, reader.session
    pi = core.create_payment_intent(
        session,
        amount=1000 + n % 90 * 10,  # amounts ending in 0: the test issuer approves them
        currency="usd",
        metadata={"order_id": f"B-{n}"},
        offline_behavior="force_offline",
    )
    card = Presentment(
        number=CARDS[n % len(CARDS)],
        exp_month=12,
        exp_year=2031,
        read_method="contact_emv",
        cardholder_name="Ada Lovelace",
    )
    for _ in range(3):
        core.collect(session, pi["local_id"], card)
        try:
            answer = core.confirm(session, pi["local_id"])
            break
        except ReaderError as exc:
            # The simulated chip's random cryptogram (16 hex digits, on the receipt) can read
            # as a Luhn-valid number, which the vault refuses to keep outside the seal. A
            # POS would collect again; count it so the figure says how often.
            if "card number must not appear" not in exc.message:
                raise
            REFUSED.append(n)
    if answer["status"] != "succeeded" or answer["offline_details"]["stored_at"] is None:
        raise AssertionError(f"confirm answered {answer['status']}")


@dataclass
class Run:
    target: str
    run: int
    count: int = 0
    seconds: float = 0.0
    #: CPU time of this whole process during the run (every thread, the seal pool's included)
    cpu: float = 0.0

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0


def timed(seconds: float, step: Any, result: Run, start: int = 0) -> None:
    c0 = time.process_time()
    t0 = time.perf_counter()
    end = t0 + seconds
    n = start
    now = t0
    while now < end:
        step(n)
        n += 1
        now = time.perf_counter()
    result.count = n - start
    result.seconds = now - t0
    result.cpu = time.process_time() - c0


def raw_commits(directory: Path, seconds: float, result: Run) -> None:
    """The fsync-per-commit ceiling: WAL + synchronous=FULL, one 1 KiB row per commit."""
    path = directory / f"raw-{result.run}.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE rows (seq INTEGER PRIMARY KEY, body BLOB NOT NULL)")
        body = os.urandom(ROW_BYTES)

        def step(n: int) -> None:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO rows (seq, body) VALUES (?, ?)", (n, body))
            conn.execute("COMMIT")

        for n in range(20):  # warm-up
            step(-n - 1)
        timed(seconds, step, result)
        stored = conn.execute("SELECT count(*) FROM rows WHERE seq >= 0").fetchone()[0]
        if stored != result.count:
            raise AssertionError(f"raw: {stored} rows for {result.count} commits")
    finally:
        conn.close()
        for p in directory.glob(f"raw-{result.run}.db*"):
            p.unlink()


def _syncs_of_child(directory: Path, confirms: int) -> int:
    strace = shutil.which("strace")
    assert strace is not None
    out = directory / f"strace-{confirms}.txt"
    subprocess.run(
        [
            strace,
            "-f",
            "-c",
            "-e",
            "trace=fsync,fdatasync",
            "-o",
            str(out),
            sys.executable,
            __file__,
            "--child-confirms",
            str(confirms),
            "--work",
            str(directory / f"strace-reader-{confirms}"),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    total = 0
    for line in out.read_text().splitlines():
        parts = line.split()
        if parts and parts[-1] in ("fsync", "fdatasync"):
            total += int(parts[3])
    return total


def count_syncs(directory: Path, confirms: int = 100) -> float | None:
    """fsync-family calls per offline confirm: a reader selling `confirms` payments under
    strace, less one that only registers (the set-up's own calls)."""
    if shutil.which("strace") is None:
        return None
    return (_syncs_of_child(directory, confirms) - _syncs_of_child(directory, 0)) / confirms


def child_confirms(work: Path, confirms: int) -> None:
    """Register a reader, then sell `confirms` payments (run under strace)."""
    work.mkdir(parents=True)
    reader = register_reader(work)
    try:
        for n in range(confirms):
            sell(reader, n)
    finally:
        reader.close()


def cpu_us(run: Run) -> float:
    return 1e6 * run.cpu / run.count if run.count else 0.0


def med(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f} [{min(values):,.0f}-{max(values):,.0f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each run")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-strace", action="store_true", help="skip counting fsync calls")
    ap.add_argument("--child-confirms", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_confirms is not None:
        child_confirms(args.work, args.child_confirms)
        return

    work = Path(tempfile.mkdtemp(prefix="stowpay-bench-reader-"))
    print(
        f"python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; work dir {work}",
        flush=True,
    )
    try:
        reader = register_reader(work)
        results: dict[str, list[Run]] = {"raw": [], "core": []}
        sold = 0
        try:
            for n in range(20):  # warm-up
                sell(reader, sold + n)
            sold += 20
            for run in range(1, args.runs + 1):
                raw = Run("raw", run)
                raw_commits(reader.state.vault_dir, args.seconds, raw)
                results["raw"].append(raw)
                core = Run("core", run)
                timed(args.seconds, lambda n: sell(reader, n), core, start=sold)
                sold += core.count
                results["core"].append(core)
                held = reader.vault.summary().count
                if held != sold:
                    raise AssertionError(f"the vault holds {held} payments, {sold} were confirmed")
                print(
                    f"run {run}: raw {raw.rate:8,.0f} commits/s   core {core.rate:8,.0f} "
                    f"confirms/s   ratio {core.rate / raw.rate:.2f}   CPU {cpu_us(core):,.0f} us"
                    f"/confirm   (vault holds {held:,})",
                    flush=True,
                )
        finally:
            reader.close()
        raw_rates = [r.rate for r in results["raw"]]
        core_rates = [r.rate for r in results["core"]]
        per_run = [c / r for c, r in zip(core_rates, raw_rates, strict=True)]
        ratio = statistics.median(core_rates) / statistics.median(raw_rates)
        print()
        print(f"{'raw SQLite commits/s (WAL, FULL, 1 KiB row)':48s} {med(raw_rates):>24s}")
        print(f"{'core offline confirms/s':48s} {med(core_rates):>24s}")
        print(
            f"{'core / raw':48s} {ratio:>10.2f}  (per run {min(per_run):.2f}-{max(per_run):.2f})"
            f"  target >= 0.5: {'MET' if ratio >= 0.5 else 'NOT MET'}"
        )
        print(f"{'core: ms per confirm':48s} {1000 / statistics.median(core_rates):>10.2f}")
        cpus = [cpu_us(r) for r in results["core"]]
        print(f"{'core: process CPU us per confirm':48s} {med(cpus):>24s}")
        print(f"confirms refused for a PAN-like cryptogram and collected again: {len(REFUSED)}")
        syncs = None if args.no_strace else count_syncs(work)
        if syncs is not None:
            print(f"{'fsync-family calls per confirm (strace)':48s} {syncs:>10.2f}  (raw: 1)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()

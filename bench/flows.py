"""Benchmark: create + confirm + capture PaymentIntents with the official stripe client.

    python bench/flows.py [--seconds 20] [--runs 3] [--block 4] [--prefill 100000] [--targets ...]

Each target is its own server process on 127.0.0.1, started fresh (new store) for every run;
one client thread in this process drives it with
`stripe.StripeClient(key, base_addresses={"api": url}, max_network_retries=0)`:
create (capture_method=manual, payment_method given) -> confirm -> capture.
Within a run the targets take turns in blocks of `--block` seconds (each round in another
order) until each has been driven for `--seconds`: every target goes through the
same minutes of a shared machine, so a busy minute of the host, or of its disk, falls on all
of them alike instead of on whichever target's turn it was. A server's background work (a
Stowpay server checkpoints its WAL every 0.25 s) may run on for a moment into the next
target's block: at most one round of it per block.

Targets:
  stowpay        `stowpay cloud serve` on a fresh SQLite file (WAL, synchronous=FULL)
  ls-stock       localstripe 1.15.10 as shipped: the whole store pickled on every write
  ls-nopersist   the same with its per-write pickling switched off (diagnostic)
  canned         fixed JSON answers, no work at all: the client's own limit
  budget         the canned server spending --budget-ms of CPU on each answer: an ideal
                 server of that cost per request, to show what server time a rate allows
  stowpay-100k   `stowpay cloud serve` on a database already holding --prefill flows

It prints every rate (median of the runs, with the range) and the ratios
Stowpay / localstripe-nopersist (target >= 2), Stowpay / canned (target >= 0.6),
Stowpay-100k / Stowpay (must not fall) and budget / canned. It also checks that the Stowpay
database's connections run with synchronous=FULL and that every POST it answered was
committed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import stripe

HERE = Path(__file__).resolve().parent
TARGETS = ("stowpay", "ls-stock", "ls-nopersist", "canned", "budget", "stowpay-100k")
LABELS = {
    "stowpay": "Stowpay, fresh SQLite (WAL, synchronous=FULL)",
    "ls-stock": "localstripe stock (pickle on every write)",
    "ls-nopersist": "localstripe, per-write pickling off",
    "canned": "canned JSON server (client limit)",
    "budget": "canned + {budget:g} ms CPU per request",
    "stowpay-100k": "Stowpay, {prefill:,} PaymentIntents already stored",
}
TICKS = os.sysconf("SC_CLK_TCK")
WARMUP_FLOWS = 3


def http_stack() -> str:
    """The event loop and HTTP parser uvicorn picks here (for Stowpay and the canned server)."""
    from uvicorn.config import Config

    async def app(scope: Any, receive: Any, send: Any) -> None:
        return None

    config = Config(app=app, log_level="warning")
    config.load()
    loop = config.get_loop_factory()
    loop_name = (loop.__module__ or "asyncio").split(".")[0] if loop else "asyncio"
    http = config.http_protocol_class.__module__.rsplit(".", 1)[-1].removesuffix("_impl")
    return f"{loop_name} + {http}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    url: str
    key: str
    log: Path
    db: Path | None = None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # Ctrl-C: each server stops cleanly
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start(cmd: list[str], log: Path, port: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[1:3]} exited at start:\n{log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"{cmd} did not listen on {port}") from None
            time.sleep(0.05)


def stowpay_cmd(db: Path, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "stowpay.cli.main",
        "cloud",
        "serve",
        "--db",
        str(db),
        "--port",
        str(port),
    ]


def start_target(
    name: str, work: Path, run: int, prefilled: dict[str, Any] | None, budget_ms: float = 0.5
) -> Server:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    tag = f"{name}-{run}"
    log = work / f"{tag}.log"
    if name == "stowpay":
        db = work / f"{tag}.db"
        proc = start(stowpay_cmd(db, port), log, port)
        key = next(
            line.split()[-1]
            for line in log.read_text().splitlines()
            if line.startswith("Secret key:")
        )
        return Server(name, proc, url, key, log, db)
    if name == "stowpay-100k":
        assert prefilled is not None
        db = Path(prefilled["db"])
        return Server(
            name, start(stowpay_cmd(db, port), log, port), url, prefilled["secret_key"], log, db
        )
    if name in ("ls-stock", "ls-nopersist"):
        state = work / tag
        state.mkdir()
        cmd = [sys.executable, str(HERE / "localstripe_server.py"), str(port), str(state)]
        if name == "ls-nopersist":
            cmd.append("--no-persist")
        return Server(name, start(cmd, log, port), url, "sk_test_bench", log)
    if name in ("canned", "budget"):
        cmd = [sys.executable, str(HERE / "canned_server.py"), str(port)]
        if name == "budget":
            cmd += ["--busy-ms", str(budget_ms)]
        return Server(name, start(cmd, log, port), url, "sk_test_bench", log)
    raise ValueError(name)


@dataclass
class Run:
    target: str
    run: int
    flows: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    done_at: list[float] = field(default_factory=list)
    server_cpu: float = 0.0
    client_cpu: float = 0.0
    load: tuple[float, float] = (0.0, 0.0)
    checks: dict[str, Any] = field(default_factory=dict)
    #: the rate of each turn (`drive` call), in order
    blocks: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.flows / self.seconds if self.seconds else 0.0

    def window(self, first: bool, width: float = 5.0) -> float:
        width = min(width, self.seconds) or 1.0
        if first:
            return sum(1 for x in self.done_at if x < width) / width
        return sum(1 for x in self.done_at if x >= self.seconds - width) / width


def make_flow(server: Server) -> Callable[[], None]:
    """One flow on `server` with the official client: create -> confirm -> capture, each
    answer's status checked."""
    client = stripe.StripeClient(
        server.key, base_addresses={"api": server.url}, max_network_retries=0
    )
    intents = client.v1.payment_intents
    if server.name.startswith("ls-"):
        card = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2034, "cvc": "123"}
        pm = client.v1.payment_methods.create(params={"type": "card", "card": card}).id
    else:
        pm = "pm_card_visa"
    create = {"amount": 1000, "currency": "usd", "capture_method": "manual", "payment_method": pm}

    def flow() -> None:
        pi = intents.create(params=create)  # type: ignore[arg-type]
        pi = intents.confirm(pi.id)
        if pi.status != "requires_capture":
            raise AssertionError(f"after confirm: {pi.status}")
        pi = intents.capture(pi.id)
        if pi.status != "succeeded":
            raise AssertionError(f"after capture: {pi.status}")

    return flow


def warm_flow(server: Server, warmup: int = WARMUP_FLOWS) -> Callable[[], None]:
    """`make_flow(server)`, after `warmup` flows that are not measured."""
    flow = make_flow(server)
    for _ in range(warmup):
        flow()
    return flow


def drive(
    server: Server,
    seconds: float,
    result: Run,
    max_flows: int | None = None,
    flow: Callable[[], None] | None = None,
) -> None:
    """One client thread: create -> confirm -> capture, for `seconds` (or `max_flows`).

    What it measures is added to `result`, which a target's blocks in one run share; without
    `flow` it makes one and warms the server up first.
    """
    if flow is None:
        flow = warm_flow(server)
    cpu0, srv0 = time.process_time(), cpu_seconds(server.proc.pid)
    load0 = os.getloadavg()[0]
    offset = result.seconds  # this block's flows are timed from where the last one ended
    t0 = time.perf_counter()
    end = t0 + seconds
    now = t0
    done = 0
    while now < end if max_flows is None else done < max_flows:
        try:
            flow()
        except Exception as exc:  # counted and shown; a flow that failed is not a flow
            result.errors.append(repr(exc)[:200])
            if len(result.errors) > 50:
                break
        else:
            done += 1
            t1 = time.perf_counter()
            result.latencies.append(t1 - now)
            result.done_at.append(offset + t1 - t0)
        now = time.perf_counter()
    result.flows += done
    result.seconds += now - t0
    result.blocks.append(done / (now - t0) if now > t0 else 0.0)
    result.client_cpu += time.process_time() - cpu0
    result.server_cpu += cpu_seconds(server.proc.pid) - srv0
    result.load = (load0 if offset == 0 else result.load[0], os.getloadavg()[0])


def interleave(
    servers: dict[str, Server],
    flows: dict[str, Callable[[], None]],
    results: dict[str, Run],
    seconds: float,
    block: float,
    seed: int = 0,
) -> None:
    """Drive every target for `seconds` in turns of `block` seconds, each round in another
    order (shuffled with `seed`): no target always follows the same one, whose leftovers
    (a checkpoint, the disk writing back what it wrote) would then always fall on it."""
    order = list(servers)
    shuffle = random.Random(seed).shuffle
    for _ in range(math.ceil(seconds / block)):
        shuffle(order)
        for name in order:
            left = seconds - results[name].seconds
            if left > 0.05 and len(results[name].errors) <= 50:
                drive(servers[name], min(block, left), results[name], flow=flows[name])


def stowpay_counts(db: Path) -> dict[str, Any]:
    """What a Stowpay database holds, read through Stowpay's own storage set-up.

    The server opens its database with `Store(db)` (see `stowpay cloud serve`); every
    connection a Store makes runs `_sqlite_on_connect`: journal_mode=WAL, synchronous=FULL.
    Here the same code opens a connection to the same file, reports both settings, and counts
    the committed PaymentIntents and idempotency records (the stripe client sends a key with
    every POST, and the record is written in the POST's own transaction).
    """
    import sqlalchemy as sa

    from stowpay.cloud.storage import Store
    from stowpay.cloud.storage import tables as t

    store = Store(str(db))
    try:
        with store.read() as tx:
            sync = tx.conn.exec_driver_sql("PRAGMA synchronous").scalar()
            journal = tx.conn.exec_driver_sql("PRAGMA journal_mode").scalar()
            o = t.objects.c
            succeeded = tx.conn.execute(
                sa.select(sa.func.count()).where(
                    o.type == "payment_intent", o.status == "succeeded"
                )
            ).scalar_one()
            keys = tx.conn.execute(
                sa.select(sa.func.count()).select_from(t.idempotency_keys)
            ).scalar_one()
    finally:
        store.close()
    return {
        "synchronous": sync,
        "journal_mode": journal,
        "pi_succeeded": succeeded,
        "idempotency_records": keys,
    }


def check_stowpay(before: dict[str, Any], after: dict[str, Any], result: Run) -> dict[str, Any]:
    served = result.flows + WARMUP_FLOWS
    checks = dict(after)
    checks["flows_served"] = served
    checks["stored_before"] = before["pi_succeeded"]
    checks["new_succeeded"] = after["pi_succeeded"] - before["pi_succeeded"]
    checks["new_idempotency_records"] = after["idempotency_records"] - before["idempotency_records"]
    checks["ok"] = (
        after["synchronous"] == 2
        and after["journal_mode"] == "wal"
        and (
            result.errors
            or (
                checks["new_succeeded"] == served
                and checks["new_idempotency_records"] == 3 * served
            )
        )
    )
    return checks


def verify_fsync(work: Path, flows: int = 50) -> dict[str, Any] | None:
    """Count the fsync-family system calls of a live Stowpay server over `flows` flows.

    With WAL and synchronous=FULL, SQLite syncs the WAL at every commit; with NORMAL it would
    sync only at checkpoints. So at least one sync per POST shows that the running server's
    own connection is FULL. Needs strace (Debian package `strace`); skipped without it.
    """
    strace = shutil.which("strace")
    if strace is None:
        return None
    server = start_target("stowpay", work, 0, None)
    out = work / "strace.txt"
    tracer = subprocess.Popen(
        [
            strace,
            "-f",
            "-c",
            "-e",
            "trace=fsync,fdatasync",
            "-o",
            str(out),
            "-p",
            str(server.proc.pid),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.0)  # let strace attach to every thread
        result = Run("fsync-check", 0)
        drive(server, 0.0, result, max_flows=flows)
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(15)
        server.stop()
    calls = {}
    for line in out.read_text().splitlines():
        parts = line.split()
        if parts and parts[-1] in ("fsync", "fdatasync"):
            calls[parts[-1]] = int(parts[3])
    posts = 3 * (flows + WARMUP_FLOWS)
    return {"posts": posts, "syncs": calls, "ok": sum(calls.values()) >= posts}


def run_prefill(work: Path, n: int) -> dict[str, Any]:
    db = work / "prefilled.db"
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, str(HERE / "prefill.py"), str(db), str(n)],
        check=True,
        capture_output=True,
        text=True,
    )
    info: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    info["db"] = str(db)
    info["wall_s"] = round(time.perf_counter() - t0, 1)
    info["db_MiB"] = round(sum(p.stat().st_size for p in work.glob("prefilled.db*")) / 2**20)
    return info


def med(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def fmt(values: list[float], digits: int = 1) -> str:
    m, lo, hi = med(values)
    return f"{m:.{digits}f} [{lo:.{digits}f}-{hi:.{digits}f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--seconds", type=float, default=20.0, help="seconds each target is driven in a run"
    )
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--block",
        type=float,
        default=4.0,
        help="seconds a target is driven before the next one's turn (default 4)",
    )
    ap.add_argument(
        "--prefill",
        type=int,
        default=100_000,
        help="PaymentIntents stored before the stowpay-100k runs (0: skip them)",
    )
    ap.add_argument("--targets", default=",".join(TARGETS), help="comma-separated subset")
    ap.add_argument(
        "--budget-ms",
        type=float,
        default=0.5,
        help="CPU time the budget target spends per request (default 0.5)",
    )
    ap.add_argument("--json", type=Path, help="also write every measurement here")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument(
        "--no-strace",
        action="store_true",
        help="skip counting the Stowpay server's fsync calls with strace",
    )
    args = ap.parse_args()
    targets = [x for x in args.targets.split(",") if x]
    if args.prefill <= 0 and "stowpay-100k" in targets:
        targets.remove("stowpay-100k")
    if args.seconds <= 0 or args.block <= 0:
        ap.error("--seconds and --block must be above 0")
    unknown = set(targets) - set(TARGETS)
    if unknown:
        ap.error(f"unknown targets: {', '.join(sorted(unknown))}")

    work = Path(tempfile.mkdtemp(prefix="stowpay-bench-"))
    print(
        f"python {platform.python_version()}, stripe {stripe.VERSION}, {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.2f}; uvicorn uses {http_stack()}; work dir {work}",
        flush=True,
    )
    prefilled = None
    try:
        if "stowpay-100k" in targets:
            print(f"prefilling {args.prefill:,} flows ...", flush=True)
            prefilled = run_prefill(work, args.prefill)
            print(
                f"  prefill: {prefilled['payment_intents']:,} PaymentIntents, "
                f"{prefilled['rows']['objects']:,} object rows, "
                f"{prefilled['rows']['idempotency_keys']:,} idempotency rows, "
                f"{prefilled['db_MiB']:,} MiB, {prefilled['wall_s']} s",
                flush=True,
            )
        results: dict[str, list[Run]] = {name: [] for name in targets}
        for run in range(1, args.runs + 1):
            servers: dict[str, Server] = {}
            this_run = {name: Run(name, run) for name in targets}
            before: dict[str, dict[str, Any]] = {}
            try:
                for name in targets:
                    servers[name] = start_target(name, work, run, prefilled, args.budget_ms)
                flows: dict[str, Callable[[], None]] = {}
                for name, server in servers.items():
                    if server.db is not None:
                        before[name] = stowpay_counts(server.db)
                    flows[name] = warm_flow(server)
                interleave(servers, flows, this_run, args.seconds, args.block, seed=run)
                for name, server in servers.items():
                    if server.db is not None:
                        after = stowpay_counts(server.db)
                        this_run[name].checks = check_stowpay(before[name], after, this_run[name])
            finally:
                for server in servers.values():
                    server.stop()
            for name in targets:
                result = this_run[name]
                results[name].append(result)
                extra = ""
                if result.checks:
                    c = result.checks
                    extra = (
                        f"  synchronous={c['synchronous']} {c['journal_mode']}, "
                        f"committed {c['new_succeeded']:,} PIs / "
                        f"{c['new_idempotency_records']:,} POSTs"
                        f" (PIs stored before: {c['stored_before']:,})"
                    )
                print(
                    f"run {run} {name:13s} {result.rate:7.1f} flows/s  "
                    f"({result.flows} flows, {len(result.errors)} errors, first 5 s "
                    f"{result.window(True):.1f}, last 5 s {result.window(False):.1f}; "
                    f"server CPU {1000 * result.server_cpu / max(result.flows, 1):.2f} ms/flow,"
                    f" load {result.load[0]:.2f}->{result.load[1]:.2f}){extra}",
                    flush=True,
                )
                if result.errors:
                    print("    first error:", result.errors[0], flush=True)
        fsync = None if args.no_strace else verify_fsync(work)
        report(results, args, prefilled, fsync)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def report(
    results: dict[str, list[Run]],
    args: argparse.Namespace,
    prefilled: dict[str, Any] | None,
    fsync: dict[str, Any] | None,
) -> None:
    print()
    print(
        f"create+confirm+capture, 1 client thread, {args.seconds:g} s per target and run "
        f"(in turns of {args.block:g} s), median of {args.runs} runs [range]"
    )
    head = (
        f"{'target':48s} {'flows/s':>22s} {'p50 ms':>7s} {'srv CPU ms/flow':>16s} "
        f"{'cli CPU ms/flow':>16s} {'first/last 5 s':>15s}"
    )
    print(head)
    print("-" * len(head))
    rates: dict[str, list[float]] = {}
    for name, runs in results.items():
        rates[name] = [r.rate for r in runs]
        lat = statistics.median(
            [statistics.median(r.latencies) * 1000 for r in runs if r.latencies] or [0]
        )
        srv = statistics.median([1000 * r.server_cpu / max(r.flows, 1) for r in runs])
        cli = statistics.median([1000 * r.client_cpu / max(r.flows, 1) for r in runs])
        first = statistics.median([r.window(True) for r in runs])
        last = statistics.median([r.window(False) for r in runs])
        label = LABELS[name].format(prefill=args.prefill, budget=args.budget_ms)
        print(
            f"{label:48s} {fmt(rates[name]):>22s} {lat:7.1f} {srv:16.2f} {cli:16.2f} "
            f"{first:7.1f}/{last:<7.1f}"
        )
    errors = sum(len(r.errors) for runs in results.values() for r in runs)
    print(f"errors: {errors}")

    def ratio(a: str, b: str, target: float | None, what: str) -> dict[str, Any] | None:
        if a not in rates or b not in rates:
            return None
        per_run = [x / y for x, y in zip(rates[a], rates[b], strict=True)]
        value = statistics.median(rates[a]) / statistics.median(rates[b])
        verdict = ""
        if target is not None:
            met = "MET" if value >= target else "NOT MET"
            verdict = f"  target >= {target:.1f}: {met}"
        print(f"{what:44s} {value:6.2f}  (per-run {min(per_run):.2f}-{max(per_run):.2f}){verdict}")
        return {"median_ratio": value, "per_run": per_run}

    print()
    ratios = {
        "stowpay/ls-nopersist": ratio(
            "stowpay", "ls-nopersist", 2.0, "Stowpay / localstripe (pickling off)"
        ),
        "stowpay/ls-stock": ratio("stowpay", "ls-stock", None, "Stowpay / localstripe (stock)"),
        "stowpay/canned": ratio("stowpay", "canned", 0.6, "Stowpay / canned (client limit)"),
        "budget/canned": ratio(
            "budget", "canned", None, f"{args.budget_ms:g} ms per request / canned"
        ),
        "stowpay-100k/stowpay": ratio(
            "stowpay-100k", "stowpay", None, f"Stowpay with {args.prefill:,} stored / fresh"
        ),
    }
    stow = [r for name in ("stowpay", "stowpay-100k") for r in results.get(name, [])]
    for r in stow:
        if not r.checks.get("ok"):
            print(f"DURABILITY CHECK FAILED for {r.target} run {r.run}: {r.checks}")
    print()
    if stow and all(r.checks.get("ok") for r in stow):
        print(
            "durability: Stowpay's storage set-up gives synchronous=2 (FULL), journal_mode=wal;"
            " every flow served was committed (PaymentIntent succeeded, 3 idempotency records)"
        )
    if fsync is not None:
        verdict = "OK" if fsync["ok"] else "FAILED"
        print(
            f"fsync check ({verdict}): a live Stowpay server made {fsync['syncs']} calls "
            f"for {fsync['posts']} POSTs (WAL + FULL syncs at every commit)"
        )
    if args.json:
        out = {
            "args": {k: str(v) for k, v in vars(args).items()},
            "prefill": prefilled,
            "fsync_check": fsync,
            "ratios": ratios,
            "runs": {
                name: [
                    {
                        "rate": r.rate,
                        "flows": r.flows,
                        "seconds": r.seconds,
                        "errors": r.errors[:5],
                        "p50_ms": 1000 * statistics.median(r.latencies) if r.latencies else None,
                        "server_cpu_s": r.server_cpu,
                        "client_cpu_s": r.client_cpu,
                        "first5": r.window(True),
                        "last5": r.window(False),
                        "load": r.load,
                        "checks": r.checks,
                    }
                    for r in runs
                ]
                for name, runs in results.items()
            },
        }
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()

"""Benchmark: forwarding throughput with 1, 2 and 3 cloud processes on one PostgreSQL.

    python bench/cluster.py --postgres postgresql://postgres@127.0.0.1:55433/postgres \
        [--processes 1,2,3] [--readers 4] [--backlog 500] [--batch 100] [--runs 1]

For every run of every process count, round-robin (so a noisy minute hurts all counts alike):

  1. A fresh PostgreSQL database on the server given (dropped afterwards);
     `stowpay cloud create-account` migrates it. N `stowpay cloud serve` processes on it, and
     Debian's nginx in front of them on 127.0.0.1 (`tests/e2e/cluster.py`: round-robin,
     keep-alive to the processes). The merchant (official `stripe` client, through nginx)
     makes one offline-enabled Location, and one webhook endpoint for the `payment_intent.*`
     events, pointing at a sink in this process that answers 200.
  2. Not timed: `--readers` readers register and activate through nginx, and each stores
     `--backlog` payments in its own vault (1 in 20 manual capture, 1 in 50 declined).
  3. Timed: every reader's `Forwarder.drain()` at once, one thread each in this process
     (`HttpCloudLink`, unattended, `--batch` records per request), until every vault is
     empty. The webhook dispatchers deliver meanwhile, as in production.
  4. Checked: one PaymentIntent, Charge and offline record per payment with the expected
     statuses and events (`forward_backlog.check_cloud`, on the PostgreSQL database).

It prints payments/s per run and the median per process count, and the CPU time the cloud
processes, PostgreSQL and this process used per payment. Runs are short on purpose: the
machine is shared; read the ratios between process counts, not the absolute figures.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import stripe
import structlog
from forward_backlog import (
    ADDRESS,
    PI_EVENTS,
    CountingLink,
    Registered,
    Sink,
    check_cloud,
    cpu_seconds,
    store_backlog,
)

from stowpay.reader.cloud_link import DeviceDescription
from stowpay.reader.forwarder import Forwarder
from stowpay.reader.vault import SealingKey, Vault
from stowpay.wire.clock import SystemClock

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))
from cluster import Cluster  # the test kit: nginx in front of cloud processes


@dataclass
class Run:
    processes: int
    run: int
    payments: int
    seconds: float = 0.0
    cloud_cpu: float = 0.0
    postgres_cpu: float = 0.0
    client_cpu: float = 0.0
    requests: int = 0
    per_process: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.payments / self.seconds


def postgres_cpu() -> float:
    """CPU seconds of every PostgreSQL process on this machine (the server is shared)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            if (entry / "comm").read_text().strip() in ("postgres", "postmaster"):
                total += cpu_seconds(int(entry.name))
    return total


def new_database(server: str) -> str:
    name = "bench_" + uuid.uuid4().hex[:12]
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server.rsplit("/", 1)[0] + "/" + name


def drop_database(server: str, url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def create_account(db: str) -> dict[str, str]:
    import json

    out = subprocess.run(
        [sys.executable, "-m", "stowpay.cli", "cloud", "create-account", "--db", db, "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(out.stdout))


def register_readers(url: str, key: str, count: int, sink: Sink) -> list[Registered]:
    client = stripe.StripeClient(key, base_addresses={"api": url}, max_network_retries=0)
    client.v1.webhook_endpoints.create(params={"url": sink.url, "enabled_events": list(PI_EVENTS)})
    config = client.v1.terminal.configurations.create(params={"offline": {"enabled": True}})
    location = client.v1.terminal.locations.create(
        params={"display_name": "Shop", "address": ADDRESS, "configuration_overrides": config.id}
    )
    out = []
    with CountingLink(url, timeout=60.0) as link:
        for n in range(count):
            code = link.request_registration_code(
                DeviceDescription("simulated_wisepos_e", f"BENCH-{n:04d}", "1.0.0")
            )
            client.v1.terminal.readers.create(
                params={"registration_code": code.code, "location": location.id}
            )
            activation = link.activate(code.code)
            assert activation is not None
            ctx = link.heartbeat(
                activation.device_key, status="online", ip_address=None, device_sw_version="1.0.0"
            )
            out.append(
                Registered(
                    activation.reader,
                    activation.device_key,
                    SealingKey.from_document(ctx.sealing_key),
                )
            )
    return out


def one_run(server: str, work: Path, processes: int, run: int, args: Any) -> Run:
    work.mkdir(parents=True)
    db = new_database(server)
    sink = Sink()
    cluster: Cluster | None = None
    result = Run(processes, run, args.readers * args.backlog)
    try:
        keys = create_account(db)
        cluster = Cluster(db, processes, work / "cluster")
        readers = register_readers(cluster.url, keys["secret_key"], args.readers, sink)
        rng = random.Random(run)
        vaults: list[Vault] = [
            store_backlog(work / f"vault{n}", keys["account"], reg, args.backlog, rng)
            for n, reg in enumerate(readers)
        ]
        links = [CountingLink(cluster.url, timeout=120.0) for _ in readers]
        forwarders = [
            Forwarder(
                vault,
                link,
                device_key=lambda reg=reg: reg.device_key,
                unattended=True,
                clock=SystemClock(),
                batch_size=args.batch,
            )
            for vault, link, reg in zip(vaults, links, readers, strict=True)
        ]
        drained: list[Any] = [None] * len(forwarders)

        def drain(i: int) -> None:
            drained[i] = forwarders[i].drain()

        pids = [p.proc.pid for p in cluster.clouds if p is not None]
        served_before = cluster.balancer.served("/device/v1/offline_payments")
        cloud0, pg0, me0 = sum(map(cpu_seconds, pids)), postgres_cpu(), time.process_time()
        threads = [threading.Thread(target=drain, args=(i,)) for i in range(len(forwarders))]
        t0 = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        result.seconds = time.perf_counter() - t0
        result.cloud_cpu = sum(map(cpu_seconds, pids)) - cloud0
        result.postgres_cpu = postgres_cpu() - pg0
        result.client_cpu = time.process_time() - me0
        result.requests = sum(link.forwards for link in links)
        served = cluster.balancer.served("/device/v1/offline_payments") - served_before
        result.per_process = {k.rsplit(":", 1)[1]: v for k, v in sorted(served.items())}
        approved = sum(d.approved for d in drained)
        declined = sum(d.declined for d in drained)
        for d in drained:
            if d.error is not None or d.remaining:
                result.problems.append(f"drain: {d}")
        for vault in vaults:
            if vault.summary().count:
                result.problems.append("records left in a vault")
            vault.close()
        for link in links:
            link.close()
    finally:
        if cluster is not None:
            cluster.close()
        sink.stop()
    result.problems += check_cloud_many(db, args.readers, args.backlog, approved, declined)
    drop_database(server, db)
    return result


def check_cloud_many(
    db: str, readers: int, backlog: int, approved: int, declined: int
) -> list[str]:
    """`check_cloud` for `readers` vaults of `backlog` payments each (the same mix in each)."""
    # `check_cloud` counts what the database holds; its expectations are for one vault, so
    # only its counts are used here, against `readers` times one vault.
    per = check_cloud(db, backlog, approved, declined)  # str(db) is the URL itself
    problems: list[str] = []
    pis = sum(per["payment_intents"].values())
    if pis != readers * backlog:
        problems.append(f"{pis} PaymentIntents for {readers * backlog} payments")
    if sum(per["charges"].values()) != readers * backlog:
        problems.append(f"charges {per['charges']}")
    if sum(per["offline_records"].values()) != readers * backlog:
        problems.append(f"offline records {per['offline_records']}")
    events = per["events"]
    if events.get("payment_intent.created") != readers * backlog:
        problems.append(f"events {events}")
    if approved + declined != readers * backlog:
        problems.append(f"outcomes: {approved} approved, {declined} declined")
    return problems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--postgres",
        default=os.environ.get("STOWPAY_TEST_POSTGRES_URL"),
        help="a PostgreSQL server URL (a database on it is made and dropped per run)",
    )
    ap.add_argument("--processes", default="1,2,3", help="comma-separated process counts")
    ap.add_argument("--readers", type=int, default=4, help="readers forwarding at once")
    ap.add_argument("--backlog", type=int, default=500, help="payments stored per reader")
    ap.add_argument("--batch", type=int, default=100, help="records per request (the default)")
    ap.add_argument("--runs", type=int, default=1, help="runs of each process count")
    args = ap.parse_args()
    if not args.postgres:
        ap.error("--postgres (or STOWPAY_TEST_POSTGRES_URL) is required")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    counts = [int(x) for x in args.processes.split(",") if x]
    plan = [(n, run) for run in range(1, args.runs + 1) for n in counts]
    work = Path(tempfile.mkdtemp(prefix="stowpay-bench-cluster-"))
    print(
        f"python {platform.python_version()}, {os.cpu_count()} CPUs, load "
        f"{os.getloadavg()[0]:.2f}; {args.readers} readers x {args.backlog} payments, batch "
        f"{args.batch}; work dir {work}",
        flush=True,
    )
    results: list[Run] = []
    for n, run in plan:
        r = one_run(args.postgres, work / f"p{n}-run{run}", n, run, args)
        results.append(r)
        total_cpu = (r.cloud_cpu + r.postgres_cpu + r.client_cpu) * 1000 / r.payments
        print(
            f"{n} process(es), run {run}: {r.payments:,} payments in {r.seconds:.2f} s = "
            f"{r.rate:,.0f}/s; {r.requests} requests, per process {r.per_process}; CPU per "
            f"payment: cloud {r.cloud_cpu * 1000 / r.payments:.2f} ms, PostgreSQL "
            f"{r.postgres_cpu * 1000 / r.payments:.2f} ms, readers "
            f"{r.client_cpu * 1000 / r.payments:.2f} ms (all {total_cpu:.2f} ms); load "
            f"{os.getloadavg()[0]:.2f}; problems {r.problems or 'none'}",
            flush=True,
        )
    print("\nmedian payments/s by cloud processes:")
    base: float | None = None
    for n in counts:
        rates = [r.rate for r in results if r.processes == n]
        med = statistics.median(rates)
        base = base or med
        print(f"  {n}: {med:,.0f}/s  ({med / base:.2f}x)  runs {[round(x) for x in rates]}")
    if any(r.problems for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()

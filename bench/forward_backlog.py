"""Benchmark: a backlog of offline payments forwarded reader -> cloud, end to end.

    python bench/forward_backlog.py [--sizes 1000,10000] [--runs 3] [--batch 500] [--big]

For every run of every size:

  1. A fresh cloud: `stowpay cloud create-account` then `stowpay cloud serve` on a new SQLite
     file (WAL, synchronous=FULL), its own process on 127.0.0.1. The merchant (the official
     `stripe` client) makes an offline-enabled Configuration, a Location, a webhook endpoint
     for the four `payment_intent.*` events of an offline payment (pointing at a sink in
     this process that answers 200), and
     registers a reader; the reader activates over the device API and fetches the sealing key
     with a heartbeat (`HttpCloudLink`).
  2. Not timed: the backlog is stored in a fresh vault (`Vault.store`, one durable commit
     each, the card data sealed to the cloud's key). The mix: 1 payment in 20 is manual
     capture (it ends `requires_capture`), 1 in 50 has an amount the test issuer declines;
     the rest are automatic and approved.
  3. Timed: `Forwarder.drain()` with `HttpCloudLink` in unattended mode (device key only),
     `--batch` records per request, until the vault is empty. Each batch is one request and
     one cloud transaction; a record leaves the vault only after its outcome arrived.
  4. Checked: every record forwarded and removed; in the cloud's database (read with the
     cloud's own `Store` after it stopped), one PaymentIntent per record with the expected
     status, one Charge each, the events (`payment_intent.created`, then `.succeeded`,
     `.amount_capturable_updated` or `.payment_failed`, and the charge events) and one
     queued webhook delivery per `payment_intent.*` event.

It prints payments/s per run, time per payment for each size (they should be about equal if
time grows linearly), the cloud's and this process's CPU time per payment, and the cloud
process's peak resident memory. `--big` adds one run of 100,000 payments (storing the
backlog alone takes a few minutes).
`--profile` runs py-spy on the cloud process during the timed part and writes a flame graph.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import json
import logging
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
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import stripe
import structlog

from stowpay.reader.cloud_link import DeviceDescription, HttpCloudLink
from stowpay.reader.forwarder import Forwarder
from stowpay.reader.vault import CardRead, OfflinePayment, SealingKey, Vault
from stowpay.wire.clock import SystemClock

TICKS = os.sysconf("SC_CLK_TCK")
CARDS = ("4242424242424242", "5555555555554444", "4000056655665556", "378282246310005")
#: The events the merchant's webhook endpoint listens for.
PI_EVENTS = (
    "payment_intent.created",
    "payment_intent.succeeded",
    "payment_intent.amount_capturable_updated",
    "payment_intent.payment_failed",
)
ADDRESS = {"line1": "1 Main St", "city": "Springfield", "postal_code": "62701", "country": "US"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def peak_rss_mib(pid: int) -> float:
    """The most resident memory a process has had (VmHWM, from /proc), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Sink(http.server.ThreadingHTTPServer):
    """Webhook receiver on 127.0.0.1: answers 200 to every POST and counts them.

    With `hold`, it answers nothing until it is shut down (a receiver that hangs): the
    dispatcher's requests time out and the deliveries stay queued in the outbox.
    """

    daemon_threads = True

    def __init__(self, *, hold: bool = False) -> None:
        self.received = 0
        self.lock = threading.Lock()
        self.released = threading.Event()
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                with sink.lock:
                    sink.received += 1
                if hold:
                    sink.released.wait()
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, name="sink", daemon=True).start()

    def stop(self) -> None:
        self.released.set()
        self.shutdown()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hooks"


@dataclass
class Cloud:
    proc: subprocess.Popen[bytes]
    url: str
    db: Path
    secret_key: str
    account: str

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_cloud(work: Path) -> Cloud:
    db = work / "cloud.db"
    stowpay = [sys.executable, "-m", "stowpay.cli.main"]
    made = subprocess.run(
        [*stowpay, "cloud", "create-account", "--db", str(db), "--json"],
        check=True,
        capture_output=True,
        text=True,
    )
    keys = json.loads(made.stdout)
    port = free_port()
    log = (work / "cloud.log").open("wb")
    proc = subprocess.Popen(
        [*stowpay, "cloud", "serve", "--db", str(db), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the cloud exited:\n{(work / 'cloud.log').read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            break
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("the cloud did not start")
        time.sleep(0.05)
    return Cloud(proc, f"http://127.0.0.1:{port}", db, keys["secret_key"], keys["account"])


@dataclass
class Registered:
    reader: str
    device_key: str
    sealing_key: SealingKey


def register(cloud: Cloud, link: HttpCloudLink, sink: Sink) -> Registered:
    """The merchant's set-up and the reader's activation, over the real APIs."""
    client = stripe.StripeClient(
        cloud.secret_key, base_addresses={"api": cloud.url}, max_network_retries=0
    )
    client.v1.webhook_endpoints.create(params={"url": sink.url, "enabled_events": list(PI_EVENTS)})
    config = client.v1.terminal.configurations.create(params={"offline": {"enabled": True}})
    location = client.v1.terminal.locations.create(
        params={"display_name": "Shop", "address": ADDRESS, "configuration_overrides": config.id}
    )
    code = link.request_registration_code(
        DeviceDescription("simulated_wisepos_e", "BENCH-0001", "1.0.0")
    )
    reader = client.v1.terminal.readers.create(
        params={"registration_code": code.code, "location": location.id}
    )
    activation = link.activate(code.code)
    assert activation is not None and activation.reader == reader.id
    ctx = link.heartbeat(
        activation.device_key, status="online", ip_address=None, device_sw_version="1.0.0"
    )
    return Registered(
        activation.reader, activation.device_key, SealingKey.from_document(ctx.sealing_key)
    )


def kind_of(n: int) -> str:
    """The payment mix: declined, manual capture, or automatic (approved)."""
    if n % 50 == 7:
        return "declined"
    if n % 20 == 0:
        return "manual"
    return "automatic"


def store_backlog(
    directory: Path, account: str, reg: Registered, count: int, rng: random.Random
) -> Vault:
    """A vault holding `count` offline payments (each one durable commit, as on a reader)."""
    vault = Vault.open(directory, clock=SystemClock(), sealing_key=reg.sealing_key)
    for n in range(count):
        kind = kind_of(n)
        amount = 1005 if kind == "declined" else 1000 + 10 * rng.randrange(500)
        number = CARDS[n % len(CARDS)]
        card = CardRead(
            number=number,
            exp_month=12,
            exp_year=2031,
            brand="amex" if number.startswith("3") else "visa",
            read_method="contact_emv",
            cardholder_name="Ada Lovelace",
            emv_data={"9F26": f"{rng.getrandbits(64):016X}", "9F36": "0042"},
            receipt={"application_preferred_name": "CREDIT", "account_type": "credit"},
        )
        vault.store(
            OfflinePayment(
                account=account,
                reader=reg.reader,
                amount=amount,
                currency="usd",
                capture_method="manual" if kind == "manual" else "automatic",
                card=card,
                metadata={"order_id": f"B-{n}", "till": "1"},
                description="coffee",
            )
        )
    return vault


@dataclass
class Run:
    size: int
    run: int
    seconds: float = 0.0
    cloud_cpu: float = 0.0
    reader_cpu: float = 0.0
    requests: int = 0
    #: of `seconds`, the time spent in the forwarding calls (the rest is the vault's)
    in_requests: float = 0.0
    #: the cloud process's peak resident memory, MiB
    cloud_rss: float = 0.0
    checks: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.size / self.seconds

    @property
    def us_per_payment(self) -> float:
        return 1e6 * self.seconds / self.size


class CountingLink(HttpCloudLink):
    """`HttpCloudLink` that counts its forwarding requests."""

    forwards = 0
    #: wall time spent inside `forward` (the request, the cloud's work, the answer read)
    seconds = 0.0

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self.forwards += 1
        t0 = time.perf_counter()
        try:
            return super().forward(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t0


def one_run(work: Path, size: int, run: int, batch: int, profile: bool, hold: bool) -> Run:
    work.mkdir(parents=True)
    sink = Sink(hold=hold)
    cloud = start_cloud(work)
    result = Run(size, run)
    try:
        link = CountingLink(cloud.url, timeout=120.0)
        reg = register(cloud, link, sink)
        t0 = time.perf_counter()
        vault = store_backlog(work / "vault", cloud.account, reg, size, random.Random(run))
        print(
            f"  stored {size:,} payments in the vault in {time.perf_counter() - t0:.1f} s",
            flush=True,
        )
        forwarder = Forwarder(
            vault,
            link,
            device_key=lambda: reg.device_key,
            unattended=True,
            clock=SystemClock(),
            batch_size=batch,
        )
        spy = start_py_spy(work, cloud.proc.pid) if profile else None
        cpu0, reader0 = cpu_seconds(cloud.proc.pid), time.process_time()
        t0 = time.perf_counter()
        drained = forwarder.drain()
        result.seconds = time.perf_counter() - t0
        result.cloud_cpu = cpu_seconds(cloud.proc.pid) - cpu0
        result.reader_cpu = time.process_time() - reader0
        result.requests = link.forwards
        result.in_requests = link.seconds
        result.cloud_rss = peak_rss_mib(cloud.proc.pid)
        if spy is not None:
            stop_py_spy(spy, work.parent / f"profile-{work.name}.txt")
        if drained.error is not None or drained.forwarded != size or drained.remaining:
            raise AssertionError(f"drain: {drained}")
        if vault.summary().count:
            raise AssertionError("records left in the vault")
        vault.close()
        link.close()
    finally:
        cloud.stop()
        sink.stop()
    result.checks = check_cloud(cloud.db, size, drained.approved, drained.declined)
    return result


def check_cloud(db: Path, size: int, approved: int, declined: int) -> dict[str, Any]:
    """What the cloud committed, read back with its own `Store`."""
    import sqlalchemy as sa

    from stowpay.cloud.storage import Store
    from stowpay.cloud.storage import tables as t

    expected_kinds = Counter(kind_of(n) for n in range(size))
    store = Store(str(db))
    try:
        with store.read() as tx:
            o = t.objects.c

            def by(column: Any, type_: str) -> Counter[str]:
                rows = tx.conn.execute(
                    sa.select(column, sa.func.count()).where(o.type == type_).group_by(column)
                ).all()
                return Counter({str(k): int(n) for k, n in rows})

            pis = by(o.status, "payment_intent")
            charges = by(o.status, "charge")
            events = by(o.status, "event")  # an event's status column holds its type
            records = by(o.status, "stowpay.offline_record")
            deliveries = tx.conn.execute(
                sa.select(sa.func.count()).select_from(t.webhook_deliveries)
            ).scalar_one()
    finally:
        store.close()
    pi_events = sum(n for k, n in events.items() if k.startswith("payment_intent."))
    checks = {
        "payment_intents": dict(pis),
        "charges": dict(charges),
        "events": dict(events),
        "offline_records": dict(records),
        "deliveries": deliveries,
    }
    expect_pis = {
        "succeeded": expected_kinds["automatic"],
        "requires_capture": expected_kinds["manual"],
        "requires_payment_method": expected_kinds["declined"],
    }
    expect_events = {
        "payment_intent.created": size,
        "payment_intent.succeeded": expected_kinds["automatic"],
        "payment_intent.amount_capturable_updated": expected_kinds["manual"],
        "payment_intent.payment_failed": expected_kinds["declined"],
        "charge.succeeded": size - expected_kinds["declined"],
        "charge.failed": expected_kinds["declined"],
    }
    problems = []
    if approved != size - expected_kinds["declined"] or declined != expected_kinds["declined"]:
        problems.append(f"outcomes: {approved} approved, {declined} declined")
    if {k: v for k, v in pis.items() if v} != {k: v for k, v in expect_pis.items() if v}:
        problems.append(f"payment intents {dict(pis)} != {expect_pis}")
    if sum(charges.values()) != size:
        problems.append(f"charges {dict(charges)}")
    if {k: events[k] for k in expect_events} != expect_events:
        problems.append(f"events {dict(events)} != {expect_events}")
    if sum(records.values()) != size:
        problems.append(f"offline records {dict(records)}")
    if deliveries != pi_events:
        problems.append(f"{deliveries} deliveries queued for {pi_events} payment_intent events")
    checks["problems"] = problems
    return checks


def start_py_spy(work: Path, pid: int) -> subprocess.Popen[bytes] | None:
    spy = shutil.which("py-spy")
    if spy is None:
        print("  py-spy not found (pip install py-spy): no profile", flush=True)
        return None
    out = work.parent / f"profile-{work.name}.txt"
    print(f"  profiling the cloud into {out} (collapsed stacks)", flush=True)
    proc = subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(pid),
            "--rate",
            "250",
            "--format",
            "raw",
            "--output",
            str(out),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # let it attach
    return proc


def stop_py_spy(proc: subprocess.Popen[bytes] | None, out: Path, top: int = 25) -> None:
    """Stop py-spy and print the functions seen in most samples (inclusive), with shares."""
    if proc is None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
    if not out.exists():
        return
    inclusive: Counter[str] = Counter()
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = {
            f.split(" (")[0] + " " + f.rsplit("/", 1)[-1].split(":")[0] for f in stack.split(";")
        }
        for frame in frames:
            inclusive[frame] += n
    print(f"  py-spy: {total} samples; functions in the most samples:")
    for frame, n in inclusive.most_common(top):
        print(f"    {100 * n / total:5.1f}%  {frame}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,10000", help="comma-separated backlog sizes")
    ap.add_argument("--runs", type=int, default=3, help="runs of each size")
    ap.add_argument("--batch", type=int, default=500, help="records per request (1-500)")
    ap.add_argument("--big", action="store_true", help="add one run of 100,000 payments")
    ap.add_argument("--profile", action="store_true", help="py-spy the cloud (flame graphs)")
    ap.add_argument(
        "--hold-webhooks",
        action="store_true",
        help="the webhook receiver hangs: deliveries stay queued instead of going out meanwhile",
    )
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--json", type=Path, help="also write every measurement here")
    args = ap.parse_args()
    # The forwarder logs each batch at info level; only warnings matter here.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    sizes = [int(x) for x in args.sizes.split(",") if x]
    plan = [(size, run) for run in range(1, args.runs + 1) for size in sizes]
    if args.big:
        plan.append((100_000, 1))

    work = Path(tempfile.mkdtemp(prefix="stowpay-bench-forward-"))
    print(
        f"python {platform.python_version()}, stripe {stripe.VERSION}, {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.2f}; batch {args.batch}; webhooks "
        f"{'held' if args.hold_webhooks else 'delivered'}; work dir {work}",
        flush=True,
    )
    results: list[Run] = []
    try:
        for size, run in plan:
            print(f"run {run}, {size:,} payments", flush=True)
            r = one_run(
                work / f"{size}-{run}", size, run, args.batch, args.profile, args.hold_webhooks
            )
            results.append(r)
            verdict = "ok" if not r.checks["problems"] else f"PROBLEMS {r.checks['problems']}"
            print(
                f"  forwarded in {r.seconds:.2f} s: {r.rate:,.0f} payments/s, "
                f"{r.us_per_payment:.0f} us/payment "
                f"({1e6 * r.in_requests / size:.0f} in requests), "
                f"{r.requests} requests; CPU per payment: "
                f"cloud {1e6 * r.cloud_cpu / size:.0f} us, reader {1e6 * r.reader_cpu / size:.0f}"
                f" us; cloud peak RSS {r.cloud_rss:.0f} MiB; cloud check {verdict}",
                flush=True,
            )
            shutil.rmtree(work / f"{size}-{run}" / "vault", ignore_errors=True)
        report(results, args)
    finally:
        if args.keep or args.profile:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def report(results: list[Run], args: argparse.Namespace) -> None:
    print()
    print(f"backlog forwarded reader -> cloud, batch {args.batch}; median [range] of the runs")
    head = (
        f"{'payments':>9s} {'runs':>4s} {'payments/s':>24s} {'us/payment':>11s} "
        f"{'cloud CPU us/p':>15s} {'reader CPU us/p':>16s} {'cloud RSS MiB':>14s}"
    )
    print(head)
    print("-" * len(head))
    by_size: dict[int, list[Run]] = {}
    for r in results:
        by_size.setdefault(r.size, []).append(r)
    for size, runs in sorted(by_size.items()):
        rates = [r.rate for r in runs]
        per = statistics.median([r.us_per_payment for r in runs])
        cloud = statistics.median([1e6 * r.cloud_cpu / size for r in runs])
        reader = statistics.median([1e6 * r.reader_cpu / size for r in runs])
        rss = max(r.cloud_rss for r in runs)
        band = f"{statistics.median(rates):,.0f} [{min(rates):,.0f}-{max(rates):,.0f}]"
        print(
            f"{size:>9,} {len(runs):>4d} {band:>24s} {per:>11.0f} {cloud:>15.0f} {reader:>16.0f}"
            f" {rss:>14.0f}"
        )
    if 10_000 in by_size:
        rate = statistics.median([r.rate for r in by_size[10_000]])
        verdict = "MET" if rate >= 2000 else "NOT MET"
        print(f"\n10,000 payments: {rate:,.0f}/s  target >= 2,000/s: {verdict}")
    bad = [r for r in results if r.checks["problems"]]
    print(
        "cloud checks: "
        + ("all runs committed what was expected" if not bad else f"{len(bad)} runs FAILED")
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                [
                    {
                        "size": r.size,
                        "run": r.run,
                        "seconds": r.seconds,
                        "rate": r.rate,
                        "cloud_cpu_s": r.cloud_cpu,
                        "reader_cpu_s": r.reader_cpu,
                        "requests": r.requests,
                        "cloud_rss_mib": r.cloud_rss,
                        "checks": r.checks,
                    }
                    for r in results
                ],
                indent=2,
            )
        )


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()

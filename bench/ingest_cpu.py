"""Benchmark: the cloud's CPU per forwarded offline payment, in process, without HTTP.

    python bench/ingest_cpu.py [--payments 3000] [--batch 500] [--runs 3]

`bench/forward_backlog.py` times the whole path on real processes, but on a shared host its
wall rates swing with the load. This one runs `offline_ingest.ingest` (unsealing, the
PaymentMethod, PaymentIntent and Charge, the events and their webhook deliveries, the
permanent record key) on a fresh SQLite database (WAL, synchronous=FULL) in this process, one
`Store.write()` transaction per batch as the device API does, and reports the thread's CPU
time per payment (`time.thread_time`), which other processes on the host barely move. The
account has one webhook endpoint for the four `payment_intent.*` events, as in
`forward_backlog.py`; 1 payment in 20 is manual capture and 1 in 50 is declined.

Run it against another tree with `PYTHONPATH=<tree>/src` to compare (A/B, interleaved).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from stowpay.cloud.api import Context
from stowpay.cloud.domain.accounts import create_account
from stowpay.cloud.domain.offline_ingest import ForwardedPayment, digest_of, ingest
from stowpay.cloud.storage import Store
from stowpay.wire import sealed
from stowpay.wire.clock import SystemClock
from stowpay.wire.ids import RandomIds

READER = {"id": "tmr_bench", "object": "terminal.reader", "created": 0, "location": "tml_1"}
EVENTS = [
    "payment_intent.created",
    "payment_intent.succeeded",
    "payment_intent.amount_capturable_updated",
    "payment_intent.payment_failed",
]


def records(account: str, public: bytes, count: int) -> list[ForwardedPayment]:
    out = []
    for seq in range(1, count + 1):
        card = json.dumps({"number": "4242424242424242", "exp_month": 12, "exp_year": 2031})
        aad = sealed.associated_data(account, READER["id"], seq)
        blob = sealed.seal(public, "k1", card.encode(), aad)
        fields = {
            "sequence": seq,
            "stored_at": 1_790_000_000.0 + seq,
            # amounts ending in 0 approve; 1 in 50 ends in 2 (the test issuer declines it)
            "amount": 1002 if seq % 50 == 0 else 1000 + seq % 90 * 10,
            "currency": "usd",
            "capture_method": "manual" if seq % 20 == 0 else "automatic",
            "metadata": {"order_id": f"B-{seq}"},
            "description": None,
            "local_id": f"pio_{seq:032x}",
            "display": {
                "brand": "visa",
                "last4": "4242",
                "read_method": "contact_emv",
                "cardholder_name": "Ada Lovelace",
                "exp_month": 12,
                "exp_year": 2031,
                "receipt": {"application_preferred_name": "VISA CREDIT"},
            },
        }
        out.append(ForwardedPayment(**fields, sealed=blob, digest=digest_of(fields, blob)))
    return out


def one_run(work: Path, count: int, batch: int) -> tuple[float, float]:
    """(thread CPU us per payment, wall us per payment) of ingesting `count` payments."""
    clock, ids = SystemClock(), RandomIds()
    store = Store(str(work / "cloud.db"))
    store.migrate()
    key = X25519PrivateKey.generate()
    with store.write() as tx:
        account = create_account(tx, clock, ids).account
        tx.insert(account["id"], dict(READER))
        tx.insert(
            account["id"],
            {
                "id": ids.new("we"),
                "object": "webhook_endpoint",
                "created": int(clock.now()),
                "enabled_events": EVENTS,
                "livemode": False,
                "metadata": {},
                "status": "enabled",
                "url": "http://127.0.0.1:9/hook",
                "_secret": "whsec_bench",
            },
        )
    todo = records(account["id"], key.public_key().public_bytes_raw(), count)
    done = 0
    c0, t0 = time.thread_time(), time.perf_counter()
    for start in range(0, count, batch):
        with store.write() as tx:
            ctx = Context(
                account=account,
                tx=tx,
                clock=clock,
                ids=ids,
                request_id="req_bench",
                idempotency_key=None,
            )
            outcomes = ingest(
                ctx,
                READER,
                todo[start : start + batch],
                unseal=lambda blob, aad: sealed.open_sealed(key, blob, aad),
                associated_data=sealed.associated_data,
            )
        done += sum(1 for o in outcomes if o.status in ("approved", "declined"))
    cpu, wall = time.thread_time() - c0, time.perf_counter() - t0
    if done != count:
        raise AssertionError(f"{done} of {count} payments ingested")
    store.engine.dispose()
    return 1e6 * cpu / count, 1e6 * wall / count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--payments", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    cpus, walls = [], []
    for run in range(1, args.runs + 1):
        with tempfile.TemporaryDirectory(prefix="stowpay-bench-ingest-") as work:
            cpu, wall = one_run(Path(work), args.payments, args.batch)
        cpus.append(cpu)
        walls.append(wall)
        print(f"run {run}: {cpu:7,.0f} us CPU per payment   {wall:7,.0f} us wall", flush=True)
    print(
        f"median: {statistics.median(cpus):,.0f} us CPU per payment "
        f"[{min(cpus):,.0f}-{max(cpus):,.0f}], {statistics.median(walls):,.0f} us wall"
    )


if __name__ == "__main__":
    main()

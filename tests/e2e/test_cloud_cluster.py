"""Three cloud processes on one PostgreSQL behind nginx; one killed while readers forward.

Real processes on loopback: three `stowpay cloud serve` on one PostgreSQL database, nginx in
front of them (`cluster.Balancer`), three `stowpay reader run` behind that one address, each
with a backlog stored offline beforehand, forwarding at the same time (nginx spreads their
batches over the processes). When about a quarter of the payments are in, one cloud process is
killed with SIGKILL; nginx sends what it refused to the others, and readers whose batch was cut
off send it again. A merchant's receiver on loopback counts webhook deliveries per event.

Asserted at the end:
- every reader drained its vault, nothing quarantined, nothing left forwarding;
- every stored payment is one PaymentIntent (succeeded) with one Charge: none lost, none twice;
- every webhook delivery is delivered, none pending or failed;
- no double sends. A delivery is sent once per recorded attempt, plus at most once more if the
  process that held its lease died before recording the attempt (the lease then lapses and a
  surviving process sends it). So for every event: receipts >= 1, receipts - attempts is 0 or
  1, and the attempts of a delivery are 1 + its failed ones (two live processes never both
  send it). Extra receipts in all are at most one dispatcher batch (what the dead process
  could have had in flight).

Sizes: 3 readers x `STOWPAY_E2E_CLUSTER_BACKLOG` payments (default 400).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import psycopg
import pytest
import stripe
from cluster import Cluster, EventCounter, nginx_binary, wait_until
from procs import (
    ADDRESS,
    Ledger,
    Process,
    Verdict,
    create_account,
    free_port,
    wait_for,
)
from procs import wait_drained as drained

from stowpay.cloud.webhooks import BATCH as DISPATCH_BATCH
from stowpay.reader.state import ReaderState
from stowpay.reader.vault import CardRead, OfflinePayment, SealingKey, Vault
from stowpay.wire.clock import SystemClock

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(600),
    pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed"),
]

PROCESSES = 3
READERS = 3
BACKLOG = int(os.environ.get("STOWPAY_E2E_CLUSTER_BACKLOG", "400"))
#: A dead process's leased deliveries are sent by another after 3x this.
WEBHOOK_TIMEOUT = 2.0
CARDS = (("4242424242424242", "visa"), ("5555555555554444", "mastercard"))


def store_backlog(data: Path, prefix: str, count: int, ledger: Ledger) -> None:
    """Store `count` offline payments in a stopped reader's vault, as its core would."""
    state = ReaderState.inspect(data)
    identity, context = state.identity, state.context
    assert identity is not None and context is not None
    vault = Vault.open(
        state.vault_dir,
        clock=SystemClock(),
        sealing_key=SealingKey.from_document(context.sealing_key),
    )
    try:
        for i in range(count):
            number, brand = CARDS[i % len(CARDS)]
            order, amount = f"{prefix}-{i}", 100 * (1 + (i * 7919) % 99)  # approved endings
            vault.store(
                OfflinePayment(
                    account=identity.account,
                    reader=identity.reader,
                    amount=amount,
                    currency="usd",
                    capture_method="automatic",
                    card=CardRead(number, 12, 2034, brand, "contact_emv", "Ada Lovelace"),
                    metadata={"order_id": order},
                )
            )
            ledger.started[order] = amount
            ledger.acknowledged.add(order)
    finally:
        vault.close()


@pytest.fixture
def db(make_db_url: Callable[[str], str]) -> str:
    return make_db_url("postgres")


@pytest.fixture
def cluster(db: str, tmp_path: Path) -> Iterator[tuple[Cluster, str]]:
    """The cluster, and the secret key of its account."""
    key = create_account(db)["secret_key"]  # migrates the database before the processes start
    c = Cluster(db, PROCESSES, tmp_path / "cluster", webhook_timeout=WEBHOOK_TIMEOUT)
    yield c, key
    c.close()


def launch_reader(cloud_url: str, data: Path, port: int, logs: Path, *extra: str) -> Process:
    """Start `stowpay reader run` without waiting for it (its log: `logs/<data name>.log`)."""
    args = ["reader", "run", "--cloud", cloud_url, "--data", str(data), "--port", str(port)]
    return Process([*args, *extra, "--log-level", "info"], logs / f"{data.name}.log")


def count_rows(db: str, sql: str) -> int:
    with psycopg.connect(db) as conn:
        row = conn.execute(sql).fetchone()
        assert row is not None
        return int(row[0])


def test_readers_forward_through_a_cluster_losing_a_process(
    db: str, cluster: tuple[Cluster, str], tmp_path: Path
) -> None:
    balanced, key = cluster
    merchant = stripe.StripeClient(key, base_addresses={"api": balanced.url}, max_network_retries=0)
    receiver = EventCounter()
    started = time.monotonic()
    readers: list[Process] = []
    try:
        events = ["payment_intent.created", "payment_intent.succeeded"]
        merchant.v1.webhook_endpoints.create(params={"url": receiver.url, "enabled_events": events})
        config = merchant.v1.terminal.configurations.create(params={"offline": {"enabled": True}})
        location = merchant.v1.terminal.locations.create(
            params={
                "display_name": "Main St",
                "address": ADDRESS,
                "configuration_overrides": config.id,
            }
        ).id
        logs = tmp_path / "logs"
        logs.mkdir()
        ledger = Ledger()
        datas = [tmp_path / f"reader{n}" for n in range(READERS)]
        # Registered online through the balancer (all at once), then stopped.
        ports = [free_port() for _ in datas]
        fresh = [
            launch_reader(balanced.url, data, port, logs)
            for data, port in zip(datas, ports, strict=True)
        ]
        for n, proc in enumerate(fresh):
            code = proc.expect("Registration code:").split(":", 1)[1].strip()
            merchant.v1.terminal.readers.create(
                params={"registration_code": code, "location": location, "label": f"Till {n}"}
            )
        for port in ports:
            wait_for(
                "the reader to activate and report online",
                lambda p=port: (
                    httpx.get(f"http://127.0.0.1:{p}/v1/status").json()["network"] == "online"
                ),
            )
        for proc in fresh:
            assert proc.stop() == 0
        for n, data in enumerate(datas):
            store_backlog(data, f"R{n}", BACKLOG, ledger)
        total = READERS * BACKLOG
        marks = {"stored": time.monotonic()}

        # Started together, they forward their backlogs at the same time.
        ports = [free_port() for _ in datas]
        readers = [
            launch_reader(balanced.url, data, port, logs, "--unattended-forwarding")
            for data, port in zip(datas, ports, strict=True)
        ]
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        # Killed: the first process to answer a forwarded batch, as soon as it has (its
        # dispatcher is then sending that batch's webhooks, and more batches are on the way).
        forwards = "/device/v1/offline_payments"
        wait_until("a first forwarded batch", lambda: balanced.balancer.served(forwards), 300)
        victim = balanced.ports.index(int(next(iter(balanced.balancer.served(forwards)))[10:]))
        balanced.kill(victim)
        intents_sql = "SELECT count(*) FROM objects WHERE type = 'payment_intent'"
        at_kill = count_rows(db, intents_sql)
        assert at_kill < total, "the backlog was in before the kill; make it larger"

        for url in urls:
            status = drained(url, timeout=300)
            assert status["offline"]["quarantined"] == 0
        intents = _all(merchant.v1.payment_intents)
        verdict = Verdict(ledger, intents)
        marks["drained"] = time.monotonic()
        charges = _all(merchant.v1.charges)

        pending_sql = "SELECT count(*) FROM webhook_deliveries WHERE state <> 'delivered'"
        wait_until("every webhook delivered", lambda: count_rows(db, pending_sql) == 0, 120)
        marks["delivered"] = time.monotonic()
        deliveries, failed = _deliveries(db)
        time.sleep(1.0)  # an unrecorded send by a live process would have arrived by now
        seen = receiver.counts()
    finally:
        for proc in readers:
            proc.stop()
        receiver.close()

    print({k: round(v - started, 1) for k, v in marks.items()})
    served = balanced.balancer.served("/device/v1/offline_payments")
    figures = (
        f"{total} payments, {at_kill} in when cloud {victim} was killed; "
        f"batches per process {dict(served)}"
        f"; {verdict}; {len(charges)} charges; {len(deliveries)} deliveries, "
        f"{sum(seen.values())} received, {sum(failed.values())} failed attempts"
    )
    print(figures)
    assert len(served) >= 2, figures  # the readers' batches went to several processes
    assert verdict.ok and verdict.intents == total, figures
    assert {pi.status for pi in intents} == {"succeeded"}, figures
    assert len(charges) == total
    assert Counter(c.payment_intent for c in charges).most_common(1)[0][1] == 1

    kinds = Counter(kind for _, _, _, kind in deliveries)
    assert kinds["payment_intent.created"] == kinds["payment_intent.succeeded"] == total, kinds
    extra = 0
    for delivery_id, event_id, attempts, _ in deliveries:
        assert attempts == 1 + failed[delivery_id], (event_id, attempts, failed[delivery_id])
        assert seen.get(event_id, 0) >= 1, f"event {event_id} never arrived"
        assert seen[event_id] - attempts in (0, 1), (event_id, seen[event_id], attempts)
        extra += seen[event_id] - attempts
    assert extra <= DISPATCH_BATCH, extra
    assert set(seen) == {event_id for _, event_id, _, _ in deliveries}


def _all(resource: Any) -> list[Any]:
    return list(resource.list(params={"limit": 100}).auto_paging_iter())


def _deliveries(db: str) -> tuple[list[tuple[str, str, int, str]], Counter[str]]:
    """Every delivery (id, event id, attempts, event type), and failed attempts per delivery."""
    with psycopg.connect(db) as conn:
        rows = conn.execute(
            "SELECT d.id, d.event_id, d.attempts, o.body::json->>'type' FROM webhook_deliveries d "
            "JOIN objects o ON o.id = d.event_id"
        ).fetchall()
        failed = Counter(
            str(r[0])
            for r in conn.execute(
                "SELECT delivery_id FROM webhook_attempts WHERE error IS NOT NULL"
            ).fetchall()
        )
    return [(str(a), str(b), int(c), str(d)) for a, b, c, d in rows], failed

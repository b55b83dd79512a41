"""Two cloud processes on one PostgreSQL database, raced against each other.

Each cloud here is a full server (its own app, engine and connection pool, its own webhook
dispatcher) on loopback; the two share only the database, as processes behind a balancer do.
Requests start together (a barrier) so their transactions overlap:

- the same batch of forwarded records sent to both: one charge per record, and both answers
  say the same (one of them as a replay), never a 500;
- the same `Idempotency-Key` sent to both: one PaymentIntent, the second answer a replay;
- one webhook outbox drained by both dispatchers: every delivery sent exactly once (the
  receiver always answers 200, so nothing is retried, and no process dies here).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import sqlalchemy as sa
from test_device_api import APPROVED, Device, Till, forward, merchant, outcomes, register

from stowpay.cloud.settings import Settings
from stowpay.cloud.storage import tables as t
from stowpay.cloud.testing import LiveCloud, live_cloud
from stowpay.reader.cloud_link import forward_document
from stowpay.wire.clock import ManualClock

ROUNDS = 6
BATCH = 10


@pytest.fixture
def pair(make_db_url: Callable[[str], str]) -> Iterator[tuple[LiveCloud, LiveCloud]]:
    """Two clouds on one fresh PostgreSQL database; the first has an account."""
    url = make_db_url("postgres")
    settings = {"db": url, "webhook_poll_interval": 0.02, "webhook_first_retry": 0.2}
    first = live_cloud(Settings(**settings))
    second = live_cloud(Settings(**settings))
    first.new_account()
    yield first, second
    second.stop()
    first.stop()


def together(*calls: Callable[[], Any]) -> list[Any]:
    """Run the calls on threads released at the same moment; their results, in order."""
    start = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        start.wait()
        results[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    return results


def test_a_batch_forwarded_to_two_processes_at_once_is_charged_once(
    pair: tuple[LiveCloud, LiveCloud], tmp_path: Path
) -> None:
    first, second = pair
    device = register(first)
    till = Till(first, device, tmp_path / "vault", ManualClock(time.time()))
    try:
        for r in range(ROUNDS):
            records = [till.take(APPROVED, 100 * (10 + i), order=f"R{r}-{i}") for i in range(BATCH)]
            documents = [forward_document(rec) for rec in records]
            a, b = together(
                lambda docs=documents: forward(first, device, docs),
                lambda docs=documents: forward(second, device, docs),
            )
            got_a, got_b = outcomes(a), outcomes(b)  # both 200: a lost race is no failure
            for x, y in zip(got_a, got_b, strict=True):
                assert x["sequence"] == y["sequence"]
                assert x["status"] == y["status"] == "approved"
                assert x["payment_intent"]["id"] == y["payment_intent"]["id"]
                # One process charged it; the other answered the recorded outcome.
                assert sorted([x["replayed"], y["replayed"]]) == [False, True]
    finally:
        till.vault.close()
    charged = _all(device, "charges")
    assert len(charged) == ROUNDS * BATCH
    assert len(_all(device, "payment_intents")) == ROUNDS * BATCH
    orders = Counter(c["metadata"]["order_id"] for c in charged)
    assert set(orders.values()) == {1}


def _all(device: Device, kind: str) -> list[dict[str, Any]]:
    resource = getattr(device.stripe.v1, kind)
    return [o.to_dict() for o in resource.list(params={"limit": 100}).auto_paging_iter()]


def test_one_idempotency_key_sent_to_two_processes_makes_one_payment(
    pair: tuple[LiveCloud, LiveCloud],
) -> None:
    first, second = pair
    secret = first.accounts[0].secret_key

    def create(cloud: LiveCloud, key: str) -> httpx.Response:
        return httpx.post(
            f"{cloud.url}/v1/payment_intents",
            data={"amount": "1500", "currency": "usd", "payment_method": "pm_card_visa"},
            headers={"Authorization": f"Bearer {secret}", "Idempotency-Key": key},
        )

    for n in range(ROUNDS * 2):
        key = f"same-{n}"
        a, b = together(lambda k=key: create(first, k), lambda k=key: create(second, k))
        assert a.status_code == b.status_code == 200, (a.text, b.text)
        assert a.json()["id"] == b.json()["id"]
        replayed = sorted(r.headers.get("Idempotent-Replayed", "false") for r in (a, b))
        assert replayed == ["false", "true"]
    listed = merchant(first).v1.payment_intents.list(params={"limit": 100}).data
    assert len(listed) == ROUNDS * 2


class Counting:
    """A webhook receiver on loopback that counts each event id it is sent."""

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    receiver.seen[json.loads(body)["id"]] += 1
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 256  # two dispatchers send up to 40 at once

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_two_dispatchers_drain_one_outbox_sending_each_delivery_once(
    pair: tuple[LiveCloud, LiveCloud], tmp_path: Path
) -> None:
    first, second = pair
    receiver = Counting()
    try:
        device = register(first)
        device.stripe.v1.webhook_endpoints.create(
            params={"url": receiver.url, "enabled_events": ["*"]}
        )
        till = Till(first, device, tmp_path / "vault", ManualClock(time.time()))
        try:
            for r in range(ROUNDS):
                records = [
                    till.take(APPROVED, 100 * (20 + i), order=f"W{r}-{i}") for i in range(BATCH)
                ]
                # Alternate: each process wakes its own dispatcher for what it wrote.
                target = first if r % 2 == 0 else second
                outcomes(forward(target, device, [forward_document(rec) for rec in records]))
        finally:
            till.vault.close()
        engine = first.store.engine
        d = t.webhook_deliveries.c

        def settled() -> bool:
            with engine.connect() as conn:
                left = conn.execute(
                    sa.select(sa.func.count()).where(d.state != "delivered")
                ).scalar_one()
            return left == 0

        deadline = time.monotonic() + 60
        while not settled():
            assert time.monotonic() < deadline, "deliveries still pending"
            time.sleep(0.05)
        with engine.connect() as conn:
            rows = conn.execute(sa.select(d.id, d.event_id, d.attempts)).all()
            a = t.webhook_attempts.c
            failed = Counter(
                r.delivery_id
                for r in conn.execute(sa.select(a.delivery_id).where(a.error.is_not(None)))
            )
        time.sleep(0.3)  # a second, unrecorded send would have arrived by now
        with receiver.lock:
            seen = dict(receiver.seen)
    finally:
        receiver.close()
    assert len(rows) >= ROUNDS * BATCH * 2  # created and succeeded, at the least
    assert set(seen) == {r.event_id for r in rows}  # every event arrived
    for r in rows:
        # One send per attempt, each attempt after a failed one: a delivery that never failed
        # was sent exactly once, by one of the two processes.
        assert r.attempts == 1 + failed[r.id]
        assert 1 <= seen[r.event_id] <= r.attempts
    assert sum(failed.values()) <= len(rows) // 10, failed  # the receiver kept up


def test_processes_starting_together_on_a_new_database_migrate_it_once(
    make_db_url: Callable[[str], str],
) -> None:
    import psycopg

    from stowpay.cloud.storage import Store

    url = make_db_url("postgres")
    with psycopg.connect(url, autocommit=True) as conn:  # a new, empty database
        conn.execute("DROP TABLE IF EXISTS schema_migrations")
        for (name,) in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall():
            conn.execute(f'DROP TABLE "{name}"')
    stores = [Store(url) for _ in range(3)]
    try:
        applied = together(*(s.migrate for s in stores))
    finally:
        for s in stores:
            s.close()
    done = sorted(v for versions in applied for v in versions)
    assert applied.count([]) == 2 and done == sorted(set(done)) and len(done) >= 5

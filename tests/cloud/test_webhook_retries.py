"""The dispatcher's retry schedule, driven by a manual clock and an in-process transport."""

from __future__ import annotations

import asyncio
import itertools
import random
import time

import httpx2 as httpx
import stripe

from stowpay.cloud.api import Context
from stowpay.cloud.domain.accounts import create_account
from stowpay.cloud.domain.events import emit
from stowpay.cloud.settings import Settings
from stowpay.cloud.storage import Store
from stowpay.cloud.webhooks import Dispatcher, retry_delay
from stowpay.wire.clock import ManualClock
from stowpay.wire.ids import RandomIds

DAY = 86400.0


def setup(db_url: str, clock: ManualClock) -> tuple[Store, Settings, str]:
    settings = Settings(db=db_url, clock=clock)
    store = Store(settings.db)
    store.migrate()
    ids = RandomIds()
    with store.write() as tx:
        acct = create_account(tx, clock, ids)
        ctx = Context(
            account=acct.account,
            tx=tx,
            clock=clock,
            ids=ids,
            request_id="req_test",
            idempotency_key=None,
        )
        tx.insert(
            acct.account["id"],
            {
                "id": "we_test",
                "object": "webhook_endpoint",
                "created": int(clock.now()),
                "enabled_events": ["*"],
                "status": "enabled",
                "url": "http://127.0.0.1:9/hook",
                "metadata": {},
                "_secret": "whsec_test",
            },
        )
        event = emit(ctx, "payment_intent.created", {"id": "pi_1", "object": "payment_intent"})
    return store, settings, event["id"]


def test_retries_back_off_for_three_days_then_give_up(db_url: str) -> None:
    clock = ManualClock(start=time.time())
    store, settings, event_id = setup(db_url, clock)
    start = clock.now()
    calls: list[float] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        calls.append(clock.now())
        return httpx.Response(503)

    account_id = tx_account(store)

    async def drive() -> str:
        d = Dispatcher(store, settings, transport=httpx.MockTransport(refuse), rng=random.Random(7))
        try:
            while True:
                await d.deliver_due()
                with store.read() as tx:
                    (delivery,) = tx.deliveries(account_id, event_id)
                if delivery["state"] != "pending":
                    return str(delivery["state"])
                clock.set(delivery["next_attempt_at"])
        finally:
            await d.close()

    assert asyncio.run(drive()) == "failed"
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert calls[-1] - start >= 3 * DAY
    assert 10 <= len(calls) <= 60
    assert max(gaps) <= settings.webhook_max_delay * 1.5
    assert gaps[3] > gaps[0]  # backing off, not hammering


def tx_account(store: Store) -> str:
    import sqlalchemy as sa

    with store.engine.connect() as conn:
        return str(conn.execute(sa.text("select id from accounts")).scalar_one())


def test_each_attempt_is_signed_for_construct_event(db_url: str) -> None:
    clock = ManualClock(start=time.time())
    store, settings, event_id = setup(db_url, clock)
    seen: list[httpx.Request] = []

    def accept(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    async def drive() -> None:
        d = Dispatcher(store, settings, transport=httpx.MockTransport(accept))
        try:
            assert await d.deliver_due() == 1
            assert await d.deliver_due() == 0  # delivered once, not again
        finally:
            await d.close()

    asyncio.run(drive())
    (request,) = seen
    event = stripe.Webhook.construct_event(
        request.content, request.headers["Stripe-Signature"], "whsec_test"
    )
    assert event.id == event_id


def test_retry_delay_doubles_with_jitter_and_is_capped() -> None:
    settings = Settings(webhook_first_retry=60, webhook_max_delay=3600)
    rng = random.Random(1)
    for attempts, base in [(1, 60), (2, 120), (3, 240), (10, 3600), (30, 3600)]:
        d = retry_delay(attempts, settings, rng)
        assert base * 0.5 <= d <= base * 1.5

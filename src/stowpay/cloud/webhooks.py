"""Webhook delivery: a dispatcher drains the durable outbox, signing every attempt.

Deliveries are written in the same transaction as their event, so an event that happened is
an event that will be sent. The dispatcher leases due deliveries, POSTs them, and records each
attempt; failures retry with exponential backoff and jitter until three days have passed.
At-least-once: a receiver may see an event twice and should dedupe on `event.id`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from typing import Any

import httpx2 as httpx
import structlog

from .. import logs
from ..wire import signing
from .domain.events import public
from .settings import Settings
from .storage import Store

log = structlog.get_logger("stowpay.webhooks")

USER_AGENT = "Stripe/1.0 (+https://stripe.com/docs/webhooks)"
BATCH = 20

#: One ended attempt: the delivery, HTTP status, error, duration (ms), next state, next time.
_Attempt = tuple[dict[str, Any], int | None, str | None, float, str, float | None]


def retry_delay(attempts: int, settings: Settings, rng: random.Random) -> float:
    """Delay before the next try after `attempts` failed ones: doubling, capped, jittered."""
    base: float = min(
        settings.webhook_first_retry * 2 ** max(attempts - 1, 0), settings.webhook_max_delay
    )
    return base * rng.uniform(0.5, 1.5)  # jitter spreads retries after an outage


class Dispatcher:
    """Sends due webhook deliveries; one per cloud process."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
    ) -> None:
        logs.configure()
        self.store = store
        self.settings = settings
        self.rng = rng or random.Random()
        self._wake = asyncio.Event()
        self._client = httpx.AsyncClient(
            transport=transport, timeout=settings.webhook_timeout, follow_redirects=False
        )

    def wake(self) -> None:
        """Look for due deliveries now rather than at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        """Deliver until cancelled."""
        while True:
            try:
                sent = await self.deliver_due()
            except Exception:  # the loop must outlive any one bad delivery or store hiccup
                log.exception("webhook dispatch failed")
                sent = 0
            if sent:
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.webhook_poll_interval)

    async def deliver_due(self) -> int:
        """Send one batch of due deliveries; return how many were attempted.

        The batch's attempts are recorded together, in one write transaction once every one
        of them has ended, rather than one transaction (and one fsync) each. Until then the
        deliveries stay leased; a crash in between sends them again (at-least-once).
        """
        now = self.settings.clock.now()
        lease = self.settings.webhook_timeout * 3
        with self.store.write() as tx:
            batch = tx.claim_deliveries(now, lease, BATCH)
        if batch:
            attempts = await asyncio.gather(*(self._send(d) for d in batch))
            self._finish(attempts)
        return len(batch)

    async def _send(self, delivery: dict[str, Any]) -> _Attempt:
        event, endpoint = delivery["event"], delivery["endpoint"]
        if event is None or endpoint is None or endpoint.get("status") != "enabled":
            return (delivery, None, "endpoint removed or disabled", 0.0, "failed", None)
        payload = json.dumps(public(event), indent=2).encode()
        clock_now = self.settings.clock.now()
        secrets = [endpoint["_secret"], *endpoint.get("_previous_secrets", [])]
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": USER_AGENT,
            "Stripe-Signature": signing.header(secrets, int(clock_now), payload),
        }
        started = time.perf_counter()
        status: int | None = None
        error: str | None = None
        try:
            response = await self._client.post(endpoint["url"], content=payload, headers=headers)
            status = response.status_code
            if not 200 <= status < 300:
                error = f"HTTP {status}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {str(exc)[:200]}"
        duration = (time.perf_counter() - started) * 1000
        if error is None:
            return (delivery, status, None, duration, "delivered", None)
        age = clock_now - delivery["created"]
        if age >= self.settings.webhook_give_up_after:
            return (delivery, status, error, duration, "failed", None)
        delay = retry_delay(delivery["attempts"] + 1, self.settings, self.rng)
        return (delivery, status, error, duration, "pending", clock_now + delay)

    def _finish(self, attempts: list[_Attempt]) -> None:
        at = self.settings.clock.now()
        with self.store.write() as tx:
            for delivery, status, error, duration, state, next_at in attempts:
                tx.finish_attempt(
                    delivery["id"],
                    at=at,
                    status=status,
                    error=error,
                    duration_ms=duration,
                    state=state,
                    next_attempt_at=next_at,
                )
        for delivery, status, _, _, state, _ in attempts:
            log.info(
                "webhook attempt",
                delivery=delivery["id"],
                event_id=delivery["event_id"],
                status=status,
                state=state,
            )

    async def close(self) -> None:
        await self._client.aclose()

"""The cloud's settings, and the services built from them once per process."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..wire.clock import Clock, SystemClock
from ..wire.ids import IdFactory, RandomIds

#: The API version the cloud speaks and echoes in `Stripe-Version`.
API_VERSION = "2026-10-28.endive"


@dataclass
class Settings:
    """Everything a cloud process is configured with."""

    db: str = "stowpay.db"
    clock: Clock = field(default_factory=SystemClock)
    ids: IdFactory = field(default_factory=RandomIds)
    #: how long idempotency keys are kept (Stripe: at least 24 hours)
    idempotency_ttl: int = 24 * 3600
    #: the largest `/v1` request body: a PaymentIntent with Stripe's largest metadata (50
    #: keys of 40 characters, values of 500) fits, form-encoded, when its text is ASCII
    max_body_bytes: int = 64 << 10
    #: webhook delivery: first retry delay, cap, and how long before giving up (3 days)
    webhook_first_retry: float = 60.0
    webhook_max_delay: float = 6 * 3600.0
    webhook_give_up_after: float = 3 * 24 * 3600.0
    webhook_timeout: float = 10.0
    #: how often the dispatcher looks for due deliveries when nothing wakes it
    webhook_poll_interval: float = 1.0
    #: connection tokens are short-lived
    connection_token_ttl: int = 15 * 60
    #: where receipts are emailed through (smtp://host:port, smtps://user:pass@host:port);
    #: None keeps them in the outbox, pending, until a server is configured
    smtp_url: str | None = None
    smtp_from: str = "Stowpay receipts <receipts@stowpay.invalid>"
    smtp_timeout: float = 10.0
    #: email receipts: first retry delay, cap, and how long before giving up (3 days)
    receipt_first_retry: float = 30.0
    receipt_max_delay: float = 3600.0
    receipt_give_up_after: float = 3 * 24 * 3600.0
    receipt_poll_interval: float = 1.0
    #: the address this cloud is reached at, for `receipt_url` (the port it serves on if None)
    public_url: str | None = None
    #: how often a SQLite store's WAL is checkpointed off the request path, when written to
    checkpoint_interval: float = 0.25
    #: run background work (webhook dispatcher, pruning, checkpoints); tests may turn it off
    background: bool = True

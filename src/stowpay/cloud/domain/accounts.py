"""Accounts and their API keys."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from ...wire.clock import Clock
from ...wire.ids import IdFactory, random_token
from ..storage import Tx


@dataclass(frozen=True)
class NewAccount:
    """A freshly made account. The secret key is shown once and stored only as a hash."""

    account: dict[str, Any]
    secret_key: str
    publishable_key: str


def key_hash(secret_key: str) -> str:
    """How a secret key is stored: its SHA-256, never the key itself."""
    return hashlib.sha256(secret_key.encode()).hexdigest()


def create_account(
    tx: Tx, clock: Clock, ids: IdFactory, *, name: str = "Test account", country: str = "US"
) -> NewAccount:
    """Make an account with a fresh pair of test keys."""
    account_id = ids.new("acct")
    account = {
        "id": account_id,
        "object": "account",
        "business_profile": {"name": name},
        "country": country,
        "created": int(clock.now()),
        "default_currency": "usd",
        "livemode": False,
        # Salt for card fingerprints: the same card has a different fingerprint per account.
        "_fingerprint_salt": random_token(16),
    }
    secret = "sk_test_" + random_token(36)
    publishable = "pk_test_" + random_token(36)
    tx.insert_account(account, key_hash(secret), publishable)
    return NewAccount(account, secret, publishable)

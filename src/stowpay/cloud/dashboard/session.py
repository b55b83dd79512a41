"""Dashboard sessions: signed, expiring tokens naming one account; never the key itself.

A merchant signs in with the account's secret key (checked against its stored hash, as the
API does) or with a *dashboard token* (`dsh_...`, made by `stowpay cloud dashboard-token`),
and gets a session cookie: the account id, a short prefix of the key's hash (so a session
ends when the account's key changes), an expiry and a nonce, signed with HMAC-SHA256 by a
key the cloud keeps among its secrets. The cookie is HttpOnly and SameSite=Strict; every
form that changes something also carries a CSRF token derived from the session.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass

from ..domain.accounts import key_hash
from ..storage import Tx
from ..storage.reports import secret_key_hash as _account_hash
from ..storage.terminal import secret_once

COOKIE = "stowpay_dashboard"
TOKEN_PREFIX = "dsh_"
#: How long a sign-in lasts, and a dashboard token by default.
SESSION_TTL = 12 * 3600.0
TOKEN_TTL = 30 * 86400.0
_SECRET = "dashboard_session_key"
_HASH_PREFIX = 16


@dataclass(frozen=True)
class Session:
    """A signed-in dashboard: whose account, until when, and its CSRF token."""

    account_id: str
    expires_at: float
    token: str
    csrf: str


def signing_key(tx: Tx, now: float) -> bytes:
    """The key sessions are signed with (made on first use: a write transaction)."""
    return secret_once(tx, _SECRET, lambda: secrets.token_bytes(32), int(now))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(key: bytes, payload: str) -> str:
    return _b64(hmac.new(key, payload.encode(), hashlib.sha256).digest())


def issue(tx: Tx, key: bytes, account_id: str, *, now: float, ttl: float = SESSION_TTL) -> str:
    """A token for the account, signed with `key` (`signing_key`)."""
    digest = _account_hash(tx, account_id)
    if digest is None:
        raise ValueError(f"no such account: {account_id}")
    payload = _b64(
        json.dumps(
            {
                "a": account_id,
                "h": digest[:_HASH_PREFIX],
                "e": round(now + ttl),
                "n": secrets.token_hex(8),
            },
            separators=(",", ":"),
        ).encode()
    )
    return f"{payload}.{_sign(key, payload)}"


def check(tx: Tx, key: bytes, token: str | None, *, now: float) -> Session | None:
    """The session a token stands for, or None (bad signature, expired, key changed)."""
    if not token or len(token) > 1024:
        return None
    if token.startswith(TOKEN_PREFIX):
        token = token[len(TOKEN_PREFIX) :]
    payload, _, signature = token.partition(".")
    if not signature or not hmac.compare_digest(_sign(key, payload), signature):
        return None
    try:
        data = json.loads(_unb64(payload))
        account_id, prefix, expires = str(data["a"]), str(data["h"]), float(data["e"])
    except (ValueError, KeyError, TypeError):
        return None
    if expires <= now:
        return None
    digest = _account_hash(tx, account_id)
    if digest is None or not hmac.compare_digest(digest[:_HASH_PREFIX], prefix):
        return None
    csrf = _sign(key, "csrf:" + token)
    return Session(account_id, expires, token, csrf)


def sign_in(tx: Tx, key: bytes, secret: str, *, now: float) -> str | None:
    """A session token for a secret key or a dashboard token; None when it is neither."""
    secret = secret.strip()
    if secret.startswith(TOKEN_PREFIX):
        session = check(tx, key, secret, now=now)
        return None if session is None else issue(tx, key, session.account_id, now=now)
    if not secret.startswith("sk_"):
        return None
    account = tx.account_by_key_hash(key_hash(secret))
    return None if account is None else issue(tx, key, str(account["id"]), now=now)


def dashboard_token(tx: Tx, account_id: str, *, now: float, ttl: float = TOKEN_TTL) -> str:
    """A token to sign in to the account's dashboard with, instead of the secret key (a
    write transaction: the signing key is made on first use)."""
    return TOKEN_PREFIX + issue(tx, signing_key(tx, now), account_id, now=now, ttl=ttl)

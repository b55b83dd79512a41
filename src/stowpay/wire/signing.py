"""`Stripe-Signature` headers: `t=<unix>,v1=<hex HMAC-SHA256(secret, "t.payload")>`.

Both halves live here so the cloud that signs and any receiver that verifies agree. Several
`v1` entries may appear while a secret is being rolled; any one that matches is enough.
"""

from __future__ import annotations

import hashlib
import hmac
import re

DEFAULT_TOLERANCE = 300
#: A timestamp: ASCII digits only (`str.isdigit` also takes "²", which `int` refuses).
_TIMESTAMP = re.compile(r"[0-9]{1,12}")


class SignatureError(ValueError):
    """The header is malformed, no signature matches, or the timestamp is too far off."""


def compute(secret: str, timestamp: int, payload: bytes) -> str:
    """The hex `v1` signature of `payload` at `timestamp`."""
    message = str(timestamp).encode() + b"." + payload
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def header(secrets: list[str], timestamp: int, payload: bytes) -> str:
    """A `Stripe-Signature` value signed with each of `secrets` (the newest first)."""
    parts = [f"t={timestamp}"] + [f"v1={compute(s, timestamp, payload)}" for s in secrets]
    return ",".join(parts)


def parse(value: str) -> tuple[int, list[str]]:
    """Split a header into its timestamp and its `v1` signatures."""
    timestamp: int | None = None
    signatures: list[str] = []
    for item in value.split(","):
        key, sep, val = item.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            if _TIMESTAMP.fullmatch(val) is None:
                raise SignatureError("Bad timestamp in Stripe-Signature header")
            timestamp = int(val)
        elif key == "v1":
            signatures.append(val)
    if timestamp is None:
        raise SignatureError("No timestamp in Stripe-Signature header")
    if not signatures:
        raise SignatureError("No v1 signature in Stripe-Signature header")
    return timestamp, signatures


def verify(
    secret: str,
    payload: bytes,
    value: str,
    *,
    now: float,
    tolerance: int = DEFAULT_TOLERANCE,
) -> int:
    """Check a header against `secret`; return its timestamp or raise `SignatureError`."""
    timestamp, signatures = parse(value)
    expected = compute(secret, timestamp, payload).encode()
    # Compared as bytes: `compare_digest` raises TypeError for text that is not ASCII.
    if not any(
        hmac.compare_digest(expected, s.encode("utf-8", "surrogatepass")) for s in signatures
    ):
        raise SignatureError("No signature matches the expected signature for the payload")
    if tolerance > 0 and abs(now - timestamp) > tolerance:
        raise SignatureError("Timestamp outside the tolerance zone")
    return timestamp

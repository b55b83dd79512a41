"""The cloud's sealing key: readers seal stored card data to its public half.

An X25519 key pair is made the first time anything asks for it and kept in `cloud_secrets`
(never in the objects table, so no list, retrieve or expansion can reach it). Only the public
half leaves the cloud, as `public_sealing_key` describes it; readers get it when they
register and seal each offline record to it (`stowpay.wire.sealed`).

Seam for the reader issue: `open_sealed` (ingestion of forwarded records) will load the
private half with `private_sealing_key` and open envelopes whose `key_id_of` is this key's
`kid`. Rotation would add keys under new names and keep old ones to open older records; the
kid in every envelope already says which key it needs.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from ..wire.clock import Clock
from ..wire.sealed import ALGORITHM
from .storage import Tx
from .storage.terminal import secret_once

#: The `cloud_secrets` row that holds the private half (32 raw bytes).
SECRET_NAME = "sealing_key.x25519"


def _new_private() -> bytes:
    return X25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )


def private_sealing_key(tx: Tx, clock: Clock) -> X25519PrivateKey:
    """The private half, made on first use. Never serve it: it opens every reader's vault."""
    raw = secret_once(tx, SECRET_NAME, _new_private, int(clock.now()))
    return X25519PrivateKey.from_private_bytes(raw)


def key_id(public_raw: bytes) -> str:
    """A key's id: derived from its public half, so it needs no storage of its own."""
    return "csk_" + hashlib.sha256(public_raw).hexdigest()[:24]


def public_sealing_key(tx: Tx, clock: Clock) -> dict[str, str]:
    """What a reader needs to seal to the cloud: `{kid, public_key (base64), alg}`."""
    public_raw = (
        private_sealing_key(tx, clock)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    return {
        "kid": key_id(public_raw),
        "public_key": base64.b64encode(public_raw).decode("ascii"),
        "alg": ALGORITHM,
    }

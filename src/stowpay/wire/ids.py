"""Object ids with Stripe's prefixes (`pi_`, `ch_`, `tmr_`, ...)."""

from __future__ import annotations

import os
import string
from typing import Protocol

_ALPHABET = string.ascii_letters + string.digits


class IdFactory(Protocol):
    """Makes new ids; injected so simulations can make them deterministic."""

    def new(self, prefix: str) -> str: ...


class RandomIds:
    """Unguessable ids: a prefix and 24 base62 characters (at least 142 random bits)."""

    def new(self, prefix: str) -> str:
        return prefix + "_" + _random_base62(24)


class CountingIds:
    """Predictable ids (`pi_0001`, ...) for deterministic runs."""

    def __init__(self) -> None:
        self._n = 0

    def new(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}_{self._n:024d}"


#: Random bytes to base-62 characters: byte b < 248 (4 x 62) stands for character b % 62, and
#: the 8 bytes above are dropped, so every character is equally likely.
_TO_BASE62 = bytes(ord(_ALPHABET[b % 62]) if b < 248 else 0 for b in range(256))
_REJECTED = bytes(range(248, 256))


def _random_base62(length: int) -> str:
    """`length` uniformly random base-62 characters, from the OS's CSPRNG.

    One `os.urandom` call and one `bytes.translate` (both in C) per id, instead of a call into
    `secrets` per character: ids and secrets are made a dozen times per payment.
    """
    out = os.urandom(length + 8).translate(_TO_BASE62, _REJECTED)
    while len(out) < length:  # fewer than `length` of `length + 8` bytes kept: rare
        out += os.urandom(8).translate(_TO_BASE62, _REJECTED)
    return out[:length].decode("ascii")


def random_token(nbytes: int = 24) -> str:
    """A URL-safe secret, for keys and client secrets."""
    return _random_base62(int(nbytes * 4 / 3))

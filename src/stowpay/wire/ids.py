"""Object ids with Stripe's prefixes (`pi_`, `ch_`, `tmr_`, ...)."""

from __future__ import annotations

import secrets
import string
from typing import Protocol

_ALPHABET = string.ascii_letters + string.digits


class IdFactory(Protocol):
    """Makes new ids; injected so simulations can make them deterministic."""

    def new(self, prefix: str) -> str: ...


class RandomIds:
    """Unguessable ids: a prefix and 24 base62 characters (at least 142 random bits)."""

    def new(self, prefix: str) -> str:
        # One draw of 143 random bits, written in base 62: far cheaper than 24 choice() calls,
        # and ids are made a dozen times per payment.
        return prefix + "_" + _base62(secrets.randbits(143), 24)


class CountingIds:
    """Predictable ids (`pi_0001`, ...) for deterministic runs."""

    def __init__(self) -> None:
        self._n = 0

    def new(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}_{self._n:024d}"


def _base62(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        n, r = divmod(n, 62)
        out.append(_ALPHABET[r])
    return "".join(out)


def random_token(nbytes: int = 24) -> str:
    """A URL-safe secret, for keys and client secrets."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(int(nbytes * 4 / 3)))

"""Object ids with Stripe's prefixes (`pi_`, `ch_`, `tmr_`, ...)."""

from __future__ import annotations

import os
import string
import time
from collections.abc import Callable
from typing import Protocol

_ALPHABET = string.ascii_letters + string.digits
#: The same 62 characters in the order they sort as text (digits, upper, lower case).
_SORTED = string.digits + string.ascii_uppercase + string.ascii_lowercase
#: Characters of an id that tell the second it was made; 62**6 seconds last until 3770.
TIME_CHARS = 6


class IdFactory(Protocol):
    """Makes new ids; injected so simulations can make them deterministic."""

    def new(self, prefix: str) -> str: ...


class RandomIds:
    """Unguessable ids in Stripe's shape: a prefix and 24 base62 characters.

    The first 6 characters are the second the id was made, written so that later seconds
    sort later as text; the other 18 are random (107 bits). The database indexes every id:
    ids made close together sort close together, so a batch of new objects lands on a few
    index pages at the end instead of one random page each, and what a commit writes does
    not grow with the store. Wholly random ids made each batch rewrite a share of every
    index, a share that grew with the store.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._second = -1
        self._prefix = ""

    def new(self, prefix: str) -> str:
        second = int(self._clock())
        if second != self._second:  # threads racing here at worst compute the prefix twice
            self._prefix, self._second = _sortable_base62(second, TIME_CHARS), second
        return prefix + "_" + self._prefix + _random_base62(24 - TIME_CHARS)


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


def _sortable_base62(n: int, width: int) -> str:
    """`n` (modulo 62**width) in `width` base-62 digits that sort as text as the numbers do."""
    digits = []
    for _ in range(width):
        n, r = divmod(n, 62)
        digits.append(_SORTED[r])
    return "".join(reversed(digits))


def random_token(nbytes: int = 24) -> str:
    """A URL-safe secret, for keys and client secrets."""
    return _random_base62(int(nbytes * 4 / 3))

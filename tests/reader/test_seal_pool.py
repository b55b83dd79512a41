"""Ephemeral sealing keys made ahead: each seals once, for the current key only."""

from __future__ import annotations

import time

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from stowpay.reader._seal_pool import SealPool
from stowpay.wire import sealed


def _recipient() -> tuple[X25519PrivateKey, bytes]:
    private = X25519PrivateKey.generate()
    return private, private.public_key().public_bytes_raw()


def _wait_ready(pool: SealPool, at_least: int) -> None:
    deadline = time.monotonic() + 30
    while pool.ready() < at_least:
        assert time.monotonic() < deadline, "the pool was never refilled"
        time.sleep(0.01)


def test_a_prepared_key_seals_what_the_private_key_opens() -> None:
    private, public = _recipient()
    aad = sealed.associated_data("acct_1", "tmr_1", 7)
    envelope = sealed.seal(public, "key_1", b"secret", aad, ephemeral=sealed.prepare(public))
    assert sealed.open_sealed(private, envelope, aad) == b"secret"
    with pytest.raises(sealed.SealError):
        sealed.open_sealed(private, envelope, sealed.associated_data("acct_1", "tmr_1", 8))


def test_a_prepared_key_seals_once() -> None:
    _, public = _recipient()
    ephemeral = sealed.prepare(public)
    sealed.seal(public, "key_1", b"one", b"aad", ephemeral=ephemeral)
    with pytest.raises(sealed.SealError):
        sealed.seal(public, "key_1", b"two", b"aad", ephemeral=ephemeral)


def test_a_key_prepared_for_another_recipient_is_not_used() -> None:
    private, public = _recipient()
    _, other = _recipient()
    stale = sealed.prepare(other)
    envelope = sealed.seal(public, "key_1", b"secret", b"aad", ephemeral=stale)
    assert sealed.open_sealed(private, envelope, b"aad") == b"secret"
    assert not stale._used  # left alone, so never spent on the wrong key


def test_the_pool_refills_and_never_hands_out_a_key_twice() -> None:
    private, public = _recipient()
    pool = SealPool(size=8, pause=0)
    try:
        pool.use_key(public)
        assert pool.take(public) is None  # nothing made before the first use
        _wait_ready(pool, 8)
        taken = [pool.take(public) for _ in range(8)]
        assert all(e is not None for e in taken)
        assert len({e.public for e in taken if e is not None}) == 8
        envelopes = [
            sealed.seal(public, "key_1", b"n%d" % i, b"aad", ephemeral=e)
            for i, e in enumerate(taken)
        ]
        assert [sealed.open_sealed(private, env, b"aad") for env in envelopes] == [
            b"n%d" % i for i in range(8)
        ]
        _wait_ready(pool, 4)  # taking below half started a refill
    finally:
        pool.close()


def test_a_new_key_discards_the_pool() -> None:
    _, first = _recipient()
    private, second = _recipient()
    pool = SealPool(size=4, pause=0)
    try:
        pool.use_key(first)
        pool.take(first)
        _wait_ready(pool, 4)
        pool.use_key(second)
        assert pool.ready() == 0
        assert pool.take(first) is None  # keys for the old recipient are never handed out
        _wait_ready(pool, 1)
        ephemeral = pool.take(second)
        assert ephemeral is not None and ephemeral.recipient == second
        envelope = sealed.seal(second, "key_2", b"x", b"aad", ephemeral=ephemeral)
        assert sealed.open_sealed(private, envelope, b"aad") == b"x"
    finally:
        pool.close()
    assert pool.ready() == 0
    assert pool.take(second) is None

"""Sealed envelopes open only with the cloud's key and only for the record they were made for."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from stowpay.wire.sealed import SealError, associated_data, key_id_of, open_sealed, seal

CLOUD = X25519PrivateKey.generate()
PUBLIC = CLOUD.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
AAD = associated_data("acct_1", "tmr_1", 7)
CARD = b'{"number": "4242424242424242", "emv": "9f26..."}'


def test_round_trip_and_key_id() -> None:
    env = seal(PUBLIC, "sk1", CARD, AAD)
    assert key_id_of(env) == "sk1"
    assert open_sealed(CLOUD, env, AAD) == CARD
    assert b"4242424242424242" not in env


@pytest.mark.parametrize(
    "other", [("acct_2", "tmr_1", 7), ("acct_1", "tmr_2", 7), ("acct_1", "tmr_1", 8)]
)
def test_bound_to_its_record(other: tuple[str, str, int]) -> None:
    env = seal(PUBLIC, "sk1", CARD, AAD)
    with pytest.raises(SealError):
        open_sealed(CLOUD, env, associated_data(*other))


def test_another_private_key_cannot_open() -> None:
    env = seal(PUBLIC, "sk1", CARD, AAD)
    with pytest.raises(SealError):
        open_sealed(X25519PrivateKey.generate(), env, AAD)


def test_every_flipped_byte_is_detected() -> None:
    env = seal(PUBLIC, "sk1", CARD, AAD)
    for i in range(len(env)):
        for bit in (0x01, 0x80):
            bad = bytearray(env)
            bad[i] ^= bit
            with pytest.raises(SealError):
                open_sealed(CLOUD, bytes(bad), AAD)


@given(st.binary(max_size=200))
def test_garbage_never_opens_and_never_crashes(blob: bytes) -> None:
    with pytest.raises(SealError):
        open_sealed(CLOUD, blob, AAD)

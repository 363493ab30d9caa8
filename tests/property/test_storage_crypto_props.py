"""Encryption round-trips for any size; any single-byte change is detected."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import StorageError
from storage.crypto import FRAME_SIZE, decrypt_bytes, encrypt_bytes, x25519_from_seed

PRIV, PUB = x25519_from_seed(b"\x42" * 32)


@settings(max_examples=40, deadline=None)
@given(size=st.integers(0, 4 * FRAME_SIZE + 7), seed=st.integers(0, 2**32))
def test_round_trip_any_size(size: int, seed: int) -> None:
    data = random.Random(seed).randbytes(size)
    rng = random.Random(seed + 1).randbytes
    assert decrypt_bytes(encrypt_bytes(data, PUB, rng=rng), PRIV) == data


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=2000), where=st.integers(0, 10**6), bit=st.integers(0, 7))
def test_any_bit_flip_is_detected(data: bytes, where: int, bit: int) -> None:
    blob = bytearray(encrypt_bytes(data, PUB))
    blob[where % len(blob)] ^= 1 << bit
    with pytest.raises(StorageError) as info:
        decrypt_bytes(bytes(blob), PRIV)
    assert info.value.code == "decrypt_failed"

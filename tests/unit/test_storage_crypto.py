"""Payload encryption: round trips and every way a stream can be attacked."""

from __future__ import annotations

import io
import random
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from protocol.errors import StorageError
from storage.crypto import (
    FRAME_SIZE,
    HEADER_SIZE,
    MAGIC,
    decrypt_bytes,
    decrypt_stream,
    encrypt_bytes,
    encrypt_stream,
    x25519_from_seed,
)

PRIV, PUB = x25519_from_seed(bytes(range(32)))
TAG = 16


def seeded_rng(seed: int):
    rng = random.Random(seed)
    return rng.randbytes


def frames(blob: bytes) -> list[tuple[int, bytes]]:
    """Split a ciphertext into (frame header word, frame body)."""
    out, pos = [], HEADER_SIZE
    while pos < len(blob):
        (word,) = struct.unpack(">I", blob[pos : pos + 4])
        length = word & 0x7FFFFFFF
        out.append((word, blob[pos + 4 : pos + 4 + length]))
        pos += 4 + length
    return out


def join(header: bytes, parts: list[tuple[int, bytes]]) -> bytes:
    return header + b"".join(struct.pack(">I", w) + body for w, body in parts)


def expect_failure(blob: bytes, priv: bytes = PRIV) -> StorageError:
    with pytest.raises(StorageError) as info:
        decrypt_bytes(blob, priv)
    assert info.value.code == "decrypt_failed"
    return info.value


def test_x25519_from_seed_is_deterministic_and_matches_cryptography() -> None:
    priv, pub = x25519_from_seed(b"\x07" * 32)
    assert (priv, pub) == x25519_from_seed(b"\x07" * 32)
    assert priv != b"\x07" * 32  # derived through HKDF, not the seed itself
    expected = X25519PrivateKey.from_private_bytes(priv).public_key()
    assert pub == expected.public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert x25519_from_seed(b"\x08" * 32)[1] != pub
    with pytest.raises(ValueError):
        x25519_from_seed(b"short")


@pytest.mark.parametrize("size", [0, 1, FRAME_SIZE - 1, FRAME_SIZE, FRAME_SIZE + 1, 3 * FRAME_SIZE])
def test_round_trip_at_frame_boundaries(size: int) -> None:
    data = random.Random(size).randbytes(size)
    blob = encrypt_bytes(data, PUB, rng=seeded_rng(1))
    assert blob.startswith(MAGIC)
    assert len(blob) == HEADER_SIZE + len(frames(blob)) * (4 + TAG) + size
    assert len(frames(blob)) == max(1, -(-size // FRAME_SIZE))
    assert decrypt_bytes(blob, PRIV) == data


def test_streams_round_trip_and_ciphertext_hides_plaintext() -> None:
    data = b"secret payload " * 10_000
    src, enc, out = io.BytesIO(data), io.BytesIO(), io.BytesIO()
    encrypt_stream(src, enc, PUB, rng=seeded_rng(2))
    assert b"secret payload" not in enc.getvalue()
    enc.seek(0)
    decrypt_stream(enc, out, PRIV)
    assert out.getvalue() == data


def test_fresh_randomness_gives_a_different_ciphertext() -> None:
    assert encrypt_bytes(b"x", PUB) != encrypt_bytes(b"x", PUB)


def test_wrong_key_is_rejected() -> None:
    blob = encrypt_bytes(b"hello", PUB)
    other_priv, _ = x25519_from_seed(b"\x01" * 32)
    assert "wrong key" in expect_failure(blob, other_priv).message


@pytest.mark.parametrize("where", ["header", "frame-length", "ciphertext", "tag"])
def test_any_flipped_bit_is_rejected(where: str) -> None:
    blob = bytearray(encrypt_bytes(b"a" * 1000, PUB, rng=seeded_rng(3)))
    index = {
        "header": 10,
        "frame-length": HEADER_SIZE + 3,
        "ciphertext": HEADER_SIZE + 50,
        "tag": len(blob) - 1,
    }[where]
    blob[index] ^= 0x01
    expect_failure(bytes(blob))


def test_reordered_frames_are_rejected() -> None:
    blob = encrypt_bytes(bytes(3 * FRAME_SIZE), PUB, rng=seeded_rng(4))
    parts = frames(blob)
    expect_failure(join(blob[:HEADER_SIZE], [parts[1], parts[0], parts[2]]))


def test_truncation_at_a_frame_boundary_is_rejected() -> None:
    blob = encrypt_bytes(bytes(3 * FRAME_SIZE), PUB, rng=seeded_rng(5))
    parts = frames(blob)
    assert "truncated" in expect_failure(join(blob[:HEADER_SIZE], parts[:2])).message


def test_promoting_an_inner_frame_to_final_is_rejected() -> None:
    blob = encrypt_bytes(bytes(3 * FRAME_SIZE), PUB, rng=seeded_rng(6))
    parts = frames(blob)
    word, body = parts[1]
    expect_failure(join(blob[:HEADER_SIZE], [parts[0], (word | 0x80000000, body)]))


def test_data_after_the_final_frame_is_rejected() -> None:
    blob = encrypt_bytes(b"abc", PUB, rng=seeded_rng(7))
    assert "after the final frame" in expect_failure(blob + b"\x00").message


@pytest.mark.parametrize("cut", [0, 3, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 2, -1])
def test_truncation_anywhere_is_rejected(cut: int) -> None:
    blob = encrypt_bytes(b"abc", PUB, rng=seeded_rng(8))
    expect_failure(blob[:cut])


def test_unknown_version_is_named() -> None:
    blob = bytearray(encrypt_bytes(b"abc", PUB))
    blob[len(MAGIC)] = 99
    assert "version 99" in expect_failure(bytes(blob)).message


def test_oversized_frame_length_is_rejected_before_allocating() -> None:
    blob = encrypt_bytes(b"abc", PUB, rng=seeded_rng(9))
    forged = blob[:HEADER_SIZE] + struct.pack(">I", 0x80000000 | 0x7FFFFFFF) + b"\x00" * 64
    assert "frame length" in expect_failure(forged).message


def test_a_low_order_recipient_key_is_refused() -> None:
    with pytest.raises(StorageError) as info:
        encrypt_bytes(b"abc", bytes(32))
    assert info.value.code == "encrypt_failed"

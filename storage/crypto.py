"""Payload encryption to one recipient: X25519 + HKDF-SHA256 + ChaCha20-Poly1305.

A job's payload is encrypted to the assigned provider's X25519 key before it
becomes blocks, so neither the mesh nor any store sees plaintext. The format
is streamed (flat memory for any size) and every frame is authenticated, with
the frame's position and a "final" flag bound in, so tampering, reordering,
truncation, extension and a wrong key all fail the same way: StorageError
``decrypt_failed``.

Byte layout (version 1; integers big-endian)::

    header  = magic "MSKE" (4) | version 0x01 (1) | ephemeral X25519 pub (32)
              | nonce prefix (8)                                    = 45 bytes
    frame   = word (4) | ciphertext+tag (len)
    word    = final flag (bit 31) | len (bits 0..30), 16 <= len <= 65,536 + 16

    key     = HKDF-SHA256(ikm = X25519(eph_priv, recipient_pub),
                          salt = eph_pub | recipient_pub, info = "maskd payload v1")
    nonce_i = nonce prefix (8) | i (4)                 i = 0, 1, … frame index
    aad_i   = header (45) | word_i (4)

Each frame holds 64 KiB of plaintext except the last, which has the final
flag and may be shorter (or empty: there is always at least one frame). The
counter in the nonce makes frames non-reorderable; the flag in the AAD makes a
cut at a frame boundary detectable; bytes after the final frame are refused.
A fresh ephemeral key per payload makes the key unique, so the counter nonces
never repeat under one key.

A decryptor writes each frame's plaintext only after that frame verified, but
a payload is only whole once ``decrypt_stream`` returns: on error, discard what
was written.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Callable
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from protocol.errors import StorageError

MAGIC = b"MSKE"
VERSION = 1
HEADER_SIZE = len(MAGIC) + 1 + 32 + 8
FRAME_SIZE = 64 * 1024
TAG_SIZE = 16
FINAL_FLAG = 0x8000_0000
PAYLOAD_INFO = b"maskd payload v1"
X25519_SEED_INFO = b"maskd x25519 v1"

Rng = Callable[[int], bytes]


def x25519_from_seed(seed32: bytes) -> tuple[bytes, bytes]:
    """``(private, public)`` raw X25519 keys derived from a 32-byte seed.

    The node feeds its Ed25519 peer-key seed in; HKDF with a fixed label keeps
    the two keys independent while needing no second secret on disk.
    """
    if len(seed32) != 32:
        raise ValueError("seed must be 32 bytes")
    raw = HKDF(SHA256(), 32, salt=None, info=X25519_SEED_INFO).derive(seed32)
    priv = X25519PrivateKey.from_private_bytes(raw)
    return priv.private_bytes_raw(), priv.public_key().public_bytes_raw()


def _payload_key(shared: bytes, eph_pub: bytes, recipient_pub: bytes) -> ChaCha20Poly1305:
    key = HKDF(SHA256(), 32, salt=eph_pub + recipient_pub, info=PAYLOAD_INFO).derive(shared)
    return ChaCha20Poly1305(key)


def _read_full(src: BinaryIO, n: int) -> bytes:
    data = src.read(n) or b""
    while len(data) < n:
        more = src.read(n - len(data))
        if not more:
            break
        data += more
    return data


def encrypt_stream(src: BinaryIO, dst: BinaryIO, recipient_pub: bytes, rng: Rng = os.urandom):
    """Encrypt all of ``src`` to ``recipient_pub`` (32 raw bytes) into ``dst``."""
    try:
        recipient = X25519PublicKey.from_public_bytes(recipient_pub)
        eph = X25519PrivateKey.from_private_bytes(rng(32))
        shared = eph.exchange(recipient)
    except ValueError as e:
        raise StorageError(
            f"cannot encrypt to this key: {e}",
            code="encrypt_failed",
            hint="the recipient's X25519 public key must be 32 bytes of a valid point",
        ) from None
    eph_pub = eph.public_key().public_bytes_raw()
    prefix = rng(8)
    header = MAGIC + bytes((VERSION,)) + eph_pub + prefix
    aead = _payload_key(shared, eph_pub, recipient_pub)
    dst.write(header)
    chunk = _read_full(src, FRAME_SIZE)
    counter = 0
    while True:
        following = _read_full(src, FRAME_SIZE) if len(chunk) == FRAME_SIZE else b""
        final = not following
        if counter > 0xFFFF_FFFF:
            raise StorageError("payload too large for one stream", code="encrypt_failed")
        word = struct.pack(">I", (FINAL_FLAG if final else 0) | (len(chunk) + TAG_SIZE))
        nonce = prefix + counter.to_bytes(4, "big")
        dst.write(word)
        dst.write(aead.encrypt(nonce, chunk, header + word))
        if final:
            return
        chunk = following
        counter += 1


def _failed(message: str) -> StorageError:
    return StorageError(
        f"cannot decrypt payload: {message}",
        code="decrypt_failed",
        hint="check that it was encrypted to this node's key and arrived whole; "
        "discard any partial output",
    )


def decrypt_stream(src: BinaryIO, dst: BinaryIO, recipient_priv: bytes) -> None:
    """Decrypt and verify ``src`` into ``dst`` with the 32-byte X25519 private key."""
    header = _read_full(src, HEADER_SIZE)
    if len(header) < len(MAGIC) or header[: len(MAGIC)] != MAGIC:
        raise _failed("not a maskd encrypted payload (bad magic)")
    if header[len(MAGIC)] != VERSION:
        raise _failed(f"unsupported format version {header[len(MAGIC)]}")
    if len(header) < HEADER_SIZE:
        raise _failed("truncated header")
    eph_pub, prefix = header[5:37], header[37:45]
    try:
        priv = X25519PrivateKey.from_private_bytes(recipient_priv)
        shared = priv.exchange(X25519PublicKey.from_public_bytes(eph_pub))
    except ValueError as e:
        raise _failed(f"bad key material ({e})") from None
    aead = _payload_key(shared, eph_pub, priv.public_key().public_bytes_raw())
    counter = 0
    while True:
        word = _read_full(src, 4)
        if len(word) < 4:
            raise _failed(f"truncated: the stream ended before the final frame ({counter} read)")
        (value,) = struct.unpack(">I", word)
        length = value & ~FINAL_FLAG
        if not TAG_SIZE <= length <= FRAME_SIZE + TAG_SIZE:
            raise _failed(f"invalid frame length {length} in frame {counter}")
        body = _read_full(src, length)
        if len(body) < length:
            raise _failed(f"truncated frame {counter}")
        try:
            plain = aead.decrypt(prefix + counter.to_bytes(4, "big"), body, header + word)
        except InvalidTag:
            raise _failed(
                f"frame {counter} failed authentication: wrong key, or the payload was "
                "tampered with, reordered or cut"
            ) from None
        dst.write(plain)
        if value & FINAL_FLAG:
            if src.read(1):
                raise _failed("unexpected data after the final frame")
            return
        counter += 1
        if counter > 0xFFFF_FFFF:
            raise _failed("too many frames")


def encrypt_bytes(data: bytes, recipient_pub: bytes, rng: Rng = os.urandom) -> bytes:
    out = io.BytesIO()
    encrypt_stream(io.BytesIO(data), out, recipient_pub, rng=rng)
    return out.getvalue()


def decrypt_bytes(blob: bytes, recipient_priv: bytes) -> bytes:
    out = io.BytesIO()
    decrypt_stream(io.BytesIO(blob), out, recipient_priv)
    return out.getvalue()

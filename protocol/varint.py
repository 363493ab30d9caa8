"""Unsigned LEB128 varints, as multiformats (CIDs, CAR, multihash) and protobuf
write them. One implementation for the wire frames and the storage formats."""

from __future__ import annotations

_MAX_VARINT_BYTES = 9  # multiformats unsigned varints are at most 63 bits


def encode_varint(n: int) -> bytes:
    """Unsigned LEB128, as used by multiformats and protobuf."""
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def decode_varint(buf: bytes | memoryview, pos: int = 0) -> tuple[int, int]:
    """Return ``(value, next_pos)``; raise ValueError on truncation or overlong input."""
    result = 0
    shift = 0
    for i in range(_MAX_VARINT_BYTES + 1):
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            if b == 0 and i > 0:
                raise ValueError("non-minimal varint")
            return result, pos
        shift += 7
    raise ValueError("varint too long")

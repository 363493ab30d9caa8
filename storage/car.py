"""CAR v1: a DAG's blocks in one stream, as ``ipfs dag export`` writes it.

    varint(len(header)) header            header = dag-cbor {"roots": [CID…], "version": 1}
    { varint(len(cid)+len(data)) cid data }*

The header is the only CBOR we ever need, so it is encoded by hand (canonical
dag-cbor: map keys sorted by length then bytes, so "roots" before "version";
a CID is tag 42 over bytes 0x00 + binary CID) and decoded by a small strict
reader. Every length read from the stream is bounded before we allocate.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import BinaryIO

from protocol.errors import StorageError
from storage.cid import cid_to_bytes, cid_to_str, decode_varint, encode_varint

MAX_HEADER_SIZE = 1 << 20
MAX_SECTION_SIZE = (2 << 20) + 256  # the store's block limit plus a CID


def _invalid(message: str) -> StorageError:
    return StorageError(
        f"invalid CAR: {message}", code="car_invalid", hint="the file is not a CAR v1 archive"
    )


def _cbor_head(major: int, n: int) -> bytes:
    if n < 24:
        return bytes((major << 5 | n,))
    for info, width in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * width):
            return bytes((major << 5 | info,)) + n.to_bytes(width, "big")
    raise ValueError("too large for CBOR")


def encode_header(roots: list[str]) -> bytes:
    out = bytearray(b"\xa2" + _cbor_head(3, 5) + b"roots" + _cbor_head(4, len(roots)))
    for root in roots:
        payload = b"\x00" + cid_to_bytes(root)
        out += b"\xd8\x2a" + _cbor_head(2, len(payload)) + payload
    out += _cbor_head(3, 7) + b"version" + b"\x01"
    return bytes(out)


def _cbor_item(buf: bytes, pos: int, depth: int = 0) -> tuple[object, int]:
    """Decode one dag-cbor item (the subset a CAR header may hold)."""
    if depth > 8 or pos >= len(buf):
        raise ValueError("truncated or too deeply nested")
    major, info = buf[pos] >> 5, buf[pos] & 31
    pos += 1
    if info < 24:
        arg = info
    elif 24 <= info <= 27:
        width = 1 << (info - 24)
        if pos + width > len(buf):
            raise ValueError("truncated")
        arg = int.from_bytes(buf[pos : pos + width], "big")
        pos += width
    else:
        raise ValueError("indefinite lengths are not dag-cbor")
    if major == 0:
        return arg, pos
    if major in (2, 3):
        if pos + arg > len(buf):
            raise ValueError("truncated string")
        raw = buf[pos : pos + arg]
        return (raw if major == 2 else raw.decode("utf-8")), pos + arg
    if major == 4:
        items = []
        for _ in range(arg):
            item, pos = _cbor_item(buf, pos, depth + 1)
            items.append(item)
        return items, pos
    if major == 5:
        result: dict[object, object] = {}
        for _ in range(arg):
            key, pos = _cbor_item(buf, pos, depth + 1)
            value, pos = _cbor_item(buf, pos, depth + 1)
            if not isinstance(key, str) or key in result:
                raise ValueError("map keys must be distinct strings")
            result[key] = value
        return result, pos
    if major == 6 and arg == 42:
        raw, pos = _cbor_item(buf, pos, depth + 1)
        if not isinstance(raw, bytes) or raw[:1] != b"\x00":
            raise ValueError("tag 42 must wrap bytes starting with 0x00")
        return ("cid", raw[1:]), pos
    raise ValueError(f"unsupported CBOR major type {major}")


def decode_header(buf: bytes) -> list[str]:
    try:
        header, end = _cbor_item(buf, 0)
    except (ValueError, UnicodeDecodeError) as e:
        raise _invalid(f"header is not dag-cbor ({e})") from None
    if end != len(buf) or not isinstance(header, dict):
        raise _invalid("header is not one map")
    if header.get("version") != 1:
        raise _invalid(f"version {header.get('version')!r}, only 1 is supported")
    roots = header.get("roots")
    if not isinstance(roots, list) or not all(
        isinstance(r, tuple) and r[0] == "cid" for r in roots
    ):
        raise _invalid("roots must be a list of CIDs")
    return [cid_to_str(r[1]) for r in roots]  # type: ignore[index]


def write_car(roots: list[str], blocks: Iterable[tuple[str, bytes]], out: BinaryIO) -> int:
    """Write a CAR v1 stream; return the number of blocks written."""
    header = encode_header(roots)
    out.write(encode_varint(len(header)) + header)
    count = 0
    for cid, data in blocks:
        cid_b = cid_to_bytes(cid)
        out.write(encode_varint(len(cid_b) + len(data)) + cid_b)
        out.write(data)
        count += 1
    return count


def _read_exact(src: BinaryIO, n: int, what: str) -> bytes:
    data = src.read(n)
    while data is not None and len(data) < n:
        more = src.read(n - len(data))
        if not more:
            break
        data += more
    if data is None or len(data) != n:
        raise _invalid(f"truncated {what}")
    return data


def _read_varint(src: BinaryIO, what: str) -> int | None:
    """A varint from the stream; None at a clean end of stream."""
    raw = bytearray()
    while True:
        b = src.read(1)
        if not b:
            if raw:
                raise _invalid(f"truncated {what} length")
            return None
        raw += b
        if not b[0] & 0x80:
            break
        if len(raw) > 9:
            raise _invalid(f"{what} length varint too long")
    try:
        return decode_varint(bytes(raw))[0]
    except ValueError as e:
        raise _invalid(f"{what} length: {e}") from None


def _cid_length(section: bytes) -> int:
    if section[:2] == b"\x12\x20":
        return 34  # CIDv0: a bare sha2-256 multihash
    pos = 0
    for _ in range(3):  # version, codec, hash code
        _, pos = decode_varint(section, pos)
    length, pos = decode_varint(section, pos)
    return pos + length


def read_car(src: BinaryIO) -> tuple[list[str], Iterator[tuple[str, bytes]]]:
    """Parse the header now; the returned iterator yields ``(cid, data)`` lazily.

    Blocks are NOT verified here: the consumer (``BlockStore.put``) re-hashes.
    """
    length = _read_varint(src, "header")
    if length is None:
        raise _invalid("empty stream")
    if not 0 < length <= MAX_HEADER_SIZE:
        raise _invalid(f"header length {length}")
    roots = decode_header(_read_exact(src, length, "header"))

    def sections() -> Iterator[tuple[str, bytes]]:
        while True:
            size = _read_varint(src, "section")
            if size is None:
                return
            if not 0 < size <= MAX_SECTION_SIZE:
                raise _invalid(f"section length {size}")
            section = _read_exact(src, size, "section")
            try:
                cid_len = _cid_length(section)
                if cid_len > size:
                    raise ValueError("CID runs past the section")
                cid = cid_to_str(section[:cid_len])
            except (ValueError, StorageError) as e:
                raise _invalid(f"bad CID in section: {e}") from None
            yield cid, section[cid_len:]

    return roots, sections()

"""dag-pb (codec 0x70): the protobuf node format of UnixFS, hand-encoded.

    message PBLink { optional bytes Hash = 1; optional string Name = 2; optional uint64 Tsize = 3; }
    message PBNode { repeated PBLink Links = 2; optional bytes Data = 1; }

It is a few varints, so we write it ourselves rather than pull in a protobuf
runtime, and we must control byte order anyway: CIDs only match Kubo if the
bytes match. Kubo (boxo/merkledag via go-codec-dagpb) serialises the Links
*before* Data, and writes Hash, Name (even when empty) and Tsize in every link.
Decoding is strict about unknown fields and wire types because the input may
come from a peer.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

from protocol.errors import StorageError
from storage.cid import decode_varint, encode_varint

_WIRE_VARINT = 0
_WIRE_LEN = 2


class PBLink(NamedTuple):
    hash: bytes  # binary CID
    name: bytes  # raw name bytes (UTF-8 for names we write); b"" for file chunks
    tsize: int  # cumulative encoded size of the child's DAG


class PBNode(NamedTuple):
    links: list[PBLink]
    data: bytes | None


def _len_field(tag: int, payload: bytes) -> bytes:
    return bytes((tag,)) + encode_varint(len(payload)) + payload


def encode_link(link: PBLink) -> bytes:
    body = _len_field(0x0A, link.hash) + _len_field(0x12, link.name) + b"\x18"
    return body + encode_varint(link.tsize)


def encode_node(links: Sequence[PBLink], data: bytes | None) -> bytes:
    """Serialise in Kubo's order: every link, then Data (omitted when None)."""
    parts = [_len_field(0x12, encode_link(link)) for link in links]
    if data is not None:
        parts.append(_len_field(0x0A, data))
    return b"".join(parts)


def iter_fields(buf: bytes | memoryview) -> Iterator[tuple[int, int, object]]:
    """Yield ``(field_number, wire_type, value)``; value is int or memoryview.

    Only the two wire types protobuf-encoded IPLD uses are accepted.
    """
    mv = memoryview(buf)
    pos = 0
    end = len(mv)
    while pos < end:
        key, pos = decode_varint(mv, pos)
        field, wire = key >> 3, key & 7
        if wire == _WIRE_VARINT:
            value, pos = decode_varint(mv, pos)
            yield field, wire, value
        elif wire == _WIRE_LEN:
            length, pos = decode_varint(mv, pos)
            if pos + length > end:
                raise ValueError("length-delimited field runs past the end")
            yield field, wire, mv[pos : pos + length]
            pos += length
        else:
            raise ValueError(f"unsupported wire type {wire}")


def _decode_link(buf: memoryview) -> PBLink:
    hash_: bytes | None = None
    name = b""
    tsize = 0
    for field, wire, value in iter_fields(buf):
        if field == 1 and wire == _WIRE_LEN and hash_ is None:
            hash_ = bytes(value)  # type: ignore[arg-type]
        elif field == 2 and wire == _WIRE_LEN:
            name = bytes(value)  # type: ignore[arg-type]
        elif field == 3 and wire == _WIRE_VARINT:
            tsize = value  # type: ignore[assignment]
        else:
            raise ValueError(f"unexpected field {field} (wire type {wire}) in PBLink")
    if hash_ is None:
        raise ValueError("PBLink without Hash")
    return PBLink(hash_, name, tsize)


def decode_node(buf: bytes | memoryview) -> PBNode:
    """Parse a dag-pb block; raise StorageError ``dag_invalid`` if it is malformed."""
    links: list[PBLink] = []
    data: bytes | None = None
    try:
        for field, wire, value in iter_fields(buf):
            if field == 2 and wire == _WIRE_LEN:
                links.append(_decode_link(value))  # type: ignore[arg-type]
            elif field == 1 and wire == _WIRE_LEN and data is None:
                data = bytes(value)  # type: ignore[arg-type]
            else:
                raise ValueError(f"unexpected field {field} (wire type {wire}) in PBNode")
    except ValueError as e:
        raise StorageError(f"malformed dag-pb block: {e}", code="dag_invalid") from None
    return PBNode(links, data)

"""MessagePack codec for the wire schemas, and bounded decoding of untrusted JSON.

Decoding is strict and happens once.

Why nesting is bounded here: msgspec (and the stdlib's json) guard recursion
with Python's recursion limit, and py_ecc (imported through eth_account)
raises that limit to 100,000 at import. An *untyped* decode of a few tens of
thousands of ``[`` then overflows the C stack and the process dies with
SIGSEGV, no exception. So every decode of untrusted bytes into an untyped
value goes through :func:`decode_json` / :func:`decode_msgpack`, which refuse
anything nested deeper than ``max_depth`` *before* decoding. Typed decoding
into our fixed-schema Structs is bounded by the schema, except for fields a
newer peer added: msgspec skips those recursively, in small C frames, up to
the recursion limit, and then raises ``RecursionError``; ``DECODE_ERRORS``
counts that as undecodable too.
"""

from __future__ import annotations

from itertools import accumulate
from typing import Any, Literal

import msgspec

from protocol.errors import WireError
from protocol.messages import GossipBody, SignedGossip

__all__ = [
    "DECODE_ERRORS",
    "MAX_NESTING",
    "NestingTooDeep",
    "check_nesting",
    "decode_json",
    "decode_msgpack",
    "encode",
    "decode_envelope",
    "decode_body",
]

#: The deepest nesting an untyped decode accepts by default. Nothing we send
#: or store is deeper than ~8; the C stack gives out somewhere past 20,000.
MAX_NESTING = 64


class NestingTooDeep(WireError, msgspec.DecodeError):
    """Input nested deeper than allowed; refused before decoding.

    A ``msgspec.DecodeError`` (so every ``except DECODE_ERRORS`` treats it as
    undecodable) and a ``WireError`` (code, message, hint).
    """

    code = "nesting_too_deep"

    def __init__(self, max_depth: int) -> None:
        super().__init__(
            f"nested deeper than {max_depth} levels",
            hint="nothing legitimate nests this deep; the sender is broken or hostile",
        )
        self.max_depth = max_depth


#: What decoding malformed MessagePack raises. msgspec reports a text field that
#: is not UTF-8 as UnicodeDecodeError, not DecodeError, and an unknown field
#: nested past the recursion limit as RecursionError: every decoder of peer
#: input catches all of them, so such bytes are "undecodable", never a crash.
DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError)

# --- nesting checks ------------------------------------------------------------

_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_BRACES_TO_BRACKETS = bytes.maketrans(b"{}", b"[]")
_BRACKET_STEP = {ord("["): 1, ord("]"): -1}


def _json_too_deep(data: bytes, max_depth: int) -> bool:
    """Could decoding ``data`` as JSON recurse deeper than ``max_depth``?

    Every step is a C-speed bytes operation (no per-byte Python loop): drop
    string contents, keep only brackets, then measure the nesting. Exact for
    valid JSON; for invalid JSON an upper bound on how deep a decoder gets
    before it fails.
    """
    # Cheapest first: nesting cannot exceed the number of openers.
    if data.count(b"[") + data.count(b"{") <= max_depth:
        return False
    # Inside a string only \\ and \" matter to where it ends; a UTF-8
    # multi-byte sequence never contains either byte. Removing the escapes
    # left to right (as a parser reads them) leaves every remaining quote a
    # real delimiter, so the odd-numbered pieces of a split are the strings.
    # An unterminated string is the last, odd-numbered, piece: dropped too.
    text = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside = b"".join(text.split(b'"')[::2])
    brackets = outside.translate(_BRACES_TO_BRACKETS, _NOT_BRACKETS)
    if brackets.count(b"[") <= max_depth:
        return False
    # The deepest point is the highest running total of +1 per opener and -1
    # per closer (an upper bound where a decoder would stop at a mismatch).
    # map/accumulate/max all iterate in C.
    return max(accumulate(map(_BRACKET_STEP.__getitem__, brackets))) > max_depth


# MessagePack type bytes. _MP_SKIP[b]: bytes that follow a scalar's type byte
# (fixint, fixstr, nil, bools, numbers, fixext); -1 for everything else.
_MP_SKIP = [-1] * 256
for _b in range(0x00, 0x80):
    _MP_SKIP[_b] = 0  # positive fixint
for _b in range(0xE0, 0x100):
    _MP_SKIP[_b] = 0  # negative fixint
for _b in range(0xA0, 0xC0):
    _MP_SKIP[_b] = _b & 0x1F  # fixstr
for _b, _n in {
    0xC0: 0, 0xC2: 0, 0xC3: 0,  # nil, false, true
    0xCA: 4, 0xCB: 8,  # float 32/64
    0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8,  # uint 8..64
    0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8,  # int 8..64
    0xD4: 2, 0xD5: 3, 0xD6: 5, 0xD7: 9, 0xD8: 17,  # fixext 1..16 (type byte + data)
}.items():  # fmt: skip
    _MP_SKIP[_b] = _n
# str/bin/ext: (length-field bytes, bytes before the payload besides it)
_MP_SIZED = {
    0xC4: (1, 0), 0xC5: (2, 0), 0xC6: (4, 0),  # bin 8/16/32
    0xC7: (1, 1), 0xC8: (2, 1), 0xC9: (4, 1),  # ext 8/16/32 (+ type byte)
    0xD9: (1, 0), 0xDA: (2, 0), 0xDB: (4, 0),  # str 8/16/32
}  # fmt: skip
# array/map 16/32: (count-field bytes, items per entry)
_MP_CONTAINER = {0xDC: (2, 1), 0xDD: (4, 1), 0xDE: (2, 2), 0xDF: (4, 2)}
# Every byte that is not a container's type byte: deleting them counts candidates.
_MP_NOT_CONTAINERS = bytes(b for b in range(256) if not (0x80 <= b <= 0x9F or b in _MP_CONTAINER))


def _msgpack_too_deep(data: bytes, max_depth: int) -> bool:
    """Walk the item headers (not the payloads) and track open containers.

    Cheapest first: nesting cannot exceed the number of bytes that could be a
    container's type byte (payload bytes included), counted at C speed; a
    typical message stops there. Otherwise one Python step per item.
    Malformed or truncated input stops the walk: the decoder reports it.
    """
    if len(data.translate(None, _MP_NOT_CONTAINERS)) <= max_depth:
        return False
    end = len(data)
    pos = 0
    open_items = [1]  # items left to read in each open container; the root first
    while open_items:
        if not open_items[-1]:
            open_items.pop()
            continue
        if pos >= end:
            return False
        open_items[-1] -= 1
        b = data[pos]
        pos += 1
        skip = _MP_SKIP[b]
        if skip >= 0:
            pos += skip
            continue
        if b <= 0x9F:  # fixmap, fixarray
            count = (b & 0x0F) * (2 if b <= 0x8F else 1)
        elif b in _MP_SIZED:
            width, extra = _MP_SIZED[b]
            pos += width + extra + int.from_bytes(data[pos : pos + width], "big")
            continue
        elif b in _MP_CONTAINER:
            width, per_entry = _MP_CONTAINER[b]
            count = int.from_bytes(data[pos : pos + width], "big") * per_entry
            pos += width
        else:  # 0xC1 is never used
            return False
        if len(open_items) > max_depth:  # the root's slot is not a level
            return True
        open_items.append(count)
    return False


def check_nesting(
    data: bytes, max_depth: int = MAX_NESTING, *, fmt: Literal["json", "msgpack"] = "json"
) -> None:
    """Raise :class:`NestingTooDeep` if ``data`` nests deeper than ``max_depth``.

    ``[]`` and ``{}`` are one level, ``[[]]`` two. Cheap: JSON is checked with
    a few bytes operations, MessagePack with one Python step per item header.
    """
    too_deep = _json_too_deep if fmt == "json" else _msgpack_too_deep
    if too_deep(bytes(data), max_depth):
        raise NestingTooDeep(max_depth)


def decode_json(data: bytes, *, max_depth: int = MAX_NESTING, type: Any = Any) -> Any:
    """``msgspec.json.decode`` that refuses input nested deeper than ``max_depth``.

    Raises one of ``DECODE_ERRORS`` (``NestingTooDeep`` for depth).
    """
    check_nesting(data, max_depth, fmt="json")
    return msgspec.json.decode(data, type=type)


def decode_msgpack(data: bytes, *, max_depth: int = MAX_NESTING, type: Any = Any) -> Any:
    """``msgspec.msgpack.decode`` that refuses input nested deeper than ``max_depth``."""
    check_nesting(data, max_depth, fmt="msgpack")
    return msgspec.msgpack.decode(data, type=type)


# --- the gossip wire --------------------------------------------------------------

_body_encoder = msgspec.msgpack.Encoder()
_body_decoder = msgspec.msgpack.Decoder(GossipBody)
_envelope_decoder = msgspec.msgpack.Decoder(SignedGossip)


def encode(obj: msgspec.Struct) -> bytes:
    return _body_encoder.encode(obj)


def decode_envelope(data: bytes) -> SignedGossip:
    """Raises one of ``DECODE_ERRORS`` on anything malformed."""
    return _envelope_decoder.decode(data)


def decode_body(data: bytes) -> GossipBody:
    return _body_decoder.decode(data)

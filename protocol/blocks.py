"""Wire schemas and framing of the block exchange, ``/mask/blocks/1``.

One libp2p stream carries any number of requests, pipelined: the client may
send several ``WantBlocks`` before the first answer arrives. The server
answers requests in the order received; every answer carries the ``req_id``
of its request. A ``WantBlocks`` is answered by one or more ``Blocks`` frames
and at most one ``DontHave``, which together account for every CID asked for
exactly once (that is how the client knows an answer is complete). The
replication request (``PinRequest``) is answered by one ``PinResponse``.

Frames: ``varint(len(body)) body``, where body is the MessagePack encoding of
one tagged message below. A frame longer than ``MAX_FRAME_BYTES`` is a
protocol violation: the reader stops and the stream is reset.

Compatibility (major version 1): fields are only added, at the end, with
defaults; unknown tags are refused.
"""

from __future__ import annotations

import msgspec

from protocol.codec import DECODE_ERRORS
from protocol.messages import BLOCKS_PROTOCOL
from protocol.varint import encode_varint

__all__ = [
    "BLOCKS_PROTOCOL",
    "MAX_FRAME_BYTES",
    "MAX_WANT_CIDS",
    "MAX_VARINT_BYTES",
    "WantBlocks",
    "Blocks",
    "DontHave",
    "PinRequest",
    "PinResponse",
    "BlockMessage",
    "encode_frame",
    "decode_message",
    "FrameError",
    "FrameDecoder",
]

# A frame holds at most a few blocks; one block may be 2 MiB (bitswap's limit),
# so a frame must fit one of those plus its CID and the envelope.
MAX_FRAME_BYTES = 4 << 20
# A want names at most this many blocks (256 KiB each: 32 MiB of answer).
MAX_WANT_CIDS = 128
MAX_VARINT_BYTES = 5  # enough for MAX_FRAME_BYTES


class WantBlocks(msgspec.Struct, frozen=True, kw_only=True, tag="want"):
    req_id: int
    cids: list[str]


class Blocks(msgspec.Struct, frozen=True, kw_only=True, tag="blocks"):
    req_id: int
    blocks: list[tuple[str, bytes]]


class DontHave(msgspec.Struct, frozen=True, kw_only=True, tag="dont_have"):
    req_id: int
    cids: list[str]


class PinRequest(msgspec.Struct, frozen=True, kw_only=True, tag="pin_request"):
    """Ask a storage provider to fetch ``cid`` from us (or ``sources``) and pin it."""

    req_id: int
    cid: str
    size: int  # the DAG's cumulative size, bytes (the provider checks its room)
    duration_s: float
    sources: list[str] = []  # peer ids that hold the DAG; empty: the requester


class PinResponse(msgspec.Struct, frozen=True, kw_only=True, tag="pin_response"):
    req_id: int
    accepted: bool
    reason: str = ""  # a code when refused: no_storage, too_large, fetch_failed, …
    price_gb_hour: str = "0"  # token base units, decimal string
    expires_at: float = 0.0


BlockMessage = WantBlocks | Blocks | DontHave | PinRequest | PinResponse

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(BlockMessage)


class FrameError(Exception):
    """The peer broke the framing or sent an undecodable message."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def encode_frame(message: BlockMessage) -> bytes:
    body = _encoder.encode(message)
    if len(body) > MAX_FRAME_BYTES:
        raise ValueError(f"frame of {len(body)} bytes is over {MAX_FRAME_BYTES}")
    return encode_varint(len(body)) + body


def decode_message(body: bytes | memoryview) -> BlockMessage:
    try:
        return _decoder.decode(body)
    except DECODE_ERRORS as exc:
        raise FrameError("undecodable", str(exc)[:200]) from None


class FrameDecoder:
    """Sans-IO: bytes in, complete frame bodies out; bounded by ``max_frame``."""

    def __init__(self, max_frame: int = MAX_FRAME_BYTES) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        frames: list[bytes] = []
        buf = self._buf
        pos = 0
        while True:
            length = shift = 0
            i = pos
            while True:
                if i >= len(buf):
                    del buf[:pos]
                    return frames
                if i - pos >= MAX_VARINT_BYTES:
                    raise FrameError("bad_frame", "length prefix too long")
                b = buf[i]
                i += 1
                length |= (b & 0x7F) << shift
                shift += 7
                if not b & 0x80:
                    break
            if length > self.max_frame:
                raise FrameError("too_large", f"frame of {length} bytes")
            if len(buf) - i < length:
                del buf[:pos]
                return frames
            frames.append(bytes(buf[i : i + length]))
            pos = i + length

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def missing(self) -> int:
        """Bytes still to come for the frame begun in the buffer (0: none, or its
        length prefix is not complete yet)."""
        buf = self._buf
        length = shift = 0
        for i in range(min(len(buf), MAX_VARINT_BYTES)):
            b = buf[i]
            length |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return max(0, i + 1 + length - len(buf))
        return 0

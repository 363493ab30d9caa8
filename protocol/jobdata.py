"""Wire schemas for ``/mask/job/1``: a job's private payload between its two parties.

One request per stream. The party that needs a payload (the provider for the
job's ``bundle``, the requester for its ``result``) opens the stream and sends
a ``PayloadRequest`` with its own IdentityRecord; the other party answers with
either a ``PayloadRefused`` (a typed reason) or a ``PayloadHeader`` followed by
``PayloadData`` frames carrying ``size`` bytes of ciphertext: a CAR v1 of the
payload DAG, encrypted with ``storage.crypto`` to the record's X25519 key.
Then the server closes the stream.

Framing: ``u32 big-endian length | MessagePack body`` with a ``type`` tag; a
frame is at most ``MAX_FRAME`` bytes, a data frame carries at most
``DATA_PIECE`` bytes. Compatibility rule as in protocol/messages.py: fields
are only ever added, at the end, with defaults.
"""

from __future__ import annotations

import struct

import msgspec
import trio

from protocol.codec import DECODE_ERRORS
from protocol.errors import WireError
from protocol.messages import JOB_PROTOCOL, IdentityRecord

MAX_FRAME = 256 << 10
DATA_PIECE = 64 << 10
KINDS = frozenset({"bundle", "result"})
READ_SIZE = 1 << 16

# refusal reasons
UNKNOWN_JOB = "unknown_job"
NOT_PARTY = "not_party"  # the asker is not the other party of this job's agreement
NOT_READY = "not_ready"  # no such payload here (yet)
BUSY = "busy"  # too many payload streams from this peer
BAD_REQUEST = "bad_request"  # unknown kind, an identity record that does not verify


class PayloadRequest(msgspec.Struct, frozen=True, kw_only=True, tag="payload_request"):
    job_id: str
    kind: str  # "bundle" | "result"
    identity: IdentityRecord  # the asker's: its X25519 key is what the payload is encrypted to


class PayloadHeader(msgspec.Struct, frozen=True, kw_only=True, tag="payload_header"):
    job_id: str
    kind: str
    root: str  # the payload DAG's root CID (spec_cid or output_cid)
    size: int  # ciphertext bytes that follow in PayloadData frames


class PayloadRefused(msgspec.Struct, frozen=True, kw_only=True, tag="payload_refused"):
    job_id: str
    kind: str
    reason: str
    detail: str = ""


class PayloadData(msgspec.Struct, frozen=True, kw_only=True, tag="payload_data"):
    data: bytes


JobDataMessage = PayloadRequest | PayloadHeader | PayloadRefused | PayloadData

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(JobDataMessage)


def _bad(message: str) -> WireError:
    """The peer broke the protocol (a frame too large or undecodable): its fault."""
    return WireError(f"/mask/job/1: {message}", code="payload_protocol")


def _broken(message: str) -> WireError:
    """The stream failed or ended early: a reset or a peer gone, not malformed input."""
    return WireError(f"/mask/job/1: {message}", code="payload_stream_broken")


def encode_frame(message: JobDataMessage) -> bytes:
    body = _encoder.encode(message)
    if len(body) > MAX_FRAME:
        raise ValueError(f"frame of {len(body)} bytes is over {MAX_FRAME}")
    return struct.pack(">I", len(body)) + body


def decode_body(body: bytes) -> JobDataMessage:
    try:
        return _decoder.decode(body)
    except DECODE_ERRORS as exc:
        raise _bad(f"undecodable frame ({exc})") from None


class FrameReader:
    """Frames from a byte stream with ``async read(n)`` (libp2p's shape)."""

    def __init__(self, stream, *, max_frame: int = MAX_FRAME) -> None:
        self.stream = stream
        self.max_frame = max_frame
        self._buf = bytearray()
        self._eof = False

    async def _fill(self, n: int) -> bool:
        while len(self._buf) < n and not self._eof:
            try:
                data = await self.stream.read(READ_SIZE)
            except trio.Cancelled:
                raise
            except EOFError:
                data = b""
            except Exception as exc:  # reset, connection gone
                raise _broken(f"read failed: {type(exc).__name__}: {exc}") from None
            if not data:
                self._eof = True
            else:
                self._buf += data
        return len(self._buf) >= n

    async def next(self) -> JobDataMessage | None:
        """The next message; None at a clean end of stream (between frames)."""
        if not await self._fill(4):
            if self._buf:
                raise _broken("stream ended inside a frame header")
            return None
        (length,) = struct.unpack(">I", self._buf[:4])
        if length > self.max_frame:
            raise _bad(f"frame of {length} bytes is over {self.max_frame}")
        if not await self._fill(4 + length):
            raise _broken("stream ended inside a frame")
        body = bytes(self._buf[4 : 4 + length])
        del self._buf[: 4 + length]
        return decode_body(body)


__all__ = [
    "BAD_REQUEST",
    "BUSY",
    "DATA_PIECE",
    "JOB_PROTOCOL",
    "KINDS",
    "MAX_FRAME",
    "NOT_PARTY",
    "NOT_READY",
    "UNKNOWN_JOB",
    "FrameReader",
    "JobDataMessage",
    "PayloadData",
    "PayloadHeader",
    "PayloadRefused",
    "PayloadRequest",
    "decode_body",
    "encode_frame",
]

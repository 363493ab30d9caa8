"""MessagePack codec for the wire schemas. Decoding is strict and happens once."""

from __future__ import annotations

import msgspec

from protocol.messages import GossipBody, SignedGossip

#: What decoding malformed MessagePack raises. msgspec reports a text field that
#: is not UTF-8 as UnicodeDecodeError, not DecodeError: every decoder of peer
#: input catches all three, so such bytes are "undecodable", never a crash.
DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError)

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

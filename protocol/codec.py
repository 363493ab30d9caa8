"""MessagePack codec for the wire schemas. Decoding is strict and happens once."""

from __future__ import annotations

import msgspec

from protocol.messages import GossipBody, SignedGossip

_body_encoder = msgspec.msgpack.Encoder()
_body_decoder = msgspec.msgpack.Decoder(GossipBody)
_envelope_decoder = msgspec.msgpack.Decoder(SignedGossip)


def encode(obj: msgspec.Struct) -> bytes:
    return _body_encoder.encode(obj)


def decode_envelope(data: bytes) -> SignedGossip:
    """Raises msgspec.DecodeError / ValidationError on anything malformed."""
    return _envelope_decoder.decode(data)


def decode_body(data: bytes) -> GossipBody:
    return _body_decoder.decode(data)

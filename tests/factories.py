"""Builders for wire messages in tests: real keys, real signatures."""

from __future__ import annotations

import msgspec
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol.codec import encode
from protocol.identity import make_identity_record, peer_id_from_ed25519, sign_gossip
from protocol.messages import OfferWithdrawal, Prices, ResourceOffer


class Peer:
    """A peer with deterministic keys (seeded) that can sign gossip."""

    def __init__(self, n: int):
        self.seed = bytes([n]) * 32
        self.key = Ed25519PrivateKey.from_private_bytes(self.seed)
        pub = self.key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.peer_id = peer_id_from_ed25519(pub)
        self.account_key = bytes([n + 100]) * 32
        self.record = make_identity_record(
            self.account_key, self.peer_id, bytes([n]) * 32, 1_700_000_000
        )

    def offer(
        self, *, seq: int = 1, now: float = 1_700_000_000.0, ttl: float = 60.0, **over
    ) -> ResourceOffer:
        fields = dict(
            offer_id=f"offer-{self.peer_id[-6:]}",
            peer_id=self.peer_id,
            seq=seq,
            identity=self.record,
            cpu=4,
            memory_mb=8192,
            disk_mb=100_000,
            executors=("wasm",),
            prices=Prices(cpu_core_hour="1000"),
            issued_at=now,
            expires_at=now + ttl,
        )
        fields.update(over)
        return ResourceOffer(**fields)

    def withdrawal(self, offer: ResourceOffer, *, seq: int, now: float) -> OfferWithdrawal:
        return OfferWithdrawal(
            offer_id=offer.offer_id,
            peer_id=self.peer_id,
            seq=seq,
            issued_at=now,
            expires_at=now + 60,
        )

    def sign(self, body: msgspec.Struct) -> bytes:
        return encode(sign_gossip(encode(body), self.key))

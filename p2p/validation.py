"""Validation of offers gossip: the offer-specific part of the shared pipeline.

``protocol/pipeline.py`` runs the steps every topic shares, cheapest first
(size -> decode -> source -> signature -> freshness and replay -> meaning) and
counts every drop; this module adds what only offers have: their body kinds,
one replay sequence per publisher, and what makes an offer meaningful. Each
message gets an :class:`~protocol.verdict.Outcome` (``protocol/verdict.py``
says what each verdict means). No clock reads: ``now`` is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.codec import decode_body
from protocol.identity import verify_identity_record
from protocol.messages import KNOWN_EXECUTORS, OfferWithdrawal, ResourceOffer
from protocol.pipeline import GossipPipeline
from protocol.verdict import Outcome, Reason


@dataclass(frozen=True, slots=True)
class ValidationLimits:
    max_message_bytes: int = 65536
    max_clock_skew_s: float = 30.0
    max_ttl_s: float = 3600.0
    seen_cache_size: int = 65536
    max_list_items: int = 64
    max_resource: int = 1 << 40


class GossipValidator(GossipPipeline[ResourceOffer | OfferWithdrawal, str]):
    """Offers and withdrawals. Replay state is the highest seq per publisher;
    the node calls ``forget(peer_id)`` when an offer lapses."""

    carries = (ResourceOffer, OfferWithdrawal)
    limits: ValidationLimits

    def __init__(self, limits: ValidationLimits = ValidationLimits()):
        super().__init__(limits)

    def validate(  # type: ignore[override]
        self, data: bytes, *, source: str, topic_kind: str, now: float
    ) -> Outcome[ResourceOffer | OfferWithdrawal]:
        """``topic_kind`` is the mesh's name for the topic; a body of a kind the
        offers topic does not carry is WRONG_TOPIC whatever it says."""
        return super().validate(data, source=source, now=now)

    # --- the pipeline's hooks ----------------------------------------------

    def decode_body(self, body: bytes) -> ResourceOffer | OfferWithdrawal:
        return decode_body(body)

    def replay_key(self, message: ResourceOffer | OfferWithdrawal) -> str:
        return message.peer_id

    def problem(self, offer: ResourceOffer | OfferWithdrawal) -> tuple[Reason, str] | None:
        if not isinstance(offer, ResourceOffer):
            return None  # a withdrawal has no checks beyond the shared ones
        lim = self.limits
        if offer.identity.peer_id != offer.peer_id:
            return Reason.BAD_IDENTITY, "identity record is for another peer"
        if not 0 <= offer.seq < 1 << 63:
            return Reason.BAD_FIELD, "seq out of range"
        for name in ("cpu", "memory_mb", "disk_mb", "storage_mb"):
            value = getattr(offer, name)
            if not 0 <= value <= lim.max_resource:
                return Reason.BAD_FIELD, f"{name} out of range"
        if len(offer.gpus) > lim.max_list_items or len(offer.addrs) > lim.max_list_items:
            return Reason.BAD_FIELD, "too many list items"
        if not offer.executors or any(e not in KNOWN_EXECUTORS for e in offer.executors):
            return Reason.BAD_FIELD, "unknown executor"
        for price in (
            offer.prices.cpu_core_hour,
            offer.prices.memory_gb_hour,
            offer.prices.gpu_hour,
            offer.prices.storage_gb_hour,
        ):
            if not (price.isascii() and price.isdigit() and len(price) <= 78):
                return Reason.BAD_FIELD, "price is not a decimal integer"
        if not verify_identity_record(offer.identity):
            return Reason.BAD_IDENTITY, "account signature does not verify"
        return None

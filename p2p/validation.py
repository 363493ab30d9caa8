"""Validation of offers gossip: the offer-specific part of the shared pipeline.

``protocol/pipeline.py`` runs the steps every topic shares, cheapest first
(size -> decode -> source -> signature -> freshness and replay -> meaning) and
counts every drop; this module adds what only offers have: their body kinds,
one replay sequence per publisher, and what makes an offer meaningful. Each
message gets an :class:`~protocol.verdict.Outcome` (``protocol/verdict.py``
says what each verdict means). No clock reads: ``now`` is passed in.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from protocol.codec import decode_body
from protocol.identity import verify_identity_record
from protocol.messages import KNOWN_EXECUTORS, OfferWithdrawal, ResourceOffer
from protocol.pipeline import GossipPipeline
from protocol.verdict import Outcome, Reason, Verdict


@dataclass(frozen=True, slots=True)
class ValidationLimits:
    max_message_bytes: int = 65536
    max_clock_skew_s: float = 30.0
    max_ttl_s: float = 3600.0
    seen_cache_size: int = 65536
    max_list_items: int = 64
    max_resource: int = 1 << 40


class GossipValidator(GossipPipeline[ResourceOffer | OfferWithdrawal, str]):
    """Offers and withdrawals. Replay state is the highest seq per publisher.

    It is kept for as long as anything accepted from that publisher is still
    valid, whether or not its offer is still in the book: a publisher that
    departs (disconnects from us) leaves signed offers in the mesh, and a
    relayed or replayed copy must be a DUPLICATE (or STALE_SEQ), not a way back
    into the book. Once everything it sent has expired the state goes, so a
    publisher whose seq started over is heard again. Bounded: at most
    ``seen_cache_size`` publishers, least recently heard forgotten first.
    """

    carries = (ResourceOffer, OfferWithdrawal)
    limits: ValidationLimits

    def __init__(self, limits: ValidationLimits = ValidationLimits()):
        super().__init__(limits)
        # publisher -> the latest expiry of anything accepted from it (LRU order)
        self._valid_until: OrderedDict[str, float] = OrderedDict()

    def validate(  # type: ignore[override]
        self, data: bytes, *, source: str, topic_kind: str, now: float
    ) -> Outcome[ResourceOffer | OfferWithdrawal]:
        """``topic_kind`` is the mesh's name for the topic; a body of a kind the
        offers topic does not carry is WRONG_TOPIC whatever it says."""
        # an accepted message's publisher is its source: the pipeline checks that
        until = self._valid_until.get(source)
        if until is not None and until <= now:
            self.forget(source)
        outcome = super().validate(data, source=source, now=now)
        if outcome.verdict is Verdict.ACCEPT and outcome.message is not None:
            expires = outcome.message.expires_at
            self._valid_until[source] = max(expires, self._valid_until.pop(source, expires))
            while len(self._valid_until) > self.limits.seen_cache_size:
                self._valid_until.popitem(last=False)
        return outcome

    def forget(self, key: str) -> None:
        super().forget(key)
        self._valid_until.pop(key, None)

    def tracked_publishers(self) -> int:
        """How many publishers' replay state is kept (at most ``seen_cache_size``)."""
        return len(self._highest_seq)

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
        stake = offer.stake
        if not (stake.isascii() and stake.isdigit() and len(stake) <= 78):
            return Reason.BAD_FIELD, "stake is not a decimal integer"
        if not verify_identity_record(offer.identity):
            return Reason.BAD_IDENTITY, "account signature does not verify"
        return None

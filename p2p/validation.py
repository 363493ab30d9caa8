"""The validation pipeline for gossip from peers: pure, cheapest check first.

size -> decode -> signature -> freshness and replay -> meaning.

Each message gets an :class:`~protocol.verdict.Outcome`: accept, ignore or
reject, and a named reason (``protocol/verdict.py`` says what each verdict
means). Every drop has a counter. No clock reads: ``now`` is passed in.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass

import msgspec

from protocol.codec import decode_body, decode_envelope
from protocol.identity import verify_gossip, verify_identity_record
from protocol.messages import KNOWN_EXECUTORS, OfferWithdrawal, ResourceOffer
from protocol.verdict import Outcome, Reason, Verdict


@dataclass(frozen=True, slots=True)
class ValidationLimits:
    max_message_bytes: int = 65536
    max_clock_skew_s: float = 30.0
    max_ttl_s: float = 3600.0
    seen_cache_size: int = 65536
    max_list_items: int = 64
    max_resource: int = 1 << 40


class GossipValidator:
    """Holds the replay state (highest seq per publisher, seen ids) and counters."""

    def __init__(self, limits: ValidationLimits = ValidationLimits()):
        self.limits = limits
        self._highest_seq: OrderedDict[str, int] = OrderedDict()
        self.drops: Counter[str] = Counter()
        self.accepted = 0

    def validate(
        self, data: bytes, *, source: str, topic_kind: str, now: float
    ) -> Outcome[ResourceOffer | OfferWithdrawal]:
        outcome = self._validate(data, source, topic_kind, now)
        if outcome.verdict is Verdict.ACCEPT:
            self.accepted += 1
        else:
            self.drops[outcome.reason.value] += 1
        return outcome

    def count_drop(self, reason: Reason) -> None:
        """For drops decided outside the pipeline (a garbage frame, a crashed check)."""
        self.drops[reason.value] += 1

    def _validate(
        self, data: bytes, source: str, topic_kind: str, now: float
    ) -> Outcome[ResourceOffer | OfferWithdrawal]:
        lim = self.limits
        # 1. size
        if len(data) > lim.max_message_bytes:
            return Outcome(Verdict.REJECT, Reason.TOO_LARGE, detail=f"{len(data)} bytes")
        # 2. decode (strict, once)
        try:
            envelope = decode_envelope(data)
            body = decode_body(envelope.body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return Outcome(Verdict.REJECT, Reason.UNDECODABLE, detail=str(exc)[:200])
        if topic_kind == "offers" and not isinstance(body, (ResourceOffer, OfferWithdrawal)):
            return Outcome(Verdict.REJECT, Reason.WRONG_TOPIC)
        # 3. signature: the body names its publisher, who must be the gossip source
        if body.peer_id != source:
            return Outcome(Verdict.REJECT, Reason.SOURCE_MISMATCH)
        if not verify_gossip(envelope, body.peer_id):
            return Outcome(Verdict.REJECT, Reason.BAD_SIGNATURE)
        # 4. freshness and replay
        issued = body.issued_at
        if body.expires_at <= now:
            return Outcome(Verdict.IGNORE, Reason.EXPIRED)
        if issued > now + lim.max_clock_skew_s:
            return Outcome(Verdict.REJECT, Reason.FROM_FUTURE)
        if (
            body.expires_at - max(issued, now - lim.max_clock_skew_s)
            > lim.max_ttl_s + lim.max_clock_skew_s
        ):
            return Outcome(Verdict.REJECT, Reason.TTL_TOO_LONG)
        last = self._highest_seq.get(body.peer_id)
        if last is not None and body.seq <= last:
            reason = Reason.DUPLICATE if body.seq == last else Reason.STALE_SEQ
            return Outcome(Verdict.IGNORE, reason)
        # 5. meaning
        if isinstance(body, ResourceOffer):
            problem = self._offer_problem(body)
            if problem is not None:
                return Outcome(Verdict.REJECT, problem[0], detail=problem[1])
        self._remember(body.peer_id, body.seq)
        return Outcome(Verdict.ACCEPT, Reason.OK, message=body)

    def _offer_problem(self, offer: ResourceOffer) -> tuple[Reason, str] | None:
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

    def _remember(self, peer_id: str, seq: int) -> None:
        self._highest_seq[peer_id] = seq
        self._highest_seq.move_to_end(peer_id)
        while len(self._highest_seq) > self.limits.seen_cache_size:
            self._highest_seq.popitem(last=False)

    def forget(self, peer_id: str) -> None:
        """Called when a publisher's offer lapses, so its next seq is judged afresh."""
        self._highest_seq.pop(peer_id, None)

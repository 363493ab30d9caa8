"""The validation pipeline every gossiped message goes through: pure, cheapest check first.

size -> decode -> kind -> source -> signature -> freshness -> replay -> meaning,
then a tally of the verdict.

:class:`GossipPipeline` runs the steps that are the same for every topic and
keeps their state: the highest seq per replay key and the counters. A subclass
is one kind of message and supplies only what differs (the hooks at the end of
the class): how to decode the body, whose seq numbers a message is compared
with, and its kind-specific checks. ``p2p.validation.GossipValidator`` (offers)
and ``protocol.market.BidValidator`` (bids) are the two.

The order of the steps decides which reason wins when several apply, and
reasons are counted and scored (``protocol/verdict.py``): keep the order.
No clock reads: ``now`` is passed in. Imports nothing of p2p/ or scheduler/.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Hashable
from typing import Generic, Protocol, TypeVar

from protocol.codec import DECODE_ERRORS, decode_envelope
from protocol.identity import verify_gossip
from protocol.verdict import Outcome, Reason, Verdict

__all__ = ["GossipLimits", "GossipPipeline", "SignedBody"]


class GossipLimits(Protocol):
    """The limits the shared steps read; each kind's limits class has more."""

    @property
    def max_message_bytes(self) -> int: ...
    @property
    def max_clock_skew_s(self) -> float: ...
    @property
    def max_ttl_s(self) -> float: ...
    @property
    def seen_cache_size(self) -> int: ...


class SignedBody(Protocol):
    """What the shared steps read from a decoded body: its publisher, replay
    number and lifetime."""

    @property
    def peer_id(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def issued_at(self) -> float: ...
    @property
    def expires_at(self) -> float: ...


M = TypeVar("M", bound=SignedBody)
K = TypeVar("K", bound=Hashable)


class GossipPipeline(Generic[M, K]):
    """The shared steps and their state; subclasses fill in the hooks.

    ``M`` is the decoded message, ``K`` its replay key.
    """

    #: The body types this topic carries; a decoded body of any other is WRONG_TOPIC.
    carries: tuple[type, ...] = (object,)

    def __init__(self, limits: GossipLimits):
        self.limits = limits
        self._highest_seq: OrderedDict[K, int] = OrderedDict()
        self.drops: Counter[str] = Counter()
        self.accepted = 0

    def validate(self, data: bytes, *, source: str, now: float) -> Outcome[M]:
        """``source`` is the gossip source: the peer that published ``data``."""
        outcome = self._check(data, source, now)
        if outcome.verdict is Verdict.ACCEPT:
            self.accepted += 1
        else:
            self.drops[outcome.reason.value] += 1
        return outcome

    def count_drop(self, reason: Reason) -> None:
        """For drops decided outside the pipeline (a garbage frame, a crashed check)."""
        self.drops[reason.value] += 1

    def forget(self, key: K) -> None:
        """Drops the replay state for ``key``, so its next seq is judged afresh."""
        self._highest_seq.pop(key, None)

    def _check(self, data: bytes, source: str, now: float) -> Outcome[M]:
        lim = self.limits
        if len(data) > lim.max_message_bytes:
            return Outcome(Verdict.REJECT, Reason.TOO_LARGE, detail=f"{len(data)} bytes")
        try:  # strict, once
            envelope = decode_envelope(data)
            message = self.decode_body(envelope.body)
        except DECODE_ERRORS as exc:
            return Outcome(Verdict.REJECT, Reason.UNDECODABLE, detail=str(exc)[:200])
        if not isinstance(message, self.carries):
            return Outcome(Verdict.REJECT, Reason.WRONG_TOPIC)
        # The body names its publisher, who must be the gossip source and the signer.
        if message.peer_id != source:
            return Outcome(Verdict.REJECT, Reason.SOURCE_MISMATCH)
        if not verify_gossip(envelope, message.peer_id):
            return Outcome(Verdict.REJECT, Reason.BAD_SIGNATURE)
        if message.expires_at <= now:
            return Outcome(Verdict.IGNORE, Reason.EXPIRED)
        lapsed = self.lapsed(message, now)
        if lapsed is not None:
            return Outcome(Verdict.IGNORE, lapsed)
        issued = message.issued_at
        if issued > now + lim.max_clock_skew_s:
            return Outcome(Verdict.REJECT, Reason.FROM_FUTURE)
        start = max(issued, now - lim.max_clock_skew_s)
        if message.expires_at - start > lim.max_ttl_s + lim.max_clock_skew_s:
            return Outcome(Verdict.REJECT, Reason.TTL_TOO_LONG)
        key = self.replay_key(message)
        last = self._highest_seq.get(key)
        if last is not None and message.seq <= last:
            reason = Reason.DUPLICATE if message.seq == last else Reason.STALE_SEQ
            return Outcome(Verdict.IGNORE, reason)
        problem = self.problem(message)
        if problem is not None:
            return Outcome(Verdict.REJECT, problem[0], detail=problem[1])
        self._highest_seq[key] = message.seq
        self._highest_seq.move_to_end(key)
        while len(self._highest_seq) > lim.seen_cache_size:
            self._highest_seq.popitem(last=False)
        return Outcome(Verdict.ACCEPT, Reason.OK, message=message)

    # --- hooks: what one kind of message supplies --------------------------

    def decode_body(self, body: bytes) -> M:
        """Strict; raises msgspec.DecodeError / ValidationError."""
        raise NotImplementedError

    def replay_key(self, message: M) -> K:
        """Whose seq numbers this message's seq must be higher than."""
        raise NotImplementedError

    def lapsed(self, message: M, now: float) -> Reason | None:
        """An IGNORE reason the message has lapsed for, other than its expiry."""
        return None

    def problem(self, message: M) -> tuple[Reason, str] | None:
        """What makes a fresh, signed message meaningless: a REJECT reason and detail."""
        return None

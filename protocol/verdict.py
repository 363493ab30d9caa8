"""The verdict vocabulary for validated gossip, one for every topic.

The gossip validation pipeline (``protocol.pipeline``; ``p2p.validation`` for
offers, ``protocol.market.BidValidator`` for bids) gives each message an
:class:`Outcome`: a :class:`Verdict`, as in libp2p gossipsub's validation
results, and a :class:`Reason` that names why.

- ACCEPT: deliver the message and forward it.
- IGNORE: drop it, no penalty. Stale or duplicate: honest peers produce these.
- REJECT: drop it and penalise the peer that forwarded it: it could not have
  come from an honest peer.

A reason's value is wire-visible: it names the drop counter that ``mask
status`` shows and the penalty the p2p shell charges for a reject, so a value
never changes. Imports nothing of p2p/ or scheduler/: they import this.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Outcome", "Reason", "Verdict"]


class Verdict(enum.Enum):
    ACCEPT = "accept"
    IGNORE = "ignore"
    REJECT = "reject"

    @property
    def delivers(self) -> bool:
        """What a py-libp2p validator answers: gossipsub delivers and forwards
        only an accepted message (py-libp2p has no separate ignore)."""
        return self is Verdict.ACCEPT

    @property
    def penalises(self) -> bool:
        """Whether the forwarding peer's misbehaviour score is charged."""
        return self is Verdict.REJECT


class Reason(enum.StrEnum):
    """One vocabulary for every topic: a reason means the same, and costs the
    same penalty, whichever kind of message it drops."""

    OK = "ok"
    TOO_LARGE = "too_large"
    UNDECODABLE = "undecodable"
    BAD_SIGNATURE = "bad_signature"
    SOURCE_MISMATCH = "source_mismatch"
    EXPIRED = "expired"
    FROM_FUTURE = "from_future"
    TTL_TOO_LONG = "ttl_too_long"
    DUPLICATE = "duplicate"
    STALE_SEQ = "stale_seq"
    BAD_IDENTITY = "bad_identity"
    BAD_FIELD = "bad_field"
    WRONG_TOPIC = "wrong_topic"  # offers: a body of another kind on the offers topic
    DEADLINE_PASSED = "deadline_passed"  # bids: the job's deadline is already past
    RATE_LIMITED = "rate_limited"  # bids: the requester is over its bid rate (not relayed)
    # Decided by the p2p shell, outside any pipeline:
    VALIDATOR_ERROR = "validator_error"
    GARBAGE_FRAME = "garbage_frame"


M = TypeVar("M")


@dataclass(frozen=True, slots=True)
class Outcome(Generic[M]):
    """``message`` is the decoded message, set only when accepted.

    Annotate with ``Outcome[JobBid]`` but construct with ``Outcome(...)``: a
    frozen, slotted dataclass cannot be called through its subscripted alias.
    """

    verdict: Verdict
    reason: Reason
    message: M | None = None
    detail: str = ""

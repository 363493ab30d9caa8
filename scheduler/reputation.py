"""Reputation from evidence: what this node has seen each provider account do.

A score is built only from evidence the node holds itself, one record per
observed fact about one job (docs/market.md, "Reputation"):

- ``on_time``: the result arrived within the agreement's time;
- ``verified``: the result was checked and found correct (a valid proof, the
  majority of replicas, a passed Freivalds test, a spot check that agreed);
- ``caught_wrong``: the result was checked and found wrong (a failed proof,
  outvoted by the other replicas, a failed Freivalds test, a spot check that
  disagreed, a reveal that does not open its commitment);
- ``overcharged``: the signed usage is more than the run can have used (over
  the agreement's caps, or over what the other replicas of a deterministic job
  used);
- ``timed_out``: placed, heard from, and then late past its deadline;
- ``vanished``: agreed to the job and then went silent (no heartbeat, no
  result) until it was replaced.

The pure part lives here: :class:`Evidence` (a requester core attaches it to
the ``RecordTransition`` that showed it, so the store writes both in one
transaction) and :class:`ReputationBook`, the in-memory tally and its
explainable score.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = [
    "Evidence",
    "EvidenceKind",
    "ReputationBook",
]


class EvidenceKind(enum.StrEnum):
    ON_TIME = "on_time"
    VERIFIED = "verified"
    CAUGHT_WRONG = "caught_wrong"
    OVERCHARGED = "overcharged"
    TIMED_OUT = "timed_out"
    VANISHED = "vanished"


@dataclass(frozen=True, slots=True)
class Evidence:
    """One observed fact about one provider account on one job."""

    provider_account: str
    provider_peer: str
    job_id: str
    kind: EvidenceKind
    at: float
    mode: str = "receipt"  # the job's verify mode when it was observed
    detail: str = ""


@dataclass(slots=True)
class _Tally:
    counts: dict[str, int] = field(default_factory=dict)
    peers: set[str] = field(default_factory=set)
    last_at: float = 0.0


class ReputationBook:
    """Evidence per provider account, and the score selection ranks by.

    The score is a plain ratio anyone can recompute from the counts:
    ``(1 + good) / (2 + good + bad)`` where each kind has a weight (``WEIGHTS``):
    a new account scores 0.5, evidence moves it towards 1 or 0.
    """

    #: (good weight, bad weight) per kind
    WEIGHTS: dict[EvidenceKind, tuple[float, float]] = {
        EvidenceKind.ON_TIME: (0.25, 0.0),
        EvidenceKind.VERIFIED: (1.0, 0.0),
        EvidenceKind.CAUGHT_WRONG: (0.0, 5.0),
        EvidenceKind.OVERCHARGED: (0.0, 3.0),
        EvidenceKind.TIMED_OUT: (0.0, 1.0),
        EvidenceKind.VANISHED: (0.0, 2.0),
    }

    def __init__(self, evidence: Iterable[Evidence] = ()):
        self._tallies: dict[str, _Tally] = {}
        for e in evidence:
            self.add(e)

    def add(self, evidence: Evidence) -> None:
        account = evidence.provider_account.lower()
        tally = self._tallies.setdefault(account, _Tally())
        tally.counts[evidence.kind.value] = tally.counts.get(evidence.kind.value, 0) + 1
        tally.peers.add(evidence.provider_peer)
        tally.last_at = max(tally.last_at, evidence.at)

    def counts(self, account: str) -> dict[str, int]:
        tally = self._tallies.get(account.lower())
        return dict(tally.counts) if tally else {}

    def score(self, account: str) -> float:
        counts = self.counts(account)
        good = sum(self.WEIGHTS[EvidenceKind(k)][0] * n for k, n in counts.items())
        bad = sum(self.WEIGHTS[EvidenceKind(k)][1] * n for k, n in counts.items())
        return (1.0 + good) / (2.0 + good + bad)

    def accounts(self) -> list[str]:
        return sorted(self._tallies)

"""Per-peer misbehaviour scores: pure, time passed in.

A reject adds a penalty; scores decay exponentially (half-life), so an honest
peer that once relayed something odd recovers, while a peer that keeps sending
garbage crosses the threshold and is banned (disconnected and refused) for a
while. The p2p shell acts on the returned ``Ban``.
"""

from __future__ import annotations

from dataclasses import dataclass

PENALTIES = {
    "too_large": 20.0,
    "undecodable": 25.0,
    "bad_signature": 50.0,
    "source_mismatch": 50.0,
    "from_future": 10.0,
    "ttl_too_long": 10.0,
    "bad_identity": 50.0,
    "bad_field": 25.0,
    "wrong_topic": 25.0,
    "garbage_frame": 100.0,
    "block_hash_mismatch": 50.0,  # /mask/blocks/1: sent data that is not the CID asked for
    "block_protocol": 25.0,  # /mask/blocks/1: broke the framing or the request/answer rules
    "payload_protocol": 25.0,  # /mask/job/1: a malformed frame, or no request first
    "validator_error": 0.0,
}


@dataclass(frozen=True, slots=True)
class Ban:
    peer_id: str
    until: float
    score: float


class PeerScores:
    def __init__(self, *, threshold: float, ban_duration_s: float, half_life_s: float):
        self.threshold = threshold
        self.ban_duration_s = ban_duration_s
        self.half_life_s = half_life_s
        self._scores: dict[str, tuple[float, float]] = {}  # peer -> (score, at)
        self._banned: dict[str, float] = {}

    def score(self, peer_id: str, now: float) -> float:
        value, at = self._scores.get(peer_id, (0.0, now))
        return value * 0.5 ** (max(0.0, now - at) / self.half_life_s)

    def penalise(self, peer_id: str, reason: str, now: float) -> Ban | None:
        penalty = PENALTIES.get(reason, 10.0)
        if penalty <= 0:
            return None
        value = self.score(peer_id, now) + penalty
        self._scores[peer_id] = (value, now)
        if value >= self.threshold and not self.is_banned(peer_id, now):
            until = now + self.ban_duration_s
            self._banned[peer_id] = until
            return Ban(peer_id, until, value)
        return None

    def is_banned(self, peer_id: str, now: float) -> bool:
        until = self._banned.get(peer_id)
        if until is None:
            return False
        if until <= now:
            del self._banned[peer_id]
            self._scores.pop(peer_id, None)
            return False
        return True

    def banned(self, now: float) -> dict[str, float]:
        return {p: u for p, u in list(self._banned.items()) if self.is_banned(p, now)}

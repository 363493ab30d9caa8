"""The offer book: every live offer in the mesh, one per provider. Pure.

Inputs are accepted (already validated) gossip and the passage of time; the
outputs are events for watchers. An offer leaves the book when it expires,
when its provider withdraws it, or when its provider departs (disconnects
from us); a later offer with a higher seq brings it back.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.messages import OfferWithdrawal, ResourceOffer


@dataclass(frozen=True, slots=True)
class OfferAdded:
    offer: ResourceOffer


@dataclass(frozen=True, slots=True)
class OfferUpdated:
    offer: ResourceOffer


@dataclass(frozen=True, slots=True)
class OfferRemoved:
    offer: ResourceOffer
    reason: str  # expired | withdrawn | departed


OfferEvent = OfferAdded | OfferUpdated | OfferRemoved


class OfferBook:
    def __init__(self) -> None:
        self._by_peer: dict[str, ResourceOffer] = {}

    def __len__(self) -> int:
        return len(self._by_peer)

    def get(self, peer_id: str) -> ResourceOffer | None:
        return self._by_peer.get(peer_id)

    def offers(self) -> list[ResourceOffer]:
        return sorted(self._by_peer.values(), key=lambda o: o.peer_id)

    def apply(self, offer: ResourceOffer, now: float) -> list[OfferEvent]:
        if offer.expires_at <= now:
            return []
        current = self._by_peer.get(offer.peer_id)
        if current is not None and current.seq >= offer.seq:
            return []
        self._by_peer[offer.peer_id] = offer
        return [OfferAdded(offer) if current is None else OfferUpdated(offer)]

    def withdraw(self, withdrawal: OfferWithdrawal) -> list[OfferEvent]:
        current = self._by_peer.get(withdrawal.peer_id)
        if (
            current is None
            or current.offer_id != withdrawal.offer_id
            or current.seq > withdrawal.seq
        ):
            return []
        del self._by_peer[withdrawal.peer_id]
        return [OfferRemoved(current, "withdrawn")]

    def peer_departed(self, peer_id: str) -> list[OfferEvent]:
        current = self._by_peer.pop(peer_id, None)
        return [] if current is None else [OfferRemoved(current, "departed")]

    def expire(self, now: float) -> list[OfferEvent]:
        gone = [o for o in self._by_peer.values() if o.expires_at <= now]
        for offer in gone:
            del self._by_peer[offer.peer_id]
        return [OfferRemoved(o, "expired") for o in gone]

    def next_expiry(self) -> float | None:
        return min((o.expires_at for o in self._by_peer.values()), default=None)

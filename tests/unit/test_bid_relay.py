"""A requester over its bid rate is cut off at the gossip layer: its bids are
ignored (not delivered, not relayed to the rest of the mesh, not penalised),
while another requester's bids still go through."""

from __future__ import annotations

from ledger.agreement import AccountKeys
from protocol.codec import encode
from protocol.identity import sign_gossip
from protocol.market import encode_market
from protocol.verdict import Reason, Verdict
from scheduler.market import InlineStore, ProviderService
from scheduler.policy import UnitPrices
from scheduler.provider import ProviderConfig, ProviderCore
from scheduler.store import JobStore
from scheduler.testing import FakeWorker
from tests.factories import Peer
from tests.unit.test_market_wire import NOW, A, B, bid

P = Peer(9)


def wire(peer: Peer, seq: int, job: str) -> bytes:
    return encode(sign_gossip(encode_market(bid(peer, seq=seq, job_id=job)), peer.key))


class _Quiet:
    async def send(self, peer_id: str, data: bytes) -> None:
        pass


def service(tmp_path, *, burst: int) -> ProviderService:
    core = ProviderCore(
        ProviderConfig(
            peer_id=P.peer_id,
            identity=P.record,
            cpu=8,
            memory_mb=4096,
            prices=UnitPrices(1, 1, 1),
            bid_rate_per_s=1.0,
            bid_burst=burst,
        ),
        AccountKeys(P.account_key),
    )
    return ProviderService(
        core,
        store=InlineStore(JobStore(tmp_path / "p.db")),
        transport=_Quiet(),
        worker=FakeWorker(P.peer_id),
        clock=lambda: NOW,
    )


def test_a_flood_is_ignored_at_the_gossip_layer_and_an_honest_requester_is_not(tmp_path):
    svc = service(tmp_path, burst=3)
    verdicts = []
    for i in range(10):
        job = f"{i:064x}"
        # the flood is accepted by the core's inbox up to the burst, then ignored
        out = svc.deliver_bid(A.peer_id, wire(A, 1, job))
        verdicts.append((out.verdict, out.reason))
        if out.verdict is Verdict.ACCEPT:
            svc.core.handle_bid(out.message, NOW)  # what the service loop does with it
    assert verdicts[:3] == [(Verdict.ACCEPT, Reason.OK)] * 3
    assert set(verdicts[3:]) == {(Verdict.IGNORE, Reason.RATE_LIMITED)}
    assert not Verdict.IGNORE.penalises
    assert svc.core.counters["bid_rate_limited"] == 7
    honest = svc.deliver_bid(B.peer_id, wire(B, 1, "cd" * 32))
    assert honest.verdict is Verdict.ACCEPT

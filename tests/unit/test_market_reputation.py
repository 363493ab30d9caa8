"""Selection uses reputation, then latency, when prices tie."""

from ledger.agreement import AccountKeys
from scheduler.reputation import Evidence, EvidenceKind
from scheduler.requester import RequesterConfig, RequesterCore, SendAgreement
from tests.unit.test_market_cores import P1, P2, T0, R, only, provider, spec


def _core(stats):
    cfg = RequesterConfig(peer_id=R.peer_id, identity=R.record, enough_quotes=2)
    return RequesterCore(cfg, AccountKeys(R.account_key), peer_stats=stats)


def _chosen(core) -> str:
    _, cmds = core.submit(spec(), "bafkreispec", T0)
    bid = cmds[1].bid
    q1 = only(provider(P1).handle_bid(bid, T0), SendQuote).message
    q2 = only(provider(P2).handle_bid(bid, T0), SendQuote).message
    assert core.handle_message(P1.peer_id, q1, T0) == []
    return only(core.handle_message(P2.peer_id, q2, T0), SendAgreement).peer_id


from scheduler.provider import SendQuote  # noqa: E402


def test_equal_prices_go_to_the_lower_latency_peer():
    stats = {P1.peer_id: (0.0, 50.0), P2.peer_id: (0.0, 5.0)}
    assert _chosen(_core(lambda p: stats[p])) == P2.peer_id
    stats = {P1.peer_id: (0.0, 5.0), P2.peer_id: (0.0, 50.0)}
    assert _chosen(_core(lambda p: stats[p])) == P1.peer_id


def test_reputation_outranks_latency_and_lost_jobs_cost_reputation():
    stats = {P1.peer_id: (-10.0, 1.0), P2.peer_id: (0.0, 90.0)}  # P1 misbehaved on the mesh
    assert _chosen(_core(lambda p: stats[p])) == P2.peer_id
    core = _core(lambda p: (0.0, 1.0 if p == P1.peer_id else 2.0))
    # P1 lost a job of ours before
    core.book.add(Evidence(P1.record.account, P1.peer_id, "j0", EvidenceKind.VANISHED, T0))
    assert _chosen(core) == P2.peer_id

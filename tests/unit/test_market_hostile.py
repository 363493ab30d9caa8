"""The market cores against hostile peers: quote floods, job-id squatting, and a
provider that comes back from a crash after it was replaced. Pure: ``now`` ticks."""

import msgspec

from ledger.agreement import AccountKeys
from protocol.market import Agreement, Cancel, Heartbeat, JobResult, decode_market, encode_market
from scheduler.jobstate import JobState
from scheduler.policy import RateLimiter, UnitPrices
from scheduler.provider import (
    AbortExecution,
    FetchPayload,
    ProviderConfig,
    ProviderCore,
    SendHeartbeat,
    SendProviderAgreement,
    SendQuote,
    SendRefusal,
    StartExecution,
)
from scheduler.requester import RequesterConfig, RequesterCore, SendAgreement, SendCancel
from scheduler.store import CreateJob, JobStore, RecordTransition
from tests.component.harness import spec
from tests.factories import Peer

R, F, A, B = Peer(1), Peer(66), Peer(11), Peer(12)
T0 = 1000.0


def requester(peer: Peer = R) -> RequesterCore:
    cfg = RequesterConfig(peer_id=peer.peer_id, identity=peer.record, enough_quotes=2)
    return RequesterCore(cfg, AccountKeys(peer.account_key))


def provider(peer: Peer, *, price: int = 3600, **config) -> ProviderCore:
    cfg = ProviderConfig(
        peer_id=peer.peer_id,
        identity=peer.record,
        cpu=4,
        memory_mb=4096,
        prices=UnitPrices(cpu_core_hour=price, memory_gb_hour=0),
        **config,
    )
    return ProviderCore(cfg, AccountKeys(peer.account_key))


def only(cmds, kind):
    found = [c for c in cmds if isinstance(c, kind)]
    assert len(found) == 1, cmds
    return found[0]


def flood_bids(template, n, *, peer=F):
    """``n`` bids for distinct jobs from ``peer``, shaped like ``template``."""
    return [
        msgspec.structs.replace(
            template, job_id=f"{i:064x}", peer_id=peer.peer_id, identity=peer.record
        )
        for i in range(n)
    ]


def honest_bid(now=T0):
    _, cmds = requester().submit(spec(), "bafkreispec", now)
    return cmds[1].bid


# --- 1. one peer cannot hold the provider's quotes -------------------------------


def test_one_requester_holds_at_most_its_share_of_open_quotes_and_others_still_get_quotes():
    prov = provider(A, max_quotes_per_requester=64, bid_burst=1000)
    bid = honest_bid()
    answers = [c for b in flood_bids(bid, 200) for c in prov.handle_bid(b, T0)]
    quotes = [c for c in answers if isinstance(c, SendQuote)]
    refusals = [c.message for c in answers if isinstance(c, SendRefusal)]
    assert len(quotes) == 64 and len(refusals) == 136
    assert {r.reason for r in refusals} == {"too_many_quotes"}
    assert prov.counters["refused_too_many_quotes"] == 136
    assert len(prov.reserved()) == 64
    # the honest requester is not crowded out
    assert isinstance(only(prov.handle_bid(bid, T0), SendQuote), SendQuote)
    # a quote the flooder lets lapse makes room for one more of its own
    prov.handle_timer(T0 + 30)
    again = flood_bids(bid, 201)[200]
    assert isinstance(prov.handle_bid(again, T0 + 30)[0], SendQuote)


def test_a_released_or_taken_quote_counts_no_more_against_its_requester():
    prov = provider(A, max_quotes_per_requester=2)
    bids = flood_bids(honest_bid(), 3, peer=R)
    for b in bids[:2]:
        only(prov.handle_bid(b, T0), SendQuote)
    assert only(prov.handle_bid(bids[2], T0), SendRefusal).message.reason == "too_many_quotes"
    release = Cancel(job_id=bids[0].job_id, peer_id=R.peer_id, reason="released")
    prov.handle_message(R.peer_id, release, T0)
    only(prov.handle_bid(bids[2], T0), SendQuote)
    # a fresh round for a job already quoted replaces its quote: no extra slot
    only(prov.handle_bid(msgspec.structs.replace(bids[2], seq=2), T0), SendQuote)
    assert sorted(prov.reserved()) == sorted([bids[1].job_id, bids[2].job_id])


def test_bids_beyond_a_requesters_rate_are_dropped_and_counted_others_are_not():
    prov = provider(A, bid_rate_per_s=10.0, bid_burst=20, max_quotes_per_requester=10_000)
    bid = honest_bid()
    flood = flood_bids(bid, 100)
    answered = [b for b in flood if prov.handle_bid(b, T0)]
    assert len(answered) == 20  # the burst, then nothing more at this instant
    assert prov.counters["bid_rate_limited"] == 80
    assert isinstance(only(prov.handle_bid(bid, T0), SendQuote), SendQuote)
    # tokens come back at the rate: half a second later, 5 more bids are heard
    later = flood_bids(bid, 200)[100:]
    assert len([b for b in later if prov.handle_bid(b, T0 + 0.5)]) == 5


def test_rate_limiter_refills_caps_and_forgets_the_least_recent_key():
    lim = RateLimiter(rate=2.0, burst=3, max_keys=2)
    assert [lim.allow("a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert lim.allow("a", 0.5) and not lim.allow("a", 0.5)
    assert [lim.allow("a", 100.0) for _ in range(4)] == [True, True, True, False]  # capped
    assert not lim.allow("a", 50.0)  # a clock that steps back refills nothing
    lim.allow("b", 100.0)
    lim.allow("c", 100.0)  # "a" is the least recently seen of three: forgotten
    assert len(lim) == 2 and lim.allow("a", 100.0)


# --- job ids are per requester: another peer cannot squat on one ----------------


def test_a_bid_for_someone_elses_job_id_neither_replaces_nor_blocks_its_quote():
    prov = provider(A)
    bid = honest_bid()
    squat = msgspec.structs.replace(bid, peer_id=F.peer_id, identity=F.record, seq=10**9)
    only(prov.handle_bid(squat, T0), SendQuote)
    assert only(prov.handle_bid(bid, T0), SendQuote).peer_id == R.peer_id
    # the squatter's release does not touch the honest requester's quote
    prov.handle_message(F.peer_id, Cancel(job_id=bid.job_id, peer_id=F.peer_id), T0)
    assert prov.reserved() == [bid.job_id]


# --- 2. a provider replaced while it was down does not run the job again ---------


def _run_on(core, prov, peer, store, now):
    """Submit, take ``prov``'s quote, have it countersign and start; its commands
    persisted in ``store``. Returns (job_id, the requester's countersigned view)."""
    job_id, cmds = core.submit(spec(), "bafkreispec", now)
    bid = cmds[1].bid
    q = only(prov.handle_bid(bid, now), SendQuote).message
    core.handle_message(peer.peer_id, q, now)
    offer = only(core.handle_timer(now + 0.5), SendAgreement).message
    started = prov.handle_message(R.peer_id, offer, now + 0.5)
    for c in started:
        if isinstance(c, (CreateJob, RecordTransition)):
            store.apply(c, now=now + 0.5)
    signed = only(started, SendProviderAgreement).message
    core.handle_message(peer.peer_id, signed, now + 0.6)
    core.handle_message(peer.peer_id, only(started, SendHeartbeat).message, now + 0.6)
    assert core.job(job_id).state is JobState.RUNNING
    return job_id, bid


def _wire(message):
    """What the other side decodes: every message crosses the wire."""
    return decode_market(encode_market(message))


def _persist(store, cmds, now):
    for c in cmds:
        if isinstance(c, RecordTransition):
            store.apply(c, now=now)


def test_a_provider_replaced_while_down_asks_first_and_ends_cancelled_owing_nothing(tmp_path):
    core = requester()
    with JobStore(tmp_path / "a.db") as a_store:
        job_id, bid = _run_on(core, provider(A), A, a_store, T0)
        # A dies; B quotes for the next round; the requester replaces A with B
        replaced = core.handle_timer(T0 + 0.6 + 3.0)
        assert only(replaced, SendCancel).message.reason == "heartbeat_timeout"  # lost: A is down
        prov_b = provider(B)
        rebid = [c for c in replaced if hasattr(c, "bid")]
        bid2 = rebid[0].bid if rebid else msgspec.structs.replace(bid, seq=2)
        q = only(prov_b.handle_bid(bid2, T0 + 4), SendQuote).message
        core.handle_message(B.peer_id, q, T0 + 4)
        offer = only(core.handle_timer(T0 + 5), SendAgreement).message
        assert offer.terms.provider_peer == B.peer_id
        started = prov_b.handle_message(R.peer_id, offer, T0 + 4)
        core.handle_message(B.peer_id, only(started, SendProviderAgreement).message, T0 + 4)
        assert core.job(job_id).provider == B.peer_id

        # A restarts: it does not run the job blindly, it asks
        a2 = provider(A)
        [row] = a_store.open_jobs(role="provider")
        cmds = a2.resume(row, T0 + 10)
        assert not [c for c in cmds if isinstance(c, (StartExecution, FetchPayload))]
        probe = only(cmds, SendHeartbeat)
        assert probe.peer_id == R.peer_id and probe.message.resumed
        # ... and the requester answers: you were replaced
        answer = only(core.handle_message(A.peer_id, _wire(probe.message), T0 + 10), SendCancel)
        assert (answer.peer_id, answer.message.reason) == (A.peer_id, "replaced")
        ended = a2.handle_message(R.peer_id, _wire(answer.message), T0 + 10)
        assert not [c for c in ended if isinstance(c, (StartExecution, AbortExecution))]
        _persist(a_store, ended, T0 + 10)
        assert a2.running() == [] and a2.next_deadline() is None
        row = a_store.get(job_id, role="provider")
        assert row.state is JobState.CANCELLED
        assert a_store.transitions(job_id, role="provider")[-1].fields["reason"] == "replaced"
        assert not [r for r in a_store.jobs(role="provider") if r.state is JobState.COMPLETED]
        assert a_store.owed() == []
        # B still owns the job on the requester's side
        assert core.job(job_id).provider == B.peer_id


def test_a_provider_back_before_it_was_replaced_is_confirmed_and_its_heartbeats_count(tmp_path):
    core = requester()
    with JobStore(tmp_path / "a.db") as a_store:
        job_id, _ = _run_on(core, provider(A), A, a_store, T0)
        for seq in range(1, 6):  # the first run had sent a few heartbeats
            core.handle_message(A.peer_id, Heartbeat(job_id=job_id, peer_id=A.peer_id, seq=seq), T0)
        a2 = provider(A)
        [row] = a_store.open_jobs(role="provider")
        probe = only(a2.resume(row, T0 + 1.5), SendHeartbeat).message
        assert probe.resumed and probe.seq == 0
        yes = only(core.handle_message(A.peer_id, _wire(probe), T0 + 1.5), SendAgreement)
        assert yes.message.terms.provider_peer == A.peer_id
        assert not yes.message.provider_signature  # it routes to the provider side
        cmds = a2.handle_message(R.peer_id, _wire(yes.message), T0 + 1.6)
        assert isinstance(cmds[0], FetchPayload)
        only(cmds, StartExecution)
        hb = only(cmds, SendHeartbeat).message
        assert not hb.resumed and hb.seq == 1
        # the restarted seq is heard: liveness moves, the provider is not replaced
        assert core.handle_message(A.peer_id, hb, T0 + 4.0) == []
        assert core.counters["heartbeat_stale"] == 0
        assert not [c for c in core.handle_timer(T0 + 6.0) if isinstance(c, SendCancel)]
        assert core.job(job_id).provider == A.peer_id
        # a repeated confirmation does not start the job twice
        assert not [
            c
            for c in a2.handle_message(R.peer_id, _wire(yes.message), T0 + 1.7)
            if isinstance(c, StartExecution)
        ]


def test_a_resumed_provider_that_hears_nothing_probes_until_the_deadline_then_gives_up(tmp_path):
    core = requester()
    with JobStore(tmp_path / "a.db") as a_store:
        job_id, bid = _run_on(core, provider(A), A, a_store, T0)
        a2 = provider(A)
        [row] = a_store.open_jobs(role="provider")
        only(a2.resume(row, T0 + 10), SendHeartbeat)
        assert a2.next_deadline() == T0 + 11
        again = only(a2.handle_timer(T0 + 11), SendHeartbeat).message
        assert again.resumed and again.seq == 1
        ended = a2.handle_timer(float(bid.deadline))
        assert not [c for c in ended if isinstance(c, (StartExecution, SendHeartbeat))]
        _persist(a_store, ended, float(bid.deadline))
        assert a2.running() == []
        assert a_store.get(job_id, role="provider").state is JobState.CANCELLED
        assert a_store.transitions(job_id, role="provider")[-1].fields["reason"] == "unconfirmed"


def test_only_the_jobs_requester_can_confirm_or_cancel_a_resumed_job(tmp_path):
    core = requester()
    with JobStore(tmp_path / "a.db") as a_store:
        job_id, _ = _run_on(core, provider(A), A, a_store, T0)
        a2 = provider(A)
        [row] = a_store.open_jobs(role="provider")
        a2.resume(row, T0 + 1)
        agreement = msgspec.msgpack.decode(row.agreement, type=Agreement)
        unsigned = msgspec.structs.replace(agreement, provider_signature=b"")
        assert a2.handle_message(F.peer_id, unsigned, T0 + 1) == []
        assert a2.handle_message(F.peer_id, Cancel(job_id=job_id, peer_id=F.peer_id), T0 + 1) == []
        assert a2.running() == [job_id]


def test_heartbeats_and_results_from_a_replaced_provider_are_answered_with_a_cancel():
    core = requester()
    with JobStore(":memory:") as a_store:
        job_id, _ = _run_on(core, provider(A), A, a_store, T0)
    core.handle_timer(T0 + 0.6 + 3.0)  # A replaced (partitioned, still running)
    hb = Heartbeat(job_id=job_id, peer_id=A.peer_id, seq=9)
    told = only(core.handle_message(A.peer_id, hb, T0 + 5), SendCancel)
    assert (told.peer_id, told.message.reason) == (A.peer_id, "replaced")
    result = JobResult(
        job_id=job_id,
        peer_id=A.peer_id,
        output_cid="bafkout",
        usage=hb.usage,
        stdout_sha256=b"",
        stderr_sha256=b"",
        exit_code=0,
    )
    told = only(core.handle_message(A.peer_id, result, T0 + 6), SendCancel)
    assert told.message.reason == "replaced"
    assert core.counters["late_result_ignored"] == 1
    # a stranger's heartbeat for the job gets no answer
    assert core.handle_message(F.peer_id, msgspec.structs.replace(hb, peer_id=F.peer_id), T0) == []


def test_a_provider_of_a_job_cancelled_while_it_was_down_is_told_so():
    core = requester()
    with JobStore(":memory:") as a_store:
        job_id, _ = _run_on(core, provider(A), A, a_store, T0)
    core.cancel(job_id, T0 + 1)
    hb = Heartbeat(job_id=job_id, peer_id=A.peer_id, seq=0, resumed=True)
    told = only(core.handle_message(A.peer_id, hb, T0 + 5), SendCancel)
    assert told.message.reason == "cancelled"


def test_heartbeat_resumed_is_additive_on_the_wire():
    old = msgspec.msgpack.encode({"type": "heartbeat", "job_id": "j", "peer_id": "p", "seq": 3})
    assert decode_market(old) == Heartbeat(job_id="j", peer_id="p", seq=3, resumed=False)
    new = encode_market(Heartbeat(job_id="j", peer_id="p", seq=0, resumed=True))
    assert decode_market(new).resumed

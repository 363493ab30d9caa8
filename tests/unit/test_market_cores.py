"""The market cores, driven by hand with ``now`` ticks: no trio, no sockets."""

import msgspec
import pytest

from ledger.agreement import AccountKeys, verify_agreement
from protocol.market import Cancel
from protocol.messages import Prices
from scheduler.explain import explain_job
from scheduler.jobstate import JobEvent, JobState
from scheduler.policy import UnitPrices
from scheduler.provider import (
    FetchPayload,
    ProviderConfig,
    ProviderCore,
    SendHeartbeat,
    SendProviderAgreement,
    SendQuote,
    SendRefusal,
    StartExecution,
)
from scheduler.requester import PublishBid, RequesterConfig, RequesterCore, SendAgreement
from scheduler.store import CreateJob, JobStore, RecordTransition
from tests.component.harness import spec
from tests.factories import Peer

R, P1, P2, P3 = Peer(1), Peer(11), Peer(12), Peer(13)
T0 = 1000.0


def requester(**config) -> RequesterCore:
    cfg = RequesterConfig(peer_id=R.peer_id, identity=R.record, **config)
    return RequesterCore(cfg, AccountKeys(R.account_key))


def provider(peer: Peer, *, cpu: int = 4, price: int = 3600) -> ProviderCore:
    cfg = ProviderConfig(
        peer_id=peer.peer_id,
        identity=peer.record,
        cpu=cpu,
        memory_mb=4096,
        prices=UnitPrices(cpu_core_hour=price, memory_gb_hour=0),
    )
    return ProviderCore(cfg, AccountKeys(peer.account_key))


def only(cmds, kind):
    found = [c for c in cmds if isinstance(c, kind)]
    assert len(found) == 1, cmds
    return found[0]


def test_submit_persists_before_it_publishes():
    core = requester()
    job_id, cmds = core.submit(spec(), "bafkreispec", T0)
    assert [type(c) for c in cmds] == [CreateJob, PublishBid]
    bid = cmds[1].bid
    assert (bid.job_id, bid.seq, bid.deadline, bid.peer_id) == (job_id, 1, int(T0) + 300, R.peer_id)
    assert core.next_deadline() == T0 + 0.5  # the quote window


def test_window_then_cheapest_quote_gets_a_signed_agreement():
    core = requester(enough_quotes=3)
    job_id, cmds = core.submit(spec(), "bafkreispec", T0)
    bid = cmds[1].bid
    quotes = {}
    for peer, price in ((P1, 3600), (P2, 1800)):
        q = only(provider(peer, price=price).handle_bid(bid, T0), SendQuote).message
        quotes[peer.peer_id] = q
        assert core.handle_message(peer.peer_id, q, T0 + 0.1) == []  # still collecting
    cmds = core.handle_timer(T0 + 0.5)
    agreement = only(cmds, SendAgreement)
    assert agreement.peer_id == P2.peer_id  # the cheaper one
    terms = agreement.message.terms
    assert terms.price_total == quotes[P2.peer_id].price_total == "30"  # 1 cpu x 60 s
    assert verify_agreement(terms, agreement.message.requester_signature, core._keys.account)
    # no countersign in time: the next quote gets it
    cmds = core.handle_timer(T0 + 0.5 + 5.0)
    assert only(cmds, SendAgreement).peer_id == P1.peer_id
    assert core.job(job_id).excluded == {P2.peer_id}


def test_enough_quotes_selects_before_the_window_ends():
    core = requester(enough_quotes=2)
    _, cmds = core.submit(spec(), "bafkreispec", T0)
    bid = cmds[1].bid
    q1 = only(provider(P1).handle_bid(bid, T0), SendQuote).message
    q2 = only(provider(P2).handle_bid(bid, T0), SendQuote).message
    assert core.handle_message(P1.peer_id, q1, T0) == []
    assert isinstance(core.handle_message(P2.peer_id, q2, T0)[0], SendAgreement)


@pytest.mark.parametrize(
    ("source", "change", "counter"),
    [
        (P2.peer_id, {}, "quote_source_mismatch"),
        (P1.peer_id, {"price_total": str(10**7)}, "quote_over_budget"),
        (P1.peer_id, {"bid_seq": 7}, "stale_quote"),
        (P1.peer_id, {"job_id": "ff" * 32}, "unknown_job_quote"),
    ],
)
def test_bad_quotes_are_dropped_and_counted(source, change, counter):
    core = requester()
    _, cmds = core.submit(spec(), "bafkreispec", T0)
    q = only(provider(P1).handle_bid(cmds[1].bid, T0), SendQuote).message
    assert core.handle_message(source, msgspec.structs.replace(q, **change), T0) == []
    assert core.counters == {counter: 1}


def _agree(core, prov, peer, now=T0):
    job_id, cmds = core.submit(spec(), "bafkreispec", now)
    q = only(prov.handle_bid(cmds[1].bid, now), SendQuote).message
    core.handle_message(peer.peer_id, q, now)
    offer = only(core.handle_timer(now + 0.5), SendAgreement).message
    return job_id, offer


def test_provider_countersigns_then_runs_in_that_order():
    core, prov = requester(), provider(P1)
    job_id, offer = _agree(core, prov, P1)
    cmds = prov.handle_message(R.peer_id, offer, T0 + 0.5)
    assert [type(c) for c in cmds] == [
        CreateJob,
        RecordTransition,
        SendProviderAgreement,
        FetchPayload,
        RecordTransition,
        StartExecution,
        SendHeartbeat,
    ]
    assert [c.event for c in cmds if isinstance(c, RecordTransition)] == [
        JobEvent.MATCHED,
        JobEvent.STARTED,
    ]
    assert prov.reserved() == [] and prov.running() == [job_id]
    countersigned = cmds[2].message
    back = core.handle_message(P1.peer_id, countersigned, T0 + 0.6)
    assert [c.event for c in back] == [JobEvent.MATCHED]
    assert back[0].fields["provider_peer"] == P1.peer_id
    back = core.handle_message(P1.peer_id, cmds[-1].message, T0 + 0.6)
    assert [c.event for c in back] == [JobEvent.STARTED]


@pytest.mark.parametrize(
    "change", [{"price_total": "1"}, {"cpu": 2}, {"provider_account": R.record.account}]
)
def test_provider_refuses_an_agreement_that_differs_from_its_quote(change):
    core, prov = requester(), provider(P1)
    _, offer = _agree(core, prov, P1)
    tampered = msgspec.structs.replace(offer, terms=msgspec.structs.replace(offer.terms, **change))
    refusal = only(prov.handle_message(R.peer_id, tampered, T0 + 0.5), SendRefusal).message
    assert refusal.reason == "bad_agreement"
    assert prov.reserved() == [] and prov.running() == []


def test_provider_refuses_a_forged_requester_signature():
    core, prov = requester(), provider(P1)
    _, offer = _agree(core, prov, P1)
    forged = msgspec.structs.replace(offer, requester_signature=b"\x00" * 65)
    assert only(prov.handle_message(R.peer_id, forged, T0 + 0.5), SendRefusal).message.detail == (
        "the requester's signature does not verify"
    )


def test_quotes_reserve_nothing_the_agreement_rechecks_capacity():
    # A quote no longer holds capacity: in a burst every provider would hold its
    # slots for the same first jobs and refuse the rest for a re-bid period. The
    # agreement is what commits, and the provider checks capacity again then.
    prov = provider(P1, cpu=1)
    core = requester()
    j1, c1 = core.submit(spec(), "bafkreispec1", T0)
    j2, c2 = core.submit(spec(), "bafkreispec2", T0)
    q1 = only(prov.handle_bid(c1[1].bid, T0), SendQuote).message
    q2 = only(prov.handle_bid(c2[1].bid, T0), SendQuote).message
    assert prov.free() == (1, 4096, 0) and sorted(prov.reserved()) == sorted([j1, j2])
    assert prov.next_deadline() == T0 + 30  # quote ttl
    core.handle_message(P1.peer_id, q1, T0)
    core.handle_message(P1.peer_id, q2, T0)
    a1, a2 = (c.message for c in core.handle_timer(T0 + 0.5) if isinstance(c, SendAgreement))
    assert isinstance(prov.handle_message(R.peer_id, a1, T0 + 0.5)[2], SendProviderAgreement)
    assert prov.free()[0] == 0
    refusal = only(prov.handle_message(R.peer_id, a2, T0 + 0.5), SendRefusal).message
    assert refusal.reason == "insufficient_cpu"
    assert prov.reserved() == [] and prov.running() == [a1.terms.job_id]
    # the requester has no other quote: it re-bids later, and may ask P1 again then
    assert core.handle_message(P1.peer_id, refusal, T0 + 0.5) == []
    assert P1.peer_id not in core.job(a2.terms.job_id).excluded


def test_an_unused_quote_lapses():
    prov = provider(P1, cpu=1)
    _, c1 = requester().submit(spec(), "bafkreispec1", T0)
    assert isinstance(prov.handle_bid(c1[1].bid, T0)[0], SendQuote)
    prov.handle_timer(T0 + 30)
    assert prov.reserved() == [] and prov.free() == (1, 4096, 0)
    assert isinstance(
        prov.handle_bid(msgspec.structs.replace(c1[1].bid, seq=2), T0 + 30)[0], SendQuote
    )


def test_release_from_the_requester_frees_a_quote_but_nobody_else_can():
    prov = provider(P1)
    _, cmds = requester().submit(spec(), "bafkreispec", T0)
    bid = cmds[1].bid
    prov.handle_bid(bid, T0)
    assert prov.handle_message(P2.peer_id, Cancel(job_id=bid.job_id, peer_id=P2.peer_id), T0) == []
    assert prov.reserved() == [bid.job_id]
    prov.handle_message(
        R.peer_id, Cancel(job_id=bid.job_id, peer_id=R.peer_id, reason="released"), T0
    )
    assert prov.reserved() == []


def test_resume_rearms_liveness_or_rebids(tmp_path):
    core, prov = requester(), provider(P1)
    with JobStore(tmp_path / "r.db") as store:
        job_id, offer = _agree(core, prov, P1)
        first = core.submit(spec(), "bafkreispec-b", T0)
        store.apply(CreateJob(first[0], "requester", first[1][0].spec), now=T0)
        store.apply(CreateJob(job_id, "requester", _stored(core, job_id)), now=T0)
        signed = only(prov.handle_message(R.peer_id, offer, T0), SendProviderAgreement).message
        for cmd in core.handle_message(P1.peer_id, signed, T0 + 1):
            store.apply(cmd, now=T0 + 1)
        rows = {r.job_id: r for r in store.open_jobs(role="requester")}
    fresh = requester()
    assert fresh.resume(rows[job_id], T0 + 100) == []
    assert fresh.job(job_id).state is JobState.MATCHED and fresh.job(job_id).provider == P1.peer_id
    assert fresh.next_deadline() == T0 + 100 + 3.0
    [bid] = fresh.resume(rows[first[0]], T0 + 100)
    assert isinstance(bid, PublishBid) and bid.bid.seq == 1


def _stored(core, job_id):
    job = core.job(job_id)
    return {
        "spec": msgspec.to_builtins(job.spec),
        "spec_cid": job.spec_cid,
        "deadline": job.deadline,
        "submitted_at": job.submitted_at,
    }


def test_explain_names_what_the_nearest_offers_lack():
    core = requester()
    job_id, _ = core.submit(spec(cpu=4), "bafkreispec", T0)
    offers = [
        P1.offer(cpu=2),
        P2.offer(cpu=8, memory_mb=64),
        P3.offer(cpu=8, prices=Prices(cpu_core_hour=str(10**12))),
    ]
    e = explain_job(core.job(job_id), offers, now=T0 + 12)
    assert e["answers"] == [] and e["open_for_s"] == 12.0
    lacks = {n["peer_id"]: n["lacks"] for n in e["nearest_offers"]}
    assert lacks[P1.peer_id] == ["cpu: has 2, job needs 4"]
    assert lacks[P2.peer_id] == ["memory: has 64 MB, job needs 128 MB"]
    assert lacks[P3.peer_id][0].startswith("price: floor")
    assert "no provider has answered the bid" in e["text"]
    assert "cpu: has 2, job needs 4" in e["text"]


def test_explain_lists_quotes_and_refusals():
    core = requester(enough_quotes=9)
    job_id, cmds = core.submit(spec(cpu=2), "bafkreispec", T0)
    for peer, cpu in ((P1, 1), (P2, 4)):
        for c in provider(peer, cpu=cpu).handle_bid(cmds[1].bid, T0):
            core.handle_message(peer.peer_id, c.message, T0)
    e = core.explain(job_id, T0 + 0.2)
    kinds = {a["peer_id"]: (a["kind"], a.get("reason")) for a in e["answers"]}
    assert kinds == {P1.peer_id: ("refusal", "insufficient_cpu"), P2.peer_id: ("quote", None)}
    assert e["nearest_offers"] == []


def _book(*peers, cpu=2):
    from protocol.messages import ResourceOffer

    offers = [
        ResourceOffer(
            offer_id=f"o{i}",
            peer_id=p.peer_id,
            seq=1,
            identity=p.record,
            cpu=cpu,
            memory_mb=4096,
            disk_mb=1024,
        )
        for i, p in enumerate(peers)
    ]
    return lambda: offers


def test_requester_bids_for_no_more_than_the_book_holds_then_admits_in_order():
    cfg = RequesterConfig(peer_id=R.peer_id, identity=R.record, admit_extra=0.0)
    core = RequesterCore(cfg, AccountKeys(R.account_key), offers=_book(P1, cpu=2))
    subs = [core.submit(spec(), f"bafkreispec{i}", T0) for i in range(3)]
    assert [type(c) for _, cmds in subs for c in cmds] == [
        CreateJob,
        PublishBid,
        CreateJob,
        PublishBid,
        CreateJob,
    ]
    assert core.job(subs[2][0]).queued and core._admit_check_at == T0 + 1.0
    cmds = core.cancel(subs[0][0], T0 + 0.1)  # room again: the queued job bids
    assert only(cmds, PublishBid).bid.job_id == subs[2][0]
    assert not core.job(subs[2][0]).queued


def test_every_provider_in_the_book_answered_selects_before_the_window_ends():
    core = RequesterCore(
        RequesterConfig(peer_id=R.peer_id, identity=R.record, enough_quotes=3),
        AccountKeys(R.account_key),
        offers=_book(P1, P2),
    )
    _, cmds = core.submit(spec(), "bafkreispec", T0)
    bid = cmds[1].bid
    q1 = only(provider(P1).handle_bid(bid, T0), SendQuote).message
    r2 = only(provider(P2, cpu=0).handle_bid(bid, T0), SendRefusal).message
    assert core.handle_message(P1.peer_id, q1, T0) == []  # P2 has not answered yet
    assert only(core.handle_message(P2.peer_id, r2, T0 + 0.01), SendAgreement).peer_id == (
        P1.peer_id
    )

"""The requester core with zk jobs: the agreement names the circuit, a result
whose proof fails is not paid and goes to another provider, a bounded number
of times. Driven by hand with ``now`` ticks against real provider cores."""

import msgspec
import pytest

from ledger.agreement import AccountKeys
from ledger.vouchers import Domain
from protocol.market import Cancel, UsageReport, encode_market
from scheduler.jobstate import JobEvent, JobState
from scheduler.policy import UnitPrices
from scheduler.provider import (
    ExecutionOutcome,
    Funds,
    ProviderConfig,
    ProviderCore,
    SendProviderAgreement,
    SendQuote,
    SendResult,
)
from scheduler.requester import (
    FetchOutput,
    PublishBid,
    RequesterConfig,
    RequesterCore,
    SendAgreement,
    SendCancel,
    SendPayment,
)
from scheduler.spec import ContentRef, JobSpec, Price, Resources, Verify, ZkCircuit
from scheduler.store import JobRow, RecordTransition
from tests.component.harness import spec as wasm_spec
from tests.factories import Peer

R, P1, P2, P3, P4 = Peer(1), Peer(11), Peer(12), Peer(13), Peer(14)
T0 = 1000.0
ESCROW = "0x" + "ab" * 20
CIRCUIT_ID = "c1" * 32


def zk_spec() -> JobSpec:
    return JobSpec(
        name="stats",
        executor="zk-groth16",
        circuit=ContentRef("cid", "bafybeicircuit"),
        inputs=(ContentRef("cid", "bafkreiinput"),),
        price=Price(max_total=10**6, deadline_seconds=3000),
        resources=Resources(cpu=1, memory_mb=2048, max_seconds=120),
        verify=Verify(mode="zk"),
        zk=ZkCircuit(
            name="private_stats",
            cid="bafybeicircuit",
            circuit_id=CIRCUIT_ID,
            vk={"protocol": "groth16"},
            public_names=("sum", "threshold", "binding"),
            n_outputs=1,
            public_inputs={"threshold": "7"},
        ),
    )


def requester(**config) -> RequesterCore:
    cfg = RequesterConfig(peer_id=R.peer_id, identity=R.record, verifying_contract=ESCROW, **config)
    return RequesterCore(cfg, AccountKeys(R.account_key, Domain(31337, ESCROW)))


def provider(peer: Peer) -> ProviderCore:
    cfg = ProviderConfig(
        peer_id=peer.peer_id,
        identity=peer.record,
        cpu=4,
        memory_mb=8192,
        prices=UnitPrices(cpu_core_hour=3600, memory_gb_hour=0),
        verifying_contract=ESCROW,
        executors=frozenset({"wasm", "zk-groth16"}),
    )
    rich = Funds(available=10**24, owes=0)
    return ProviderCore(
        cfg, AccountKeys(peer.account_key, Domain(31337, ESCROW)), funds=lambda a: rich
    )


def only(cmds, kind):
    found = [c for c in cmds if isinstance(c, kind)]
    assert len(found) == 1, cmds
    return found[0]


def events(cmds):
    return [c.event for c in cmds if isinstance(c, RecordTransition)]


def place(core, job_id, bid, peer: Peer, now: float) -> FetchOutput:
    """``peer`` quotes ``bid``, is chosen, countersigns, runs and delivers."""
    prov = provider(peer)
    q = only(prov.handle_bid(bid, now), SendQuote).message
    core.handle_message(peer.peer_id, q, now)
    offer = only(core.handle_timer(now + 0.5), SendAgreement)
    assert offer.peer_id == peer.peer_id
    signed = only(prov.handle_message(R.peer_id, offer.message, now + 0.5), SendProviderAgreement)
    core.handle_message(peer.peer_id, signed.message, now + 0.6)
    outcome = ExecutionOutcome(
        exit_code=0,
        usage=UsageReport(wall_ms=5),
        stdout_sha256=b"\0" * 32,
        stderr_sha256=b"\0" * 32,
    )
    prov.execution_finished(job_id, outcome, now + 1)
    result = only(prov.output_stored(job_id, f"bafyout{peer.peer_id[-4:]}", now + 1), SendResult)
    return only(core.handle_message(peer.peer_id, result.message, now + 1.1), FetchOutput)


def test_the_agreement_names_the_circuit_of_a_zk_job_and_none_otherwise():
    core = requester()
    for s, want in ((zk_spec(), CIRCUIT_ID), (wasm_spec(), "")):
        job_id, cmds = core.submit(s, f"bafkreispec{want}", T0)
        prov = provider(P1)
        core.handle_message(
            P1.peer_id, only(prov.handle_bid(cmds[-1].bid, T0), SendQuote).message, T0
        )
        offer = only(core.handle_timer(T0 + 0.5), SendAgreement).message
        assert offer.terms.circuit_id == want
        # the provider countersigns exactly these terms (the circuit id is signed)
        assert only(prov.handle_message(R.peer_id, offer, T0 + 0.5), SendProviderAgreement)


def test_a_rejected_proof_is_not_paid_and_the_job_is_placed_again_elsewhere():
    core = requester()
    job_id, cmds = core.submit(zk_spec(), "bafkreispec", T0)
    fetch = place(core, job_id, cmds[-1].bid, P1, T0)
    assert fetch.verify_mode == "zk"
    out = core.output_verified(job_id, False, "the proof does not verify", T0 + 2)
    assert not [c for c in out if isinstance(c, SendPayment)]
    assert not [c for c in out if isinstance(c, RecordTransition) and c.owed]
    replaced = only(out, RecordTransition)
    assert (replaced.event, replaced.reason) == (JobEvent.PROVIDER_REPLACED, "verification_failed")
    assert replaced.fields["output_cid"] is None and replaced.fields["provider_peer"] is None
    cancel = only(out, SendCancel)
    assert cancel.peer_id == P1.peer_id
    assert cancel.message == Cancel(job_id=job_id, peer_id=R.peer_id, reason="verification_failed")
    bid = only(out, PublishBid).bid  # a fresh round, at once
    assert bid.seq == 2
    job = core.job(job_id)
    assert job.state is JobState.PENDING and P1.peer_id in job.excluded
    assert core.book.counts(P1.record.account) == {"on_time": 1, "caught_wrong": 1}
    assert core.counters["replaced_verification_failed"] == 1
    # the provider that failed is not asked again, even when it quotes first
    q1 = only(provider(P1).handle_bid(bid, T0 + 3), SendQuote).message
    assert core.handle_message(P1.peer_id, q1, T0 + 3) == []
    assert core.counters["quote_ignored"] == 1
    # another provider proves it: paid, and only it
    place(core, job_id, bid, P2, T0 + 3)
    paid = core.output_verified(job_id, True, "", T0 + 5)
    assert events(paid) == [JobEvent.VERIFIED]
    pay = only(paid, SendPayment)
    assert pay.peer_id == P2.peer_id
    assert core.channels == {P2.record.account: int(pay.message.cumulative)}
    assert core.book.counts(P2.record.account) == {"on_time": 1, "verified": 1}
    assert core.book.counts(P1.record.account) == {"on_time": 1, "caught_wrong": 1}
    assert core.book.score(P2.record.account) > 0.5 > core.book.score(P1.record.account)
    assert core.job(job_id).state is JobState.COMPLETED
    # the rejection stays on the record: mask explain names the provider and why
    text = core.explain(job_id, T0 + 6)["text"]
    assert P1.peer_id[-8:] in text and "the proof does not verify" in text


def test_verification_attempts_are_bounded_and_each_reason_is_kept():
    core = requester(max_verify_attempts=3)
    job_id, cmds = core.submit(zk_spec(), "bafkreispec", T0)
    bid = cmds[-1].bid
    now = T0
    for i, peer in enumerate((P1, P2, P3)):
        place(core, job_id, bid, peer, now)
        out = core.output_verified(job_id, False, f"bad proof {i}", now + 2)
        assert not [c for c in out if isinstance(c, SendPayment)]
        if i < 2:
            assert events(out) == [JobEvent.PROVIDER_REPLACED]
            bid = only(out, PublishBid).bid
        now += 10
    assert events(out) == [JobEvent.FAILED]
    assert not [c for c in out if isinstance(c, PublishBid)]
    job = core.job(job_id)
    assert job.state is JobState.FAILED
    error = only(out, RecordTransition).fields["error"]
    assert error["code"] == "verification_failed"
    assert "3 provider(s)" in error["message"] and "bad proof 2" in error["message"]
    assert [(f["provider_peer"], f["reason"]) for f in error["verification_failures"]] == [
        (P1.peer_id, "bad proof 0"),
        (P2.peer_id, "bad proof 1"),
        (P3.peer_id, "bad proof 2"),
    ]
    assert all(core.book.counts(p.record.account)["caught_wrong"] == 1 for p in (P1, P2, P3))
    assert core.channels == {} and core.counters["verification_failed"] == 3
    # the explanation is stored with the failure (mask explain after a restart)
    explanation = only(out, RecordTransition).fields["explanation"]
    assert len(explanation["verification_failures"]) == 3
    assert "bad proof 1" in explanation["text"]


def test_a_failure_checked_twice_after_a_restart_counts_once():
    core = requester(max_verify_attempts=2)
    job_id, cmds = core.submit(zk_spec(), "bafkreispec", T0)
    place(core, job_id, cmds[-1].bid, P1, T0)
    failed = {
        "provider_peer": P1.peer_id,
        "provider_account": P1.record.account,
        "output_cid": core.job(job_id).output_cid,
        "valid": False,
        "reason": "binding mismatch",
    }
    # the daemon stopped after the checker recorded the verdict, before the core acted
    row = _row(core, job_id, JobState.VERIFYING, {"mode": "zk", "attempts": [failed]})
    fresh = requester(max_verify_attempts=2)
    resumed = fresh.resume(row, T0 + 5)
    assert only(resumed, FetchOutput).peer_id == P1.peer_id
    out = fresh.output_verified(job_id, False, "binding mismatch", T0 + 6)
    assert events(out) == [JobEvent.PROVIDER_REPLACED]  # one failure of two, not two
    assert len(fresh.job(job_id).verification_failures) == 1


def test_a_resumed_pending_job_keeps_its_rejected_providers_out():
    core = requester()
    job_id, _ = core.submit(zk_spec(), "bafkreispec", T0)
    failed = {"provider_peer": P1.peer_id, "valid": False, "reason": "tampered"}
    valid = {"provider_peer": P2.peer_id, "valid": True, "reason": ""}
    row = _row(core, job_id, JobState.PENDING, {"attempts": [failed, valid, "junk", 7]})
    fresh = requester()
    fresh.resume(row, T0 + 5)
    job = fresh.job(job_id)
    assert job.excluded == {P1.peer_id}
    assert [f["reason"] for f in job.verification_failures] == ["tampered"]


@pytest.mark.parametrize("verification", [None, {}, {"attempts": "x"}, [1, 2]])
def test_a_row_without_a_readable_verification_resumes_with_no_failures(verification):
    core = requester()
    job_id, _ = core.submit(zk_spec(), "bafkreispec", T0)
    fresh = requester()
    fresh.resume(_row(core, job_id, JobState.PENDING, verification), T0 + 5)
    assert fresh.job(job_id).verification_failures == []


def test_a_receipt_that_cannot_be_fetched_still_fails_the_job_at_once():
    core = requester()
    job_id, cmds = core.submit(wasm_spec(), "bafkreispec", T0)
    place(core, job_id, cmds[-1].bid, P1, T0)
    out = core.output_verified(job_id, False, "fetching the output failed", T0 + 2)
    assert events(out) == [JobEvent.FAILED]
    assert only(out, RecordTransition).fields["error"]["code"] == "verification_failed"
    assert core.book.counts(P1.record.account)["caught_wrong"] == 1
    assert [e.kind for e in only(out, RecordTransition).evidence] == ["caught_wrong"]


def _row(core: RequesterCore, job_id: str, state: JobState, verification) -> JobRow:
    job = core.job(job_id)
    agreement = job.agreement
    return JobRow(
        job_id=job_id,
        role="requester",
        state=state,
        spec={
            "spec": msgspec.to_builtins(job.spec),
            "spec_cid": job.spec_cid,
            "deadline": job.deadline,
            "submitted_at": job.submitted_at,
        },
        agreement=None if state is JobState.PENDING else encode_market(agreement),
        provider_peer=job.provider,
        provider_account=None,
        price=None,
        usage=None,
        output_cid=job.output_cid,
        error=None,
        explanation=None,
        created_at=T0,
        updated_at=T0,
        verification=verification,
    )

"""zk claims in the provider's ledger, pure and stored: which jobs are claimed,
what a paid, refused or failed claim does to the job and the channel's credit,
and that a restart finds every claim as it was (docs/ledger.md, "Claims in the
daemon")."""

from __future__ import annotations

import functools

import pytest
from eth_account import Account

from ledger.core import (
    ALREADY_CLAIMED,
    ClaimEvidence,
    ClaimState,
    LedgerConfig,
    LedgerCore,
    LedgerError,
    Outcome,
    Standing,
)
from ledger.store import LedgerStore, SeenClaim
from ledger.vouchers import Domain, SignedVoucher, sign_voucher, verify_voucher

DOMAIN = Domain(31337, "0x" + "e5" * 20)
REQ_KEY, PROV_KEY = bytes([7]) * 32, bytes([9]) * 32
REQ = Account.from_key(REQ_KEY).address
PROV = Account.from_key(PROV_KEY).address
VERIFY = functools.partial(verify_voucher, DOMAIN)
PEER = "12D3KooWRequester"
EVIDENCE = ClaimEvidence("a", b"\x81agreement", tuple(range(1, 9)), (42, 7), b'{"vk": 1}')


def voucher(cumulative: int) -> SignedVoucher:
    return sign_voucher(DOMAIN, REQ_KEY, PROV, cumulative)


def core(**config) -> LedgerCore:
    return LedgerCore(PROV, LedgerConfig(voucher_timeout_s=60, **config))


def late(c: LedgerCore, *jobs: tuple[str, int]) -> LedgerCore:
    """Deliver ``jobs`` (id, price) at 0 and let their vouchers go missing."""
    for job_id, price in jobs:
        c.expect(job_id, REQ, PEER, price, now=0)
    assert c.overdue(60) == [j for j, _ in jobs]
    return c


def pay(c: LedgerCore, job_id: str, cumulative: int, now: float = 70):
    return c.on_payment(job_id, voucher(cumulative), verify=VERIFY, now=now)


def test_only_missing_jobs_without_a_claim_are_candidates_oldest_first():
    c = core()
    c.expect("a", REQ, PEER, 10, now=0)
    c.expect("b", REQ, PEER, 10, now=5)
    assert c.claim_candidates() == []  # not due yet
    c.overdue(100)
    assert c.claim_candidates() == ["a", "b"]
    c.not_claimable("b")  # not a zk job
    assert c.claim_candidates() == ["a"]
    assert c.open_claim("a", 100) is not None
    assert c.claim_candidates() == []
    assert c.open_claim("a", 101) is None  # one claim per job


def test_claims_are_off_when_the_config_says_so():
    assert late(core(zk_claims=False), ("a", 10)).claim_candidates() == []


def test_a_dispute_makes_the_job_missing_at_once_only_from_its_requester():
    c = core()
    c.expect("a", REQ, PEER, 10, now=0)
    assert not c.dispute("a", "12D3KooWSomeoneElse", 1)
    assert not c.dispute("unknown", PEER, 1)
    assert c.dispute("a", PEER, 1)
    assert not c.dispute("a", PEER, 2)  # once
    assert c.claim_candidates() == ["a"] and c.standing(REQ).voucher_missing == 1


def test_a_paid_claim_pays_the_job_and_counts_in_the_credit_like_settled_does():
    c = late(core(), ("a", 10), ("b", 10))
    c.open_claim("a", 61)
    c.claim_sent("a", "0xabc", 62)
    change = c.claim_paid("a", 10, 63, block=5, gas_used=300_000)
    assert change.paid == ("a",) and change.claim.state is ClaimState.PAID
    assert change.claim.amount == 10 and change.claim.block == 5
    assert c.standing(REQ) == Standing(paid=1, voucher_missing=1, claimed=1)
    # the requester's next voucher covers both (it counts a once it saw ProofClaimed)
    short = pay(c, "b", 10)  # not counting a: covers nothing new (the chain settled a)
    assert short.outcome is Outcome.REJECTED and c.delivery("b") is not None
    full = pay(c, "b", 20)
    assert full.outcome is Outcome.ACCEPTED and full.paid == ("b",)
    assert c.standing(REQ) == Standing(paid=2, claimed=1)


def test_a_claim_that_lands_after_a_voucher_paid_the_job_pays_it_once():
    c = late(core(), ("a", 10))
    c.open_claim("a", 61)
    assert pay(c, "a", 10).paid == ("a",)
    change = c.claim_paid("a", 10, 70)
    assert change.paid == () and c.standing(REQ).paid == 1
    assert c.channels()[0]["paid"] == "10"


def test_already_claimed_counts_as_paid():
    c = late(core(), ("a", 10))
    c.open_claim("a", 61)
    change = c.claim_reverted("a", ALREADY_CLAIMED, "claimWithProof refused", 62)
    assert change.claim.state is ClaimState.PAID and change.paid == ("a",)
    assert change.claim.amount == 10


def test_a_refused_claim_writes_the_job_off_unless_the_requester_still_owes_it():
    c = late(core(), ("a", 10), ("b", 7))
    c.open_claim("a", 61)
    c.open_claim("b", 61)
    bad = c.claim_reverted("a", "invalid_proof", "the proof does not verify", 62)
    assert bad.written_off == ("a",) and bad.claim.reason == "invalid_proof"
    poor = c.claim_reverted("b", "insufficient_deposit", "deposit 0", 62)
    assert poor.written_off == () and poor.claim.state is ClaimState.REVERTED
    # a no longer counts as owed nor against the requester; b does, and is not claimed again
    assert c.standing(REQ) == Standing(voucher_missing=1)
    assert c.owed_by(REQ) == 7
    assert c.claim_candidates() == []
    assert c.claim("a").state is ClaimState.REVERTED
    # a late voucher for the written-off job is processed, not "unknown"
    assert pay(c, "a", 17).outcome is Outcome.ACCEPTED
    assert c.delivery("b") is None


def test_unavailable_evidence_fails_the_claim_and_leaves_the_job_missing():
    c = late(core(), ("a", 10))
    claim = c.claim_unavailable("a", "result_gone", "the result is not here", 61)
    assert claim is not None and claim.state is ClaimState.FAILED
    assert c.claim_candidates() == [] and c.standing(REQ).voucher_missing == 1


def test_a_vanished_claim_is_planned_again_and_an_unknown_one_is_an_error():
    c = late(core(), ("a", 10))
    c.open_claim("a", 61)
    c.claim_sent("a", "0xabc", 62)
    again = c.claim_resend("a", "not mined")
    assert again.state is ClaimState.PLANNED and again.tx_hash is None
    assert [x.job_id for x in c.live_claims(ClaimState.PLANNED)] == ["a"]
    with pytest.raises(LedgerError):
        c.claim_paid("nope", 1, 70)


# --- the store -----------------------------------------------------------------------


def test_claims_survive_a_restart_in_every_state(tmp_path):
    path = tmp_path / "ledger.db"
    c = late(core(), ("a", 10), ("b", 10), ("c", 5), ("d", 3))
    with LedgerStore(path) as store:
        for job_id in "abcd":
            d = c.delivery(job_id)
            assert d is not None and store.add_delivery(d)
        store.mark_missing(["a", "b", "c", "d"], 60)
        for job_id in "abc":
            claim = c.open_claim(job_id, 61)
            assert store.add_claim(claim, EVIDENCE if job_id == "a" else None)
        assert not store.add_claim(c.claim("a"), EVIDENCE)  # once
        store.update_claim(c.claim_sent("b", "0xb", 62), PROV, 62)
        store.update_claim(c.claim_paid("a", 10, 63, block=4), PROV, 63, settled=10)
        assert c.settled_seen(REQ, 10)  # the chain's settled, read after the claim
        store.update_claim(c.claim_reverted("c", "invalid_proof", "no", 63), PROV, 63)
        assert store.claim_evidence("a") == EVIDENCE and store.claim_evidence("b") is None
        state = store.load(PROV)
    with LedgerStore(path) as store:  # reopened: the same
        assert store.load(PROV) == state
    again, paid = LedgerCore.restore(PROV, LedgerConfig(), state, now=70)
    assert paid == ()
    assert again.standing(REQ) == c.standing(REQ) == Standing(paid=1, voucher_missing=2, claimed=1)
    # delivered 28, c written off (5), a settled by its claim (10)
    assert again.owed_by(REQ) == c.owed_by(REQ) == 13
    assert again.channels()[0]["settled"] == "10"
    assert [(x.job_id, x.state) for x in again.recent_claims()] == [
        ("a", ClaimState.PAID),
        ("b", ClaimState.SENT),
        ("c", ClaimState.REVERTED),
    ]
    assert again.claim_candidates() == ["d"]  # b has its claim, c is written off
    assert again.knows("c")


def test_a_finished_claim_never_changes_and_is_never_deleted(tmp_path):
    c = late(core(), ("a", 10))
    with LedgerStore(tmp_path / "ledger.db") as store:
        store.add_delivery(c.delivery("a"))
        store.add_claim(c.open_claim("a", 61), EVIDENCE)
        done = c.claim_reverted("a", "binding_mismatch", "no", 62)
        store.update_claim(done, PROV, 62)
        for sql in ("UPDATE claims SET state = 'planned'", "DELETE FROM claims"):
            with pytest.raises(Exception, match="claim"):
                store._db.execute(sql)
        assert store.claim("a").reason == "binding_mismatch"
        assert store.delivery("a").written_off_at == 62


def test_a_ledger_made_before_claims_gains_its_column(tmp_path):
    import sqlite3

    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE deliveries (job_id TEXT PRIMARY KEY, requester TEXT NOT NULL,"
        " requester_peer TEXT NOT NULL, price TEXT NOT NULL, delivered_at REAL NOT NULL,"
        " due_at REAL NOT NULL, paid_at REAL, missing_at REAL, underpaid_at REAL)"
    )
    db.execute("INSERT INTO deliveries VALUES ('a', ?, 'p', '5', 0, 60, NULL, NULL, NULL)", (REQ,))
    db.commit()
    db.close()
    with LedgerStore(path) as store:
        assert [d.job_id for d in store.load(PROV).unpaid] == ["a"]


def test_the_requester_side_keeps_each_proof_claimed_once_and_its_cursor(tmp_path):
    seen = SeenClaim("a" * 64, PROV, REQ, 10, 7, "0x" + "ab" * 32, 1.0)
    with LedgerStore(tmp_path / "ledger.db") as store:
        assert store.cursor("proof_claimed") is None
        assert store.add_seen_claim(seen) and not store.add_seen_claim(seen)
        store.set_cursor("proof_claimed", 8)
        store.set_cursor("proof_claimed", 9)
        assert store.seen_claims() == [seen] and store.cursor("proof_claimed") == 9


# --- the provider core's hook ----------------------------------------------------------


def test_a_result_the_requester_refused_is_disputed_to_the_ledger():
    from protocol.market import Cancel
    from scheduler.provider import DisputePayment
    from tests.unit.test_market_money import P1, T0, R, provider, requester, run_job

    prov = provider(P1)
    job_id, *_ = run_job(requester(), prov, P1)
    refused = Cancel(job_id=job_id, peer_id=R.peer_id, reason="verification_failed")
    # the ledger checks that R is the job's requester (LedgerCore.dispute)
    assert prov.handle_message(R.peer_id, refused, T0 + 5) == [DisputePayment(job_id, R.peer_id)]
    released = Cancel(job_id=job_id, peer_id=R.peer_id, reason="released")
    assert prov.handle_message(R.peer_id, released, T0 + 5) == []
    unpaid = provider(P1, paid=False)
    assert unpaid.handle_message(R.peer_id, refused, T0 + 5) == []


# --- the service's claim loop, with fakes (virtual time) ------------------------------


class FakeClaims:
    """A ClaimPort: ``fail`` transient errors first, receipts held back while ``mining`` is False."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.fail = 0
        self.mining = True
        self.on_chain: set[str] = set()  # jobs the chain has a claim for

    async def evidence(self, job_id: str):
        return None if job_id.startswith("plain") else EVIDENCE

    async def send_claim(self, evidence):
        from ledger.ports import ChainError

        if self.fail:
            self.fail -= 1
            raise ChainError("connection refused (fake)", transient=True)
        self.sent.append(evidence.job_id)
        return f"0x{len(self.sent):064x}"

    async def claim_receipt(self, tx_hash: str):
        from ledger.core import ClaimReceipt

        if not self.mining:
            return None
        return ClaimReceipt(tx_hash, 0, True, 300_000, 10)  # block 0: the fake chain's head

    async def claimed(self, job_id: str) -> bool:
        return job_id in self.on_chain


async def _service(tmp_path, claims: FakeClaims, **config):
    import trio

    from ledger.service import LedgerService
    from ledger.store import InlineLedgerStore
    from ledger.testing import FakeEscrow

    escrow = FakeEscrow()
    escrow.deposit(REQ, 10**21)
    cfg = LedgerConfig(voucher_timeout_s=60, poll_interval_s=1, tx_timeout_s=30, **config)
    svc = LedgerService(
        InlineLedgerStore(LedgerStore(tmp_path / "ledger.db")),
        escrow,
        cfg,
        provider=PROV,
        clock=trio.current_time,
        claims=claims,
    )
    return svc


async def _until(svc, cond) -> None:
    import trio

    with trio.fail_after(3600):
        while not cond():
            await svc.changed.wait()


async def test_the_loop_backs_off_resends_a_vanished_claim_and_skips_one_a_voucher_paid(
    tmp_path, autojump_clock
):
    import trio

    claims = FakeClaims()
    svc = await _service(tmp_path, claims)
    claims.fail = 2  # the chain is down for the first two sends
    claims.mining = False  # and the first transaction is never mined
    async with trio.open_nursery() as nursery:
        await nursery.start(svc.run)
        await svc.expect("a", REQ, PEER, 10)
        await svc.expect("plain", REQ, PEER, 10)  # not a zk job: never a claim
        await _until(svc, lambda: claims.sent == ["a"])
        assert svc.core.health.attempts == 2  # backed off twice, then sent
        assert svc.core.claim("a").state is ClaimState.SENT
        # not mined within tx_timeout_s and not on chain: sent again, then mined
        await _until(svc, lambda: len(claims.sent) == 2)
        claims.mining = True
        await _until(svc, lambda: svc.core.claim("a").state is ClaimState.PAID)
        assert svc.core.claim("plain") is None and svc.counters["claims_not_zk"] == 1
        nursery.cancel_scope.cancel()


async def test_a_planned_claim_a_voucher_paid_first_is_never_sent(tmp_path, autojump_clock):
    import trio

    c = late(core(), ("a", 10))
    with LedgerStore(tmp_path / "ledger.db") as store:  # a crash left the claim planned
        store.add_delivery(c.delivery("a"))
        store.mark_missing(["a"], 60)
        store.add_claim(c.open_claim("a", 61), EVIDENCE)
        store.record_payment(pay(c, "a", 10), 62)  # and a voucher paid the job
    claims = FakeClaims()
    svc = await _service(tmp_path, claims)
    async with trio.open_nursery() as nursery:
        await nursery.start(svc.run)
        await _until(svc, lambda: svc.core.claim("a").state is ClaimState.FAILED)
        assert svc.core.claim("a").reason == "paid_by_voucher" and claims.sent == []
        assert svc.standing(REQ) == Standing(paid=1)
        nursery.cancel_scope.cancel()

"""Money in the market cores: vouchers after verification, the escrow check
before quoting, and agreements bound to the provider's escrow."""

import pytest

from ledger.agreement import AccountKeys
from ledger.vouchers import Domain, SignedVoucher, verify_voucher
from protocol.market import Payment, UsageReport
from scheduler.jobstate import JobEvent
from scheduler.policy import UnitPrices
from scheduler.provider import (
    ExecutionOutcome,
    ExpectPayment,
    ForwardPayment,
    Funds,
    ProviderConfig,
    ProviderCore,
    SendProviderAgreement,
    SendQuote,
    SendRefusal,
    SendResult,
    WithdrawPayment,
)
from scheduler.requester import (
    FetchOutput,
    RequesterConfig,
    RequesterCore,
    SendAgreement,
    SendPayment,
)
from scheduler.store import OwedEntry, RecordTransition
from tests.component.harness import spec
from tests.factories import Peer

R, P1, P2 = Peer(1), Peer(11), Peer(12)
T0 = 1000.0
ESCROW = "0x" + "ab" * 20
DOMAIN = Domain(31337, ESCROW)


def requester(**config) -> RequesterCore:
    cfg = RequesterConfig(peer_id=R.peer_id, identity=R.record, verifying_contract=ESCROW, **config)
    return RequesterCore(cfg, AccountKeys(R.account_key, DOMAIN))


def provider(peer: Peer, *, funds=None, paid=True, escrow=ESCROW) -> ProviderCore:
    cfg = ProviderConfig(
        peer_id=peer.peer_id,
        identity=peer.record,
        cpu=4,
        memory_mb=4096,
        prices=UnitPrices(cpu_core_hour=3600, memory_gb_hour=0),
        verifying_contract=escrow,
        paid=paid,
    )
    rich = Funds(available=10**24, owes=0)
    return ProviderCore(
        cfg, AccountKeys(peer.account_key, Domain(31337, escrow)), funds=funds or (lambda a: rich)
    )


def only(cmds, kind):
    found = [c for c in cmds if isinstance(c, kind)]
    assert len(found) == 1, cmds
    return found[0]


def run_job(core, prov, peer, now=T0):
    """Submit, quote, agree, run and deliver one job; the requester verifies it."""
    job_id, cmds = core.submit(spec(), f"bafkreispec{now}", now)
    q = only(prov.handle_bid(cmds[1].bid, now), SendQuote).message
    core.handle_message(peer.peer_id, q, now)
    offer = only(core.handle_timer(now + 0.5), SendAgreement).message
    signed = only(prov.handle_message(R.peer_id, offer, now + 0.5), SendProviderAgreement)
    core.handle_message(peer.peer_id, signed.message, now + 0.6)
    prov.execution_finished(job_id, _outcome(), now + 1)
    delivered = prov.output_stored(job_id, "bafyout", now + 1)
    result = only(delivered, SendResult).message
    got = core.handle_message(peer.peer_id, result, now + 1.1)
    only(got, FetchOutput)
    verified = core.output_verified(job_id, True, "", now + 1.2)
    return job_id, q, delivered, verified


def _outcome():
    return ExecutionOutcome(
        exit_code=0,
        usage=UsageReport(wall_ms=5),
        stdout_sha256=b"\0" * 32,
        stderr_sha256=b"\0" * 32,
    )


def test_a_verified_job_sends_the_channels_cumulative_voucher_after_the_owed_row():
    core, prov = requester(), provider(P1)
    job_id, quote, delivered, verified = run_job(core, prov, P1)
    owed_at = next(i for i, c in enumerate(verified) if isinstance(c, RecordTransition) and c.owed)
    pay_at = next(i for i, c in enumerate(verified) if isinstance(c, SendPayment))
    assert owed_at < pay_at  # persisted before it is promised
    pay = verified[pay_at]
    assert pay.peer_id == P1.peer_id
    assert pay.message.job_id == job_id and pay.message.cumulative == quote.price_total
    voucher = SignedVoucher(
        R.record.account, P1.record.account, int(quote.price_total), pay.message.signature
    )
    assert verify_voucher(DOMAIN, voucher)
    assert not verify_voucher(Domain(1, ESCROW), voucher)  # another chain
    # the provider expected it before the result went out, and hands it on
    expect = only(delivered, ExpectPayment)
    assert delivered.index(expect) < [type(c) for c in delivered].index(SendResult)
    assert (expect.job_id, expect.requester_account, expect.price) == (
        job_id,
        R.record.account,
        int(quote.price_total),
    )
    fwd = only(prov.handle_message(R.peer_id, pay.message, T0 + 2), ForwardPayment)
    assert fwd.source == R.peer_id and fwd.payment == pay.message


def test_cumulative_grows_per_channel_and_restarts_from_the_owed_rows():
    core, p1, p2 = requester(), provider(P1), provider(P2)
    totals = []
    for i, (prov, peer) in enumerate([(p1, P1), (p1, P1), (p2, P2), (p1, P1)]):
        _, q, _, verified = run_job(core, prov, peer, now=T0 + 10 * i)
        totals.append((peer.peer_id, int(only(verified, SendPayment).message.cumulative)))
    price = totals[0][1]
    assert totals == [
        (P1.peer_id, price),
        (P1.peer_id, 2 * price),
        (P2.peer_id, price),
        (P1.peer_id, 3 * price),
    ]
    # a restart recomputes the channels from the store's owed rows and sends the
    # latest voucher of recently paid channels again
    owed = [
        OwedEntry("a" * 64, P1.peer_id, P1.record.account, str(price), T0),
        OwedEntry("b" * 64, P1.peer_id, P1.record.account, str(price), T0 + 5),
        OwedEntry("c" * 64, P2.peer_id, P2.record.account, str(price), T0 - 10**6),
    ]
    fresh = requester()
    resent = fresh.load_channels(owed, T0 + 10)
    assert fresh.channels == {P1.record.account: 2 * price, P2.record.account: price}
    assert [(c.peer_id, c.message.job_id, c.message.cumulative) for c in resent] == [
        (P1.peer_id, "b" * 64, str(2 * price))
    ]
    assert requester(pay=False).load_channels(owed, T0 + 10) == []


def test_no_voucher_for_a_failed_verification_or_when_payments_are_off():
    core = requester()
    job_id, cmds = core.submit(spec(), "bafkreispec", T0)
    assert core.output_verified(job_id, True, "", T0) == []  # not verifying: stale
    off = requester(pay=False)
    _, _, _, verified = run_job(off, provider(P1), P1)
    assert not [c for c in verified if isinstance(c, SendPayment)]
    assert [c.event for c in verified if isinstance(c, RecordTransition)] == [JobEvent.VERIFIED]


@pytest.mark.parametrize(
    ("funds", "refused"),
    [
        (Funds(available=10**18, owes=0), False),
        (Funds(available=60, owes=0), False),  # exactly the price
        (Funds(available=59, owes=0), True),
        (Funds(available=100, owes=41), True),  # owes what is left
        (None, True),  # unknown: the chain could not be read
    ],
)
def test_the_escrow_must_cover_what_is_owed_plus_the_job(funds, refused):
    core = requester()
    prov = provider(P1, funds=lambda account: funds)
    _, cmds = core.submit(spec(), "bafkreispec", T0)  # 1 cpu x 60 s at 3600/h = 60
    out = prov.handle_bid(cmds[1].bid, T0)
    if not refused:
        assert only(out, SendQuote).message.price_total == "60"
        return
    r = only(out, SendRefusal).message
    assert r.reason == "insufficient_escrow" and r.detail
    assert prov.counters["refused_insufficient_escrow"] == 1
    # the requester's explanation names it
    core.handle_message(P1.peer_id, r, T0)
    answers = core.explain(r.job_id, T0 + 0.1)["answers"]
    assert answers[0]["reason"] == "insufficient_escrow"


def test_running_jobs_count_against_the_escrow():
    seen = []

    def funds(account):
        seen.append(account)
        return Funds(available=90, owes=0)

    core, prov = requester(), provider(P1, funds=funds)
    j1, c1 = core.submit(spec(), "bafkreispec1", T0)
    q = only(prov.handle_bid(c1[1].bid, T0), SendQuote).message
    core.handle_message(P1.peer_id, q, T0)
    offer = only(core.handle_timer(T0 + 0.5), SendAgreement).message
    only(prov.handle_message(R.peer_id, offer, T0 + 0.5), SendProviderAgreement)
    _, c2 = core.submit(spec(), "bafkreispec2", T0 + 1)
    r = only(prov.handle_bid(c2[1].bid, T0 + 1), SendRefusal).message
    assert r.reason == "insufficient_escrow" and "owed here 60" in r.detail
    assert set(seen) == {R.record.account}


def test_an_unpaid_provider_neither_checks_escrow_nor_expects_vouchers():
    core = requester(pay=False)
    prov = provider(P1, funds=lambda a: None, paid=False)
    _, _, delivered, _ = run_job(core, prov, P1)
    assert not [c for c in delivered if isinstance(c, ExpectPayment)]
    pay = Payment(job_id="a" * 64, peer_id=R.peer_id, cumulative="1", signature=b"x")
    assert prov.handle_message(R.peer_id, pay, T0) == []
    assert prov.counters["payment_unexpected"] == 1


def test_an_agreement_for_another_escrow_or_chain_is_declined():
    core, prov = requester(), provider(P1, escrow="0x" + "cd" * 20)
    job_id, cmds = core.submit(spec(), "bafkreispec", T0)
    q = only(prov.handle_bid(cmds[1].bid, T0), SendQuote).message
    core.handle_message(P1.peer_id, q, T0)
    offer = only(core.handle_timer(T0 + 0.5), SendAgreement).message
    r = only(prov.handle_message(R.peer_id, offer, T0 + 0.5), SendRefusal).message
    assert r.reason == "bad_agreement" and "escrow" in r.detail


def test_a_voucher_is_sent_again_on_a_schedule_and_a_newer_one_restarts_it():
    core, prov = requester(), provider(P1)
    job_id, q, _, verified = run_job(core, prov, P1)
    first = only(verified, SendPayment).message
    done = T0 + 1.2  # when it was verified
    assert core.next_deadline() == done + 5
    sent = []
    for delay in (5, 30, 120):
        cmds = core.handle_timer(done + delay)
        sent.append(only(cmds, SendPayment).message)
    assert sent == [first, first, first]  # the same voucher: pays nothing twice
    assert core.counters["vouchers_resent"] == 3
    assert core.next_deadline() is None  # and then it stops
    assert core.handle_timer(done + 10_000) == []
    # a newer job on the channel sends the new total and starts the schedule over
    _, _, _, verified = run_job(core, prov, P1, now=T0 + 500)
    second = only(verified, SendPayment).message
    assert int(second.cumulative) == 2 * int(first.cumulative)
    assert core.next_deadline() == T0 + 501.2 + 5
    assert only(core.handle_timer(T0 + 506.2), SendPayment).message == second


def test_a_job_cancelled_before_its_result_went_out_withdraws_the_expected_voucher():
    from protocol.market import Cancel

    core, prov = requester(), provider(P1)
    job_id, cmds = core.submit(spec(), "bafkreispec", T0)
    q = only(prov.handle_bid(cmds[1].bid, T0), SendQuote).message
    core.handle_message(P1.peer_id, q, T0)
    offer = only(core.handle_timer(T0 + 0.5), SendAgreement).message
    only(prov.handle_message(R.peer_id, offer, T0 + 0.5), SendProviderAgreement)
    replaced = Cancel(job_id=job_id, peer_id=R.peer_id, reason="replaced")
    out = prov.handle_message(R.peer_id, replaced, T0 + 5)
    assert only(out, WithdrawPayment).job_id == job_id
    unpaid = provider(P1, paid=False)
    assert not any(
        isinstance(c, WithdrawPayment) for c in unpaid.handle_message(R.peer_id, replaced, T0)
    )


def test_the_ledger_forgets_a_withdrawn_delivery_and_never_flags_it():
    from ledger.core import LedgerConfig, LedgerCore

    core = LedgerCore("0x" + "22" * 20, LedgerConfig(voucher_timeout_s=10))
    requester_account = "0x" + "11" * 20
    core.expect("a" * 64, requester_account, "peer", 5, now=0)
    core.expect("b" * 64, requester_account, "peer", 7, now=0)
    assert core.owed_by(requester_account) == 12
    assert core.withdraw("a" * 64).price == 5
    assert core.withdraw("a" * 64) is None  # once
    assert core.owed_by(requester_account) == 7
    assert core.overdue(100) == ["b" * 64]

"""The ledger's pure core: the credit rule, voucher_missing, batching and back-off."""

from __future__ import annotations

import functools
import math
import random

import pytest
from eth_account import Account
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.core import (
    SKIP_BAD_SIGNATURE,
    SKIP_INSUFFICIENT_DEPOSIT,
    SKIP_NOT_INCREASE,
    BatchState,
    GasPacker,
    LedgerConfig,
    LedgerCore,
    LedgerError,
    Outcome,
    PaymentReason,
    Standing,
    backoff_delay,
    send_gas,
)
from ledger.ports import Settled, SettleReceipt, Skipped
from ledger.vouchers import Domain, SignedVoucher, sign_voucher, verify_voucher

DOMAIN = Domain(31337, "0x" + "e5" * 20)
REQ_KEY, OTHER_KEY, PROV_KEY = bytes([7]) * 32, bytes([8]) * 32, bytes([9]) * 32
REQ = Account.from_key(REQ_KEY).address
OTHER = Account.from_key(OTHER_KEY).address
PROV = Account.from_key(PROV_KEY).address
VERIFY = functools.partial(verify_voucher, DOMAIN)
PEER = "12D3KooWRequester"


def voucher(cumulative: int, key: bytes = REQ_KEY, provider: str = PROV) -> SignedVoucher:
    return sign_voucher(DOMAIN, key, provider, cumulative)


def core(**config) -> LedgerCore:
    return LedgerCore(PROV, LedgerConfig(**config))


def deliver(c: LedgerCore, *prices: int, requester: str = REQ, now: float = 0.0) -> list[str]:
    ids = []
    for price in prices:
        job_id = f"job{len(c._jobs) + len(c._recent_paid)}"
        c.expect(job_id, requester, PEER, price, now=now)
        ids.append(job_id)
    return ids


def pay(c: LedgerCore, job_id: str, cumulative: int, now: float = 1.0, **kw):
    return c.on_payment(job_id, voucher(cumulative, **kw), verify=VERIFY, now=now)


# --- the credit rule ------------------------------------------------------------


def test_a_payment_that_covers_its_job_pays_it_and_is_kept():
    c = core()
    (a,) = deliver(c, 10)
    v = pay(c, a, 10)
    assert (v.outcome, v.reason, v.paid) == (Outcome.ACCEPTED, PaymentReason.PAID, (a,))
    assert v.kept is not None and v.kept.cumulative == 10
    assert c.standing(REQ) == Standing(paid=1)


def test_payments_out_of_order_and_twice_pay_each_job_exactly_once():
    c = core()
    a, b = deliver(c, 10, 5)
    # b's payment (the later, higher total) arrives first: it covers a as well
    first = pay(c, b, 15)
    assert first.outcome is Outcome.ACCEPTED and first.paid == (b, a)
    late = pay(c, a, 10)
    assert (late.outcome, late.reason, late.paid, late.kept) == (
        Outcome.IGNORED,
        PaymentReason.STALE,
        (),
        None,
    )
    again = pay(c, b, 15)
    assert again.outcome is Outcome.IGNORED and again.paid == ()
    assert c._channels[REQ].paid_total == 15
    assert c.standing(REQ) == Standing(paid=2)


def test_the_named_job_is_paid_first_then_the_others_in_delivery_order():
    c = core()
    a, b, x = deliver(c, 10, 10, 10)
    v = pay(c, x, 20)  # covers two of three: x (named) and then a (first delivered)
    assert v.paid == (x, a)
    assert c.delivery(b) is not None and c.delivery(b).paid_at is None


def test_a_later_voucher_covers_an_earlier_lost_one():
    c = core()
    a, b = deliver(c, 3, 4)
    # a's payment (cumulative 3) was lost; b's carries 7
    assert pay(c, b, 7).paid == (b, a)


def test_first_fit_skips_a_job_too_big_for_the_credit():
    c = core()
    big, small, named = deliver(c, 100, 10, 10)
    assert pay(c, named, 20).paid == (named, small)
    assert c.delivery(big) is not None


def test_a_stale_total_leaves_its_job_unpaid_and_flagged_underpaid():
    c = core()
    a, b = deliver(c, 10, 10)
    assert pay(c, a, 10).paid == (a,)
    stale = pay(c, b, 10)  # the requester resent the old total for the new job
    assert (stale.outcome, stale.reason, stale.underpaid) == (
        Outcome.REJECTED,
        PaymentReason.STALE,
        b,
    )
    assert c.standing(REQ) == Standing(paid=1, underpaid=1)
    # a covering voucher clears the flag
    assert pay(c, b, 20).paid == (b,)
    assert c.standing(REQ) == Standing(paid=2)


def test_a_higher_total_that_does_not_cover_the_job_is_kept_but_underpaid():
    c = core()
    (a,) = deliver(c, 10)
    v = pay(c, a, 6)
    assert (v.outcome, v.reason, v.paid, v.underpaid) == (
        Outcome.REJECTED,
        PaymentReason.UNDERPAID,
        (),
        a,
    )
    assert v.kept is not None and v.kept.cumulative == 6  # still worth settling
    again = pay(c, a, 8)
    assert again.reason is PaymentReason.UNDERPAID and again.underpaid is None  # flagged once


def test_bad_signature_wrong_channel_unknown_job_are_rejected_and_not_kept():
    c = core()
    (a,) = deliver(c, 10)
    forged = SignedVoucher(REQ, PROV, 10, voucher(10, key=OTHER_KEY).signature)
    v = c.on_payment(a, forged, verify=VERIFY, now=1.0)
    assert (v.outcome, v.reason, v.kept) == (Outcome.REJECTED, PaymentReason.BAD_SIGNATURE, None)
    assert pay(c, a, 10, provider=OTHER).reason is PaymentReason.WRONG_CHANNEL
    assert pay(c, a, 10, key=OTHER_KEY).reason is PaymentReason.WRONG_CHANNEL
    assert pay(c, "nope", 10).reason is PaymentReason.UNKNOWN_JOB
    assert c._channels[REQ].latest is None
    # a stale payment is refused before its signature costs an ecrecover
    assert pay(c, a, 10).paid == (a,)
    calls = []
    c.on_payment(a, forged, verify=lambda v: calls.append(v) or True, now=2.0)
    assert calls == []


def test_a_verifier_that_raises_counts_as_a_bad_signature():
    c = core()
    (a,) = deliver(c, 10)

    def boom(_):
        raise RecursionError("hostile")

    assert c.on_payment(a, voucher(10), verify=boom, now=1.0).reason is PaymentReason.BAD_SIGNATURE


@pytest.mark.parametrize(
    ("job_id", "peer", "cumulative", "signature", "reason"),
    [
        (None, PEER, "10", b"\0" * 65, PaymentReason.MALFORMED),
        ("x" * 129, PEER, "10", b"\0" * 65, PaymentReason.MALFORMED),
        ("unknown", PEER, "10", b"\0" * 65, PaymentReason.UNKNOWN_JOB),
        ("job0", "12D3KooWSomeoneElse", "10", b"\0" * 65, PaymentReason.WRONG_CHANNEL),
        ("job0", PEER, "-1", b"\0" * 65, PaymentReason.MALFORMED),
        ("job0", PEER, "1e3", b"\0" * 65, PaymentReason.MALFORMED),
        ("job0", PEER, "٣", b"\0" * 65, PaymentReason.MALFORMED),  # a non-ASCII digit
        ("job0", PEER, str(2**256), b"\0" * 65, PaymentReason.MALFORMED),
        ("job0", PEER, "9" * 5000, b"\0" * 65, PaymentReason.MALFORMED),
        ("job0", PEER, 10, b"\0" * 65, PaymentReason.MALFORMED),
        ("job0", PEER, "10", b"\0" * 64, PaymentReason.MALFORMED),
        ("job0", PEER, "10", "00" * 65, PaymentReason.MALFORMED),
        ("job0", PEER, "10", b"\0" * 65, PaymentReason.BAD_SIGNATURE),
    ],
)
def test_hostile_wire_payments_are_rejected_with_a_reason(
    job_id, peer, cumulative, signature, reason
):
    c = core()
    deliver(c, 10)
    v = c.on_wire_payment(job_id, peer, cumulative, signature, verify=VERIFY, now=1.0)
    assert (v.outcome, v.reason, v.kept, v.paid) == (Outcome.REJECTED, reason, None, ())


def test_a_wire_payment_is_checked_against_the_jobs_channel():
    c = core()
    (a,) = deliver(c, 10)
    good = voucher(10)
    v = c.on_wire_payment(a, PEER, "10", good.signature, verify=VERIFY, now=1.0)
    assert v.outcome is Outcome.ACCEPTED and v.kept == good


def test_malformed_vouchers_never_raise():
    c = core()
    (a,) = deliver(c, 10)
    for bad in [
        SignedVoucher(REQ, PROV, -1, b"\0" * 65),
        SignedVoucher(REQ, PROV, True, b"\0" * 65),
        SignedVoucher("0xnot", PROV, 1, b"\0" * 65),
        SignedVoucher(REQ, PROV.lower().replace("0x", "0X"), 1, b"\0" * 65),
        SignedVoucher(REQ, PROV, 1, bytearray(65)),
    ]:
        assert c.on_payment(a, bad, verify=VERIFY, now=1.0).reason is PaymentReason.MALFORMED


def test_a_replayed_delivery_is_a_no_op_and_a_zero_price_is_paid_at_once():
    c = core()
    assert c.expect("j", REQ, PEER, 5, now=0)[0] is not None
    assert c.expect("j", REQ, PEER, 5, now=1) == (None, ())
    assert c.owed_by(REQ) == 5
    free, paid = c.expect("free", REQ, PEER, 0, now=2)
    assert free is not None and paid == ("free",)
    with pytest.raises(ValueError):
        c.expect("huge", REQ, PEER, 2**256, now=0)


# --- voucher_missing -------------------------------------------------------------


def test_an_unpaid_job_is_voucher_missing_after_the_timeout_and_cleared_by_payment():
    c = core(voucher_timeout_s=60)
    (a,) = deliver(c, 10, now=100)
    assert c.next_timer(100) == 160
    assert c.overdue(159.9) == []
    assert c.overdue(160) == [a]
    assert c.overdue(161) == []  # flagged once
    assert c.standing(REQ) == Standing(voucher_missing=1)
    assert [d.job_id for d in c.missing()] == [a]
    assert pay(c, a, 10, now=200).paid == (a,)
    assert c.standing(REQ) == Standing(paid=1)
    assert c.missing() == []


def test_owed_by_counts_delivered_and_running_minus_settled():
    c = core()
    deliver(c, 10, 20)
    assert c.owed_by(REQ) == 30
    assert c.owed_by(REQ, running=5) == 35
    assert c.owed_by(REQ.lower(), running=5) == 35
    assert c.owed_by(OTHER, running=7) == 7
    assert c.owed_by("0xgarbage", running=1) == 1
    c.settled_seen(REQ, 25)
    assert c.owed_by(REQ) == 5


# --- batching -----------------------------------------------------------------------


def _channels(c: LedgerCore, n: int, now: float = 0.0) -> list[str]:
    """n requesters, each with one delivered and paid job of price 10."""
    keys = [bytes([40 + i]) * 32 for i in range(n)]
    for i, key in enumerate(keys):
        req = Account.from_key(key).address
        c.expect(f"j{i}", req, PEER, 10, now=now)
        v = c.on_payment(f"j{i}", voucher(10, key=key), verify=VERIFY, now=now)
        assert v.outcome is Outcome.ACCEPTED
    return [Account.from_key(k).address for k in keys]


def test_a_batch_is_due_when_the_oldest_pending_voucher_is_old_enough():
    c = core(batch_max_age_s=30, batch_max_vouchers=50)
    _channels(c, 2, now=10)
    assert len(c.pending_vouchers(10)) == 2
    assert not c.should_settle(39.9)
    assert c.settle_due_at(10) == 40
    assert c.should_settle(40)


def test_a_batch_is_due_at_once_when_enough_vouchers_are_pending():
    c = core(batch_max_age_s=30, batch_max_vouchers=3)
    _channels(c, 2, now=0)
    assert not c.should_settle(1)
    _channels_more = [bytes([90]) * 32]
    req = Account.from_key(_channels_more[0]).address
    c.expect("x", req, PEER, 10, now=1)
    c.on_payment("x", voucher(10, key=_channels_more[0]), verify=VERIFY, now=1)
    assert c.should_settle(1)


def test_only_the_latest_voucher_per_channel_is_pending_and_not_twice():
    c = core()
    a, b = deliver(c, 10, 10)
    pay(c, a, 10)
    pay(c, b, 20)
    assert [v.cumulative for v in c.pending_vouchers(0)] == [20]
    batch = c.open_batch(c.pending_vouchers(0), gas=100_000, now=0)
    assert c.pending_vouchers(0) == []  # in flight
    (x,) = deliver(c, 5)
    pay(c, x, 25)
    assert [v.cumulative for v in c.pending_vouchers(0)] == [25]  # the increase
    assert batch.state is BatchState.PLANNED


def _mined(batch, status=True, block=1, gas_used=90_000, settled=(), skipped=()):
    return SettleReceipt("0xabc", block, status, gas_used, list(settled), list(skipped))


def test_batch_lifecycle_to_final_after_the_confirmations():
    c = core(confirmations=3)
    (a,) = deliver(c, 10)
    pay(c, a, 10)
    b = c.open_batch(c.pending_vouchers(0), gas=100_000, now=0)
    c.batch_sent(b.id, "0xabc", now=1)
    assert c.batch_receipt(b.id, None, head=5, now=2, rand=0.5) is None  # not mined yet
    rc = _mined(b, block=6, settled=[Settled(REQ, PROV, 10, 10)])
    change = c.batch_receipt(b.id, rc, head=6, now=3, rand=0.5)
    assert change is not None and change.batch.state is BatchState.MINED and change.settled == ()
    assert c.batch_receipt(b.id, rc, head=7, now=4, rand=0.5) is None  # 2 of 3
    change = c.batch_receipt(b.id, rc, head=8, now=5, rand=0.5)
    assert change.batch.state is BatchState.FINAL and change.settled == ((REQ, 10),)
    assert c.pending_vouchers(6) == [] and c.in_flight() == []
    assert c.owed_by(REQ) == 0


def test_a_mined_batch_that_leaves_the_chain_makes_its_vouchers_pending_again():
    c = core(confirmations=2)
    (a,) = deliver(c, 10)
    pay(c, a, 10)
    b = c.open_batch(c.pending_vouchers(0), gas=100_000, now=0)
    c.batch_sent(b.id, "0xabc", now=0)
    c.batch_receipt(b.id, _mined(b, block=1), head=1, now=1, rand=0)
    change = c.batch_receipt(b.id, None, head=1, now=2, rand=0)
    assert change.batch.state is BatchState.DROPPED and "reorg" in change.batch.error
    assert [v.cumulative for v in c.pending_vouchers(2)] == [10]
    assert c.health.attempts == 0  # a reorg is not the chain failing


def test_a_sent_batch_never_mined_is_dropped_after_the_tx_timeout():
    c = core(tx_timeout_s=100)
    (a,) = deliver(c, 10)
    pay(c, a, 10)
    b = c.open_batch(c.pending_vouchers(0), gas=100_000, now=0)
    c.batch_sent(b.id, "0xabc", now=10)
    assert c.batch_receipt(b.id, None, head=1, now=109, rand=0) is None
    assert c.batch_receipt(b.id, None, head=1, now=110, rand=0).batch.state is BatchState.DROPPED


def test_a_reverted_batch_is_pending_again_after_a_back_off():
    c = core(retry_base_s=1, retry_max_s=60, batch_max_age_s=0)
    (a,) = deliver(c, 10)
    pay(c, a, 10)
    b = c.open_batch(c.pending_vouchers(0), gas=100_000, now=0)
    c.batch_sent(b.id, "0xabc", now=0)
    change = c.batch_receipt(b.id, _mined(b, status=False), head=1, now=5, rand=0.0)
    assert change.batch.state is BatchState.REVERTED and "reverted" in change.batch.error
    assert c.health.attempts == 1 and c.health.retry_at == 5.5
    assert not c.should_settle(5.4) and c.should_settle(5.5)


def test_skips_settle_what_the_chain_has_and_hold_what_cannot_pay_yet():
    c = core(retry_max_s=60)
    (a,) = deliver(c, 10)
    pay(c, a, 10)
    b = c.open_batch(c.pending_vouchers(0), gas=100_000, now=0)
    c.batch_sent(b.id, "0xabc", now=0)
    rc = _mined(b, skipped=[Skipped(REQ, PROV, 10, SKIP_INSUFFICIENT_DEPOSIT)])
    c.batch_receipt(b.id, rc, head=1, now=1, rand=0)
    assert c.pending_vouchers(1) == [] and c.pending_vouchers(61) != []  # held a while
    assert c.next_timer(1) == 61
    (x,) = deliver(c, 5)
    pay(c, x, 15, now=2)
    assert [v.cumulative for v in c.pending_vouchers(2)] == [15]  # a newer one goes at once

    b = c.open_batch(c.pending_vouchers(2), gas=100_000, now=2)
    c.batch_sent(b.id, "0xdef", now=2)
    rc = _mined(b, skipped=[Skipped(REQ, PROV, 15, SKIP_NOT_INCREASE)])
    change = c.batch_receipt(b.id, rc, head=2, now=3, rand=0)
    assert change.settled == ((REQ, 15),)  # the chain already has it
    assert c.pending_vouchers(100) == []


def test_a_voucher_the_escrow_calls_badly_signed_waits_for_a_newer_one():
    c = core()
    (a,) = deliver(c, 10)
    pay(c, a, 10)
    b = c.open_batch(c.pending_vouchers(0), gas=100_000, now=0)
    c.batch_sent(b.id, "0xabc", now=0)
    rc = _mined(b, skipped=[Skipped(REQ, PROV, 10, SKIP_BAD_SIGNATURE)])
    c.batch_receipt(b.id, rc, head=1, now=1, rand=0)
    assert c.pending_vouchers(10**9) == [] and c.channels()[0]["last_skip"] == "bad_signature"


def test_a_send_that_failed_drops_the_batch_and_backs_off():
    c = core(retry_base_s=2)
    (a,) = deliver(c, 10)
    pay(c, a, 10)
    b = c.open_batch(c.pending_vouchers(0), gas=100_000, now=0)
    change = c.batch_failed(b.id, "unreachable", now=0, rand=1.0)
    assert change.batch.state is BatchState.DROPPED
    assert c.health.retry_at == 2.0 and c.pending_vouchers(0) != []
    with pytest.raises(LedgerError):
        c.batch_sent(b.id, "0x1", now=1)  # finished batches do not change


def test_backoff_doubles_up_to_the_cap_with_bounded_jitter():
    assert [backoff_delay(n, 1, 60, 1.0) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert backoff_delay(3, 1, 60, 0.0) == 2.0
    assert backoff_delay(10**6, 1, 60, 0.5) == 45.0
    rng = random.Random(1)
    for n in range(1, 20):
        d = backoff_delay(n, 1, 60, rng.random())
        assert min(2 ** (n - 1), 60) / 2 <= d <= min(2 ** (n - 1), 60)


def test_config_is_validated_with_a_hint():
    with pytest.raises(LedgerError) as e:
        LedgerConfig(batch_gas_limit=16_777_216)
    assert e.value.code == "config_invalid" and "EIP-7825" in str(e.value)
    with pytest.raises(LedgerError):
        LedgerConfig(confirmations=0)
    assert send_gas(15_000_000) == 16_500_000 and send_gas(16_000_000) == 16_777_216


# --- gas sizing -----------------------------------------------------------------------


def pack(count: int, limit: int, gas) -> tuple[tuple[int, int], int]:
    p = GasPacker(count, limit)
    while (n := p.next_probe()) is not None:
        assert 1 <= n <= count
        p.observe(n, gas(n))
    return p.result(), p.probes


def test_everything_that_fits_takes_one_probe():
    assert pack(10, 15_000_000, lambda n: 21_000 + 62_000 * n) == ((10, 641_000), 1)


def test_more_vouchers_than_fit_are_cut_at_the_largest_prefix_under_the_limit():
    (n, gas), probes = pack(1000, 15_000_000, lambda n: 21_000 + 62_000 * n)
    assert n == (15_000_000 - 21_000) // 62_000 and gas <= 15_000_000
    assert probes <= 4
    assert pack(5, 100, lambda n: 1000) == ((0, 0), 2)  # none fit: all, then one
    assert pack(0, 100, lambda n: 1) == ((0, 0), 0)


@settings(max_examples=200, deadline=None)
@given(
    count=st.integers(1, 1024),
    limit=st.integers(100_000, 15_000_000),
    low=st.integers(1_000, 100_000),
    spread=st.integers(0, 100_000),
    seed=st.integers(0, 2**32),
)
def test_gas_packer_finds_the_longest_fitting_prefix_for_any_increasing_gas(
    count, limit, low, spread, seed
):
    rng, prefix = random.Random(seed), [21_000]
    for _ in range(count):
        prefix.append(prefix[-1] + low + rng.randrange(spread + 1))
    (n, gas), probes = pack(count, limit, lambda k: prefix[k])
    best = max((k for k in range(count + 1) if prefix[k] <= limit), default=0)
    assert n == best and (n == 0 or gas == prefix[n])
    assert probes <= 2 * math.ceil(math.log2(count + 1)) + 2


# --- the credit rule, for any arrival order ---------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    prices=st.lists(st.integers(0, 50), min_size=1, max_size=8),
    data=st.data(),
)
def test_honest_payments_in_any_order_with_losses_and_duplicates_pay_each_job_once(prices, data):
    c = core()
    ids = deliver(c, *prices)
    totals = [sum(prices[: i + 1]) for i in range(len(prices))]  # the requester's cumulative
    signed = {t: voucher(t) for t in set(totals)}
    order = data.draw(st.lists(st.sampled_from(range(len(ids))), max_size=16))
    paid: list[str] = []
    for i in order:
        v = c.on_payment(ids[i], signed[totals[i]], verify=lambda _: True, now=1.0)
        paid += v.paid
        ch = c._channels[REQ]
        assert ch.paid_total <= ch.latest.cumulative if ch.latest else ch.paid_total == 0
    zero = [j for j, p in zip(ids, prices, strict=True) if p == 0]
    assert len(set(paid)) == len(paid) and not set(paid) & set(zero)  # once each
    # the last job's payment covers everything
    last = c.on_payment(ids[-1], signed[totals[-1]], verify=lambda _: True, now=2.0)
    assert set(paid) | set(last.paid) | set(zero) == set(ids)
    assert c._channels[REQ].paid_total == totals[-1]

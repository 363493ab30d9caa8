"""The market services with money: vouchers flow to the providers that earned
them, and a provider reads a requester's escrow before it quotes.

In virtual time over the fakes; the ledger is ``scheduler.testing.FakeLedger``
(the real one is tested in tests/component/test_ledger_service.py).
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from ledger.vouchers import Domain, SignedVoucher, verify_voucher
from scheduler.jobstate import JobState
from scheduler.testing import FakeLedger
from tests.component.harness import Market, spec

pytestmark = pytest.mark.trio
RICH = 10**24


@pytest.fixture
def autojump_clock():
    return trio.testing.MockClock(autojump_threshold=0)


async def test_every_verified_job_pays_its_provider_through_a_cumulative_voucher(
    autojump_clock, tmp_path
):
    async with trio.open_nursery() as nursery:
        market = Market(nursery, tmp_path)
        req_peer_account = None
        ledgers = {}
        providers = []
        for n in (11, 12, 13):
            ledger = FakeLedger()
            node = await market.add_provider(n, cpu=2, ledger=ledger, paid=True)
            ledgers[node.peer_id] = ledger
            providers.append(node)
        req = await market.add_requester()
        req_peer_account = req.peer.record.account
        for ledger in ledgers.values():
            ledger.balances[req_peer_account] = RICH
        jobs = [await req.service.submit(spec(), f"bafkreispec{i}") for i in range(12)]
        for job_id in jobs:
            assert await market.wait_state(job_id, JobState.COMPLETED) is JobState.COMPLETED
        owed = req.store.owed()
        for p in providers:
            ledger = ledgers[p.peer_id]
            mine = [e for e in owed if e.provider_peer == p.peer_id]
            total = sum(int(e.amount) for e in mine)
            await market.wait_for(
                p, lambda ledger=ledger, mine=mine: len(ledger.payments) == len(mine)
            )
            # one expectation and one payment per job it ran; the totals climb to
            # exactly what the requester's store says it owes this provider
            assert sorted(e[0] for e in ledger.expected) == sorted(e.job_id for e in mine)
            cumulative = [int(pay.cumulative) for _, pay in ledger.payments]
            assert cumulative == sorted(cumulative) and cumulative[-1] == total
            for source, pay in ledger.payments:
                assert source == req.peer_id
                voucher = SignedVoucher(
                    req_peer_account, p.peer.record.account, int(pay.cumulative), pay.signature
                )
                assert verify_voucher(Domain(31337, "0x" + "00" * 20), voucher)
            # the requester's escrow was read once, then cached
            assert ledger.reads == [req_peer_account]
        nursery.cancel_scope.cancel()


async def test_a_requester_without_escrow_is_refused_and_told_why(autojump_clock, tmp_path):
    async with trio.open_nursery() as nursery:
        market = Market(nursery, tmp_path)
        poor = FakeLedger()
        await market.add_provider(11, ledger=poor, paid=True)
        req = await market.add_requester()
        poor.balances[req.peer.record.account] = 5  # the job costs 60
        job_id = await req.service.submit(spec(deadline=120), "bafkreispec")
        core = req.service.core
        await market.wait_for(
            req,
            lambda: any(
                a.get("reason") for a in core.explain(job_id, trio.current_time())["answers"]
            ),
        )
        e = core.explain(job_id, trio.current_time())
        [answer] = e["answers"]
        assert answer["reason"] == "insufficient_escrow"
        assert "escrow available 5" in answer["detail"]
        assert "insufficient_escrow" in e["text"]
        assert await market.wait_state(job_id, JobState.FAILED) is JobState.FAILED
        nursery.cancel_scope.cancel()


async def test_bids_wait_for_the_escrow_read_and_one_read_serves_them_all(autojump_clock, tmp_path):
    async with trio.open_nursery() as nursery:
        market = Market(nursery, tmp_path)
        ledger = FakeLedger()
        ledger.hold = True
        prov = await market.add_provider(11, ledger=ledger, paid=True)
        req = await market.add_requester(enough_quotes=1)
        ledger.balances[req.peer.record.account] = RICH
        jobs = [await req.service.submit(spec(), f"bafkreispec{i}") for i in range(3)]
        await trio.sleep(0.2)
        assert prov.service.core.reserved() == []  # nothing quoted while the read is out
        assert ledger.reads == [req.peer.record.account]
        ledger.release.set()
        for job_id in jobs:
            assert await market.wait_state(job_id, JobState.COMPLETED) is JobState.COMPLETED
        assert ledger.reads == [req.peer.record.account]
        nursery.cancel_scope.cancel()

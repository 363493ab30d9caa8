"""The ledger service over a real SQLite file and the fake escrow, in virtual time.

What is checked throughout: the escrow pays the provider exactly what it was
owed, once, whatever fails (an unreachable chain, a revert, a reorg, a crash
between writing a batch and sending it or between sending it and its receipt).
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
import trio
import trio.testing
from eth_account import Account

from ledger.core import BatchState, LedgerConfig, LedgerError, Standing
from ledger.ports import ChainError
from ledger.service import LedgerService
from ledger.store import InlineLedgerStore, LedgerStore
from ledger.testing import FakeEscrow
from ledger.vouchers import sign_voucher

pytestmark = pytest.mark.trio

PROV = Account.from_key(bytes([9]) * 32).address
KEYS = [bytes([50 + i]) * 32 for i in range(12)]
REQS = [Account.from_key(k).address for k in KEYS]
PEER = "12D3KooWRequester"
WAIT_LIMIT_S = 3600  # virtual seconds


@pytest.fixture
def autojump_clock():
    return trio.testing.MockClock(autojump_threshold=0)


@pytest.fixture
def escrow():
    fake = FakeEscrow()
    for req in REQS:
        fake.deposit(req, 10**21)
    return fake


class Node:
    """One provider's ledger: a store file and a service; ``crash()`` drops both
    without a clean shutdown, as ``kill -9`` would (every write is committed)."""

    def __init__(self, tmp_path, escrow: FakeEscrow, config: LedgerConfig, seed: int = 0):
        self.path, self.escrow, self.config, self.seed = (
            tmp_path / "ledger.db",
            escrow,
            config,
            seed,
        )
        self.open()

    def open(self) -> None:
        self.store = LedgerStore(self.path)
        self.service = LedgerService(
            InlineLedgerStore(self.store),
            self.escrow,
            self.config,
            provider=PROV,
            clock=trio.current_time,
            random=random.Random(self.seed),
        )

    def crash(self) -> None:
        self.store.close()

    async def start(self, nursery: trio.Nursery) -> None:
        await nursery.start(self.service.run)

    async def job(self, n: int, job_id: str, price: int, cumulative: int | None = None) -> None:
        """Requester ``n``'s job delivered, and its payment (if ``cumulative``)."""
        await self.service.expect(job_id, REQS[n], PEER, price)
        if cumulative is not None:
            await self.pay(n, job_id, cumulative)

    async def pay(self, n: int, job_id: str, cumulative: int):
        v = sign_voucher(self.escrow.domain, KEYS[n], PROV, cumulative)
        return await self.service.payment(job_id, PEER, str(cumulative), v.signature)

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        with trio.fail_after(WAIT_LIMIT_S):
            while not predicate():
                await self.service.changed.wait()

    def states(self) -> list[str]:
        return [b["status"] for b in self.service.snapshot()["batches"]]

    def settled_all(self) -> bool:
        snap = self.service.snapshot()
        return not snap["pending_vouchers"] and all(
            b["status"] in ("final", "reverted", "dropped") for b in snap["batches"]
        )


async def test_a_batch_goes_out_when_the_oldest_voucher_is_max_age_old(
    autojump_clock, tmp_path, escrow
):
    node = Node(tmp_path, escrow, LedgerConfig(batch_max_age_s=30, batch_max_vouchers=50))
    async with trio.open_nursery() as nursery:
        await node.start(nursery)
        await node.job(0, "a", 10, 10)
        await trio.sleep(5)  # virtual: the second voucher is younger
        await node.job(1, "b", 7, 7)
        await node.wait_for(lambda: node.states() == ["final"])
        assert trio.current_time() == 30
        (batch,) = node.service.snapshot()["batches"]
        assert len(batch["vouchers"]) == 2 and batch["tx_hash"] in escrow.txs
        assert escrow.earnings[PROV.lower()] == 17
        assert node.service.snapshot()["channels"][0]["settled"] in ("10", "7")
        nursery.cancel_scope.cancel()


async def test_a_batch_goes_out_at_once_when_max_vouchers_are_pending(
    autojump_clock, tmp_path, escrow
):
    node = Node(tmp_path, escrow, LedgerConfig(batch_max_age_s=3600, batch_max_vouchers=3))
    async with trio.open_nursery() as nursery:
        await node.start(nursery)
        for n in range(3):
            await node.job(n, f"j{n}", 5, 5)
        await node.wait_for(lambda: node.states() == ["final"])
        assert trio.current_time() == 0
        assert escrow.earnings[PROV.lower()] == 15
        nursery.cancel_scope.cancel()


async def test_more_vouchers_than_the_gas_limit_holds_go_in_several_batches(
    autojump_clock, tmp_path, escrow
):
    escrow.base_gas, escrow.gas_per_voucher = 40_000, 60_000  # 4 vouchers fit in 300,000
    config = LedgerConfig(batch_max_vouchers=10, batch_gas_limit=300_000)
    node = Node(tmp_path, escrow, config)
    async with trio.open_nursery() as nursery:
        await node.start(nursery)
        for n in range(10):
            await node.job(n, f"j{n}", 3, 3)
        await node.wait_for(lambda: node.states() == ["final"] * 3)
        sizes = [len(b["vouchers"]) for b in node.service.snapshot()["batches"]]
        assert sizes == [4, 4, 2]
        assert all(tx.gas <= 16_777_216 for tx in escrow.txs.values())
        assert escrow.earnings[PROV.lower()] == 30
        nursery.cancel_scope.cancel()


async def test_an_unreachable_chain_is_retried_with_back_off_then_settles(
    autojump_clock, tmp_path, escrow
):
    config = LedgerConfig(batch_max_age_s=0, retry_base_s=1, retry_max_s=16)
    node = Node(tmp_path, escrow, config)
    escrow.unreachable = True
    seen: list[tuple[float, int, float]] = []
    async with trio.open_nursery() as nursery:
        await node.start(nursery)
        await node.job(0, "a", 10, 10)

        def record() -> bool:
            st = node.service.status()
            if st["attempts"] and (not seen or seen[-1][1] != st["attempts"]):
                seen.append((trio.current_time(), st["attempts"], st["next_retry_at"]))
            return st["attempts"] >= 8

        await node.wait_for(record)
        status = node.service.status()
        assert status["state"] == "retrying" and "unreachable" in status["last_error"]
        assert status["pending"] == 1 and escrow.earnings[PROV.lower()] == 0
        gaps = [b[0] - a[0] for a, b in zip(seen, seen[1:], strict=False)]
        for attempt, gap in enumerate(gaps, start=1):
            full = min(2 ** (attempt - 1), 16)
            assert full / 2 <= gap <= full, (attempt, gaps)
        escrow.unreachable = False
        await node.wait_for(lambda: node.states() == ["final"])
        assert escrow.earnings[PROV.lower()] == 10
        assert node.service.status()["state"] == "ok"
        assert node.service.snapshot()["last_error"] is not None  # kept for mask ledger
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("requeue", [False, True])
async def test_a_reorg_drops_a_mined_batch_and_it_is_settled_again_exactly_once(
    autojump_clock, tmp_path, escrow, requeue
):
    node = Node(tmp_path, escrow, LedgerConfig(batch_max_vouchers=1, confirmations=2))
    escrow.auto_mine = False
    async with trio.open_nursery() as nursery:
        await node.start(nursery)
        await node.job(0, "a", 10, 10)
        await node.wait_for(lambda: node.states() == ["sent"])
        (first,) = escrow.mine()
        await node.wait_for(lambda: node.states() == ["mined"])  # 1 of 2 confirmations
        escrow.reorg(first, requeue=requeue)
        await node.wait_for(lambda: node.states() == ["dropped", "sent"])
        assert "reorg" in node.service.snapshot()["batches"][0]["error"]
        escrow.mine()  # the resend (and, requeued, the original) mined again
        escrow.advance()
        await node.wait_for(lambda: node.states() == ["dropped", "final"])
        assert escrow.earnings[PROV.lower()] == 10
        assert escrow.settled_now(REQS[0], PROV) == 10
        nursery.cancel_scope.cancel()


async def test_a_reverted_batch_is_recorded_and_retried(autojump_clock, tmp_path, escrow):
    node = Node(tmp_path, escrow, LedgerConfig(batch_max_vouchers=1, retry_base_s=4))
    escrow.revert_next = 1
    async with trio.open_nursery() as nursery:
        await node.start(nursery)
        await node.job(0, "a", 10, 10)
        await node.wait_for(lambda: node.states() == ["reverted", "final"])
        reverted, final = node.service.snapshot()["batches"]
        assert "reverted" in reverted["error"] and reverted["gas_used"] > 0
        assert final["error"] is None and escrow.earnings[PROV.lower()] == 10
        assert 2 <= trio.current_time() <= 4  # after the back-off
        nursery.cancel_scope.cancel()


async def test_payments_twice_and_out_of_order_settle_the_latest_total_once(
    autojump_clock, tmp_path, escrow
):
    node = Node(tmp_path, escrow, LedgerConfig(batch_max_age_s=60))
    async with trio.open_nursery() as nursery:
        await node.start(nursery)
        await node.job(0, "a", 10)
        await node.job(0, "b", 20)
        assert (await node.pay(0, "b", 30)).paid == ("b", "a")
        assert (await node.pay(0, "a", 10)).reason == "stale"
        assert (await node.pay(0, "b", 30)).outcome == "ignored"
        assert node.service.standing(REQS[0]) == Standing(paid=2)
        await node.wait_for(lambda: node.states() == ["final"])
        assert escrow.earnings[PROV.lower()] == 30
        assert node.service.owed_by(REQS[0]) == 0
        nursery.cancel_scope.cancel()


async def test_voucher_missing_after_the_timeout_and_cleared_by_a_later_voucher(
    autojump_clock, tmp_path, escrow
):
    node = Node(tmp_path, escrow, LedgerConfig(voucher_timeout_s=60, batch_max_age_s=1))
    async with trio.open_nursery() as nursery:
        await node.start(nursery)
        await node.job(0, "a", 10)  # its payment is lost
        await node.wait_for(lambda: node.service.standing(REQS[0]).voucher_missing == 1)
        assert trio.current_time() == 60
        (missing,) = node.service.snapshot()["missing"]
        assert missing == {"job_id": "a", "requester": REQS[0], "price": "10", "due_at": 60}
        await node.job(0, "b", 5, 15)  # the next voucher covers both
        assert node.service.standing(REQS[0]) == Standing(paid=2)
        assert node.store.delivery("a").missing_at == 60 and node.store.delivery("a").paid_at
        await node.wait_for(lambda: node.states() == ["final"])
        assert escrow.earnings[PROV.lower()] == 15
        nursery.cancel_scope.cancel()


class Crash(BaseException):
    """The process dies here (not an error the service may handle)."""


def _crash(*_):
    raise Crash


async def _run_until_crash(node: Node, work) -> None:
    with pytest.RaisesGroup(Crash, flatten_subgroups=True):
        async with trio.open_nursery() as nursery:
            await node.start(nursery)
            await work()
    node.crash()


async def _deliver_three(node: Node) -> None:
    await node.job(0, "a", 10, 10)
    await node.job(1, "b", 4, 4)
    await node.job(0, "c", 5, 15)
    await trio.sleep_forever()


@pytest.mark.parametrize(
    ("hook", "mined"),
    [("before_send", False), ("after_send", True), ("after_send", False)],
    ids=["planned-not-sent", "sent-mined-hash-lost", "sent-in-mempool-hash-lost"],
)
async def test_a_crash_between_planned_and_sent_never_loses_or_doubles(
    autojump_clock, tmp_path, escrow, hook, mined
):
    node = Node(tmp_path, escrow, LedgerConfig(batch_max_age_s=10))
    escrow.auto_mine = mined
    setattr(escrow, hook, _crash)
    await _run_until_crash(node, lambda: _deliver_three(node))
    setattr(escrow, hook, None)
    escrow.auto_mine = True

    node.open()
    assert [b.state for b in node.store.load(PROV).batches] == [BatchState.PLANNED]
    async with trio.open_nursery() as nursery:
        await node.start(nursery)
        await node.wait_for(node.settled_all)
        escrow.mine()  # what the dead process left in the mempool is mined late
        assert escrow.earnings[PROV.lower()] == 19  # 15 + 4: what was owed, once
        assert escrow.settled_now(REQS[0], PROV) == 15
        batches = node.service.snapshot()["batches"]
        assert batches[0]["status"] == "dropped" and "interrupted" in batches[0]["error"]
        assert [b["status"] for b in batches[1:]] == ([] if mined else ["final"])
        assert node.service.owed_by(REQS[0]) == 0 and node.service.owed_by(REQS[1]) == 0
        nursery.cancel_scope.cancel()


async def test_a_crash_between_sent_and_mined_looks_the_batch_up_by_hash(
    autojump_clock, tmp_path, escrow
):
    node = Node(tmp_path, escrow, LedgerConfig(batch_max_vouchers=2))
    escrow.auto_mine = False
    async with trio.open_nursery() as nursery:
        await node.start(nursery)
        await node.job(0, "a", 10, 10)
        await node.job(1, "b", 4, 4)
        await node.wait_for(lambda: node.states() == ["sent"])
        nursery.cancel_scope.cancel()  # killed with the transaction in the mempool
    node.crash()

    node.open()
    async with trio.open_nursery() as nursery:
        await node.start(nursery)
        assert node.states() == ["sent"]
        escrow.mine()
        await node.wait_for(lambda: node.states() == ["final"])
        assert escrow.earnings[PROV.lower()] == 14 and escrow.calls["send_settle"] == 1
        nursery.cancel_scope.cancel()


async def test_settle_now_sends_at_once_and_waits_for_the_transaction(
    autojump_clock, tmp_path, escrow
):
    node = Node(tmp_path, escrow, LedgerConfig(batch_max_age_s=3600, confirmations=3))
    async with trio.open_nursery() as nursery:
        await node.start(nursery)
        assert await node.service.settle_now() == []  # nothing to settle
        await node.job(0, "a", 10, 10)
        await node.job(1, "b", 4, 4)

        async def confirm() -> None:
            await node.wait_for(lambda: node.states() == ["mined"])
            escrow.advance(2)

        nursery.start_soon(confirm)
        with trio.fail_after(WAIT_LIMIT_S):
            (batch,) = await node.service.settle_now()
        assert batch["status"] == "final" and len(batch["vouchers"]) == 2
        assert escrow.earnings[PROV.lower()] == 14
        assert trio.current_time() < 10  # not the hour-long age threshold

        escrow.unreachable = True
        await node.job(0, "c", 5, 15)
        with pytest.raises(LedgerError) as e:
            await node.service.settle_now()
        assert e.value.code == "chain_unreachable" and e.value.hint
        assert node.service.status()["pending"] == 1
        nursery.cancel_scope.cancel()


async def test_settle_now_before_run_says_so(autojump_clock):
    service = LedgerService(InlineLedgerStore(LedgerStore(":memory:")), FakeEscrow(), provider=PROV)
    with pytest.raises(LedgerError) as e:
        await service.settle_now()
    assert e.value.code == "ledger_not_ready"


async def test_escrow_reads_are_cached_and_cover_what_is_owed(autojump_clock, tmp_path, escrow):
    node = Node(tmp_path, escrow, LedgerConfig(escrow_cache_s=10, batch_max_age_s=3600))
    async with trio.open_nursery() as nursery:
        await node.start(nursery)
        service, req = node.service, REQS[0]
        escrow.deposits.clear()
        escrow.deposit(req, 100)
        assert await service.escrow_available(req) == 100
        escrow.deposit(req, 50)
        assert await service.escrow_available(req.lower()) == 100  # cached
        assert service.cached_available(req) == (100, True)
        await node.job(0, "a", 60)
        assert await service.escrow_covers(req, price=40)
        assert not await service.escrow_covers(req, price=30, running=20)
        await trio.sleep(10)
        assert service.cached_available(req) == (100, False)
        assert await service.escrow_available(req) == 150
        assert escrow.calls["available"] == 2
        assert service.cached_available("0xnot an address") is None
        nursery.cancel_scope.cancel()


async def test_a_restart_keeps_deliveries_vouchers_and_flags(autojump_clock, tmp_path, escrow):
    config = LedgerConfig(voucher_timeout_s=60, batch_max_age_s=3600)
    node = Node(tmp_path, escrow, config)
    async with trio.open_nursery() as nursery:
        await node.start(nursery)
        await node.job(0, "a", 10, 10)
        await node.job(0, "b", 10)
        await node.wait_for(lambda: node.service.standing(REQS[0]).voucher_missing == 1)
        before = node.service.snapshot()
        nursery.cancel_scope.cancel()
    node.crash()
    node.open()
    async with trio.open_nursery() as nursery:
        await node.start(nursery)
        after = node.service.snapshot()
        assert after["channels"] == before["channels"]
        assert after["missing"] == before["missing"]
        assert after["pending_vouchers"] == before["pending_vouchers"]
        await node.job(0, "b", 10)  # a replayed delivery after the restart: nothing new
        assert node.service.owed_by(REQS[0]) == 20
        nursery.cancel_scope.cancel()


async def test_a_channel_settled_twice_is_paid_only_the_increase(autojump_clock, tmp_path, escrow):
    node = Node(tmp_path, escrow, LedgerConfig(batch_max_vouchers=1))
    async with trio.open_nursery() as nursery:
        await node.start(nursery)
        await node.job(0, "a", 10, 10)
        await node.wait_for(lambda: node.states() == ["final"])
        await node.job(0, "b", 5, 15)
        await node.wait_for(lambda: node.states() == ["final", "final"])
        assert escrow.earnings[PROV.lower()] == 15
        assert [c["settled"] for c in node.service.snapshot()["channels"]] == ["15"]
        nursery.cancel_scope.cancel()


async def test_the_fake_escrow_keeps_the_contract_rules(autojump_clock):
    escrow = FakeEscrow(base_gas=1_000, gas_per_voucher=100)
    escrow.deposit(REQS[0], 12)
    d = escrow.domain
    good = sign_voucher(d, KEYS[0], PROV, 10)
    forged = sign_voucher(d, KEYS[1], PROV, 10)
    forged = type(forged)(REQS[0], PROV, 10, forged.signature)
    poor = sign_voucher(d, KEYS[2], PROV, 10)  # no deposit
    tx = await escrow.send_settle([good, forged, good, poor], gas=1_400)
    rc = await escrow.receipt(tx)
    assert rc.status and [(s.cumulative, s.paid) for s in rc.settled] == [(10, 10)]
    assert [k.reason for k in rc.skipped] == [1, 2, 3]  # bad signature, resent, no deposit
    tx = await escrow.send_settle([sign_voucher(d, KEYS[0], PROV, 12)], gas=1_100)
    assert [s.paid for s in (await escrow.receipt(tx)).settled] == [2]  # the increase
    assert escrow.earnings[PROV.lower()] == 12 and await escrow.available(REQS[0]) == 0
    tx = await escrow.send_settle([sign_voucher(d, KEYS[0], PROV, 13)], gas=1_099)
    assert not (await escrow.receipt(tx)).status  # out of gas: mined reverted
    escrow.reorg(list(escrow.txs)[1])  # the second settlement leaves the chain
    assert escrow.earnings[PROV.lower()] == 10 and escrow.settled_now(REQS[0], PROV) == 10
    escrow.unreachable = True
    with pytest.raises(ChainError) as e:
        await escrow.block_number()
    assert e.value.transient and e.value.hint

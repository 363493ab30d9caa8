"""The ledger's SQLite store: exact uint256 amounts, nothing lowered, a restart
restores the core exactly."""

from __future__ import annotations

import functools
import os
import sqlite3
import stat
import threading

import pytest
from eth_account import Account

from ledger.core import (
    RECENT_BATCHES,
    Batch,
    BatchChange,
    BatchState,
    Delivery,
    LedgerConfig,
    LedgerCore,
    Standing,
)
from ledger.ports import Settled, SettleReceipt
from ledger.store import LedgerStore, ThreadedLedgerStore
from ledger.vouchers import MAX_UINT256, Domain, SignedVoucher, sign_voucher, verify_voucher

DOMAIN = Domain(31337, "0x" + "e5" * 20)
REQ_KEY = bytes([7]) * 32
REQ = Account.from_key(REQ_KEY).address
PROV = Account.from_key(bytes([9]) * 32).address
VERIFY = functools.partial(verify_voucher, DOMAIN)


@pytest.fixture
def store(tmp_path):
    with LedgerStore(tmp_path / "ledger.db") as s:
        yield s


def test_the_file_and_its_wal_are_owner_only(tmp_path):
    path = tmp_path / "ledger.db"
    with LedgerStore(path) as s:
        s.add_delivery(Delivery("j", REQ, "peer", 1, 0.0, 60.0))
        for name in (path, f"{path}-wal", f"{path}-shm"):
            if os.path.exists(name):
                assert stat.S_IMODE(os.stat(name).st_mode) == 0o600, name


def test_a_delivery_is_stored_once(store):
    d = Delivery("j", REQ, "peer", MAX_UINT256, 1.0, 61.0)
    assert store.add_delivery(d) is True
    assert store.add_delivery(d) is False
    assert store.has_delivery("j") and not store.has_delivery("k")
    assert store.delivery("j") == d  # the uint256 round-trips exactly


def test_a_payment_writes_its_voucher_paid_jobs_and_underpaid_flag_together(store):
    core = LedgerCore(PROV)
    for job_id, price in (("a", 10), ("b", 10)):
        d, _ = core.expect(job_id, REQ, "peer", price, now=0.0)
        store.add_delivery(d)
    v = core.on_payment("b", sign_voucher(DOMAIN, REQ_KEY, PROV, 15), verify=VERIFY, now=5.0)
    store.record_payment(v, 5.0)
    assert store.delivery("b").paid_at == 5.0
    assert store.delivery("a").underpaid_at is None and store.delivery("a").paid_at is None
    v = core.on_payment("a", sign_voucher(DOMAIN, REQ_KEY, PROV, 15), verify=VERIFY, now=6.0)
    store.record_payment(v, 6.0)
    assert store.delivery("a").underpaid_at == 6.0
    ((kept, received_at),) = store.load(PROV).vouchers
    assert (kept.cumulative, received_at) == (15, 5.0)


def test_a_kept_voucher_is_never_lowered_nor_deleted(store):
    sig = b"\1" * 65
    store._db.execute("INSERT INTO vouchers VALUES (?, ?, ?, ?, ?)", (REQ, PROV, "100", sig, 0.0))
    for lower in ("99", "1", "0"):
        with pytest.raises(sqlite3.IntegrityError, match="never replaced by a lower"):
            store._db.execute("UPDATE vouchers SET cumulative = ?", (lower,))
    store._db.execute("UPDATE vouchers SET cumulative = ?", ("1000",))  # higher: fine
    with pytest.raises(sqlite3.IntegrityError, match="never deleted"):
        store._db.execute("DELETE FROM vouchers")


@pytest.mark.parametrize("bad", ["", "01", "-1", "1.0", "1e3", " 1", "9" * 79, "x"])
def test_amounts_are_canonical_decimal_text(store, bad):
    with pytest.raises(sqlite3.IntegrityError):
        store._db.execute(
            "INSERT INTO deliveries (job_id, requester, requester_peer, price, delivered_at,"
            " due_at) VALUES ('j', ?, 'p', ?, 0, 0)",
            (REQ, bad),
        )


def test_settlements_only_rise_and_finished_batches_do_not_change(store):
    batch = Batch(1, ((REQ, 10),), BatchState.PLANNED, 0.0, gas=100_000)
    store.add_batch(batch)
    sent = Batch(1, batch.entries, BatchState.SENT, 0.0, 100_000, "0xabc", 1.0)
    store.update_batch(sent, PROV, 1.0)
    final = Batch(1, batch.entries, BatchState.FINAL, 0.0, 100_000, "0xabc", 1.0, 90_000, 7)
    store.update_batch(BatchChange(final, ((REQ, 10),)), PROV, 2.0)
    assert store.batch(1) == final
    store.set_settled(REQ, PROV, 5, 3.0)  # a lower reading changes nothing
    assert store.load(PROV).settled == {REQ: 10}
    store.set_settled(REQ, PROV, 2**200, 3.0)
    assert store.load(PROV).settled == {REQ: 2**200}
    with pytest.raises(sqlite3.IntegrityError, match="finished batch"):
        store.update_batch(sent, PROV, 4.0)
    assert store.batch(1) == final and store.batch(2) is None


def test_a_failed_write_leaves_nothing_behind(store):
    batch = Batch(1, ((REQ, 10), (REQ, 11)), BatchState.PLANNED, 0.0, gas=1)  # same channel twice
    with pytest.raises(sqlite3.IntegrityError):
        store.add_batch(batch)
    assert store.batch(1) is None


def _run_core(store: LedgerStore, config: LedgerConfig) -> LedgerCore:
    """A provider's history, every change written as the service writes it."""
    core = LedgerCore(PROV, config)
    for job_id, price, t in (("a", 10, 0.0), ("b", 20, 1.0), ("c", 5, 2.0), ("d", 7, 3.0)):
        d, paid = core.expect(job_id, REQ, "peer", price, now=t)
        store.add_delivery(d, paid)
    store.record_payment(core.on_payment("a", _v(10), verify=VERIFY, now=4.0), 4.0)
    store.record_payment(core.on_payment("b", _v(30), verify=VERIFY, now=5.0), 5.0)
    store.mark_missing(core.overdue(100.0), 100.0)  # c and d
    store.record_payment(core.on_payment("c", _v(30), verify=VERIFY, now=101.0), 101.0)
    # a batch settled 10, one in flight carries 30
    for cumulative, final in ((10, True), (30, False)):
        batch = core.open_batch([_v(cumulative)], gas=100_000, now=6.0)
        store.add_batch(batch)
        store.update_batch(core.batch_sent(batch.id, f"0x{cumulative}", now=7.0), PROV, 7.0)
        if final:
            rc = SettleReceipt(f"0x{cumulative}", 3, True, 90_000, [Settled(REQ, PROV, 10, 10)])
            change = core.batch_receipt(batch.id, rc, head=3, now=8.0, rand=0.0)
            store.update_batch(change, PROV, 8.0)
    store.add_batch(core.open_batch([_v(30)], gas=100_000, now=9.0))  # a crash left it planned
    return core


def _v(cumulative: int) -> SignedVoucher:
    return sign_voucher(DOMAIN, REQ_KEY, PROV, cumulative)


def _view(core: LedgerCore, now: float) -> tuple:
    return (
        core.channels(),
        core.standing(REQ),
        core.owed_by(REQ, 3),
        [(v.cumulative, v.signature) for v in core.pending_vouchers(now)],
        [(b.id, b.state, b.entries, b.tx_hash) for b in core.recent_batches()],
        [d.job_id for d in core.missing()],
        core.next_timer(now),
        sorted(core._recent_paid),
    )


def test_a_restart_restores_the_core_exactly(tmp_path):
    config = LedgerConfig(voucher_timeout_s=60)
    with LedgerStore(tmp_path / "l.db") as store:
        before = _run_core(store, config)
    with LedgerStore(tmp_path / "l.db") as store:
        state = store.load(PROV)
    after, paid = LedgerCore.restore(PROV, config, state, now=200.0)
    assert paid == ()
    assert _view(after, 200.0) == _view(before, 200.0)
    assert after.standing(REQ) == Standing(paid=2, voucher_missing=2, underpaid=1)
    assert [b.state for b in after.in_flight()] == [BatchState.SENT, BatchState.PLANNED]
    assert after.open_batch([], gas=1, now=0).id == 4  # ids continue


def test_restore_pays_what_a_crash_left_covered_but_unmarked(tmp_path):
    with LedgerStore(tmp_path / "l.db") as store:
        store.add_delivery(Delivery("a", REQ, "peer", 10, 0.0, 60.0))
        store._db.execute(
            "INSERT INTO vouchers VALUES (?, ?, ?, ?, ?)", (REQ, PROV, "10", _v(10).signature, 1.0)
        )
        core, paid = LedgerCore.restore(PROV, None, store.load(PROV), now=2.0)
    assert paid == ("a",) and core.standing(REQ) == Standing(paid=1)


def test_restore_keeps_only_the_recent_finished_batches(tmp_path):
    with LedgerStore(tmp_path / "l.db") as store:
        for i in range(1, RECENT_BATCHES + 11):
            store.add_batch(Batch(i, ((REQ, i),), BatchState.PLANNED, 0.0, gas=1))
            store.update_batch(Batch(i, ((REQ, i),), BatchState.DROPPED, 0.0, 1), PROV, 1.0)
        state = store.load(PROV)
    assert [b.id for b in state.batches] == list(range(11, RECENT_BATCHES + 11))
    assert state.next_batch_id == RECENT_BATCHES + 11


async def test_the_threaded_facade_runs_calls_in_a_worker_thread(tmp_path):
    with LedgerStore(tmp_path / "l.db") as store:
        facade = ThreadedLedgerStore(store)
        d = Delivery("j", REQ, "peer", 3, 0.0, 60.0)
        assert await facade.call(lambda s: s.add_delivery(d)) is True
        thread = await facade.call(lambda s: threading.current_thread())
        assert thread is not threading.main_thread()
        assert await facade.call(lambda s: s.delivery("j")) == d


def test_a_withdrawn_delivery_is_gone_after_a_restart(tmp_path):
    from ledger.core import Delivery, LedgerConfig, LedgerCore
    from ledger.store import LedgerStore

    provider = "0x" + "22" * 20
    requester = "0x" + "11" * 20
    with LedgerStore(tmp_path / "l.db") as store:
        for job, price in (("a" * 64, 5), ("b" * 64, 7)):
            store.add_delivery(Delivery(job, requester, "peer", price, 0.0, 10.0))
        store.withdraw_delivery("a" * 64)
        core, _ = LedgerCore.restore(provider, LedgerConfig(), store.load(provider), now=1.0)
    assert core.owed_by(requester) == 7 and not core.knows("a" * 64)

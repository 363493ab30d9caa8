"""The ledger's SQLite file: deliveries, vouchers, batches, settlements.

Money needs the same discipline as jobs (``scheduler/store.py``): one file,
WAL with ``synchronous=FULL``, owner-only mode, and every change committed in
one transaction *before* the service acts on it. A batch is a ``planned`` row
(with its vouchers) before its transaction is sent, and its hash is stored as
soon as the node returns it; so after a ``kill -9`` at any point a restarted
service knows every voucher it holds and every transaction it may have sent.
It looks the sent ones up by hash and re-reads ``settled`` on chain for a
planned one; the escrow pays only ``cumulative - settled``, so a resend of a
batch that did go out pays nothing twice.

Amounts are uint256: stored as canonical decimal TEXT (no sign, no leading
zeros), which sqlite compares exactly with "shorter is smaller, then
lexicographic". Triggers use that to refuse lowering a kept voucher or a
confirmed settlement, and refuse changing a finished batch.

The store is blocking; the trio service reaches it through
:class:`ThreadedLedgerStore` (one worker thread at a time behind its own
``CapacityLimiter(1)``) or, in component tests under autojump,
:class:`InlineLedgerStore` (see ``scheduler/async_store.py`` for why).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

import trio

from ledger.core import (
    IN_FLIGHT,
    RECENT_BATCHES,
    RECENT_PAID,
    Batch,
    BatchChange,
    BatchState,
    Delivery,
    LedgerState,
    PaymentVerdict,
)
from ledger.vouchers import MAX_UINT256, SignedVoucher
from scheduler.store import _make_private

__all__ = ["InlineLedgerStore", "LedgerStore", "ThreadedLedgerStore"]

T = TypeVar("T")


def _amount(col: str) -> str:
    return (
        f"CHECK (length({col}) BETWEEN 1 AND 78 AND {col} NOT GLOB '*[^0-9]*'"
        f" AND ({col} = '0' OR {col} NOT GLOB '0*'))"
    )


def _lower(new: str, old: str) -> str:
    """SQL: the decimal ``new`` is below ``old`` (both canonical)."""
    return f"(length({new}) < length({old}) OR (length({new}) = length({old}) AND {new} < {old}))"


_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS deliveries (
    job_id TEXT PRIMARY KEY,
    requester TEXT NOT NULL,
    requester_peer TEXT NOT NULL,
    price TEXT NOT NULL {_amount("price")},
    delivered_at REAL NOT NULL,
    due_at REAL NOT NULL,
    paid_at REAL,
    missing_at REAL,
    underpaid_at REAL
);
CREATE INDEX IF NOT EXISTS deliveries_paid ON deliveries (paid_at);
CREATE TABLE IF NOT EXISTS vouchers (
    requester TEXT NOT NULL,
    provider TEXT NOT NULL,
    cumulative TEXT NOT NULL {_amount("cumulative")},
    signature BLOB NOT NULL CHECK (length(signature) = 65),
    received_at REAL NOT NULL,
    PRIMARY KEY (requester, provider)
);
CREATE TRIGGER IF NOT EXISTS vouchers_never_lower BEFORE UPDATE ON vouchers
WHEN {_lower("NEW.cumulative", "OLD.cumulative")}
BEGIN SELECT RAISE(ABORT, 'a kept voucher is never replaced by a lower one'); END;
CREATE TRIGGER IF NOT EXISTS vouchers_kept BEFORE DELETE ON vouchers
BEGIN SELECT RAISE(ABORT, 'a kept voucher is never deleted'); END;
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    state TEXT NOT NULL
        CHECK (state IN ('planned', 'sent', 'mined', 'final', 'reverted', 'dropped')),
    gas INTEGER NOT NULL,
    tx_hash TEXT,
    sent_at REAL,
    gas_used INTEGER,
    block INTEGER,
    error TEXT
);
CREATE INDEX IF NOT EXISTS batches_state ON batches (state);
CREATE TRIGGER IF NOT EXISTS batches_finished BEFORE UPDATE ON batches
WHEN OLD.state IN ('final', 'reverted', 'dropped')
BEGIN SELECT RAISE(ABORT, 'a finished batch is not changed'); END;
CREATE TABLE IF NOT EXISTS batch_vouchers (
    batch_id INTEGER NOT NULL REFERENCES batches (id),
    requester TEXT NOT NULL,
    cumulative TEXT NOT NULL {_amount("cumulative")},
    PRIMARY KEY (batch_id, requester)
);
CREATE TABLE IF NOT EXISTS settlements (
    requester TEXT NOT NULL,
    provider TEXT NOT NULL,
    settled TEXT NOT NULL {_amount("settled")},
    updated_at REAL NOT NULL,
    PRIMARY KEY (requester, provider)
);
CREATE TRIGGER IF NOT EXISTS settlements_never_lower BEFORE UPDATE ON settlements
WHEN {_lower("NEW.settled", "OLD.settled")}
BEGIN SELECT RAISE(ABORT, 'a confirmed settlement is never lowered'); END;
"""


class LedgerStore:
    """Blocking; one connection, serialised by the caller (see the module doc)."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        _make_private(self.path)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> LedgerStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- deliveries and payments -------------------------------------------

    def has_delivery(self, job_id: str) -> bool:
        row = self._db.execute("SELECT 1 FROM deliveries WHERE job_id = ?", (job_id,))
        return row.fetchone() is not None

    def add_delivery(self, d: Delivery, paid: Sequence[str] = ()) -> bool:
        """The delivery, and the jobs the channel's credit paid with it; False
        (nothing written) for a job id already stored."""
        with self._tx():
            cur = self._db.execute(
                "INSERT OR IGNORE INTO deliveries (job_id, requester, requester_peer, price,"
                " delivered_at, due_at) VALUES (?, ?, ?, ?, ?, ?)",
                (d.job_id, d.requester, d.requester_peer, _dec(d.price), d.delivered_at, d.due_at),
            )
            if cur.rowcount == 0:
                return False
            self._paid(paid, d.delivered_at)
        return True

    def record_payment(self, verdict: PaymentVerdict, now: float) -> None:
        """A payment's effects, together: the kept voucher, the jobs it paid,
        the job it left underpaid."""
        with self._tx():
            if (v := verdict.kept) is not None:
                self._db.execute(
                    "INSERT INTO vouchers (requester, provider, cumulative, signature, received_at)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (requester, provider) DO UPDATE SET"
                    " cumulative = excluded.cumulative, signature = excluded.signature,"
                    " received_at = excluded.received_at",
                    (v.requester, v.provider, _dec(v.cumulative), v.signature, now),
                )
            self._paid(verdict.paid, now)
            if verdict.underpaid is not None:
                self._db.execute(
                    "UPDATE deliveries SET underpaid_at = ? WHERE job_id = ? AND paid_at IS NULL",
                    (now, verdict.underpaid),
                )

    def withdraw_delivery(self, job_id: str) -> None:
        """``LedgerCore.withdraw``: the unpaid delivery is gone (a paid one stays)."""
        with self._tx():
            self._db.execute(
                "DELETE FROM deliveries WHERE job_id = ? AND paid_at IS NULL", (job_id,)
            )

    def mark_paid(self, job_ids: Sequence[str], now: float) -> None:
        with self._tx():
            self._paid(job_ids, now)

    def mark_missing(self, job_ids: Sequence[str], now: float) -> None:
        with self._tx():
            self._db.executemany(
                "UPDATE deliveries SET missing_at = ? WHERE job_id = ? AND missing_at IS NULL",
                [(now, j) for j in job_ids],
            )

    def _paid(self, job_ids: Iterable[str], now: float) -> None:
        self._db.executemany(
            "UPDATE deliveries SET paid_at = ? WHERE job_id = ? AND paid_at IS NULL",
            [(now, j) for j in job_ids],
        )

    # --- batches and settlements ---------------------------------------------

    def add_batch(self, batch: Batch) -> None:
        """A planned batch and its vouchers: written before it is sent."""
        with self._tx():
            self._db.execute(
                "INSERT INTO batches (id, created_at, updated_at, state, gas)"
                " VALUES (?, ?, ?, ?, ?)",
                (batch.id, batch.created_at, batch.created_at, batch.state.value, batch.gas),
            )
            self._db.executemany(
                "INSERT INTO batch_vouchers (batch_id, requester, cumulative) VALUES (?, ?, ?)",
                [(batch.id, r, _dec(c)) for r, c in batch.entries],
            )

    def update_batch(self, change: BatchChange | Batch, provider: str, now: float) -> None:
        """A batch's new state (and the settlements it confirmed), together."""
        if isinstance(change, Batch):
            change = BatchChange(change)
        b = change.batch
        with self._tx():
            cur = self._db.execute(
                "UPDATE batches SET state = ?, updated_at = ?, tx_hash = ?, sent_at = ?,"
                " gas_used = ?, block = ?, error = ? WHERE id = ?",
                (b.state.value, now, b.tx_hash, b.sent_at, b.gas_used, b.block, b.error, b.id),
            )
            if cur.rowcount == 0:
                raise KeyError(f"no batch {b.id}")
            for requester, settled in change.settled:
                self._settle(requester, provider, settled, now)

    def set_settled(self, requester: str, provider: str, settled: int, now: float) -> None:
        with self._tx():
            self._settle(requester, provider, settled, now)

    def _settle(self, requester: str, provider: str, settled: int, now: float) -> None:
        self._db.execute(
            "INSERT INTO settlements (requester, provider, settled, updated_at)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (requester, provider) DO UPDATE SET"
            " settled = excluded.settled, updated_at = excluded.updated_at"
            f" WHERE {_lower('settlements.settled', 'excluded.settled')}",
            (requester, provider, _dec(settled), now),
        )

    # --- reads ----------------------------------------------------------------

    def load(self, provider: str) -> LedgerState:
        """Everything the core needs to resume (``LedgerCore.restore``)."""
        with self._tx():  # one consistent snapshot
            return self._load(provider)

    def _load(self, provider: str) -> LedgerState:
        db = self._db
        totals: dict[str, tuple[int, int, int]] = {}
        for requester, price, paid in db.execute(
            "SELECT requester, price, paid_at IS NOT NULL FROM deliveries"
        ):
            delivered, paid_total, count = totals.get(requester, (0, 0, 0))
            p = int(price)
            totals[requester] = (delivered + p, paid_total + p * paid, count + paid)
        unpaid = [
            Delivery(r[0], r[1], r[2], int(r[3]), r[4], r[5], None, r[6], r[7])
            for r in db.execute(
                "SELECT job_id, requester, requester_peer, price, delivered_at, due_at,"
                " missing_at, underpaid_at FROM deliveries WHERE paid_at IS NULL ORDER BY rowid"
            )
        ]
        recent_paid = db.execute(
            "SELECT job_id, requester FROM deliveries WHERE paid_at IS NOT NULL"
            " ORDER BY paid_at DESC, rowid DESC LIMIT ?",
            (RECENT_PAID,),
        ).fetchall()[::-1]
        vouchers = [
            (SignedVoucher(r[0], r[1], int(r[2]), bytes(r[3])), r[4])
            for r in db.execute(
                "SELECT requester, provider, cumulative, signature, received_at FROM vouchers"
                " WHERE provider = ?",
                (provider,),
            )
        ]
        settled = {
            r[0]: int(r[1])
            for r in db.execute(
                "SELECT requester, settled FROM settlements WHERE provider = ?", (provider,)
            )
        }
        live = tuple(s.value for s in IN_FLIGHT)
        ids = [
            r[0]
            for r in db.execute(
                f"SELECT id FROM batches WHERE state IN ({', '.join('?' * len(live))})", live
            )
        ]
        ids += [
            r[0]
            for r in db.execute(
                f"SELECT id FROM batches WHERE state NOT IN ({', '.join('?' * len(live))})"
                " ORDER BY id DESC LIMIT ?",
                (*live, RECENT_BATCHES),
            )
        ]
        (top,) = db.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM batches").fetchone()
        return LedgerState(
            unpaid=unpaid,
            totals=totals,
            recent_paid=[(r[0], r[1]) for r in recent_paid],
            vouchers=vouchers,
            settled=settled,
            batches=[self._batch(i) for i in sorted(ids)],
            next_batch_id=top,
        )

    def batch(self, batch_id: int) -> Batch | None:
        try:
            return self._batch(batch_id)
        except KeyError:
            return None

    def _batch(self, batch_id: int) -> Batch:
        row = self._db.execute(
            "SELECT id, created_at, state, gas, tx_hash, sent_at, gas_used, block, error"
            " FROM batches WHERE id = ?",
            (batch_id,),
        ).fetchone()
        if row is None:
            raise KeyError(f"no batch {batch_id}")
        entries = tuple(
            (r[0], int(r[1]))
            for r in self._db.execute(
                "SELECT requester, cumulative FROM batch_vouchers WHERE batch_id = ?"
                " ORDER BY rowid",
                (batch_id,),
            )
        )
        return Batch(
            id=row[0],
            entries=entries,
            state=BatchState(row[2]),
            created_at=row[1],
            gas=row[3],
            tx_hash=row[4],
            sent_at=row[5],
            gas_used=row[6],
            block=row[7],
            error=row[8],
        )

    def delivery(self, job_id: str) -> Delivery | None:
        r = self._db.execute(
            "SELECT job_id, requester, requester_peer, price, delivered_at, due_at, paid_at,"
            " missing_at, underpaid_at FROM deliveries WHERE job_id = ?",
            (job_id,),
        ).fetchone()
        return None if r is None else Delivery(r[0], r[1], r[2], int(r[3]), *r[4:])

    def _tx(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any exception."""

    def __init__(self, db: sqlite3.Connection):
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self._db.execute("ROLLBACK" if exc_type is not None else "COMMIT")


def _dec(amount: int) -> str:
    if isinstance(amount, bool) or not isinstance(amount, int) or not 0 <= amount <= MAX_UINT256:
        raise ValueError(f"not a uint256 amount: {amount!r}")
    return str(amount)


# --- async facades --------------------------------------------------------------


class _Facade:
    store: LedgerStore

    async def call(self, fn: Callable[[LedgerStore], T]) -> T:
        raise NotImplementedError


class ThreadedLedgerStore(_Facade):
    """The daemon's way in: sqlite in a worker thread, one call at a time."""

    def __init__(self, store: LedgerStore):
        self.store = store
        self._limiter = trio.CapacityLimiter(1)

    async def call(self, fn: Callable[[LedgerStore], T]) -> T:
        return await trio.to_thread.run_sync(fn, self.store, limiter=self._limiter)


class InlineLedgerStore(_Facade):
    """sqlite on the event loop, for component tests under autojump."""

    def __init__(self, store: LedgerStore):
        self.store = store

    async def call(self, fn: Callable[[LedgerStore], T]) -> T:
        return fn(self.store)


AsyncLedgerStore = ThreadedLedgerStore | InlineLedgerStore

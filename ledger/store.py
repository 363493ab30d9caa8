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

zk claims (``claims``) follow the batches' rule: a ``planned`` row, with the
evidence it sends (the signed agreement, the proof, the public signals, the
verification key), before the transaction; its hash as soon as it is known; a
finished claim never changes. Its effect on the delivery (paid, or written off)
is written in the same transaction as its final state. The requester side
keeps the ``ProofClaimed`` events it saw for its jobs (``seen_claims``) and how
far it has read the chain (``cursors``). Databases made before claims gain
``deliveries.written_off_at`` at open.

The store is blocking; the trio service reaches it through
:class:`ThreadedLedgerStore` (one worker thread at a time behind its own
``CapacityLimiter(1)``) or, in component tests under autojump,
:class:`InlineLedgerStore` (see ``scheduler/async_store.py`` for why).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import trio

from ledger.core import (
    CLAIM_LIVE,
    IN_FLIGHT,
    RECENT_BATCHES,
    RECENT_CLAIMS,
    RECENT_PAID,
    Batch,
    BatchChange,
    BatchState,
    Claim,
    ClaimChange,
    ClaimEvidence,
    ClaimState,
    Delivery,
    LedgerState,
    PaymentVerdict,
)
from ledger.vouchers import MAX_UINT256, SignedVoucher
from scheduler.store import _make_private

__all__ = ["InlineLedgerStore", "LedgerStore", "SeenClaim", "ThreadedLedgerStore"]

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
CREATE TABLE IF NOT EXISTS claims (
    job_id TEXT PRIMARY KEY,
    requester TEXT NOT NULL,
    price TEXT NOT NULL {_amount("price")},
    state TEXT NOT NULL CHECK (state IN ('planned', 'sent', 'paid', 'reverted', 'failed')),
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    tx_hash TEXT,
    sent_at REAL,
    block INTEGER,
    gas_used INTEGER,
    amount TEXT CHECK (amount IS NULL OR (length(amount) BETWEEN 1 AND 78
        AND amount NOT GLOB '*[^0-9]*')),
    reason TEXT,
    error TEXT,
    agreement BLOB,
    proof TEXT,
    public TEXT,
    vk BLOB
);
CREATE INDEX IF NOT EXISTS claims_state ON claims (state);
CREATE TRIGGER IF NOT EXISTS claims_finished BEFORE UPDATE ON claims
WHEN OLD.state IN ('paid', 'reverted', 'failed')
BEGIN SELECT RAISE(ABORT, 'a finished claim is not changed'); END;
CREATE TRIGGER IF NOT EXISTS claims_kept BEFORE DELETE ON claims
BEGIN SELECT RAISE(ABORT, 'a claim is never deleted'); END;
CREATE TABLE IF NOT EXISTS seen_claims (
    job_id TEXT NOT NULL,
    provider TEXT NOT NULL,
    requester TEXT NOT NULL,
    amount TEXT NOT NULL {_amount("amount")},
    block INTEGER NOT NULL,
    tx_hash TEXT NOT NULL,
    seen_at REAL NOT NULL,
    PRIMARY KEY (job_id, provider)
);
CREATE TABLE IF NOT EXISTS cursors (
    name TEXT PRIMARY KEY,
    block INTEGER NOT NULL
);
"""

#: Columns added after the first release: a database made before gains them at open.
_ADDED_COLUMNS = {"deliveries": {"written_off_at": "REAL"}}
#: Evidence bounds: a proof is 8 words, the verifier takes at most 256 signals.
MAX_EVIDENCE_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class SeenClaim:
    """A ``ProofClaimed`` for one of this node's jobs as a requester."""

    job_id: str
    provider: str
    requester: str
    amount: int
    block: int
    tx_hash: str
    seen_at: float


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
        for table, columns in _ADDED_COLUMNS.items():
            have = {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}
            for name, kind in columns.items():
                if name not in have:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")

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

    # --- zk claims ------------------------------------------------------------

    def add_claim(self, claim: Claim, evidence: ClaimEvidence | None = None) -> bool:
        """A new claim (``planned``, or ``failed`` at once) with the evidence it
        sends; False (nothing written) when the job has one already."""
        agreement = proof = public = vk = None
        if evidence is not None:
            agreement, vk = evidence.agreement, evidence.vk
            proof = json.dumps([str(v) for v in evidence.proof])
            public = json.dumps([str(v) for v in evidence.public])
            size = len(agreement) + len(vk) + len(proof) + len(public)
            if size > MAX_EVIDENCE_BYTES:
                raise ValueError(f"claim evidence of {size} bytes (at most {MAX_EVIDENCE_BYTES})")
        c = claim
        with self._tx():
            cur = self._db.execute(
                "INSERT OR IGNORE INTO claims (job_id, requester, price, state, created_at,"
                " updated_at, reason, error, agreement, proof, public, vk)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    c.job_id,
                    c.requester,
                    _dec(c.price),
                    c.state.value,
                    c.created_at,
                    c.created_at,
                    c.reason,
                    c.error,
                    agreement,
                    proof,
                    public,
                    vk,
                ),
            )
        return cur.rowcount == 1

    def update_claim(
        self, change: ClaimChange | Claim, provider: str, now: float, settled: int | None = None
    ) -> None:
        """A claim's new state and what it did to its delivery (paid, written
        off), together; ``settled``: the channel's settled amount read after it."""
        if isinstance(change, Claim):
            change = ClaimChange(change)
        c = change.claim
        with self._tx():
            cur = self._db.execute(
                "UPDATE claims SET state = ?, updated_at = ?, tx_hash = ?, sent_at = ?, block = ?,"
                " gas_used = ?, amount = ?, reason = ?, error = ? WHERE job_id = ?",
                (
                    c.state.value,
                    now,
                    c.tx_hash,
                    c.sent_at,
                    c.block,
                    c.gas_used,
                    None if c.amount is None else _dec(c.amount),
                    c.reason,
                    c.error,
                    c.job_id,
                ),
            )
            if cur.rowcount == 0:
                raise KeyError(f"no claim for job {c.job_id}")
            self._paid(change.paid, now)
            self._db.executemany(
                "UPDATE deliveries SET written_off_at = ? WHERE job_id = ? AND paid_at IS NULL",
                [(now, j) for j in change.written_off],
            )
            if settled is not None:
                self._settle(c.requester, provider, settled, now)

    def claim_evidence(self, job_id: str) -> ClaimEvidence | None:
        row = self._db.execute(
            "SELECT agreement, proof, public, vk FROM claims WHERE job_id = ?", (job_id,)
        ).fetchone()
        if row is None or row[0] is None:
            return None
        return ClaimEvidence(
            job_id,
            bytes(row[0]),
            tuple(int(v) for v in json.loads(row[1])),
            tuple(int(v) for v in json.loads(row[2])),
            bytes(row[3] or b""),
        )

    def claim(self, job_id: str) -> Claim | None:
        row = self._db.execute(
            f"SELECT {_CLAIM_COLUMNS} FROM claims WHERE job_id = ?", (job_id,)
        ).fetchone()
        return None if row is None else _claim(row)

    # --- the requester's side of claims --------------------------------------------

    def add_seen_claim(self, seen: SeenClaim) -> bool:
        """A ``ProofClaimed`` for one of our jobs; False when it was seen before."""
        with self._tx():
            cur = self._db.execute(
                "INSERT OR IGNORE INTO seen_claims (job_id, provider, requester, amount, block,"
                " tx_hash, seen_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    seen.job_id,
                    seen.provider,
                    seen.requester,
                    _dec(seen.amount),
                    seen.block,
                    seen.tx_hash,
                    seen.seen_at,
                ),
            )
        return cur.rowcount == 1

    def seen_claims(self) -> list[SeenClaim]:
        return [
            SeenClaim(r[0], r[1], r[2], int(r[3]), r[4], r[5], r[6])
            for r in self._db.execute(
                "SELECT job_id, provider, requester, amount, block, tx_hash, seen_at"
                " FROM seen_claims ORDER BY rowid"
            )
        ]

    def cursor(self, name: str) -> int | None:
        row = self._db.execute("SELECT block FROM cursors WHERE name = ?", (name,)).fetchone()
        return None if row is None else int(row[0])

    def set_cursor(self, name: str, block: int) -> None:
        with self._tx():
            self._db.execute(
                "INSERT INTO cursors (name, block) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET block = excluded.block",
                (name, block),
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
            " WHERE written_off_at IS NULL"
        ):
            delivered, paid_total, count = totals.get(requester, (0, 0, 0))
            p = int(price)
            totals[requester] = (delivered + p, paid_total + p * paid, count + paid)
        unpaid = [
            Delivery(r[0], r[1], r[2], int(r[3]), r[4], r[5], None, r[6], r[7], bool(r[8]))
            for r in db.execute(
                "SELECT job_id, requester, requester_peer, price, delivered_at, due_at,"
                " missing_at, underpaid_at,"
                " EXISTS (SELECT 1 FROM claims WHERE claims.job_id = deliveries.job_id)"
                " FROM deliveries WHERE paid_at IS NULL AND written_off_at IS NULL"
                " ORDER BY rowid"
            )
        ]
        recent_paid = db.execute(
            "SELECT job_id, requester FROM deliveries"
            " WHERE paid_at IS NOT NULL OR written_off_at IS NOT NULL"
            " ORDER BY COALESCE(paid_at, written_off_at) DESC, rowid DESC LIMIT ?",
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
        live_claims = tuple(s.value for s in CLAIM_LIVE)
        marks = ", ".join("?" * len(live_claims))
        claims = [
            _claim(r)
            for r in db.execute(
                f"SELECT {_CLAIM_COLUMNS} FROM claims WHERE state IN ({marks})", live_claims
            )
        ]
        claims += [
            _claim(r)
            for r in db.execute(
                f"SELECT {_CLAIM_COLUMNS} FROM claims WHERE state NOT IN ({marks})"
                " ORDER BY created_at DESC, job_id DESC LIMIT ?",
                (*live_claims, RECENT_CLAIMS),
            )
        ]
        claimed = {
            r[0]: int(r[1])
            for r in db.execute(
                "SELECT requester, COUNT(*) FROM claims WHERE state = 'paid' GROUP BY requester"
            )
        }
        return LedgerState(
            unpaid=unpaid,
            totals=totals,
            recent_paid=[(r[0], r[1]) for r in recent_paid],
            vouchers=vouchers,
            settled=settled,
            batches=[self._batch(i) for i in sorted(ids)],
            next_batch_id=top,
            claims=claims,
            claimed=claimed,
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
            " missing_at, underpaid_at,"
            " EXISTS (SELECT 1 FROM claims WHERE claims.job_id = deliveries.job_id),"
            " written_off_at FROM deliveries WHERE job_id = ?",
            (job_id,),
        ).fetchone()
        if r is None:
            return None
        return Delivery(r[0], r[1], r[2], int(r[3]), *r[4:9], bool(r[9]), r[10])

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


_CLAIM_COLUMNS = (
    "job_id, requester, price, state, created_at, tx_hash, sent_at, block, gas_used, amount,"
    " reason, error"
)


def _claim(r: tuple) -> Claim:
    return Claim(
        job_id=r[0],
        requester=r[1],
        price=int(r[2]),
        state=ClaimState(r[3]),
        created_at=r[4],
        tx_hash=r[5],
        sent_at=r[6],
        block=r[7],
        gas_used=r[8],
        amount=None if r[9] is None else int(r[9]),
        reason=r[10],
        error=r[11],
    )


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

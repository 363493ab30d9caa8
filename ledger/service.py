"""The ledger's trio shell: payments in, settlement transactions out.

:class:`LedgerService` owns one :class:`ledger.core.LedgerCore` (the rules),
one store (``ledger/store.py``) and one :class:`ledger.ports.EscrowPort`. Every
change the core makes is written to the store before anything acts on it,
under one lock, so a payment and a delivery racing each other reach the disk
in the order the core saw them. Network calls (estimates, sends, receipts)
happen outside that lock.

One loop (:meth:`LedgerService.run`) sleeps until the core's next timer, a
receipt poll, or a poke (a payment, a delivery, :meth:`settle_now`), then:
flags overdue vouchers, re-checks batches a crash left ``planned`` (their
channels' ``settled`` re-read on chain, the batch dropped, its vouchers
pending again), reads the receipts of batches in flight, and settles when a
batch is due. A chain error backs off (``retry_base_s`` doubling to
``retry_max_s``, jittered by the injected random) and :meth:`status` says so.

zk claims (a :class:`ClaimPort` given): each tick also opens a claim for every
``voucher_missing`` job the port says is a zk job (its evidence, read from the
provider's own records, is stored with the ``planned`` row), sends the
planned ones (the port registers the circuit first if the chain lacks it),
and polls the sent ones' receipts with the batches'. A refusal is recorded
with the contract's reason and never retried; a chain that cannot be reached
backs off like settlement does. After a paid claim the channel's ``settled``
is read again (the contract raised it by the price).

Time: ``clock()`` is what the core sees and what the store records (wall time
in the daemon, so it means the same after a restart; ``trio.current_time`` in
tests); sleeps are trio sleeps for the difference, so both work under
``MockClock``.
"""

from __future__ import annotations

import functools
import math
import random as _random
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

import trio

from ledger.core import (
    IN_FLIGHT,
    MAX_BATCH_CANDIDATES,
    Batch,
    BatchChange,
    BatchState,
    Claim,
    ClaimChange,
    ClaimEvidence,
    ClaimReceipt,
    ClaimRefused,
    ClaimState,
    ClaimUnavailable,
    GasPacker,
    LedgerConfig,
    LedgerCore,
    LedgerError,
    PaymentVerdict,
    Standing,
    send_gas,
)
from ledger.ports import ChainError, EscrowPort
from ledger.store import InlineLedgerStore, LedgerStore, ThreadedLedgerStore
from ledger.vouchers import Domain, SignedVoucher, checksum, verify_voucher

__all__ = ["ClaimPort", "LedgerConfig", "LedgerError", "LedgerService"]

#: Requesters whose escrow reading is cached (LRU): a flood of accounts cannot grow it.
ESCROW_CACHE_ENTRIES = 4096


class ClaimPort(Protocol):
    """What claiming zk jobs needs from the node and the chain (``maskd.money``)."""

    async def evidence(self, job_id: str) -> ClaimEvidence | None:
        """The job's claim evidence from the provider's own records; None when
        its agreement names no circuit (not a zk job). Raises ClaimUnavailable
        (a zk job whose evidence cannot be read), ChainError (transient: later)."""
        ...

    async def send_claim(self, evidence: ClaimEvidence) -> str:
        """Register the circuit if the chain lacks it, dry-run and send
        ``claimWithProof``; the transaction hash once the node accepted it.
        Raises ClaimRefused (the dry run reverted) or ChainError."""
        ...

    async def claim_receipt(self, tx_hash: str) -> ClaimReceipt | None:
        """The mined receipt, None while it is not in the chain."""
        ...

    async def claimed(self, job_id: str) -> bool:
        """``claimed(jobId, provider)`` on chain."""
        ...


class LedgerService:
    def __init__(
        self,
        store: ThreadedLedgerStore | InlineLedgerStore,
        escrow: EscrowPort,
        config: LedgerConfig | None = None,
        *,
        provider: str,
        clock: Callable[[], float] = time.time,
        random: _random.Random | None = None,
        claims: ClaimPort | None = None,
    ):
        self._db = store
        self.escrow = escrow
        self.claims = claims
        self.config = config or LedgerConfig()
        self.provider = checksum(provider)
        self.domain = Domain(escrow.chain_id, escrow.escrow_address)
        self._verify = functools.partial(verify_voucher, self.domain)
        self._clock = clock
        self._random = random or _random.Random()
        self._core: LedgerCore | None = None
        self._lock = trio.Lock()  # core change + its store write, together
        self._round = trio.Lock()  # one settling round at a time
        self._wake = trio.Event()
        self._changed = trio.Event()
        self._orphans: set[int] = set()
        self._last_poll = -math.inf
        self._escrow_cache: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self.counters: Counter[str] = Counter()  # payment reasons, escrow reads

    @property
    def changed(self) -> trio.Event:
        """Set (and replaced) whenever a batch, a flag or the chain's health
        changes: wait on it for a condition, as the component tests do."""
        return self._changed

    @property
    def core(self) -> LedgerCore:
        if self._core is None:
            raise LedgerError(
                "the ledger is not loaded yet", code="ledger_not_ready", hint="start run() first"
            )
        return self._core

    async def load(self) -> None:
        """Read the store into the core (once; :meth:`run` does it first)."""
        if self._core is not None:
            return
        async with self._lock:
            state = await self._db.call(lambda s: s.load(self.provider))
            now = self._clock()
            core, paid = LedgerCore.restore(self.provider, self.config, state, now=now)
            if paid:
                await self._db.call(lambda s: s.mark_paid(paid, now))
            self._orphans = {b.id for b in core.in_flight(BatchState.PLANNED)}
            self._core = core

    # --- deliveries and payments ---------------------------------------------

    async def expect(
        self, job_id: str, requester_account: str, requester_peer: str, price: int
    ) -> None:
        """A result is about to go out: a voucher for ``price`` is due within
        ``voucher_timeout_s``. Call it before sending; a replay is a no-op."""
        core = self.core
        async with self._lock:
            if core.knows(job_id) or await self._db.call(lambda s: s.has_delivery(job_id)):
                return
            now = self._clock()
            delivery, paid = core.expect(job_id, requester_account, requester_peer, price, now=now)
            if delivery is not None:
                await self._db.call(lambda s: s.add_delivery(delivery, paid))
        self._wake.set()

    async def withdraw(self, job_id: str) -> bool:
        """The job ended on this provider without its result reaching the
        requester: drop the voucher it was waiting for (``LedgerCore.withdraw``)."""
        async with self._lock:
            dropped = self.core.withdraw(job_id)
            if dropped is not None:
                await self._db.call(lambda s: s.withdraw_delivery(job_id))
                self.counters["delivery_withdrawn"] += 1
        return dropped is not None

    async def dispute(self, job_id: str, requester_peer: str) -> bool:
        """The requester refused the delivered result (``LedgerCore.dispute``):
        ``voucher_missing`` now, and a zk job is claimed at the next tick."""
        async with self._lock:
            now = self._clock()
            if not self.core.dispute(job_id, requester_peer, now):
                return False
            await self._db.call(lambda s: s.mark_missing([job_id], now))
            self.counters["disputed"] += 1
        self._notify()
        self._wake.set()
        return True

    async def payment(
        self, job_id: object, requester_peer: object, cumulative: object, signature: object
    ) -> PaymentVerdict:
        """A ``Payment`` from the wire (any field may be hostile); never raises for it."""
        return await self._apply(
            lambda now: self.core.on_wire_payment(
                job_id, requester_peer, cumulative, signature, verify=self._verify, now=now
            )
        )

    async def on_payment(self, job_id: str, voucher: SignedVoucher) -> PaymentVerdict:
        return await self._apply(
            lambda now: self.core.on_payment(job_id, voucher, verify=self._verify, now=now)
        )

    async def _apply(self, decide: Callable[[float], PaymentVerdict]) -> PaymentVerdict:
        async with self._lock:
            now = self._clock()
            verdict = decide(now)
            self.counters[f"payment_{verdict.reason.value}"] += 1
            if verdict.kept or verdict.paid or verdict.underpaid:
                await self._db.call(lambda s: s.record_payment(verdict, now))
        if verdict.kept:
            self._wake.set()
        return verdict

    def owed_by(self, requester: str, running: int = 0) -> int:
        return self.core.owed_by(requester, running)

    async def call_store(self, fn: Callable[[LedgerStore], Any]) -> Any:
        """Any other store call (the requester's side of claims), through the facade."""
        return await self._db.call(fn)

    def standing(self, requester: str) -> Standing:
        return self.core.standing(requester)

    # --- the requester's escrow ------------------------------------------------

    async def escrow_available(self, requester: str) -> int:
        """``available(requester)`` on chain, cached ``escrow_cache_s``.
        Raises ChainError (transient when the chain is unreachable)."""
        key = checksum(requester)
        cached = self.cached_available(key)
        if cached is not None and cached[1]:
            return cached[0]
        value = await self.escrow.available(key)
        self.counters["escrow_reads"] += 1
        self._escrow_cache[key] = (value, self._clock())
        self._escrow_cache.move_to_end(key)
        while len(self._escrow_cache) > ESCROW_CACHE_ENTRIES:
            self._escrow_cache.popitem(last=False)
        return value

    def cached_available(self, requester: str) -> tuple[int, bool] | None:
        """The cached reading and whether it is still fresh; None if never read."""
        try:
            hit = self._escrow_cache.get(checksum(requester))
        except ValueError:
            return None
        if hit is None:
            return None
        return hit[0], self._clock() - hit[1] < self.config.escrow_cache_s

    async def escrow_covers(self, requester: str, price: int, running: int = 0) -> bool:
        """Whether the requester's escrow covers what it owes here plus ``price``
        (the quote check; refuse with ``insufficient_escrow`` when False)."""
        available = await self.escrow_available(requester)
        return available >= self.owed_by(requester, running) + price

    # --- the loop ------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        await self.load()
        task_status.started()
        while True:
            self._wake = trio.Event()
            await self._tick()
            delay = self._next_wake(self._clock())
            with trio.move_on_after(math.inf if delay is None else max(delay, 0.0)):
                await self._wake.wait()

    def _next_wake(self, now: float) -> float | None:
        core = self.core
        times = [t for t in (core.next_timer(now),) if t is not None]
        if (
            self._orphans
            or core.in_flight(BatchState.SENT, BatchState.MINED)
            or self._claiming(ClaimState.SENT)
        ):
            poll = self._last_poll + self.config.poll_interval_s
            times.append(max(poll, core.health.retry_at or poll))
        if self._claiming(ClaimState.PLANNED) or (self.claims and core.claim_candidates()):
            times.append(core.health.retry_at or now)
        return None if not times else min(times) - now

    def _claiming(self, state: ClaimState) -> bool:
        return self.claims is not None and bool(self.core.live_claims(state))

    async def _tick(self) -> None:
        core = self.core
        async with self._lock:
            now = self._clock()
            late = core.overdue(now)
            if late:
                await self._db.call(lambda s: s.mark_missing(late, now))
                self._notify()
        if self._orphans and not self._backing_off():
            await self._recover_orphans()
        if self.claims is not None and not self._backing_off():
            await self._claim_round()
        if (
            (core.in_flight(BatchState.SENT, BatchState.MINED) or self._claiming(ClaimState.SENT))
            and self._clock() >= self._last_poll + self.config.poll_interval_s
            and not self._backing_off()
        ):
            await self._poll()
        if core.should_settle(self._clock()):
            try:
                await self._settle_round()
            except (ChainError, LedgerError):
                pass  # recorded in core.health; the loop retries after the back-off

    def _backing_off(self) -> bool:
        retry_at = self.core.health.retry_at
        return retry_at is not None and self._clock() < retry_at

    async def _recover_orphans(self) -> None:
        """A batch a crash left ``planned`` may or may not have gone out: read
        ``settled`` for its channels, then drop it so what is still unpaid is
        pending again (a resend of what did go out pays nothing)."""
        core = self.core
        for batch_id in sorted(self._orphans):
            batch = core.batch(batch_id)
            if batch is None or batch.state is not BatchState.PLANNED:
                self._orphans.discard(batch_id)
                continue
            try:
                seen = [(r, await self.escrow.settled(r, self.provider)) for r, _ in batch.entries]
            except ChainError as e:
                self._chain_failed(e)
                return
            async with self._lock:
                now = self._clock()
                for requester, settled in seen:
                    if core.settled_seen(requester, settled):
                        await self._put(
                            LedgerStore.set_settled, requester, self.provider, settled, now
                        )
                change = core.batch_dropped(
                    batch_id, "interrupted before its transaction hash was stored; re-checked"
                )
                await self._put(LedgerStore.update_batch, change, self.provider, now)
            self._orphans.discard(batch_id)
            self._notify()

    async def _poll(self) -> None:
        core = self.core
        self._last_poll = self._clock()
        try:
            head = await self.escrow.block_number()
            for batch in core.in_flight(BatchState.SENT, BatchState.MINED):
                assert batch.tx_hash is not None
                receipt = await self.escrow.receipt(batch.tx_hash)
                async with self._lock:
                    now = self._clock()
                    change = core.batch_receipt(batch.id, receipt, head, now, self._random.random())
                    if change is not None:
                        await self._put(LedgerStore.update_batch, change, self.provider, now)
                if change is not None:
                    self._notify()
            if self.claims is not None:
                await self._poll_claims(head)
        except ChainError as e:
            self._chain_failed(e)

    # --- zk claims ---------------------------------------------------------------

    async def _claim_round(self) -> None:
        """Open a claim for each new candidate, then send the planned ones.
        A transient chain error backs off and ends the round."""
        assert self.claims is not None
        core = self.core
        for job_id in core.claim_candidates():
            try:
                evidence = await self.claims.evidence(job_id)
            except ClaimUnavailable as e:
                async with self._lock:
                    claim = core.claim_unavailable(job_id, e.reason, str(e), self._clock())
                    if claim is not None:
                        await self._put(LedgerStore.add_claim, claim)
                        self.counters["claims_failed"] += 1
                self._notify()
                continue
            except ChainError as e:
                self._chain_failed(e)
                return
            except Exception as e:  # a bug reading one job's records: that claim only
                why = ClaimUnavailable("evidence_error", f"{type(e).__name__}: {e}"[:300])
                async with self._lock:
                    claim = core.claim_unavailable(job_id, why.reason, str(why), self._clock())
                    if claim is not None:
                        await self._put(LedgerStore.add_claim, claim)
                        self.counters["claims_failed"] += 1
                self._notify()
                continue
            if evidence is None:
                core.not_claimable(job_id)
                self.counters["claims_not_zk"] += 1
                continue
            async with self._lock:
                claim = core.open_claim(job_id, self._clock())
                if claim is None:
                    continue
                await self._put(LedgerStore.add_claim, claim, evidence)
                self.counters["claims_opened"] += 1
        for claim in core.live_claims(ClaimState.PLANNED):
            if core.delivery(claim.job_id) is None:
                # a voucher paid it before the claim went out: sending it now would
                # pay the job a second time (the contract cannot tell)
                error = "a voucher paid the job before its claim was sent"
                await self._end_claim(core.claim_failed, claim.job_id, "paid_by_voucher", error)
                continue
            if not await self._send_claim(claim):
                return

    async def _send_claim(self, claim: Claim) -> bool:
        """One planned claim out; False when the chain is backing off."""
        assert self.claims is not None
        core = self.core
        job_id = claim.job_id
        evidence = await self._db.call(lambda s: s.claim_evidence(job_id))
        try:
            if evidence is None:
                raise ClaimUnavailable("no_evidence", "the claim's evidence is not in the store")
            tx_hash = await self.claims.send_claim(evidence)
        except ClaimRefused as e:
            await self._end_claim(core.claim_reverted, job_id, e.reason, str(e))
            return True
        except ClaimUnavailable as e:
            await self._end_claim(core.claim_failed, job_id, e.reason, str(e))
            return True
        except ChainError as e:
            if e.transient:
                self._chain_failed(e)
                return False
            await self._end_claim(core.claim_failed, job_id, "send_failed", _describe(e))
            return True
        except Exception as e:
            # unknown: it may have gone out. Planned still, it is sent again after
            # the back-off, and a claim that did land is refused already_claimed
            self._chain_failed(e)
            return False
        async with self._lock:
            sent = core.claim_sent(job_id, tx_hash, self._clock())
            await self._put(LedgerStore.update_claim, sent, self.provider, self._clock())
            self.counters["claims_sent"] += 1
        self._notify()
        self._wake.set()  # the loop polls its receipt
        return True

    async def _poll_claims(self, head: int) -> None:
        """The receipts of sent claims (ChainError propagates to the poll)."""
        assert self.claims is not None
        core = self.core
        for claim in core.live_claims(ClaimState.SENT):
            assert claim.tx_hash is not None
            job_id = claim.job_id
            receipt = await self.claims.claim_receipt(claim.tx_hash)
            if receipt is None:
                waited = self._clock() - (claim.sent_at or 0.0)
                if waited < self.config.tx_timeout_s:
                    continue
                if await self.claims.claimed(job_id):
                    await self._end_claim(core.claim_paid, job_id, None)
                else:
                    async with self._lock:
                        again = core.claim_resend(
                            job_id, f"not mined within {self.config.tx_timeout_s:g}s: sent again"
                        )
                        await self._put(
                            LedgerStore.update_claim, again, self.provider, self._clock()
                        )
                    self._wake.set()
                continue
            if head - receipt.block_number + 1 < self.config.confirmations:
                continue
            r = receipt
            mined = {"block": r.block_number, "gas_used": r.gas_used}
            if r.status:
                await self._end_claim(core.claim_paid, job_id, r.amount, **mined)
            else:
                error = r.error or f"claimWithProof {r.tx_hash} reverted"
                await self._end_claim(
                    core.claim_reverted, job_id, r.reason or "reverted", error, **mined
                )

    async def _end_claim(self, step: Callable[..., ClaimChange], *args: Any, **kw: Any) -> None:
        """A claim's outcome (``step(*args, now=now, **kw)`` on the core) and its
        row, then, for a paid one, the channel's ``settled`` read again (the
        contract raised it by the price)."""
        core = self.core
        async with self._lock:
            now = self._clock()
            change = step(*args, now=now, **kw)
            await self._put(LedgerStore.update_claim, change, self.provider, now)
        state = change.claim.state
        self.counters[f"claims_{state.value}"] += 1
        self._notify()
        if state is not ClaimState.PAID:
            return
        requester = change.claim.requester
        try:
            settled = await self.escrow.settled(requester, self.provider)
        except ChainError:
            return  # the next batch's receipt brings it
        async with self._lock:
            if core.settled_seen(requester, settled):
                await self._put(
                    LedgerStore.set_settled, requester, self.provider, settled, self._clock()
                )

    async def _settle_round(self) -> list[int]:
        """Send every pending voucher, in as many batches as the gas limit needs.
        Raises ChainError or LedgerError (already recorded in ``core.health``)."""
        core, created = self.core, []
        async with self._round:
            while vouchers := core.pending_vouchers(self._clock())[:MAX_BATCH_CANDIDATES]:
                packer = GasPacker(len(vouchers), self.config.batch_gas_limit)
                try:
                    while (n := packer.next_probe()) is not None:
                        packer.observe(n, await self.escrow.estimate_settle(vouchers[:n]))
                except ChainError as e:
                    self._chain_failed(e)
                    raise
                n, estimate = packer.result()
                if n == 0:
                    error = LedgerError(
                        f"one voucher needs more than ledger.batch_gas_limit"
                        f" ({self.config.batch_gas_limit}) gas",
                        code="batch_gas_limit",
                        hint="raise ledger.batch_gas_limit (at most 15252014)",
                    )
                    self._chain_failed(error)
                    raise error
                batch = await self._open_batch(vouchers[:n], send_gas(estimate))
                try:
                    tx_hash = await self.escrow.send_settle(vouchers[:n], batch.gas)
                except ChainError as e:
                    await self._record(core.batch_failed, batch.id, _describe(e))
                    raise
                await self._record(core.batch_sent, batch.id, tx_hash)
                created.append(batch.id)
        if created:
            self._wake.set()  # the loop polls their receipts
        return created

    async def _open_batch(self, vouchers: list[SignedVoucher], gas: int) -> Batch:
        async with self._lock:
            batch = self.core.open_batch(vouchers, gas, self._clock())
            await self._db.call(lambda s: s.add_batch(batch))
        return batch

    async def _record(self, step: Callable[..., Batch | BatchChange], *args: Any) -> None:
        """``step(*args, now[, rand])`` on the core, then its row, under the lock."""
        async with self._lock:
            now = self._clock()
            if step == self.core.batch_failed:
                change = step(*args, now, self._random.random())
            else:
                change = step(*args, now)
            await self._put(LedgerStore.update_batch, change, self.provider, now)
        self._notify()

    async def _put(self, write: Callable[..., Any], *args: Any) -> Any:
        """One store method (``LedgerStore.x``) with ``args``, through the facade."""
        return await self._db.call(lambda s: write(s, *args))

    def chain_reachable(self) -> None:
        """The connection to the chain was (re)made: the failures so far were
        "not connected", so `mask ledger` must not keep saying "retrying" until
        the next batch's receipt, and anything pending is tried at once."""
        if self._core is None or self.core.health.attempts == 0:
            return
        self.core.chain_ok()
        self._wake.set()
        self._notify()

    def _chain_failed(self, error: Exception) -> None:
        self.core.chain_failed(_describe(error), self._clock(), self._random.random())
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # --- settle now, status, snapshot ------------------------------------------------

    async def settle_now(self) -> list[dict[str, Any]]:
        """Send every pending voucher now (whatever the thresholds and the
        back-off) and wait until this and every batch already in flight is
        final, reverted or dropped. Needs :meth:`run` going (it reads the
        receipts). Raises LedgerError when a batch could not be sent; what
        could not be sent stays pending and is retried."""
        core = self.core
        waiting = {b.id for b in core.in_flight()}
        try:
            waiting.update(await self._settle_round())
        except ChainError as e:
            raise LedgerError(
                f"settling failed: {e}",
                code="chain_unreachable" if e.transient else "settle_failed",
                hint=e.hint or "the vouchers stay pending and are sent again after a back-off",
            ) from e
        self._wake.set()
        while True:
            changed = self._changed
            batches = [core.batch(i) for i in sorted(waiting)]
            if all(b is None or b.state not in IN_FLIGHT for b in batches):
                return [_batch_view(b) for b in batches if b is not None]
            await changed.wait()

    def status(self) -> dict[str, Any]:
        core, h = self.core, self.core.health
        now = self._clock()
        return {
            "state": "ok" if h.attempts == 0 else "retrying",
            "attempts": h.attempts,
            "last_error": h.last_error,
            "last_error_at": h.last_error_at,
            "next_retry_at": h.retry_at if h.retry_at is not None and h.retry_at > now else None,
            "pending": len(core.pending_vouchers(now)),
            "in_flight": len(core.in_flight()),
            "claims_in_flight": len(core.live_claims()),
        }

    def snapshot(self) -> dict[str, Any]:
        """``mask ledger --json``: amounts are decimal strings (uint256)."""
        core = self.core
        return {
            "provider": self.provider,
            "chain_id": self.escrow.chain_id,
            "escrow": self.escrow.escrow_address,
            "channels": core.channels(),
            "batches": [_batch_view(b) for b in core.recent_batches()],
            "pending_vouchers": [
                {"requester": v.requester, "provider": v.provider, "cumulative": str(v.cumulative)}
                for v in core.pending_vouchers(self._clock())
            ],
            "missing": [
                {
                    "job_id": d.job_id,
                    "requester": d.requester,
                    "price": str(d.price),
                    "due_at": d.due_at,
                }
                for d in core.missing()
            ],
            "claims": [claim_view(c) for c in core.recent_claims()],
            "last_error": core.health.last_error,
            "status": self.status(),
            "counters": dict(self.counters),
        }


def _batch_view(b: Batch) -> dict[str, Any]:
    return {
        "id": b.id,
        "status": b.state.value,
        "tx_hash": b.tx_hash,
        "vouchers": [{"requester": r, "cumulative": str(c)} for r, c in b.entries],
        "gas": b.gas,
        "gas_used": b.gas_used,
        "block": b.block,
        "error": b.error,
        "created_at": b.created_at,
    }


def claim_view(c: Claim) -> dict[str, Any]:
    """A claim for ``mask ledger --json`` (amounts as decimal strings)."""
    return {
        "job_id": c.job_id,
        "requester": c.requester,
        "price": str(c.price),
        "status": c.state.value,
        "tx_hash": c.tx_hash,
        "amount": None if c.amount is None else str(c.amount),
        "block": c.block,
        "gas_used": c.gas_used,
        "reason": c.reason,
        "error": c.error,
        "created_at": c.created_at,
    }


def _describe(error: Exception) -> str:
    hint = getattr(error, "hint", "")
    return f"{error} ({hint})" if hint else str(error)

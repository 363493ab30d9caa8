"""Trio shells around the market cores: the I/O the cores ask for, nothing more.

Each service owns one core and one bounded inbox. A single loop takes the next
inbox event (or the core's next timer), calls the core, and runs the commands
it returns in order: persistence is awaited before anything after it runs, so
a transition is on disk before the node acts on it. Sends and slow work
(fetching, executing, storing output) run as tasks in the service's nursery,
bounded, and report back through the inbox; a send that fails is counted,
not raised, because a peer going away is normal and the core's timers deal
with it.

Time: ``clock()`` is the clock the cores see (wall time in the daemon,
``trio.current_time`` in tests); sleeps are trio sleeps for the difference, so
both work under ``MockClock``.

The interfaces the daemon supplies are small ``Protocol``\\ s below; the fakes
in ``scheduler.testing`` implement them.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Callable
from typing import Any, Protocol

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol.codec import DECODE_ERRORS, encode
from protocol.errors import JobError
from protocol.identity import sign_gossip
from protocol.market import BidValidator, JobBid, decode_market, encode_market
from protocol.messages import BIDS_TOPIC
from protocol.supervisor import Supervisor, TaskFailure
from protocol.verdict import Outcome, Reason, Verdict
from scheduler import provider as pv
from scheduler import requester as rq
from scheduler.async_store import AsyncStore, InlineStore, ThreadedStore
from scheduler.spec import JobSpec
from scheduler.store import CreateJob, JobRow, RecordTransition

__all__ = [
    "AsyncStore",
    "Gossip",
    "InlineStore",
    "Ledger",
    "Outputs",
    "ProviderService",
    "RequesterService",
    "ThreadedStore",
    "Transport",
    "Worker",
]


class Gossip(Protocol):
    async def publish(self, topic: str, data: bytes) -> None: ...


class Transport(Protocol):
    """One message to one peer on ``/mask/market/1``; raises OSError when it cannot."""

    async def send(self, peer_id: str, data: bytes) -> None: ...


class Outputs(Protocol):
    """Requester side: fetch a result's output and check it; (ok, detail)."""

    async def fetch_and_verify(
        self, peer_id: str, output_cid: str, verify_mode: str
    ) -> tuple[bool, str]: ...

    async def fetch_logs(self, job_id: str, peer_id: str, output_cid: str) -> None:
        """A failed job's output, kept for its logs; best effort (never raises)."""


class Worker(Protocol):
    """Provider side: payload, sandboxed execution (cancellable), output storage."""

    async def fetch_payload(self, job_id: str, peer_id: str, spec_cid: str) -> None: ...

    async def execute(self, job_id: str, agreement: Any) -> pv.ExecutionOutcome: ...

    async def store_output(self, job_id: str) -> str: ...


class Ledger(Protocol):
    """Provider side: the money the market needs (``ledger/service.py`` behind
    ``maskd/ledger_link.py``; ``scheduler.testing.FakeLedger`` in tests)."""

    def funds(self, account: str) -> pv.Funds | None:
        """The cached view of a requester's escrow; no I/O."""

    def funds_fresh(self, account: str) -> bool: ...

    async def refresh_funds(self, account: str) -> None:
        """Read the requester's escrow from the chain into the cache (never raises)."""

    async def expect(
        self, job_id: str, requester_peer: str, requester_account: str, price: int
    ) -> None:
        """Persist that a result went out and a voucher is due for it."""

    async def payment(self, source: str, payment: Any) -> None:
        """Check a ``Payment`` and keep its voucher (never raises for bad input)."""

    async def withdraw(self, job_id: str) -> None:
        """The job ended here without its result reaching the requester: no
        voucher is due for it after all."""

    async def dispute(self, job_id: str, requester_peer: str) -> None:
        """``requester_peer`` refused the job's delivered result: its voucher is
        missing now (a zk job is claimed on chain). Never raises for bad input."""


class _Shell:
    """The loop both services share: inbox or timer -> core -> commands in order."""

    def __init__(
        self,
        store: AsyncStore,
        transport: Transport,
        clock: Callable[[], float],
        *,
        inbox_size: int,
        max_tasks: int,
        max_outbox: int = 256,
        supervisor: Supervisor | None = None,
    ):
        self.supervisor = supervisor or Supervisor("market")
        self._store = store
        self._transport = transport
        self._clock = clock
        self._inbox_send, self._inbox = trio.open_memory_channel[tuple](inbox_size)
        self._max_tasks = max_tasks
        self._max_outbox = max_outbox
        self._outbox: dict[str, deque[bytes]] = {}
        self._tasks = 0
        self._lock = trio.Lock()
        self._nursery: trio.Nursery | None = None
        self.drops: Counter[str] = Counter()
        self.changed = trio.Event()  # set and replaced after every batch of commands

    # the core (a RequesterCore or ProviderCore, set by the subclass): both have
    # resume(row, now), next_deadline() and handle_timer(now)
    core: Any

    async def resume(self, rows: list[JobRow]) -> None:
        """Hand the jobs a previous run left open back to the core, then wake the loop."""
        async with self._lock:
            now = self._clock()
            for row in rows:
                await self._execute(self.core.resume(row, now), now)
        await self._inbox_send.send(("wake",))

    def _next_deadline(self) -> float | None:
        return self.core.next_deadline()

    def _on_timer(self, now: float) -> list:
        return self.core.handle_timer(now)

    def _on_event(self, event: tuple, now: float) -> list:
        raise NotImplementedError

    async def _run_command(self, cmd: Any, now: float) -> bool:
        """Service-specific commands; False when the command is not one of them."""
        raise NotImplementedError

    def _create_refused(self, job_id: str, now: float) -> list:
        """The store already holds ``job_id``: what the core does instead."""
        raise JobError(f"job {job_id} already exists", code="job_exists")

    def deliver(self, source: str, data: bytes) -> None:
        """A direct message from ``source`` (stream handler side): decode once, enqueue."""
        try:
            message = decode_market(data)
        except (*DECODE_ERRORS, ValueError):
            self.drops["undecodable"] += 1
            return
        self._enqueue(("message", source, message))

    def _enqueue(self, event: tuple) -> None:
        try:
            self._inbox_send.send_nowait(event)
        except trio.WouldBlock:
            self.drops["inbox_full"] += 1

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while True:
                deadline = self._next_deadline()
                when = math.inf
                if deadline is not None:
                    when = trio.current_time() + max(0.0, deadline - self._clock())
                event = None
                with trio.move_on_at(when):
                    event = await self._inbox.receive()
                async with self._lock:
                    now = self._clock()
                    try:
                        cmds = self._on_timer(now) if event is None else self._on_event(event, now)
                        await self._execute(cmds, now)
                    except Exception as exc:  # one event's failure, not the service's
                        what = "timer" if event is None else str(event[0])
                        self.supervisor.record("event", what, exc)
                        self._notify()

    async def _execute(self, cmds: list, now: float) -> None:
        for cmd in cmds:
            if isinstance(cmd, CreateJob):
                try:
                    await self._store.apply(cmd, now)
                except JobError as exc:
                    if exc.code != "job_exists":
                        raise
                    # a peer reused the id of a job stored here: the rest of this
                    # batch was for that job; the core takes it back and declines
                    self.drops["duplicate_job"] += 1
                    await self._execute(self._create_refused(cmd.job_id, now), now)
                    return
            elif isinstance(cmd, RecordTransition):
                await self._store.apply(cmd, now)
            elif hasattr(cmd, "message") and hasattr(cmd, "peer_id"):
                self._queue_send(cmd.peer_id, encode_market(cmd.message))
            elif not await self._run_command(cmd, now):
                raise TypeError(f"no handler for command {cmd!r}")
        self._notify()

    def _notify(self) -> None:
        """Wake whoever waits on :attr:`changed` (tests, watchers); never a sleep."""
        self.changed.set()
        self.changed = trio.Event()

    def _queue_send(self, peer_id: str, data: bytes) -> None:
        """Sends to one peer go out in the order the core emitted them (a countersign
        before the first heartbeat), from one drain task per peer, bounded."""
        queue = self._outbox.get(peer_id)
        if queue is None:
            queue = deque()
            if not self._spawn("send", self._drain, peer_id, queue, context=peer_id):
                return
            self._outbox[peer_id] = queue
        if len(queue) >= self._max_outbox:
            self.drops["outbox_full"] += 1
            return
        queue.append(data)

    async def _drain(self, peer_id: str, queue: deque[bytes]) -> None:
        try:
            while queue:
                data = queue.popleft()
                try:
                    await self._transport.send(peer_id, data)
                except OSError:
                    self.drops["send_failed"] += 1
        finally:
            del self._outbox[peer_id]

    def _spawn(
        self,
        kind: str,
        fn: Callable[..., Any],
        *args: Any,
        context: str = "",
        on_error: Callable[[TaskFailure], Any] | None = None,
    ) -> bool:
        """Start a bounded task under the supervisor: an error in it fails that
        task (``on_error`` reports it as the thing it was doing), never the service."""
        if self._tasks >= self._max_tasks or self._nursery is None:
            self.drops["too_many_tasks"] += 1
            return False
        self._tasks += 1

        async def task() -> None:
            try:
                await self.supervisor.run(kind, fn, *args, context=context, on_error=on_error)
            finally:
                self._tasks -= 1

        self._nursery.start_soon(task)
        return True


class RequesterService(_Shell):
    def __init__(
        self,
        core: rq.RequesterCore,
        *,
        store: AsyncStore,
        gossip: Gossip,
        transport: Transport,
        outputs: Outputs,
        peer_key: Ed25519PrivateKey,
        clock: Callable[[], float],
        inbox_size: int = 1024,
        max_tasks: int = 1024,
        supervisor: Supervisor | None = None,
    ):
        super().__init__(
            store,
            transport,
            clock,
            inbox_size=inbox_size,
            max_tasks=max_tasks,
            supervisor=supervisor,
        )
        self.core = core
        self._gossip = gossip
        self._outputs = outputs
        self._peer_key = peer_key

    async def submit(self, spec: JobSpec, spec_cid: str) -> str:
        async with self._lock:
            now = self._clock()
            job_id, cmds = self.core.submit(spec, spec_cid, now)
            await self._execute(cmds, now)
        await self._inbox_send.send(("wake",))  # the timers changed
        return job_id

    async def load_channels(self, owed: list) -> None:
        """The channels' cumulative totals from the store's owed rows; the latest
        voucher of recently paid channels goes out again (a crash may have eaten it)."""
        async with self._lock:
            now = self._clock()
            await self._execute(self.core.load_channels(owed, now), now)

    async def cancel(self, job_id: str) -> None:
        async with self._lock:
            now = self._clock()
            await self._execute(self.core.cancel(job_id, now), now)

    def _on_event(self, event: tuple, now: float) -> list:
        kind = event[0]
        if kind == "message":
            return self.core.handle_message(event[1], event[2], now)
        if kind == "verified":
            return self.core.output_verified(event[1], event[2], event[3], now)
        return []

    async def _run_command(self, cmd: Any, now: float) -> bool:
        if isinstance(cmd, rq.PublishBid):
            data = encode(sign_gossip(encode_market(cmd.bid), self._peer_key))
            await self._gossip.publish(BIDS_TOPIC, data)
        elif isinstance(cmd, rq.FetchOutput):
            self._spawn(
                "fetch_output",
                self._fetch,
                cmd,
                context=cmd.job_id,
                on_error=self._fetch_failed(cmd),
            )
        elif isinstance(cmd, rq.FetchLogs):
            self._spawn(
                "fetch_logs",
                self._outputs.fetch_logs,
                cmd.job_id,
                cmd.peer_id,
                cmd.output_cid,
                context=cmd.job_id,
            )
        else:
            return False
        return True

    async def _fetch(self, cmd: rq.FetchOutput) -> None:
        ok, detail = await self._outputs.fetch_and_verify(
            cmd.peer_id, cmd.output_cid, cmd.verify_mode
        )
        await self._inbox_send.send(("verified", cmd.job_id, ok, detail))

    def _fetch_failed(self, cmd: rq.FetchOutput) -> Callable[[TaskFailure], Any]:
        async def report(failure: TaskFailure) -> None:
            detail = f"checking the output failed here ({failure.error}): {failure.message}"
            await self._inbox_send.send(("verified", cmd.job_id, False, detail))

        return report


class ProviderService(_Shell):
    def __init__(
        self,
        core: pv.ProviderCore,
        *,
        store: AsyncStore,
        transport: Transport,
        worker: Worker,
        clock: Callable[[], float],
        validator: BidValidator | None = None,
        ledger: Ledger | None = None,
        inbox_size: int = 1024,
        max_tasks: int = 1024,
        supervisor: Supervisor | None = None,
    ):
        super().__init__(
            store,
            transport,
            clock,
            inbox_size=inbox_size,
            max_tasks=max_tasks,
            supervisor=supervisor,
        )
        self.core = core
        self.validator = validator or BidValidator()
        self._ledger = ledger
        # bids waiting for their requester's escrow to be read, per account
        self._awaiting_funds: dict[str, list[JobBid]] = {}
        self._worker = worker
        self._payloads: dict[str, pv.FetchPayload] = {}
        self._executions: dict[str, trio.CancelScope] = {}

    def _create_refused(self, job_id: str, now: float) -> list:
        return self.core.duplicate_job(job_id, now)

    def deliver_bid(self, source: str, data: bytes) -> Outcome[JobBid]:
        """Gossip from ``/mask/bids/1``; the verdict goes back to the mesh for scoring."""
        now = self._clock()
        outcome = self.validator.validate(data, source=source, now=now)
        if outcome.verdict is Verdict.ACCEPT:
            if self.core.over_bid_rate(outcome.message.peer_id, now):
                # a flood: dropped here, and not relayed to the rest of the mesh
                self.core.counters["bid_rate_limited"] += 1
                return Outcome(Verdict.IGNORE, Reason.RATE_LIMITED)
            self._bid_when_funded(outcome.message)
        return outcome

    def _bid_when_funded(self, bid: JobBid) -> None:
        """Hand the bid to the core once the requester's escrow is known: a fresh
        cache answers at once; otherwise one read per account is in flight and
        the bids that arrive meanwhile wait for it (bounded like the inbox)."""
        ledger, account = self._ledger, bid.identity.account
        if ledger is None or not self.core.config.paid or ledger.funds_fresh(account):
            self._enqueue(("bid", bid))
            return
        waiting = self._awaiting_funds.get(account)
        if waiting is not None:
            if len(waiting) >= self.core.config.max_quotes_per_requester:
                self.drops["awaiting_funds_full"] += 1
                return
            waiting.append(bid)
            return
        if not self._spawn("escrow_read", self._read_funds, account, context=account):
            return
        self._awaiting_funds[account] = [bid]

    async def _read_funds(self, account: str) -> None:
        assert self._ledger is not None
        try:
            await self._ledger.refresh_funds(account)
        finally:
            for bid in self._awaiting_funds.pop(account, []):
                self._enqueue(("bid", bid))

    def _on_event(self, event: tuple, now: float) -> list:
        kind = event[0]
        if kind == "bid":
            bid: JobBid = event[1]
            return self.core.handle_bid(bid, now)
        if kind == "message":
            return self.core.handle_message(event[1], event[2], now)
        if kind == "finished":
            return self.core.execution_finished(event[1], event[2], now)
        if kind == "stored":
            return self.core.output_stored(event[1], event[2], now)
        if kind == "store_failed":
            return self.core.output_failed(event[1], "output_store_failed", event[2], now)
        return []

    async def _run_command(self, cmd: Any, now: float) -> bool:
        if isinstance(cmd, pv.ExpectPayment):
            if self._ledger is not None:
                await self._ledger.expect(
                    cmd.job_id, cmd.requester_peer, cmd.requester_account, cmd.price
                )
        elif isinstance(cmd, pv.WithdrawPayment):
            if self._ledger is not None:
                await self._ledger.withdraw(cmd.job_id)
        elif isinstance(cmd, pv.ForwardPayment):
            if self._ledger is not None:
                await self._ledger.payment(cmd.source, cmd.payment)
        elif isinstance(cmd, pv.DisputePayment):
            if self._ledger is not None:
                await self._ledger.dispute(cmd.job_id, cmd.requester_peer)
        elif isinstance(cmd, pv.FetchPayload):
            self._payloads[cmd.job_id] = cmd
        elif isinstance(cmd, pv.StartExecution):
            scope = trio.CancelScope()
            self._executions[cmd.job_id] = scope
            self._spawn(
                "execute",
                self._execute_job,
                cmd,
                scope,
                context=cmd.job_id,
                on_error=self._execution_failed(cmd.job_id, scope),
            )
        elif isinstance(cmd, pv.AbortExecution):
            scope = self._executions.pop(cmd.job_id, None)
            if scope is not None:
                scope.cancel()
        elif isinstance(cmd, pv.StoreOutput):
            self._spawn(
                "store_output",
                self._store_output,
                cmd.job_id,
                context=cmd.job_id,
                on_error=self._store_failed(cmd.job_id),
            )
        else:
            return False
        return True

    async def _execute_job(self, cmd: pv.StartExecution, scope: trio.CancelScope) -> None:
        outcome = None
        with scope:
            fetch = self._payloads.pop(cmd.job_id, None)
            if fetch is not None:
                await self._worker.fetch_payload(fetch.job_id, fetch.peer_id, fetch.spec_cid)
            outcome = await self._worker.execute(cmd.job_id, cmd.agreement)
        if self._executions.get(cmd.job_id) is scope:
            del self._executions[cmd.job_id]
        if scope.cancelled_caught:
            self._notify()  # an abort has taken effect
        if outcome is not None:
            await self._inbox_send.send(("finished", cmd.job_id, outcome))

    async def _store_output(self, job_id: str) -> None:
        cid = await self._worker.store_output(job_id)
        await self._inbox_send.send(("stored", job_id, cid))

    def _execution_failed(
        self, job_id: str, scope: trio.CancelScope
    ) -> Callable[[TaskFailure], Any]:
        """The worker raised: the job fails with the reason, like any failed run."""

        async def report(failure: TaskFailure) -> None:
            if self._executions.get(job_id) is scope:
                del self._executions[job_id]
            self._payloads.pop(job_id, None)
            outcome = pv.failed_outcome(
                "provider_error",
                f"the provider could not run the job ({failure.error}): {failure.message}",
            )
            await self._inbox_send.send(("finished", job_id, outcome))

        return report

    def _store_failed(self, job_id: str) -> Callable[[TaskFailure], Any]:
        """Storing the output raised: the job fails with the reason, with no output."""

        async def report(failure: TaskFailure) -> None:
            message = (
                f"the provider could not store the output ({failure.error}): {failure.message}"
            )
            await self._inbox_send.send(("store_failed", job_id, message))

        return report

"""Public fakes for the market services: an in-process mesh for tests and the lead.

- :class:`FakeBus` is gossip: ``publish`` hands the bytes to every other
  subscriber of the topic, at once and in subscription order.
- :class:`FakeStreams` is direct streams between in-process peers; a peer can
  be partitioned (its messages, both ways, fail with ``ConnectionError`` and
  are counted) and healed.
- :class:`FakeWorker` is a scripted executor: per job a duration, an outcome,
  or a hang (a provider that never finishes); it records what it ran.
- :class:`FakeOutputs` is the requester's output fetcher, over the CIDs the
  fake workers stored.
- :class:`FakeLedger` is a provider's ledger: escrow balances the test sets,
  and the expected jobs and payments, recorded.

Everything is deterministic: no threads, no real time; durations are trio
sleeps, so ``MockClock(autojump_threshold=0)`` makes them instant.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from protocol.market import Agreement, UsageReport
from scheduler.provider import ExecutionOutcome, Funds

__all__ = ["FakeBus", "FakeLedger", "FakeOutputs", "FakeStreams", "FakeWorker", "Script"]

Handler = Callable[[str, bytes], Any]


class FakeBus:
    def __init__(self) -> None:
        self._subs: dict[str, list[tuple[str, Handler]]] = defaultdict(list)
        self.published: Counter[str] = Counter()

    def subscribe(self, peer_id: str, topic: str, handler: Handler) -> None:
        self._subs[topic].append((peer_id, handler))

    def unsubscribe(self, peer_id: str) -> None:
        for topic, subs in self._subs.items():
            self._subs[topic] = [(p, h) for p, h in subs if p != peer_id]

    def endpoint(self, peer_id: str) -> _BusEndpoint:
        return _BusEndpoint(self, peer_id)

    def publish(self, source: str, topic: str, data: bytes) -> None:
        self.published[topic] += 1
        for peer_id, handler in list(self._subs[topic]):
            if peer_id != source:
                handler(source, data)


@dataclass
class _BusEndpoint:
    bus: FakeBus
    peer_id: str

    async def publish(self, topic: str, data: bytes) -> None:
        self.bus.publish(self.peer_id, topic, data)


class FakeStreams:
    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}
        self._down: set[str] = set()
        self.delivered = 0
        self.dropped: Counter[str] = Counter()  # by sender peer id

    def register(self, peer_id: str, handler: Handler) -> None:
        self._handlers[peer_id] = handler

    def unregister(self, peer_id: str) -> None:
        self._handlers.pop(peer_id, None)

    def partition(self, peer_id: str) -> None:
        """Cut ``peer_id`` off: nothing it sends or is sent arrives."""
        self._down.add(peer_id)

    def heal(self, peer_id: str) -> None:
        self._down.discard(peer_id)

    def endpoint(self, peer_id: str) -> _StreamEndpoint:
        return _StreamEndpoint(self, peer_id)

    def send(self, source: str, dest: str, data: bytes) -> None:
        handler = self._handlers.get(dest)
        if handler is None or source in self._down or dest in self._down:
            self.dropped[source] += 1
            raise ConnectionError(f"{dest} is unreachable from {source}")
        self.delivered += 1
        handler(source, data)


@dataclass
class _StreamEndpoint:
    streams: FakeStreams
    peer_id: str

    async def send(self, peer_id: str, data: bytes) -> None:
        await trio.lowlevel.checkpoint()
        self.streams.send(self.peer_id, peer_id, data)


@dataclass(frozen=True)
class Script:
    """How one fake run goes: it takes ``duration`` seconds, then returns
    ``outcome`` (a success by default); ``hang`` makes it never return."""

    duration: float = 1.0
    hang: bool = False
    error_code: str = ""
    error_message: str = ""
    exit_code: int | None = 0
    crash: str = ""  # "fetch", "execute" or "store": that step raises (a worker bug)


class FakeWorker:
    def __init__(
        self,
        peer_id: str,
        *,
        script: Callable[[str], Script] | None = None,
        outputs: FakeOutputs | None = None,
    ):
        self.peer_id = peer_id
        self._script = script or (lambda job_id: Script())
        self._outputs = outputs
        self.fetched: list[str] = []
        self.started: list[str] = []
        self.finished: list[str] = []
        self.aborted: list[str] = []
        self._plans: dict[str, Script] = {}

    def _plan(self, job_id: str) -> Script:
        """The script of this run of ``job_id``: asked once per run, at its first step."""
        script = self._plans.get(job_id)
        if script is None:
            script = self._plans[job_id] = self._script(job_id)
        return script

    async def fetch_payload(self, job_id: str, peer_id: str, spec_cid: str) -> None:
        await trio.lowlevel.checkpoint()
        self.fetched.append(job_id)
        if self._plan(job_id).crash == "fetch":
            raise AttributeError("'list' object has no attribute 'get'")

    async def execute(self, job_id: str, agreement: Agreement) -> ExecutionOutcome:
        script = self._plan(job_id)
        self.started.append(job_id)
        if script.crash == "execute":
            raise MemoryError()
        try:
            if script.hang:
                await trio.sleep_forever()
            await trio.sleep(script.duration)
        except trio.Cancelled:
            self.aborted.append(job_id)
            self._plans.pop(job_id, None)
            raise
        self.finished.append(job_id)
        digest = hashlib.sha256(f"{self.peer_id}:{job_id}".encode()).digest()
        return ExecutionOutcome(
            exit_code=script.exit_code,
            usage=UsageReport(fuel=1000, wall_ms=int(script.duration * 1000)),
            stdout_sha256=digest,
            stderr_sha256=hashlib.sha256(b"").digest(),
            error_code=script.error_code,
            error_message=script.error_message,
        )

    async def store_output(self, job_id: str) -> str:
        await trio.lowlevel.checkpoint()
        if self._plans.pop(job_id, Script()).crash == "store":
            raise OSError(36, "File name too long")
        cid = "bafkfake" + hashlib.sha256(job_id.encode()).hexdigest()[:32]
        if self._outputs is not None:
            self._outputs.stored.add(cid)
        return cid


class FakeOutputs:
    """Verifies an output by its presence in ``stored`` (what the workers wrote)."""

    def __init__(self) -> None:
        self.stored: set[str] = set()
        self.fetched: list[str] = []
        self.logs_fetched: list[tuple[str, str]] = []
        self.crash = False  # fetch_and_verify raises (a bug on the requester's side)

    async def fetch_and_verify(
        self, peer_id: str, output_cid: str, verify_mode: str
    ) -> tuple[bool, str]:
        await trio.lowlevel.checkpoint()
        self.fetched.append(output_cid)
        if self.crash:
            raise ValueError("embedded null byte")
        if output_cid in self.stored:
            return True, ""
        return False, f"output {output_cid} is not retrievable"

    async def fetch_logs(self, job_id: str, peer_id: str, output_cid: str) -> None:
        await trio.lowlevel.checkpoint()
        self.logs_fetched.append((job_id, output_cid))


class FakeLedger:
    """The provider's ``scheduler.market.Ledger`` in memory: escrow balances set
    by the test (read through a counted, awaitable refresh), expected jobs and
    the payments that arrived, in order."""

    def __init__(self, balances: dict[str, int] | None = None, owes: int = 0):
        self.balances = dict(balances or {})
        self.owes = owes
        self.fresh: set[str] = set()
        self.reads: list[str] = []
        self.expected: list[tuple[str, str, str, int]] = []
        self.payments: list[tuple[str, Any]] = []
        self.withdrawn: list[str] = []
        self.disputed: list[tuple[str, str]] = []
        self.changed = trio.Event()
        self.release = trio.Event()  # refreshes wait for this when ``hold`` is set
        self.hold = False

    def funds(self, account: str) -> Funds | None:
        if account not in self.fresh or account not in self.balances:
            return None
        return Funds(available=self.balances[account], owes=self.owes)

    def funds_fresh(self, account: str) -> bool:
        return account in self.fresh

    async def refresh_funds(self, account: str) -> None:
        self.reads.append(account)
        if self.hold:
            await self.release.wait()
        self.fresh.add(account)

    async def expect(
        self, job_id: str, requester_peer: str, requester_account: str, price: int
    ) -> None:
        self.expected.append((job_id, requester_peer, requester_account, price))

    async def withdraw(self, job_id: str) -> None:
        self.withdrawn.append(job_id)

    async def dispute(self, job_id: str, requester_peer: str) -> None:
        self.disputed.append((job_id, requester_peer))

    async def payment(self, source: str, payment: Any) -> None:
        self.payments.append((source, payment))
        self.changed.set()
        self.changed = trio.Event()

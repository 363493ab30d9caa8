"""An in-process market: one requester and N providers wired through the fakes.

Every service runs its own trio loop in the test's nursery, each in a cancel
scope so a test can "kill" a provider. Stores are real SQLite (in tmp_path),
called inline (see scheduler.market.InlineStore for why).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from ledger.agreement import AccountKeys
from protocol.messages import BIDS_TOPIC
from scheduler.jobstate import JobState
from scheduler.market import InlineStore, ProviderService, RequesterService
from scheduler.policy import UnitPrices
from scheduler.provider import ProviderConfig, ProviderCore
from scheduler.requester import RequesterConfig, RequesterCore
from scheduler.spec import ContentRef, JobSpec, Price, Resources
from scheduler.store import JobStore
from scheduler.testing import (
    FakeBus,
    FakeLedger,
    FakeOutputs,
    FakeStreams,
    FakeWorker,
    Script,
)
from tests.factories import Peer

#: Virtual seconds: under autojump a wait that can never end fails here, not by hanging.
WAIT_LIMIT_S = 3600

PRICES = UnitPrices(cpu_core_hour=3600, memory_gb_hour=0)  # 1 unit per cpu-second


def spec(*, cpu: int = 1, max_seconds: int = 60, deadline: int = 300, max_total: int = 10**6):
    return JobSpec(
        name="hello",
        executor="wasm",
        program=ContentRef("cid", "bafkreiprogram"),
        price=Price(max_total=max_total, deadline_seconds=deadline),
        resources=Resources(cpu=cpu, memory_mb=128, max_seconds=max_seconds),
    )


@dataclass
class Node:
    peer: Peer
    service: RequesterService | ProviderService
    store: JobStore
    scope: trio.CancelScope
    worker: FakeWorker | None = None

    @property
    def peer_id(self) -> str:
        return self.peer.peer_id


@dataclass
class Market:
    nursery: trio.Nursery
    root: Path
    bus: FakeBus = field(default_factory=FakeBus)
    streams: FakeStreams = field(default_factory=FakeStreams)
    outputs: FakeOutputs = field(default_factory=FakeOutputs)
    providers: list[Node] = field(default_factory=list)
    requester: Node | None = None

    async def _start(self, node: Node) -> None:
        async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with node.scope:
                await node.service.run(task_status=task_status)

        await self.nursery.start(run)

    async def add_requester(self, n: int = 1, **config) -> Node:
        peer = Peer(n)
        store = JobStore(self.root / f"requester{n}.db")
        core = RequesterCore(
            RequesterConfig(peer_id=peer.peer_id, identity=peer.record, **config),
            AccountKeys(peer.account_key),
        )
        service = RequesterService(
            core,
            store=InlineStore(store),
            gossip=self.bus.endpoint(peer.peer_id),
            transport=self.streams.endpoint(peer.peer_id),
            outputs=self.outputs,
            peer_key=peer.key,
            clock=trio.current_time,
        )
        self.streams.register(peer.peer_id, service.deliver)
        self.requester = Node(peer, service, store, trio.CancelScope())
        await self._start(self.requester)
        return self.requester

    async def add_provider(
        self,
        n: int,
        *,
        script: Callable[[str], Script] | None = None,
        cpu: int = 16,
        ledger: FakeLedger | None = None,
        **config,
    ) -> Node:
        peer = Peer(n)
        store = JobStore(self.root / f"provider{n}.db")
        core = ProviderCore(
            ProviderConfig(
                peer_id=peer.peer_id,
                identity=peer.record,
                cpu=cpu,
                memory_mb=64 * 1024,
                prices=PRICES,
                **config,
            ),
            AccountKeys(peer.account_key),
            funds=ledger.funds if ledger is not None else (lambda account: None),
        )
        worker = FakeWorker(peer.peer_id, script=script, outputs=self.outputs)
        service = ProviderService(
            core,
            store=InlineStore(store),
            transport=self.streams.endpoint(peer.peer_id),
            worker=worker,
            clock=trio.current_time,
            ledger=ledger,
        )
        self.streams.register(peer.peer_id, service.deliver)
        self.bus.subscribe(peer.peer_id, BIDS_TOPIC, service.deliver_bid)
        node = Node(peer, service, store, trio.CancelScope(), worker)
        self.providers.append(node)
        await self._start(node)
        return node

    def kill(self, node: Node) -> None:
        """The process dies: its loop stops and nobody can reach it."""
        node.scope.cancel()
        self.streams.unregister(node.peer_id)
        self.bus.unsubscribe(node.peer_id)

    def state(self, job_id: str) -> JobState:
        assert self.requester is not None
        return self.requester.store.get(job_id, role="requester").state

    async def wait_state(self, job_id: str, *states: JobState) -> JobState:
        """Wait, without sleeping, until the requester has persisted one of ``states``."""
        assert self.requester is not None
        service = self.requester.service
        with trio.fail_after(WAIT_LIMIT_S):
            while (state := self.state(job_id)) not in states:
                await service.changed.wait()
        return state

    async def wait_for(self, node: Node, predicate: Callable[[], bool]) -> None:
        with trio.fail_after(WAIT_LIMIT_S):
            while not predicate():
                await node.service.changed.wait()

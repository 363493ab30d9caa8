"""Jobs in the daemon: the market services wired to the mesh, storage and wasmtime.

The market logic is in scheduler/ (pure cores + trio shells). This module
only builds the collaborators the shells ask for and connects them:

- ``maskd.market_link``: bids on gossip, ``/mask/market/1`` streams;
- ``maskd.payloads``: ``/mask/job/1``, private payloads to the other party only;
- ``maskd.wasm_worker``: the provider's sandboxed runs (``maskd.zk_worker``
  proves zk-groth16 jobs, offered once a prover passed its start check);
- ``maskd.jobs_rpc``: the ``v1.jobs.*`` RPC methods;
- ``maskd.gateway``: ``[gateway]``, DApps' on-chain requests placed as
  relayed zk jobs and fulfilled on chain (``v1.gateway.show``);
- ``scheduler.async_store.ThreadedStore``: the one way into the job store.

A job bundle is a UnixFS directory: ``job.json`` (the normalised spec),
``program.wasm``, and ``in/`` (the inputs). Its CID is the ``spec_cid`` that
bids and agreements name. A result is a directory: ``out/`` (what the job
wrote), ``stdout.log``, ``stderr.log``.

Every task the services start runs under one :class:`Supervisor` (its
failures show in ``v1.jobs.stats``): a task that raises fails the job it was
doing, with a reason both sides see, and never the node.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import trio

from maskd.gateway import Gateway
from maskd.jobfiles import BundleCache, PrivateFiles, Sweeper
from maskd.jobs_rpc import JobsRpc
from maskd.market_link import MarketRouter, MarketTransport, MeshGossip
from maskd.payloads import PayloadClient, PayloadServer, StorageOutputs, store_authorizer
from maskd.relay_check import RelayChecker, known_requests
from maskd.retention import RetentionPolicy
from maskd.wasm_worker import WasmWorker
from maskd.zk_worker import ZkExecutor, check_prover, claim_signer
from protocol.market import BidValidator
from protocol.messages import JOB_PROTOCOL, MARKET_PROTOCOL
from protocol.supervisor import Supervisor
from scheduler.async_store import ThreadedStore
from scheduler.market import ProviderService, RequesterService
from scheduler.policy import UnitPrices
from scheduler.provider import ProviderConfig, ProviderCore
from scheduler.requester import RequesterConfig, RequesterCore
from scheduler.store import CreateJob, JobRow, JobStore, RecordTransition
from worker.zk import ZK_EXECUTOR


class NotifyingStore(ThreadedStore):
    """The job store facade, announcing every change on the event bus."""

    def __init__(self, store: JobStore, publish: Callable[[dict], None]):
        super().__init__(store)
        self._publish = publish

    async def apply(self, command: CreateJob | RecordTransition, now: float) -> JobRow:
        row = await super().apply(command, now)
        self._publish(
            {"type": "job.state", "job_id": row.job_id, "role": row.role, "state": str(row.state)}
        )
        return row


class Jobs:
    """Owns the job store and both market services of one node.

    Its collaborators come from the node, by their public interfaces: the mesh
    (publish, streams, penalise, scores, latency), the offer book, the node's
    identity, config, clock and event bus, and the storage service.
    """

    def __init__(self, node: Any):
        ident = node.identity
        cfg = node.config
        self._node_config, self._node_money, self._node_identity = cfg, node.money, ident
        mesh = node.mesh
        clock: Callable[[], float] = node.clock
        self.clock = clock
        self.mesh = mesh
        self.dir = cfg.data_path / "jobs"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.supervisor: Supervisor = node.supervisor
        # the only handle on jobs.db: sqlite in a thread, behind its own limiter
        self.store = NotifyingStore(JobStore(self.dir / "jobs.db"), node.events.publish)
        money = node.money
        keys = money.keys  # signs agreements and vouchers in the escrow's domain
        transport = MarketTransport(mesh)
        self.private = PrivateFiles(self.dir / "private")
        self.payloads = PayloadClient(mesh, ident, self.private)
        self.cache = BundleCache(self.private.cache_root, max_bytes=cfg.jobs.bundle_cache_mb << 20)
        self.sweeper = Sweeper(
            self.dir,
            self.private,
            self.store,
            self.cache,
            RetentionPolicy(
                result_s=cfg.jobs.result_retention_h * 3600,
                bundle_s=cfg.jobs.bundle_retention_h * 3600,
            ),
            clock=clock,
            supervisor=node.supervisor,
        )
        self.payload_server = PayloadServer(
            store_authorizer(self.store, self.private),
            self.private.root,
            penalise=mesh.penalise,
        )
        self.requester = RequesterService(
            RequesterCore(
                RequesterConfig(
                    peer_id=ident.peer_id,
                    identity=ident.record,
                    chain_id=money.domain.chain_id,
                    verifying_contract=money.domain.escrow,
                    pay=money.enabled,
                ),
                keys,
                offers=node.book.offers,
                peer_stats=self._peer_stats,
            ),
            store=self.store,
            gossip=MeshGossip(mesh),
            transport=transport,
            outputs=StorageOutputs(self.payloads, self.store),
            peer_key=ident.peer_key,
            clock=clock,
            supervisor=self.supervisor,
        )
        self.provider: ProviderService | None = None
        # zk-groth16 is offered once the start check finds a prover (check_zk)
        self.zk: ZkExecutor | None = None
        self._zk_choice = cfg.worker.zk_prover
        self._offer_changed: Callable[[], None] = node.offer_changed
        if node.sells:
            cap = node.initial_capacity()
            prices = cfg.offers.prices
            provider_config = ProviderConfig(
                peer_id=ident.peer_id,
                identity=ident.record,
                cpu=cap.cpu,
                memory_mb=cap.memory_mb,
                gpu=len(cap.gpus),
                executors=frozenset(cfg.offers.executors) - {ZK_EXECUTOR},
                prices=UnitPrices(
                    cpu_core_hour=int(prices.cpu_core_hour),
                    memory_gb_hour=int(prices.memory_gb_hour),
                    gpu_hour=int(prices.gpu_hour),
                ),
                max_quotes_per_requester=cfg.jobs.max_quotes_per_requester,
                bid_rate_per_s=cfg.jobs.bid_rate_per_s,
                bid_burst=cfg.jobs.bid_burst,
                chain_id=money.domain.chain_id,
                verifying_contract=money.domain.escrow,
                paid=money.enabled,
            )
            self.provider = ProviderService(
                ProviderCore(provider_config, keys, funds=money.funds),
                store=self.store,
                transport=transport,
                worker=WasmWorker(
                    self.payloads,
                    self.dir / "work",
                    self.cache,
                    max_concurrent_runs=provider_config.max_concurrent_jobs,
                    max_bundle_bytes=cfg.jobs.max_bundle_mb << 20,
                    zk=self._zk_executor if ZK_EXECUTOR in cfg.offers.executors else None,
                ),
                clock=clock,
                supervisor=self.supervisor,
                ledger=money if money.enabled else None,
            )
        self._relay = BidValidator()  # bids checked for relaying when we sell nothing
        self.router = MarketRouter(ident.peer_id, self.requester, self.provider, mesh.penalise)
        self.rpc = JobsRpc(
            store=self.store,
            requester=self.requester,
            private=self.private,
            storage=node.storage,
            connected_peers=lambda: [v.peer_id for v in mesh.peers()],
            work_dir=self.dir,
            clock=clock,
            stats=self._stats,
            payment_state=money.payment_state,
        )
        # [gateway]: DApps' on-chain requests placed as relayed zk jobs (off by default)
        self.gateway = Gateway(
            cfg,
            money=money,
            account_key=ident.account_key,
            jobs_store=self.store,
            submit_spec=self.rpc.submit_spec,
            cancel_job=self.requester.cancel,
            result_car=self.private.result,
            storage=node.storage,
            connected_peers=lambda: [v.peer_id for v in mesh.peers()],
            work_dir=self.dir,
            supervisor=self.supervisor,
            clock=clock,
        )
        # zk claims: evidence from this job store and its results; ProofClaimed -> channels
        money.attach_jobs(self.store, self.private, self.requester)
        mesh.set_stream_handler(MARKET_PROTOCOL, self.router.handle)
        mesh.set_stream_handler(JOB_PROTOCOL, self.handle_job_stream)

    def _zk_executor(self, limiter: trio.CapacityLimiter) -> ZkExecutor:
        """The zk runs, sharing the wasm runs' limiter; proofs' claims signed by
        this node's account in the escrow's domain."""
        money, ident = self._node_money, self._node_identity
        cfg = self._node_config
        check = None
        if money.enabled:  # a relayed job is proved only for a real, paying request

            def known(chain):
                return known_requests(cfg.gateway.requests, cfg.chain.backend, chain)

            check = RelayChecker(money, known)
        self.zk = ZkExecutor(
            claim_signer(money.domain, ident.account_key), limiter, check_relay=check
        )
        return self.zk

    async def check_zk(self) -> None:
        """Once at start: find a working prover; only then offer zk-groth16."""
        if self.zk is None or self.provider is None:
            return
        prover, status = await check_prover(self._zk_choice)
        self.zk.set_prover(prover, status)
        if prover is not None:
            core = self.provider.core
            executors = core.config.executors | {ZK_EXECUTOR}
            core.config = dataclasses.replace(core.config, executors=executors)
            self._offer_changed()

    def executors(self) -> tuple[str, ...]:
        """What this node runs now, in the configured order (zk-groth16 only
        once a prover works)."""
        if self.provider is None:
            return ()
        running = self.provider.core.config.executors
        return tuple(e for e in self._node_config.offers.executors if e in running)

    def zk_status(self) -> str | None:
        """For ``mask status``: the prover in use, or why zk-groth16 is not offered."""
        return self.zk.status.summary() if self.zk is not None else None

    def _peer_stats(self, peer_id: str) -> tuple[float, float]:
        """(reputation, latency ms) for selection: misbehaviour lowers reputation."""
        reputation = -self.mesh.scores.score(peer_id, self.clock())
        latency = self.mesh.latency_ms(peer_id)
        return reputation, latency if latency is not None else 1e6

    # ------------------------------------------------------------------ run
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.sweeper.run)  # a first pass before any job runs
            await nursery.start(self.requester.run)
            if self.provider is not None:
                await nursery.start(self.provider.run)
                nursery.start_soon(self.check_zk)
            # owed rows, and the jobs providers were paid for on chain by their proofs
            owed = self._node_money.claims_owed(await self.store.owed())
            await self.requester.load_channels(owed)
            # the reputation book, from the evidence the store kept (scheduler.reputation)
            self.requester.core.load_evidence(await self.store.evidence())
            await self.requester.resume(await self.store.open_jobs(role="requester"))
            if self.provider is not None:
                await self.provider.resume(await self.store.open_jobs(role="provider"))
            await nursery.start(self.gateway.run)  # after the requester resumed its jobs
            task_status.started()

    def validate_bid(self, data: bytes, source: str, now: float) -> tuple[str, str]:
        """The mesh's validator for /mask/bids/1: (verdict, reason)."""
        if self.provider is not None:
            outcome = self.provider.deliver_bid(source, data)
        else:
            outcome = self._relay.validate(data, source=source, now=now)
        return outcome.verdict.value, outcome.reason.value

    async def handle_job_stream(self, stream) -> None:
        await self.payload_server.handle(stream, stream.muxed_conn.peer_id.to_base58())

    def _stats(self) -> dict:
        return {
            "payloads_served": dict(self.payload_server.counters),
            "bundle_cache": dataclasses.asdict(self.cache.statistics()),
            "sweep": dict(self.sweeper.counters),
            "tasks": self.supervisor.statistics(),
        }

    def rpc_methods(self) -> dict:
        return {**self.rpc.methods(), **self.gateway.rpc_methods()}

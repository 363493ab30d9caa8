"""``[gateway]``: DApps as requesters. The I/O around ``maskd.gateway_core``.

A smart contract asks ComputeRequests for a zk job (circuit id, public inputs,
a CID of the private inputs, a payment in MASK, a deadline, a callback). A
node with ``[gateway] enabled = true``:

1. reads ``Requested`` (and ``Fulfilled``, ``Refunded``) events, from
   ``from_block`` up to the head less ``[chain] confirmations``, and keeps
   each request in its own SQLite file (``maskd.gateway_store``);
2. for a request whose circuit it knows (a shipped circuit, or one in
   ``circuits_dir``, by vk id), that pays at least ``min_payment`` and has
   time left: reads the input JSON named by ``inputCid`` (from this node's
   block store, else from connected peers; at most the provider's cap on an
   input.json), puts the request's public inputs in it, and submits a zk job
   (``v1.jobs.submit``'s path) with a ``relay`` section: the provider binds
   its proof to ``jobIdOf(request)``, the contract and itself, and nobody
   signs a voucher (the contract pays). The bid's ``max_total`` is the
   payment: a provider whose price is higher refuses it like any bid;
3. once the job's proof is verified here, reads ``proof.json`` and
   ``public.json`` out of the result and sends ``fulfill(requestId,
   provider, proof, public)`` (after reading the request's status: a request
   another gateway answered, or that expired, is recorded as such).

Every failure is a request's state with a reason (``mask gateway``), never a
crash of the node; the chain's transient errors are retried at the next poll.
Transactions go through the node's one nonce owner (the escrow's
``TxSender``). ``v1.gateway.show`` lists the requests; their text (the CID
above all) came from a stranger and is rendered as such by the CLI.
"""

from __future__ import annotations

import functools
import logging
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from maskd.gateway_core import (
    Cancel,
    Command,
    Fulfil,
    GatewayCore,
    GatewayRules,
    Place,
    Save,
    record_json,
)
from maskd.gateway_store import GatewayStore
from maskd.gateway_work import Refused, build_spec, known_circuits, read_result
from maskd.relay_check import known_requests
from protocol.errors import MaskError, RpcError, StorageError
from scheduler.jobstate import JobState
from scheduler.spec import JobSpec, Relay

log = logging.getLogger("maskd.gateway")

__all__ = ["Gateway"]

#: Blocks read per poll at most (in steps of ledger.zkchain.MAX_LOG_BLOCKS).
MAX_SCAN_STEPS = 10
#: Seconds to fetch a request's input from peers.
INPUT_FETCH_TIMEOUT_S = 60.0
#: Requests ``v1.gateway.show`` returns by default (newest first).
SHOW_LIMIT = 100


# --- the service ---------------------------------------------------------------------------


class Gateway:
    """The gateway of one node; ``enabled`` False: it only answers ``v1.gateway.show``.

    Collaborators (the daemon's, by their public interfaces): ``money``
    (``maskd.money.Money``: the chain, the escrow's ``TxSender``, the domain),
    ``jobs_store`` (the async job store), ``submit_spec`` and ``cancel_job``
    (the requester's), ``result_car(output_cid)`` (where a fetched result
    lies), ``storage`` (``.store``, ``.exchange``) and ``connected_peers``.
    """

    def __init__(
        self,
        config: Any,  # maskd.config.Config
        *,
        money: Any,
        account_key: bytes,
        jobs_store: Any,
        submit_spec: Callable[[JobSpec], Awaitable[dict]],
        cancel_job: Callable[[str], Awaitable[Any]],
        result_car: Callable[[str], Path],
        storage: Any,
        connected_peers: Callable[[], list[str]],
        work_dir: Path,
        supervisor: Any,
        clock: Callable[[], float] = time.time,
    ):
        gw = config.gateway
        self.config = gw
        self.enabled: bool = gw.enabled
        self.confirmations: int = config.chain.confirmations
        self.backend: str = config.chain.backend
        self.money = money
        self._key = account_key
        self._jobs = jobs_store
        self._submit = submit_spec
        self._cancel = cancel_job
        self._result_car = result_car
        self._storage = storage
        self._peers = connected_peers
        self._dir = work_dir
        self._supervisor = supervisor
        self._clock = clock
        self.rules = GatewayRules(
            min_payment=int(gw.min_payment),
            max_open=gw.max_open,
            fulfil_margin_s=gw.fulfil_margin_s,
            min_time_left_s=gw.min_time_left_s,
        )
        self.core = GatewayCore(self.rules, {})
        self.state = "off" if not self.enabled else "starting"
        self.last_error: str | None = None
        self.circuit_problems: list[str] = []
        self.contract: str | None = None
        self.next_block: int | None = None
        self.chain_now = 0
        self._store: GatewayStore | None = None
        self._zk: Any = None
        self._nursery: trio.Nursery | None = None
        self._store_limiter = trio.CapacityLimiter(1)
        self._wake = trio.Event()
        #: set (and replaced) whenever a record is saved and after each look at the
        #: chain (``steps`` counts those): tests and watchers wait on it
        self.changed = trio.Event()
        self.steps = 0

    # ------------------------------------------------------------------ run
    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        if not self.enabled:
            await trio.sleep_forever()
        circuits, self.circuit_problems = await trio.to_thread.run_sync(
            known_circuits, self.config.circuits_dir
        )
        for problem in self.circuit_problems:
            log.warning("gateway: a circuit cannot be placed: %s", problem)
        self.core.circuits = circuits
        self.state = "connecting"
        await self.money.connected.wait()
        await self._connect_retrying()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self._supervisor.keep_running("gateway_loop", self._loop)

    async def _connect_retrying(self) -> None:
        """Connect; a chain that does not answer is tried again at each poll
        interval, a contract that is not ComputeRequests stops the gateway (and
        ``mask gateway`` says why)."""
        from ledger.ports import ChainError

        while True:
            try:
                return await self._connect()
            except ChainError as e:
                self.state, self.last_error = "connecting", f"{e}"
                log.warning("gateway: %s; trying again", e)
            except MaskError as e:
                self.state = "error"
                self.last_error = f"{e.message} ({e.hint})" if e.hint else e.message
                log.error("gateway: %s", self.last_error)
                await trio.sleep_forever()
            await trio.sleep(self.config.poll_interval_s)

    async def _connect(self) -> None:
        """The ComputeRequests contract (checked to be one over this escrow), the
        client that sends through the node's nonce owner, and the store."""
        from ledger.contracts import REQUESTS, load_artifact
        from ledger.ports import ChainError
        from ledger.vouchers import checksum
        from ledger.zkchain import ZkChain

        money = self.money
        chain = money.chain
        sender = money.escrow.sender
        known = known_requests(self.config.requests, self.backend, chain)
        if known is None:  # the config check requires it on rpc: a bug if we get here
            raise MaskError(
                "no ComputeRequests address is configured",
                code="gateway_unusable",
                hint="set [gateway] requests",
            )
        address = checksum(known)
        code = await sender.run(chain.code, address)  # ChainError: tried again
        contract = chain.contract(address, load_artifact(REQUESTS).abi)
        try:
            verifier = await sender.run(chain.call, contract, "verifier") if code else None
        except ChainError as e:
            if e.transient:
                raise
            verifier = None  # code that has no verifier(): not a ComputeRequests
        if not code or str(verifier).lower() != money.domain.escrow.lower():
            raise MaskError(
                f"{address} is not a ComputeRequests contract over escrow {money.domain.escrow}",
                code="gateway_unusable",
                hint="set gateway.requests to the deployment's ComputeRequests address",
            )
        self.contract = address
        self._zk = ZkChain(
            chain,
            money.token,
            money.domain.escrow,
            address,
            self._key,
            trio.CapacityLimiter(1),  # unused: the node's sender has its own
            sender=sender,
        )
        root = self._dir.parent / "gateway"
        self._store = await trio.to_thread.run_sync(GatewayStore.for_contract, root, address)
        records = await self._in_store(self._store.records)
        self.core.load(records)
        stored = await self._in_store(self._store.next_block)
        self.next_block = stored if stored is not None else self.config.from_block
        self.state = "ok"
        log.info(
            "gateway: answering ComputeRequests %s from block %d (%d circuits, %d requests known)",
            address,
            self.next_block,
            len(self.core.circuits),
            len(records),
        )

    async def _in_store(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._store_limiter)

    async def _loop(self) -> None:
        from ledger.ports import ChainError

        while True:
            try:
                await self.step()
                if self.state != "ok":
                    log.info("gateway: the chain answers again")
                self.state, self.last_error = "ok", None
            except ChainError as e:
                self.state, self.last_error = "retrying", str(e)
                log.warning("gateway: %s", e)
            with trio.move_on_after(self.config.poll_interval_s):
                await self._wake.wait()
            self._wake = trio.Event()

    def poke(self) -> None:
        """Look at the chain and the jobs now rather than at the next poll."""
        self._wake.set()

    async def step(self) -> None:
        """One look: new blocks' events, the placed jobs' ends, then the core's tick."""
        zk = self._zk
        chain = zk.chain
        head = await zk.sender.run(chain.block_number)
        self.chain_now = chain_now = await zk.sender.run(chain.block_timestamp, head)
        safe = head - self.confirmations + 1
        steps = 0
        while self.next_block is not None and self.next_block <= safe and steps < MAX_SCAN_STEPS:
            await self._scan(self.next_block, safe, chain_now)
            steps += 1
        for record in self.core.placed_jobs():
            await self._job_progress(record)
        await self._apply(self.core.tick(chain_now, self._clock()))
        self.steps += 1
        self.changed.set()
        self.changed = trio.Event()

    async def _scan(self, start: int, safe: int, chain_now: int) -> None:
        from ledger.zkchain import MAX_LOG_BLOCKS

        end = min(safe, start + MAX_LOG_BLOCKS - 1)
        zk = self._zk
        requested = await zk.requested(start, end)
        fulfilled = await zk.fulfilled(start, end)
        refunded = await zk.refunded(start, end)
        now = self._clock()
        for event in sorted(requested, key=lambda e: e.request_id):
            if self.core.get(event.request_id) is None and await self._in_store(
                self._store.has, event.request_id
            ):
                continue  # known, finished long ago, no longer kept in memory
            await self._apply(self.core.requested(event, chain_now, now))
        for event in fulfilled:
            if self.core.get(event.request_id) is not None:
                await self._apply(
                    self.core.fulfilled(
                        event.request_id,
                        by_us=False,
                        tx_hash=event.tx_hash,
                        provider=event.provider,
                        now=now,
                    )
                )
        for event in refunded:
            await self._apply(self.core.expired(event.request_id, "refunded", now))
        # the records of these blocks are saved: the cursor may pass them
        await self._in_store(self._store.set_next_block, end + 1)
        self.next_block = end + 1

    async def _job_progress(self, record: Any) -> None:
        try:
            row = await self._jobs.get(record.job_id, role="requester")
        except MaskError:
            row = None
        if row is not None and row.state not in (
            JobState.COMPLETED,
            JobState.FAILED,
            JobState.CANCELLED,
        ):
            return
        if row is None:
            completed, error = False, "the job is not in this node's job store"
        else:
            completed = row.state is JobState.COMPLETED
            err = row.error if isinstance(row.error, dict) else {}
            error = f"{err.get('code', row.state)}: {err.get('message', '')}".strip(": ")
        await self._apply(
            self.core.job_ended(
                record.request_id,
                completed=completed and bool(row and row.provider_account and row.output_cid),
                provider=(row.provider_account or "") if row else "",
                output_cid=(row.output_cid or "") if row else "",
                error=error,
                now=self._clock(),
            )
        )

    async def _apply(self, commands: list[Command]) -> None:
        """Run the core's commands in order: every Save before what follows it."""
        for cmd in commands:
            if isinstance(cmd, Save):
                await self._in_store(self._store.save, cmd.record)
                self.changed.set()
                self.changed = trio.Event()
            elif isinstance(cmd, Cancel):
                try:
                    await self._cancel(cmd.job_id)
                except MaskError as e:  # it ended meanwhile: nothing to stop
                    log.debug("gateway: cancelling job %s: %s", cmd.job_id, e.message)
            elif isinstance(cmd, Place):
                self._spawn("gateway_place", self._place, cmd)
            elif isinstance(cmd, Fulfil):
                self._spawn("gateway_fulfil", self._fulfil, cmd)

    def _spawn(self, kind: str, fn: Callable[[Any], Awaitable[None]], cmd: Place | Fulfil) -> None:
        rid = cmd.record.request_id

        async def on_error(failure: Any) -> None:  # a bug, not the request's fault: recorded
            detail = f"{failure.error}: {failure.message}"
            now = self._clock()
            if isinstance(cmd, Place):
                await self._apply(self.core.place_failed(rid, "internal_error", detail, now))
            else:
                await self._apply(
                    self.core.fulfil_failed(rid, "internal_error", detail, transient=True, now=now)
                )

        assert self._nursery is not None
        self._nursery.start_soon(
            functools.partial(
                self._supervisor.run, kind, fn, cmd, context=str(rid), on_error=on_error
            )
        )

    # ------------------------------------------------------------- placing
    async def _place(self, cmd: Place) -> None:
        record = cmd.record
        rid = record.request_id
        relay = Relay(
            chain_id=self.money.domain.chain_id, contract=self.contract, request_id=str(rid)
        )
        if cmd.adopt:
            job_id = await self._find_job(relay)
            if job_id is not None:
                await self._apply(self.core.placed(rid, job_id, self._clock()))
                return
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-gateway-", dir=self._dir))
        try:
            raw = await self._read_input(record.input_cid)
            spec = await trio.to_thread.run_sync(
                build_spec, raw, record, cmd.circuit, cmd.job_deadline_s, relay, tmp
            )
            submitted = await self._submit(spec)
        except Refused as e:
            await self._apply(self.core.place_failed(rid, e.reason, e.detail, self._clock()))
            return
        except MaskError as e:
            reason = "input_invalid" if e.code == "spec_invalid" else "submit_failed"
            detail = f"{e.message}" + (f" ({e.hint})" if e.hint else "")
            await self._apply(self.core.place_failed(rid, reason, detail, self._clock()))
            return
        finally:
            await trio.to_thread.run_sync(shutil.rmtree, tmp, True)
        log.info("gateway: request %s placed as job %s", rid, submitted["job_id"])
        await self._apply(self.core.placed(rid, submitted["job_id"], self._clock()))

    async def _find_job(self, relay: Relay) -> str | None:
        """A job this node submitted for ``relay`` before a restart, if any."""
        for row in await self._jobs.jobs():
            if row.role != "requester":
                continue
            spec = row.spec.get("spec") if isinstance(row.spec, dict) else None
            found = spec.get("relay") if isinstance(spec, dict) else None
            if isinstance(found, dict) and (
                str(found.get("request_id")),
                str(found.get("contract", "")).lower(),
            ) == (relay.request_id, relay.contract.lower()):
                return row.job_id
        return None

    async def _read_input(self, input_cid: str) -> bytes:
        """The request's input JSON by CID: from this node's store, else from
        connected peers; never more than a provider accepts as input.json."""
        from multiformats import CID

        from storage.exporter import ExportLimits, export
        from worker.zk import ZkLimits

        cap = ZkLimits().max_input_bytes
        try:
            cid = str(CID.decode(input_cid))
        except (ValueError, KeyError, TypeError) as e:
            raise Refused("input_invalid", f"inputCid is not a CID ({e})"[:300]) from None
        store = self._storage.store
        lease = store.lease(cid)
        await trio.to_thread.run_sync(lease.__enter__)
        try:
            try:
                missing = await trio.to_thread.run_sync(store.missing, cid)
            except (MaskError, ValueError) as e:
                raise Refused("input_invalid", f"inputCid {cid}: {e}"[:300]) from None
            if missing:
                await self._fetch_input(cid, cap)
            limits = ExportLimits.for_tree(max_bytes=cap, max_entries=1, max_depth=0)

            def read() -> bytes:
                return b"".join(export(cid, store.get, limits=limits))

            try:
                return await trio.to_thread.run_sync(read)
            except StorageError as e:
                if e.code == "export_limit":
                    raise Refused(
                        "input_too_large", f"the input at {cid} is over {cap} bytes"
                    ) from None
                raise Refused("input_invalid", f"the input at {cid}: {e.message}") from None
        finally:
            lease.__exit__(None, None, None)

    async def _fetch_input(self, cid: str, cap: int) -> None:
        peers = self._peers()
        if not peers:
            raise Refused(
                "input_unavailable",
                f"{cid} is not stored here and no peer is connected to fetch it from",
            )
        try:
            with trio.fail_after(INPUT_FETCH_TIMEOUT_S):
                # block bytes, counted as they arrive: a huge object fails here
                await self._storage.exchange.fetch_dag(cid, peers, max_bytes=cap + (64 << 10))
        except trio.TooSlowError:
            raise Refused(
                "input_unavailable", f"fetching {cid} took over {INPUT_FETCH_TIMEOUT_S:.0f} s"
            ) from None
        except MaskError as e:
            reason = "input_too_large" if e.code == "too_large" else "input_unavailable"
            raise Refused(reason, f"fetching {cid}: {e.message}"[:300]) from None

    # ------------------------------------------------------------ fulfilling
    async def _fulfil(self, cmd: Fulfil) -> None:
        from ledger.chain import RevertError
        from ledger.contracts import refusal_reason
        from ledger.ports import ChainError

        record = cmd.record
        rid = record.request_id
        now = self._clock
        zk = self._zk
        try:
            status = await zk.request_state(rid)
            if status.status == "fulfilled":
                return await self._apply(
                    self.core.fulfilled(rid, by_us=False, tx_hash="", provider="", now=now())
                )
            if status.status == "refunded":
                return await self._apply(self.core.expired(rid, "refunded", now()))
            if status.status != "open":
                return await self._apply(
                    self.core.fulfil_failed(
                        rid,
                        "unknown_request",
                        f"the contract knows no open request {rid} ({status.status})",
                        transient=False,
                        now=now(),
                    )
                )
            if status.deadline <= self.chain_now:
                return await self._apply(
                    self.core.expired(rid, f"deadline {status.deadline} passed", now())
                )
            try:
                car = self._result_car(record.output_cid)
                proof, public = await trio.to_thread.run_sync(read_result, car, record.output_cid)
            except (ValueError, OSError) as e:
                return await self._apply(
                    self.core.fulfil_failed(
                        rid, "result_unreadable", str(e), transient=False, now=now()
                    )
                )
            done, callback_failed = await zk.fulfill(rid, record.provider, proof, public)
        except RevertError as e:
            name = getattr(e, "error_name", "") or ""
            if name == "AlreadyFulfilled":
                return await self._apply(
                    self.core.fulfilled(rid, by_us=False, tx_hash="", provider="", now=now())
                )
            if name in ("RequestExpired", "AlreadyRefunded"):
                return await self._apply(self.core.expired(rid, str(e), now()))
            return await self._apply(
                self.core.fulfil_failed(
                    rid, refusal_reason(name) or "reverted", str(e), transient=False, now=now()
                )
            )
        except ChainError as e:
            return await self._apply(
                self.core.fulfil_failed(
                    rid, "chain_error", str(e), transient=e.transient, now=now()
                )
            )
        if callback_failed is not None:
            log.info("gateway: request %s: the DApp's callback failed (paid anyway)", rid)
        log.info("gateway: request %s fulfilled in %s", rid, done.tx_hash)
        await self._apply(
            self.core.fulfilled(
                rid, by_us=True, tx_hash=done.tx_hash, provider=done.provider, now=now()
            )
        )

    # ------------------------------------------------------------------ RPC
    def rpc_methods(self) -> dict[str, Callable[[dict], Awaitable[Any]]]:
        return {"v1.gateway.show": self.rpc_show}

    async def rpc_show(self, params: dict) -> dict:
        """The gateway's state and its requests, newest first (``limit``, default 100)."""
        limit = params.get("limit", SHOW_LIMIT)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 100_000:
            raise RpcError(
                "params.limit must be an integer from 1 to 100000",
                rpc_code=-32602,
                code="bad_limit",
                hint="e.g. 100",
            )
        records = sorted(self.core.records.values(), key=lambda r: r.request_id, reverse=True)
        states: dict[str, int] = {}
        for r in records:
            states[r.state.value] = states.get(r.state.value, 0) + 1
        return {
            "enabled": self.enabled,
            "state": self.state,
            "last_error": self.last_error,
            "contract": self.contract,
            "chain_id": self.money.domain.chain_id if self.enabled else None,
            "account": getattr(self.money, "address", None),
            "next_block": self.next_block,
            "open": self.core.open_count(),
            "max_open": self.rules.max_open,
            "min_payment": str(self.rules.min_payment),
            "circuits": [
                {"name": c.name, "circuit_id": c.circuit_id}
                for c in sorted(self.core.circuits.values(), key=lambda c: c.name)
            ],
            "circuit_problems": list(self.circuit_problems),
            "states": states,
            "total": len(records),
            "requests": [record_json(r) for r in records[:limit]],
            "counters": dict(self.core.counters),
        }

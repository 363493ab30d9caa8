"""Jobs in the daemon: the market services wired to the mesh, storage and wasmtime.

The market logic is in scheduler/ (pure cores + trio shells); this module
supplies what the shells ask for, for real:

- ``MeshGossip`` publishes bids on ``/mask/bids/1``;
- ``MarketTransport`` sends one framed message per stream on
  ``/mask/market/1``; ``handle_market_stream`` routes what arrives to the
  requester or the provider service;
- ``WasmWorker`` (provider): fetches the job bundle by CID from the requester,
  runs it with worker.wasm.run_wasm in a thread (cancellable), stores the
  result as a DAG;
- ``StorageOutputs`` (requester): fetches the output DAG from the provider,
  re-hashing every block (the CID is the check for ``receipt`` mode).

A job bundle is a UnixFS directory: ``job.json`` (the normalised spec),
``program.wasm``, and ``in/`` (the inputs). Its CID is the ``spec_cid`` that
bids and agreements name. A result is a directory: ``out/`` (what the job
wrote), ``stdout.log``, ``stderr.log``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import trio

from ledger.agreement import AccountKeys
from protocol.errors import JobError, MaskError, RpcError
from protocol.market import Agreement, Cancel, UsageReport, decode_market
from protocol.messages import MARKET_PROTOCOL
from scheduler import provider as pv
from scheduler.market import ProviderService, RequesterService, ThreadedStore
from scheduler.policy import UnitPrices
from scheduler.provider import ProviderConfig, ProviderCore
from scheduler.requester import RequesterConfig, RequesterCore
from scheduler.spec import JobSpec, load_spec
from scheduler.store import JobRow, JobStore
from storage.exporter import export_to_path

log = logging.getLogger("maskd.jobs")

MAX_FRAME = 1 << 20
OUTPUT_FETCH_TIMEOUT_S = 300.0


class MeshGossip:
    def __init__(self, mesh):
        self.mesh = mesh

    async def publish(self, topic: str, data: bytes) -> None:
        await self.mesh.publish(topic, data)


class MarketTransport:
    """One message per stream: simple, and the shell already keeps per-peer order."""

    def __init__(self, mesh):
        self.mesh = mesh

    async def send(self, peer_id: str, data: bytes) -> None:
        from libp2p.utils.varint import encode_uvarint

        try:
            with trio.fail_after(10):
                stream = await self.mesh.new_stream(peer_id, MARKET_PROTOCOL)
                try:
                    await stream.write(encode_uvarint(len(data)) + data)
                    await stream.close()
                except BaseException:
                    with trio.move_on_after(1):
                        await stream.reset()
                    raise
        except trio.TooSlowError:
            raise OSError(f"sending to {peer_id} timed out") from None
        except OSError:
            raise
        except Exception as exc:  # libp2p's stream and dial errors
            raise OSError(f"cannot reach {peer_id}: {exc}") from None


class StorageOutputs:
    def __init__(self, storage):
        self.storage = storage

    async def fetch_and_verify(
        self, peer_id: str, output_cid: str, verify_mode: str
    ) -> tuple[bool, str]:
        with trio.move_on_after(OUTPUT_FETCH_TIMEOUT_S):
            try:
                await self.storage.exchange.fetch_dag(output_cid, [peer_id])
                await trio.to_thread.run_sync(self.storage.store.pin, output_cid)
            except MaskError as exc:
                return False, f"fetching the output failed: {exc.message}"
            # receipt mode: every block was re-hashed against the CID the
            # provider signed; that is the whole check for now.
            return True, ""
        return False, f"fetching the output took over {OUTPUT_FETCH_TIMEOUT_S:.0f} s"


class WasmWorker:
    def __init__(self, storage, work_dir: Path, import_lock: trio.Lock):
        self.storage = storage
        self.import_lock = import_lock
        self.work_dir = work_dir
        self.work_dir.mkdir(parents=True, exist_ok=True)
        from worker.wasm import WasmRuntime

        self.runtime = WasmRuntime()

    def _dir(self, job_id: str) -> Path:
        return self.work_dir / job_id

    async def fetch_payload(self, job_id: str, peer_id: str, spec_cid: str) -> None:
        await self.storage.exchange.fetch_dag(spec_cid, [peer_id])
        bundle = self._dir(job_id) / "bundle"
        if bundle.exists():
            await trio.to_thread.run_sync(shutil.rmtree, bundle)
        bundle.parent.mkdir(parents=True, exist_ok=True)
        await trio.to_thread.run_sync(
            lambda: export_to_path(spec_cid, self.storage.store.get, str(bundle), verify=False)
        )

    async def execute(self, job_id: str, agreement: Any) -> pv.ExecutionOutcome:
        from worker.wasm import CancelToken, WasmLimits, run_wasm

        terms = agreement.terms
        base = self._dir(job_id)
        bundle = base / "bundle"
        try:
            job = json.loads((bundle / "job.json").read_text())
            module = (bundle / "program.wasm").read_bytes()
        except (OSError, ValueError) as exc:
            return _failed("bad_bundle", f"the job bundle is unusable: {exc}")
        out = base / "result" / "out"
        if out.parent.exists():
            shutil.rmtree(out.parent)
        out.mkdir(parents=True)
        in_dir = bundle / "in"
        limits = WasmLimits(
            memory_bytes=max(1, terms.memory_mb) << 20,
            max_fuel=terms.max_fuel or None,
            max_seconds=float(terms.max_seconds),
        )
        token = CancelToken()
        try:
            result = await trio.to_thread.run_sync(
                lambda: run_wasm(
                    module,
                    list(job.get("args", [])),
                    in_dir if in_dir.exists() else None,
                    out,
                    limits,
                    token,
                    logs_dir=base / "logs",
                    runtime=self.runtime,
                ),
                abandon_on_cancel=True,
            )
        except trio.Cancelled:
            token.cancel()  # the thread stops at its next epoch tick
            raise
        logs = base / "result"
        for name, path in (("stdout.log", result.stdout_path), ("stderr.log", result.stderr_path)):
            if path and Path(path).exists():
                shutil.copyfile(path, logs / name)
        u = result.usage
        error_code = result.error.code if result.error else ""
        error_message = result.error.message if result.error else ""
        if not error_code and result.exit_code not in (0, None):
            error_code = "nonzero_exit"
            error_message = f"the program exited with code {result.exit_code} (see its stderr)"
        return pv.ExecutionOutcome(
            exit_code=result.exit_code,
            usage=UsageReport(
                fuel=u.fuel or 0,
                wall_ms=int(u.wall_ms or 0),
                peak_memory_bytes=u.peak_memory_bytes or 0,
                output_bytes=u.output_bytes or 0,
            ),
            stdout_sha256=_sha256(result.stdout_path),
            stderr_sha256=_sha256(result.stderr_path),
            error_code=error_code,
            error_message=error_message,
        )

    async def store_output(self, job_id: str) -> str:
        result = self._dir(job_id) / "result"
        async with self.import_lock:
            imported = await trio.to_thread.run_sync(
                lambda: self.storage.store.add_path(str(result), pin=True)
            )
        return imported.cid


def _sha256(path) -> bytes:
    if not path or not Path(path).exists():
        return hashlib.sha256(b"").digest()
    return hashlib.sha256(Path(path).read_bytes()).digest()


def _failed(code: str, message: str) -> pv.ExecutionOutcome:
    empty = hashlib.sha256(b"").digest()
    return pv.ExecutionOutcome(
        exit_code=None,
        usage=UsageReport(),
        stdout_sha256=empty,
        stderr_sha256=empty,
        error_code=code,
        error_message=message,
    )


class NotifyingStore(ThreadedStore):
    """The job store in a worker thread, announcing every change on the event bus."""

    def __init__(self, store: JobStore, publish):
        super().__init__(store)
        self._publish = publish

    async def apply(self, command, now: float) -> JobRow:
        row = await super().apply(command, now)
        self._publish(
            {"type": "job.state", "job_id": row.job_id, "role": row.role, "state": str(row.state)}
        )
        return row


def job_json(row: JobRow) -> dict[str, Any]:
    spec = row.spec or {}
    return {
        "job_id": row.job_id,
        "role": row.role,
        "name": spec.get("name"),
        "state": str(row.state),
        "provider": row.provider_peer,
        "provider_account": row.provider_account,
        "price": row.price,
        "usage": row.usage,
        "output_cid": row.output_cid,
        "error": row.error,
        "explanation": row.explanation,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }


class Jobs:
    """Owns the job store and both market services of one node."""

    def __init__(self, node):
        self.node = node
        ident = node.identity
        cfg = node.config
        self.dir = cfg.data_path / "jobs"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.store = JobStore(self.dir / "jobs.db")
        async_store = NotifyingStore(self.store, node.events.publish)
        keys = AccountKeys(ident.account_key)
        transport = MarketTransport(node.mesh)
        self._import_lock = trio.Lock()
        self.requester = RequesterService(
            RequesterCore(
                RequesterConfig(peer_id=ident.peer_id, identity=ident.record),
                keys,
                offers=node.book.offers,
            ),
            store=async_store,
            gossip=MeshGossip(node.mesh),
            transport=transport,
            outputs=StorageOutputs(node.storage),
            peer_key=ident.peer_key,
            clock=time.time,
        )
        self.provider: ProviderService | None = None
        if node.sells:
            cap = node.initial_capacity()
            prices = cfg.offers.prices
            self.provider = ProviderService(
                ProviderCore(
                    ProviderConfig(
                        peer_id=ident.peer_id,
                        identity=ident.record,
                        cpu=cap.cpu,
                        memory_mb=cap.memory_mb,
                        gpu=len(cap.gpus),
                        executors=frozenset(cfg.offers.executors),
                        prices=UnitPrices(
                            cpu_core_hour=int(prices.cpu_core_hour),
                            memory_gb_hour=int(prices.memory_gb_hour),
                            gpu_hour=int(prices.gpu_hour),
                        ),
                    ),
                    keys,
                ),
                store=async_store,
                transport=transport,
                worker=WasmWorker(node.storage, self.dir / "work", self._import_lock),
                clock=time.time,
            )
        node.mesh.set_stream_handler(MARKET_PROTOCOL, self.handle_market_stream)

    # ------------------------------------------------------------------ run
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.requester.run)
            if self.provider is not None:
                await nursery.start(self.provider.run)
            await self.requester.resume(self.store.open_jobs(role="requester"))
            if self.provider is not None:
                await self.provider.resume(self.store.open_jobs(role="provider"))
            task_status.started()

    def validate_bid(self, data: bytes, source: str, now: float) -> tuple[str, str]:
        """The mesh's validator for /mask/bids/1: (verdict, reason)."""
        if self.provider is not None:
            outcome = self.provider.deliver_bid(source, data)
        else:
            outcome = self._relay_validator.validate(data, source=source, now=now)
        return outcome.verdict.value, outcome.reason.value

    @property
    def _relay_validator(self):
        from protocol.market import BidValidator

        if not hasattr(self, "_relay"):
            self._relay = BidValidator()
        return self._relay

    async def handle_market_stream(self, stream) -> None:
        from libp2p.utils.varint import read_varint_prefixed_bytes_limited

        peer = stream.muxed_conn.peer_id.to_base58()
        me = self.node.identity.peer_id
        try:
            while True:
                with trio.fail_after(30):
                    data = await read_varint_prefixed_bytes_limited(stream, MAX_FRAME)
                try:
                    msg = decode_market(data)
                except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
                    self.node.mesh._penalise(peer, "undecodable")
                    break
                to_provider = isinstance(msg, Cancel) or (
                    isinstance(msg, Agreement)
                    and msg.terms.provider_peer == me
                    and not msg.provider_signature
                )
                target = self.provider if to_provider else self.requester
                if target is not None:
                    target.deliver(peer, data)
        except trio.Cancelled:
            raise
        except Exception:
            pass  # end of stream, reset, timeout: the sender's core retries or times out
        finally:
            with trio.move_on_after(1):
                try:
                    await stream.close()
                except Exception:
                    pass

    # ------------------------------------------------------------------ RPC
    def rpc_methods(self) -> dict:
        return {
            "v1.jobs.submit": self.submit,
            "v1.jobs.list": self.list,
            "v1.jobs.get": self.get,
            "v1.jobs.cancel": self.cancel,
            "v1.jobs.explain": self.explain,
            "v1.jobs.result": self.result,
            "v1.jobs.logs": self.logs,
            "v1.jobs.owed": self.owed,
        }

    async def owed(self, params: dict) -> dict:
        """What this node owes providers for completed jobs (settled by the ledger, later)."""
        entries = await trio.to_thread.run_sync(self.store.owed)
        return {
            "entries": [dataclasses.asdict(e) for e in entries],
            "totals": await trio.to_thread.run_sync(self.store.owed_totals),
        }

    async def submit(self, params: dict) -> dict:
        path = params.get("path")
        if not isinstance(path, str) or not os.path.isabs(path):
            raise RpcError("params.path must be an absolute path to a job.toml", rpc_code=-32602)
        spec = await trio.to_thread.run_sync(load_spec, path)
        bundle = await self._bundle(spec)
        try:
            # One import at a time: identical bundles imported concurrently
            # raced in the block store (pin saw a root another thread was
            # still writing).
            async with self._import_lock:
                imported = await trio.to_thread.run_sync(
                    lambda: self.node.storage.store.add_path(str(bundle), pin=True)
                )
        finally:
            await trio.to_thread.run_sync(shutil.rmtree, bundle, True)
        job_id = await self.requester.submit(spec, imported.cid)
        return {
            "job_id": job_id,
            "state": str(self.store.get(job_id, role="requester").state),
            "spec_cid": imported.cid,
        }

    async def _bundle(self, spec: JobSpec) -> Path:
        tmp = Path(tempfile.mkdtemp(prefix="bundle-", dir=self.dir))

        def build() -> None:
            doc = msgspec.to_builtins(spec)
            doc["program"] = "program.wasm"
            names = []
            (tmp / "in").mkdir()
            for ref in spec.inputs:
                if ref.kind != "path":
                    raise JobError(
                        f"input {ref.value} is a CID; CID inputs are not supported yet",
                        code="spec_invalid",
                        hint="give a local path for now",
                    )
                src = Path(ref.value)
                dest = tmp / "in" / ref.name
                if src.is_dir():
                    shutil.copytree(src, dest)
                else:
                    shutil.copyfile(src, dest)
                names.append(ref.name)
            doc["inputs"] = names
            if spec.program.kind != "path":
                raise JobError(
                    f"program {spec.program.value} is a CID; CID programs are not supported yet",
                    code="spec_invalid",
                    hint="give the path of the .wasm file",
                )
            shutil.copyfile(spec.program.value, tmp / "program.wasm")
            (tmp / "job.json").write_text(json.dumps(doc, sort_keys=True))

        try:
            await trio.to_thread.run_sync(build)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return tmp

    def _row(self, params: dict) -> JobRow:
        job_id = params.get("job_id")
        if not isinstance(job_id, str):
            raise RpcError("params.job_id is required", rpc_code=-32602)
        for role in ("requester", "provider"):
            try:
                return self.store.get(job_id, role=role)
            except MaskError:
                continue
        raise JobError(f"no job {job_id}", code="job_not_found", hint="list jobs with `mask jobs`")

    async def list(self, params: dict) -> list:
        rows = await trio.to_thread.run_sync(self.store.jobs)
        return [job_json(r) for r in sorted(rows, key=lambda r: r.created_at)]

    async def get(self, params: dict) -> dict:
        row = self._row(params)
        out = job_json(row)
        out["transitions"] = [
            {"from": str(t.from_state), "event": str(t.event), "to": str(t.to_state), "at": t.at}
            for t in self.store.transitions(row.job_id, role=row.role)
        ]
        return out

    async def cancel(self, params: dict) -> dict:
        row = self._row(params)
        if row.role != "requester":
            raise JobError("only the requester can cancel a job", code="not_requester")
        await self.requester.cancel(row.job_id)
        return job_json(self.store.get(row.job_id, role="requester"))

    async def explain(self, params: dict) -> dict:
        row = self._row(params)
        try:
            return self.requester.core.explain(row.job_id, time.time())
        except MaskError:
            if row.explanation:
                return row.explanation
            raise

    async def result(self, params: dict) -> dict:
        row = self._row(params)
        dest = params.get("dest")
        if not isinstance(dest, str) or not os.path.isabs(dest):
            raise RpcError("params.dest must be an absolute path", rpc_code=-32602)
        if not row.output_cid or str(row.state) != "completed":
            raise JobError(
                f"job {row.job_id} has no result (state {row.state})",
                code="no_result",
                hint="wait for it: `mask job ID --follow`; `mask explain ID` says why it is not done",
            )
        if os.path.lexists(dest):
            raise JobError(f"{dest} already exists", code="path_exists", hint="choose a new -o")
        store = self.node.storage.store
        await trio.to_thread.run_sync(lambda: export_to_path(row.output_cid, store.get, dest))
        return {"job_id": row.job_id, "output_cid": row.output_cid, "dest": dest}

    async def logs(self, params: dict) -> dict:
        row = self._row(params)
        if not row.output_cid:
            return {"job_id": row.job_id, "stdout": "", "stderr": "", "available": False}
        tmp = Path(tempfile.mkdtemp(prefix="logs-", dir=self.dir))
        try:
            store = self.node.storage.store
            await trio.to_thread.run_sync(
                lambda: export_to_path(row.output_cid, store.get, str(tmp / "r"))
            )

            def read(name: str) -> str:
                f = tmp / "r" / name
                return f.read_text(errors="replace") if f.exists() else ""

            return {
                "job_id": row.job_id,
                "stdout": read("stdout.log"),
                "stderr": read("stderr.log"),
                "available": True,
            }
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

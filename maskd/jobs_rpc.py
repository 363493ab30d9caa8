"""The ``v1.jobs.*`` RPC methods: submit, read, cancel, explain, results and logs.

A request is the local user's; what it returns may hold text a provider or a
job wrote (errors, logs): the client renders that as untrusted text.
Results and logs come out of private CARs under limits (storage.exporter):
a hostile provider's result cannot write outside the chosen folder, create
links, or unpack more than the job was allowed to write.

A zk job's bundle is packed by ``maskd.zk_bundle`` (the circuit and its
input.json, checked as a provider will check them); its record shows the
circuit and each provider's proof verdict, and ``v1.jobs.result`` writes the
requester's own verification key beside the proof, never the provider's copy.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import trio

from maskd.jobfiles import PrivateFiles
from maskd.payloads import RESULT_LIMITS
from maskd.zk_bundle import job_document, pack_zk
from protocol.errors import JobError, MaskError, RpcError, StorageError
from scheduler.async_store import ThreadedStore
from scheduler.market import RequesterService
from scheduler.spec import ZK_EXECUTOR, JobSpec, load_spec
from scheduler.store import JobRow
from storage.carfile import export_car, read_file_at
from storage.exporter import export_to_path
from storage.service import disk_limits
from worker.wasm import WasmLimits

REF_FETCH_TIMEOUT_S = 120.0

LOG_READ_BYTES = WasmLimits().max_log_bytes  # a provider keeps at most this much of each log


def job_json(row: JobRow) -> dict[str, Any]:
    stored = row.spec or {}
    spec = stored.get("spec") if isinstance(stored.get("spec"), dict) else stored
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
        "circuit": _circuit_json(spec),
        "verification": row.verification,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }


def _circuit_json(spec: dict) -> dict[str, Any] | None:
    """A zk job's circuit as the requester submitted it: name, CID, id, output count."""
    zk = spec.get("zk") if isinstance(spec, dict) else None
    if not isinstance(zk, dict):
        return None
    return {
        "name": zk.get("name"),
        "cid": zk.get("cid"),
        "id": zk.get("circuit_id"),
        "outputs": zk.get("n_outputs"),
    }


class JobsRpc:
    """``v1.jobs.*`` over the job store (async facade), the requester service and
    the node's private files; CID inputs come through ``storage``."""

    def __init__(
        self,
        *,
        store: ThreadedStore,
        requester: RequesterService,
        private: PrivateFiles,
        storage: Any,  # storage.service.StorageService: .store, .exchange
        connected_peers: Callable[[], list[str]],
        work_dir: Path,
        clock: Callable[[], float],
        stats: Callable[[], dict],
        payment_state: Callable[..., dict | None] = lambda job_id, role="provider": None,
    ):
        self.store = store
        self.requester = requester
        self.private = private
        self.storage = storage
        self.connected_peers = connected_peers
        self.dir = work_dir
        self.clock = clock
        self._stats = stats
        self._payment_state = payment_state

    def methods(self) -> dict:
        return {
            "v1.jobs.submit": self.submit,
            "v1.jobs.list": self.list,
            "v1.jobs.get": self.get,
            "v1.jobs.cancel": self.cancel,
            "v1.jobs.explain": self.explain,
            "v1.jobs.result": self.result,
            "v1.jobs.logs": self.logs,
            "v1.jobs.owed": self.owed,
            "v1.jobs.stats": self.stats,
        }

    async def stats(self, params: dict) -> dict:
        """Counters for job payloads: served, cached, swept (reasons as in maskd.retention)."""
        return self._stats()

    async def owed(self, params: dict) -> dict:
        """What this node owes providers for completed jobs (settled by the ledger, later)."""
        entries = await self.store.owed()
        return {
            "entries": [dataclasses.asdict(e) for e in entries],
            "totals": await self.store.owed_totals(),
        }

    async def submit(self, params: dict) -> dict:
        path = params.get("path")
        if not isinstance(path, str) or not os.path.isabs(path):
            raise RpcError("params.path must be an absolute path to a job.toml", rpc_code=-32602)
        spec = await trio.to_thread.run_sync(load_spec, path)
        return await self.submit_spec(spec)

    async def submit_spec(self, spec: JobSpec) -> dict:
        """Pack, store and submit a validated spec (``v1.jobs.submit`` after it read
        the file; ``maskd.gateway`` with a relayed zk spec)."""
        bundle, spec = await self._bundle(spec)
        try:
            # a private CAR, not the shared block store: it is served over
            # /mask/job/1 to the job's matched provider only
            spec_cid = await self.private.add(bundle, "bundle")
        finally:
            await trio.to_thread.run_sync(shutil.rmtree, bundle, True)
        job_id = await self.requester.submit(spec, spec_cid)
        row = await self.store.get(job_id, role="requester")
        return {"job_id": job_id, "state": str(row.state), "spec_cid": spec_cid}

    async def _bundle(self, spec: JobSpec) -> tuple[Path, JobSpec]:
        """The job bundle dir, and the spec as submitted (a zk job's with its
        circuit recorded); CID programs, circuits and inputs are fetched first."""
        store = self.storage.store
        for ref in (spec.program or spec.circuit, *spec.inputs):
            if ref is not None and ref.kind == "cid":
                await self._fetch_ref(ref.value)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-bundle-", dir=self.dir))

        def place(ref, dest: Path) -> None:
            if ref.kind == "cid":
                # a DAG from peers: no links, and never more than the disk holds
                export_to_path(ref.value, store.get, str(dest), limits=disk_limits(str(dest)))
            elif Path(ref.value).is_dir():
                shutil.copytree(ref.value, dest)
            else:
                shutil.copyfile(ref.value, dest)

        def build_zk() -> JobSpec:
            zk_spec = msgspec.structs.replace(spec, zk=pack_zk(spec, tmp, place))
            (tmp / "job.json").write_text(json.dumps(job_document(zk_spec), sort_keys=True))
            return zk_spec

        def build() -> JobSpec:
            if spec.executor == ZK_EXECUTOR:
                return build_zk()
            assert spec.program is not None
            doc = {k: v for k, v in msgspec.to_builtins(spec).items() if v is not None}
            doc["program"] = "program.wasm"
            names = []
            (tmp / "in").mkdir()
            for ref in spec.inputs:
                place(ref, tmp / "in" / ref.name)
                names.append(ref.name)
            doc["inputs"] = names
            place(spec.program, tmp / "program.wasm")
            if (tmp / "program.wasm").is_dir():
                raise JobError(
                    f"program {spec.program.value} is a directory, not a .wasm file",
                    code="spec_invalid",
                    hint="point `program` at the CID of the .wasm file itself",
                )
            (tmp / "job.json").write_text(json.dumps(doc, sort_keys=True))
            return spec

        try:
            spec = await trio.to_thread.run_sync(build)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return tmp, spec

    async def _fetch_ref(self, cid: str) -> None:
        """Make a CID's DAG local (from the store, else from connected peers)."""
        missing = await trio.to_thread.run_sync(self.storage.store.missing, cid)
        if not missing:
            return
        peers = self.connected_peers()
        if not peers:
            raise JobError(
                f"{cid} is not in the local store and no peer is connected to fetch it from",
                code="input_unavailable",
                hint="`mask put` it here first, or connect to a peer that has it",
            )
        try:
            with trio.fail_after(REF_FETCH_TIMEOUT_S):
                await self.storage.exchange.fetch_dag(cid, peers)
        except trio.TooSlowError:
            raise JobError(
                f"fetching {cid} took over {REF_FETCH_TIMEOUT_S:.0f} s",
                code="input_unavailable",
                hint="is it pinned on a peer?",
            ) from None
        except MaskError as exc:
            raise JobError(
                f"cannot fetch {cid}: {exc.message}",
                code="input_unavailable",
                hint="`mask put` it on this node or on a connected peer first",
            ) from None

    async def _row(self, params: dict) -> JobRow:
        job_id = params.get("job_id")
        if not isinstance(job_id, str):
            raise RpcError("params.job_id is required", rpc_code=-32602)
        row = await self.store.find(job_id)
        if row is None:
            raise JobError(
                f"no job {job_id}", code="job_not_found", hint="list jobs with `mask jobs`"
            )
        return row

    async def list(self, params: dict) -> list:
        rows = await self.store.jobs()
        return [job_json(r) for r in sorted(rows, key=lambda r: r.created_at)]

    async def get(self, params: dict) -> dict:
        row = await self._row(params)
        out = job_json(row)
        # how it was paid: a voucher, or on chain by the provider's proof (zk claims)
        out["payment"] = self._payment_state(row.job_id, row.role)
        out["transitions"] = [
            {"from": str(t.from_state), "event": str(t.event), "to": str(t.to_state), "at": t.at}
            for t in await self.store.transitions(row.job_id, role=row.role)
        ]
        return out

    async def cancel(self, params: dict) -> dict:
        row = await self._row(params)
        if row.role != "requester":
            raise JobError("only the requester can cancel a job", code="not_requester")
        await self.requester.cancel(row.job_id)
        return job_json(await self.store.get(row.job_id, role="requester"))

    async def explain(self, params: dict) -> dict:
        row = await self._row(params)
        if row.role == "provider":
            return self._explain_provider(row)
        try:
            return self.requester.core.explain(row.job_id, self.clock())
        except MaskError:
            if row.explanation:
                return row.explanation
            raise

    def _explain_provider(self, row: JobRow) -> dict:
        return provider_explanation(row, self._payment_state(row.job_id))

    async def result(self, params: dict) -> dict:
        row = await self._row(params)
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
        car = self._result_car(row)
        vk = _own_vk(row)

        def write() -> None:
            # a provider's DAG: no links, and no more than any provider may write
            export_car(car, row.output_cid, dest, limits=RESULT_LIMITS)
            if vk is not None:
                # the key the proof was checked against: the requester's own
                # circuit's, whatever the provider's result put there
                _replace_file(Path(dest) / "verification_key.json", json.dumps(vk, indent=1))

        await trio.to_thread.run_sync(write)
        return {"job_id": row.job_id, "output_cid": row.output_cid, "dest": dest}

    def _result_car(self, row: JobRow) -> Path:
        car = self.private.result(row.output_cid)
        if not car.exists():
            raise JobError(
                f"the result of job {row.job_id} is not stored here",
                code="no_result",
                hint="it is kept by the requester that fetched it",
            )
        return car

    async def logs(self, params: dict) -> dict:
        """The job's stdout and stderr, read out of the result CAR as two bounded
        regular files: nothing is unpacked, links and directories are refused."""
        row = await self._row(params)
        none = {"job_id": row.job_id, "stdout": "", "stderr": "", "available": False}
        if not row.output_cid:
            return none
        car = self.private.result(row.output_cid)
        if not car.exists():
            return none
        out: dict[str, Any] = {"job_id": row.job_id, "available": True, "truncated": []}

        def read(name: str) -> str:
            try:
                data, cut = read_file_at(car, row.output_cid, name, max_bytes=LOG_READ_BYTES)
            except StorageError as exc:
                if exc.code == "entry_not_found":
                    return ""
                out.setdefault("problems", []).append(f"{name}: {exc.message}")
                return ""
            if cut:
                out["truncated"].append(name)
            return data.decode(errors="replace")

        out["stdout"] = await trio.to_thread.run_sync(read, "stdout.log")
        out["stderr"] = await trio.to_thread.run_sync(read, "stderr.log")
        return out


def _own_vk(row: JobRow) -> dict | None:
    """The verification key a requester's zk job was submitted with (JobSpec.zk)."""
    if row.role != "requester":
        return None
    spec = (row.spec or {}).get("spec")
    zk = spec.get("zk") if isinstance(spec, dict) else None
    vk = zk.get("vk") if isinstance(zk, dict) else None
    return vk if isinstance(vk, dict) else None


def _replace_file(path: Path, text: str) -> None:
    """Write ``path`` anew, whatever was there (a file, or an entry the result made)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text + "\n")
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    os.replace(tmp, path)


def provider_explanation(row: JobRow, payment: dict | None) -> dict:
    """``mask explain`` for a job this node ran for someone: its state and
    whether the requester paid for it (``maskd.money.Money.payment_state``)."""
    lines = [f"job {row.job_id} (run here for a requester): {row.state}"]
    if row.error:
        lines.append(f"error: {row.error.get('code')}: {row.error.get('message', '')}")
    relayed = row.explanation.get("paid_by") if isinstance(row.explanation, dict) else None
    if isinstance(relayed, dict):
        payment = {"state": "by_request", **relayed}
        lines.append(
            f"payment: by ComputeRequests request {relayed.get('request_id')} "
            f"({relayed.get('contract')} on chain {relayed.get('chain_id')}), paid to this "
            "account when the proof is submitted on chain"
        )
    elif payment is None:
        lines.append("payment: none expected (no chain, or no result delivered)")
    elif payment["state"] == "paid":
        lines.append("payment: paid by the requester's voucher")
    elif payment["state"] == "paid_by_claim":
        lines.append(
            f"payment: paid on chain by this provider's proof (claimWithProof, "
            f"{payment['claim'].get('amount')} base units, {payment['claim'].get('tx_hash')})"
        )
    elif payment["state"] == "claim_refused":
        claim = payment["claim"]
        lines.append(
            f"payment: none: the chain refused this provider's claim ({claim.get('reason')}: "
            f"{claim.get('error')}); the job is no longer counted against the requester"
        )
    elif payment["state"] == "awaiting_voucher":
        lines.append(
            f"payment: waiting for the requester's voucher for {payment['price']} base units"
        )
    else:
        lines.append(
            f"payment: {payment['state']}: the requester has not sent a voucher covering "
            f"{payment['price']} base units (its standing here drops; `mask ledger` lists it)"
        )
        claim = payment.get("claim")
        if isinstance(claim, dict):
            why = f" ({claim.get('reason')}: {claim.get('error')})" if claim.get("reason") else ""
            lines.append(f"claim on chain with the proof: {claim.get('status')}{why}")
    return {
        "job_id": row.job_id,
        "role": "provider",
        "state": str(row.state),
        "payment": payment,
        "text": "\n".join(lines),
    }

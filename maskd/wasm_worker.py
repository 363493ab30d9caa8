"""The provider's worker: a job's bundle in, a sandboxed wasm run, its result out.

A bundle whose job.json names ``zk-groth16`` goes to the ``ZkExecutor``
(maskd.zk_worker) instead: fetched, cached and stored the same way.

``WasmWorker`` is the ``Worker`` the provider service drives
(scheduler.market): ``fetch_payload`` -> ``execute`` -> ``store_output``. It
trusts nothing in the bundle: the bundle is fetched over ``/mask/job/1``,
checked against ``spec_cid`` and unpacked under limits; a bundle already
unpacked for the same requester and spec_cid is reused from the
``BundleCache``. Each run has its own work dir (``/out``, logs).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from maskd.jobfiles import BundleCache
from maskd.payloads import PayloadClient
from maskd.retention import cache_key
from protocol.errors import JobError, MaskError
from protocol.market import UsageReport
from scheduler import provider as pv
from storage.carfile import export_car
from storage.exporter import ExportLimits
from worker.bundle import load_bundle
from worker.results import remove_tree
from worker.zk import ZK_EXECUTOR, read_executor

if TYPE_CHECKING:
    from maskd.zk_worker import ZkExecutor

log = logging.getLogger("maskd.worker")

# runs of one job on this node: a job during which the node died this often
# (a crash, an OOM kill) fails instead of taking the node down on every restart
MAX_ATTEMPTS = 2

# A requester's bundle is unpacked under these, whatever its DAG declares: no
# links, devices or escaping names (storage.exporter), and no decompression bomb.
MAX_PROGRAM_BYTES = 64 << 20  # program.wasm
MAX_SPEC_BYTES = 1 << 20  # job.json
MAX_BUNDLE_ENTRIES = 100_000
MAX_BUNDLE_DEPTH = 32


def bundle_limits(max_bytes: int) -> ExportLimits:
    """How much of a requester's bundle this provider unpacks, whatever it declares."""
    return ExportLimits.for_tree(
        max_bytes=max_bytes, max_entries=MAX_BUNDLE_ENTRIES, max_depth=MAX_BUNDLE_DEPTH
    )


class WasmWorker:
    """Runs jobs with wasmtime; their bundles come through a :class:`BundleCache`.

    A job whose requester sent the same spec_cid before runs on the bundle
    already fetched, verified and unpacked for it (no /mask/job/1 round trip,
    decrypt or export); otherwise it is fetched over /mask/job/1, decrypted,
    checked against ``spec_cid`` and unpacked into the cache. Each run has its
    own work dir (``/out``, logs); the cached ``in/`` is mounted read-only.
    """

    def __init__(
        self,
        payloads: PayloadClient,
        work_dir: Path,
        cache: BundleCache,
        *,
        max_concurrent_runs: int = 8,
        max_bundle_bytes: int = 1 << 30,
        zk: Callable[[trio.CapacityLimiter], ZkExecutor] | None = None,
    ):
        self.payloads = payloads
        self.cache = cache
        # a bundle is fetched and unpacked up to this size (jobs.max_bundle_mb)
        self.max_bundle_bytes = max_bundle_bytes
        self.bundle_limits = bundle_limits(max_bundle_bytes)
        self._fetch_errors: dict[str, MaskError] = {}
        self._bundles: dict[str, str] = {}  # job id -> the cache key it holds
        self.work_dir = work_dir
        self.work_dir.mkdir(parents=True, exist_ok=True)
        from worker.wasm import WasmRuntime, execution_limiter

        self.runtime = WasmRuntime()
        # runs hold their own thread tokens (also while an abandoned run winds
        # down), never trio's default limiter that the rest of the daemon uses
        self.limiter = execution_limiter(max_concurrent_runs)
        # zk-groth16 jobs: the same bundles and results, proved under the same limiter
        self.zk = zk(self.limiter) if zk is not None else None

    def _dir(self, job_id: str) -> Path:
        return self.work_dir / job_id

    async def fetch_payload(self, job_id: str, peer_id: str, spec_cid: str) -> None:
        """Hold the job's bundle in the cache, fetching it on a miss. A failure is
        kept for ``execute`` to report, so the attempt ends with a typed error
        rather than an exception in the shell."""
        self._fetch_errors.pop(job_id, None)
        self._release(job_id)

        async def fetch(dest: Path) -> None:
            car = self.payloads.files.received_bundle(job_id)
            try:
                await self.payloads.fetch(
                    peer_id, job_id, "bundle", spec_cid, car, max_bytes=self.max_bundle_bytes
                )
                await trio.to_thread.run_sync(
                    lambda: export_car(car, spec_cid, dest, limits=self.bundle_limits)
                )
            finally:
                car.unlink(missing_ok=True)

        key = cache_key(spec_cid, peer_id)
        try:
            await self.cache.acquire(key, fetch)
            self._bundles[job_id] = key
        except MaskError as exc:
            log.warning("job %s: no bundle from %s: %s (%s)", job_id, peer_id, exc, exc.code)
            self._fetch_errors[job_id] = exc
        except OSError as exc:
            log.warning("job %s: no bundle from %s: %s", job_id, peer_id, exc)
            self._fetch_errors[job_id] = JobError(
                f"cannot fetch the job bundle: {exc}", code="payload_unavailable"
            )

    def _release(self, job_id: str) -> None:
        key = self._bundles.pop(job_id, None)
        if key is not None:
            self.cache.release(key)

    async def execute(self, job_id: str, agreement: Any) -> pv.ExecutionOutcome:
        failed = self._fetch_errors.pop(job_id, None)
        if failed is not None:
            self._release(job_id)
            return pv.failed_outcome(
                failed.code, f"the job bundle did not arrive: {failed.message}"
            )
        key = self._bundles.get(job_id)
        if key is None:
            return pv.failed_outcome("bad_bundle", "no job bundle was fetched for this run")
        try:
            attempts = await trio.to_thread.run_sync(self._count_attempt, job_id)
            if attempts > MAX_ATTEMPTS:
                return pv.failed_outcome(
                    "provider_crashed",
                    f"this provider stopped {attempts - 1} times while running the job;"
                    " it will not run it again",
                )
            outcome = await self._run(job_id, agreement, self.cache.path(key))
        finally:
            self._release(job_id)
        if outcome.error_code == "bad_bundle":  # unreadable on disk: not for the next job
            dropped = self.cache.drop_if_idle(key)
            await self.cache.remove([dropped] if dropped else [])
        return outcome

    def _count_attempt(self, job_id: str) -> int:
        """Record one more start of ``job_id`` here (on disk, before it runs); the count.

        The work dir outlives a crash of the node and goes when the output is
        stored, so a count above one means an earlier run of this job never
        finished: the node died under it."""
        base = self._dir(job_id)
        base.mkdir(parents=True, exist_ok=True)
        marker = base / "attempts"
        try:
            count = int(marker.read_text() or "0") + 1
        except (OSError, ValueError):
            count = 1
        tmp = base / ".attempts.tmp"
        with open(tmp, "w") as f:
            f.write(str(count))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, marker)
        return count

    async def _run(self, job_id: str, agreement: Any, bundle: Path) -> pv.ExecutionOutcome:
        from worker.wasm import CancelToken, WasmLimits, run_wasm

        terms = agreement.terms
        base = self._dir(job_id)
        try:
            executor = await trio.to_thread.run_sync(
                lambda: read_executor(bundle, max_spec_bytes=MAX_SPEC_BYTES)
            )
        except JobError as exc:
            return pv.failed_outcome(exc.code, exc.message)
        if executor == ZK_EXECUTOR:
            if self.zk is None:
                return pv.failed_outcome(
                    "executor_unsupported", f"this provider does not run {ZK_EXECUTOR} jobs"
                )
            return await self.zk.run(job_id, agreement, bundle, base)
        try:
            # a requester's files: opened without following links, sizes and
            # shapes checked before they are read (worker.bundle)
            job = await trio.to_thread.run_sync(
                lambda: load_bundle(
                    bundle, max_program_bytes=MAX_PROGRAM_BYTES, max_spec_bytes=MAX_SPEC_BYTES
                )
            )
        except JobError as exc:
            return pv.failed_outcome(exc.code, exc.message)
        out = base / "result" / "out"
        await trio.to_thread.run_sync(remove_tree, out.parent)
        out.mkdir(parents=True)
        limits = WasmLimits(
            memory_bytes=max(1, terms.memory_mb) << 20,
            max_fuel=terms.max_fuel or None,
            max_seconds=float(terms.max_seconds),
        )
        token = CancelToken()
        try:
            result = await trio.to_thread.run_sync(
                lambda: run_wasm(
                    job.module,
                    list(job.args),
                    job.in_dir,
                    out,
                    limits,
                    token,
                    logs_dir=base / "logs",
                    runtime=self.runtime,
                ),
                abandon_on_cancel=True,
                limiter=self.limiter,
            )
        except trio.Cancelled:
            token.cancel()  # the thread stops at its next epoch tick
            raise
        logs = base / "result"
        if result.output_error is not None:
            # /out broke a limit (too big, too many entries, too deep, a link, a
            # special file): it is never imported; the result carries the logs only
            await trio.to_thread.run_sync(_empty_dir, out)
        for name, path in (("stdout.log", result.stdout_path), ("stderr.log", result.stderr_path)):
            if path and Path(path).exists():
                shutil.copyfile(path, logs / name)
        u = result.usage
        error = result.error or result.output_error
        error_code = error.code if error else ""
        error_message = error.message if error else ""
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
        """The result as a private CAR (served to the requester only); its root CID.

        A run that never started (no bundle) stores an empty result. The work
        dir goes once the CAR is in place: the CAR is the copy that is served."""
        base = self._dir(job_id)
        result = base / "result"
        await trio.to_thread.run_sync(lambda: result.mkdir(parents=True, exist_ok=True))
        cid = await self.payloads.files.add(result, "result")
        await trio.to_thread.run_sync(remove_tree, base)
        return cid


def _empty_dir(path: Path) -> None:
    remove_tree(path)
    path.mkdir()


def _sha256(path) -> bytes:
    if not path or not Path(path).exists():
        return hashlib.sha256(b"").digest()
    return hashlib.sha256(Path(path).read_bytes()).digest()

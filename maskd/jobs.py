"""Jobs in the daemon: the market services wired to the mesh, storage and wasmtime.

The market logic is in scheduler/ (pure cores + trio shells); this module
supplies what the shells ask for, for real:

- ``MeshGossip`` publishes bids on ``/mask/bids/1``;
- ``MarketTransport`` sends one framed message per stream on
  ``/mask/market/1``; ``handle_market_stream`` routes what arrives to the
  requester or the provider service;
- ``WasmWorker`` (provider): fetches the job bundle by CID from the requester
  (or reuses the one that requester sent for the same spec_cid, from the
  ``BundleCache``), runs it with worker.wasm.run_wasm in a thread
  (cancellable), stores the result as a DAG;
- ``StorageOutputs`` (requester): fetches the output DAG from the provider,
  re-hashing every block (the CID is the check for ``receipt`` mode).

A job bundle is a UnixFS directory: ``job.json`` (the normalised spec),
``program.wasm``, and ``in/`` (the inputs). Its CID is the ``spec_cid`` that
bids and agreements name. A result is a directory: ``out/`` (what the job
wrote), ``stdout.log``, ``stderr.log``.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import trio

from ledger.agreement import AccountKeys
from maskd.jobfiles import BundleCache, PrivateFiles, Sweeper
from maskd.retention import RetentionPolicy, cache_key
from protocol import jobdata as jd
from protocol.errors import JobError, MaskError, RpcError, StorageError, WireError
from protocol.identity import verify_identity_record
from protocol.market import Agreement, Cancel, UsageReport, decode_market
from protocol.messages import JOB_PROTOCOL, MARKET_PROTOCOL, IdentityRecord
from scheduler import provider as pv
from scheduler.jobstate import JobState
from scheduler.market import ProviderService, RequesterService, ThreadedStore
from scheduler.policy import UnitPrices
from scheduler.provider import ProviderConfig, ProviderCore
from scheduler.requester import RequesterConfig, RequesterCore
from scheduler.spec import JobSpec, load_spec
from scheduler.store import JobRow, JobStore
from storage.carfile import export_car, verify_car
from storage.crypto import decrypt_stream, encrypt_stream
from storage.exporter import export_to_path

log = logging.getLogger("maskd.jobs")

MAX_FRAME = 1 << 20
OUTPUT_FETCH_TIMEOUT_S = 300.0

# /mask/job/1: private payloads
PAYLOAD_STREAMS_PER_PEER = 4  # concurrent payload streams served to one peer
PAYLOAD_OPEN_TIMEOUT_S = 10.0  # dial + protocol negotiation
PAYLOAD_REQUEST_TIMEOUT_S = 10.0  # the server waits this long for the request
MATCH_WAIT_S = 10.0  # a bundle asked for before the requester recorded the match
PAYLOAD_HEADER_TIMEOUT_S = MATCH_WAIT_S + 60.0  # the match wait plus encrypting
PAYLOAD_IDLE_TIMEOUT_S = 30.0  # between two frames
PAYLOAD_TIMEOUT_S = 300.0  # a whole transfer
MAX_PAYLOAD_BYTES = 4 << 30  # ciphertext a client accepts


class MeshGossip:
    def __init__(self, mesh):
        self.mesh = mesh

    async def publish(self, topic: str, data: bytes) -> None:
        await self.mesh.publish(topic, data)


class MarketTransport:
    """One long-lived ``/mask/market/1`` stream per peer, varint-framed messages.

    Opening a stream costs a multistream negotiation (~6-10 ms on loopback), so a
    stream is kept and reused; ``handle_market_stream`` reads frames in a loop.
    Sends to one peer are serialised by a per-peer lock (the requester and the
    provider service share this transport), so frames never interleave and leave
    in call order. A write that fails on a kept stream is retried once on a fresh
    one (a duplicate is harmless: the cores drop stale and repeated messages); a
    stream idle longer than ``idle_s`` is closed rather than reused, well inside
    the server's 30 s read timeout, so a write never lands on a stream the
    server has stopped reading.
    """

    def __init__(self, mesh, *, idle_s: float = 10.0):
        self.mesh = mesh
        self.idle_s = idle_s
        self._streams: dict[str, tuple[Any, float]] = {}  # peer -> (stream, last used)
        self._locks: dict[str, trio.Lock] = {}

    async def send(self, peer_id: str, data: bytes) -> None:
        from libp2p.utils.varint import encode_uvarint

        frame = encode_uvarint(len(data)) + data
        lock = self._locks.setdefault(peer_id, trio.Lock())
        async with lock:
            kept = self._streams.pop(peer_id, None)
            if kept is not None:
                stream, used = kept
                if time.monotonic() - used <= self.idle_s:
                    try:
                        with trio.fail_after(10):
                            await stream.write(frame)
                        self._streams[peer_id] = (stream, time.monotonic())
                        return
                    except trio.Cancelled:
                        await self._discard(stream, reset=True)
                        raise
                    except Exception:
                        await self._discard(stream, reset=True)
                else:
                    await self._discard(stream, reset=False)
            try:
                with trio.fail_after(10):
                    stream = await self.mesh.new_stream(peer_id, MARKET_PROTOCOL)
                    try:
                        await stream.write(frame)
                    except BaseException:
                        await self._discard(stream, reset=True)
                        raise
                self._streams[peer_id] = (stream, time.monotonic())
            except trio.TooSlowError:
                raise OSError(f"sending to {peer_id} timed out") from None
            except OSError:
                raise
            except Exception as exc:  # libp2p's stream and dial errors
                raise OSError(f"cannot reach {peer_id}: {exc}") from None

    @staticmethod
    async def _discard(stream, *, reset: bool) -> None:
        with trio.move_on_after(1) as scope:
            scope.shield = True
            try:
                await (stream.reset() if reset else stream.close())
            except Exception:
                pass


# ---------------------------------------------------------------- /mask/job/1


@dataclasses.dataclass(frozen=True, slots=True)
class Grant:
    """What the server may send: the CAR at ``path`` (root ``root``) to ``account``'s key."""

    account: str
    root: str
    path: Path


class PayloadRefusal(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(detail or reason)
        self.reason = reason
        self.detail = detail


def _refused(reason: str, detail: str) -> JobError:
    return JobError(
        f"the peer refused the payload: {reason}" + (f" ({detail})" if detail else ""),
        code="payload_refused",
        hint="only the other party of the job's agreement may fetch its payload",
    )


def _mismatch(message: str) -> JobError:
    return JobError(
        message,
        code="payload_mismatch",
        hint="the peer sent a payload other than the one the agreement names",
    )


class PayloadServer:
    """Serves ``/mask/job/1``: a job's payload, encrypted, to the other party only.

    ``authorize(peer, job_id, kind)`` returns a Grant or raises PayloadRefusal; the
    request's identity record must verify, be the stream's peer's, and name the
    account the grant is for (the agreement's), and the CAR is encrypted to its key.
    """

    def __init__(
        self,
        authorize,
        tmp_dir: Path,
        *,
        streams_per_peer: int = PAYLOAD_STREAMS_PER_PEER,
        request_timeout: float = PAYLOAD_REQUEST_TIMEOUT_S,
        idle_timeout: float = PAYLOAD_IDLE_TIMEOUT_S,
        total_timeout: float = PAYLOAD_TIMEOUT_S,
        penalise: Callable[[str, str], None] = lambda peer, reason: None,
    ):
        self.authorize = authorize
        self.penalise = penalise
        self.tmp_dir = tmp_dir
        self.streams_per_peer = streams_per_peer
        self.request_timeout = request_timeout
        self.idle_timeout = idle_timeout
        self.total_timeout = total_timeout
        self.active: collections.Counter[str] = collections.Counter()
        self.counters: collections.Counter[str] = collections.Counter()

    async def handle(self, stream, peer: str) -> None:
        if self.active[peer] >= self.streams_per_peer:
            self.counters["refused_busy"] += 1
            with trio.move_on_after(self.idle_timeout):
                await _write(stream, jd.PayloadRefused(job_id="", kind="", reason=jd.BUSY))
            await _close(stream)
            return
        self.active[peer] += 1
        try:
            with trio.move_on_after(self.total_timeout):
                await self._serve(stream, peer)
        except trio.Cancelled:
            raise
        except WireError as exc:
            if exc.code != "payload_protocol":  # reset, or ended early: not the peer's fault
                self.counters["serve_failed"] += 1
                log.debug("serving a payload to %s failed: %s", peer, exc)
            else:  # a malformed frame: scored like any bad peer input
                self.counters["bad_frame"] += 1
                self.penalise(peer, "payload_protocol")
                log.info("peer %s broke %s: %s", peer, JOB_PROTOCOL, exc)
        except Exception as exc:  # the asker went away, reset, timed out, …
            self.counters["serve_failed"] += 1
            log.debug("serving a payload to %s failed: %s", peer, exc)
        finally:
            self.active[peer] -= 1
            if not self.active[peer]:
                del self.active[peer]
            await _close(stream)

    async def _serve(self, stream, peer: str) -> None:
        reader = jd.FrameReader(stream)
        with trio.fail_after(self.request_timeout):
            req = await reader.next()
        if not isinstance(req, jd.PayloadRequest):
            self.counters["bad_request"] += 1
            self.penalise(peer, "payload_protocol")
            return

        async def refuse(reason: str, detail: str = "") -> None:
            self.counters[f"refused_{reason}"] += 1
            with trio.fail_after(self.idle_timeout):
                await _write(
                    stream,
                    jd.PayloadRefused(
                        job_id=req.job_id, kind=req.kind, reason=reason, detail=detail
                    ),
                )

        if req.kind not in jd.KINDS:
            return await refuse(jd.BAD_REQUEST, f"unknown kind {req.kind!r}")
        ident = req.identity
        if ident.peer_id != peer or not verify_identity_record(ident):
            return await refuse(jd.BAD_REQUEST, "the identity record is not the asker's")
        try:
            grant = await self.authorize(peer, req.job_id, req.kind)
        except PayloadRefusal as r:
            return await refuse(r.reason, r.detail)
        if ident.account.lower() != grant.account.lower():
            return await refuse(jd.NOT_PARTY, "the identity record names another account")
        if not grant.path.exists():
            return await refuse(jd.NOT_READY, f"no {req.kind} stored for this job")
        fd, name = tempfile.mkstemp(prefix=".tmp-enc-", dir=self.tmp_dir)
        os.close(fd)
        tmp = Path(name)
        try:

            def encrypt() -> int:
                with open(grant.path, "rb") as src, open(tmp, "wb") as dst:
                    encrypt_stream(src, dst, ident.x25519)
                return tmp.stat().st_size

            size = await trio.to_thread.run_sync(encrypt)
            header = jd.PayloadHeader(job_id=req.job_id, kind=req.kind, root=grant.root, size=size)
            with trio.fail_after(self.idle_timeout):
                await _write(stream, header)
            with open(tmp, "rb") as f:
                while piece := f.read(jd.DATA_PIECE):
                    with trio.fail_after(self.idle_timeout):
                        await _write(stream, jd.PayloadData(data=piece))
            self.counters[f"served_{req.kind}"] += 1
        finally:
            tmp.unlink(missing_ok=True)


async def _write(stream, message) -> None:
    await stream.write(jd.encode_frame(message))


async def _close(stream) -> None:
    with trio.move_on_after(1) as scope:
        scope.shield = True
        try:
            await stream.close()
        except Exception:
            pass


async def fetch_private(
    open_stream,
    peer: str,
    job_id: str,
    kind: str,
    root: str,
    identity: IdentityRecord,
    x25519_private: bytes,
    dest: Path,
    *,
    max_bytes: int = MAX_PAYLOAD_BYTES,
    header_timeout: float = PAYLOAD_HEADER_TIMEOUT_S,
    idle_timeout: float = PAYLOAD_IDLE_TIMEOUT_S,
    total_timeout: float = PAYLOAD_TIMEOUT_S,
) -> None:
    """Fetch ``job_id``'s ``kind`` from ``peer`` over ``/mask/job/1`` into the CAR ``dest``.

    ``dest`` exists afterwards only if the payload decrypted (authenticated, whole)
    and is exactly the DAG of ``root``. Raises JobError ``payload_refused`` /
    ``payload_mismatch`` / ``payload_timeout``, StorageError ``decrypt_failed``,
    WireError ``payload_protocol``, or OSError when the peer cannot be reached.
    """
    # unique names: two jobs with the same output may fetch it at once
    fd, name = tempfile.mkstemp(prefix=".tmp-enc-", dir=dest.parent)
    os.close(fd)
    cipher = Path(name)
    plain = cipher.with_name(cipher.name.replace(".tmp-enc-", ".tmp-car-"))
    try:
        with trio.fail_after(total_timeout):
            try:
                with trio.fail_after(PAYLOAD_OPEN_TIMEOUT_S):
                    stream = await open_stream(peer)
            except trio.TooSlowError:
                raise OSError(f"opening {JOB_PROTOCOL} to {peer} timed out") from None
            try:
                await _fetch_cipher(
                    stream,
                    job_id,
                    kind,
                    root,
                    identity,
                    cipher,
                    max_bytes,
                    header_timeout,
                    idle_timeout,
                )
            finally:
                await _close(stream)
    except trio.TooSlowError:
        cipher.unlink(missing_ok=True)
        raise JobError(
            f"fetching the {kind} of {job_id} from {peer} timed out", code="payload_timeout"
        ) from None
    except BaseException:
        cipher.unlink(missing_ok=True)
        raise

    def open_and_check() -> None:
        try:
            with open(cipher, "rb") as src, open(plain, "wb") as dst:
                decrypt_stream(src, dst, x25519_private)
            try:
                verify_car(plain, root)
            except StorageError as exc:
                raise _mismatch(f"the {kind} is not the DAG of {root}: {exc.message}") from None
            os.replace(plain, dest)
        finally:
            cipher.unlink(missing_ok=True)
            plain.unlink(missing_ok=True)

    await trio.to_thread.run_sync(open_and_check)


async def _fetch_cipher(
    stream, job_id, kind, root, identity, cipher: Path, max_bytes, header_timeout, idle_timeout
) -> None:
    await _write(stream, jd.PayloadRequest(job_id=job_id, kind=kind, identity=identity))
    reader = jd.FrameReader(stream)
    with trio.fail_after(header_timeout):
        head = await reader.next()
    if isinstance(head, jd.PayloadRefused):
        raise _refused(head.reason, head.detail)
    if not isinstance(head, jd.PayloadHeader) or head.job_id != job_id or head.kind != kind:
        raise WireError(f"{JOB_PROTOCOL}: expected the payload header", code="payload_protocol")
    if head.root != root:
        raise _mismatch(f"the peer offers {kind} {head.root}, the agreement names {root}")
    if not 0 <= head.size <= max_bytes:
        raise _refused("too_large", f"{head.size:,} bytes is over the {max_bytes:,} limit")
    got = 0
    with open(cipher, "wb") as f:
        while True:
            with trio.fail_after(idle_timeout):
                msg = await reader.next()
            if msg is None:
                break  # short? decrypt_stream says so (truncation is authenticated)
            if not isinstance(msg, jd.PayloadData):
                raise WireError(f"{JOB_PROTOCOL}: expected payload data", code="payload_protocol")
            got += len(msg.data)
            if got > head.size:
                raise WireError(
                    f"{JOB_PROTOCOL}: more data than announced", code="payload_protocol"
                )
            f.write(msg.data)
            if got == head.size:
                break


def _terms(row: JobRow):
    if not row.agreement:
        return None
    return msgspec.msgpack.decode(row.agreement, type=Agreement).terms


def store_authorizer(store: JobStore, files: PrivateFiles, *, match_wait: float = MATCH_WAIT_S):
    """The daemon's rule: a job's bundle to its matched provider, its result to its requester."""

    def get(job_id: str, role: str) -> JobRow:
        try:
            return store.get(job_id, role=role)
        except MaskError:
            raise PayloadRefusal(jd.UNKNOWN_JOB) from None

    async def authorize(peer: str, job_id: str, kind: str) -> Grant:
        if kind == "bundle":
            row = get(job_id, "requester")
            # the provider asks as soon as it countersigned: give the requester's
            # core a moment to record the match
            with trio.move_on_after(match_wait):
                while row.state is JobState.PENDING:
                    await trio.sleep(0.05)
                    row = get(job_id, "requester")
            terms = _terms(row)
            if (
                row.provider_peer != peer
                or terms is None
                or row.state not in (JobState.MATCHED, JobState.RUNNING)
            ):
                raise PayloadRefusal(jd.NOT_PARTY, "the job is not placed with you")
            return Grant(terms.provider_account, terms.spec_cid, files.bundle(terms.spec_cid))
        row = get(job_id, "provider")
        terms = _terms(row)
        if terms is None or terms.requester_peer != peer:
            raise PayloadRefusal(jd.NOT_PARTY, "you are not this job's requester")
        if not row.output_cid:
            raise PayloadRefusal(jd.NOT_READY, "no result stored yet")
        return Grant(terms.requester_account, row.output_cid, files.result(row.output_cid))

    return authorize


class StorageOutputs:
    """Requester side: fetch a result over ``/mask/job/1`` and check its root CID."""

    def __init__(self, payloads: PayloadClient, store: JobStore):
        self.payloads = payloads
        self.store = store

    def _job_for(self, peer_id: str, output_cid: str) -> str | None:
        # the Outputs interface names no job: the core persisted the result
        # (verifying, with output_cid) before asking for this fetch
        for row in self.store.open_jobs(role="requester"):
            if (
                row.provider_peer == peer_id
                and row.output_cid == output_cid
                and row.state is JobState.VERIFYING
            ):
                return row.job_id
        return None

    async def _have(self, dest: Path) -> bool:
        # under the sweep's lock: the job row already names this output, so a
        # sweep that runs after this sees it as ours and keeps the file, and one
        # that ran before has finished deleting (the file is then fetched again)
        async with self.payloads.files.lock:
            return dest.exists()

    async def fetch_and_verify(
        self, peer_id: str, output_cid: str, verify_mode: str
    ) -> tuple[bool, str]:
        dest = self.payloads.files.result(output_cid)
        if await self._have(dest):
            return True, ""  # already here, verified against this CID when it came
        job_id = self._job_for(peer_id, output_cid)
        if job_id is None:
            return False, f"no job is verifying output {output_cid} from {peer_id}"
        with trio.move_on_after(OUTPUT_FETCH_TIMEOUT_S):
            try:
                # receipt mode: the CAR decrypted (authenticated) and is exactly
                # the DAG of the CID the provider signed; that is the whole check
                await self.payloads.fetch(peer_id, job_id, "result", output_cid, dest)
            except MaskError as exc:
                return False, f"fetching the output failed ({exc.code}): {exc.message}"
            except OSError as exc:
                return False, f"fetching the output failed: {exc}"
            return True, ""
        return False, f"fetching the output took over {OUTPUT_FETCH_TIMEOUT_S:.0f} s"

    async def fetch_logs(self, job_id: str, peer_id: str, output_cid: str) -> None:
        dest = self.payloads.files.result(output_cid)
        if await self._have(dest):
            return
        with trio.move_on_after(OUTPUT_FETCH_TIMEOUT_S):
            try:
                await self.payloads.fetch(peer_id, job_id, "result", output_cid, dest)
            except (MaskError, OSError) as exc:
                log.info("job %s failed and its logs could not be fetched: %s", job_id, exc)


class PayloadClient:
    """Fetches private payloads for this node (its identity and X25519 key)."""

    def __init__(self, mesh, identity, files: PrivateFiles):
        self.mesh = mesh
        self.identity = identity
        self.files = files
        self._x25519 = identity.x25519_private.private_bytes_raw()

    async def _open(self, peer: str):
        try:
            return await self.mesh.new_stream(peer, JOB_PROTOCOL)
        except trio.Cancelled:
            raise
        except Exception as exc:  # libp2p's dial and negotiation errors
            raise OSError(f"cannot reach {peer}: {exc}") from None

    async def fetch(self, peer: str, job_id: str, kind: str, root: str, dest: Path) -> None:
        await fetch_private(
            self._open, peer, job_id, kind, root, self.identity.record, self._x25519, dest
        )


class WasmWorker:
    """Runs jobs with wasmtime; their bundles come through a :class:`BundleCache`.

    A job whose requester sent the same spec_cid before runs on the bundle
    already fetched, verified and unpacked for it (no /mask/job/1 round trip,
    decrypt or export); otherwise it is fetched over /mask/job/1, decrypted,
    checked against ``spec_cid`` and unpacked into the cache. Each run has its
    own work dir (``/out``, logs); the cached ``in/`` is mounted read-only.
    """

    def __init__(self, payloads: PayloadClient, work_dir: Path, cache: BundleCache):
        self.payloads = payloads
        self.cache = cache
        self._fetch_errors: dict[str, MaskError] = {}
        self._bundles: dict[str, str] = {}  # job id -> the cache key it holds
        self.work_dir = work_dir
        self.work_dir.mkdir(parents=True, exist_ok=True)
        from worker.wasm import WasmRuntime

        self.runtime = WasmRuntime()

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
                await self.payloads.fetch(peer_id, job_id, "bundle", spec_cid, car)
                await trio.to_thread.run_sync(lambda: export_car(car, spec_cid, dest))
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
            return _failed(failed.code, f"the job bundle did not arrive: {failed.message}")
        key = self._bundles.get(job_id)
        if key is None:
            return _failed("bad_bundle", "no job bundle was fetched for this run")
        try:
            outcome = await self._run(job_id, agreement, self.cache.path(key))
        finally:
            self._release(job_id)
        if outcome.error_code == "bad_bundle":  # unreadable on disk: not for the next job
            dropped = self.cache.drop_if_idle(key)
            await self.cache.remove([dropped] if dropped else [])
        return outcome

    async def _run(self, job_id: str, agreement: Any, bundle: Path) -> pv.ExecutionOutcome:
        from worker.wasm import CancelToken, WasmLimits, run_wasm

        terms = agreement.terms
        base = self._dir(job_id)
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
        """The result as a private CAR (served to the requester only); its root CID.

        A run that never started (no bundle) stores an empty result. The work
        dir goes once the CAR is in place: the CAR is the copy that is served."""
        base = self._dir(job_id)
        result = base / "result"
        await trio.to_thread.run_sync(lambda: result.mkdir(parents=True, exist_ok=True))
        cid = await self.payloads.files.add(result, "result")
        await trio.to_thread.run_sync(shutil.rmtree, base, True)
        return cid


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
        self.private = PrivateFiles(self.dir / "private")
        self.payloads = PayloadClient(node.mesh, ident, self.private)
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
            clock=time.time,
        )
        self.payload_server = PayloadServer(
            store_authorizer(self.store, self.private),
            self.private.root,
            penalise=node.mesh._penalise,
        )
        self.requester = RequesterService(
            RequesterCore(
                RequesterConfig(peer_id=ident.peer_id, identity=ident.record),
                keys,
                offers=node.book.offers,
                peer_stats=self._peer_stats,
            ),
            store=async_store,
            gossip=MeshGossip(node.mesh),
            transport=transport,
            outputs=StorageOutputs(self.payloads, self.store),
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
                worker=WasmWorker(self.payloads, self.dir / "work", self.cache),
                clock=time.time,
            )
        node.mesh.set_stream_handler(MARKET_PROTOCOL, self.handle_market_stream)
        node.mesh.set_stream_handler(JOB_PROTOCOL, self.handle_job_stream)

    def _peer_stats(self, peer_id: str) -> tuple[float, float]:
        """(reputation, latency ms) for selection: misbehaviour lowers reputation."""
        mesh = self.node.mesh
        reputation = -mesh.scores.score(peer_id, mesh.clock())
        latency = mesh.latency_ms(peer_id)
        return reputation, latency if latency is not None else 1e6

    # ------------------------------------------------------------------ run
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.sweeper.run)  # a first pass before any job runs
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

    async def handle_job_stream(self, stream) -> None:
        await self.payload_server.handle(stream, stream.muxed_conn.peer_id.to_base58())

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
            "v1.jobs.stats": self.stats,
        }

    async def stats(self, params: dict) -> dict:
        """Counters for job payloads: served, cached, swept (reasons as in maskd.retention)."""
        return {
            "payloads_served": dict(self.payload_server.counters),
            "bundle_cache": dataclasses.asdict(self.cache.statistics()),
            "sweep": dict(self.sweeper.counters),
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
            # a private CAR, not the shared block store: it is served over
            # /mask/job/1 to the job's matched provider only
            spec_cid = await self.private.add(bundle, "bundle")
        finally:
            await trio.to_thread.run_sync(shutil.rmtree, bundle, True)
        job_id = await self.requester.submit(spec, spec_cid)
        return {
            "job_id": job_id,
            "state": str(self.store.get(job_id, role="requester").state),
            "spec_cid": spec_cid,
        }

    async def _bundle(self, spec: JobSpec) -> Path:
        """The job bundle dir; CID programs and inputs are fetched from peers first."""
        store = self.node.storage.store
        for ref in (spec.program, *spec.inputs):
            if ref.kind == "cid":
                await self._fetch_ref(ref.value)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-bundle-", dir=self.dir))

        def place(ref, dest: Path) -> None:
            if ref.kind == "cid":
                export_to_path(ref.value, store.get, str(dest))
            elif Path(ref.value).is_dir():
                shutil.copytree(ref.value, dest)
            else:
                shutil.copyfile(ref.value, dest)

        def build() -> None:
            doc = msgspec.to_builtins(spec)
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

        try:
            await trio.to_thread.run_sync(build)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return tmp

    async def _fetch_ref(self, cid: str) -> None:
        """Make a CID's DAG local (from the store, else from connected peers)."""
        storage = self.node.storage
        missing = await trio.to_thread.run_sync(storage.store.missing, cid)
        if not missing:
            return
        peers = [v.peer_id for v in self.node.mesh.peers()]
        if not peers:
            raise JobError(
                f"{cid} is not in the local store and no peer is connected to fetch it from",
                code="input_unavailable",
                hint="`mask put` it here first, or connect to a peer that has it",
            )
        try:
            with trio.fail_after(120):
                await storage.exchange.fetch_dag(cid, peers)
        except trio.TooSlowError:
            raise JobError(
                f"fetching {cid} took over 120 s",
                code="input_unavailable",
                hint="is it pinned on a peer?",
            ) from None
        except MaskError as exc:
            raise JobError(
                f"cannot fetch {cid}: {exc.message}",
                code="input_unavailable",
                hint="`mask put` it on this node or on a connected peer first",
            ) from None

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
        car = self._result_car(row)
        await trio.to_thread.run_sync(lambda: export_car(car, row.output_cid, dest))
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
        row = self._row(params)
        if not row.output_cid:
            return {"job_id": row.job_id, "stdout": "", "stderr": "", "available": False}
        car = self.private.result(row.output_cid)
        if not car.exists():
            return {"job_id": row.job_id, "stdout": "", "stderr": "", "available": False}
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-logs-", dir=self.dir))
        try:
            await trio.to_thread.run_sync(lambda: export_car(car, row.output_cid, tmp / "r"))

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

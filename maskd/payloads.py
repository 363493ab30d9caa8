"""``/mask/job/1``: a job's private payloads, encrypted to the other party only.

- ``PayloadServer`` serves a job's bundle to its matched provider and its
  result to its requester (``store_authorizer`` is the daemon's rule), each
  encrypted to the asker's X25519 key from its identity record;
- ``fetch_private`` / ``PayloadClient`` fetch one, decrypt it and check that
  it is exactly the DAG of the CID the agreement (or the signed result) names;
- ``StorageOutputs`` is the requester's ``Outputs``: fetch a result, check it
  (verify mode zk: the proof, against the requester's own key, before paying;
  ``maskd.zk_check``; a relayed job's proof bound as ComputeRequests will
  check it), and record each zk verdict in the job row.

Payloads never enter the shared block store.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec
import trio

from maskd.jobfiles import PrivateFiles
from maskd.zk_check import ZkCheck, check_zk_result
from protocol import jobdata as jd
from protocol.errors import JobError, MaskError, StorageError, WireError
from protocol.identity import verify_identity_record
from protocol.market import Agreement
from protocol.messages import JOB_PROTOCOL, IdentityRecord
from scheduler.async_store import ThreadedStore
from scheduler.jobstate import JobState
from scheduler.spec import JobSpec
from scheduler.store import JobRow
from storage.carfile import verify_car
from storage.crypto import decrypt_stream, encrypt_stream
from storage.exporter import ExportLimits
from worker.wasm import WasmLimits

log = logging.getLogger("maskd.payloads")

OUTPUT_FETCH_TIMEOUT_S = 300.0
PAYLOAD_STREAMS_PER_PEER = 4  # concurrent payload streams served to one peer
PAYLOAD_OPEN_TIMEOUT_S = 10.0  # dial + protocol negotiation
PAYLOAD_REQUEST_TIMEOUT_S = 10.0  # the server waits this long for the request
MATCH_WAIT_S = 10.0  # a bundle asked for before the requester recorded the match
PAYLOAD_HEADER_TIMEOUT_S = MATCH_WAIT_S + 60.0  # the match wait plus encrypting
PAYLOAD_IDLE_TIMEOUT_S = 30.0  # between two frames
PAYLOAD_TIMEOUT_S = 300.0  # a whole transfer
MAX_PAYLOAD_BYTES = 4 << 30  # ciphertext a client accepts for a bundle
ZK_CHECKS_AT_ONCE = 2  # proofs verified at once (py-ecc holds a core for ~1 s each)

_RUN = WasmLimits()
# A result is what a provider's sandbox may write: /out under its caps plus
# the two logs and the root. A result is fetched, and unpacked, never past
# that, whatever its DAG declares (a decompression bomb fails before it is
# written; a provider cannot fill the requester's disk with a "result").
RESULT_LIMITS = ExportLimits.for_tree(
    max_bytes=_RUN.max_output_bytes + 2 * _RUN.max_log_bytes,
    max_entries=_RUN.max_output_entries + 4,
    max_depth=_RUN.max_output_depth + 1,
)
# the CAR of such a result, encrypted: the data, plus per entry a dag-pb node
# and a CAR section header, plus the AEAD tags (generous: 1/8 and 1 KiB each)
RESULT_MAX_CAR_BYTES = (
    RESULT_LIMITS.max_bytes + RESULT_LIMITS.max_bytes // 8 + 1024 * RESULT_LIMITS.max_entries
)


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
        raise JobError(
            f"the peer offers a {kind} of {head.size:,} bytes, over the {max_bytes:,}-byte"
            f" limit for a {kind}",
            code="payload_too_large",
            hint="a result holds no more than a sandbox lets a job write; a provider takes"
            " bundles up to its jobs.max_bundle_mb",
        )
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


def store_authorizer(
    store: ThreadedStore, files: PrivateFiles, *, match_wait: float = MATCH_WAIT_S
) -> Callable[[str, str, str], Awaitable[Grant]]:
    """The daemon's rule: a job's bundle to its matched provider, its result to its
    requester. ``store`` is the async facade (scheduler.async_store)."""

    async def get(job_id: str, role: str) -> JobRow:
        try:
            return await store.get(job_id, role=role)
        except MaskError:
            raise PayloadRefusal(jd.UNKNOWN_JOB) from None

    async def authorize(peer: str, job_id: str, kind: str) -> Grant:
        if kind == "bundle":
            row = await get(job_id, "requester")
            # the provider asks as soon as it countersigned: give the requester's
            # core a moment to record the match
            with trio.move_on_after(match_wait):
                while row.state is JobState.PENDING:
                    await trio.sleep(0.05)
                    row = await get(job_id, "requester")
            terms = _terms(row)
            if (
                row.provider_peer != peer
                or terms is None
                or row.state not in (JobState.MATCHED, JobState.RUNNING)
            ):
                raise PayloadRefusal(jd.NOT_PARTY, "the job is not placed with you")
            return Grant(terms.provider_account, terms.spec_cid, files.bundle(terms.spec_cid))
        row = await get(job_id, "provider")
        terms = _terms(row)
        if terms is None or terms.requester_peer != peer:
            raise PayloadRefusal(jd.NOT_PARTY, "you are not this job's requester")
        if not row.output_cid:
            raise PayloadRefusal(jd.NOT_READY, "no result stored yet")
        return Grant(terms.requester_account, row.output_cid, files.result(row.output_cid))

    return authorize


class StorageOutputs:
    """Requester side: fetch a result over ``/mask/job/1`` and check its root CID;
    for verify mode zk, check its proof too (``maskd.zk_check``)."""

    def __init__(
        self,
        payloads: PayloadClient,
        store: ThreadedStore,
        *,
        zk_backend: str | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.payloads = payloads
        self.store = store
        self.zk_backend = zk_backend  # None: zkp.verify.default_backend()
        self._clock = clock
        self._zk_limiter = trio.CapacityLimiter(ZK_CHECKS_AT_ONCE)

    async def _job_for(self, peer_id: str, output_cid: str) -> str | None:
        # the Outputs interface names no job: the core persisted the result
        # (verifying, with output_cid) before asking for this fetch
        for row in await self.store.open_jobs(role="requester"):
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
        if verify_mode == "zk":
            return await self._fetch_and_prove(peer_id, output_cid)
        dest = self.payloads.files.result(output_cid)
        if await self._have(dest):
            return True, ""  # already here, verified against this CID when it came
        job_id = await self._job_for(peer_id, output_cid)
        if job_id is None:
            return False, f"no job is verifying output {output_cid} from {peer_id}"
        return await self._fetch(peer_id, job_id, output_cid, dest)

    async def _fetch(
        self, peer_id: str, job_id: str, output_cid: str, dest: Path
    ) -> tuple[bool, str]:
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

    async def _fetch_and_prove(self, peer_id: str, output_cid: str) -> tuple[bool, str]:
        """Verify mode zk: the result's proof, checked as this job's, and the
        verdict recorded in the job row before the core hears of it."""
        job_id = await self._job_for(peer_id, output_cid)
        if job_id is None:
            return False, f"no job is verifying output {output_cid} from {peer_id}"
        row = await self.store.get(job_id, role="requester")
        terms = _terms(row)
        try:
            spec = msgspec.convert(row.spec["spec"], JobSpec)
        except (msgspec.ValidationError, KeyError, TypeError):
            spec = None
        zk = spec.zk if spec is not None else None
        if zk is None or terms is None:
            return False, "the job's record holds no circuit or agreement to check a proof against"
        dest = self.payloads.files.result(output_cid)
        ok, detail = (
            (True, "")
            if await self._have(dest)
            else await self._fetch(peer_id, job_id, output_cid, dest)
        )
        if not ok:
            check = ZkCheck(False, detail)
        else:
            # the binding the proof must carry: this job between this requester
            # and the provider, or for a DApp's request (spec.relay) the one
            # ComputeRequests.fulfill recomputes: jobIdOf(request), the contract
            relay = spec.relay if spec is not None else None
            bound_job, bound_requester = (
                (relay.job_id, relay.contract)
                if relay is not None
                else (job_id, terms.requester_account)
            )

            def run() -> ZkCheck:
                return check_zk_result(
                    dest,
                    output_cid,
                    zk,
                    job_id=bound_job,
                    requester_account=bound_requester,
                    provider_account=terms.provider_account,
                    backend=self.zk_backend,
                )

            check = await trio.to_thread.run_sync(run, limiter=self._zk_limiter)
        attempt = check.record(
            provider_peer=peer_id, provider_account=terms.provider_account, output_cid=output_cid
        )
        circuit = {"name": zk.name, "cid": zk.cid, "id": zk.circuit_id}
        now = self._clock()

        def record(store) -> None:
            current = store.get(job_id, role="requester").verification
            store.update(
                job_id,
                role="requester",
                now=now,
                verification=_with_attempt(current, circuit, attempt),
            )

        await self.store.run(record)
        return check.valid, check.reason

    async def fetch_logs(self, job_id: str, peer_id: str, output_cid: str) -> None:
        dest = self.payloads.files.result(output_cid)
        if await self._have(dest):
            return
        with trio.move_on_after(OUTPUT_FETCH_TIMEOUT_S):
            try:
                await self.payloads.fetch(peer_id, job_id, "result", output_cid, dest)
            except (MaskError, OSError) as exc:
                log.info("job %s failed and its logs could not be fetched: %s", job_id, exc)


def _with_attempt(current: object, circuit: dict, attempt: dict) -> dict:
    """The row's verification record with ``attempt`` in it: the same provider's
    same output checked again (after a restart) replaces its earlier verdict."""
    attempts = current.get("attempts") if isinstance(current, dict) else None
    key = (attempt["provider_peer"], attempt["output_cid"])
    kept = [
        a
        for a in (attempts if isinstance(attempts, list) else [])
        if isinstance(a, dict) and (a.get("provider_peer"), a.get("output_cid")) != key
    ]
    return {"mode": "zk", "circuit": circuit, "attempts": [*kept, attempt]}


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

    async def fetch(
        self,
        peer: str,
        job_id: str,
        kind: str,
        root: str,
        dest: Path,
        *,
        max_bytes: int | None = None,
    ) -> None:
        """Fetch a payload of at most ``max_bytes`` of ciphertext; by default a
        result may be no larger than a sandbox can make one."""
        if max_bytes is None:
            max_bytes = RESULT_MAX_CAR_BYTES if kind == "result" else MAX_PAYLOAD_BYTES
        await fetch_private(
            self._open,
            peer,
            job_id,
            kind,
            root,
            self.identity.record,
            self._x25519,
            dest,
            max_bytes=max_bytes,
        )

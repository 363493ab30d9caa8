"""The provider's ``zk-groth16`` runs: a circuit and a requester's inputs in, a signed proof out.

:class:`ZkExecutor` is what :class:`maskd.wasm_worker.WasmWorker` hands a
bundle to when its job.json names ``zk-groth16``: the bundle arrives, is
cached and is stored back exactly as a wasm job's is, so ``mask result``
and the requester's fetch see the same layout (``worker.zk`` documents it).
The proof is made in a worker thread, under the runs' own thread limiter
(a job in flight holds a slot until its thread really ends) and the job's
wall-clock limit; a prover that overruns it is abandoned and the job fails
``timeout``. Every failure, the prover's crash included, is a typed job
failure with the reason in ``stderr.log``, never an exception in the
provider.

Which prover runs is decided once at start (:func:`check_prover`, in a
thread): ``[worker] zk_prover`` names one, or "auto" tries ``zkp.prover``'s
provers in their order of preference (fastest first) until one proves and
verifies the check statement; the slower ones are then not run at all, which
keeps a node's start cheap. A node advertises ``zk-groth16`` only once that
check has passed, and ``mask status`` shows the prover or why none works.

A relayed job (a DApp's request, paid by its contract, not by a voucher) is
proved only once ``check_relay`` (``maskd.relay_check``) has found its
request on chain, open and paying; otherwise it fails ``zk_relay_invalid``.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from maskd.relay_check import RELAY_HINT, RELAY_INVALID
from protocol.errors import JobError
from protocol.market import UsageReport
from scheduler import provider as pv
from worker import zk
from worker.results import remove_tree

log = logging.getLogger("maskd.worker.zk")

#: seconds a prover may run past the job's limit (it is told the limit and
#: stops itself; this is for one that does not) before the job is failed
OVERRUN_GRACE_S = 5.0

SignClaim = Callable[[Any, zk.ZkProof], bytes]


class ProverState(enum.StrEnum):
    CHECKING = "checking"
    READY = "ready"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True, slots=True)
class ProverStatus:
    """What the start-up check found; shown by ``mask status``."""

    state: ProverState
    prover: str = ""  # the prover's name when ready
    check_ms: int = 0
    reason: str = ""  # why none is usable

    def summary(self) -> str:
        if self.state is ProverState.READY:
            return f"{self.prover} (self-check {self.check_ms} ms)"
        if self.state is ProverState.UNAVAILABLE:
            return f"unavailable: {self.reason}; zk-groth16 is not offered"
        return str(self.state)


def find_prover(choice: str) -> tuple[Any | None, str]:
    """The prover to use and how the check went, or (None, why none works).

    ``choice`` "auto": the provers in ``zkp.prover``'s order of preference
    (fastest first: native, snarkjs, python), each proving and verifying the
    check statement, until one works; the slower ones are not tried once one
    does. A name: that prover only. Blocking: it proves something."""
    from zkp.prover import ProverError, check_provers, prover_names, select_prover

    if choice == "auto":
        names = prover_names()
    else:
        try:
            select_prover(choice)
        except ProverError as e:
            hint = f" ({e.hint})" if e.hint else ""
            return None, f"worker.zk_prover = {choice!r}: {e.reason}{hint}"
        names = [choice]
    tried: list[str] = []
    for name in names:
        try:
            candidate = select_prover(name)
        except ProverError as e:
            tried.append(f"{name}: {e.reason}")
            continue
        [check] = check_provers([candidate])
        if check.ok:
            return candidate, f"{name} proved the check circuit in {check.seconds:.2f} s"
        tried.append(f"{name}: {check.reason}")
    return None, "no Groth16 prover works here (" + "; ".join(tried)[:400] + ")"


async def check_prover(
    choice: str, *, find: Callable[[str], tuple[Any | None, str]] = find_prover
) -> tuple[Any | None, ProverStatus]:
    """Run :func:`find_prover` in a thread; the prover and its status, logged."""
    start = time.monotonic()
    try:
        prover, detail = await trio.to_thread.run_sync(find, choice)
    except Exception as e:  # a broken install must not stop the node
        prover, detail = None, f"checking the provers failed: {type(e).__name__}: {e}"[:400]
    took = int((time.monotonic() - start) * 1000)
    if prover is None:
        log.warning("zk-groth16 is not offered: %s", detail)
        return None, ProverStatus(ProverState.UNAVAILABLE, check_ms=took, reason=detail)
    log.info("zk-groth16 prover: %s (%s; checked in %d ms)", prover.name, detail, took)
    return prover, ProverStatus(ProverState.READY, prover=prover.name, check_ms=took)


def claim_signer(domain: Any, account_key: bytes) -> SignClaim:
    """Signs a proof's claim as the EIP-712 ZkResult (``ledger.zkclaims``), over
    the job id and requester the proof's binding names (``worker.zk.bound_to``)."""

    def sign(terms: Any, proof: zk.ZkProof) -> bytes:
        from ledger.zkclaims import sign_zk_result
        from zkp.formats import proof_calldata

        return sign_zk_result(
            domain,
            account_key,
            proof.job_id or terms.job_id,  # the binding's: a relayed job's is jobIdOf
            proof.requester or terms.requester_account,  # ... and the contract
            terms.provider_account,
            proof.circuit_id,
            proof_calldata(proof.proof),
            proof.public,
        )

    return sign


class ZkExecutor:
    """Proves zk jobs with one prover; ``prover`` is None until the start check
    finds one (jobs fail ``executor_unsupported`` meanwhile)."""

    def __init__(
        self,
        sign_claim: SignClaim,
        limiter: trio.CapacityLimiter,
        *,
        prover: Any | None = None,
        limits: zk.ZkLimits = zk.ZkLimits(),
        clock: Callable[[], float] = time.monotonic,
        overrun_grace_s: float = OVERRUN_GRACE_S,
        check_relay: Callable[[zk.ZkBundle, Any], Awaitable[str | None]] | None = None,
    ):
        self.prover = prover
        #: a relayed job is proved only once this finds its request real
        #: (``maskd.relay_check``); None: no chain to check against, none refused
        self._check_relay = check_relay
        self.status = ProverStatus(ProverState.READY if prover else ProverState.CHECKING)
        self._sign = sign_claim
        self._limiter = limiter
        self._limits = limits
        self._clock = clock
        self._grace = overrun_grace_s

    def set_prover(self, prover: Any | None, status: ProverStatus) -> None:
        self.prover, self.status = prover, status

    async def run(
        self, job_id: str, agreement: Any, bundle: Path, base: Path
    ) -> pv.ExecutionOutcome:
        """Prove the job in ``bundle``; the result goes to ``base/result`` (its
        logs too, on failure), as ``WasmWorker.store_output`` expects."""
        terms = agreement.terms
        result = base / "result"
        await trio.to_thread.run_sync(remove_tree, result)
        await trio.to_thread.run_sync(lambda: (result / "out").mkdir(parents=True))
        prover = self.prover
        start = self._clock()
        proved: zk.ZkProof | None = None
        if prover is None:
            error = zk.zk_error(
                zk.ZkCode.UNSUPPORTED, "this provider has no working Groth16 prover"
            )
        else:
            proved, error = await self._prove(job_id, terms, bundle, result, prover)
        wall_ms = int((self._clock() - start) * 1000)
        await trio.to_thread.run_sync(_write_logs, result, job_id, prover, proved, error, wall_ms)
        usage = UsageReport(
            fuel=proved.constraints if proved else 0,
            wall_ms=wall_ms,
            output_bytes=await trio.to_thread.run_sync(_tree_bytes, result / "out"),
        )
        return pv.ExecutionOutcome(
            exit_code=0 if error is None else None,
            usage=usage,
            stdout_sha256=_sha256(result / "stdout.log"),
            stderr_sha256=_sha256(result / "stderr.log"),
            error_code=error.code if error else "",
            error_message=error.message if error else "",
            relay=proved.relay if proved else None,
        )

    async def _prove(
        self, job_id: str, terms: Any, bundle: Path, result: Path, prover: Any
    ) -> tuple[zk.ZkProof | None, JobError | None]:
        limit = float(terms.max_seconds)
        deadline = self._clock() + limit

        cancel = threading.Event()

        def load() -> zk.ZkBundle:
            return zk.load_zk_bundle(
                bundle, memory_bytes=max(1, terms.memory_mb) << 20, limits=self._limits
            )

        def work(loaded: zk.ZkBundle) -> tuple[zk.ZkProof, dict[str, bytes]]:
            left = max(0.001, deadline - self._clock())
            proved = zk.prove_job(
                loaded, terms, prover, deadline_s=left, clock=self._clock, cancel=cancel
            )
            vk = zk.read_vk_bytes(bundle, self._limits)
            return proved, zk.result_files(proved, vk, terms, self._sign(terms, proved))

        with trio.move_on_after(limit + self._grace) as scope:
            try:
                loaded = await trio.to_thread.run_sync(
                    load, abandon_on_cancel=True, limiter=self._limiter
                )
                if loaded.relay is not None and self._check_relay is not None:
                    why = await self._check_relay(loaded, terms)
                    if why is not None:
                        return None, JobError(why, code=RELAY_INVALID, hint=RELAY_HINT)
                proved, files = await trio.to_thread.run_sync(
                    functools.partial(work, loaded), abandon_on_cancel=True, limiter=self._limiter
                )
            except trio.Cancelled:
                cancel.set()  # the prover stops (its subprocess is killed) and frees its slot
                raise
            except JobError as e:
                return None, e
            except Exception as e:  # the prover or its libraries: a failed job, never the node
                log.warning("job %s: the zk run failed: %r", job_id, e, exc_info=True)
                return None, zk.zk_error(
                    zk.ZkCode.PROVER_FAILED, f"the prover failed: {type(e).__name__}: {e}"[:500]
                )
            # written here, not in the thread: an abandoned thread writes nothing
            await trio.to_thread.run_sync(zk.write_result, result, files)
            return proved, None
        assert scope.cancelled_caught
        # the thread is abandoned: it keeps its limiter slot until it really ends
        log.warning("job %s: the prover overran %.0f s and was abandoned", job_id, limit)
        return None, zk.zk_error(
            zk.ZkCode.TIMEOUT, f"stopped at the wall-clock limit of {limit:g} s"
        )


def _write_logs(
    result: Path,
    job_id: str,
    prover: Any | None,
    proved: zk.ZkProof | None,
    error: JobError | None,
    wall_ms: int,
) -> None:
    out: list[str] = []
    if prover is not None:
        out.append(f"zk-groth16: prover {prover.name}")
    if proved is not None:
        out.append(
            f"proved circuit {proved.circuit_id} ({proved.constraints} constraints) "
            f"in {proved.prove_ms} ms; {wall_ms} ms in all"
        )
        out.append(f"public signals: {len(proved.public)}, the job binding last")
    err = [] if error is None else [f"{error.code}: {error.message}", f"hint: {error.hint}"]
    (result / "stdout.log").write_text("".join(line + "\n" for line in out))
    (result / "stderr.log").write_text("".join(line + "\n" for line in err))


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _sha256(path: Path) -> bytes:
    try:
        return hashlib.sha256(path.read_bytes()).digest()
    except OSError:
        return hashlib.sha256(b"").digest()

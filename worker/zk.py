"""The ``zk-groth16`` executor's pure part: a requester's zk bundle in, a proof's files out.

A zk job asks a provider to prove, with Groth16 over BN254, that it ran a
circuit on the requester's inputs. The provider adds one input itself, the
job binding (``zkp.binding``, always the circuit's LAST public signal), so the
proof is good for this job between these two accounts only.

Bundle layout (what the requester packs; docs/jobspec.md, "zk-groth16 jobs")::

    job.json              the normalised spec, with "executor": "zk-groth16"
    circuit/              the circuit directory, flat, regular files only:
      circuit.json          manifest: name, public signal names, outputs,
                            constraints, input signal names
      circuit.r1cs          the constraint system
      circuit.wasm          the witness generator
      circuit.zkey          the Groth16 proving key
      verification_key.json the snarkjs verification key
    in/input.json         the circuit's input signals as JSON, except
                          ``binding``: {"name": value or nested arrays}, each
                          value a decimal string or integer in [0, r)

Result layout (the output DAG's root; ``mask result ID -o DIR`` writes it)::

    out/outputs.json      {public signal name: decimal value}, for people
    proof.json            snarkjs's proof format
    public.json           snarkjs's public signals (binding last)
    verification_key.json a copy of the circuit's
    zk_result.json        the provider's signed claim: {job_id, requester,
                          provider, circuit_id, prover, prove_ms, constraints,
                          signature}; ``signature`` is the EIP-712 ZkResult
                          signature (``ledger.zkclaims``), the evidence for
                          on-chain slashing; a relayed job's names the
                          binding's job id and requester (jobIdOf, the
                          contract) and adds ``relay``
    stdout.log, stderr.log  which prover ran and how long it took; why it failed

Everything in the bundle is a stranger's data. Files are opened without
following links and read under caps; ``circuit/`` must be a flat directory of
regular files within a byte cap; the proving key's section table must fit its
file and its header must describe BN254 with a domain this provider will
allocate (a zkey claiming gigabytes is refused before any prover reads it);
``input.json`` is bounded in size, nesting, names and values (those two checks
live in ``worker.zk_checks``). Every refusal is a
:class:`~protocol.errors.JobError` with a :class:`ZkCode` and a hint; what
the prover reports (``zkp.witness``, ``zkp.prover``) is mapped to the same
codes, so a job's failure says whose it is: the requester's inputs or
circuit, the job's limits, or the provider's prover.

A relayed job (a DApp's request on ComputeRequests, placed by a gateway:
``scheduler.spec.Relay``) names the contract, its chain and the request id in
job.json under ``relay``. Its proof is bound to ``jobIdOf(request)``, the
contract as requester and this provider, as ``fulfill`` recomputes it, and
the signed claim names the same three, so it matches the proof it signs.
The relay must be on the chain of the agreement's escrow.

Usage: ``fuel`` reports the circuit's constraint count (the deterministic
measure of a proof's work, as fuel is a wasm run's), ``wall_ms`` the proving
time. No I/O beyond reading the bundle and writing the result, no trio, no
clock of its own: the shell passes ``clock`` and runs this in a thread.
"""

from __future__ import annotations

import json
import os
import stat
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from protocol.errors import JobError
from scheduler.spec import Relay, parse_relay
from worker.bundle import _parse_job, _read
from worker.results import scan_tree
from worker.zk_checks import (
    BINDING,
    HINTS,
    ZK_EXECUTOR,
    Signal,
    ZkCode,
    ZkLimits,
    bad_circuit,
    bind_inputs,
    check_signal_names,
    check_zkey,
    parse_inputs,
    why,
    zk_error,
)
from zkp.binding import job_binding
from zkp.circuit import CIRCUIT_FILES, Circuit, CircuitError, load_circuit

if TYPE_CHECKING:
    from zkp.formats import Proof

__all__ = [
    "BINDING",
    "HINTS",
    "ZK_EXECUTOR",
    "Signal",
    "ZkBundle",
    "ZkCode",
    "ZkLimits",
    "ZkProof",
    "bind_inputs",
    "check_signal_names",
    "check_zkey",
    "claim_json",
    "load_zk_bundle",
    "outputs_json",
    "parse_inputs",
    "prove_job",
    "read_executor",
    "read_relay",
    "read_vk_bytes",
    "result_files",
    "write_result",
    "zk_error",
]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _bad_bundle(message: str) -> JobError:
    return zk_error(ZkCode.BAD_BUNDLE, message)


# --- the bundle ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ZkBundle:
    job: dict[str, Any]  # job.json
    circuit: Circuit
    inputs: dict[str, Signal]  # input.json, checked, without the binding
    circuit_bytes: int  # circuit/, all files
    relay: Relay | None = None  # job.json's relay: a DApp's request, paid by its contract


def read_relay(job: Mapping[str, Any]) -> Relay | None:
    """job.json's ``relay`` section, checked (``bad_bundle`` when malformed)."""
    if "relay" not in job:
        return None
    try:
        return parse_relay(job["relay"])
    except ValueError as e:
        raise _bad_bundle(f"the bundle's job.json: {e}") from None


def read_executor(bundle_dir: Path, *, max_spec_bytes: int = 1 << 20) -> str:
    """job.json's ``executor`` ("wasm" when it names none), read as
    :func:`worker.bundle.load_bundle` reads it; ``bad_bundle`` otherwise."""
    try:
        dir_fd = os.open(bundle_dir, _DIR_FLAGS)
    except OSError as e:
        raise _bad_bundle(f"the job bundle is not a directory ({why(e)})") from None
    try:
        job = _parse_job(_read(dir_fd, "job.json", max_spec_bytes), max_spec_bytes, 32)
    finally:
        os.close(dir_fd)
    executor = job.get("executor", "wasm")
    if not isinstance(executor, str):
        raise _bad_bundle("the bundle's job.json has an executor that is not a string")
    return executor


def load_zk_bundle(
    bundle_dir: Path, *, memory_bytes: int, limits: ZkLimits = ZkLimits()
) -> ZkBundle:
    """Read and check a zk bundle. Blocking (run it in a thread).

    Cheapest checks first: job.json, then circuit/ as a tree (flat, regular
    files, under the caps), the proving key's header against the job's
    memory, input.json, and only then the circuit's own loader."""

    try:
        dir_fd = os.open(bundle_dir, _DIR_FLAGS)
    except OSError as e:
        raise _bad_bundle(f"the job bundle is not a directory ({why(e)})") from None
    try:
        spec = _read(dir_fd, "job.json", limits.max_spec_bytes)
        job = _parse_job(spec, limits.max_spec_bytes, 32)
        if job.get("executor") != ZK_EXECUTOR:
            raise _bad_bundle(f"the bundle's job.json does not name executor {ZK_EXECUTOR!r}")
        relay = read_relay(job)
        circuit_dir = Path(bundle_dir) / "circuit"
        size = _check_circuit_tree(dir_fd, circuit_dir, limits)
        check_zkey(circuit_dir / "circuit.zkey", memory_bytes=memory_bytes, limits=limits)
        raw = _read_input(dir_fd, limits)
    finally:
        os.close(dir_fd)
    inputs = parse_inputs(raw, limits)
    try:
        circuit = load_circuit(circuit_dir)
    except CircuitError as e:
        raise zk_error(ZkCode.CIRCUIT_INVALID, f"the bundle's circuit/: {e}") from None
    check_signal_names(inputs, circuit.input_names)
    return ZkBundle(job, circuit, inputs, size, relay)


def _check_circuit_tree(dir_fd: int, circuit_dir: Path, limits: ZkLimits) -> int:
    try:
        st = os.stat("circuit", dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        raise bad_circuit("the bundle has no circuit/ directory") from None
    except OSError as e:
        raise _bad_bundle(f"the bundle's circuit/ cannot be read: {why(e)}") from None
    if not stat.S_ISDIR(st.st_mode):
        kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a directory"
        raise bad_circuit(f"the bundle's circuit/ is {kind}")
    scan = scan_tree(
        circuit_dir,
        max_entries=limits.max_circuit_entries,
        max_depth=1,
        max_bytes=limits.max_circuit_bytes,
    )
    if scan.invalid is not None:
        raise bad_circuit(f"the bundle's circuit/ holds something other than files: {scan.invalid}")
    if scan.depth > 1:
        raise bad_circuit("the bundle's circuit/ holds a directory; it must be flat")
    if scan.entries > limits.max_circuit_entries:
        raise bad_circuit(f"the bundle's circuit/ holds over {limits.max_circuit_entries} files")
    if max(scan.apparent_bytes, scan.allocated_bytes) > limits.max_circuit_bytes:
        raise bad_circuit(
            f"the bundle's circuit/ is over this provider's cap of {limits.max_circuit_bytes} bytes"
        )
    try:
        circuit_fd = os.open("circuit", _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as e:
        raise bad_circuit(f"the bundle's circuit/ cannot be opened: {why(e)}") from None
    try:
        for name in CIRCUIT_FILES:
            try:
                st = os.stat(name, dir_fd=circuit_fd, follow_symlinks=False)
            except FileNotFoundError:
                raise bad_circuit(f"the bundle's circuit/ has no {name}") from None
            except OSError as e:
                raise bad_circuit(f"the bundle's circuit/{name} cannot be read: {why(e)}") from None
            if not stat.S_ISREG(st.st_mode):
                raise bad_circuit(f"the bundle's circuit/{name} is not a regular file")
    finally:
        os.close(circuit_fd)
    return scan.apparent_bytes


def _read_input(dir_fd: int, limits: ZkLimits) -> bytes:
    try:
        in_fd = os.open("in", _DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        raise _bad_bundle("the bundle has no in/input.json") from None
    except OSError as e:
        raise _bad_bundle(f"the bundle's in/ is not a directory ({why(e)})") from None
    try:
        try:
            os.stat("input.json", dir_fd=in_fd, follow_symlinks=False)
        except FileNotFoundError:
            raise _bad_bundle("the bundle has no in/input.json") from None
        except OSError as e:
            raise _bad_bundle(f"the bundle's in/input.json cannot be read: {why(e)}") from None
        try:
            return _read(in_fd, "input.json", limits.max_input_bytes)
        except JobError as e:
            reason = e.message.removeprefix("the bundle's input.json ")
            raise zk_error(ZkCode.INPUT_INVALID, f"the job's input.json {reason}") from None
    finally:
        os.close(in_fd)


# --- proving ----------------------------------------------------------------------------


class ZkProver(Protocol):
    """What :func:`prove_job` needs of a prover (``zkp.prover.Prover``)."""

    @property
    def name(self) -> str: ...

    def prove(
        self,
        circuit: Circuit,
        inputs: Mapping[str, Any],
        *,
        deadline_s: float,
        cancel: threading.Event | None = None,
    ) -> tuple[Proof, tuple[int, ...]]: ...


@dataclass(frozen=True, slots=True)
class ZkProof:
    """A proof made for one job, checked against the circuit's key."""

    proof: Proof
    public: tuple[int, ...]  # binding last
    circuit_id: str  # the vk id (zkp.formats.vk_id), hex
    prover: str
    prove_ms: int
    constraints: int
    public_names: tuple[str, ...] = field(default=())
    #: who the binding names (the claim must name the same): the agreement's
    #: job id and requester, or for a relayed job jobIdOf(request) and the contract
    job_id: str = ""
    requester: str = ""
    relay: Relay | None = None


def prove_job(
    bundle: ZkBundle,
    terms: Any,
    prover: ZkProver,
    *,
    deadline_s: float,
    clock: Callable[[], float],
    cancel: threading.Event | None = None,
    verify: Callable[..., Any] | None = None,
) -> ZkProof:
    """Prove ``bundle`` for the job ``terms`` describe (``protocol.market.AgreementTerms``).

    The circuit must be the one the agreement names (its vk id is
    ``terms.circuit_id``); the binding of (job id, requester, provider) is
    added to the inputs; the proof that comes back must carry that binding as
    its last public signal and verify against the circuit's key before the
    provider signs anything about it. Blocking: run it in a thread."""
    from zkp.formats import vk_id

    circuit = bundle.circuit
    circuit_id = vk_id(circuit.vk)
    named = str(terms.circuit_id or "").lower().removeprefix("0x")
    if named != circuit_id:
        shown = named[:64] or "none"
        raise zk_error(
            ZkCode.CIRCUIT_MISMATCH,
            f"the agreement names circuit {shown}; the bundle's circuit/ is {circuit_id}",
        )
    job_id, requester = bound_to(terms, bundle.relay)
    try:
        binding = job_binding(job_id, requester, terms.provider_account)
    except ValueError as e:  # the agreement was checked; a job id that is not 32 bytes is not
        raise _bad_bundle(f"the job cannot be bound: {e}") from None
    inputs = bind_inputs(bundle.inputs, binding)
    start = clock()
    proof, public = _call_prover(prover, circuit, inputs, deadline_s, cancel)
    prove_ms = max(0, int((clock() - start) * 1000))
    public = tuple(int(x) for x in public)
    if len(public) != circuit.vk.n_public:
        raise zk_error(
            ZkCode.PROVER_FAILED,
            f"the prover returned {len(public)} public signals; the circuit has "
            f"{circuit.vk.n_public}",
        )
    if not public or public[-1] != binding:
        raise zk_error(
            ZkCode.CIRCUIT_INVALID,
            "the circuit's last public signal is not the job binding: every circuit must "
            "take `binding` as an input and make it its last public signal",
        )
    verdict = (verify or _verify)(circuit.vk, proof, public)
    if not verdict.valid:
        raise zk_error(
            ZkCode.PROVER_FAILED,
            f"the prover {prover.name} made a proof that does not verify: {verdict.reason}",
        )
    return ZkProof(
        proof=proof,
        public=public,
        circuit_id=circuit_id,
        prover=prover.name,
        prove_ms=prove_ms,
        constraints=circuit.constraints,
        public_names=tuple(circuit.public_names),
        job_id=job_id,
        requester=requester,
        relay=bundle.relay,
    )


def bound_to(terms: Any, relay: Relay | None) -> tuple[str, str]:
    """(job id, requester) the proof's binding names with ``terms.provider_account``:
    the agreement's own, or for a relayed job ``jobIdOf(request)`` and the
    ComputeRequests contract. A relay on another chain than the agreement's
    escrow is refused: this provider would be paid where it does not look."""
    if relay is None:
        return terms.job_id, terms.requester_account
    chain_id = getattr(terms, "chain_id", None)
    if relay.chain_id != chain_id:
        raise _bad_bundle(
            f"the job relays request {relay.request_id} on chain {relay.chain_id}; "
            f"the agreement is for chain {chain_id}"
        )
    return relay.job_id, relay.contract


def _verify(vk: Any, proof: Any, public: tuple[int, ...]) -> Any:
    from zkp.verify import verify

    return verify(vk, proof, public)


def _call_prover(
    prover: ZkProver,
    circuit: Circuit,
    inputs: Mapping[str, Signal],
    deadline_s: float,
    cancel: threading.Event | None,
) -> tuple[Any, tuple[int, ...]]:
    """The prover's answer, or its failure as a typed job error."""
    from zkp.prover import ProverError
    from zkp.witness import WitnessError

    try:
        return prover.prove(circuit, inputs, deadline_s=deadline_s, cancel=cancel)
    except WitnessError as e:
        code = _WITNESS_CODES.get(e.code, ZkCode.PROVER_FAILED)
        raise zk_error(code, f"computing the witness: {e.reason}") from None
    except ProverError as e:
        code = _PROVER_CODES.get(e.code, ZkCode.PROVER_FAILED)
        if code is ZkCode.PROVER_FAILED and "assert failed" in e.reason.lower():
            code = ZkCode.CONSTRAINT_FAILED  # snarkjs's witness, run inside the prover
        elif code is ZkCode.PROVER_FAILED and "circuit.zkey" in e.reason:
            code = ZkCode.CIRCUIT_INVALID  # the requester's key, not the prover, is broken
        raise zk_error(code, f"proving with {prover.name}: {e.reason}") from None


#: zkp.witness's codes, as this job's failure
_WITNESS_CODES = {
    "witness_input_invalid": ZkCode.INPUT_INVALID,
    "witness_assert_failed": ZkCode.CONSTRAINT_FAILED,
    "witness_timeout": ZkCode.TIMEOUT,
    "witness_out_of_fuel": ZkCode.TIMEOUT,
    "witness_memory_limit": ZkCode.MEMORY_LIMIT,
    "witness_cancelled": ZkCode.CANCELLED,
    "witness_invalid_module": ZkCode.CIRCUIT_INVALID,
}
#: zkp.prover's codes, as this job's failure
_PROVER_CODES = {
    "prove_failed": ZkCode.PROVER_FAILED,
    "prove_timeout": ZkCode.TIMEOUT,
    "prove_cancelled": ZkCode.CANCELLED,
    "prover_unavailable": ZkCode.UNSUPPORTED,
}


# --- the result ---------------------------------------------------------------------------


def claim_json(zk: ZkProof, terms: Any, signature: bytes) -> dict[str, Any]:
    """zk_result.json: the provider's signed claim about this proof, naming the
    job id and requester its binding names (a relayed job's: jobIdOf, the contract)."""
    claim: dict[str, Any] = {
        "job_id": zk.job_id or terms.job_id,
        "requester": zk.requester or terms.requester_account,
        "provider": terms.provider_account,
        "circuit_id": zk.circuit_id,
        "prover": zk.prover,
        "prove_ms": zk.prove_ms,
        "constraints": zk.constraints,
        "signature": "0x" + signature.hex(),
    }
    if zk.relay is not None:
        claim["relay"] = {
            "chain_id": zk.relay.chain_id,
            "contract": zk.relay.contract,
            "request_id": zk.relay.request_id,
        }
    return claim


def outputs_json(zk: ZkProof) -> dict[str, str]:
    """out/outputs.json: each public signal by its circuit name, for people."""
    names = zk.public_names
    if len(names) != len(zk.public) or len(set(names)) != len(names):
        names = tuple(f"public[{i}]" for i in range(len(zk.public)))
    return {name: str(value) for name, value in zip(names, zk.public, strict=True)}


def read_vk_bytes(bundle_dir: Path, limits: ZkLimits = ZkLimits()) -> bytes:
    """circuit/verification_key.json as the requester sent it (the circuit's
    loader has parsed and checked it), for the result's copy."""
    try:
        dir_fd = os.open(Path(bundle_dir) / "circuit", _DIR_FLAGS)
    except OSError as e:
        raise bad_circuit(f"the bundle's circuit/ cannot be opened: {why(e)}") from None
    try:
        return _read(dir_fd, "verification_key.json", limits.max_manifest_bytes)
    finally:
        os.close(dir_fd)


def result_files(zk: ZkProof, vk_json: bytes, terms: Any, signature: bytes) -> dict[str, bytes]:
    """The result's files by path, relative to the result root (see the module
    doc); ``vk_json`` is the circuit's verification_key.json, copied as is."""
    from zkp.formats import proof_to_json, public_to_json

    def dump(doc: Any) -> bytes:
        return (json.dumps(doc, indent=1) + "\n").encode()

    return {
        "out/outputs.json": dump(outputs_json(zk)),
        "proof.json": dump(proof_to_json(zk.proof)),
        "public.json": dump(public_to_json(zk.public)),
        "verification_key.json": vk_json,
        "zk_result.json": dump(claim_json(zk, terms, signature)),
    }


def write_result(result_dir: Path, files: Mapping[str, bytes]) -> None:
    """Write ``files`` under ``result_dir`` (the provider's own work dir)."""
    for rel, data in files.items():
        path = result_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

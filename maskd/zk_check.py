"""The requester's check of a zk result, before it pays for it.

A provider's result root holds ``proof.json`` and ``public.json`` (snarkjs
formats, docs/jobspec.md). The requester pays only when all of this holds,
checked cheapest first:

1. both files are there, small, and parse (bounded reads out of the result
   CAR: nothing is unpacked, a huge or deeply nested file is a reason, not a
   crash);
2. there are as many public signals as the circuit has;
3. the last one is the binding of THIS job between THIS requester and THIS
   provider account (``zkp.binding``): a proof made for another job, or by
   another provider, is refused before any pairing is computed;
4. the public inputs are the values the requester gave in its input.json;
5. the proof verifies against the requester's OWN verification key (recorded
   when the job was submitted, ``JobSpec.zk``), never the provider's copy.

Every outcome is a :class:`ZkCheck` with a one-line reason; nothing raises for
anything a provider can put in its result. Blocking (reads a CAR, runs the
verifier): the shell calls :func:`check_zk_result` in a worker thread.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol.codec import NestingTooDeep, check_nesting
from protocol.errors import StorageError
from scheduler.spec import ZkCircuit
from storage.carfile import read_file_at
from zkp.binding import job_binding
from zkp.formats import ZkFormatError, parse_proof, parse_public, parse_vk
from zkp.verify import default_backend, verify

__all__ = ["MAX_PROOF_BYTES", "MAX_PUBLIC_BYTES", "ZkCheck", "check_public", "check_zk_result"]

#: A Groth16 proof in snarkjs JSON is under 1 KiB; anything far larger is not one.
MAX_PROOF_BYTES = 64 << 10
#: 1024 public signals (zkp.formats.MAX_PUBLIC) of at most 80 digits, quoted.
MAX_PUBLIC_BYTES = 128 << 10
#: proof.json nests three levels (pi_b), public.json one. Checked before decoding:
#: importing py-ecc raises the recursion limit to 100,000, so json's own guard
#: would let a deep file overflow the C stack of the thread that decodes it.
MAX_JSON_DEPTH = 8


@dataclass(frozen=True, slots=True)
class ZkCheck:
    """The verdict on one provider's zk result; ``reason`` is "" exactly when valid."""

    valid: bool
    reason: str = ""
    backend: str | None = None  # the verifier that ran (none when refused before it)
    ms: float | None = None  # how long the pairing check took
    public: dict[str, str] | None = None  # the public signals by name, once parsed

    def record(self, *, provider_peer: str, provider_account: str, output_cid: str) -> dict:
        """The attempt as the job row keeps it (``verification.attempts[]``)."""
        return {
            "provider_peer": provider_peer,
            "provider_account": provider_account,
            "output_cid": output_cid,
            "valid": self.valid,
            "reason": self.reason,
            "backend": self.backend,
            "ms": self.ms,
            "public": self.public,
        }


def check_public(zk: ZkCircuit, public: Sequence[int], binding: int) -> str | None:
    """Why ``public`` is not what this job's proof must carry, or None. Pure."""
    names = zk.public_names
    if len(public) != len(names):
        return f"public.json has {len(public)} signals, the circuit has {len(names)}"
    if public[-1] != binding:
        return (
            "the proof is bound to another job or another pair of accounts "
            f"(binding {public[-1]}, this job's is {binding})"
        )
    for i in range(zk.n_outputs, len(names) - 1):
        name = names[i]
        given = zk.public_inputs.get(name)
        if given is None or int(given) != public[i]:
            return f"public input {name} is {public[i]} in the proof, the job gave {given}"
    return None


def check_zk_result(
    car: Path,
    output_cid: str,
    zk: ZkCircuit,
    *,
    job_id: str,
    requester_account: str,
    provider_account: str,
    backend: str | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> ZkCheck:
    """Check the result in ``car`` (root ``output_cid``) as this job's proof. Blocking."""
    try:
        binding = job_binding(job_id, requester_account, provider_account)
    except ValueError as e:  # our own record, not the provider's: still a reason
        return ZkCheck(False, f"the job's binding cannot be computed: {e}")
    public_doc, why = _read_json(car, output_cid, "public.json", MAX_PUBLIC_BYTES)
    if why is not None:
        return ZkCheck(False, why)
    try:
        public = parse_public(public_doc)
    except ZkFormatError as e:
        return ZkCheck(False, f"public.json: {e.reason}")
    named = _by_name(zk, public)
    why = check_public(zk, public, binding)
    if why is not None:
        return ZkCheck(False, why, public=named)
    proof_doc, why = _read_json(car, output_cid, "proof.json", MAX_PROOF_BYTES)
    if why is not None:
        return ZkCheck(False, why, public=named)
    try:
        proof = parse_proof(proof_doc)
    except ZkFormatError as e:
        return ZkCheck(False, f"proof.json: {e.reason}", public=named)
    try:
        vk = parse_vk(zk.vk)
    except ZkFormatError as e:
        return ZkCheck(False, f"the job's own verification key: {e.reason}", public=named)
    name = backend or default_backend()
    started = clock()
    verdict = verify(vk, proof, public, backend=name)
    ms = round((clock() - started) * 1000, 3)
    reason = "" if verdict.valid else f"the proof does not verify: {verdict.reason}"
    return ZkCheck(verdict.valid, reason, backend=name, ms=ms, public=named)


def _by_name(zk: ZkCircuit, public: Sequence[int]) -> dict[str, str] | None:
    if len(public) != len(zk.public_names):
        return None
    return {name: str(value) for name, value in zip(zk.public_names, public, strict=True)}


def _read_json(car: Path, root: str, name: str, cap: int) -> tuple[Any, str | None]:
    """``name`` from the result's top level, at most ``cap`` bytes, decoded."""
    try:
        data, cut = read_file_at(car, root, name, max_bytes=cap)
    except StorageError as e:
        if e.code == "entry_not_found":
            return None, f"the result has no {name}"
        return None, f"{name}: {e.message}"
    except OSError as e:
        return None, f"the result cannot be read here: {e.strerror or e}"
    if cut:
        return None, f"{name} is larger than {cap} bytes"
    try:
        check_nesting(data, MAX_JSON_DEPTH)
        return json.loads(data), None
    except (NestingTooDeep, RecursionError):
        return None, f"{name} is nested too deeply"
    except ValueError as e:  # not UTF-8, not JSON, an integer too long to convert
        first = (str(e).splitlines() or [type(e).__name__])[0][:120]
        return None, f"{name} is not JSON: {first}"

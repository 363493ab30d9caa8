"""What a DApp's request becomes: the circuits a gateway knows, the relayed zk
job it submits, and the proof it reads back out of the verified result.

Blocking (circuits are loaded, files written and read): ``maskd.gateway``
calls these in worker threads. Everything that comes from the request or
from a provider's result is a stranger's: bounded, checked, and a failure is
a reason (:class:`Refused`, ``ValueError``), never a crash.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec

from maskd.gateway_core import KnownCircuit
from protocol.errors import MaskError
from scheduler.spec import JobSpec, Relay, parse_spec

__all__ = ["MAX_EXTRA_CIRCUITS", "Refused", "build_spec", "known_circuits", "read_result"]

#: Circuit folders read from ``circuits_dir`` at most.
MAX_EXTRA_CIRCUITS = 64


class Refused(Exception):
    """A request that cannot be placed: a reason code and words."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def known_circuits(circuits_dir: str = "") -> tuple[dict[str, KnownCircuit], list[str]]:
    """The circuits this gateway can place, by vk id, and why any folder could
    not be loaded. Blocking (loads each circuit)."""
    from zkp.circuit import load_circuit, shipped_circuits
    from zkp.formats import vk_id

    folders = [(name, Path(path)) for name, path in sorted(shipped_circuits().items())]
    problems: list[str] = []
    if circuits_dir:
        root = Path(circuits_dir).expanduser()
        try:
            extra = sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink())
        except OSError as e:
            extra = []
            problems.append(f"gateway.circuits_dir {root}: {e.strerror or e}")
        if len(extra) > MAX_EXTRA_CIRCUITS:
            problems.append(f"{root}: only the first {MAX_EXTRA_CIRCUITS} folders are read")
        folders += [(p.name, p) for p in extra[:MAX_EXTRA_CIRCUITS]]
    out: dict[str, KnownCircuit] = {}
    for label, path in folders:
        try:
            c = load_circuit(path)
        except MaskError as e:
            problems.append(f"{label}: {e.message}")
            continue
        cid = vk_id(c.vk)
        out.setdefault(
            cid,
            KnownCircuit(
                circuit_id=cid,
                name=c.name,
                path=str(path.resolve()),
                n_outputs=c.n_outputs,
                public_inputs=tuple(c.public_names[c.n_outputs : -1]),
                input_names=tuple(c.input_names),
            ),
        )
    return out, problems


def build_spec(
    raw: bytes, record: Any, circuit: KnownCircuit, job_deadline_s: int, relay: Relay, tmp: Path
) -> JobSpec:
    """The relayed zk job for a request: its input JSON (``raw``) with the
    request's public inputs put in, written to ``tmp``; the spec names the
    circuit folder and offers the payment. Raises Refused (input_invalid) for
    input that is not a JSON object of signals; the names and values are
    checked again at submission with the provider's own rules."""
    from worker.zk import ZkLimits, check_signal_names, parse_inputs

    try:
        inputs = parse_inputs(raw, ZkLimits())
        for name, value in zip(circuit.public_inputs, record.inputs, strict=True):
            inputs[name] = str(value)  # the request's inputs, which fulfill checks, win
        if circuit.input_names:
            check_signal_names(inputs, circuit.input_names)
    except MaskError as e:
        message = e.message.replace("the job's input.json", "the input")
        raise Refused("input_invalid", message) from None
    (tmp / "input.json").write_text(json.dumps(inputs))
    max_seconds = max(1, min(120, job_deadline_s))
    doc = {
        "name": f"request-{record.request_id}"[:64],
        "executor": "zk-groth16",
        "circuit": circuit.path,
        "inputs": ["input.json"],
        "resources": {"max_seconds": max_seconds},
        "price": {"max_total": str(record.payment), "deadline_seconds": job_deadline_s},
        "verify": {"mode": "zk"},
    }
    spec = parse_spec(doc, base_dir=tmp)
    return msgspec.structs.replace(spec, relay=relay)


def read_result(car: Path, output_cid: str) -> tuple[list[int], list[int]]:
    """(proof in EIP-197 order, public signals) out of a verified job's result
    CAR, read bounded. ValueError with a reason otherwise. Blocking."""
    from maskd.zk_check import MAX_PROOF_BYTES, MAX_PUBLIC_BYTES, _read_json
    from zkp.formats import ZkFormatError, parse_proof, parse_public, proof_calldata

    public_doc, why = _read_json(car, output_cid, "public.json", MAX_PUBLIC_BYTES)
    if why is None:
        proof_doc, why = _read_json(car, output_cid, "proof.json", MAX_PROOF_BYTES)
    if why is not None:
        raise ValueError(why)
    try:
        public = [int(v) for v in parse_public(public_doc)]
        proof = [int(v) for v in proof_calldata(parse_proof(proof_doc))]
    except ZkFormatError as e:
        raise ValueError(e.reason) from None
    return proof, public

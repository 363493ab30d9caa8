"""Packing a zk-groth16 job's bundle, and recording what its proof must show.

The bundle (docs/jobspec.md, "zk-groth16 jobs") is ``job.json``, ``circuit/``
(exactly the five circuit files, flat) and ``in/input.json`` (the circuit's
input signals, without the binding, which the provider adds). It is checked
here as the provider will check it (``worker.zk``: the same input parser and
signal names), so a mistake is the requester's ``spec_invalid`` at submission,
not a failed run far away.

Packing also fixes what the requester will verify against (``JobSpec.zk``):
its own verification key, read from the circuit it sends, the circuit's CID
and id (``zkp.formats.vk_id``, signed in the agreement), the public signal
names, and the values it gives the public inputs. Blocking: the shell runs
:func:`pack_zk` in a worker thread.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import msgspec

from protocol.errors import JobError, MaskError
from scheduler.spec import ContentRef, JobSpec, ZkCircuit

__all__ = ["CIRCUIT_DIR", "INPUT_NAME", "job_document", "pack_zk"]

#: where the circuit goes in the bundle, and the input file under in/
CIRCUIT_DIR = "circuit"
INPUT_NAME = "input.json"

Place = Callable[[ContentRef, Path], None]


def _invalid(field: str, reason: str, hint: str | None) -> JobError:
    return JobError(
        f"job spec: {field}: {reason}",
        code="spec_invalid",
        hint=hint or "see docs/jobspec.md, zk-groth16 jobs",
    )


def pack_zk(spec: JobSpec, bundle: Path, place: Place) -> ZkCircuit:
    """Write ``circuit/`` and ``in/input.json`` under ``bundle``; return the job's zk record.

    ``place(ref, dest)`` copies a path or exports a CID to ``dest``. Raises
    JobError ``spec_invalid`` naming the field for a circuit or input that
    cannot be used.
    """
    from worker.zk import ZkLimits, check_signal_names, parse_inputs
    from zkp.circuit import BINDING, CIRCUIT_FILES, VK, CircuitError, circuit_cid, load_circuit
    from zkp.formats import ZkFormatError, load_json_file, vk_id

    assert spec.circuit is not None and len(spec.inputs) == 1
    scratch = bundle / ".circuit-src"
    target = bundle / CIRCUIT_DIR
    try:
        if spec.circuit.kind == "cid":
            place(spec.circuit, scratch)
            source = scratch
        else:
            source = Path(spec.circuit.value)
        load_circuit(source)  # the whole check, before anything is copied
        target.mkdir()
        for name in CIRCUIT_FILES:  # nothing else travels (or counts toward the CID)
            shutil.copyfile(source / name, target / name, follow_symlinks=False)
        circuit = load_circuit(target)
        cid = circuit_cid(target)
        vk_doc = load_json_file(target / VK)
    except CircuitError as e:
        raise _invalid("circuit", e.reason, e.hint) from None
    except ZkFormatError as e:
        raise _invalid("circuit", f"verification_key.json: {e.reason}", None) from None
    except OSError as e:
        raise _invalid("circuit", f"cannot be copied: {e.strerror or e}", None) from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    field = "inputs[0]"
    dest = bundle / "in" / INPUT_NAME
    dest.parent.mkdir(exist_ok=True)
    place(spec.inputs[0], dest)
    if not dest.is_file() or dest.is_symlink():
        raise _invalid(field, "is not a file of input signals", 'e.g. inputs = ["input.json"]')
    limits = ZkLimits()
    with open(dest, "rb") as f:
        raw = f.read(limits.max_input_bytes + 1)
    try:
        inputs = parse_inputs(raw, limits)
        check_signal_names(inputs, circuit.input_names)
    except MaskError as e:
        message = e.message.replace("the job's input.json", "input.json")
        raise _invalid(field, message, e.hint) from None
    public_inputs: dict[str, str] = {}
    for name in circuit.manifest["inputs"]["public"]:
        if name == BINDING:
            continue
        value = inputs[name]
        if not isinstance(value, str):
            raise _invalid(
                field,
                f"the public input {name} is an array; a public input is one number",
                "give it as one decimal number (the circuit's public signals are scalars)",
            )
        public_inputs[name] = value
    return ZkCircuit(
        name=circuit.name,
        cid=cid,
        circuit_id=vk_id(circuit.vk),
        vk=vk_doc if isinstance(vk_doc, dict) else {},
        public_names=circuit.public_names,
        n_outputs=circuit.n_outputs,
        public_inputs=public_inputs,
    )


def job_document(spec: JobSpec) -> dict:
    """job.json of a zk bundle: the spec as the provider reads it (no paths of ours)."""
    doc = {k: v for k, v in msgspec.to_builtins(spec).items() if v is not None}
    doc.pop("program", None)
    doc.pop("zk", None)
    doc["circuit"] = CIRCUIT_DIR
    doc["inputs"] = [INPUT_NAME]
    if spec.zk is not None:
        doc["circuit_id"] = spec.zk.circuit_id
    return doc

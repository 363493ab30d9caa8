"""The zk executor's bounded checks of a stranger's bundle: input.json and the proving key.

What a requester sends a provider for a zk-groth16 job (``worker.zk``) is
data from a stranger, and two parts of it decide how much work and memory a
proof will take before any prover sees them:

- ``in/input.json``: bounded in bytes, nesting (checked on the bytes, before
  the parser recurses), top-level names and values in all; each value a
  decimal string or integer in [0, r) (booleans, floats, hex, negatives and
  null refused); the names must be the circuit's input signals, and the
  binding is never the requester's to set;
- ``circuit/circuit.zkey``: its section table must fit the file, its header
  must describe Groth16 over BN254 with a power-of-two domain within the cap,
  backed by the key's own sections, and the proving memory it implies must
  fit the job's memory limit. A key that claims gigabytes is refused here.

Every refusal is a :class:`~protocol.errors.JobError` with a :class:`ZkCode`
and a hint. Pure except for reading the zkey's table through one fd.
"""

from __future__ import annotations

import enum
import errno
import json
import os
import re
import struct
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol.codec import NestingTooDeep, check_nesting
from protocol.errors import JobError
from worker.bundle import BAD_BUNDLE
from zkp.binding import SNARK_SCALAR_FIELD

__all__ = [
    "BINDING",
    "HINTS",
    "ZK_EXECUTOR",
    "Signal",
    "ZkCode",
    "ZkLimits",
    "ZkeyHeader",
    "bind_inputs",
    "check_signal_names",
    "check_zkey",
    "parse_inputs",
    "zk_error",
]

ZK_EXECUTOR = "zk-groth16"
BINDING = "binding"
#: a circom input signal's value: a decimal string in [0, r), or arrays of them
Signal = str | list["Signal"]


class ZkCode(enum.StrEnum):
    """Why a zk job failed; each reaches the requester as the result's error code."""

    BAD_BUNDLE = BAD_BUNDLE  # the bundle's structure (job.json, circuit/ or in/ unreadable)
    INPUT_INVALID = "zk_input_invalid"  # input.json: not JSON, too big or deep, a bad value
    UNKNOWN_INPUT = "zk_unknown_input"  # a signal the circuit does not have, or one missing
    BINDING_SUPPLIED = "zk_binding_supplied"  # input.json sets the binding itself
    CIRCUIT_INVALID = "zk_circuit_invalid"  # circuit/ is not a usable circuit
    CIRCUIT_MISMATCH = "zk_circuit_mismatch"  # its vk is not the circuit the agreement names
    CONSTRAINT_FAILED = "zk_constraint_failed"  # the witness violates the circuit
    PROVER_FAILED = "zk_prover_failed"  # the prover crashed or made a proof that fails
    MEMORY_LIMIT = "memory_limit"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    UNSUPPORTED = "executor_unsupported"  # this provider has no working prover


HINTS = {
    ZkCode.BAD_BUNDLE: "pack job.json, circuit/ (flat, regular files) and in/input.json; "
    "see docs/jobspec.md, zk-groth16 jobs",
    ZkCode.INPUT_INVALID: "input.json is one JSON object of the circuit's input signals, "
    "each a decimal string or integer in [0, r), or arrays of them",
    ZkCode.UNKNOWN_INPUT: "name exactly the circuit's input signals (circuit.json, inputs), "
    "except binding",
    ZkCode.BINDING_SUPPLIED: "leave binding out of input.json: the provider sets it from "
    "the job id and both accounts",
    ZkCode.CIRCUIT_INVALID: "ship the circuit's build directory as circuit/: circuit.json, "
    "circuit.r1cs, circuit.wasm, circuit.zkey, verification_key.json",
    ZkCode.CIRCUIT_MISMATCH: "the job's circuit id must be the id of circuit/'s "
    "verification key; submit the job again",
    ZkCode.CONSTRAINT_FAILED: "the inputs do not satisfy the circuit (a value out of range, "
    "a wrong commitment?); check them with `mask zk prove` locally",
    ZkCode.PROVER_FAILED: "the provider's prover failed; the job can run elsewhere",
    ZkCode.MEMORY_LIMIT: "raise resources.memory_mb in job.toml, or use a smaller circuit",
    ZkCode.TIMEOUT: "raise resources.max_seconds in job.toml, or use a smaller circuit",
    ZkCode.CANCELLED: "the job was cancelled before it finished",
    ZkCode.UNSUPPORTED: "this provider has no working Groth16 prover; the job can run elsewhere",
}


def zk_error(code: ZkCode, message: str) -> JobError:
    return JobError(message, code=code.value, hint=HINTS[code])


@dataclass(frozen=True, slots=True)
class ZkLimits:
    """What a provider reads of a requester's zk bundle, whatever it declares."""

    max_spec_bytes: int = 1 << 20  # job.json
    max_input_bytes: int = 8 << 20  # in/input.json
    max_input_values: int = 1 << 16  # scalars in input.json, all signals together
    max_input_depth: int = 8  # array nesting of one signal (the object is one more)
    max_signals: int = 1024  # top-level names in input.json
    max_signal_name: int = 128  # characters of one name
    max_circuit_bytes: int = 512 << 20  # circuit/, every file together
    max_circuit_entries: int = 16  # files in circuit/
    max_manifest_bytes: int = 1 << 20  # circuit.json and verification_key.json
    max_domain_log2: int = 22  # the zkey's FFT domain: 2^22 points is ~4M constraints


_NAME = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$]*$")
_DECIMAL = re.compile(r"^[0-9]{1,78}$")
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

# --- input.json -------------------------------------------------------------------


def parse_inputs(data: bytes, limits: ZkLimits = ZkLimits()) -> dict[str, Signal]:
    """input.json as {signal name: canonical decimal strings}, or ``zk_input_invalid``.

    Bounded before anything recurses: the byte size, the nesting (checked on
    the bytes, before the parser), the number of names and of values."""
    if len(data) > limits.max_input_bytes:
        raise _bad_input(f"is {len(data)} bytes, over the cap of {limits.max_input_bytes}")
    try:
        check_nesting(data, limits.max_input_depth + 1, fmt="json")
    except NestingTooDeep:
        raise _bad_input(f"nests arrays deeper than {limits.max_input_depth} levels") from None
    try:
        doc = json.loads(data.decode("utf-8"), parse_constant=_no_constant, parse_float=_no_float)
    except (UnicodeDecodeError, ValueError) as e:
        raise _bad_input(f"is not JSON: {str(e)[:200]}") from None
    except RecursionError:
        raise _bad_input(f"nests arrays deeper than {limits.max_input_depth} levels") from None
    if not isinstance(doc, dict):
        raise _bad_input(f"is a JSON {type(doc).__name__}, not an object of signals")
    if len(doc) > limits.max_signals:
        raise _bad_input(f"names {len(doc)} signals, over the cap of {limits.max_signals}")
    budget = [limits.max_input_values]
    inputs: dict[str, Signal] = {}
    for name, value in doc.items():
        if len(name) > limits.max_signal_name or not _NAME.match(name):
            raise _bad_input(f"has a key that is not a signal name: {_shown(name)}")
        inputs[name] = _signal(name, value, budget, limits)
    return inputs


def _signal(name: str, value: Any, budget: list[int], limits: ZkLimits) -> Signal:
    """One signal's value, canonical, without recursion; spends ``budget`` per scalar."""
    root: list[Signal] = []
    stack: list[tuple[Any, list[Signal], int]] = [(value, root, 0)]
    while stack:
        item, into, depth = stack.pop()
        if isinstance(item, list):
            if depth >= limits.max_input_depth:
                raise _bad_input(f"{name}: nests arrays deeper than {limits.max_input_depth}")
            if not item:
                raise _bad_input(f"{name}: holds an empty array")
            children: list[Signal] = []
            into.append(children)
            # pushed in reverse so they pop, and are appended, in order
            stack.extend((child, children, depth + 1) for child in reversed(item))
            continue
        budget[0] -= 1
        if budget[0] < 0:
            raise _bad_input(f"holds more than {limits.max_input_values} values")
        into.append(_scalar(name, item))
    return root[0]


def _scalar(name: str, item: Any) -> str:
    if isinstance(item, bool) or not isinstance(item, int | str):
        raise _bad_input(f"{name}: a value is a JSON {_json_type(item)}, not a number")
    if isinstance(item, str):
        if not _DECIMAL.match(item):
            raise _bad_input(f"{name}: {_shown(item)} is not a decimal number")
        number = int(item)
    else:
        number = item
    if not 0 <= number < SNARK_SCALAR_FIELD:
        raise _bad_input(f"{name}: {_shown(str(number))} is outside the field [0, r)")
    return str(number)


def _json_type(item: Any) -> str:
    if item is None:
        return "null"
    return {bool: "boolean", dict: "object", float: "number with a fraction"}.get(
        type(item), type(item).__name__
    )


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _no_float(text: str) -> None:
    raise ValueError(f"{text[:40]} is not a whole number")


def _bad_input(reason: str) -> JobError:
    return zk_error(ZkCode.INPUT_INVALID, f"the job's input.json {reason}")


def _shown(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def check_signal_names(inputs: Mapping[str, Signal], declared: Collection[str] | None) -> None:
    """Every name in ``inputs`` is a declared input signal, and every declared one
    but the binding is given. ``declared`` None: the manifest does not say (the
    witness generator will)."""
    if BINDING in inputs:
        raise zk_error(
            ZkCode.BINDING_SUPPLIED,
            "the job's input.json sets binding: the binding is the provider's to set",
        )
    if declared is None:
        return
    unknown = sorted(set(inputs) - set(declared))
    if unknown:
        raise zk_error(
            ZkCode.UNKNOWN_INPUT,
            f"the circuit has no input signal {', '.join(map(_shown, unknown[:5]))}"
            f" (its inputs: {', '.join(sorted(declared))})",
        )
    missing = sorted(set(declared) - set(inputs) - {BINDING})
    if missing:
        raise zk_error(
            ZkCode.UNKNOWN_INPUT,
            f"the job's input.json lacks the circuit's input {', '.join(missing[:5])}",
        )


def bind_inputs(inputs: Mapping[str, Signal], binding: int) -> dict[str, Signal]:
    """``inputs`` with ``binding`` added: refused if the requester set it."""
    check_signal_names(inputs, None)
    if not 0 <= binding < SNARK_SCALAR_FIELD:
        raise ValueError("a binding is a field element")
    return {**inputs, BINDING: str(binding)}


def bad_circuit(message: str) -> JobError:
    return zk_error(ZkCode.CIRCUIT_INVALID, message)


def why(e: OSError) -> str:
    """An OSError's reason, a refused symlink said as such."""
    return "it is a symlink" if e.errno == errno.ELOOP else (e.strerror or str(e))


# --- the proving key ------------------------------------------------------------------

_ZKEY_MAGIC = b"zkey"
_GROTH16 = 1
_G1_BYTES = 64  # an affine BN254 G1 point as a zkey stores it
_MAX_SECTIONS = 32
#: BN254's base field q, as the zkey header states it (little-endian, 32 bytes)
_BN254_Q = 21888242871839275222246405745257275088696311157297823662689037894645226208583


@dataclass(frozen=True, slots=True)
class ZkeyHeader:
    n_vars: int
    n_public: int
    domain_size: int
    file_bytes: int

    def proving_memory(self) -> int:
        """A floor on what proving needs: the key itself, and the A, B, C
        evaluations and their transforms (snarkjs keeps ~6 domain-sized buffers)."""
        return self.file_bytes + 6 * 32 * self.domain_size + 32 * self.n_vars


def check_zkey(path: Path, *, memory_bytes: int, limits: ZkLimits = ZkLimits()) -> ZkeyHeader:
    """The Groth16 proving key's header, checked before any prover allocates
    what it claims: every section inside the file, the curve BN254, the
    domain a power of two within ``limits.max_domain_log2`` and backed by the
    file's own H section, the variables backed by the A section, and the
    whole within the job's ``memory_bytes``. ``zk_circuit_invalid`` or
    ``memory_limit`` otherwise. Reads the table and one small section."""
    try:
        fd = os.open(path, _FILE_FLAGS)
    except OSError as e:
        raise bad_circuit(f"the bundle's circuit/{path.name} cannot be opened: {why(e)}") from None
    try:
        size = os.fstat(fd).st_size
        sections = _zkey_sections(fd, size)
        header = _zkey_groth16_header(fd, sections)
    finally:
        os.close(fd)
    header = ZkeyHeader(*header, file_bytes=size)
    _zkey_plausible(header, sections, limits)
    need = header.proving_memory()
    if need > memory_bytes:
        raise zk_error(
            ZkCode.MEMORY_LIMIT,
            f"proving this circuit ({header.domain_size}-point domain, {size}-byte key) needs "
            f"at least {need / (1 << 20):.1f} MiB, over the job's memory limit of "
            f"{memory_bytes / (1 << 20):.1f} MiB",
        )
    return header


def _zkey_sections(fd: int, size: int) -> dict[int, list[tuple[int, int]]]:
    """{section type: [(offset, length)]}, every one inside the file."""
    head = os.pread(fd, 12, 0)
    if len(head) < 12 or head[:4] != _ZKEY_MAGIC:
        raise bad_circuit("the bundle's circuit/circuit.zkey is not a zkey file")
    _version, count = struct.unpack("<II", head[4:])
    if count > _MAX_SECTIONS:
        raise bad_circuit(f"the bundle's circuit/circuit.zkey claims {count} sections")
    sections: dict[int, list[tuple[int, int]]] = {}
    pos = 12
    for _ in range(count):
        raw = os.pread(fd, 12, pos)
        if len(raw) < 12:
            raise bad_circuit("the bundle's circuit/circuit.zkey ends inside its section table")
        kind, length = struct.unpack("<IQ", raw)
        pos += 12
        if length > size - pos:
            raise bad_circuit(
                f"the bundle's circuit/circuit.zkey claims a {length}-byte section in a "
                f"{size}-byte file"
            )
        sections.setdefault(kind, []).append((pos, length))
        pos += length
    return sections


def _zkey_groth16_header(fd: int, sections: dict[int, list[tuple[int, int]]]) -> tuple[int, ...]:
    def only(kind: int) -> tuple[int, int]:
        found = sections.get(kind, [])
        if len(found) != 1:
            raise bad_circuit(f"the bundle's circuit/circuit.zkey has {len(found)} sections {kind}")
        return found[0]

    at, length = only(1)
    if length != 4 or struct.unpack("<I", os.pread(fd, 4, at))[0] != _GROTH16:
        raise bad_circuit("the bundle's circuit/circuit.zkey is not a Groth16 key")
    at, length = only(2)
    raw = os.pread(fd, min(length, 4 + 32 + 4 + 32 + 12), at)
    if len(raw) < 84 or struct.unpack("<I", raw[:4])[0] != 32:
        raise bad_circuit("the bundle's circuit/circuit.zkey is not over BN254")
    q = int.from_bytes(raw[4:36], "little")
    n8r = struct.unpack("<I", raw[36:40])[0]
    r = int.from_bytes(raw[40:72], "little")
    if (q, n8r, r) != (_BN254_Q, 32, SNARK_SCALAR_FIELD):
        raise bad_circuit("the bundle's circuit/circuit.zkey is not over BN254")
    return struct.unpack("<III", raw[72:84])


def _zkey_plausible(
    h: ZkeyHeader, sections: dict[int, list[tuple[int, int]]], limits: ZkLimits
) -> None:
    domain = h.domain_size
    if domain < 1 or domain & (domain - 1) or domain > 1 << limits.max_domain_log2:
        raise bad_circuit(
            f"the bundle's circuit/circuit.zkey claims a domain of {domain} points "
            f"(at most 2^{limits.max_domain_log2}, a power of two)"
        )
    expect = {3: (h.n_public + 1) * _G1_BYTES, 5: h.n_vars * _G1_BYTES, 9: domain * _G1_BYTES}
    for kind, want in expect.items():
        got = [length for _, length in sections.get(kind, [])]
        if got != [want]:
            raise bad_circuit(
                f"the bundle's circuit/circuit.zkey claims {h.n_vars} variables, "
                f"{h.n_public} public and a {domain}-point domain, but its section {kind} "
                f"holds {got[0] if got else 0} bytes, not {want}"
            )

"""A circuit directory: the five files a Groth16 job needs, loaded and checked.

A circuit travels like any other program, as a directory of content-addressed
files (docs/zkp.md, "Circuits"):

    circuit.json           manifest: name, description, public signal names in
                           order (binding last), outputs, constraints, inputs
    circuit.r1cs           the constraint system (circom's .r1cs)
    circuit.wasm           the witness generator (circom's WASM)
    circuit.zkey           the Groth16 proving key (snarkjs's .zkey)
    verification_key.json  the verification key (snarkjs JSON)

It is identified by the CID of that directory (:func:`circuit_cid`, the
project's UnixFS importer over exactly these five files), and on chain by
``zkp.formats.vk_id`` of its verification key.

A circuit may come from a requester, so :func:`load_circuit` treats the
directory as hostile: every file is opened with ``O_NOFOLLOW`` (a symlink is
refused, never followed), must be a regular file, and is size-capped before
anything is parsed. The manifest and key must agree: as many public names as
the key has public inputs, and the last one named ``binding`` (zkp/binding.py).
Every refusal is a :class:`CircuitError` with a reason and a hint. The
loader reads only the small files (manifest, key); the large ones are checked
for presence, type and size, and read by the witness generator and prover.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol.codec import NestingTooDeep, check_nesting
from protocol.errors import MaskError
from zkp.formats import VerifyingKey, ZkFormatError, parse_vk

__all__ = [
    "BINDING",
    "CIRCUIT_FILES",
    "Circuit",
    "CircuitError",
    "CircuitLimits",
    "circuit_cid",
    "load_circuit",
    "shipped_circuits",
    "shipped_dir",
]

#: The input every circuit takes last among its public signals (zkp/binding.py).
BINDING = "binding"
MANIFEST = "circuit.json"
R1CS = "circuit.r1cs"
WASM = "circuit.wasm"
ZKEY = "circuit.zkey"
VK = "verification_key.json"
#: The files of a circuit directory, and nothing else counts toward its CID.
CIRCUIT_FILES = (MANIFEST, R1CS, WASM, ZKEY, VK)

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_SIGNAL = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]{0,127}")
_MAX_DESCRIPTION = 2000
_MAX_SIGNALS = 1024
_MAX_JSON_DEPTH = 16  # circuit.json nests 3 levels, verification_key.json 4
_HINT_BUILD = (
    "a circuit directory holds circuit.json, circuit.r1cs, circuit.wasm, circuit.zkey and "
    "verification_key.json as circuits/build.sh writes them (docs/zkp.md)"
)


class CircuitError(MaskError):
    """A circuit directory that cannot be used; ``reason`` says why in one line."""

    code = "circuit_invalid"

    def __init__(self, reason: str, hint: str | None = _HINT_BUILD) -> None:
        super().__init__(reason, hint=hint)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class CircuitLimits:
    """Size caps, in bytes, checked before any file is read."""

    max_r1cs_bytes: int = 64 << 20
    max_wasm_bytes: int = 64 << 20
    max_zkey_bytes: int = 64 << 20
    max_json_bytes: int = 1 << 20  # circuit.json and verification_key.json


@dataclass(frozen=True, slots=True)
class Circuit:
    """A loaded circuit directory; ``manifest`` is circuit.json as checked."""

    dir: Path
    name: str
    manifest: Mapping[str, Any]
    vk: VerifyingKey
    n_outputs: int
    public_names: tuple[str, ...]

    @property
    def r1cs_path(self) -> Path:
        return self.dir / R1CS

    @property
    def wasm_path(self) -> Path:
        return self.dir / WASM

    @property
    def zkey_path(self) -> Path:
        return self.dir / ZKEY

    @property
    def vk_path(self) -> Path:
        return self.dir / VK

    @property
    def constraints(self) -> int:
        return int(self.manifest["constraints"])

    @property
    def input_names(self) -> tuple[str, ...]:
        """Every input signal the manifest declares, private ones first."""
        inputs = self.manifest["inputs"]
        return (*inputs["private"], *inputs["public"])


# --- files --------------------------------------------------------------------


def _open_regular(path: Path, cap: int) -> tuple[int, int]:
    """An fd on ``path`` (no symlink followed) and its size; CircuitError otherwise."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise CircuitError(f"{path.name} is missing from {path.parent}") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise CircuitError(
                f"{path.name} is a symlink; circuit files must be regular files"
            ) from None
        raise CircuitError(f"cannot open {path.name}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CircuitError(f"{path.name} is not a regular file")
        if st.st_size > cap:
            raise CircuitError(
                f"{path.name} is {st.st_size} bytes, over the {cap}-byte limit",
                hint="a provider refuses circuits this large; use a smaller circuit",
            )
        return fd, st.st_size
    except BaseException:
        os.close(fd)
        raise


def _check_file(path: Path, cap: int) -> int:
    fd, size = _open_regular(path, cap)
    os.close(fd)
    if size == 0:
        raise CircuitError(f"{path.name} is empty")
    return size


def _read_json(path: Path, cap: int) -> object:
    fd, size = _open_regular(path, cap)
    try:
        with os.fdopen(fd, "rb", closefd=True) as f:
            data = f.read(cap + 1)
    except OSError as e:
        raise CircuitError(f"cannot read {path.name}: {e.strerror}") from None
    if len(data) > cap:
        raise CircuitError(f"{path.name} grew past the {cap}-byte limit while read")
    # bounded before the parser recurses: py-ecc raises Python's recursion
    # limit to 100,000, so json's own RecursionError would come only after the
    # C stack overflowed (a requester's verification_key.json of 100,000
    # brackets segfaulted the test process, and would a provider)
    try:
        check_nesting(data, _MAX_JSON_DEPTH, fmt="json")
    except NestingTooDeep:
        raise CircuitError(
            f"{path.name} is not JSON: nested deeper than {_MAX_JSON_DEPTH} levels"
        ) from None
    try:
        return json.loads(data)
    except RecursionError:
        raise CircuitError(f"{path.name} is not JSON: nested too deeply") from None
    except ValueError as e:
        first = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise CircuitError(f"{path.name} is not JSON: {first}") from None


# --- manifest -----------------------------------------------------------------


def _names(value: object, where: str, *, allow_empty: bool = True) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > _MAX_SIGNALS:
        raise CircuitError(f"circuit.json: {where} must be a list of signal names")
    if not value and not allow_empty:
        raise CircuitError(f"circuit.json: {where} is empty")
    for name in value:
        if not isinstance(name, str) or not _SIGNAL.fullmatch(name):
            shown = repr(name)[:40]
            raise CircuitError(f"circuit.json: {where} holds {shown}, not a signal name")
    if len(set(value)) != len(value):
        raise CircuitError(f"circuit.json: {where} names a signal twice")
    return tuple(value)


def _count(manifest: Mapping[str, Any], key: str, low: int, high: int) -> int:
    value = manifest.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise CircuitError(f"circuit.json: {key} must be an integer in [{low}, {high}]")
    return value


def check_manifest(obj: object) -> dict[str, Any]:
    """circuit.json checked: its fields, types and bounds; CircuitError otherwise. Pure."""
    if not isinstance(obj, dict):
        raise CircuitError("circuit.json is not a JSON object")
    name = obj.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise CircuitError("circuit.json: name must be 1-64 letters, digits or _")
    description = obj.get("description", "")
    if not isinstance(description, str) or len(description) > _MAX_DESCRIPTION:
        raise CircuitError(f"circuit.json: description must be text of at most {_MAX_DESCRIPTION}")
    if obj.get("protocol") != "groth16":
        raise CircuitError(
            "circuit.json: protocol must be groth16", hint="maskd proves Groth16 circuits only"
        )
    if obj.get("curve") != "bn128":
        raise CircuitError(
            "circuit.json: curve must be bn128",
            hint="maskd proves over BN254 (bn128, alt_bn128) only: the curve of the EVM's precompiles",
        )
    public = _names(obj.get("public"), "public", allow_empty=False)
    if public[-1] != BINDING:
        raise CircuitError(
            f"circuit.json: the last public signal is {public[-1]!r}, not {BINDING!r}",
            hint="every circuit takes the job binding as its last public signal (zkp/binding.py)",
        )
    outputs = _count(obj, "outputs", 0, len(public) - 1)
    constraints = _count(obj, "constraints", 1, 1 << 28)
    inputs = obj.get("inputs")
    if not isinstance(inputs, dict) or set(inputs) != {"private", "public"}:
        raise CircuitError('circuit.json: inputs must be {"private": [...], "public": [...]}')
    private_in = _names(inputs["private"], "inputs.private")
    public_in = _names(inputs["public"], "inputs.public", allow_empty=False)
    if set(private_in) & set(public_in):
        raise CircuitError("circuit.json: a signal is both a private and a public input")
    if public_in != public[outputs:]:
        raise CircuitError(
            "circuit.json: inputs.public must be the public signals after the outputs, in order"
        )
    return {
        "name": name,
        "description": description,
        "public": list(public),
        "outputs": outputs,
        "constraints": constraints,
        "protocol": "groth16",
        "curve": "bn128",
        "inputs": {"private": list(private_in), "public": list(public_in)},
    }


# --- loading ------------------------------------------------------------------


def load_circuit(dir: str | os.PathLike[str], limits: CircuitLimits = CircuitLimits()) -> Circuit:
    """Load and check the circuit directory ``dir``; CircuitError with a reason otherwise."""
    path = Path(dir)
    try:
        st = os.lstat(path)
    except OSError:
        raise CircuitError(f"no circuit directory at {path}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise CircuitError(f"{path} is not a directory (symlinks are not followed)")
    _check_file(path / R1CS, limits.max_r1cs_bytes)
    _check_file(path / WASM, limits.max_wasm_bytes)
    _check_file(path / ZKEY, limits.max_zkey_bytes)
    manifest = check_manifest(_read_json(path / MANIFEST, limits.max_json_bytes))
    try:
        vk = parse_vk(_read_json(path / VK, limits.max_json_bytes))
    except ZkFormatError as e:
        raise CircuitError(f"verification_key.json: {e.reason}") from None
    public = tuple(manifest["public"])
    if vk.n_public != len(public):
        raise CircuitError(
            f"the verification key has {vk.n_public} public inputs, circuit.json names "
            f"{len(public)}",
            hint="circuit.json and verification_key.json come from one build: rebuild both",
        )
    return Circuit(
        dir=path,
        name=manifest["name"],
        manifest=manifest,
        vk=vk,
        n_outputs=manifest["outputs"],
        public_names=public,
    )


def circuit_cid(dir: str | os.PathLike[str], limits: CircuitLimits = CircuitLimits()) -> str:
    """The CID of the circuit directory: ``ipfs add -r`` (CIDv1, raw leaves) of a
    directory holding exactly :data:`CIRCUIT_FILES`; other files do not count."""
    from storage.cid import cid_to_bytes
    from storage.dagpb import PBLink
    from storage.unixfs import build_directory, import_file

    def discard(cid: str, block: bytes) -> None:
        pass

    path = Path(dir)
    caps = {
        MANIFEST: limits.max_json_bytes,
        VK: limits.max_json_bytes,
        R1CS: limits.max_r1cs_bytes,
        WASM: limits.max_wasm_bytes,
        ZKEY: limits.max_zkey_bytes,
    }
    links = []
    for name in CIRCUIT_FILES:
        fd, _ = _open_regular(path / name, caps[name])
        with os.fdopen(fd, "rb", closefd=True) as f:
            result = import_file(f, discard)
        links.append(PBLink(cid_to_bytes(result.cid), name.encode(), result.tsize))
    cid, _, _ = build_directory(links, discard)
    return cid


# --- the circuits this project ships -------------------------------------------


def shipped_dir() -> Path:
    """circuits/build in this checkout (where ``make circuits`` writes)."""
    return Path(__file__).resolve().parent.parent / "circuits" / "build"


def shipped_circuits(root: str | os.PathLike[str] | None = None) -> dict[str, Path]:
    """The shipped circuit directories by name (circuits/build/*), sorted."""
    base = Path(root) if root is not None else shipped_dir()
    try:
        entries = sorted(base.iterdir())
    except OSError:
        return {}
    return {
        entry.name: entry
        for entry in entries
        if _NAME.fullmatch(entry.name) and entry.is_dir() and not entry.is_symlink()
    }

"""The job spec users write (``job.toml``), loaded and validated once at the edge.

The format is documented in ``docs/jobspec.md`` and is a public, stable
interface: fields may be added (optional, with defaults) but never renamed.

Validation is strict on purpose. A spec is the requester's promise about what
the job needs and what it may cost; a typo that silently fell back to a default
(``memroy_mb = 4096``) would either waste money or make the job fail far away on
a provider. So every mistake becomes one ``JobError(code="spec_invalid")`` whose
message names the field (``resources.memory_mb``) and the reason, with a hint.

A ``zk-groth16`` job names a ``circuit`` (a folder, a CID, or the name of a
circuit shipped with maskd) instead of a ``program``, takes its input signals
as one JSON input, and is always checked by its proof (``verify.mode = "zk"``):
a zk job whose result is taken on a receipt would pay for an unchecked claim,
and a proof cannot check a wasm run, so each mode goes with its executor only.

This module reads the spec file and checks that local paths exist; it does no
other I/O and reads no clock. The circuit itself is opened when the job is
submitted (``maskd.jobs_rpc``), which records what the requester verifies
against in :attr:`JobSpec.zk`.

A zk job placed for a DApp's on-chain request (``maskd.gateway``) carries a
:class:`Relay`: the ComputeRequests contract, its chain and the request id.
It is never read from ``job.toml`` (the gateway sets it) and travels in the
bundle's ``job.json``, which the signed spec CID covers. It changes who the
proof is bound to: job id ``jobIdOf(request)``, requester the contract (not
the gateway's account), provider the provider's account, as ``fulfill``
recomputes it; and it changes who pays: the contract, on fulfilment, so no
voucher is signed or expected for the job.
"""

from __future__ import annotations

import math
import re
import tomllib
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec
from multiformats import CID

from protocol.errors import JobError

__all__ = [
    "EXECUTORS",
    "VERIFY_MODES",
    "ContentRef",
    "JobSpec",
    "Price",
    "Relay",
    "Resources",
    "Verify",
    "ZkCircuit",
    "load_spec",
    "parse_relay",
    "parse_spec",
    "relay_job_id",
]

#: Executors a job may name today. The others are planned (DESIGN.md §6) and
#: get a "not supported yet" message rather than "unknown".
EXECUTORS = frozenset({"wasm", "zk-groth16"})
_PLANNED_EXECUTORS = frozenset({"native"})
VERIFY_MODES = frozenset({"receipt", "zk", "replicate", "freivalds"})
_PLANNED_VERIFY_MODES: frozenset[str] = frozenset()
ZK_EXECUTOR = "zk-groth16"
#: the verify mode each executor must use; executors not named take any other mode
_VERIFY_MODE_OF = {ZK_EXECUTOR: "zk"}

MAX_MEMORY_MB = 1024 * 1024  # 1 TiB
MAX_CPU = 1024
MAX_GPU = 64
MAX_DEADLINE_SECONDS = 30 * 24 * 3600  # 30 days: longer jobs should be split
MAX_FUEL = 2**63 - 1  # wasmtime's fuel counter is a signed 64-bit integer
MAX_TOTAL = 2**256 - 1  # a uint256 on chain
MAX_ARGS = 256
MAX_ARG_BYTES = 4096
MAX_INPUTS = 1024
MAX_SPEC_BYTES = 1 << 20  # a job.toml is a few hundred bytes; data goes in inputs
MAX_INPUT_NAME_BYTES = 255  # NAME_MAX: an input becomes a file name under /in
MAX_PATH_BYTES = 4096  # PATH_MAX

# fullmatch, not `^…$`: `$` also matches before a trailing newline
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_CID_PREFIXES = ("bafy", "bafk", "Qm")

_TOP_KEYS = (
    "name",
    "executor",
    "program",
    "circuit",
    "args",
    "inputs",
    "resources",
    "price",
    "verify",
)
_RESOURCE_KEYS = ("cpu", "memory_mb", "gpu", "max_seconds", "max_fuel")
_PRICE_KEYS = ("max_total", "deadline_seconds")
_VERIFY_KEYS = (
    "mode",
    "replicas",
    "max_rounds",
    "spot_check",
    "rounds",
    "tolerance",
    "a",
    "b",
    "c",
)
#: keys of [verify] that only one mode reads (a key for another mode is an error)
_VERIFY_MODE_KEYS = {
    "replicas": "replicate",
    "max_rounds": "replicate",
    "spot_check": "receipt",
    "rounds": "freivalds",
    "tolerance": "freivalds",
    "a": "freivalds",
    "b": "freivalds",
    "c": "freivalds",
}
MAX_REPLICAS = 9
MAX_REPLICATE_ROUNDS = 5
MAX_FREIVALDS_ROUNDS = 64


class ContentRef(msgspec.Struct, frozen=True):
    """A program or an input: a local path (absolute, resolved) or a CID.

    Local paths are resolved against the spec file's folder when the spec is
    loaded, so the daemon never depends on the client's working directory.
    """

    kind: Literal["path", "cid"]
    value: str

    @property
    def name(self) -> str:
        """The name the input gets under ``/in``: the file or folder name, or the CID."""
        return Path(self.value).name if self.kind == "path" else self.value


class Resources(msgspec.Struct, frozen=True):
    """What the job needs. ``max_seconds`` is wall clock; ``max_fuel`` is wasm only."""

    cpu: int = 1
    memory_mb: int = 128
    gpu: int = 0
    max_seconds: int = 60
    max_fuel: int | None = None


#: A proof needs the proving key and the witness in memory and a prover that
#: starts (snarkjs on Node takes a second or two): defaults for zk jobs that fit
#: the shipped circuits several times over.
ZK_RESOURCE_DEFAULTS = Resources(cpu=1, memory_mb=2048, max_seconds=120)


class Price(msgspec.Struct, frozen=True):
    """``max_total`` is in token base units (an int: too large for TOML integers)."""

    max_total: int
    deadline_seconds: int = 300


class Verify(msgspec.Struct, frozen=True, kw_only=True):
    """How the result is checked (docs/jobspec.md, "Verification"). Only the
    keys of the chosen ``mode`` may differ from their defaults."""

    mode: str = "receipt"
    #: replicate: this many providers (distinct peers and accounts) run the job;
    #: the output a strict majority of them committed to wins
    replicas: int = 2
    #: replicate: sets of replicas tried in all when one has no majority
    max_rounds: int = 2
    #: receipt: this fraction of jobs is re-run, unannounced, on another provider
    spot_check: float = 0.0
    #: freivalds: random vectors tried; a wrong product passes each with
    #: probability at most 1/2 (int64), so all with at most 2**-rounds
    rounds: int = 20
    #: freivalds, float64 only: |A(Br) - Cr| <= tolerance * (|A|(|B||r|) + |C||r|)
    tolerance: float = 1e-9
    #: freivalds: the inputs holding A and B (names under /in) and the output
    #: holding C = A @ B (a name under /out); all .npy, int64 or float64
    a: str = "a.npy"
    b: str = "b.npy"
    c: str = "c.npy"


class ZkCircuit(msgspec.Struct, frozen=True, kw_only=True):
    """The circuit a zk job was submitted with, as the requester will check it.

    Filled when the job is submitted (``maskd.jobs_rpc``), from the circuit the
    requester sends, never written by users. The requester verifies the
    provider's proof against this ``vk`` (its own copy, not the provider's),
    ``circuit_id`` is signed in the agreement, and ``public_inputs`` are the
    values it gave the public input signals: the proof must carry the same.
    """

    name: str
    cid: str  # the circuit folder's CID (zkp.circuit.circuit_cid)
    circuit_id: str  # zkp.formats.vk_id(vk): 64 hex characters, signed in the agreement
    vk: dict[str, Any]  # verification_key.json, snarkjs's format
    public_names: tuple[str, ...]  # every public signal, in order (the binding last)
    n_outputs: int  # the first n_outputs public signals are the circuit's outputs
    public_inputs: dict[str, str]  # public input signal -> the decimal value given


_ADDRESS_RE = re.compile(r"0x[0-9a-fA-F]{40}")
_DECIMAL_RE = re.compile(r"[0-9]{1,78}")


class Relay(msgspec.Struct, frozen=True, kw_only=True):
    """A zk job placed for a ComputeRequests request (``maskd.gateway``).

    ``request_id`` is a decimal string (a uint256 does not fit MessagePack's
    integers); ``contract`` is the ComputeRequests address. Build one with
    :func:`parse_relay`, which checks every field.
    """

    chain_id: int
    contract: str
    request_id: str

    @property
    def job_id(self) -> str:
        """``ComputeRequests.jobIdOf(request_id)``: the job id the proof binds (64 hex)."""
        return relay_job_id(self.chain_id, self.contract, int(self.request_id))

    def binding_parties(self, provider_account: str) -> tuple[str, str, str]:
        """(job id, requester, provider) of the binding ``fulfill`` recomputes."""
        return self.job_id, self.contract, provider_account


def relay_job_id(chain_id: int, contract: str, request_id: int) -> str:
    """keccak256(abi.encode(uint256 chainid, address contract, uint256 requestId)),
    as ``ComputeRequests.jobIdOf`` computes it: 64 hex characters. Pure."""
    from eth_utils import keccak

    if not _ADDRESS_RE.fullmatch(contract):
        raise ValueError(f"not a 0x address: {contract[:60]!r}")
    packed = (
        chain_id.to_bytes(32, "big")
        + bytes(12)
        + bytes.fromhex(contract[2:])
        + request_id.to_bytes(32, "big")
    )
    return keccak(packed).hex()


def parse_relay(value: Any) -> Relay:
    """A relay section from JSON (a bundle's ``job.json``: a stranger's bytes, or
    a stored spec). ValueError naming the field for anything malformed."""
    if not isinstance(value, Mapping):
        raise ValueError("relay must be a table of chain_id, contract and request_id")
    unknown = set(value) - {"chain_id", "contract", "request_id"}
    if unknown:
        raise ValueError(f"relay has unknown keys: {', '.join(sorted(map(str, unknown)))[:120]}")
    chain_id = value.get("chain_id")
    if isinstance(chain_id, bool) or not isinstance(chain_id, int) or not 0 < chain_id < 2**64:
        raise ValueError(f"relay.chain_id must be a positive integer, got {str(chain_id)[:40]!r}")
    contract = value.get("contract")
    if not isinstance(contract, str) or not _ADDRESS_RE.fullmatch(contract):
        raise ValueError(f"relay.contract must be a 0x address, got {str(contract)[:60]!r}")
    request_id = value.get("request_id")
    if not isinstance(request_id, str) or not _DECIMAL_RE.fullmatch(request_id):
        raise ValueError(f"relay.request_id must be a decimal string, got {str(request_id)[:80]!r}")
    if not 0 < int(request_id) <= MAX_TOTAL:
        raise ValueError("relay.request_id must be a uint256 above 0")
    from eth_utils import to_checksum_address

    return Relay(
        chain_id=chain_id,
        contract=to_checksum_address(contract),
        request_id=str(int(request_id)),
    )


class JobSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A validated job spec. Build one with :func:`load_spec` or :func:`parse_spec`.

    ``program`` is set for ``wasm`` jobs, ``circuit`` for ``zk-groth16`` ones.
    ``zk`` is filled at submission; ``relay`` only by the gateway (never from
    job.toml): a zk job placed for a DApp's request, paid by the contract.
    """

    name: str
    executor: str
    price: Price
    program: ContentRef | None = None
    circuit: ContentRef | None = None
    args: tuple[str, ...] = ()
    inputs: tuple[ContentRef, ...] = ()
    resources: Resources = Resources()
    verify: Verify = Verify()
    zk: ZkCircuit | None = None
    relay: Relay | None = None


def load_spec(path: str | Path) -> JobSpec:
    """Read and validate a ``job.toml``; local paths resolve against its folder."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_SPEC_BYTES + 1)
        if len(raw) > MAX_SPEC_BYTES:
            raise _invalid(
                None,
                f"spec file {str(path)!r} is larger than {MAX_SPEC_BYTES} bytes",
                "a job.toml describes the job; put data in input files",
            )
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise _invalid(
            None, f"spec file {str(path)!r} does not exist", "check the path to job.toml"
        ) from None
    except (OSError, ValueError) as e:  # ValueError: not UTF-8, or a NUL in the path
        raise _invalid(
            None, f"cannot read spec file {str(path)!r}: {e}", "is it a UTF-8 TOML file?"
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise _invalid(
            None, f"{path.name} is not valid TOML: {e}", "see docs/jobspec.md for the format"
        ) from None
    except RecursionError:  # tomllib recurses once per nested array or inline table
        raise _invalid(
            None,
            f"{path.name} nests arrays or tables too deeply",
            "a job spec needs at most two levels; see docs/jobspec.md",
        ) from None
    return parse_spec(data, base_dir=path.resolve().parent)


def parse_spec(data: Mapping[str, Any], *, base_dir: Path) -> JobSpec:
    """Validate an already-parsed TOML document. ``base_dir`` anchors relative paths."""
    if not isinstance(data, Mapping):
        raise _invalid(None, f"must be a table of keys, got {_tname(data)}", "see docs/jobspec.md")
    _check_keys(data, _TOP_KEYS, prefix="")
    name = _require_str(data, "name", "")
    if not _NAME_RE.fullmatch(name):
        raise _invalid(
            "name",
            f"{name!r} is not a valid job name",
            "use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
        )

    executor = _require_str(data, "executor", "")
    if executor not in EXECUTORS:
        if executor in _PLANNED_EXECUTORS:
            reason = f"executor {executor!r} is not supported yet"
        else:
            reason = f"unknown executor {executor!r}"
        raise _invalid("executor", reason, f"use one of: {', '.join(sorted(EXECUTORS))}")

    program = circuit = None
    if executor == ZK_EXECUTOR:
        _zk_only_keys(data)
        circuit = _circuit(_require_str(data, "circuit", ""), base_dir)
    else:
        if "circuit" in data:
            raise _invalid(
                "circuit",
                f'only zk-groth16 jobs name a circuit; executor = "{executor}" runs a program',
                'use program = "…", or executor = "zk-groth16"',
            )
        program = _content_ref(
            _require_str(data, "program", ""), "program", base_dir, want_file=True
        )
    args = _args(data.get("args", []))
    inputs = _inputs(data.get("inputs", []), base_dir)
    if executor == ZK_EXECUTOR:
        _zk_inputs(inputs)
    resources = _resources(_table(data, "resources", required=False), executor)
    price = _price(_table(data, "price", required=True))
    verify = _verify(_table(data, "verify", required=False), executor)

    if resources.max_seconds > price.deadline_seconds:
        raise _invalid(
            "resources.max_seconds",
            f"{resources.max_seconds} is longer than price.deadline_seconds "
            f"({price.deadline_seconds}): the job could never finish in time",
            "lower resources.max_seconds or raise price.deadline_seconds",
        )
    return JobSpec(
        name=name,
        executor=executor,
        program=program,
        circuit=circuit,
        args=args,
        inputs=inputs,
        resources=resources,
        price=price,
        verify=verify,
    )


# --- sections ---------------------------------------------------------------


def _args(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _invalid(
            "args", f"must be a list of strings, got {_tname(value)}", 'e.g. args = ["10"]'
        )
    if len(value) > MAX_ARGS:
        raise _invalid(
            "args",
            f"has {len(value)} items, the most is {MAX_ARGS}",
            "pass large data as an input file",
        )
    for i, arg in enumerate(value):
        if not isinstance(arg, str):
            raise _invalid(
                f"args[{i}]",
                f"must be a string, got {_tname(arg)}",
                f"quote it: args = [{str(arg)!r}]".replace("'", '"'),
            )
        try:
            size = len(arg.encode("utf-8"))
        except UnicodeEncodeError:  # a lone surrogate: not text a program can receive
            size = MAX_ARG_BYTES + 1
        if size > MAX_ARG_BYTES or "\x00" in arg:
            raise _invalid(
                f"args[{i}]",
                f"must be valid text of at most {MAX_ARG_BYTES} bytes with no NUL character",
                "pass large data as an input file",
            )
    return tuple(value)


def _inputs(value: Any, base_dir: Path) -> tuple[ContentRef, ...]:
    if not isinstance(value, list):
        raise _invalid(
            "inputs",
            f"must be a list of paths or CIDs, got {_tname(value)}",
            'e.g. inputs = ["data/"]',
        )
    if len(value) > MAX_INPUTS:
        raise _invalid(
            "inputs",
            f"has {len(value)} items, the most is {MAX_INPUTS}",
            "put the files in a folder",
        )
    refs: list[ContentRef] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(value):
        field = f"inputs[{i}]"
        if not isinstance(item, str):
            raise _invalid(
                field,
                f"must be a path or a CID string, got {_tname(item)}",
                'e.g. inputs = ["data/"]',
            )
        ref = _content_ref(item, field, base_dir, want_file=False)
        _check_input_name(ref, item, field)
        if ref.name in seen:
            raise _invalid(
                field,
                f"would be mounted as /in/{ref.name}, like inputs[{seen[ref.name]}]",
                "give the inputs different names, or put them in one folder",
            )
        seen[ref.name] = i
        refs.append(ref)
    return tuple(refs)


def _resources(table: Mapping[str, Any], executor: str) -> Resources:
    _check_keys(table, _RESOURCE_KEYS, prefix="resources.")
    d = ZK_RESOURCE_DEFAULTS if executor == ZK_EXECUTOR else Resources()
    cpu = _int(table, "cpu", "resources.", d.cpu, lo=1, hi=MAX_CPU, unit="cores")
    memory_mb = _int(
        table, "memory_mb", "resources.", d.memory_mb, lo=1, hi=MAX_MEMORY_MB, unit="MB (1 TiB)"
    )
    gpu = _int(table, "gpu", "resources.", d.gpu, lo=0, hi=MAX_GPU, unit="GPUs")
    max_seconds = _int(
        table,
        "max_seconds",
        "resources.",
        d.max_seconds,
        lo=1,
        hi=MAX_DEADLINE_SECONDS,
        unit="seconds",
    )
    max_fuel = None
    if "max_fuel" in table:
        max_fuel = _int(table, "max_fuel", "resources.", None, lo=1, hi=MAX_FUEL, unit="units")
        if executor != "wasm":
            raise _invalid(
                "resources.max_fuel", 'is only meaningful for executor = "wasm"', "remove it"
            )
    if gpu and executor == "wasm":
        raise _invalid(
            "resources.gpu",
            f"asks for {gpu} GPU(s) but wasm jobs cannot use a GPU",
            "remove resources.gpu or use a GPU-capable executor when one is available",
        )
    return Resources(
        cpu=cpu, memory_mb=memory_mb, gpu=gpu, max_seconds=max_seconds, max_fuel=max_fuel
    )


def _price(table: Mapping[str, Any]) -> Price:
    _check_keys(table, _PRICE_KEYS, prefix="price.")
    if "max_total" not in table:
        raise _invalid(
            "price.max_total",
            "is missing: the most you will pay must be explicit",
            'e.g. max_total = "1000000000000000" (token base units)',
        )
    raw = table["max_total"]
    if not isinstance(raw, str):
        raise _invalid(
            "price.max_total",
            f"must be a string of digits (token base units), got {_tname(raw)}",
            f'quote it: max_total = "{raw}" (TOML integers are too small for token amounts)',
        )
    if not raw.isascii() or not raw.isdigit():
        raise _invalid(
            "price.max_total",
            f"{raw!r} is not a non-negative integer",
            'write whole token base units with digits only, e.g. "1000000000000000"',
        )
    max_total = int(raw)
    if max_total == 0 or max_total > MAX_TOTAL:
        raise _invalid(
            "price.max_total",
            f"{raw} is out of range: it must be at least 1 and fit in 256 bits",
            "set the most you are willing to pay, in token base units",
        )
    deadline = _int(
        table,
        "deadline_seconds",
        "price.",
        Price(0).deadline_seconds,
        lo=1,
        hi=MAX_DEADLINE_SECONDS,
        unit="seconds",
    )
    return Price(max_total=max_total, deadline_seconds=deadline)


def _verify(table: Mapping[str, Any], executor: str) -> Verify:
    _check_keys(table, _VERIFY_KEYS, prefix="verify.")
    required = _VERIFY_MODE_OF.get(executor)
    mode = table.get("mode", required or Verify().mode)
    if not isinstance(mode, str):
        raise _invalid(
            "verify.mode", f"must be a string, got {_tname(mode)}", 'e.g. mode = "receipt"'
        )
    if mode not in VERIFY_MODES:
        reason = (
            f"verify mode {mode!r} is not supported yet"
            if mode in _PLANNED_VERIFY_MODES
            else f"unknown verify mode {mode!r}"
        )
        raise _invalid("verify.mode", reason, f"use one of: {', '.join(sorted(VERIFY_MODES))}")
    if required is not None and mode != required:
        raise _invalid(
            "verify.mode",
            f"{executor} jobs are checked by their proof, not by {mode!r}",
            f'use mode = "{required}", or leave [verify] out',
        )
    owner = next((ex for ex, m in _VERIFY_MODE_OF.items() if m == mode), None)
    if owner is not None and owner != executor:
        raise _invalid(
            "verify.mode",
            f'{mode!r} checks a proof, and only executor = "{owner}" jobs make one',
            f'use mode = "receipt" for {executor} jobs, or executor = "{owner}"',
        )
    for key in table:
        if key != "mode" and _VERIFY_MODE_KEYS[key] != mode:
            raise _invalid(
                f"verify.{key}",
                f'only mode = "{_VERIFY_MODE_KEYS[key]}" reads it, this job\'s mode is {mode!r}',
                f'remove verify.{key}, or use mode = "{_VERIFY_MODE_KEYS[key]}"',
            )
    default = Verify()
    spot_check = table.get("spot_check", default.spot_check)
    if isinstance(spot_check, bool) or not isinstance(spot_check, (int, float)):
        raise _invalid(
            "verify.spot_check", f"must be a number, got {_tname(spot_check)}", "e.g. 0.05"
        )
    if not 0.0 <= spot_check <= 1.0:
        raise _invalid(
            "verify.spot_check",
            f"{spot_check} is not a fraction",
            "use a number from 0 to 1, e.g. 0.05 re-runs one job in twenty",
        )
    tolerance = table.get("tolerance", default.tolerance)
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)):
        raise _invalid(
            "verify.tolerance", f"must be a number, got {_tname(tolerance)}", "e.g. 1e-9"
        )
    if not 0.0 <= tolerance < 1.0:
        raise _invalid(
            "verify.tolerance",
            f"{tolerance} is out of range",
            "use a relative tolerance from 0 to below 1, e.g. 1e-9",
        )
    names = {}
    for key in ("a", "b", "c"):
        value = table.get(key, getattr(default, key))
        if (
            not isinstance(value, str)
            or not value
            or value in (".", "..")
            or "/" in value
            or "\x00" in value
            or len(value.encode()) > MAX_INPUT_NAME_BYTES
            or any(ord(ch) < 32 or ord(ch) == 127 for ch in value)
        ):
            raise _invalid(
                f"verify.{key}",
                f"{value!r} is not a plain file name",
                'name a .npy file, e.g. a = "a.npy"',
            )
        names[key] = value
    return Verify(
        mode=mode,
        replicas=_int(
            table, "replicas", "verify.", default.replicas, lo=2, hi=MAX_REPLICAS, unit=""
        ),
        max_rounds=_int(
            table,
            "max_rounds",
            "verify.",
            default.max_rounds,
            lo=1,
            hi=MAX_REPLICATE_ROUNDS,
            unit="",
        ),
        spot_check=float(spot_check),
        rounds=_int(
            table, "rounds", "verify.", default.rounds, lo=1, hi=MAX_FREIVALDS_ROUNDS, unit=""
        ),
        tolerance=float(tolerance),
        **names,
    )


# --- zk jobs ----------------------------------------------------------------


def _zk_only_keys(data: Mapping[str, Any]) -> None:
    if "program" in data:
        raise _invalid(
            "program",
            "zk-groth16 jobs run a circuit, not a program",
            'name the circuit instead: circuit = "private_stats" (a shipped name, a folder or a CID)',
        )
    if data.get("args"):
        raise _invalid(
            "args",
            "zk-groth16 jobs take no arguments",
            "give the circuit's input signals in the input JSON file",
        )


def _circuit(value: str, base_dir: Path) -> ContentRef:
    """A CID, an existing folder (relative to job.toml), or a shipped circuit's name."""
    if value.startswith(_CID_PREFIXES) or "/" in value or value in (".", ".."):
        return _content_ref(value, "circuit", base_dir, want_file=False, want_dir=True)
    try:
        local = (base_dir / value).exists()
    except (OSError, ValueError):
        local = False
    if local:
        return _content_ref(value, "circuit", base_dir, want_file=False, want_dir=True)
    shipped = _shipped_circuits()
    if value in shipped:
        return ContentRef("path", str(Path(shipped[value]).resolve()))
    names = ", ".join(sorted(shipped)) or "none are installed"
    raise _invalid(
        "circuit",
        f"{value!r} is neither a folder next to job.toml nor a shipped circuit ({names})",
        "name a shipped circuit (`mask zk circuits` lists them), a circuit folder or a CID",
    )


def _shipped_circuits() -> dict[str, Path]:
    from zkp.circuit import shipped_circuits  # the zkp package, only for zk jobs

    return dict(shipped_circuits())


def _zk_inputs(inputs: tuple[ContentRef, ...]) -> None:
    if len(inputs) != 1 or (inputs[0].kind == "path" and not Path(inputs[0].value).is_file()):
        got = f"{len(inputs)} inputs" if len(inputs) != 1 else "a folder"
        raise _invalid(
            "inputs",
            f"a zk-groth16 job takes one JSON file of the circuit's input signals, got {got}",
            'e.g. inputs = ["input.json"] (every input signal but binding, which the provider adds)',
        )


# --- helpers ----------------------------------------------------------------


def _check_input_name(ref: ContentRef, value: str, field: str) -> None:
    """An input becomes ``/in/<name>`` in the bundle: one plain, printable file name."""
    last = value.rstrip("/").rsplit("/", 1)[-1]
    name = ref.name
    if ref.kind == "path" and last in ("", ".", ".."):
        raise _invalid(
            field,
            f"{value!r} names no file or folder of its own (it would be mounted as /in/{name})",
            'name the file or folder itself, e.g. inputs = ["data/"]',
        )
    if name in ("", ".", "..") or "/" in name:
        raise _invalid(field, f"{name!r} cannot be a file name under /in", "rename it")
    if any(unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") for c in name):
        raise _invalid(
            field,
            f"the name {name!r} has a control character",
            "rename the file or folder to printable characters",
        )
    if len(name.encode("utf-8", "surrogatepass")) > MAX_INPUT_NAME_BYTES:
        raise _invalid(
            field,
            f"the name is longer than {MAX_INPUT_NAME_BYTES} bytes",
            "rename the file or folder",
        )


def _content_ref(
    value: str, field: str, base_dir: Path, *, want_file: bool, want_dir: bool = False
) -> ContentRef:
    """A CID if it looks like one and decodes; otherwise a path that must exist."""
    if not value:
        raise _invalid(field, "is empty", "give a path relative to job.toml, or a CID")
    if "\x00" in value:
        raise _invalid(field, "contains a NUL character", "give a path or a CID")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise _invalid(
            field, f"is longer than {MAX_PATH_BYTES} bytes", "give a shorter path, or a CID"
        )
    if value.startswith(_CID_PREFIXES):
        try:
            return ContentRef("cid", str(CID.decode(value)))
        except (ValueError, KeyError, TypeError) as e:
            cid_error: Exception | None = e
    else:
        cid_error = None
    try:
        path = (base_dir / value).resolve()
        exists = path.exists()
        is_file = exists and path.is_file()
    except (OSError, ValueError, RuntimeError) as e:  # EACCES, ENAMETOOLONG, a symlink loop
        raise _invalid(
            field,
            f"{value!r} cannot be checked: {getattr(e, 'strerror', None) or e}",
            "give a readable path relative to job.toml, or a CID",
        ) from None
    if exists:
        if want_file and not is_file:
            raise _invalid(
                field,
                f"{value!r} is not a file",
                "point it at the compiled program, e.g. hello.wasm",
            )
        if want_dir and is_file:
            raise _invalid(
                field,
                f"{value!r} is a file, not a circuit folder",
                "point it at the folder holding circuit.json and the circuit's keys",
            )
        return ContentRef("path", str(path))
    if cid_error is not None:
        raise _invalid(
            field,
            f"{value!r} is neither an existing path nor a valid CID ({cid_error})",
            "check the CID, or the path relative to job.toml",
        )
    raise _invalid(
        field,
        f"{value!r} does not exist (looked for {path})",
        "paths are relative to the folder that holds job.toml; build the program first?",
    )


def _table(data: Mapping[str, Any], key: str, *, required: bool) -> Mapping[str, Any]:
    if key not in data:
        if required:
            raise _invalid(key, f"the [{key}] table is missing", "see docs/jobspec.md")
        return {}
    value = data[key]
    if not isinstance(value, Mapping):
        raise _invalid(
            key, f"must be a table, got {_tname(value)}", f"write it as a [{key}] section"
        )
    return value


def _check_keys(table: Mapping[str, Any], known: tuple[str, ...], *, prefix: str) -> None:
    for key in table:
        if not isinstance(key, str) or key not in known:
            raise _invalid(
                f"{prefix}{key}",
                "unknown key",
                f"known keys{' in [' + prefix[:-1] + ']' if prefix else ''}: {', '.join(known)}",
            )


def _require_str(data: Mapping[str, Any], key: str, prefix: str) -> str:
    if key not in data:
        raise _invalid(f"{prefix}{key}", "is missing", "see docs/jobspec.md for the required keys")
    value = data[key]
    if not isinstance(value, str):
        raise _invalid(
            f"{prefix}{key}", f"must be a string, got {_tname(value)}", f'e.g. {key} = "..."'
        )
    return value


def _int(
    table: Mapping[str, Any],
    key: str,
    prefix: str,
    default: int | None,
    *,
    lo: int,
    hi: int,
    unit: str,
) -> int:
    value = table.get(key, default)
    field = f"{prefix}{key}"
    # bool is an int in Python; `cpu = true` is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            hint = f"write it without a decimal point: {key} = {int(value)}"
        else:
            hint = f"write a whole number, e.g. {key} = {default if default is not None else lo}"
        raise _invalid(field, f"must be an integer, got {_tname(value)}", hint)
    if not lo <= value <= hi:
        raise _invalid(
            field, f"{value} is out of range [{lo}, {hi}] {unit}", f"use a value from {lo} to {hi}"
        )
    return value


def _tname(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a float",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def _invalid(field: str | None, reason: str, hint: str) -> JobError:
    message = f"job spec: {field}: {reason}" if field else f"job spec: {reason}"
    return JobError(message, hint=hint, code="spec_invalid")

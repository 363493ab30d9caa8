"""Groth16 provers: one interface, three implementations, checked before use.

- ``native``: :class:`PythonProver` over zksnake's arkworks MSM. The witness
  comes from ``zkp.witness`` (the circuit's WASM under wasmtime limits), the
  arithmetic from ``zkp.groth16`` (snarkjs's algorithm). The fastest here.
- ``snarkjs``: :class:`SnarkjsProver`, snarkjs's ``groth16 fullprove`` run
  as an external program (node, from ``.zktools``, ``make zktools``) in a
  private temporary directory, killed at its deadline or on cancel.
- ``python``: :class:`PythonProver` over py-ecc, the pure-Python fallback for
  small circuits (seconds for hundreds of constraints, minutes for thousands).

:func:`available_provers` proves the shipped ``poseidon_preimage`` circuit
with each installed prover and verifies the proof (``zkp.verify``); only
those that pass are returned, fastest first. A provider advertises
``zk-groth16`` only when one does. Every failure is a :class:`ProverError`
(or the :class:`zkp.witness.WitnessError` of a bad input) with a reason.

Blocking: call :meth:`Prover.prove` in a worker thread. Randomness for the
proof's blinding comes from ``secrets`` unless a test injects an RNG.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from protocol.errors import MaskError
from zkp.circuit import Circuit, load_circuit, shipped_circuits
from zkp.formats import (
    SCALAR_FIELD,
    Proof,
    ZkFormatError,
    load_json_file,
    parse_proof,
    parse_public,
)
from zkp.witness import WitnessError, WitnessLimits, compute_witness

__all__ = [
    "Prover",
    "ProverCheck",
    "ProverError",
    "PythonProver",
    "SnarkjsProver",
    "available_provers",
    "check_provers",
    "prover_names",
    "select_prover",
    "zktools_dir",
]

_CHECK_CIRCUIT = "poseidon_preimage"
_CHECK_INPUTS = {"preimage": ["1", "2"], "binding": "5"}
_MAX_LOG = 64 << 10  # bytes of a prover's stderr kept
_MAX_RESULT_JSON = 1 << 20


class ProverError(MaskError):
    """A proof could not be made; ``reason`` says why in one line.

    ``code``: ``prove_failed`` (the prover broke or refused the key),
    ``prove_timeout``, ``prove_cancelled``, ``prover_unavailable``."""

    code = "prove_failed"

    def __init__(self, reason: str, *, code: str | None = None, hint: str | None = None) -> None:
        super().__init__(reason, hint=hint, code=code)
        self.reason = reason


@runtime_checkable
class Prover(Protocol):
    """Makes a Groth16 proof for a circuit and its inputs (binding included)."""

    name: str

    def prove(
        self, circuit: Circuit, inputs: Mapping[str, Any], *, deadline_s: float
    ) -> tuple[Proof, tuple[int, ...]]:
        """(proof, public signals), or ProverError / WitnessError. Blocking."""
        ...


def _timeout(deadline_s: float) -> ProverError:
    return ProverError(
        f"timeout: proving took longer than {deadline_s:g} s",
        code="prove_timeout",
        hint="raise the job's time limit, or use a smaller circuit",
    )


# --- the in-process prover ---------------------------------------------------------


class _KeyCache:
    """Prepared proving keys by the zkey's sha256 (parsing and loading the points
    into the backend costs more than a proof of a small circuit)."""

    def __init__(self, entries: int = 4) -> None:
        self._items: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._entries = entries
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str], make: Callable[[], Any]) -> Any:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
                return item
        item = make()
        with self._lock:
            self._items[key] = item
            while len(self._items) > self._entries:
                self._items.popitem(last=False)
        return item


_KEYS = _KeyCache()


class PythonProver:
    """Witness by ``zkp.witness``, proof by ``zkp.groth16`` with a curve backend.

    ``curve="native"`` (zksnake) or ``"python"`` (py-ecc). ``rng`` returns a
    random scalar below its argument (default ``secrets.randbelow``);
    ``max_zkey_bytes`` bounds the key read; ``witness_limits`` bound the WASM."""

    def __init__(
        self,
        curve: str = "native",
        *,
        rng: Callable[[int], int] = secrets.randbelow,
        witness_limits: WitnessLimits = WitnessLimits(),
        max_zkey_bytes: int = 64 << 20,
    ) -> None:
        if curve not in ("native", "python"):
            raise ValueError(f"unknown curve backend {curve!r}: native or python")
        self.name = curve
        self._rng = rng
        self._witness_limits = witness_limits
        self._max_zkey_bytes = max_zkey_bytes

    def available(self) -> bool:
        if self.name == "native":
            from zkp.curves import native_available

            return native_available()
        return True

    def _ops(self) -> Any:
        from zkp.curves import NativeCurve, PyEccCurve

        return NativeCurve() if self.name == "native" else PyEccCurve()

    def _prepared(self, circuit: Circuit) -> Any:
        import hashlib

        from zkp.curves import CurveError
        from zkp.groth16 import PreparedKey
        from zkp.zkey import ZkeyError, parse_zkey

        data = _read_capped(circuit.zkey_path, self._max_zkey_bytes)
        digest = hashlib.sha256(data).hexdigest()

        def make() -> Any:
            try:
                return PreparedKey(parse_zkey(data), self._ops())
            except ZkeyError as e:
                raise ProverError(e.reason, hint=e.hint) from None
            except CurveError as e:
                raise ProverError(f"circuit.zkey: {e}") from None

        prepared = _KEYS.get((self.name, digest), make)
        if prepared.pk.verifying_key() != circuit.vk:
            raise ProverError(
                "circuit.zkey does not match verification_key.json: its proofs would not verify",
                hint="circuit.zkey and verification_key.json must come from the same setup",
            )
        return prepared

    def prove(
        self,
        circuit: Circuit,
        inputs: Mapping[str, Any],
        *,
        deadline_s: float,
        cancel: threading.Event | None = None,
    ) -> tuple[Proof, tuple[int, ...]]:
        from zkp.groth16 import prove

        start = time.monotonic()
        limits = self._witness_limits
        witness = compute_witness(
            circuit,
            inputs,
            max_fuel=limits.max_fuel,
            max_memory_mb=limits.max_memory_mb,
            deadline_s=deadline_s,
            limits=limits,
            cancel=cancel,
        )

        def check() -> None:
            if cancel is not None and cancel.is_set():
                raise ProverError("cancelled", code="prove_cancelled")
            if time.monotonic() - start > deadline_s:
                raise _timeout(deadline_s)

        check()
        key = self._prepared(circuit)
        if len(witness) != key.pk.n_vars:
            raise ProverError(
                f"the witness generator made {len(witness)} values; circuit.zkey wants "
                f"{key.pk.n_vars}: circuit.wasm and circuit.zkey are of different circuits"
            )
        r = self._rng(SCALAR_FIELD)
        s = self._rng(SCALAR_FIELD)
        return prove(key, witness, r, s, check)


def _read_capped(path: Path, cap: int) -> bytes:
    flags = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
        with os.fdopen(fd, "rb") as f:
            data = f.read(cap + 1)
    except OSError as e:
        raise ProverError(f"cannot read {path.name}: {e.strerror}") from None
    if len(data) > cap:
        raise ProverError(f"{path.name} is over the {cap}-byte limit")
    return data


# --- snarkjs as an external program -------------------------------------------------


def zktools_dir() -> Path:
    """Where ``make zktools`` installs snarkjs (``MASK_ZKTOOLS_DIR`` overrides)."""
    override = os.environ.get("MASK_ZKTOOLS_DIR")
    if override:
        return Path(override)
    return Path(__file__).resolve().parent.parent / ".zktools"


class SnarkjsProver:
    """``snarkjs groth16 fullprove`` run by node, bounded in time and output."""

    name = "snarkjs"

    def __init__(self, tools_dir: str | os.PathLike[str] | None = None, *, node: str | None = None):
        self._tools = Path(tools_dir) if tools_dir is not None else zktools_dir()
        self._node = node or shutil.which("node")

    @property
    def cli(self) -> Path:
        return self._tools / "node_modules" / "snarkjs" / "build" / "cli.cjs"

    def available(self) -> bool:
        return self._node is not None and self.cli.is_file()

    def prove(
        self,
        circuit: Circuit,
        inputs: Mapping[str, Any],
        *,
        deadline_s: float,
        cancel: threading.Event | None = None,
    ) -> tuple[Proof, tuple[int, ...]]:
        if not self.available():
            raise ProverError(
                "snarkjs is not installed",
                code="prover_unavailable",
                hint="run `make zktools` (needs Node.js 20 and npm)",
            )
        with tempfile.TemporaryDirectory(prefix="maskd-snarkjs-") as tmp:
            work = Path(tmp)
            os.chmod(work, 0o700)
            (work / "input.json").write_text(json.dumps(_json_inputs(inputs)))
            argv = [
                str(self._node),
                str(self.cli),
                "groth16",
                "fullprove",
                "input.json",
                str(circuit.wasm_path.resolve()),
                str(circuit.zkey_path.resolve()),
                "proof.json",
                "public.json",
            ]
            code, log = _run_bounded(argv, work, deadline_s, cancel)
            if code != 0:
                raise ProverError(_snarkjs_failure(log), hint=_snarkjs_hint(log))
            try:
                proof = parse_proof(load_json_file(work / "proof.json", max_bytes=_MAX_RESULT_JSON))
                public = parse_public(
                    load_json_file(work / "public.json", max_bytes=_MAX_RESULT_JSON)
                )
            except (OSError, ZkFormatError) as e:
                reason = e.reason if isinstance(e, ZkFormatError) else str(e)
                raise ProverError(f"snarkjs wrote no usable proof: {reason}") from None
        return proof, public


def _json_inputs(inputs: Mapping[str, Any]) -> Any:
    """Inputs as snarkjs reads them: every number a decimal string."""

    def convert(value: Any, depth: int = 0) -> Any:
        if depth > 32:
            raise WitnessError("inputs nested too deeply", code="witness_input_invalid")
        if isinstance(value, Mapping):
            return {str(k): convert(v, depth + 1) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [convert(v, depth + 1) for v in value]
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise WitnessError(
                f"an input value is a {type(value).__name__}, not a number",
                code="witness_input_invalid",
            )
        return str(value)

    return convert(inputs)


def _run_bounded(
    argv: list[str], cwd: Path, deadline_s: float, cancel: threading.Event | None
) -> tuple[int, str]:
    """Run ``argv`` in its own process group; kill the group at the deadline or on
    cancel. Returns (exit code, the tail of stdout+stderr)."""
    log_path = cwd / "prover.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "NODE_NO_WARNINGS": "1"},
        )
        stopped: str | None = None
        end = time.monotonic() + deadline_s
        try:
            while True:
                try:
                    proc.wait(timeout=0.05)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if cancel is not None and cancel.is_set():
                    stopped = "cancelled"
                elif time.monotonic() >= end:
                    stopped = "timeout"
                if stopped is not None:
                    _kill_group(proc)
                    break
        finally:
            if proc.poll() is None:
                _kill_group(proc)
    if stopped == "cancelled":
        raise ProverError("cancelled", code="prove_cancelled")
    if stopped == "timeout":
        raise _timeout(deadline_s)
    size = log_path.stat().st_size
    with open(log_path, "rb") as f:
        f.seek(max(0, size - _MAX_LOG))
        tail = f.read(_MAX_LOG).decode("utf-8", "replace")
    return proc.returncode, tail


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _snarkjs_failure(log: str) -> str:
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error" in line]
    last = (errors or lines or ["no output"])[-1]
    cleaned = "".join(c if c.isprintable() else " " for c in last)
    if "Assert Failed" in log:
        cleaned = "assert failed: the inputs do not satisfy the circuit (" + cleaned[:160] + ")"
    return f"snarkjs failed: {cleaned[:300]}"


def _snarkjs_hint(log: str) -> str | None:
    if "Assert Failed" in log or "Not enough values" in log or "Too many values" in log:
        return "check the inputs against the circuit (circuit.json, inputs)"
    return None


# --- choosing a prover ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProverCheck:
    """The start-up check of one prover: ``ok`` with its time, or why not."""

    name: str
    ok: bool
    seconds: float
    reason: str | None = None
    prover: Any = None


def _candidates() -> list[Any]:
    return [PythonProver("native"), SnarkjsProver(), PythonProver("python")]


def prover_names() -> list[str]:
    """Every prover name, in default preference order."""
    return [p.name for p in _candidates()]


def check_provers(
    candidates: list[Any] | None = None,
    *,
    circuit_dir: Path | None = None,
    deadline_s: float = 120.0,
) -> list[ProverCheck]:
    """Prove and verify the shipped poseidon_preimage circuit with each installed
    prover; one :class:`ProverCheck` per candidate, in the order given."""
    from zkp.verify import verify

    provers = candidates if candidates is not None else _candidates()
    results: list[ProverCheck] = []
    try:
        circuit = load_circuit(circuit_dir or shipped_circuits()[_CHECK_CIRCUIT])
    except (KeyError, MaskError) as e:
        reason = f"the check circuit {_CHECK_CIRCUIT} cannot be loaded: {e}"
        return [ProverCheck(p.name, False, 0.0, reason) for p in provers]
    try:  # compile the circuit's WASM once, so no prover's time includes it
        compute_witness(circuit, _CHECK_INPUTS, deadline_s=deadline_s)
    except WitnessError:
        pass  # each prover meets the same error below and reports it
    for prover in provers:
        if hasattr(prover, "available") and not prover.available():
            results.append(ProverCheck(prover.name, False, 0.0, "not installed"))
            continue
        start = time.monotonic()
        try:
            proof, public = prover.prove(circuit, _CHECK_INPUTS, deadline_s=deadline_s)
            verdict = verify(circuit.vk, proof, public)
            reason = None if verdict.valid else f"its proof does not verify: {verdict.reason}"
        except MaskError as e:
            reason = str(e)
        except Exception as e:  # a broken install must not stop the node
            reason = f"{type(e).__name__}: {e}"
        seconds = time.monotonic() - start
        results.append(ProverCheck(prover.name, reason is None, seconds, reason, prover))
    return results


def available_provers(*, check: bool = True) -> list[Prover]:
    """The provers that work here. ``check=True`` proves and verifies a small
    statement with each and orders them fastest first; ``check=False`` only
    looks at what is installed, in default preference order."""
    if not check:
        return [p for p in _candidates() if p.available()]
    checks = [c for c in check_provers() if c.ok]
    checks.sort(key=lambda c: c.seconds)
    return [c.prover for c in checks]


def select_prover(name: str | None = None) -> Prover:
    """The prover called ``name`` if installed, or the preferred installed one."""
    candidates = _candidates()
    if name is None or name == "auto":
        for prover in candidates:
            if prover.available():
                return prover
        raise ProverError("no Groth16 prover is installed", code="prover_unavailable")
    for prover in candidates:
        if prover.name == name:
            if not prover.available():
                raise ProverError(
                    f"the {name} prover is not installed here",
                    code="prover_unavailable",
                    hint="native needs the zksnake wheel; snarkjs needs `make zktools`",
                )
            return prover
    names = ", ".join(p.name for p in candidates)
    raise ProverError(f"no prover called {name[:40]!r}", hint=f"known provers: {names}")

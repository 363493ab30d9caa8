"""Witness generation: run circom's WASM witness generator under limits.

A circuit can come from a requester, and its ``circuit.wasm`` is then hostile
code. It runs in wasmtime (the project's pinned runtime, configured as
``worker.wasm`` configures it) with a fuel budget, a memory cap and a
wall-clock deadline (epoch interruption: a per-run engine whose epoch a timer
thread bumps at the deadline or on cancel), and no imports but circom's four
runtime callbacks: no WASI, no files, no clock.

The protocol is the one circom's ``witness_calculator.js`` speaks:

- the module imports ``runtime.exceptionHandler(code)``,
  ``printErrorMessage()``, ``writeBufferMessage()`` and
  ``showSharedRWMemory()``; messages are read a char at a time from
  ``getMessageChar()`` until 0;
- ``getVersion()`` (2), ``getFieldNumLen32()`` (8 for BN254) and
  ``getRawPrime()`` describe the field; the prime must be BN254's r;
- ``init(1)`` (sanity checks on), then for every input value: its 8 32-bit
  limbs, least significant first, go to ``writeSharedRWMemory(i, limb)``, and
  ``setInputSignal(hMSB, hLSB, index)`` sets it, where ``hMSB:hLSB`` is the
  64-bit FNV-1a hash of the signal's name (``a.b`` for a member, ``a[1].b``
  inside an array of structs). ``getInputSignalSize`` tells how many values a
  name takes (negative: no such input);
- once ``getInputSize()`` values are set the circuit has run; then
  ``getWitness(i)`` puts witness value i in the shared memory for
  ``readSharedRWMemory(0..7)``, for ``i < getWitnessSize()``.

Errors are :class:`WitnessError` with a stable ``code`` and a reason such as
``assert failed in template PrivateStats line 60``, ``unknown input signal
y`` or ``too many values for input x``. Synchronous and blocking: call it in a
worker thread; wasmtime releases the GIL while the circuit runs.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import wasmtime

from protocol.errors import MaskError
from zkp.binding import SNARK_SCALAR_FIELD

if TYPE_CHECKING:
    from zkp.circuit import Circuit

__all__ = [
    "WitnessError",
    "WitnessLimits",
    "compute_witness",
    "flatten_inputs",
    "signal_hash",
]

_N32 = 8  # 32-bit limbs per BN254 field element
_VERSION = 2
_MAX_MESSAGE = 1024  # chars read from one circom message
_MAX_ERROR_TEXT = 4096  # chars of error messages kept per run
_MAX_NAME = 256  # characters in a qualified input name
_MAX_DEPTH = 16  # nesting of input lists and objects
_MAX_DIGITS = 80  # of one decimal input value
_MAX_WASM_BYTES = 64 << 20

# circom's runtime error codes, as witness_calculator.js names them.
_CIRCOM_ERRORS = {
    1: "signal not found",
    2: "too many signals set",
    3: "signal already set",
    4: "assert failed",
    5: "not enough memory",
    6: "input signal array access exceeds the size",
    7: "out of bounds array access",
}
_TEMPLATE_LINE = re.compile(r"Error in template ([A-Za-z_$][A-Za-z0-9_$]*?)(?:_\d+)? line: (\d+)")


class WitnessError(MaskError):
    """The witness could not be computed; ``reason`` says why in one line.

    ``code`` is one of: ``witness_input_invalid`` (an unknown, missing or
    malformed input), ``witness_assert_failed`` (the inputs violate the
    circuit), ``witness_timeout``, ``witness_out_of_fuel``,
    ``witness_memory_limit``, ``witness_cancelled``, ``witness_invalid_module``
    (not a circom witness generator for BN254)."""

    code = "witness_failed"

    def __init__(self, reason: str, *, code: str, hint: str | None = None) -> None:
        super().__init__(reason, hint=hint, code=code)
        self.reason = reason


def _input_error(reason: str) -> WitnessError:
    return WitnessError(
        reason,
        code="witness_input_invalid",
        hint="name exactly the circuit's input signals (circuit.json, inputs), each value "
        "an integer or a decimal string, arrays as (nested) lists",
    )


def _module_error(reason: str) -> WitnessError:
    return WitnessError(
        reason,
        code="witness_invalid_module",
        hint="circuit.wasm must be the witness generator circom 2 writes (--wasm) for bn128",
    )


@dataclass(frozen=True, slots=True)
class WitnessLimits:
    """Bounds on one witness computation."""

    max_fuel: int = 50_000_000_000
    max_memory_mb: int = 512
    deadline_s: float = 120.0
    max_witness: int = 1 << 22  # witness values
    max_inputs: int = 1 << 20  # input values

    def __post_init__(self) -> None:
        if not 0 < self.max_fuel <= 2**63 - 1:
            raise ValueError("max_fuel must be in [1, 2**63 - 1]")
        if not 1 <= self.max_memory_mb <= 1 << 16:
            raise ValueError("max_memory_mb must be in [1, 65536]")
        if not self.deadline_s > 0:
            raise ValueError("deadline_s must be > 0")


# --- inputs (pure) ---------------------------------------------------------------


def signal_hash(name: str) -> tuple[int, int]:
    """FNV-1a 64 of a qualified signal name, as (high, low) 32-bit halves."""
    h = 0xCBF29CE484222325
    for ch in name:
        h ^= ord(ch)
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h >> 32, h & 0xFFFFFFFF


def _field_value(value: object, where: str) -> int:
    if isinstance(value, bool):
        raise _input_error(f"input {where}: {value!r} is not a number")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str):
        text = value.strip()
        if len(text) > _MAX_DIGITS:
            raise _input_error(f"input {where}: a number of more than {_MAX_DIGITS} characters")
        try:
            number = int(text, 16) if text.lower().startswith(("0x", "-0x")) else int(text, 10)
        except ValueError:
            raise _input_error(f"input {where}: {text[:40]!r} is not a number") from None
    else:
        raise _input_error(f"input {where}: a {type(value).__name__} is not a number")
    if not -SNARK_SCALAR_FIELD < number < SNARK_SCALAR_FIELD:
        raise _input_error(f"input {where}: the value is outside the BN254 scalar field")
    return number % SNARK_SCALAR_FIELD


def _flat_values(
    value: object, where: str, depth: int, out: list[int], cap: int, total: int
) -> None:
    if isinstance(value, list | tuple):
        if depth >= _MAX_DEPTH:
            raise _input_error(f"input {where}: nested more than {_MAX_DEPTH} deep")
        for item in value:
            _flat_values(item, where, depth + 1, out, cap, total)
        return
    if len(out) >= cap:
        raise _input_error(f"more than {total} input values")
    out.append(_field_value(value, where))


def _contains_object(value: object, depth: int = 0) -> bool:
    if isinstance(value, Mapping):
        return True
    if isinstance(value, list | tuple) and depth < _MAX_DEPTH:
        return any(_contains_object(v, depth + 1) for v in value)
    return False


def _qualify(
    prefix: str, value: object, depth: int, out: dict[str, list[int]], count: list[int], cap: int
) -> None:
    """circom's qualify_input: objects become ``a.b``, arrays of objects ``a[i].b``."""
    if depth > _MAX_DEPTH:
        raise _input_error(f"input {prefix[:60]}: nested more than {_MAX_DEPTH} deep")
    if len(prefix) > _MAX_NAME:
        raise _input_error(f"input name {prefix[:60]}...: longer than {_MAX_NAME} characters")
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str) or not key or not key.isascii() or not key.isprintable():
                raise _input_error(f"input {prefix[:60]}: a member name {str(key)[:40]!r}")
            _qualify(f"{prefix}.{key}" if prefix else key, item, depth + 1, out, count, cap)
        return
    if isinstance(value, list | tuple) and _contains_object(value):
        for i, item in enumerate(value):
            _qualify(f"{prefix}[{i}]", item, depth + 1, out, count, cap)
        return
    values: list[int] = []
    _flat_values(value, prefix, depth, values, cap - count[0], cap)
    count[0] += len(values)
    out[prefix] = values


def flatten_inputs(inputs: Mapping[str, Any], max_values: int = 1 << 20) -> dict[str, list[int]]:
    """Inputs as circom addresses them: qualified name -> field elements. Pure."""
    if not isinstance(inputs, Mapping):
        raise _input_error("the inputs must be an object of signal names")
    out: dict[str, list[int]] = {}
    _qualify("", inputs, 0, out, [0], max_values)
    return out


def _check_declared(inputs: Mapping[str, Any], declared: tuple[str, ...]) -> None:
    """Names checked against circuit.json first: clearer than the generator's counts."""
    unknown = [name for name in inputs if name not in declared]
    if unknown:
        raise _input_error(f"unknown input signal {str(unknown[0])[:60]}")
    missing = [name for name in declared if name not in inputs]
    if missing:
        raise _input_error(f"missing input {missing[0]}")


# --- the runtime -------------------------------------------------------------------


def _engine_config() -> wasmtime.Config:
    # The same settings as worker.wasm, so compiled artifacts are interchangeable.
    config = wasmtime.Config()
    config.consume_fuel = True
    config.epoch_interruption = True
    config.memory_reservation = 64 << 20
    config.memory_guard_size = 64 << 10
    config.memory_reservation_for_growth = 16 << 20
    return config


class _ModuleCache:
    """Artifacts this process compiled itself, by the wasm's sha256 (never a peer's
    precompiled bytes: those would be native code)."""

    def __init__(self, entries: int = 8, max_bytes: int = 256 << 20) -> None:
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._entries = entries
        self._max_bytes = max_bytes
        self._lock = threading.Lock()

    def module(self, engine: wasmtime.Engine, wasm: bytes) -> wasmtime.Module:
        key = hashlib.sha256(wasm).hexdigest()
        with self._lock:
            artifact = self._items.get(key)
            if artifact is not None:
                self._items.move_to_end(key)
        if artifact is None:
            artifact = wasmtime.Module(wasmtime.Engine(_engine_config()), wasm).serialize()
            with self._lock:
                self._items[key] = artifact
                while len(self._items) > self._entries or (
                    len(self._items) > 1 and sum(map(len, self._items.values())) > self._max_bytes
                ):
                    self._items.popitem(last=False)
        return wasmtime.Module.deserialize(engine, artifact)


_CACHE = _ModuleCache()


class _Stopper:
    """Bumps the run's epoch at the deadline or on cancel; the first reason wins."""

    def __init__(self, engine: wasmtime.Engine, deadline_s: float, cancel: threading.Event | None):
        self.reason: str | None = None
        self._engine = engine
        self._done = threading.Event()
        self._cancel = cancel
        self._deadline_s = deadline_s
        self._thread = threading.Thread(target=self._wait, name="witness-deadline", daemon=True)
        self._thread.start()

    def _wait(self) -> None:
        if self._cancel is None:
            if not self._done.wait(self._deadline_s):
                self._stop("timeout")
            return
        waited = 0.0
        while not self._done.is_set():
            step = min(0.05, self._deadline_s - waited)
            if step <= 0:
                self._stop("timeout")
                return
            if self._cancel.wait(step):
                self._stop("cancelled")
                return
            waited += step

    def _stop(self, reason: str) -> None:
        if not self._done.is_set() and self.reason is None:
            self.reason = reason
            self._engine.increment_epoch()

    def close(self) -> None:
        self._done.set()
        self._thread.join()


class _CircomAbort(Exception):
    """Raised in the exceptionHandler import to unwind the guest."""


def _i32(value: int) -> int:
    """An unsigned 32-bit value as the signed i32 wasmtime takes."""
    return value - (1 << 32) if value >= 1 << 31 else value


class _Run:
    """One instantiated witness generator: the protocol as method calls."""

    def __init__(self, store: wasmtime.Store, module: wasmtime.Module, limits: WitnessLimits):
        self.store = store
        self.limits = limits
        self.error_code: int | None = None
        self.messages: list[str] = []
        self._message_chars = 0
        self._exports: dict[str, Any] = {}
        engine = store.engine
        void = wasmtime.FuncType([], [])
        linker = wasmtime.Linker(engine)
        linker.define_func(
            "runtime",
            "exceptionHandler",
            wasmtime.FuncType([wasmtime.ValType.i32()], []),
            self._exception,
        )
        linker.define_func("runtime", "printErrorMessage", void, self._print_error)
        linker.define_func("runtime", "writeBufferMessage", void, self._drain_log)
        linker.define_func("runtime", "showSharedRWMemory", void, lambda: None)
        instance = linker.instantiate(store, module)
        exports = instance.exports(store)
        for name in (
            "getVersion",
            "getFieldNumLen32",
            "getRawPrime",
            "readSharedRWMemory",
            "writeSharedRWMemory",
            "init",
            "getInputSignalSize",
            "setInputSignal",
            "getInputSize",
            "getWitnessSize",
            "getWitness",
            "getMessageChar",
        ):
            func = exports.get(name)
            if not isinstance(func, wasmtime.Func):
                raise _module_error(
                    f"circuit.wasm does not export {name}: not a circom witness generator"
                )
            self._exports[name] = func
        memory = exports.get("memory")
        start_fn = exports.get("getSharedRWMemoryStart")
        self._memory = memory if isinstance(memory, wasmtime.Memory) else None
        self._start_fn = start_fn if isinstance(start_fn, wasmtime.Func) else None
        self._shared: tuple[wasmtime.Memory, int] | None = None

    def call(self, name: str, *args: int) -> Any:
        return self._exports[name](self.store, *args)

    # imports

    def _exception(self, code: int) -> None:
        self.error_code = code
        raise _CircomAbort(code)

    def _message(self) -> str:
        chars = []
        for _ in range(_MAX_MESSAGE):
            c = self.call("getMessageChar")
            if c == 0:
                break
            chars.append(chr(c & 0x7F) if 32 <= (c & 0x7F) < 127 else " ")
        return "".join(chars).strip()

    def _print_error(self) -> None:
        text = self._message()
        if text and self._message_chars < _MAX_ERROR_TEXT:
            self.messages.append(text[: _MAX_ERROR_TEXT - self._message_chars])
            self._message_chars += len(text)

    def _drain_log(self) -> None:
        self._message()  # circom's log(): read and dropped (a prover prints nothing)

    # protocol

    def use_memory_directly(self) -> None:
        """Read and write the shared memory in one call instead of eight (a
        wasmtime call costs ~30 us), if the module exports its memory and it
        holds what ``readSharedRWMemory`` returns (checked on the prime)."""
        memory = self._memory
        start_fn = self._start_fn
        if memory is None or start_fn is None:
            return
        try:
            start = start_fn(self.store)
            self.call("getRawPrime")
            if 0 <= start and self._read_memory(memory, start) == self.read_field():
                self._shared = (memory, start)
        except (wasmtime.Trap, wasmtime.WasmtimeError, ValueError, IndexError, TypeError):
            self._shared = None

    def _read_memory(self, memory: wasmtime.Memory, start: int) -> int:
        data = memory.read(self.store, start, start + 4 * _N32)
        if len(data) != 4 * _N32:
            raise ValueError("short read")
        return int.from_bytes(data, "little")

    def read_field(self) -> int:
        if self._shared is not None:
            return self._read_memory(*self._shared)
        value = 0
        for j in reversed(range(_N32)):
            value = (value << 32) | (self.call("readSharedRWMemory", j) & 0xFFFFFFFF)
        return value

    def write_field(self, value: int) -> None:
        if self._shared is not None:
            memory, start = self._shared
            memory.write(self.store, value.to_bytes(4 * _N32, "little"), start)
            return
        for j in range(_N32):
            self.call("writeSharedRWMemory", j, _i32((value >> (32 * j)) & 0xFFFFFFFF))


def _describe_failure(run: _Run | None, trap: BaseException) -> WitnessError:
    code = run.error_code if run is not None else None
    text = " ".join(run.messages) if run is not None else ""
    if code == 4:
        found = _TEMPLATE_LINE.search(text)
        where = f" in template {found.group(1)} line {found.group(2)}" if found else ""
        return WitnessError(
            f"assert failed{where}: the inputs do not satisfy the circuit",
            code="witness_assert_failed",
            hint="check the inputs against the circuit (a value out of range, a wrong commitment)",
        )
    if code == 5:
        return _memory_error()
    if code is not None:
        what = _CIRCOM_ERRORS.get(code, f"error code {code}")
        detail = f": {text[:200]}" if text else ""
        return WitnessError(
            f"the witness generator failed: {what}{detail}", code="witness_input_invalid"
        )
    message = str(trap).splitlines()[0][:200] if str(trap) else type(trap).__name__
    if "memory" in message.lower() and "out of bounds" not in message.lower():
        return _memory_error()
    return _module_error(f"the witness generator trapped: {message}")


def _memory_error() -> WitnessError:
    return WitnessError(
        "the witness generator ran out of memory",
        code="witness_memory_limit",
        hint="raise the job's memory limit, or use a smaller circuit",
    )


def _limit_error(reason: str, limits: WitnessLimits) -> WitnessError:
    if reason == "cancelled":
        return WitnessError("cancelled", code="witness_cancelled")
    if reason == "fuel":
        return WitnessError(
            f"the witness generator used up its fuel ({limits.max_fuel})",
            code="witness_out_of_fuel",
            hint="raise the fuel budget, or use a smaller circuit",
        )
    return WitnessError(
        f"timeout: the witness took longer than {limits.deadline_s:g} s",
        code="witness_timeout",
        hint="raise the job's time limit, or use a smaller circuit",
    )


def _wasm_bytes(source: Circuit | str | Path | bytes) -> bytes:
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    else:
        path = source.wasm_path if hasattr(source, "wasm_path") else Path(source)
        try:
            with open(path, "rb") as f:
                data = f.read(_MAX_WASM_BYTES + 1)
        except OSError as e:
            raise _module_error(f"cannot read {Path(path).name}: {e.strerror}") from None
    if len(data) > _MAX_WASM_BYTES:
        raise _module_error(f"circuit.wasm is over {_MAX_WASM_BYTES} bytes")
    if data[:4] != b"\0asm":
        raise _module_error("circuit.wasm is not a WebAssembly module")
    return data


def compute_witness(
    circuit_or_wasm: Circuit | str | Path | bytes,
    inputs: Mapping[str, Any],
    *,
    max_fuel: int | None = None,
    max_memory_mb: int | None = None,
    deadline_s: float | None = None,
    limits: WitnessLimits | None = None,
    cancel: threading.Event | None = None,
) -> list[int]:
    """The full witness (``w[0] == 1``, then the public signals, then the rest).

    ``circuit_or_wasm`` is a :class:`zkp.circuit.Circuit`, a path to a
    circuit.wasm, or its bytes. Input values are ints or decimal (or 0x hex)
    strings, arrays as nested lists. Blocking; ``cancel`` stops it from another
    thread. Raises :class:`WitnessError` and nothing else for any input or module.
    """
    base = limits or WitnessLimits()
    limits = WitnessLimits(
        max_fuel=max_fuel if max_fuel is not None else base.max_fuel,
        max_memory_mb=max_memory_mb if max_memory_mb is not None else base.max_memory_mb,
        deadline_s=deadline_s if deadline_s is not None else base.deadline_s,
        max_witness=base.max_witness,
        max_inputs=base.max_inputs,
    )
    flat = flatten_inputs(inputs, limits.max_inputs)
    declared = getattr(circuit_or_wasm, "input_names", None)
    if declared is not None:
        _check_declared(inputs, tuple(declared))
    wasm = _wasm_bytes(circuit_or_wasm)
    engine = wasmtime.Engine(_engine_config())
    try:
        module = _CACHE.module(engine, wasm)
    except wasmtime.WasmtimeError as e:
        first = str(e).splitlines()[0][:200] if str(e) else "invalid module"
        raise _module_error(f"circuit.wasm does not compile: {first}") from None
    store = wasmtime.Store(engine)
    store.set_limits(
        memory_size=limits.max_memory_mb << 20,
        table_elements=1 << 16,
        instances=1,
        tables=4,
        memories=1,
    )
    store.set_fuel(limits.max_fuel)
    store.set_epoch_deadline(1)
    stopper = _Stopper(engine, limits.deadline_s, cancel)
    run: _Run | None = None
    try:
        run = _Run(store, module, limits)
        return _protocol(run, flat, limits)
    except WitnessError:
        raise
    except (
        wasmtime.Trap,
        wasmtime.WasmtimeError,
        _CircomAbort,
        OverflowError,
        TypeError,
        ValueError,
    ) as e:
        if stopper.reason is not None:
            raise _limit_error(stopper.reason, limits) from None
        if _fuel_left(store) == 0:
            raise _limit_error("fuel", limits) from None
        if run is None:
            first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            if "exceeds memory limits" in first:
                raise _memory_error() from None
            raise _module_error(f"circuit.wasm cannot be instantiated: {first}") from None
        raise _describe_failure(run, e) from None
    finally:
        stopper.close()


def _fuel_left(store: wasmtime.Store) -> int:
    try:
        return store.get_fuel()
    except wasmtime.WasmtimeError:
        return -1


def _protocol(run: _Run, flat: dict[str, list[int]], limits: WitnessLimits) -> list[int]:
    if run.call("getVersion") != _VERSION:
        raise _module_error("circuit.wasm speaks another witness-generator version than circom 2's")
    if run.call("getFieldNumLen32") != _N32:
        raise _module_error("circuit.wasm is not over BN254 (field elements are not 256 bits)")
    run.call("getRawPrime")
    if run.read_field() != SNARK_SCALAR_FIELD:
        raise _module_error("circuit.wasm is for another field than BN254's scalar field")
    run.use_memory_directly()
    n_witness = run.call("getWitnessSize")
    if not 1 <= n_witness <= limits.max_witness:
        raise _module_error(
            f"circuit.wasm claims {n_witness} witness values (at most {limits.max_witness})"
        )
    run.call("init", 1)
    set_count = 0
    for name, values in flat.items():
        hi, lo = signal_hash(name)
        size = run.call("getInputSignalSize", _i32(hi), _i32(lo))
        if size <= 0:  # circom answers 0 or less for a name it does not know
            raise _input_error(f"unknown input signal {name[:60]}")
        if len(values) < size:
            raise _input_error(f"not enough values for input {name[:60]}: {len(values)} of {size}")
        if len(values) > size:
            raise _input_error(
                f"too many values for input {name[:60]}: {len(values)}, it takes {size}"
            )
        for index, value in enumerate(values):
            run.write_field(value)
            run.call("setInputSignal", _i32(hi), _i32(lo), index)
            set_count += 1
    wanted = run.call("getInputSize")
    if set_count < wanted:
        raise _input_error(
            f"missing inputs: {set_count} of the circuit's {wanted} input values given"
        )
    return list(_read_witness(run, n_witness))


def _read_witness(run: _Run, n_witness: int) -> Iterator[int]:
    for i in range(n_witness):
        run.call("getWitness", i)
        value = run.read_field()
        if value >= SNARK_SCALAR_FIELD:
            raise _module_error(f"circuit.wasm returned witness value {i} outside the field")
        yield value

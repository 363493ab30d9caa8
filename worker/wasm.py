"""The ``wasm`` executor: run an untrusted WASI module under limits.

Isolation and metering come from wasmtime (measured facts in
``notes/sandbox-and-ui.md``):

- WASI preview 1 with ``/in`` preopened read-only and ``/out`` writable, in that
  order (fd 3 and fd 4; ``/out`` is fd 3 when there is no ``/in``). No other
  files, no sockets, no environment, an empty stdin.
- Memory: a store limit. Growth past it fails inside the job (``malloc``
  returns NULL) instead of trapping, so a failed job that ended near its limit
  is reported as ``memory_limit``. wasmtime-py does not report failed growth,
  so a single huge allocation that fails far below the limit shows up only as
  the program's exit code.
- Fuel: deterministic instruction metering, the unit a provider bills for.
- Wall time: epoch interruption. Each run gets its own engine (0.2 ms) with a
  store deadline of one tick, and one watchdog thread bumps a run's epoch when
  its wall deadline passes, when it writes too much, or when it is cancelled.
  An engine per run is what makes cancellation and timeouts per job: a bump on
  a shared engine would reach every job on it.
- Compiled code is cached by the module's sha256, as artifacts this process
  compiled itself and deserializes into each run's engine (same config, so
  they load in ~0.3 ms). A precompiled module is native code: bytes from a peer
  are only ever compiled, never deserialized.

Synchronous and blocking: the daemon calls :func:`run_wasm` in
``trio.to_thread.run_sync``; wasmtime releases the GIL while wasm runs.

The epoch is only checked in wasm code, so every WASI call that can wait
must end when the run is stopped. Only one can: ``poll_oneoff`` sleeping on a
clock, which is shadowed by one that waits on the run's stop event
(``worker.wasi_poll``). Reads and writes reach only regular files and an empty
stdin, which never block; ``/in`` must not hold FIFOs or devices (opening one
would block in native code), which ``worker.bundle.load_bundle`` checks.

Give runs their own thread limiter (:func:`execution_limiter`), never trio's
default one: a run holds its thread until it ends, also after the trio task
that started it was cancelled.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import wasmtime

from worker.outcome import WASM_PAGE_BYTES, Outcome
from worker.results import (
    ExecError,
    ExecErrorCode,
    ExecResult,
    Usage,
    check_output,
    exec_error,
    output_error,
    scan_tree,
)
from worker.wasi_poll import define_poll_oneoff

if TYPE_CHECKING:
    import trio

__all__ = [
    "CancelToken",
    "ExecError",
    "ExecErrorCode",
    "ExecResult",
    "RuntimeStatistics",
    "Usage",
    "WasmLimits",
    "WasmRuntime",
    "check_output",
    "execution_limiter",
    "run_wasm",
]

_TICK_SECONDS = 0.010
_GUARD_INTERVAL_S = 0.1  # check a running job's outputs at most every ~100 ms
_LOG_HARD_FACTOR = 16  # stop a job whose log grows past 16x the cap (disk guard)
_UNLIMITED_FUEL = 2**63 - 1


@dataclass(frozen=True, slots=True)
class WasmLimits:
    """Per-run limits. ``max_fuel=None`` leaves wall time as the only CPU bound."""

    memory_bytes: int = 128 << 20
    max_fuel: int | None = None
    max_seconds: float = 60.0
    max_output_bytes: int = 64 << 20  # everything under /out, apparent and allocated
    max_output_entries: int = 10_000  # files, directories, anything under /out
    max_output_depth: int = 32  # of directories under /out
    max_log_bytes: int = 1 << 20  # stdout and stderr, each; kept, truncated past this

    def __post_init__(self) -> None:
        if self.memory_bytes < WASM_PAGE_BYTES:
            raise ValueError(f"memory_bytes must be at least one wasm page ({WASM_PAGE_BYTES})")
        if not self.max_seconds > 0:
            raise ValueError("max_seconds must be > 0")
        if self.max_fuel is not None and not 0 < self.max_fuel <= _UNLIMITED_FUEL:
            raise ValueError("max_fuel must be in [1, 2**63 - 1]")
        if self.max_output_bytes < 0 or self.max_log_bytes < 0:
            raise ValueError("output caps must be >= 0")
        if self.max_output_entries < 1 or self.max_output_depth < 1:
            raise ValueError("max_output_entries and max_output_depth must be >= 1")


@dataclass(frozen=True, slots=True)
class RuntimeStatistics:
    compiled: int
    cache_hits: int
    cached_modules: int
    running: int


class _Run:
    """One running job as the watchdog, the cancel token and its host calls see it."""

    def __init__(
        self,
        engine: wasmtime.Engine,
        deadline: float,
        limits: WasmLimits,
        paths: tuple[Path, Path, Path],
    ):
        self.engine = engine
        self.deadline = deadline
        self.limits = limits
        self.stdout, self.stderr, self.out_dir = paths
        self.reason: ExecErrorCode | None = None
        self.message: str | None = None  # why, when the stop has more to say than its code
        self.last_guard = 0.0  # when the watchdog last checked its outputs
        self.guest_epoch_ns = time.monotonic_ns()  # set again once the store's WASI is built
        self._stopped = threading.Event()
        self._lock = threading.Lock()

    def stop(self, reason: ExecErrorCode, message: str | None = None) -> None:
        """Record why (first reason wins) and interrupt: the store's deadline is
        one tick, and a host call waiting in :meth:`sleep_until` returns."""
        with self._lock:
            if self.reason is None:
                self.reason, self.message = reason, message
                self.engine.increment_epoch()
                self._stopped.set()

    def sleep_until(self, until_ns: int) -> bool:
        """Wait for the host's monotonic clock to reach ``until_ns``; False as
        soon as the run is stopped. Reaching the wall deadline stops the run
        here, without waiting for the watchdog's tick."""
        while not self._stopped.is_set():
            now_ns = time.monotonic_ns()
            if now_ns >= self.deadline * 1e9:
                self.stop(ExecErrorCode.TIMEOUT)
                break
            if now_ns >= until_ns:
                return True
            left = min((until_ns - now_ns) / 1e9, self.deadline - now_ns / 1e9)
            self._stopped.wait(min(left, 1.0))  # bounded: no overflow for a year-long sleep
        return False

    def over_quota(self) -> ExecError | None:
        """Why the job must stop now for what it wrote, or None. Bounded: the
        walk of /out stops once over a cap. An invalid entry (a symlink) is
        left for the final check: the job may still remove it."""
        hard_log = self.limits.max_log_bytes * _LOG_HARD_FACTOR
        for log in (self.stdout, self.stderr):
            try:
                if log.stat().st_size > hard_log:
                    return exec_error(
                        ExecErrorCode.OUTPUT_TOO_LARGE,
                        f"stopped: it wrote over {hard_log} bytes to {log.suffix[1:]}",
                    )
            except OSError:
                pass
        limits = self.limits
        scan = scan_tree(
            self.out_dir,
            max_entries=limits.max_output_entries,
            max_depth=limits.max_output_depth,
            max_bytes=limits.max_output_bytes,
            strict=False,
        )
        error = output_error(scan, limits)
        if error is None or error.code == ExecErrorCode.OUTPUT_INVALID:
            return None
        return exec_error(error.code, f"stopped: {error.message}")


class CancelToken:
    """Cancels one run from any thread; also says when the run has started."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cancelled = False
        self._run: _Run | None = None
        self._started = threading.Event()

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            run = self._run
        if run is not None:
            run.stop(ExecErrorCode.CANCELLED)

    def wait_started(self, timeout: float | None = None) -> bool:
        """Block until the job's code starts running, or the run ends without
        starting (so a waiter never hangs); False on timeout."""
        return self._started.wait(timeout)

    def _attach(self, run: _Run) -> bool:
        with self._lock:
            if self._run is not None:
                raise RuntimeError("a CancelToken serves one run")
            self._run = run
            return not self._cancelled


class _Watchdog:
    """One thread for all runs of a runtime: ticks every 10 ms while any run is live."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._runs: set[_Run] = set()
        self._thread: threading.Thread | None = None

    def add(self, run: _Run) -> None:
        with self._cond:
            self._runs.add(run)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="wasm-watchdog", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def remove(self, run: _Run) -> None:
        with self._cond:
            self._runs.discard(run)

    def __len__(self) -> int:
        return len(self._runs)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._runs:
                    self._cond.wait()
                runs = list(self._runs)
            now = time.monotonic()
            for run in runs:
                if now >= run.deadline:
                    run.stop(ExecErrorCode.TIMEOUT)
            # One output walk per tick (a walk may cost up to max_output_entries
            # stats), for the run checked longest ago, so deadlines stay on time
            # however many runs there are.
            due = [r for r in runs if r.reason is None and now - r.last_guard >= _GUARD_INTERVAL_S]
            if due:
                run = min(due, key=lambda r: r.last_guard)
                run.last_guard = now
                error = run.over_quota()
                if error is not None:
                    run.stop(error.code, error.message)
            time.sleep(_TICK_SECONDS)


def _engine_config() -> wasmtime.Config:
    # Every engine must get the same config, or cached artifacts will not load.
    config = wasmtime.Config()
    config.consume_fuel = True
    config.epoch_interruption = True
    # ~4 GiB per instance by default fails under RLIMIT_AS; memory can still grow
    # past the reservation (it moves), bounded by the store limit.
    config.memory_reservation = 64 << 20
    config.memory_guard_size = 64 << 10
    config.memory_reservation_for_growth = 16 << 20
    return config


class WasmRuntime:
    """Module cache and watchdog shared by runs. Thread-safe; one per process is enough."""

    def __init__(self, *, cache_entries: int = 64, cache_bytes: int = 256 << 20):
        self._cache: OrderedDict[str, bytes] = OrderedDict()  # sha256 -> our own compiled artifact
        self._cache_entries = cache_entries
        self._cache_bytes = cache_bytes
        self._lock = threading.Lock()
        self._compiled = 0
        self._hits = 0
        self._watchdog = _Watchdog()

    def statistics(self) -> RuntimeStatistics:
        with self._lock:
            return RuntimeStatistics(
                self._compiled, self._hits, len(self._cache), len(self._watchdog)
            )

    def _module(self, engine: wasmtime.Engine, wasm: bytes) -> wasmtime.Module:
        key = hashlib.sha256(wasm).hexdigest()
        with self._lock:
            artifact = self._cache.get(key)
            if artifact is not None:
                self._cache.move_to_end(key)
                self._hits += 1
        if artifact is None:
            # Compile outside the lock: it takes 100+ ms and other runs may hit the cache.
            artifact = wasmtime.Module(wasmtime.Engine(_engine_config()), wasm).serialize()
            with self._lock:
                self._compiled += 1
                self._cache[key] = artifact
                while len(self._cache) > self._cache_entries or (
                    len(self._cache) > 1 and sum(map(len, self._cache.values())) > self._cache_bytes
                ):
                    self._cache.popitem(last=False)
        return wasmtime.Module.deserialize(engine, artifact)

    def run(
        self,
        module: bytes | str | os.PathLike[str],
        args: list[str] | tuple[str, ...],
        in_dir: str | os.PathLike[str] | None,
        out_dir: str | os.PathLike[str],
        limits: WasmLimits,
        cancel_token: CancelToken | None = None,
        *,
        logs_dir: str | os.PathLike[str] | None = None,
    ) -> ExecResult:
        """See :func:`run_wasm`."""
        if in_dir is not None and not _is_real_dir(Path(in_dir)):
            raise NotADirectoryError(f"in_dir {str(in_dir)!r} is not a directory (or is a symlink)")
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        logs = Path(logs_dir) if logs_dir is not None else out.parent
        logs.mkdir(parents=True, exist_ok=True)
        stdout, stderr = logs / f"{out.name}.stdout", logs / f"{out.name}.stderr"
        for log in (stdout, stderr):
            log.write_bytes(b"")
        token = cancel_token if cancel_token is not None else CancelToken()
        state = Outcome(out, stdout, stderr, limits, time.monotonic())
        try:
            return self._execute(module, args, in_dir, limits, token, state)
        finally:
            token._started.set()  # also when it never started: waiters must not hang

    def _execute(
        self,
        module: bytes | str | os.PathLike[str],
        args: list[str] | tuple[str, ...],
        in_dir: str | os.PathLike[str] | None,
        limits: WasmLimits,
        token: CancelToken,
        state: Outcome,
    ) -> ExecResult:
        fuel = limits.max_fuel if limits.max_fuel is not None else _UNLIMITED_FUEL
        if token.cancelled:
            return state.result(
                None, exec_error(ExecErrorCode.CANCELLED, "cancelled before it started")
            )
        try:
            wasm = _load_wasm(module)
        except (OSError, wasmtime.WasmtimeError, UnicodeDecodeError) as e:
            return state.result(
                None, exec_error(ExecErrorCode.INVALID_MODULE, f"cannot read the module: {e}")
            )

        engine = wasmtime.Engine(_engine_config())
        try:
            compiled = self._module(engine, wasm)
        except wasmtime.WasmtimeError as e:
            return state.result(
                None, exec_error(ExecErrorCode.INVALID_MODULE, f"module does not compile: {e}")
            )

        store = wasmtime.Store(engine)
        store.set_limits(
            memory_size=limits.memory_bytes,
            table_elements=1 << 20,
            instances=4,
            tables=4,
            memories=2,
        )
        store.set_fuel(fuel)
        store.set_epoch_deadline(1)  # one bump from the watchdog or a cancel stops it
        wasi = wasmtime.WasiConfig()
        wasi.argv = ["main.wasm", *args]
        wasi.stdout_file = str(state.stdout)
        wasi.stderr_file = str(state.stderr)
        if in_dir is not None:
            wasi.preopen_dir(str(Path(in_dir)), "/in", fs_mutable=False)
        wasi.preopen_dir(str(state.out), "/out", fs_mutable=True)
        # Wall time counts from here: compiling is the provider's cost, not the job's.
        state.start = time.monotonic()
        run = _Run(
            engine,
            state.start + limits.max_seconds,
            limits,
            (state.stdout, state.stderr, state.out),
        )
        store.set_wasi(wasi)
        run.guest_epoch_ns = time.monotonic_ns()  # the job's monotonic clock starts in set_wasi
        linker = wasmtime.Linker(engine)
        linker.define_wasi()
        define_poll_oneoff(linker, run.sleep_until, lambda: run.guest_epoch_ns)
        if not token._attach(run):
            return state.result(
                None, exec_error(ExecErrorCode.CANCELLED, "cancelled before it started")
            )
        self._watchdog.add(run)
        instance = None
        exit_code: int | None = None
        trap: wasmtime.Trap | None = None
        cannot_start: wasmtime.WasmtimeError | None = None
        try:
            # A module's start section runs inside instantiate(), under the same
            # limits, and may exit or trap there too.
            instance = linker.instantiate(store, compiled)
            entry = instance.exports(store).get("_start")
            if isinstance(entry, wasmtime.Func):
                token._started.set()
                entry(store)
                exit_code = 0
        except wasmtime.ExitTrap as e:  # a WasmtimeError subclass: catch it first
            exit_code = e.code
        except wasmtime.Trap as e:
            trap = e
        except wasmtime.WasmtimeError as e:
            cannot_start = e  # link or instantiation error: nothing ran
        finally:
            self._watchdog.remove(run)
            state.fuel = fuel - store.get_fuel()
            state.peak_memory = _memory_size(instance, store) if instance is not None else 0
        if run.reason is not None:  # however it ended, it was stopped first
            return state.finished(None, None, run.reason, fuel, run.message)
        if cannot_start is not None:
            return state.instantiate_failed(cannot_start)
        if instance is not None and exit_code is None and trap is None:
            return state.result(
                None, exec_error(ExecErrorCode.INVALID_MODULE, "module has no _start function")
            )
        return state.finished(exit_code, trap, None, fuel)


def execution_limiter(slots: int) -> trio.CapacityLimiter:
    """A thread limiter for runs alone: pass it as ``limiter=`` to
    ``trio.to_thread.run_sync(run_wasm, ...)``. A run keeps its token until it
    really ends, also when the task was cancelled and abandoned the thread, so
    runs must not share trio's default limiter with the daemon's other work.
    ``slots`` is how many jobs may run at once."""
    import trio

    if slots < 1:
        raise ValueError("slots must be >= 1")
    return trio.CapacityLimiter(slots)


_DEFAULT_RUNTIME: WasmRuntime | None = None
_DEFAULT_LOCK = threading.Lock()


def run_wasm(
    module: bytes | str | os.PathLike[str],
    args: list[str] | tuple[str, ...],
    in_dir: str | os.PathLike[str] | None,
    out_dir: str | os.PathLike[str],
    limits: WasmLimits,
    cancel_token: CancelToken | None = None,
    *,
    logs_dir: str | os.PathLike[str] | None = None,
    runtime: WasmRuntime | None = None,
) -> ExecResult:
    """Run a WASI command module to completion or to a limit. Blocking.

    ``module`` is wasm or WAT bytes, or a path (str or Path) to such a file.
    ``in_dir`` (optional) is mounted read-only at ``/in``, ``out_dir`` (created
    if missing) writable at ``/out``. stdout and stderr go to
    ``<logs_dir>/<out name>.stdout`` and ``.stderr``; ``logs_dir`` defaults to
    ``out_dir``'s parent, outside ``/out`` so the job cannot touch them.
    """
    global _DEFAULT_RUNTIME
    if runtime is None:
        with _DEFAULT_LOCK:
            if _DEFAULT_RUNTIME is None:
                _DEFAULT_RUNTIME = WasmRuntime()
            runtime = _DEFAULT_RUNTIME
    return runtime.run(module, args, in_dir, out_dir, limits, cancel_token, logs_dir=logs_dir)


# --- results ----------------------------------------------------------------


def _is_real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _load_wasm(module: bytes | str | os.PathLike[str]) -> bytes:
    """Wasm binary bytes. WAT text is accepted and assembled; nothing else is."""
    data = (
        bytes(module)
        if isinstance(module, bytes | bytearray | memoryview)
        else Path(module).read_bytes()
    )
    if data[:4] == b"\0asm":
        return data
    return wasmtime.wat2wasm(data.decode("utf-8"))


def _memory_size(instance: wasmtime.Instance, store: wasmtime.Store) -> int:
    return sum(
        v.data_len(store)
        for v in instance.exports(store).values()
        if isinstance(v, wasmtime.Memory)
    )

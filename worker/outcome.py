"""How a wasm run ended, as an :class:`ExecResult`: the error it stopped with
(fuel, time, memory, a trap, a cancel, an unusable ``/out``), its usage, and
its logs cut to their cap. Used by :mod:`worker.wasm` only."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import wasmtime

from worker.results import (
    ExecError,
    ExecErrorCode,
    ExecResult,
    Usage,
    exec_error,
    output_error,
    scan_tree,
    truncate_log,
)

if TYPE_CHECKING:
    from worker.wasm import WasmLimits

WASM_PAGE_BYTES = 65536  # one page of wasm linear memory


class Outcome:
    """Collects what a run measured and turns it into an :class:`ExecResult`."""

    def __init__(self, out: Path, stdout: Path, stderr: Path, limits: WasmLimits, start: float):
        self.out, self.stdout, self.stderr, self.limits, self.start = (
            out,
            stdout,
            stderr,
            limits,
            start,
        )
        self.fuel = 0
        self.peak_memory = 0

    def result(self, exit_code: int | None, error: ExecError | None) -> ExecResult:
        wall_ms = (time.monotonic() - self.start) * 1000
        limits = self.limits
        scan = scan_tree(
            self.out,
            max_entries=limits.max_output_entries,
            max_depth=limits.max_output_depth,
            max_bytes=limits.max_output_bytes,
        )
        unusable = output_error(scan, limits)
        return ExecResult(
            exit_code=exit_code,
            usage=Usage(self.fuel, wall_ms, self.peak_memory, scan.apparent_bytes),
            stdout_path=self.stdout,
            stderr_path=self.stderr,
            error=error if error is not None else unusable,
            stdout_truncated=truncate_log(self.stdout, limits.max_log_bytes),
            stderr_truncated=truncate_log(self.stderr, limits.max_log_bytes),
            output_error=unusable,
        )

    def instantiate_failed(self, e: wasmtime.WasmtimeError) -> ExecResult:
        text = str(e)
        if "exceeds memory limits" in text or "memory" in text and "limit" in text:
            error = exec_error(
                ExecErrorCode.MEMORY_LIMIT,
                f"the module needs more memory than its limit of {self.limits.memory_bytes} bytes "
                f"at start: {text}",
            )
        else:
            error = exec_error(ExecErrorCode.INVALID_MODULE, f"module cannot start: {text}")
        return self.result(None, error)

    def finished(
        self,
        exit_code: int | None,
        trap: wasmtime.Trap | None,
        stop: ExecErrorCode | None,
        fuel: int,
        stop_message: str | None = None,
    ) -> ExecResult:
        limit = self.limits.memory_bytes
        if stop is not None:
            return self.result(None, exec_error(stop, stop_message or self._stopped_message(stop)))
        if trap is not None:
            code = trap.trap_code
            if code == wasmtime.TrapCode.OUT_OF_FUEL:
                return self.result(
                    None, exec_error(ExecErrorCode.OUT_OF_FUEL, f"ran out of fuel ({fuel} units)")
                )
            if code == wasmtime.TrapCode.INTERRUPT:
                reason = ExecErrorCode.TIMEOUT
                return self.result(None, exec_error(reason, self._stopped_message(reason)))
            if _near_limit(self.peak_memory, limit):
                return self.result(
                    None,
                    exec_error(
                        ExecErrorCode.MEMORY_LIMIT, f"trapped at its memory limit: {trap.message}"
                    ),
                )
            return self.result(None, exec_error(ExecErrorCode.TRAP, f"trapped: {trap.message}"))
        if exit_code and _near_limit(self.peak_memory, limit):
            return self.result(
                exit_code,
                exec_error(
                    ExecErrorCode.MEMORY_LIMIT,
                    f"exited with code {exit_code} after its memory reached {self.peak_memory} "
                    f"of its {limit}-byte limit; an allocation probably failed",
                ),
            )
        return self.result(exit_code, None)

    def _stopped_message(self, reason: ExecErrorCode) -> str:
        return {
            ExecErrorCode.TIMEOUT: f"stopped at the wall-clock limit of {self.limits.max_seconds:g} s",
            ExecErrorCode.CANCELLED: "cancelled while running",
            ExecErrorCode.OUTPUT_TOO_LARGE: "stopped: it wrote more than its output caps allow",
        }.get(reason, f"stopped: {reason.value}")


def _near_limit(peak: int, limit: int) -> bool:
    """Within one page or 1/8 of the limit: where a failed growth most likely left it."""
    return peak > 0 and limit - peak < max(WASM_PAGE_BYTES, limit // 8)

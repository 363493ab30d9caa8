"""What an executor run produced, shared by every executor (wasm now, native later).

An :class:`ExecResult` is what the worker turns into a signed result: the exit
code, the usage it bills for, where stdout and stderr were kept, and a typed
:class:`ExecError` when the run did not end normally. Error codes are stable
strings: they reach the requester (``mask job``) and become ``JobError`` codes.
"""

from __future__ import annotations

import enum
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from protocol.errors import JobError

__all__ = [
    "ExecError",
    "ExecErrorCode",
    "ExecResult",
    "Usage",
    "exec_error",
    "tree_size",
    "truncate_log",
]


class ExecErrorCode(enum.StrEnum):
    OUT_OF_FUEL = "out_of_fuel"
    TIMEOUT = "timeout"
    MEMORY_LIMIT = "memory_limit"
    OUTPUT_TOO_LARGE = "output_too_large"
    TRAP = "trap"
    CANCELLED = "cancelled"
    INVALID_MODULE = "invalid_module"  # does not compile or link: the requester's mistake


HINTS = {
    ExecErrorCode.OUT_OF_FUEL: "raise resources.max_fuel in job.toml, or make the program do less",
    ExecErrorCode.TIMEOUT: "raise resources.max_seconds in job.toml, or make the program faster",
    ExecErrorCode.MEMORY_LIMIT: "raise resources.memory_mb in job.toml",
    ExecErrorCode.OUTPUT_TOO_LARGE: "write less to /out, or split the job",
    ExecErrorCode.TRAP: "the program crashed; run it locally (wasmtime run) to debug",
    ExecErrorCode.CANCELLED: "the job was cancelled before it finished",
    ExecErrorCode.INVALID_MODULE: "build a wasm32-wasi (preview 1) command module; see examples/hello",
}


@dataclass(frozen=True, slots=True)
class Usage:
    fuel: int
    wall_ms: float
    peak_memory_bytes: int  # linear memory only grows, so its final size is the peak
    output_bytes: int  # under /out


@dataclass(frozen=True, slots=True)
class ExecError:
    code: ExecErrorCode
    message: str
    hint: str

    def to_job_error(self) -> JobError:
        return JobError(self.message, hint=self.hint, code=self.code.value)


@dataclass(frozen=True, slots=True)
class ExecResult:
    """``exit_code`` is set when the program exited (0 when ``_start`` returned),
    None when it was stopped; ``error`` says why a run did not end normally."""

    exit_code: int | None
    usage: Usage
    stdout_path: Path
    stderr_path: Path
    error: ExecError | None
    stdout_truncated: bool = False
    stderr_truncated: bool = False


def exec_error(code: ExecErrorCode, message: str) -> ExecError:
    return ExecError(code, message, HINTS[code])


def tree_size(root: Path, *, stop_above: int | None = None) -> int:
    """Bytes under ``root``, not following symlinks; stops early once over ``stop_above``."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in filenames + dirnames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if not stat.S_ISDIR(st.st_mode):
                total += st.st_size
            if stop_above is not None and total > stop_above:
                return total
    return total


def truncate_log(path: Path, cap: int) -> bool:
    """Cut a log file to ``cap`` bytes; True if it was longer."""
    try:
        if path.stat().st_size > cap:
            os.truncate(path, cap)
            return True
    except OSError:
        pass
    return False

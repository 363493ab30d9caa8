"""What an executor run produced, shared by every executor (wasm now, native later).

An :class:`ExecResult` is what the worker turns into a signed result: the exit
code, the usage it bills for, where stdout and stderr were kept, and a typed
:class:`ExecError` when the run did not end normally. Error codes are stable
strings: they reach the requester (``mask job``) and become ``JobError`` codes.

A job's ``/out`` is data the daemon imports and serves: :func:`check_output`
says whether it may be (every cap, and nothing but regular files and
directories), walking it through directory fds without following links and
stopping as soon as it is over. :func:`remove_tree` removes any tree a job
left, however deep.
"""

from __future__ import annotations

import enum
import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from protocol.errors import JobError

__all__ = [
    "ExecError",
    "ExecErrorCode",
    "ExecResult",
    "OutputLimits",
    "TreeScan",
    "Usage",
    "check_output",
    "exec_error",
    "output_error",
    "remove_tree",
    "scan_tree",
    "tree_size",
    "truncate_log",
]


class ExecErrorCode(enum.StrEnum):
    OUT_OF_FUEL = "out_of_fuel"
    TIMEOUT = "timeout"
    MEMORY_LIMIT = "memory_limit"
    OUTPUT_TOO_LARGE = "output_too_large"
    OUTPUT_TOO_MANY_ENTRIES = "output_too_many_entries"
    OUTPUT_TOO_DEEP = "output_too_deep"
    OUTPUT_INVALID = "output_invalid"  # a symlink, FIFO, socket or device in /out
    TRAP = "trap"
    CANCELLED = "cancelled"
    INVALID_MODULE = "invalid_module"  # does not compile or link: the requester's mistake


HINTS = {
    ExecErrorCode.OUT_OF_FUEL: "raise resources.max_fuel in job.toml, or make the program do less",
    ExecErrorCode.TIMEOUT: "raise resources.max_seconds in job.toml, or make the program faster",
    ExecErrorCode.MEMORY_LIMIT: "raise resources.memory_mb in job.toml",
    ExecErrorCode.OUTPUT_TOO_LARGE: "write less to /out, or split the job",
    ExecErrorCode.OUTPUT_TOO_MANY_ENTRIES: "write fewer files to /out: pack them into one archive",
    ExecErrorCode.OUTPUT_TOO_DEEP: "nest fewer directories under /out",
    ExecErrorCode.OUTPUT_INVALID: "leave only regular files and directories in /out (no symlinks)",
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
    None when it was stopped; ``error`` says why a run did not end normally.

    ``output_error`` is :func:`check_output`'s verdict on ``/out`` after the
    run, whatever ``error`` is (a run that timed out may still have left a
    symlink): when it is set, the output must not be imported."""

    exit_code: int | None
    usage: Usage
    stdout_path: Path
    stderr_path: Path
    error: ExecError | None
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    output_error: ExecError | None = None


def exec_error(code: ExecErrorCode, message: str) -> ExecError:
    return ExecError(code, message, HINTS[code])


class OutputLimits(Protocol):
    """The caps on a job's /out (``worker.wasm.WasmLimits`` is one)."""

    @property
    def max_output_bytes(self) -> int: ...
    @property
    def max_output_entries(self) -> int: ...
    @property
    def max_output_depth(self) -> int: ...


@dataclass(frozen=True, slots=True)
class TreeScan:
    """What :func:`scan_tree` saw. ``complete`` is False when it stopped early
    (at a cap, or at an invalid entry when strict): the counts are then lower
    bounds."""

    entries: int = 0  # everything under the root: files, directories, anything else
    apparent_bytes: int = 0  # st_size of regular files
    allocated_bytes: int = 0  # st_blocks * 512 of every entry: what sparse tricks cannot hide
    depth: int = 0  # of the deepest entry; the root's children are at depth 1
    invalid: str | None = None  # the first entry that is not a file or a directory, and why
    complete: bool = True


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_SHOWN = 200  # characters of a job's path in a message


def _shown(rel: str) -> str:
    return rel if len(rel) <= _MAX_SHOWN else "..." + rel[-_MAX_SHOWN:]


def _kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    ):
        if test(mode):
            return kind
    return "special file"


class _Walk:
    """Counts for :func:`scan_tree`; says when to stop."""

    def __init__(
        self,
        max_entries: int | None,
        max_depth: int | None,
        max_bytes: int | None,
        strict: bool,
        allow_symlinks: bool,
    ):
        self.max_entries, self.max_depth, self.max_bytes = max_entries, max_depth, max_bytes
        self.strict, self.allow_symlinks = strict, allow_symlinks
        self.entries = self.apparent = self.allocated = self.depth = 0
        self.invalid: str | None = None

    def over(self) -> bool:
        return (
            (self.strict and self.invalid is not None)
            or (self.max_entries is not None and self.entries > self.max_entries)
            or (self.max_depth is not None and self.depth > self.max_depth)
            or (self.max_bytes is not None and max(self.apparent, self.allocated) > self.max_bytes)
        )

    def fail(self, why: str) -> None:
        if self.invalid is None:
            self.invalid = why

    def scan(self, dir_fd: int, depth: int, rel: str) -> list[str] | None:
        """Count one directory's entries (at ``depth``); the names of its
        subdirectories, or None to stop the walk."""
        subdirs: list[str] = []
        try:
            with os.scandir(dir_fd) as it:
                for entry in it:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError as e:  # gone while the job runs, or unreadable
                        self._unreadable(
                            f"{_shown(rel + entry.name)}: cannot be read ({e.strerror})"
                        )
                        continue
                    self.entries += 1
                    self.depth = max(self.depth, depth)
                    self.allocated += st.st_blocks * 512
                    if stat.S_ISDIR(st.st_mode):
                        subdirs.append(entry.name)
                    elif stat.S_ISREG(st.st_mode):
                        self.apparent += st.st_size
                    elif not (self.allow_symlinks and stat.S_ISLNK(st.st_mode)):
                        self.fail(f"{_shown(rel + entry.name)} is a {_kind(st.st_mode)}")
                    if self.over():
                        return None
        except OSError as e:
            self._unreadable(f"{_shown(rel) or '.'}: cannot be listed ({e.strerror})")
        return None if self.over() else subdirs

    def _unreadable(self, why: str) -> None:
        if self.strict:
            self.fail(why)


def scan_tree(
    root: Path,
    *,
    max_entries: int | None = None,
    max_depth: int | None = None,
    max_bytes: int | None = None,
    strict: bool = True,
    allow_symlinks: bool = False,
) -> TreeScan:
    """Count what is under ``root``, stopping as soon as a cap is passed (or,
    when ``strict``, at the first entry that is neither a regular file nor a
    directory, or that cannot be read).

    Walks depth-first through directory fds (``openat`` with ``O_NOFOLLOW``):
    no symlink is followed, no path grows past PATH_MAX however deep the tree,
    and at most ``max_depth + 1`` fds are open at once. A missing root is an
    empty tree; a root that is not a directory (a symlink too) is invalid.
    ``strict=False`` is for a tree a job is still changing: entries that vanish
    are skipped, and an invalid entry is noted but the walk goes on counting.
    ``allow_symlinks`` counts symlinks (never followed) as valid entries: for
    a job's ``/in``, where wasmtime itself refuses links that leave it.
    """
    walk = _Walk(max_entries, max_depth, max_bytes, strict, allow_symlinks)
    try:
        root_fd = os.open(root, _DIR_FLAGS)
    except FileNotFoundError:
        return TreeScan()
    except OSError as e:
        reason = "a symlink" if e.errno == errno.ELOOP else e.strerror
        return TreeScan(invalid=f"the output dir is not a directory ({reason})", complete=False)
    # (fd, path from root, depth of its entries, subdirectories left to visit)
    stack: list[tuple[int, str, int, list[str]]] = [(root_fd, "", 1, [])]
    try:
        subdirs = walk.scan(root_fd, 1, "")
        stack[0] = (root_fd, "", 1, subdirs or [])
        while stack and subdirs is not None:
            parent, rel, depth, pending = stack[-1]
            if not pending:
                os.close(parent)
                stack.pop()
                continue
            name = pending.pop()
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=parent)
            except OSError as e:
                walk._unreadable(f"{_shown(rel + name)}: cannot be opened ({e.strerror})")
                if walk.over():
                    break
                continue
            subdirs = walk.scan(child, depth + 1, f"{rel}{name}/")
            stack.append((child, f"{rel}{name}/", depth + 1, subdirs or []))
    finally:
        for fd, *_ in stack:
            os.close(fd)
    return TreeScan(
        walk.entries,
        walk.apparent,
        walk.allocated,
        walk.depth,
        walk.invalid,
        complete=not walk.over(),
    )


def output_error(scan: TreeScan, limits: OutputLimits) -> ExecError | None:
    """The first reason a scanned output breaks ``limits``, or None."""
    more = "" if scan.complete else "+"
    cap = limits.max_output_bytes
    if scan.invalid is not None:
        return exec_error(
            ExecErrorCode.OUTPUT_INVALID, f"/out holds something other than data: {scan.invalid}"
        )
    if scan.entries > limits.max_output_entries:
        return exec_error(
            ExecErrorCode.OUTPUT_TOO_MANY_ENTRIES,
            f"/out holds {scan.entries}{more} files and directories, over the cap of "
            f"{limits.max_output_entries}",
        )
    if scan.depth > limits.max_output_depth:
        return exec_error(
            ExecErrorCode.OUTPUT_TOO_DEEP,
            f"/out nests directories {scan.depth}{more} deep, over the cap of "
            f"{limits.max_output_depth}",
        )
    if scan.apparent_bytes > cap:
        return exec_error(
            ExecErrorCode.OUTPUT_TOO_LARGE,
            f"wrote {scan.apparent_bytes}{more} bytes to /out, over the cap of {cap}",
        )
    if scan.allocated_bytes > cap:
        return exec_error(
            ExecErrorCode.OUTPUT_TOO_LARGE,
            f"/out takes {scan.allocated_bytes}{more} bytes on disk, over the cap of {cap}",
        )
    return None


def check_output(out_dir: Path, limits: OutputLimits) -> ExecError | None:
    """Whether a finished job's ``out_dir`` may be imported: None, or why not.

    Bounded: stops once over a cap, so a million files cost at most
    ``max_output_entries + 1`` stats. A missing ``out_dir`` is an empty output."""
    scan = scan_tree(
        out_dir,
        max_entries=limits.max_output_entries,
        max_depth=limits.max_output_depth,
        max_bytes=limits.max_output_bytes,
    )
    return output_error(scan, limits)


def tree_size(root: Path, *, stop_above: int | None = None) -> int:
    """Bytes of the regular files under ``root``, not following symlinks; stops
    early once over ``stop_above``."""
    return scan_tree(root, max_bytes=stop_above, strict=False).apparent_bytes


def remove_tree(path: Path) -> None:
    """Remove ``path`` and everything under it, however deep, following no
    symlink (a symlinked ``path`` is itself removed). ``shutil.rmtree``
    recurses, and on Python 3.11 gives up past ~1000 levels, which a job makes
    in a second. A missing path is not an error."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    stack: list[tuple[int, str]] = [(os.open(path, _DIR_FLAGS), "")]  # (fd, name in parent)
    try:
        while stack:
            fd, name = stack[-1]
            subdir = None
            with os.scandir(fd) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False):
                        subdir = entry.name
                        break
                    os.unlink(entry.name, dir_fd=fd)
            if subdir is not None:
                stack.append((os.open(subdir, _DIR_FLAGS, dir_fd=fd), subdir))
                continue
            stack.pop()
            os.close(fd)
            if stack:
                os.rmdir(name, dir_fd=stack[-1][0])
    finally:
        for fd, _ in stack:
            os.close(fd)
    os.rmdir(path)


def truncate_log(path: Path, cap: int) -> bool:
    """Cut a log file to ``cap`` bytes; True if it was longer."""
    try:
        if path.stat().st_size > cap:
            os.truncate(path, cap)
            return True
    except OSError:
        pass
    return False

"""Open a job bundle as a provider must: it is a stranger's data.

A bundle is a directory: ``job.json`` (the normalised spec), ``program.wasm``
and, optionally, ``in/`` (the inputs, mounted read-only at ``/in``). It was
unpacked from a requester's DAG, so any name in it may be a symlink (to
``/dev/zero``, to the provider's keys), a FIFO, a directory, or far too big.
:func:`load_bundle` follows no link (every open is ``O_NOFOLLOW`` relative to
the bundle's own directory fd), blocks on nothing (``O_NONBLOCK``, then
``fstat``: regular files only), reads nothing past its cap, and parses
``job.json`` into a JSON object whose ``args`` is a list of plain strings.
Anything else is one :class:`~protocol.errors.JobError` with code
``bad_bundle`` and a hint: the requester's fault, never the node's crash.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol.codec import NestingTooDeep, check_nesting
from protocol.errors import JobError
from worker.results import scan_tree

__all__ = ["BAD_BUNDLE", "Bundle", "load_bundle"]

BAD_BUNDLE = "bad_bundle"
_HINT = (
    "the requester's job bundle is malformed: job.json (a JSON object whose args are "
    "strings) and program.wasm must be regular files, in/ a directory of files and directories"
)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Bundle:
    job: dict[str, Any]  # job.json, a JSON object
    module: bytes  # program.wasm, at most max_program_bytes
    in_dir: Path | None  # a real directory (not a symlink) holding no FIFO, socket or device
    args: tuple[str, ...]  # job["args"], checked: strings with no NUL, encodable as UTF-8


def _bad(message: str) -> JobError:
    return JobError(message, code=BAD_BUNDLE, hint=_HINT)


def load_bundle(
    bundle_dir: Path,
    *,
    max_program_bytes: int,
    max_spec_bytes: int,
    max_json_depth: int = 32,
) -> Bundle:
    """Read and check the bundle at ``bundle_dir``. Blocking (run it in a thread).

    Raises :class:`JobError` (``bad_bundle``) for anything that is not a bundle.
    ``in/`` is walked once (without following links) for FIFOs, sockets and
    devices, which the job could otherwise open and block on in native code.
    """
    try:
        dir_fd = os.open(bundle_dir, _DIR_FLAGS)
    except OSError as e:
        raise _bad(f"the job bundle is not a directory ({_why(e)})") from None
    try:
        spec = _read(dir_fd, "job.json", max_spec_bytes)
        job = _parse_job(spec, max_spec_bytes, max_json_depth)
        module = _read(dir_fd, "program.wasm", max_program_bytes)
        in_dir = _in_dir(dir_fd, Path(bundle_dir))
    finally:
        os.close(dir_fd)
    return Bundle(job, module, in_dir, _args(job))


def _why(e: OSError) -> str:
    if e.errno == errno.ELOOP:
        return "it is a symlink"
    return e.strerror or str(e)


def _read(dir_fd: int, name: str, cap: int) -> bytes:
    """The regular file ``name`` in ``dir_fd``, at most ``cap`` bytes."""
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError as e:
        raise _bad(f"the bundle's {name} cannot be opened: {_why(e)}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _bad(f"the bundle's {name} is not a regular file")
        if st.st_size > cap:
            raise _bad(f"the bundle's {name} is {st.st_size} bytes, over the cap of {cap}")
        chunks: list[bytes] = []
        total = 0
        while chunk := os.read(fd, min(_CHUNK, cap + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > cap:  # it grew after the fstat
                raise _bad(f"the bundle's {name} is over the cap of {cap} bytes")
        return b"".join(chunks)
    except OSError as e:
        raise _bad(f"the bundle's {name} cannot be read: {_why(e)}") from None
    finally:
        os.close(fd)


def _parse_job(data: bytes, cap: int, max_depth: int) -> dict[str, Any]:
    # before any parser recurses: py_ecc (through eth_account) raises Python's
    # recursion limit to 100,000, so json's own guard would first overflow the
    # C stack (a job.json of 99,000 brackets segfaulted the provider)
    try:
        check_nesting(data, max_depth, fmt="json")
    except NestingTooDeep:
        raise _bad(f"the bundle's job.json nests deeper than {max_depth} levels") from None
    try:
        # NaN and Infinity are not JSON; strict=True keeps control characters out of strings
        job = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as e:
        raise _bad(f"the bundle's job.json is not JSON: {e}") from None
    except RecursionError:  # the C parser's own bound on nesting, far above ours
        raise _bad(f"the bundle's job.json nests deeper than {max_depth} levels") from None
    if not isinstance(job, dict):
        raise _bad(f"the bundle's job.json is a JSON {type(job).__name__}, not an object")
    if _depth(job) > max_depth:
        raise _bad(f"the bundle's job.json nests deeper than {max_depth} levels")
    return job


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON (a scalar is 0), without recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        deepest = max(deepest, depth)
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return deepest


def _args(job: dict[str, Any]) -> tuple[str, ...]:
    args = job.get("args", [])
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise _bad("the bundle's job.json has args that are not a list of strings")
    for arg in args:
        if "\0" in arg:
            raise _bad("the bundle's job.json has an argument with a NUL character")
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            raise _bad("the bundle's job.json has an argument that is not valid Unicode") from None
    return tuple(args)


def _in_dir(dir_fd: int, bundle_dir: Path) -> Path | None:
    try:
        st = os.stat("in", dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise _bad(f"the bundle's in/ cannot be read: {_why(e)}") from None
    if stat.S_ISLNK(st.st_mode):
        raise _bad("the bundle's in/ is a symlink, not a directory")
    if not stat.S_ISDIR(st.st_mode):
        raise _bad("the bundle's in/ is not a directory")
    in_dir = bundle_dir / "in"
    scan = scan_tree(in_dir, allow_symlinks=True)
    if scan.invalid is not None:
        raise _bad(f"the bundle's in/ holds something other than data: in/{scan.invalid}")
    return in_dir

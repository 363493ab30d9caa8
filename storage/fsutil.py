"""Crash-safe file primitives shared by the block store and its pin file.

One rule makes every write safe: write to a ``.tmp-*`` file in the target's
directory, fsync it, then ``rename`` it over the final name. ``rename`` within
a directory is atomic, so a reader (or a process restarted after SIGKILL or
power loss) sees either no file or the whole file, never a prefix. Leftover
``.tmp-*`` files are garbage by construction and are deleted on open.
"""

from __future__ import annotations

import os
import secrets

TMP_PREFIX = ".tmp-"

# fdatasync flushes the data and the metadata needed to read it back (the
# size), skipping timestamps: all a block needs, at about half fsync's cost.
_datasync = getattr(os, "fdatasync", os.fsync)


def write_atomic(path: str, data: bytes | memoryview, *, fsync: bool = True, mode: int = 0o600):
    """Write ``data`` to ``path`` all-or-nothing (the directory must exist)."""
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f"{TMP_PREFIX}{secrets.token_hex(8)}-{name[-8:]}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if fsync:
            _datasync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quietly(tmp)
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def fsync_dir(path: str) -> None:
    """Make renames and creations in ``path`` durable (a no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

"""UnixFS exporter: CID + a block source back to bytes, files and directories.

``get_block(cid) -> bytes`` is the only dependency, so the same code reads from
the local block store, from a CAR file, from a dict in tests, or through Kubo.
Blocks may come from peers, and a DAG from a peer is hostile: by default every
block is re-hashed against its CID and every structure is checked, and an
export is bounded so that a DAG can fail one but never escape, link, bomb or
fill the disk:

- **Nothing outside ``dest``.** Entry names must be plain names (no NUL, no
  ``/``, not ``.`` or ``..``, at most 255 bytes). Every file and directory is
  created relative to a descriptor of the directory we created just before
  (``O_EXCL | O_NOFOLLOW``), so an existing or racing symlink is never
  followed, and an entry that appears under us is ``path_exists``.
- **No symlinks** (``unsafe_entry``) unless the caller passes
  ``symlinks=True``; even then only relative targets that stay inside ``dest``
  (leading ``..`` no higher than ``dest``, no ``..`` after a name, no NUL) are
  written, and never a symlink as the root.
- **Bounded** by ``ExportLimits``: file bytes, entries, directory depth and
  blocks read. An export first walks the tree without touching the disk
  (directories, names, symlinks and each file's *declared* size), so a bomb is
  refused (``export_limit``) before anything is created; then it writes, and no
  file gets more bytes than it declared. A failed export removes what it wrote.

``read_file_in_dag`` reads one named top-level file with a byte cap, for a job's
logs, without writing anything.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from protocol.errors import StorageError
from storage.cid import DAG_PB, RAW, cid_to_str, parse_cid, verify_block
from storage.dagpb import PBNode, decode_node
from storage.unixfs import (
    HAMT_FANOUT,
    HAMT_HASH_MURMUR3,
    T_DIRECTORY,
    T_FILE,
    T_HAMT_SHARD,
    T_RAW,
    T_SYMLINK,
    UnixFSData,
    decode_unixfs,
    hamt_hash,
)

GetBlock = Callable[[str], bytes]

_HEX_UPPER = set(b"0123456789ABCDEF")
MAX_DEPTH = 64  # of one file's DAG: a 174-ary DAG of depth 8 already holds ~2^60 chunks
NAME_MAX = 255  # bytes in one path component (Linux, and most filesystems)
MAX_TREE_DEPTH = 256  # the most ExportLimits.max_depth may allow
SYMLINK_MAX = 4095  # bytes in a symlink target (PATH_MAX less the NUL)
_HAMT_MAX_DEPTH = 8


@dataclass(frozen=True, slots=True)
class ExportLimits:
    """What one export may cost. The defaults suit ``mask get`` (the user asked
    for that DAG); the job path passes tight limits for a peer's bundle or result.

    ``max_bytes``: file bytes written, all files together (each file's declared
    size is charged before any of it is written). ``max_entries``: files,
    directories and symlinks created, the root included. ``max_depth``: how
    deep an entry may sit below the root (``a/b/c`` is 3). ``max_blocks``:
    blocks read from the source (a block read twice counts twice), which bounds
    the work a small DAG can cause by sharing blocks.
    """

    max_bytes: int = 1 << 40
    max_entries: int = 1_000_000
    max_depth: int = 64
    max_blocks: int = 1 << 23

    @classmethod
    def for_tree(cls, *, max_bytes: int, max_entries: int, max_depth: int) -> ExportLimits:
        """Limits for a tree of at most that size, with ``max_blocks`` to match: two
        blocks per 256 KiB chunk of data and per entry, plus slack (``max_blocks``
        also bounds how many CAR sections are indexed in memory)."""
        blocks = 2 * (max_bytes // (256 << 10)) + 2 * max_entries + 64
        return cls(
            max_bytes=max_bytes, max_entries=max_entries, max_depth=max_depth, max_blocks=blocks
        )

    def __post_init__(self) -> None:
        _check_limit("max_bytes", self.max_bytes, 0)
        _check_limit("max_entries", self.max_entries, 1)
        _check_limit("max_depth", self.max_depth, 0, MAX_TREE_DEPTH)  # the walk recurses
        _check_limit("max_blocks", self.max_blocks, 1)


def _check_limit(name: str, value: object, least: int, most: int | None = None) -> None:
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or value < least
        or (most is not None and value > most)
    ):
        bounds = f">= {least}" if most is None else f"from {least} to {most}"
        raise ValueError(f"ExportLimits.{name} must be an int {bounds}, not {value!r}")


DEFAULT_LIMITS = ExportLimits()

_SYMLINK_HINT = (
    "a DAG's symlinks are never written by default; `mask get --symlinks` writes"
    " relative ones that stay inside the destination"
)


def iter_links(block_cid: str, data: bytes) -> list[str]:
    """Child CIDs of one block (canonical strings, in link order); raw blocks have none."""
    codec = parse_cid(block_cid).codec
    if codec == RAW:
        return []
    if codec == DAG_PB:
        return [cid_to_str(link.hash) for link in decode_node(data).links]
    raise StorageError(
        f"cannot walk block {block_cid}: codec 0x{codec:x} is not raw or dag-pb",
        code="unsupported_codec",
    )


def _show(path: tuple[bytes, ...]) -> str:
    """A DAG path for a message; repr() keeps a peer's control characters inert."""
    return repr(os.fsdecode(b"/".join(path))) if path else "the root"


def _limit(what: str, limit: int, path: tuple[bytes, ...]) -> StorageError:
    return StorageError(
        f"the DAG needs more than {limit:,} {what} (at {_show(path)})",
        code="export_limit",
        hint="the DAG is larger than this export allows; if you trust it, raise the limit",
    )


def _invalid(message: str) -> StorageError:
    return StorageError(message, code="dag_invalid")


def _unsafe(message: str, hint: str | None = None) -> StorageError:
    return StorageError(message, code="unsafe_entry", hint=hint)


def _kind(cid: str, data: bytes) -> tuple[int, PBNode | None, UnixFSData | None]:
    """``(unixfs_type, node, unixfs_data)``; a raw block is a file with neither."""
    codec = parse_cid(cid).codec
    if codec == RAW:
        return T_FILE, None, None
    if codec != DAG_PB:
        raise _invalid(f"block {cid} has codec 0x{codec:x}, not raw or dag-pb")
    node = decode_node(data)
    fs = decode_unixfs(node.data)
    return fs.type, node, fs


def _file_size(cid: str, data: bytes, node: PBNode | None, fs: UnixFSData | None) -> int:
    """A file's size as its root declares it (checked for consistency, not yet read)."""
    if node is None or fs is None:
        return len(data)
    if len(fs.blocksizes) != len(node.links):
        raise _invalid(
            f"file node {cid} has {len(node.links)} links but {len(fs.blocksizes)} blocksizes"
        )
    size = len(fs.data or b"") + sum(fs.blocksizes)
    if fs.filesize is not None and fs.filesize != size:
        raise _invalid(f"file node {cid} declares {fs.filesize} bytes but its parts sum to {size}")
    return size


def _safe_name(raw: bytes, parent: tuple[bytes, ...]) -> bytes:
    if not raw or raw in (b".", b"..") or b"/" in raw or b"\x00" in raw or len(raw) > NAME_MAX:
        shown = raw[:64] + (b"..." if len(raw) > 64 else b"")
        raise _invalid(f"directory {_show(parent)} has an unsafe entry name {shown!r}")
    return raw


class _Walk:
    """One pass over a DAG, charging every block, entry and byte to the limits."""

    def __init__(
        self, get_block: GetBlock, *, verify: bool, limits: ExportLimits, symlinks: bool
    ) -> None:
        self.get_block = get_block
        self.verify = verify
        self.limits = limits
        self.symlinks = symlinks
        self.blocks = 0
        self.bytes = 0
        self.entries = 1  # the root; directory() charges the rest
        self.created_root = False
        self.memo: dict[tuple[str, int], tuple[int, int]] = {}  # checking pass only

    # ---------------------------------------------------------------- reading
    def fetch(self, cid: str, path: tuple[bytes, ...] = ()) -> bytes:
        self.blocks += 1
        if self.blocks > self.limits.max_blocks:
            raise _limit("blocks read", self.limits.max_blocks, path)
        data = self.get_block(cid)
        if self.verify and not verify_block(cid, data):
            raise StorageError(
                f"block {cid} does not hash to its CID",
                code="block_hash_mismatch",
                hint="the block source returned corrupt data; fetch it again from another peer",
            )
        return data

    def file_chunks(
        self, cid: str, data: bytes, skip: int, want: int, depth: int = 0
    ) -> Iterator[bytes]:
        """Exactly ``want`` bytes of the file at ``cid`` from offset ``skip``.

        Sizes are checked before anything is yielded, so no subtree can yield
        more than its parent declared for it; a child covering only skipped
        bytes (or none: an empty chunk shared a million times) is never read.
        """
        if depth > MAX_DEPTH:
            raise _invalid(f"file DAG under {cid} is deeper than {MAX_DEPTH}")
        kind, node, fs = _kind(cid, data)
        if kind not in (T_FILE, T_RAW):
            raise _invalid(f"block {cid} inside a file is not a file node")
        if _file_size(cid, data, node, fs) != skip + want:
            raise _invalid(f"file block {cid} does not hold the bytes its parent declares")
        if node is None or fs is None:
            if want:
                yield data[skip:]
            return
        own = fs.data or b""
        if skip < len(own):
            yield own[skip:]
            skip = 0
        else:
            skip -= len(own)
        for link, size in zip(node.links, fs.blocksizes, strict=True):
            if skip >= size:
                skip -= size
                continue
            child = cid_to_str(link.hash)
            yield from self.file_chunks(child, self.fetch(child), skip, size - skip, depth + 1)
            skip = 0

    def directory(
        self, cid: str, kind: int, node: PBNode, path: tuple[bytes, ...]
    ) -> list[tuple[bytes, str]]:
        """A directory's ``(name, cid)`` entries, checked and charged before any is created."""
        room = self.limits.max_entries - self.entries
        entries: list[tuple[bytes, str]] = []
        if kind == T_DIRECTORY:
            source: Iterator[tuple[bytes, str]] = (
                (link.name, cid_to_str(link.hash)) for link in node.links
            )
        else:
            source = self._hamt_entries(cid, node, b"", path)
        for entry in source:
            entries.append(entry)
            if len(entries) > room:
                raise _limit("entries", self.limits.max_entries, path)
        if entries and len(path) + 1 > self.limits.max_depth:
            raise _limit("levels of directories", self.limits.max_depth, path)
        seen: set[bytes] = set()
        for raw, _ in entries:
            _safe_name(raw, path)
            if raw in seen:
                raise _invalid(f"directory {_show(path)} repeats entry {os.fsdecode(raw)!r}")
            seen.add(raw)
        self.entries += len(entries)
        return entries

    def _hamt_entries(
        self, cid: str, node: PBNode, prefix: bytes, path: tuple[bytes, ...]
    ) -> Iterator[tuple[bytes, str]]:
        """``(name, cid)`` of every entry under one HAMT shard node, checked as boxo
        would build it: murmur3, fanout 256, two-hex-digit slot prefixes matching
        the bitfield, and each entry in the slot its name hashes to."""
        fs = decode_unixfs(node.data)
        _check_shard(cid, fs)
        if len(prefix) >= _HAMT_MAX_DEPTH:
            raise _invalid(f"HAMT shard {cid} is nested too deep")
        bitfield = int.from_bytes(fs.data or b"", "big")
        slots: list[int] = []
        for link in node.links:
            slot = _slot(link.name)
            if slot < 0 or (slots and slot <= slots[-1]):
                raise _invalid(
                    f"HAMT shard {cid} has a bad or out-of-order link name {link.name!r}"
                )
            slots.append(slot)
            child = cid_to_str(link.hash)
            if len(link.name) == 2:
                sub = self._shard(cid, child, path)
                yield from self._hamt_entries(child, sub, prefix + bytes([slot]), path)
            else:
                name = link.name[2:]
                if hamt_hash(name)[: len(prefix) + 1] != prefix + bytes([slot]):
                    raise _invalid(
                        f"HAMT shard {cid} holds {name!r} in slot {slot}, not where it hashes"
                    )
                yield name, child
        if bitfield != sum(1 << slot for slot in slots):
            raise _invalid(f"HAMT shard {cid} bitfield does not match its links")

    def _shard(self, parent: str, cid: str, path: tuple[bytes, ...]) -> PBNode:
        kind, node, _ = _kind(cid, self.fetch(cid, path))
        if kind != T_HAMT_SHARD or node is None:
            raise _invalid(f"HAMT shard {parent} links to a non-shard {cid}")
        return node

    def hamt_lookup(self, cid: str, node: PBNode, name: bytes) -> str | None:
        """The CID of ``name`` in a HAMT directory, reading one shard per level."""
        want = hamt_hash(name)
        for depth in range(_HAMT_MAX_DEPTH):
            _check_shard(cid, decode_unixfs(node.data))
            prefix = b"%02X" % want[depth]
            link = next((link for link in node.links if link.name[:2] == prefix), None)
            if link is None:
                return None
            if len(link.name) > 2:
                return cid_to_str(link.hash) if link.name[2:] == name else None
            parent, cid = cid, cid_to_str(link.hash)
            node = self._shard(parent, cid, ())
        raise _invalid(f"HAMT shard {cid} is nested too deep")

    def symlink_target(self, fs: UnixFSData | None, path: tuple[bytes, ...]) -> bytes:
        """The target to write, or ``unsafe_entry``: see the module docstring."""
        if not self.symlinks:
            raise _unsafe(f"the DAG has a symlink at {_show(path)}", _SYMLINK_HINT)
        if not path:
            raise _unsafe("the DAG's root is a symlink", "only files and directories are written")
        target = (fs.data if fs else None) or b""
        why = None
        if not target or b"\x00" in target or len(target) > SYMLINK_MAX:
            why = "an empty, over-long or NUL-containing target"
        elif target.startswith(b"/"):
            why = "an absolute target"
        else:
            parts = [p for p in target.split(b"/") if p not in (b"", b".")]
            up = 0
            while up < len(parts) and parts[up] == b"..":
                up += 1
            if b".." in parts[up:] or up > len(path) - 1:
                why = "a target outside the destination"
        if why:
            raise _unsafe(
                f"the symlink at {_show(path)} has {why}: {target[:100]!r}",
                "only relative symlinks that stay inside the destination are written",
            )
        return target

    # ---------------------------------------------------------------- the tree
    def entry(self, cid: str, path: tuple[bytes, ...], parent_fd: int | None, name: bytes) -> None:
        """Check and charge the entry at ``cid``; write it when ``parent_fd`` is given.

        Without ``parent_fd`` (the checking pass) a subtree already checked at the
        same depth is charged from a memo instead of being walked again, so a
        directory shared a thousand times costs one walk, not a thousand.
        """
        key = (cid, len(path))
        if parent_fd is None and key in self.memo:
            entries, nbytes = self.memo[key]
            self._charge(entries, nbytes, path)
            return
        before = (self.entries, self.bytes)
        self._entry(cid, path, parent_fd, name)
        if parent_fd is None:
            self.memo[key] = (self.entries - before[0], self.bytes - before[1])

    def _charge(self, entries: int, nbytes: int, path: tuple[bytes, ...]) -> None:
        if entries > self.limits.max_entries - self.entries:
            raise _limit("entries", self.limits.max_entries, path)
        if nbytes > self.limits.max_bytes - self.bytes:
            raise _limit("bytes", self.limits.max_bytes, path)
        self.entries += entries
        self.bytes += nbytes

    def _entry(self, cid: str, path: tuple[bytes, ...], parent_fd: int | None, name: bytes) -> None:
        data = self.fetch(cid, path)
        kind, node, fs = _kind(cid, data)
        if kind in (T_FILE, T_RAW):
            size = _file_size(cid, data, node, fs)
            self._charge(0, size, path)
            if parent_fd is not None:
                self._write_file(parent_fd, name, path, cid, data, size)
        elif kind in (T_DIRECTORY, T_HAMT_SHARD) and node is not None:
            entries = self.directory(cid, kind, node, path)
            fd = None if parent_fd is None else self._mkdir(parent_fd, name, path)
            try:
                for child_name, child in entries:
                    self.entry(child, (*path, child_name), fd, child_name)
            finally:
                if fd is not None:
                    os.close(fd)
        elif kind == T_SYMLINK:
            target = self.symlink_target(fs, path)
            if parent_fd is not None:
                _fs_call(path, os.symlink, target, name, dir_fd=parent_fd)
        else:
            raise _invalid(f"{_show(path)} has UnixFS type {kind}, which is not exportable")

    def _write_file(
        self, parent_fd: int, name: bytes, path: tuple[bytes, ...], cid: str, data: bytes, size: int
    ) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = _fs_call(path, os.open, name, flags, 0o666, dir_fd=parent_fd)
        self.created_root = self.created_root or not path
        with os.fdopen(fd, "wb") as f:
            for chunk in self.file_chunks(cid, data, 0, size):
                _fs_call(path, f.write, chunk)
            _fs_call(path, f.flush)

    def _mkdir(self, parent_fd: int, name: bytes, path: tuple[bytes, ...]) -> int:
        _fs_call(path, os.mkdir, name, 0o777, dir_fd=parent_fd)
        self.created_root = self.created_root or not path
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        return _fs_call(path, os.open, name, flags, dir_fd=parent_fd)


def _slot(name: bytes) -> int:
    prefix = name[:2]
    return int(prefix, 16) if len(prefix) == 2 and set(prefix) <= _HEX_UPPER else -1


def _check_shard(cid: str, fs: UnixFSData) -> None:
    if fs.type != T_HAMT_SHARD or fs.hash_type != HAMT_HASH_MURMUR3 or fs.fanout != HAMT_FANOUT:
        raise StorageError(
            f"HAMT shard {cid} has hashType {fs.hash_type} and fanout {fs.fanout};"
            f" only murmur3 (0x{HAMT_HASH_MURMUR3:x}) and {HAMT_FANOUT} are supported",
            code="unsupported_dag",
        )


def _fs_call(path: tuple[bytes, ...], fn, *args, **kwargs):
    """One filesystem call; an OSError becomes a StorageError naming the DAG path."""
    try:
        return fn(*args, **kwargs)
    except FileExistsError:
        raise StorageError(
            f"{_show(path)} already exists in the destination",
            code="path_exists",
            hint="something else is writing there; choose a new destination",
        ) from None
    except OSError as e:
        raise StorageError(
            f"cannot write {_show(path)}: {e.strerror or e}",
            code="export_failed",
            hint="check the destination's free space and permissions",
        ) from None


def export(
    cid: str, get_block: GetBlock, *, verify: bool = True, limits: ExportLimits = DEFAULT_LIMITS
) -> Iterator[bytes]:
    """Yield the bytes of the file at ``cid``, chunk by chunk (flat memory)."""
    walk = _Walk(get_block, verify=verify, limits=limits, symlinks=False)
    data = walk.fetch(cid)
    kind, node, fs = _kind(cid, data)
    if kind in (T_DIRECTORY, T_HAMT_SHARD):
        raise StorageError(
            f"{cid} is a directory", code="not_a_file", hint="use export_to_path to write it out"
        )
    if kind == T_SYMLINK:
        raise StorageError(f"{cid} is a symlink", code="not_a_file")
    if kind not in (T_FILE, T_RAW):
        raise _invalid(f"{cid} has UnixFS type {kind}, which is not a file")
    size = _file_size(cid, data, node, fs)
    if size > limits.max_bytes:
        raise _limit("bytes", limits.max_bytes, ())
    yield from walk.file_chunks(cid, data, 0, size)


def export_to_path(
    cid: str,
    get_block: GetBlock,
    dest: str | os.PathLike,
    *,
    verify: bool = True,
    limits: ExportLimits = DEFAULT_LIMITS,
    symlinks: bool = False,
) -> None:
    """Write the file or directory tree at ``cid`` to ``dest`` (which must not exist).

    Raises StorageError: ``path_exists``, ``unsafe_entry`` (a symlink, unless
    ``symlinks`` allows it and it stays inside ``dest``), ``dag_invalid``
    (a malformed DAG or an unsafe name), ``export_limit`` (over ``limits``),
    ``block_hash_mismatch``, ``export_failed`` (the filesystem refused). On
    any error nothing of ``dest`` is left behind.
    """
    dest = os.path.abspath(os.fspath(dest))
    if os.path.lexists(dest):
        raise StorageError(
            f"{dest} already exists", code="path_exists", hint="choose a new destination"
        )
    parent, leaf = os.path.split(dest)
    name = os.fsencode(leaf)
    # First pass: the whole tree is checked and charged; nothing is written.
    _Walk(get_block, verify=verify, limits=limits, symlinks=symlinks).entry(cid, (), None, name)
    walk = _Walk(get_block, verify=verify, limits=limits, symlinks=symlinks)
    parent_fd = _fs_call((), os.open, parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        walk.entry(cid, (), parent_fd, name)
    except BaseException:
        if walk.created_root:
            _remove(parent_fd, name)
        raise
    finally:
        os.close(parent_fd)


def _remove(parent_fd: int, name: bytes) -> None:
    """Remove what a failed export wrote (never following a link)."""
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(os.fsdecode(name), dir_fd=parent_fd)
        else:
            os.unlink(name, dir_fd=parent_fd)
    except OSError:
        pass


def read_file_in_dag(
    root: str,
    get_block: GetBlock,
    name: str,
    *,
    max_bytes: int,
    tail: bool = False,
    verify: bool = True,
) -> tuple[bytes, bool]:
    """Read the top-level file ``name`` of the directory at ``root``: ``(data, truncated)``.

    At most ``max_bytes`` are read and returned: the first ones, or the last
    ones with ``tail=True`` (a log's end says why a job failed). ``truncated``
    says the file declares more. Only the blocks holding those bytes are read.
    Raises StorageError ``invalid_name``, ``not_a_directory`` (root),
    ``entry_not_found``, ``not_a_file`` (a directory or symlink), ``dag_invalid``.
    """
    raw = os.fsencode(name) if isinstance(name, str) else b""
    try:
        _safe_name(raw, ())
    except StorageError:
        raise StorageError(
            f"{name!r} is not the name of a top-level entry", code="invalid_name"
        ) from None
    if max_bytes < 0:
        raise ValueError("max_bytes must be >= 0")
    walk = _Walk(get_block, verify=verify, limits=DEFAULT_LIMITS, symlinks=False)
    kind, node, _ = _kind(root, walk.fetch(root))
    if kind == T_DIRECTORY and node is not None:
        found = [cid_to_str(link.hash) for link in node.links if link.name == raw]
        if len(found) > 1:
            raise _invalid(f"directory {root} repeats entry {name!r}")
        child = found[0] if found else None
    elif kind == T_HAMT_SHARD and node is not None:
        child = walk.hamt_lookup(root, node, raw)
    else:
        raise StorageError(f"{root} is not a directory", code="not_a_directory")
    if child is None:
        raise StorageError(f"{root} has no entry {name!r}", code="entry_not_found")
    data = walk.fetch(child)
    kind, node, fs = _kind(child, data)
    if kind not in (T_FILE, T_RAW):
        what = {T_SYMLINK: "a symlink", T_DIRECTORY: "a directory", T_HAMT_SHARD: "a directory"}
        raise StorageError(
            f"{name!r} in {root} is {what.get(kind, 'not a file')}", code="not_a_file"
        )
    size = _file_size(child, data, node, fs)
    skip = max(0, size - max_bytes) if tail else 0
    out = bytearray()
    chunks = walk.file_chunks(child, data, skip, size - skip)
    try:
        while len(out) < max_bytes:
            chunk = next(chunks, None)
            if chunk is None:
                break
            out += chunk[: max_bytes - len(out)]
    finally:
        chunks.close()
    return bytes(out), size > max_bytes

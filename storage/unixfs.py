"""UnixFS importer: the DAG that ``ipfs add --cid-version=1 --raw-leaves`` builds.

Rules (measured against Kubo; golden vectors in tests/unit/test_storage_cid.py
for files and tests/unit/test_storage_kubo_dirs.py for directories):

- Files are cut into fixed 262,144-byte chunks; every chunk is a raw block
  (codec 0x55). A file of one chunk *is* that raw block, the empty file too.
- Larger files form a balanced DAG of dag-pb nodes with at most 174 links:
  level 1 groups leaves 174 at a time, level 2 groups level-1 nodes, and so on
  until one node is left. Only the last node of a level can be partial, which is
  exactly the shape of Kubo's ``balanced.Layout``.
- A file node's UnixFS Data is Type=File, filesize (always written), then one
  non-packed ``blocksizes`` entry per child (the child's file bytes). Links come
  before Data, have an empty Name and a Tsize equal to the child's cumulative
  encoded size (a raw leaf's is its length).
- A directory is one dag-pb node with Data ``08 01`` (Type=Directory) and one
  link per entry, named, sorted by name bytes, Tsize = the child DAG's
  cumulative size. Hidden entries (name starting with ".") are skipped unless
  ``hidden=True``, as Kubo does by default.
- A large directory is a HAMT instead (boxo's defaults, which Kubo uses):
  when the sum over entries of ``len(name) + len(cid bytes)`` is strictly
  greater than 256 KiB (about 5,000 entries with 15-byte names). Each shard
  node has 256 slots; an entry's slot at depth ``d`` is byte ``d`` of the
  big-endian first half (h1) of MurmurHash3-x64-128 (seed 0) of its name. A
  slot holding one entry is a link named ``"%02X" % slot + name`` to the entry;
  a slot holding several is a link named ``"%02X" % slot`` to a child shard.
  Links are in slot order; the node's UnixFS Data is Type=HAMTShard, Data = the
  occupancy bitfield as a big-endian integer without leading zero bytes,
  hashType 0x22 (murmur3-x64-64), fanout 256. The shape depends only on the
  set of names, never on insertion order.
- A symlink is a dag-pb node with Data = Type=Symlink + target.

The importer is streaming: it holds one chunk and, per DAG level, the pending
links of one unfinished node (≤ 174 per level), so memory stays flat for any
file size. Every block goes to ``sink(cid, block)`` as soon as it exists.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, NamedTuple

import base58
import mmh3

from protocol.errors import StorageError
from storage.cid import (
    DAG_PB,
    RAW,
    cid_bytes_v1,
    cid_to_bytes,
    cid_to_str,
    decode_varint,
    encode_varint,
    format_cid,
)
from storage.dagpb import PBLink, encode_node, iter_fields

CHUNK_SIZE = 262_144
MAX_LINKS = 174

# UnixFS Data.Type
T_RAW, T_DIRECTORY, T_FILE, T_METADATA, T_SYMLINK, T_HAMT_SHARD = range(6)
DIRECTORY_DATA = b"\x08\x01"

# HAMT-sharded directories (boxo's HAMTShardingSize, DefaultShardWidth, HashMurmur3)
HAMT_THRESHOLD = 262_144
HAMT_FANOUT = 256
HAMT_HASH_MURMUR3 = 0x22
_HAMT_MAX_DEPTH = 8  # one byte of the 64-bit hash per level

Sink = Callable[[str, bytes], None]


@dataclass(frozen=True, slots=True)
class ImportResult:
    """What an import produced: the root CID, file bytes, blocks emitted, DAG size."""

    cid: str
    size: int  # file bytes (for a directory: sum of its files' bytes)
    blocks: int  # blocks handed to the sink (a repeated chunk counts each time)
    tsize: int  # cumulative encoded size of the DAG (what a parent link's Tsize says)


class UnixFSData(NamedTuple):
    type: int
    data: bytes | None
    filesize: int | None
    blocksizes: list[int]
    hash_type: int | None = None
    fanout: int | None = None


def encode_unixfs(
    type_: int,
    *,
    data: bytes | None = None,
    filesize: int | None = None,
    blocksizes=(),
    hash_type: int | None = None,
    fanout: int | None = None,
) -> bytes:
    """Field order 1..6 with non-packed blocksizes, as Kubo writes them."""
    out = bytearray(b"\x08" + encode_varint(type_))
    if data is not None:
        out += b"\x12" + encode_varint(len(data)) + data
    if filesize is not None:
        out += b"\x18" + encode_varint(filesize)
    for size in blocksizes:
        out += b"\x20" + encode_varint(size)
    if hash_type is not None:
        out += b"\x28" + encode_varint(hash_type)
    if fanout is not None:
        out += b"\x30" + encode_varint(fanout)
    return bytes(out)


def decode_unixfs(buf: bytes | None) -> UnixFSData:
    """Parse the UnixFS Data of a dag-pb node; raise ``dag_invalid`` if malformed."""
    if buf is None:
        raise StorageError("dag-pb node has no UnixFS Data", code="dag_invalid")
    type_: int | None = None
    data: bytes | None = None
    filesize: int | None = None
    blocksizes: list[int] = []
    hash_type: int | None = None
    fanout: int | None = None
    try:
        for field, wire, value in iter_fields(buf):
            if field == 1 and wire == 0:
                type_ = value  # type: ignore[assignment]
            elif field == 2 and wire == 2:
                data = bytes(value)  # type: ignore[arg-type]
            elif field == 3 and wire == 0:
                filesize = value  # type: ignore[assignment]
            elif field == 4 and wire == 0:
                blocksizes.append(value)  # type: ignore[arg-type]
            elif field == 4 and wire == 2:  # packed, tolerated on input
                mv, pos = value, 0
                while pos < len(mv):  # type: ignore[arg-type]
                    size, pos = decode_varint(mv, pos)  # type: ignore[arg-type]
                    blocksizes.append(size)
            elif field == 5 and wire == 0:
                hash_type = value  # type: ignore[assignment]
            elif field == 6 and wire == 0:
                fanout = value  # type: ignore[assignment]
            elif field in (7, 8):
                pass  # mode, mtime: not needed to read bytes
            else:
                raise ValueError(f"unexpected field {field} (wire type {wire})")
    except ValueError as e:
        raise StorageError(f"malformed UnixFS Data: {e}", code="dag_invalid") from None
    if type_ is None or type_ > T_HAMT_SHARD:
        raise StorageError(f"UnixFS Data has bad Type {type_}", code="dag_invalid")
    return UnixFSData(type_, data, filesize, blocksizes, hash_type, fanout)


class _Child(NamedTuple):
    cid: bytes
    tsize: int
    filesize: int


class _BalancedBuilder:
    """Balanced-DAG state: ``levels[i]`` holds the finished children of the one
    unfinished node at height ``i + 1``. A full node is emitted at once."""

    def __init__(self, sink: Sink, max_links: int, cid_version: int = 1) -> None:
        self._sink = sink
        self._max_links = max_links
        self._cid_version = cid_version
        self._levels: list[list[_Child]] = [[]]
        self.blocks = 0
        self.size = 0

    def add_leaf(self, chunk: bytes) -> None:
        if self._cid_version == 1:
            cid = cid_bytes_v1(RAW, hashlib.sha256(chunk).digest())
            self._sink(format_cid(cid), chunk)
            tsize = len(chunk)
        else:  # Kubo's legacy leaf: a dag-pb File node holding the chunk
            leaf = encode_node([], encode_unixfs(T_FILE, data=chunk or None, filesize=len(chunk)))
            cid = _emit_dag_pb(leaf, self._sink, 0)
            tsize = len(leaf)
        self.blocks += 1
        self.size += len(chunk)
        self._push(0, _Child(cid, tsize, len(chunk)))

    def _push(self, level: int, child: _Child) -> None:
        while True:
            pending = self._levels[level]
            pending.append(child)
            if len(pending) < self._max_links:
                return
            child = self._emit(pending)
            self._levels[level] = []
            level += 1
            if level == len(self._levels):
                self._levels.append([])

    def _emit(self, children: list[_Child]) -> _Child:
        filesize = sum(c.filesize for c in children)
        data = encode_unixfs(T_FILE, filesize=filesize, blocksizes=[c.filesize for c in children])
        node = encode_node([PBLink(c.cid, b"", c.tsize) for c in children], data)
        cid = _emit_dag_pb(node, self._sink, self._cid_version)
        self.blocks += 1
        return _Child(cid, len(node) + sum(c.tsize for c in children), filesize)

    def finish(self) -> _Child:
        """Close partial nodes bottom-up; the root is the lone child of the top level."""
        if self.blocks == 0:
            self.add_leaf(b"")  # the empty file is the empty raw block
        levels = self._levels
        level = 0
        while True:
            pending = levels[level]
            if pending:
                if len(pending) == 1 and not any(levels[level + 1 :]):
                    return pending[0]
                node = self._emit(pending)
                levels[level] = []
                if level + 1 == len(levels):
                    levels.append([])
                levels[level + 1].append(node)
            level += 1


def _read_full(f: BinaryIO, n: int) -> bytes:
    """Read exactly ``n`` bytes unless EOF comes first (pipes return short reads)."""
    data = f.read(n)
    if data is None:
        raise StorageError("non-blocking source returned no data", code="import_failed")
    if len(data) == n or not data:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = f.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def import_file(
    src: str | os.PathLike | BinaryIO,
    sink: Sink,
    *,
    chunk_size: int = CHUNK_SIZE,
    max_links: int = MAX_LINKS,
    cid_version: int = 1,
) -> ImportResult:
    """Import one file (path or binary file object) and return its root.

    ``chunk_size`` and ``max_links`` exist for tests that need deep DAGs from
    little data; only the defaults give Kubo's CIDs. ``cid_version=0`` is
    Kubo's legacy default (CIDv0, leaves as dag-pb File nodes), kept so that
    Kubo's many CIDv0 test vectors can check this importer; maskd itself
    always uses 1 (CIDv1, raw leaves).
    """
    if chunk_size < 1 or max_links < 2:
        raise ValueError("chunk_size must be >= 1 and max_links >= 2")
    if cid_version not in (0, 1):
        raise ValueError("cid_version must be 0 or 1")
    if isinstance(src, (str, os.PathLike)):
        try:
            # unbuffered: each read is one syscall straight into the chunk
            with open(src, "rb", buffering=0) as f:
                return import_file(
                    f, sink, chunk_size=chunk_size, max_links=max_links, cid_version=cid_version
                )
        except OSError as e:
            raise StorageError(
                f"cannot read {os.fspath(src)!r}: {e.strerror}", code="import_failed"
            ) from None
    builder = _BalancedBuilder(sink, max_links, cid_version)
    while True:
        chunk = _read_full(src, chunk_size)
        if not chunk:
            break
        builder.add_leaf(chunk)
        if len(chunk) < chunk_size:
            break
    root = builder.finish()
    return ImportResult(cid_string(root.cid), builder.size, builder.blocks, root.tsize)


def cid_string(cid: bytes) -> str:
    """What ``ipfs add`` prints: base32 for CIDv1, base58btc ``Qm…`` for CIDv0."""
    return format_cid(cid) if cid[0] == 1 else base58.b58encode(cid).decode("ascii")


def _import_symlink(path: str, sink: Sink, cid_version: int) -> ImportResult:
    target = os.fsencode(os.readlink(path))
    node = encode_node([], encode_unixfs(T_SYMLINK, data=target))
    cid = _emit_dag_pb(node, sink, cid_version)
    return ImportResult(cid_string(cid), 0, 1, len(node))


def hamt_hash(name: bytes) -> bytes:
    """The 8 hash bytes that place ``name`` in a HAMT (murmur3-x64-64: h1, big-endian)."""
    return mmh3.hash64(name, seed=0, signed=False)[0].to_bytes(8, "big")


def hamt_estimate(links: list[PBLink]) -> int:
    """boxo's size estimate of a basic directory: link name bytes + CID bytes."""
    return sum(len(link.name) + len(link.hash) for link in links)


def _emit_dag_pb(node: bytes, sink: Sink, cid_version: int) -> bytes:
    """Hand a dag-pb block to the sink (keyed by its base32 CIDv1); its binary CID."""
    digest = hashlib.sha256(node).digest()
    if cid_version == 0:
        cid = b"\x12\x20" + digest  # a CIDv0 is the bare multihash
        sink(cid_to_str(cid), node)
    else:
        cid = cid_bytes_v1(DAG_PB, digest)
        sink(format_cid(cid), node)
    return cid


def _build_shard(
    entries: list[tuple[bytes, PBLink]], depth: int, sink: Sink, cid_version: int
) -> tuple[bytes, int, int]:
    """One shard node over ``(hash, link)`` entries; ``(cid, tsize, blocks)``."""
    if depth >= _HAMT_MAX_DEPTH:
        names = ", ".join(repr(link.name) for _, link in entries[:3])
        raise StorageError(
            f"HAMT directory too deep: names {names} share a 64-bit hash",
            code="import_failed",
        )
    slots: dict[int, list[tuple[bytes, PBLink]]] = {}
    for entry in entries:
        slots.setdefault(entry[0][depth], []).append(entry)
    links: list[PBLink] = []
    bitfield = 0
    blocks = 0
    for slot in sorted(slots):
        bitfield |= 1 << slot
        prefix = b"%02X" % slot
        members = slots[slot]
        if len(members) == 1:
            link = members[0][1]
            links.append(PBLink(link.hash, prefix + link.name, link.tsize))
        else:
            cid, tsize, sub_blocks = _build_shard(members, depth + 1, sink, cid_version)
            links.append(PBLink(cid, prefix, tsize))
            blocks += sub_blocks
    data = encode_unixfs(
        T_HAMT_SHARD,
        data=bitfield.to_bytes((bitfield.bit_length() + 7) // 8, "big"),
        hash_type=HAMT_HASH_MURMUR3,
        fanout=HAMT_FANOUT,
    )
    node = encode_node(links, data)
    cid = _emit_dag_pb(node, sink, cid_version)
    return cid, len(node) + sum(link.tsize for link in links), blocks + 1


def build_directory(
    links: list[PBLink],
    sink: Sink,
    *,
    hamt_threshold: int = HAMT_THRESHOLD,
    cid_version: int = 1,
) -> tuple[str, int, int]:
    """The directory over named ``links``: one node, or a HAMT when it is too big.

    Returns ``(cid, tsize, blocks emitted)``. ``hamt_threshold=0`` never shards
    (boxo's "option disabled"); Kubo's default is 256 KiB.
    """
    if hamt_threshold and hamt_estimate(links) > hamt_threshold:
        entries = [(hamt_hash(link.name), link) for link in links]
        cid, tsize, blocks = _build_shard(entries, 0, sink, cid_version)
        return cid_string(cid), tsize, blocks
    links = sorted(links, key=lambda link: link.name)
    node = encode_node(links, DIRECTORY_DATA)
    cid = _emit_dag_pb(node, sink, cid_version)
    return cid_string(cid), len(node) + sum(link.tsize for link in links), 1


def import_path(
    path: str | os.PathLike,
    sink: Sink,
    *,
    hidden: bool = False,
    chunk_size: int = CHUNK_SIZE,
    max_links: int = MAX_LINKS,
    hamt_threshold: int = HAMT_THRESHOLD,
    cid_version: int = 1,
) -> ImportResult:
    """Import a file, a symlink or a directory tree (recursively) like ``ipfs add -r``."""
    p = os.fspath(path)
    if os.path.islink(p):
        return _import_symlink(p, sink, cid_version)
    if not os.path.isdir(p):
        return import_file(
            p, sink, chunk_size=chunk_size, max_links=max_links, cid_version=cid_version
        )
    try:
        with os.scandir(p) as it:
            entries = [e for e in it if hidden or not e.name.startswith(".")]
    except OSError as e:
        raise StorageError(f"cannot list {p!r}: {e.strerror}", code="import_failed") from None
    entries.sort(key=lambda e: os.fsencode(e.name))
    links: list[PBLink] = []
    size = blocks = 0
    for entry in entries:
        child = import_path(
            entry.path,
            sink,
            hidden=hidden,
            chunk_size=chunk_size,
            max_links=max_links,
            hamt_threshold=hamt_threshold,
            cid_version=cid_version,
        )
        links.append(PBLink(cid_to_bytes(child.cid), os.fsencode(entry.name), child.tsize))
        size += child.size
        blocks += child.blocks
    cid, tsize, dir_blocks = build_directory(
        links, sink, hamt_threshold=hamt_threshold, cid_version=cid_version
    )
    return ImportResult(cid, size, blocks + dir_blocks, tsize)

"""UnixFS exporter: CID + a block source back to bytes, files and directories.

``get_block(cid) -> bytes`` is the only dependency, so the same code reads from
the local block store, from a dict in tests, or (later) through the network
layer. Blocks may come from peers, so by default every block is re-hashed
against its CID, every structure is checked, and depth and names are bounded:
a malicious DAG can fail an export but cannot write outside ``dest``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

from protocol.errors import StorageError
from storage.cid import DAG_PB, RAW, cid_to_str, parse_cid, verify_block
from storage.dagpb import decode_node
from storage.unixfs import (
    HAMT_FANOUT,
    HAMT_HASH_MURMUR3,
    T_DIRECTORY,
    T_FILE,
    T_HAMT_SHARD,
    T_RAW,
    T_SYMLINK,
    decode_unixfs,
    hamt_hash,
)

GetBlock = Callable[[str], bytes]

_HEX_UPPER = set(b"0123456789ABCDEF")
MAX_DEPTH = 64  # a 174-ary file DAG of depth 8 already holds ~2^60 chunks


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


def _fetch(cid: str, get_block: GetBlock, verify: bool) -> bytes:
    data = get_block(cid)
    if verify and not verify_block(cid, data):
        raise StorageError(
            f"block {cid} does not hash to its CID",
            code="block_hash_mismatch",
            hint="the block source returned corrupt data; fetch it again from another peer",
        )
    return data


def _file_chunks(cid: str, data: bytes, get_block: GetBlock, verify: bool, depth: int):
    if depth > MAX_DEPTH:
        raise StorageError(f"DAG under {cid} is deeper than {MAX_DEPTH}", code="dag_invalid")
    codec = parse_cid(cid).codec
    if codec == RAW:
        yield data
        return
    if codec != DAG_PB:
        raise StorageError(f"block {cid} has unsupported codec 0x{codec:x}", code="dag_invalid")
    node = decode_node(data)
    fs = decode_unixfs(node.data)
    if fs.type not in (T_FILE, T_RAW):
        raise StorageError(f"block {cid} inside a file is not a file node", code="dag_invalid")
    if fs.data:
        yield fs.data
    for link in node.links:
        child = cid_to_str(link.hash)
        yield from _file_chunks(
            child, _fetch(child, get_block, verify), get_block, verify, depth + 1
        )


def _read_file(cid: str, data: bytes, get_block: GetBlock, verify: bool) -> Iterator[bytes]:
    expected: int | None = None
    if parse_cid(cid).codec == DAG_PB:
        expected = decode_unixfs(decode_node(data).data).filesize
    total = 0
    for chunk in _file_chunks(cid, data, get_block, verify, 0):
        total += len(chunk)
        if expected is not None and total > expected:
            break
        yield chunk
    if expected is not None and total != expected:
        raise StorageError(
            f"file {cid} holds {total} bytes but declares {expected}", code="dag_invalid"
        )


def _kind(cid: str, data: bytes) -> tuple[int, object]:
    """``(unixfs_type, decoded_node_or_None)``; a raw block is a file."""
    if parse_cid(cid).codec == RAW:
        return T_FILE, None
    node = decode_node(data)
    return decode_unixfs(node.data).type, node


def export(cid: str, get_block: GetBlock, *, verify: bool = True) -> Iterator[bytes]:
    """Yield the bytes of the file at ``cid``, chunk by chunk (flat memory)."""
    data = _fetch(cid, get_block, verify)
    kind, _ = _kind(cid, data)
    if kind in (T_DIRECTORY, T_HAMT_SHARD):
        raise StorageError(
            f"{cid} is a directory", code="not_a_file", hint="use export_to_path to write it out"
        )
    if kind == T_SYMLINK:
        raise StorageError(f"{cid} is a symlink", code="not_a_file")
    yield from _read_file(cid, data, get_block, verify)


def _safe_name(raw: bytes, parent: str) -> str:
    name = os.fsdecode(raw)
    if not raw or name in (".", "..") or "/" in name or "\x00" in name:
        raise StorageError(
            f"directory {parent} has an unsafe entry name {raw!r}", code="dag_invalid"
        )
    return name


def export_to_path(
    cid: str, get_block: GetBlock, dest: str | os.PathLike, *, verify: bool = True
) -> None:
    """Write the file, symlink or directory tree at ``cid`` to ``dest`` (must not exist)."""
    _export_node(cid, get_block, os.fspath(dest), verify, 0)


def _export_node(cid: str, get_block: GetBlock, dest: str, verify: bool, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise StorageError(f"directory tree under {cid} is too deep", code="dag_invalid")
    if os.path.lexists(dest):
        raise StorageError(
            f"{dest} already exists", code="path_exists", hint="choose a new destination"
        )
    data = _fetch(cid, get_block, verify)
    kind, node = _kind(cid, data)
    if kind in (T_FILE, T_RAW):
        with open(dest, "xb") as f:
            for chunk in _read_file(cid, data, get_block, verify):
                f.write(chunk)
    elif kind in (T_DIRECTORY, T_HAMT_SHARD):
        if kind == T_DIRECTORY:
            entries = [(link.name, cid_to_str(link.hash)) for link in node.links]  # type: ignore[attr-defined]
        else:
            entries = list(_hamt_entries(cid, node, get_block, verify, b""))
        os.mkdir(dest)
        seen: set[str] = set()
        for raw_name, child in entries:
            name = _safe_name(raw_name, cid)
            if name in seen:
                raise StorageError(f"directory {cid} repeats entry {name!r}", code="dag_invalid")
            seen.add(name)
            _export_node(child, get_block, os.path.join(dest, name), verify, depth + 1)
    elif kind == T_SYMLINK:
        target = decode_unixfs(node.data).data or b""  # type: ignore[attr-defined]
        os.symlink(os.fsdecode(target), dest)
    else:
        raise StorageError(f"{cid} has UnixFS type {kind}, not exportable", code="dag_invalid")


def _hamt_entries(
    cid: str, node, get_block: GetBlock, verify: bool, path: bytes
) -> Iterator[tuple[bytes, str]]:
    """``(name, cid)`` of every entry under one HAMT shard node, checked as boxo
    would build it: murmur3, fanout 256, two-hex-digit slot prefixes matching
    the bitfield, and each entry in the slot its name hashes to."""
    fs = decode_unixfs(node.data)
    if fs.hash_type != HAMT_HASH_MURMUR3 or fs.fanout != HAMT_FANOUT:
        raise StorageError(
            f"HAMT shard {cid} has hashType {fs.hash_type} and fanout {fs.fanout};"
            f" only murmur3 (0x{HAMT_HASH_MURMUR3:x}) and {HAMT_FANOUT} are supported",
            code="unsupported_dag",
        )
    if len(path) >= 8:
        raise StorageError(f"HAMT shard {cid} is nested too deep", code="dag_invalid")
    bitfield = int.from_bytes(fs.data or b"", "big")
    slots: list[int] = []
    for link in node.links:
        prefix = link.name[:2]
        slot = int(prefix, 16) if len(prefix) == 2 and set(prefix) <= _HEX_UPPER else -1
        if slot < 0 or (slots and slot <= slots[-1]):
            raise StorageError(
                f"HAMT shard {cid} has a bad or out-of-order link name {link.name!r}",
                code="dag_invalid",
            )
        slots.append(slot)
        child = cid_to_str(link.hash)
        if len(link.name) == 2:
            data = _fetch(child, get_block, verify)
            kind, sub = _kind(child, data)
            if kind != T_HAMT_SHARD:
                raise StorageError(
                    f"HAMT shard {cid} links to a non-shard {child}", code="dag_invalid"
                )
            yield from _hamt_entries(child, sub, get_block, verify, path + bytes([slot]))
        else:
            name = link.name[2:]
            if hamt_hash(name)[: len(path) + 1] != path + bytes([slot]):
                raise StorageError(
                    f"HAMT shard {cid} holds {name!r} in slot {slot}, not where it hashes",
                    code="dag_invalid",
                )
            yield name, child
    if bitfield != sum(1 << slot for slot in slots):
        raise StorageError(
            f"HAMT shard {cid} bitfield does not match its links", code="dag_invalid"
        )

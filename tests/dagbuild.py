"""Hand-built UnixFS DAGs for hostile-input tests: whatever a peer could send.

``Dag`` is a dict of blocks (``cid -> bytes``) with builders that do NOT
check anything, so tests can make symlinks, lying sizes, repeated names and
blocks shared many times over (the shape of a decompression bomb).
"""

from __future__ import annotations

import os
from pathlib import Path

from storage import car
from storage.cid import DAG_PB, cid_of_bytes, cid_to_bytes
from storage.dagpb import PBLink, encode_node
from storage.unixfs import (
    DIRECTORY_DATA,
    HAMT_FANOUT,
    HAMT_HASH_MURMUR3,
    T_FILE,
    T_HAMT_SHARD,
    T_SYMLINK,
    encode_unixfs,
    hamt_hash,
)


class Dag(dict):
    """Blocks by CID; every builder returns the new block's CID."""

    def __call__(self, cid: str, data: bytes) -> None:  # an importer sink too
        self[cid] = data

    def raw(self, data: bytes) -> str:
        cid = cid_of_bytes(data)
        self[cid] = data
        return cid

    def node(self, links: list[PBLink], data: bytes | None) -> str:
        block = encode_node(links, data)
        cid = cid_of_bytes(block, DAG_PB)
        self[cid] = block
        return cid

    def file(self, children: list[str], sizes: list[int], *, filesize: int | None = None) -> str:
        """A File node over ``children`` declaring ``sizes`` (and the sum as filesize)."""
        declared = sum(sizes) if filesize is None else filesize
        data = encode_unixfs(T_FILE, filesize=declared, blocksizes=sizes)
        return self.node(
            [PBLink(cid_to_bytes(c), b"", s) for c, s in zip(children, sizes, strict=False)], data
        )

    def dir(self, entries: list[tuple[bytes, str]]) -> str:
        links = [PBLink(cid_to_bytes(cid), name, 1) for name, cid in entries]
        return self.node(links, DIRECTORY_DATA)

    def symlink(self, target: bytes) -> str:
        return self.node([], encode_unixfs(T_SYMLINK, data=target))

    def hamt(self, entries: list[tuple[bytes, str]], depth: int = 0) -> str:
        """A HAMT shard built the way boxo builds it (so the exporter accepts it)."""
        slots: dict[int, list[tuple[bytes, str]]] = {}
        for name, cid in entries:
            slots.setdefault(hamt_hash(name)[depth], []).append((name, cid))
        links = []
        for slot in sorted(slots):
            members = slots[slot]
            prefix = b"%02X" % slot
            if len(members) == 1:
                name, cid = members[0]
                links.append(PBLink(cid_to_bytes(cid), prefix + name, 1))
            else:
                links.append(PBLink(cid_to_bytes(self.hamt(members, depth + 1)), prefix, 1))
        bitfield = sum(1 << s for s in slots)
        data = encode_unixfs(
            T_HAMT_SHARD,
            data=bitfield.to_bytes((bitfield.bit_length() + 7) // 8, "big"),
            hash_type=HAMT_HASH_MURMUR3,
            fanout=HAMT_FANOUT,
        )
        return self.node(links, data)

    def write_car(self, path: Path, root: str) -> Path:
        with open(path, "wb") as f:
            car.write_car([root], self.items(), f)
        return path


def tree_listing(root: Path) -> dict[str, str]:
    """``relative path -> kind`` of everything under ``root`` (links not followed)."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            out[rel] = "link" if path.is_symlink() else "dir" if path.is_dir() else "file"
    return out

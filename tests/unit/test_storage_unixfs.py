"""DAG shape, directories and the exporter (beyond the golden vectors)."""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import pytest

from protocol.errors import StorageError
from storage.cid import DAG_PB, RAW, cid_of_bytes, cid_to_str, parse_cid
from storage.dagpb import PBLink, decode_node, encode_node
from storage.exporter import export, export_to_path, iter_links
from storage.unixfs import (
    DIRECTORY_DATA,
    T_DIRECTORY,
    T_FILE,
    decode_unixfs,
    encode_unixfs,
    import_file,
    import_path,
)

EMPTY_DIR_CID = "bafybeiczsscdsbs7ffqz55asqdf3smv6klcw3gofszvwlyarci47bgf354"  # QmUNLL…


class DictSink(dict):
    def __call__(self, cid: str, data: bytes) -> None:
        self[cid] = data


def kubo_layout(n_chunks: int, max_links: int):
    """Reference: Kubo's balanced.Layout / fillNodeRec, as nested lists of leaf indexes."""
    leaves = iter(range(n_chunks))
    remaining = [n_chunks]

    def take():
        remaining[0] -= 1
        return next(leaves)

    def fill(node: list, depth: int) -> list:
        while len(node) < max_links and remaining[0] > 0:
            node.append(take() if depth == 1 else fill([], depth - 1))
        return node

    root = take()
    depth = 1
    while remaining[0] > 0:
        root = fill([root], depth)
        depth += 1
    return root


def shape(cid: str, blocks: dict) -> object:
    """Our DAG as nested lists of leaf payloads' first byte-index (chunk order)."""
    if parse_cid(cid).codec == RAW:
        return "leaf"
    return [shape(c, blocks) for c in iter_links(cid, blocks[cid])]


def relabel(tree, counter=None):
    counter = counter if counter is not None else [0]
    if isinstance(tree, list):
        return [relabel(t, counter) for t in tree]
    counter[0] += 1
    return "leaf"


@pytest.mark.parametrize(
    "n_chunks,max_links",
    [(1, 3), (2, 3), (3, 3), (4, 3), (9, 3), (10, 3), (27, 3), (28, 3), (40, 3), (175, 174)],
)
def test_shape_matches_kubo_balanced_layout(n_chunks: int, max_links: int) -> None:
    data = random.Random(n_chunks).randbytes(n_chunks * 4 - 1)  # last chunk is short
    sink = DictSink()
    result = import_file(io.BytesIO(data), sink, chunk_size=4, max_links=max_links)
    assert shape(result.cid, sink) == relabel(kubo_layout(n_chunks, max_links))


def check_node(cid: str, blocks: dict, max_links: int) -> tuple[int, int]:
    """Check one subtree's invariants; return (tsize, filesize)."""
    data = blocks[cid]
    if parse_cid(cid).codec == RAW:
        return len(data), len(data)
    node = decode_node(data)
    fs = decode_unixfs(node.data)
    assert fs.type == T_FILE and fs.data is None
    assert 1 <= len(node.links) <= max_links
    assert all(link.name == b"" for link in node.links)
    sizes = [check_node(cid_to_str(link.hash), blocks, max_links) for link in node.links]
    assert [link.tsize for link in node.links] == [t for t, _ in sizes]
    assert fs.blocksizes == [f for _, f in sizes]
    assert fs.filesize == sum(fs.blocksizes)
    return len(data) + sum(t for t, _ in sizes), fs.filesize


def test_three_level_dag_with_174_links_keeps_every_invariant() -> None:
    n = 174 * 174 + 5  # depth 3: one full depth-2 subtree and a partial one
    data = random.Random(7).randbytes(n)
    sink = DictSink()
    result = import_file(io.BytesIO(data), sink, chunk_size=1, max_links=174)
    root = decode_node(sink[result.cid])
    assert [len(decode_node(sink[cid_to_str(link.hash)]).links) for link in root.links] == [174, 1]
    tsize, filesize = check_node(result.cid, sink, 174)
    assert (tsize, filesize) == (result.tsize, n)
    assert result.blocks == n + 175 + 2 + 1  # leaves, level-1 nodes, level-2 nodes, root
    assert b"".join(export(result.cid, sink.__getitem__)) == data


def test_internal_node_bytes_are_links_first_then_data() -> None:
    sink = DictSink()
    result = import_file(io.BytesIO(b"abcdefgh"), sink, chunk_size=4)
    leaf_a, leaf_b = cid_of_bytes(b"abcd"), cid_of_bytes(b"efgh")
    expected = encode_node(
        [PBLink(_b(leaf_a), b"", 4), PBLink(_b(leaf_b), b"", 4)],
        encode_unixfs(T_FILE, filesize=8, blocksizes=[4, 4]),
    )
    assert sink[result.cid] == expected
    assert expected.startswith(b"\x12") and expected.endswith(b"\x08\x02\x18\x08\x20\x04\x20\x04")
    assert parse_cid(result.cid).codec == DAG_PB


def _b(cid: str) -> bytes:
    from storage.cid import cid_to_bytes

    return cid_to_bytes(cid)


def test_empty_directory_matches_kubo(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    sink = DictSink()
    result = import_path(tmp_path / "d", sink)
    assert result.cid == EMPTY_DIR_CID
    assert sink[EMPTY_DIR_CID] == b"\x0a\x02" + DIRECTORY_DATA


def make_tree(root: Path) -> None:
    (root / "b").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"hello world")
    (root / "b" / "big.bin").write_bytes(random.Random(1).randbytes(600_000))
    (root / "b" / "empty").write_bytes(b"")
    (root / "Z").write_bytes(b"capital sorts first")
    (root / ".hidden").write_bytes(b"skipped by default")
    os.symlink("a.txt", root / "link")


def test_directory_links_sorted_by_name_with_cumulative_tsize(tmp_path: Path) -> None:
    make_tree(tmp_path / "t")
    sink = DictSink()
    result = import_path(tmp_path / "t", sink)
    node = decode_node(sink[result.cid])
    assert node.data == DIRECTORY_DATA
    assert [link.name for link in node.links] == [b"Z", b"a.txt", b"b", b"link"]
    hello = node.links[1]
    assert cid_to_str(hello.hash) == "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"
    assert hello.tsize == 11
    total = len(sink[result.cid]) + sum(link.tsize for link in node.links)
    assert result.tsize == total
    assert decode_unixfs(decode_node(sink[cid_to_str(node.links[2].hash)]).data).type == T_DIRECTORY


def test_hidden_files_are_included_on_request(tmp_path: Path) -> None:
    make_tree(tmp_path / "t")
    sink = DictSink()
    names = [
        link.name
        for link in decode_node(sink[import_path(tmp_path / "t", sink, hidden=True).cid]).links
    ]
    assert b".hidden" in names


def test_directory_round_trip_to_path(tmp_path: Path) -> None:
    make_tree(tmp_path / "t")
    sink = DictSink()
    result = import_path(tmp_path / "t", sink)
    # the tree's symlink points inside it, so the opt-in writes it back
    export_to_path(result.cid, sink.__getitem__, tmp_path / "out", symlinks=True)
    out = tmp_path / "out"
    assert (out / "a.txt").read_bytes() == b"hello world"
    assert (out / "b" / "big.bin").read_bytes() == (tmp_path / "t" / "b" / "big.bin").read_bytes()
    assert (out / "b" / "empty").read_bytes() == b""
    assert os.readlink(out / "link") == "a.txt"
    assert not (out / ".hidden").exists()


def test_export_of_a_directory_as_bytes_is_refused(tmp_path: Path) -> None:
    make_tree(tmp_path / "t")
    sink = DictSink()
    result = import_path(tmp_path / "t", sink)
    with pytest.raises(StorageError) as info:
        list(export(result.cid, sink.__getitem__))
    assert info.value.code == "not_a_file"


def test_export_rejects_a_corrupt_block() -> None:
    sink = DictSink()
    result = import_file(io.BytesIO(b"abcdefgh"), sink, chunk_size=4)
    sink[cid_of_bytes(b"efgh")] = b"EFGH"
    with pytest.raises(StorageError) as info:
        b"".join(export(result.cid, sink.__getitem__))
    assert info.value.code == "block_hash_mismatch"


@pytest.mark.parametrize("name", [b"..", b".", b"", b"a/b"])
def test_export_refuses_entry_names_that_escape_dest(tmp_path: Path, name: bytes) -> None:
    blocks = DictSink()
    leaf = cid_of_bytes(b"x")
    blocks[leaf] = b"x"
    node = encode_node([PBLink(_b(leaf), name, 1)], DIRECTORY_DATA)
    root = cid_of_bytes(node, DAG_PB)
    blocks[root] = node
    with pytest.raises(StorageError) as info:
        export_to_path(root, blocks.__getitem__, tmp_path / "out")
    assert info.value.code == "dag_invalid"


def test_export_detects_a_lying_filesize() -> None:
    leaf = cid_of_bytes(b"abcd")
    node = encode_node(
        [PBLink(_b(leaf), b"", 4)], encode_unixfs(T_FILE, filesize=5, blocksizes=[4])
    )
    blocks = {leaf: b"abcd", cid_of_bytes(node, DAG_PB): node}
    with pytest.raises(StorageError) as info:
        b"".join(export(cid_of_bytes(node, DAG_PB), blocks.__getitem__))
    assert info.value.code == "dag_invalid"


class RepeatingStream:
    """A 'file' of ``size`` bytes that allocates nothing: one chunk served over and over."""

    def __init__(self, size: int, chunk: bytes) -> None:
        self.left = size
        self.chunk = chunk

    def read(self, n: int) -> bytes:
        assert n == len(self.chunk)
        if self.left <= 0:
            return b""
        self.left -= n
        return self.chunk


def test_importer_memory_is_flat_in_file_size() -> None:
    import tracemalloc

    chunk = random.Random(3).randbytes(262_144)

    def peak(size: int) -> int:
        tracemalloc.start()
        try:
            import_file(RepeatingStream(size, chunk), lambda cid, data: None)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, large = peak(8 << 20), peak(256 << 20)  # 32 chunks vs 1,024 chunks (two levels)
    assert large < 256 * 1024, large  # the importer's own state: links, not data
    assert large < small + 128 * 1024

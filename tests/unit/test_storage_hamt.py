"""HAMT-sharded directories: Kubo's vector, the size threshold, and the exporter's checks."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import pytest

from protocol.errors import StorageError
from storage.cid import (
    DAG_PB,
    RAW,
    cid_bytes_v1,
    cid_of_bytes,
    cid_to_bytes,
    cid_to_str,
    format_cid,
)
from storage.dagpb import PBLink, decode_node, encode_node
from storage.exporter import export_to_path
from storage.unixfs import (
    HAMT_THRESHOLD,
    T_DIRECTORY,
    T_HAMT_SHARD,
    build_directory,
    decode_unixfs,
    encode_unixfs,
    hamt_hash,
    import_path,
)

# ipfs/kubo test/sharness/t0260-sharding.sh: 2000 files `file$i` holding "$i\n",
# `ipfs add -r -Q --cid-version=1 testdata` with the sharding threshold at 1 byte.
KUBO_SHARDED_V1 = "bafybeibiemewfzzdyhq2l74wrd6qj2oz42usjlktgnlqv4yfawgouaqn4u"


class DictSink(dict):
    def __call__(self, cid: str, data: bytes) -> None:
        self[cid] = data


def kubo_testdata(root: Path) -> Path:
    root.mkdir()
    for i in range(1, 2001):
        (root / f"file{i}").write_bytes(f"{i}\n".encode())
    return root


def fake_link(name: bytes, seed: int = 0) -> PBLink:
    """A link to a raw block (36 CID bytes), without building the block."""
    digest = random.Random(hash((name, seed))).randbytes(32)
    return PBLink(cid_bytes_v1(RAW, digest), name, 10)


def test_sharded_directory_matches_kubo(tmp_path: Path) -> None:
    sink = DictSink()
    result = import_path(kubo_testdata(tmp_path / "testdata"), sink, hamt_threshold=1)
    assert result.cid == KUBO_SHARDED_V1
    root = decode_node(sink[result.cid])
    fs = decode_unixfs(root.data)
    assert (fs.type, fs.hash_type, fs.fanout) == (T_HAMT_SHARD, 0x22, 256)
    # one bit per used slot, one link per bit, in slot order
    assert int.from_bytes(fs.data, "big").bit_count() == len(root.links) > 250
    assert [int(link.name[:2], 16) for link in root.links] == sorted(
        int(link.name[:2], 16) for link in root.links
    )


def test_hamt_hash_is_murmur3_x64_h1_big_endian() -> None:
    # spaolacci/murmur3 Sum64("hello") = 0xcbd8a7b341bd9b02 (h1 of the 128-bit hash)
    assert hamt_hash(b"hello") == bytes.fromhex("cbd8a7b341bd9b02")
    assert hamt_hash(b"") == bytes(8)


def test_default_threshold_is_strictly_greater_than_256_kib() -> None:
    # each entry costs len(name) + 36 CID bytes; 4096 entries of 28-byte names = 262,144
    links = [fake_link(b"n%027d" % i) for i in range(4096)]
    assert sum(len(link.name) + len(link.hash) for link in links) == HAMT_THRESHOLD
    at = DictSink()
    cid, _, blocks = build_directory(links, at)
    assert blocks == 1
    assert decode_unixfs(decode_node(at[cid]).data).type == T_DIRECTORY
    over = DictSink()
    cid, _, blocks = build_directory([*links, fake_link(b"x")], over)
    assert blocks > 1
    assert decode_unixfs(decode_node(over[cid]).data).type == T_HAMT_SHARD


def test_zero_threshold_never_shards() -> None:
    links = [fake_link(b"entry-%06d" % i) for i in range(6000)]
    sink = DictSink()
    cid, _, blocks = build_directory(links, sink, hamt_threshold=0)
    assert blocks == 1 and decode_unixfs(decode_node(sink[cid]).data).type == T_DIRECTORY


def test_shape_depends_only_on_the_set_of_names() -> None:
    links = [fake_link(b"f%d" % i) for i in range(3000)]
    first = build_directory(links, DictSink(), hamt_threshold=1)
    random.Random(7).shuffle(links)
    assert build_directory(links, DictSink(), hamt_threshold=1) == first


def test_tsize_is_cumulative_over_all_shards() -> None:
    links = [fake_link(b"f%d" % i) for i in range(1000)]
    sink = DictSink()
    cid, tsize, blocks = build_directory(links, sink, hamt_threshold=1)
    shard_bytes = sum(len(b) for b in sink.values())
    assert len(sink) == blocks
    assert tsize == shard_bytes + sum(link.tsize for link in links)


def test_large_directory_round_trips_through_the_exporter(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    # 5,000 entries of ~27-byte names: over the default threshold, so sharded
    for i in range(5000):
        (src / f"entry-with-a-long-name-{i:05d}").write_bytes(b"%d" % (i % 97))
    (src / "sub").mkdir()
    (src / "sub" / "inner").write_bytes(b"nested")
    sink = DictSink()
    result = import_path(src, sink)
    assert decode_unixfs(decode_node(sink[result.cid]).data).type == T_HAMT_SHARD
    export_to_path(result.cid, sink.__getitem__, tmp_path / "out")
    names = sorted(os.listdir(tmp_path / "out"))
    assert names == sorted(os.listdir(src))
    assert (tmp_path / "out" / "entry-with-a-long-name-00098").read_bytes() == b"1"
    assert (tmp_path / "out" / "sub" / "inner").read_bytes() == b"nested"


def _shard(links: list[PBLink], bitfield: bytes, fanout: int = 256) -> bytes:
    return encode_node(
        links, encode_unixfs(T_HAMT_SHARD, data=bitfield, hash_type=0x22, fanout=fanout)
    )


def _export_error(root: bytes, blocks: dict, tmp_path: Path) -> StorageError:
    cid = format_cid(cid_bytes_v1(DAG_PB, hashlib.sha256(root).digest()))
    blocks = {**blocks, cid: root}
    with pytest.raises(StorageError) as info:
        export_to_path(cid, blocks.__getitem__, tmp_path / "out")
    return info.value


def _file(name: bytes) -> tuple[PBLink, dict]:
    data = b"content of " + name
    cid = cid_of_bytes(data)
    return PBLink(cid_to_bytes(cid), name, len(data)), {cid: data}


def test_exporter_rejects_an_entry_in_the_wrong_slot(tmp_path: Path) -> None:
    link, blocks = _file(b"a")
    wrong = (hamt_hash(b"a")[0] + 1) % 256
    bad = PBLink(link.hash, b"%02X" % wrong + b"a", link.tsize)
    error = _export_error(
        _shard([bad], (1 << wrong).to_bytes(32, "big").lstrip(b"\0")), blocks, tmp_path
    )
    assert error.code == "dag_invalid" and "hashes" in str(error)


def test_exporter_rejects_a_bitfield_that_disagrees_with_the_links(tmp_path: Path) -> None:
    link, blocks = _file(b"a")
    slot = hamt_hash(b"a")[0]
    good = PBLink(link.hash, b"%02X" % slot + b"a", link.tsize)
    error = _export_error(_shard([good], b"\x01\x00\x00"), blocks, tmp_path)
    assert error.code == "dag_invalid" and "bitfield" in str(error)


@pytest.mark.parametrize("name", [b"g1a", b"0ax", b" 1a", b"1"])
def test_exporter_rejects_bad_slot_prefixes(tmp_path: Path, name: bytes) -> None:
    link, blocks = _file(b"a")
    error = _export_error(_shard([PBLink(link.hash, name, link.tsize)], b"\x01"), blocks, tmp_path)
    assert error.code == "dag_invalid"


def test_exporter_rejects_other_fanouts(tmp_path: Path) -> None:
    link, blocks = _file(b"a")
    slot = hamt_hash(b"a")[0] % 16
    error = _export_error(
        _shard([PBLink(link.hash, b"%02X" % slot + b"a", 1)], b"\x01", fanout=16),
        blocks,
        tmp_path,
    )
    assert error.code == "unsupported_dag"


def test_exporter_walks_child_shards_and_checks_their_type(tmp_path: Path) -> None:
    sink = DictSink()
    cid, _, _ = build_directory([fake_link(b"f%d" % i) for i in range(600)], sink, hamt_threshold=1)
    root = decode_node(sink[cid])
    child_links = [link for link in root.links if len(link.name) == 2]
    assert child_links, "600 names over 256 slots must collide somewhere"
    # swap a child shard for a plain directory: refused
    plain = encode_node([], b"\x08\x01")
    plain_cid = cid_bytes_v1(DAG_PB, hashlib.sha256(plain).digest())
    links = [
        PBLink(plain_cid, link.name, link.tsize) if link is child_links[0] else link
        for link in root.links
    ]
    blocks = {**sink, format_cid(plain_cid): plain}
    error = _export_error(encode_node(links, root.data), blocks, tmp_path)
    assert error.code == "dag_invalid" and "non-shard" in str(error)
    assert cid_to_str(child_links[0].hash) in sink

"""Import then export gives back the same bytes, for any size and chunking."""

from __future__ import annotations

import io
import random
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from storage.cid import verify_block
from storage.exporter import export, export_to_path
from storage.unixfs import import_file, import_path


class DictSink(dict):
    def __call__(self, cid: str, data: bytes) -> None:
        self[cid] = data


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(min_value=0, max_value=5000),
    chunk_size=st.integers(min_value=1, max_value=64),
    max_links=st.integers(min_value=2, max_value=8),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_file_round_trip_any_shape(size: int, chunk_size: int, max_links: int, seed: int) -> None:
    data = random.Random(seed).randbytes(size)
    sink = DictSink()
    result = import_file(io.BytesIO(data), sink, chunk_size=chunk_size, max_links=max_links)
    assert result.size == size
    assert all(verify_block(c, d) for c, d in sink.items())
    assert b"".join(export(result.cid, sink.__getitem__)) == data


@settings(max_examples=10, deadline=None)
@given(
    size=st.sampled_from([0, 1, 262143, 262144, 262145, 524288, 700001]), seed=st.integers(0, 99)
)
def test_file_round_trip_kubo_chunking(size: int, seed: int) -> None:
    data = random.Random(seed).randbytes(size)
    sink = DictSink()
    result = import_file(io.BytesIO(data), sink)
    assert b"".join(export(result.cid, sink.__getitem__)) == data


names = st.text(
    alphabet=st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=12,
).filter(lambda n: n not in (".", "..") and not n.startswith("."))
trees = st.recursive(
    st.binary(max_size=300),
    lambda children: st.dictionaries(names, children, max_size=4),
    max_leaves=10,
)


def write_tree(path: Path, tree) -> None:
    if isinstance(tree, bytes):
        path.write_bytes(tree)
        return
    path.mkdir()
    for name, sub in tree.items():
        write_tree(path / name, sub)


def read_tree(path: Path):
    if path.is_file():
        return path.read_bytes()
    return {p.name: read_tree(p) for p in path.iterdir()}


@settings(max_examples=60, deadline=None)
@given(
    tree=st.dictionaries(names, trees, max_size=6),
    # 1: every directory is a HAMT; 60: small ones are basic, larger ones sharded
    hamt_threshold=st.sampled_from([1, 60, 262_144]),
)
def test_directory_round_trip(tree: dict, hamt_threshold: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "src", Path(tmp) / "out"
        write_tree(src, tree)
        sink = DictSink()
        opts = dict(chunk_size=64, max_links=3, hamt_threshold=hamt_threshold)
        result = import_path(src, sink, **opts)
        export_to_path(result.cid, sink.__getitem__, out)
        assert read_tree(out) == tree
        # the CID depends only on content: a second import is identical
        assert import_path(src, DictSink(), **opts).cid == result.cid

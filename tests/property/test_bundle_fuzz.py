"""Fuzz what a requester's bundle can hold, on the provider's side: job.json bytes
of any shape, and bundle trees of files, dirs, links, FIFOs in any place.
``load_bundle`` either returns a usable bundle or raises ``bad_bundle``;
nothing else, and it never blocks or follows a link out."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.errors import JobError
from worker.bundle import load_bundle

WASM = b"\0asm\x01\0\0\0"
FUZZ = settings(
    max_examples=300,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=30,
)
job_docs = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(["args", "name", "program"]), json_values, max_size=3).map(
        lambda d: json.dumps(d).encode()
    ),
    st.binary(max_size=200),
    st.integers(1, 200).map(lambda n: b"[" * n + b"]" * n),
    st.integers(1, 200).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
)


def _load(root: Path):
    return load_bundle(root, max_program_bytes=1 << 16, max_spec_bytes=1 << 12)


@FUZZ
@given(doc=job_docs)
def test_any_job_json_is_a_bundle_or_bad_bundle(doc: bytes) -> None:
    root = Path(tempfile.mkdtemp(prefix="fuzz-bundle-"))
    try:
        (root / "job.json").write_bytes(doc)
        (root / "program.wasm").write_bytes(WASM)
        try:
            b = _load(root)
        except JobError as e:
            assert e.code == "bad_bundle"
        else:
            assert isinstance(b.job, dict) and all(isinstance(a, str) for a in b.args)
    finally:
        shutil.rmtree(root)


KINDS = ["file", "dir", "link_out", "link_in", "link_loop", "fifo", "missing"]


@FUZZ
@given(
    job=st.sampled_from(KINDS),
    program=st.sampled_from(KINDS),
    inputs=st.sampled_from(KINDS),
    inner=st.lists(st.sampled_from(KINDS), max_size=4),
)
def test_any_bundle_tree_is_a_bundle_or_bad_bundle(job, program, inputs, inner) -> None:
    base = Path(tempfile.mkdtemp(prefix="fuzz-tree-"))
    root, outside = base / "bundle", base / "secret"
    root.mkdir()
    outside.write_text('{"args": ["stolen"]}')

    def make(path: Path, kind: str, content: bytes) -> None:
        if kind == "file":
            path.write_bytes(content)
        elif kind == "dir":
            path.mkdir()
        elif kind == "link_out":
            os.symlink(outside, path)
        elif kind == "link_in":
            os.symlink(".", path)
        elif kind == "link_loop":
            os.symlink(path.name, path)
        elif kind == "fifo":
            os.mkfifo(path)

    try:
        make(root / "job.json", job, b'{"args": ["a"]}')
        make(root / "program.wasm", program, WASM)
        make(root / "in", inputs, b"x")
        if inputs == "dir":
            for i, kind in enumerate(inner):
                make(root / "in" / f"e{i}", kind, b"data")
        try:
            b = _load(root)
        except JobError as e:
            assert e.code == "bad_bundle"
        else:
            assert (job, program) == ("file", "file")
            assert list(b.args) == ["a"] and b.module == WASM
            if b.in_dir is not None:
                assert not b.in_dir.is_symlink() and b.in_dir.is_dir()
                assert "fifo" not in inner
    finally:
        shutil.rmtree(base)

"""Random job specs only ever fail as ``JobError(spec_invalid)``, never anything else.

Two generators: TOML-ish text (fragments of real specs, mutated and spliced) fed
to ``load_spec``, and already-parsed documents of any shape fed to ``parse_spec``.
"""

from __future__ import annotations

import datetime
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.errors import JobError
from scheduler.spec import JobSpec, load_spec, parse_spec

KEYS = [
    "name",
    "executor",
    "program",
    "args",
    "inputs",
    "resources",
    "price",
    "verify",
    "cpu",
    "memory_mb",
    "gpu",
    "max_seconds",
    "max_fuel",
    "max_total",
    "deadline_seconds",
    "mode",
]
TEXT_VALUES = [
    '"hello"',
    '"wasm"',
    '"hello.wasm"',
    '"data/"',
    '"/"',
    '"."',
    '".."',
    '"data\\u0000"',
    '"hello\\n"',
    '"bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"',
    '"bafyXXXX"',
    '"Qm"',
    '"1000"',
    '"-1"',
    "1",
    "0",
    "-1",
    "9223372036854775807",
    "1.5",
    "nan",
    "inf",
    "true",
    "[]",
    '["10"]',
    '["data/", "data"]',
    "[1, 2]",
    "{}",
    "{ a = 1 }",
    "1979-05-27T07:32:00Z",
    "[[[[]]]]",
]


@st.composite
def toml_text(draw) -> str:
    lines = []
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.integers(0, 3))
        if kind == 0:
            lines.append(f"[{draw(st.sampled_from(KEYS))}]")
        elif kind == 1:
            lines.append(f"{draw(st.sampled_from(KEYS))} = {draw(st.sampled_from(TEXT_VALUES))}")
        elif kind == 2:
            lines.append(draw(st.text(max_size=40)))
        else:
            depth = draw(st.integers(0, 3000))
            lines.append("x = " + "[" * depth + "]" * depth)
    return "\n".join(lines)


leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=30),
    st.sampled_from(["hello.wasm", "data", "/", ".", "..", "wasm", "receipt", "1000", "\x00"]),
    st.datetimes(),
    st.just(datetime.date(2024, 1, 1)),
)
documents = st.recursive(
    leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), inner, max_size=6),
    ),
    max_leaves=30,
)


def base_dir() -> Path:
    root = Path(tempfile.mkdtemp(prefix="specfuzz-"))
    (root / "hello.wasm").write_bytes(b"\0asm\x01\0\0\0")
    (root / "data").mkdir()
    return root


BASE_DIR = base_dir()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(toml_text())
def test_random_toml_text_is_a_spec_or_spec_invalid(text: str) -> None:
    path = BASE_DIR / "job.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        assert isinstance(load_spec(path), JobSpec)
    except JobError as err:
        assert err.code == "spec_invalid" and err.hint


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    documents,
    st.dictionaries(st.sampled_from(KEYS[:8]), documents, max_size=8),
)
def test_random_documents_are_a_spec_or_spec_invalid(anything, top: dict) -> None:
    for doc in (anything, top, {"name": "a", "executor": "wasm", "program": "hello.wasm", **top}):
        try:
            assert isinstance(parse_spec(doc, base_dir=BASE_DIR), JobSpec)
        except JobError as err:
            assert err.code == "spec_invalid" and err.hint

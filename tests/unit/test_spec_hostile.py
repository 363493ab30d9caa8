"""Hostile job specs: every malformed one is ``spec_invalid`` naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocol.errors import JobError
from scheduler.spec import MAX_SPEC_BYTES, load_spec, parse_spec

BASE = {
    "name": "hello",
    "executor": "wasm",
    "program": "hello.wasm",
    "price": {"max_total": "1000"},
}


@pytest.fixture
def job_dir(tmp_path: Path) -> Path:
    (tmp_path / "hello.wasm").write_bytes(b"\0asm\x01\0\0\0")
    (tmp_path / "data").mkdir()
    return tmp_path


def invalid(job_dir: Path, **fields) -> JobError:
    with pytest.raises(JobError) as info:
        parse_spec({**BASE, **fields}, base_dir=job_dir)
    assert info.value.code == "spec_invalid"
    assert info.value.hint
    return info.value


@pytest.mark.parametrize("name", ["hello\n", "hello\r\n", "\nhello", "hel\nlo"])
def test_a_name_with_a_newline_is_refused(job_dir: Path, name: str) -> None:
    assert "job spec: name:" in invalid(job_dir, name=name).message


@pytest.mark.parametrize(
    "value",
    ["/", ".", "..", "./", "../", "data/..", "data/.", "//", "/.."],
)
def test_an_input_that_names_no_file_is_refused(job_dir: Path, value: str) -> None:
    assert "job spec: inputs[0]:" in invalid(job_dir, inputs=[value]).message


@pytest.mark.parametrize("value", ["da\x00ta", "data\x00", "\x00"])
def test_a_nul_in_a_path_is_refused_not_an_internal_error(job_dir: Path, value: str) -> None:
    assert "job spec: inputs[0]:" in invalid(job_dir, inputs=[value]).message
    assert "job spec: program:" in invalid(job_dir, program=value).message


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\tb", "a\x1bb", "a\x7fb", "a\u0085b"])
def test_an_input_name_with_a_control_character_is_refused(job_dir: Path, bad: str) -> None:
    (job_dir / bad).write_bytes(b"x")
    assert "job spec: inputs[0]:" in invalid(job_dir, inputs=[bad]).message


def test_an_over_long_input_name_is_refused(job_dir: Path) -> None:
    # a name the file system refuses (ENAMETOOLONG) must not be an internal error
    long = "x" * 300
    assert "job spec: inputs[0]:" in invalid(job_dir, inputs=[long]).message
    assert "job spec: program:" in invalid(job_dir, program=long).message
    assert "job spec: inputs[0]:" in invalid(job_dir, inputs=["d/" * 3000]).message


def test_duplicate_input_names_are_refused(job_dir: Path) -> None:
    (job_dir / "other").mkdir()
    (job_dir / "other" / "data").mkdir()
    err = invalid(job_dir, inputs=["data", "other/data"])
    assert "job spec: inputs[1]:" in err.message


def test_a_path_that_cannot_be_checked_is_refused(job_dir: Path) -> None:
    locked = job_dir / "locked"
    locked.mkdir()
    (locked / "f").write_bytes(b"x")
    locked.chmod(0)
    try:
        if (locked / "f").exists():  # running as root: permissions do not apply
            pytest.skip("root ignores directory permissions")
    except PermissionError:
        pass
    try:
        assert "job spec: inputs[0]:" in invalid(job_dir, inputs=["locked/f"]).message
    finally:
        locked.chmod(0o700)


def test_deeply_nested_toml_is_spec_invalid(job_dir: Path) -> None:
    path = job_dir / "job.toml"
    path.write_text("x = " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(JobError) as info:
        load_spec(path)
    assert info.value.code == "spec_invalid"
    path.write_text("x = " + "{a = " * 50_000 + "1" + "}" * 50_000 + "\n")
    with pytest.raises(JobError) as info:
        load_spec(path)
    assert info.value.code == "spec_invalid"


def test_an_over_large_spec_file_is_refused_before_it_is_parsed(job_dir: Path) -> None:
    path = job_dir / "job.toml"
    path.write_text("# " + "x" * MAX_SPEC_BYTES + "\n")
    with pytest.raises(JobError) as info:
        load_spec(path)
    assert info.value.code == "spec_invalid" and "bytes" in info.value.message


def test_a_spec_that_is_not_a_table_is_refused(job_dir: Path) -> None:
    with pytest.raises(JobError) as info:
        parse_spec(["name"], base_dir=job_dir)  # type: ignore[arg-type]
    assert info.value.code == "spec_invalid"


def test_a_table_key_that_is_not_a_string_is_refused(job_dir: Path) -> None:
    with pytest.raises(JobError) as info:
        parse_spec({**BASE, 1: 2}, base_dir=job_dir)  # type: ignore[dict-item]
    assert info.value.code == "spec_invalid"

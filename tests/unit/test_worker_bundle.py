"""A provider opens a stranger's job bundle as data: no link is followed, no
read is unbounded, and every malformed bundle is one typed ``bad_bundle``."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from protocol.errors import JobError
from worker.bundle import Bundle, load_bundle

WASM = b"\0asm\x01\0\0\0"


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    root = tmp_path / "bundle"
    (root / "in" / "data").mkdir(parents=True)
    (root / "in" / "data" / "x.csv").write_text("1,2\n")
    (root / "job.json").write_text(json.dumps({"name": "j", "args": ["--n", "3"]}))
    (root / "program.wasm").write_bytes(WASM)
    return root


def load(root: Path, **kw) -> Bundle:
    return load_bundle(root, **{"max_program_bytes": 1 << 20, "max_spec_bytes": 1 << 16, **kw})


def refused(root: Path, *words: str, **kw) -> JobError:
    with pytest.raises(JobError) as info:
        load(root, **kw)
    err = info.value
    assert err.code == "bad_bundle" and err.hint
    for word in words:
        assert word in err.message, err.message
    return err


def test_a_good_bundle_loads(bundle: Path) -> None:
    b = load(bundle)
    assert b.job == {"name": "j", "args": ["--n", "3"]}
    assert b.args == ("--n", "3")
    assert b.module == WASM
    assert b.in_dir == bundle / "in"


def test_no_in_dir_and_no_args(bundle: Path) -> None:
    (bundle / "in" / "data" / "x.csv").unlink()
    (bundle / "in" / "data").rmdir()
    (bundle / "in").rmdir()
    (bundle / "job.json").write_text("{}")
    b = load(bundle)
    assert (b.in_dir, b.args) == (None, ())


@pytest.mark.parametrize(
    "text",
    [
        "[]",  # crashed the daemon with AttributeError
        "null",
        '"a string"',
        "3",
        '{"args": "--n 3"}',
        '{"args": [1, 2]}',
        '{"args": ["a", null]}',
        '{"args": ["nul\\u0000inside"]}',
        '{"args": ["\\ud800"]}',  # a lone surrogate: not encodable as an argv string
        "{",
        "",
        '{"a": NaN}',
    ],
)
def test_a_job_json_that_is_not_a_job_is_refused(bundle: Path, text: str) -> None:
    (bundle / "job.json").write_text(text)
    refused(bundle, "job.json")


def test_job_json_that_is_not_utf8_is_refused(bundle: Path) -> None:
    (bundle / "job.json").write_bytes(b'{"args": ["\xff"]}')
    refused(bundle, "job.json")


def test_deeply_nested_job_json_is_refused(bundle: Path) -> None:
    (bundle / "job.json").write_text("[" * 100_000 + "]" * 100_000)
    refused(bundle, "job.json", max_spec_bytes=1 << 20)
    (bundle / "job.json").write_text('{"x": ' + "[" * 40 + "]" * 40 + "}")
    refused(bundle, "nest")


def test_oversized_job_json_is_refused(bundle: Path) -> None:
    (bundle / "job.json").write_text(json.dumps({"args": ["x" * 70_000]}))
    refused(bundle, "job.json", "65536")


def test_oversized_program_is_refused(bundle: Path) -> None:
    (bundle / "program.wasm").write_bytes(WASM + bytes(2 << 20))
    refused(bundle, "program.wasm")


@pytest.mark.parametrize("name", ["job.json", "program.wasm"])
def test_a_symlinked_file_is_refused(bundle: Path, tmp_path: Path, name: str) -> None:
    real = tmp_path / "elsewhere"
    real.write_bytes((bundle / name).read_bytes())  # even to a file that would be valid
    (bundle / name).unlink()
    (bundle / name).symlink_to(real)
    refused(bundle, name, "symlink")


def test_program_linked_to_dev_zero_is_refused_without_reading_it(bundle: Path) -> None:
    (bundle / "program.wasm").unlink()
    (bundle / "program.wasm").symlink_to("/dev/zero")  # was a MemoryError
    refused(bundle, "program.wasm")


@pytest.mark.parametrize("name", ["job.json", "program.wasm"])
def test_a_fifo_is_refused_without_blocking(bundle: Path, name: str) -> None:
    (bundle / name).unlink()
    os.mkfifo(bundle / name)
    errors: list[BaseException] = []

    def attempt() -> None:
        try:
            load(bundle)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "opening a FIFO blocked"
    [err] = errors
    assert isinstance(err, JobError) and err.code == "bad_bundle"


@pytest.mark.parametrize("name", ["job.json", "program.wasm"])
def test_a_missing_or_directory_file_is_refused(bundle: Path, name: str) -> None:
    (bundle / name).unlink()
    refused(bundle, name)
    (bundle / name).mkdir()
    refused(bundle, name)


def test_in_as_a_symlink_is_refused(bundle: Path) -> None:
    # the hostile requester's `in` -> ../../.. : the provider's data dir, keys included
    (bundle / "in" / "data" / "x.csv").unlink()
    (bundle / "in" / "data").rmdir()
    (bundle / "in").rmdir()
    (bundle / "in").symlink_to("../../../../..")
    refused(bundle, "in", "symlink")


def test_in_as_a_file_is_refused(bundle: Path) -> None:
    for p in (bundle / "in" / "data" / "x.csv", bundle / "in" / "data", bundle / "in"):
        p.unlink() if p.is_file() else p.rmdir()
    (bundle / "in").write_text("not a dir")
    refused(bundle, "in")


def test_a_fifo_inside_in_is_refused(bundle: Path) -> None:
    # opening it from the job would block in native code, past every time limit
    os.mkfifo(bundle / "in" / "data" / "pipe")
    refused(bundle, "in/data/pipe", "FIFO")


def test_a_symlink_inside_in_is_allowed(bundle: Path) -> None:
    # wasmtime resolves links inside /in itself and refuses any that leave it
    (bundle / "in" / "alias.csv").symlink_to("data/x.csv")
    assert load(bundle).in_dir == bundle / "in"


def test_a_symlinked_bundle_dir_is_refused(bundle: Path, tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to(bundle)
    refused(tmp_path / "link")


def test_a_missing_bundle_dir_is_refused(tmp_path: Path) -> None:
    refused(tmp_path / "nothing")


def test_a_job_json_nested_99000_deep_is_refused_without_crashing(tmp_path) -> None:
    """With py_ecc's recursion limit (100,000) in force, json.loads of 99,000
    brackets overflows the C stack: a hostile requester segfaulted the provider.
    Run in a child process that imports eth_account first, as the daemon does."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        f"""
        import sys
        import eth_account  # noqa: F401  (raises the recursion limit, as in maskd)
        from pathlib import Path
        from protocol.errors import JobError
        from worker.bundle import load_bundle
        d = Path({str(tmp_path)!r})
        (d / "job.json").write_text("[" * 99000 + "]" * 99000)
        (d / "program.wasm").write_bytes(b"\\0asm\\1\\0\\0\\0")
        try:
            load_bundle(d, max_program_bytes=1 << 20, max_spec_bytes=1 << 20)
        except JobError as e:
            print(e.code, sys.getrecursionlimit())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    code, limit = done.stdout.split()
    assert code == "bad_bundle" and int(limit) >= 10_000

"""What a job leaves in /out is data under caps: bytes (apparent and on disk),
entries, depth, and nothing but regular files and directories.

Checked twice: by ``check_output`` (what the daemon calls before importing an
output) on trees built here, and through ``run_wasm`` with WAT jobs.
"""

from __future__ import annotations

import ctypes
import os
import socket
import stat
from pathlib import Path

import pytest

from worker.results import check_output, remove_tree, scan_tree
from worker.wasm import WasmLimits, run_wasm

OUT_FD = 3  # no /in in these runs
O_CREAT, O_DIRECTORY = 1, 2
RIGHT_WRITE = 64


def limits(**kw) -> WasmLimits:
    return WasmLimits(**kw)


def code(error) -> str | None:
    return None if error is None else error.code


# --- check_output on trees built here ------------------------------------------


def test_an_ordinary_tree_passes(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "f").write_bytes(b"x" * 100)
    (tmp_path / "g").write_bytes(b"")
    assert check_output(tmp_path, limits()) is None
    scan = scan_tree(tmp_path)
    assert (scan.entries, scan.apparent_bytes, scan.depth, scan.invalid) == (4, 100, 3, None)


def test_a_missing_out_dir_is_an_empty_output(tmp_path: Path) -> None:
    assert check_output(tmp_path / "nothing", limits()) is None


def test_many_empty_files_are_too_many_entries(tmp_path: Path) -> None:
    for i in range(101):
        (tmp_path / str(i)).touch()
    error = check_output(tmp_path, limits(max_output_entries=100))
    assert code(error) == "output_too_many_entries"
    assert "100" in error.message and error.hint
    assert check_output(tmp_path, limits(max_output_entries=101)) is None


def test_the_walk_stops_once_over(tmp_path: Path) -> None:
    for i in range(500):
        (tmp_path / str(i)).touch()
    scan = scan_tree(tmp_path, max_entries=10)
    assert scan.entries == 11 and not scan.complete


def test_directories_count_as_entries(tmp_path: Path) -> None:
    for i in range(11):
        (tmp_path / f"d{i}").mkdir()
    assert code(check_output(tmp_path, limits(max_output_entries=10))) == "output_too_many_entries"


def _nest(root: Path, depth: int, name: str = "d") -> int:
    """``depth`` nested directories, made through fds so no path grows too long;
    returns an fd of the deepest one (caller closes it)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):
        os.mkdir(name, dir_fd=fd)
        child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    return fd


def test_deep_nesting_is_too_deep(tmp_path: Path) -> None:
    os.close(_nest(tmp_path, 33))
    assert code(check_output(tmp_path, limits())) == "output_too_deep"
    remove_tree(tmp_path / "d")
    os.close(_nest(tmp_path, 32))
    assert check_output(tmp_path, limits()) is None


def test_bytes_hidden_past_path_max_are_counted(tmp_path: Path) -> None:
    # 20 levels of 250-character names: paths past PATH_MAX (4096), where a
    # path-based walk fails and (os.walk) silently skips what is below
    fd = _nest(tmp_path, 20, "n" * 250)
    try:
        big = os.open("big", os.O_WRONLY | os.O_CREAT, dir_fd=fd)
        os.write(big, b"x" * 5000)
        os.close(big)
    finally:
        os.close(fd)
    error = check_output(tmp_path, limits(max_output_bytes=4000))
    assert code(error) == "output_too_large"


def test_a_sparse_file_counts_its_apparent_size(tmp_path: Path) -> None:
    with open(tmp_path / "big", "wb") as f:
        f.truncate(2 << 30)
    assert code(check_output(tmp_path, limits())) == "output_too_large"


def test_allocated_space_counts_even_when_the_size_says_zero(tmp_path: Path) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    try:
        keep_size = 1  # FALLOC_FL_KEEP_SIZE
        if libc.fallocate(fd, keep_size, ctypes.c_long(0), ctypes.c_long(8 << 20)) != 0:
            pytest.skip("fallocate(KEEP_SIZE) unsupported here")
    finally:
        os.close(fd)
    assert (tmp_path / "f").stat().st_size == 0
    error = check_output(tmp_path, limits(max_output_bytes=1 << 20))
    assert code(error) == "output_too_large"


@pytest.mark.parametrize("kind", ["symlink", "dangling", "fifo", "socket"])
def test_anything_but_files_and_directories_is_invalid(tmp_path: Path, kind: str) -> None:
    sub = tmp_path / "sub"
    sub.mkdir()
    target = sub / "thing"
    if kind == "symlink":
        target.symlink_to("/etc/passwd")
    elif kind == "dangling":
        target.symlink_to("../../nowhere")
    elif kind == "fifo":
        os.mkfifo(target)
    else:
        s = socket.socket(socket.AF_UNIX)
        try:
            s.bind(str(target))
        finally:
            s.close()
    error = check_output(tmp_path, limits())
    assert code(error) == "output_invalid"
    assert "sub/thing" in error.message


def test_an_out_dir_that_is_a_symlink_is_invalid(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "out").symlink_to(tmp_path / "real")
    assert code(check_output(tmp_path / "out", limits())) == "output_invalid"


def test_remove_tree_removes_what_shutil_rmtree_cannot(tmp_path: Path) -> None:
    os.close(_nest(tmp_path, 1500))  # recursion past Python's limit
    (tmp_path / "link").symlink_to("/etc")
    remove_tree(tmp_path)
    assert not tmp_path.exists()
    assert os.path.isdir("/etc")
    remove_tree(tmp_path)  # already gone: nothing to do


def test_remove_tree_does_not_follow_a_symlinked_root(tmp_path: Path) -> None:
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "f").touch()
    (tmp_path / "link").symlink_to(tmp_path / "keep")
    remove_tree(tmp_path / "link")
    assert (tmp_path / "keep" / "f").exists() and not (tmp_path / "link").exists()


# --- through run_wasm ----------------------------------------------------------


def job(body: str, data: str = "") -> bytes:
    return f"""
(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_create_directory" (func $mkdir (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_symlink" (func $symlink (param i32 i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_filestat_set_size" (func $set_size (param i32 i64) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $close (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  {data}
  ;; open name (1024, len) under dir fd with oflags; the new fd, or exit 40 + errno
  (func $open (param $dir i32) (param $len i32) (param $oflags i32) (param $rights i64) (result i32)
    (local $e i32)
    (local.set $e (call $path_open (local.get $dir) (i32.const 0) (i32.const 1024) (local.get $len)
      (local.get $oflags) (local.get $rights) (local.get $rights) (i32.const 0) (i32.const 12)))
    (if (local.get $e) (then (call $exit (i32.add (i32.const 40) (local.get $e)))))
    (i32.load (i32.const 12)))
  ;; write i as 6 letters at 1024 (a unique file name per i)
  (func $name (param $i i32) (local $k i32)
    (loop $l
      (i32.store8 (i32.add (i32.const 1024) (local.get $k))
        (i32.add (i32.const 97) (i32.and (i32.shr_u (local.get $i) (i32.mul (local.get $k) (i32.const 4)))
          (i32.const 15))))
      (local.set $k (i32.add (local.get $k) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $k) (i32.const 6)))))
  (func (export "_start") (local $i i32) (local $fd i32) {body}))
""".encode()


def files(n: int) -> bytes:
    """Create n empty files in /out (n = -1: forever)."""
    return job(
        "(loop $l (call $name (local.get $i))"
        f"  (drop (call $close (call $open (i32.const {OUT_FD}) (i32.const 6) (i32.const {O_CREAT})"
        f"    (i64.const {RIGHT_WRITE}))))"
        "  (local.set $i (i32.add (local.get $i) (i32.const 1)))"
        f"  (br_if $l (i32.ne (local.get $i) (i32.const {n}))))"
    )


def nested(levels: int) -> bytes:
    return job(
        f"(local.set $fd (i32.const {OUT_FD}))"
        "(loop $l (drop (call $mkdir (local.get $fd) (i32.const 1024) (i32.const 1)))"
        f"  (local.set $fd (call $open (local.get $fd) (i32.const 1) (i32.const {O_DIRECTORY})"
        "    (i64.const 0)))"
        "  (local.set $i (i32.add (local.get $i) (i32.const 1)))"
        f"  (br_if $l (i32.ne (local.get $i) (i32.const {levels}))))",
        data='(data (i32.const 1024) "d")',
    )


def run(wasm: bytes, tmp: Path, lim: WasmLimits):
    return run_wasm(wasm, [], None, tmp / "out", lim)


def test_a_job_with_many_empty_files_fails(tmp_path: Path) -> None:
    result = run(files(150), tmp_path, limits(max_output_entries=100))
    assert code(result.error) == "output_too_many_entries"
    assert code(result.output_error) == "output_too_many_entries"


def test_a_job_creating_files_forever_is_stopped_while_running(tmp_path: Path) -> None:
    result = run(files(-1), tmp_path, limits(max_output_entries=200, max_seconds=60))
    assert code(result.error) == "output_too_many_entries"
    assert result.usage.wall_ms < 30_000


def test_a_job_nesting_directories_fails(tmp_path: Path) -> None:
    result = run(nested(40), tmp_path, limits())
    assert code(result.error) == "output_too_deep"
    assert code(result.output_error) == "output_too_deep"


def test_a_sparse_output_fails_and_says_the_output_is_unusable(tmp_path: Path) -> None:
    wasm = job(
        f"(local.set $fd (call $open (i32.const {OUT_FD}) (i32.const 3) (i32.const {O_CREAT})"
        f"  (i64.const {(1 << 22) | RIGHT_WRITE})))"  # FD_FILESTAT_SET_SIZE
        "(drop (call $set_size (local.get $fd) (i64.const 2147483648)))",
        data='(data (i32.const 1024) "big")',
    )
    result = run(wasm, tmp_path, limits())
    assert (tmp_path / "out" / "big").stat().st_size == 2 << 30
    assert code(result.error) == "output_too_large"
    assert code(result.output_error) == "output_too_large"
    assert code(check_output(tmp_path / "out", limits())) == "output_too_large"


def test_a_job_leaving_a_symlink_fails(tmp_path: Path) -> None:
    wasm = job(
        f"(if (call $symlink (i32.const 1024) (i32.const 19) (i32.const {OUT_FD}) (i32.const 1100)"
        "  (i32.const 4)) (then (call $exit (i32.const 9))))",
        # wasmtime refuses an absolute target, not one that climbs out
        data='(data (i32.const 1024) "../../../etc/passwd") (data (i32.const 1100) "link")',
    )
    result = run(wasm, tmp_path, limits())
    assert stat.S_ISLNK((tmp_path / "out" / "link").lstat().st_mode)
    assert code(result.error) == "output_invalid"


def test_a_failed_run_still_says_whether_its_output_is_usable(tmp_path: Path) -> None:
    wasm = job(
        f"(if (call $symlink (i32.const 1024) (i32.const 1) (i32.const {OUT_FD}) (i32.const 1100)"
        "  (i32.const 4)) (then (call $exit (i32.const 9))))"
        "(call $exit (i32.const 3))",
        data='(data (i32.const 1024) "x") (data (i32.const 1100) "link")',
    )
    result = run(wasm, tmp_path, limits())
    assert code(result.output_error) == "output_invalid"


def test_an_ordinary_output_has_no_output_error(tmp_path: Path) -> None:
    result = run(files(5), tmp_path, limits())
    assert (result.exit_code, result.error, result.output_error) == (0, None, None)
    assert result.usage.output_bytes == 0


def test_a_symlinked_in_dir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "in").symlink_to(tmp_path / "real")
    with pytest.raises(NotADirectoryError):
        run_wasm(job(""), [], tmp_path / "in", tmp_path / "out", limits())


def test_limits_validate_the_new_caps() -> None:
    for bad in ({"max_output_entries": 0}, {"max_output_depth": 0}):
        with pytest.raises(ValueError):
            WasmLimits(**bad)
    default = WasmLimits()
    assert (default.max_output_entries, default.max_output_depth) == (10_000, 32)

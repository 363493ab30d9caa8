"""The WASM executor, driven by small WAT modules written inline.

Preopens are numbered in the order the executor adds them: fd 3 is /in and
fd 4 is /out when both are given (WASI's first preopen is fd 3).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from protocol.errors import JobError
from worker.wasm import CancelToken, ExecResult, WasmLimits, WasmRuntime, run_wasm

IN_FD, OUT_FD = 3, 4
O_CREAT, O_TRUNC = 1, 8
RIGHT_READ, RIGHT_WRITE = 2, 64


def wat(body: str, data: str = "", pages: int = 1) -> bytes:
    """A WASI command whose _start is ``body``; scratch memory below 1024, data from 1024."""
    return f"""
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") {pages})
  (func $write (param $fd i32) (param $ptr i32) (param $len i32) (result i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8)))
  ;; errno of opening path (ptr, len) under dirfd; the new fd lands at address 12
  (func $open (param $dir i32) (param $ptr i32) (param $len i32) (param $oflags i32) (param $rights i64)
    (result i32)
    (call $path_open (local.get $dir) (i32.const 0) (local.get $ptr) (local.get $len)
      (local.get $oflags) (local.get $rights) (local.get $rights) (i32.const 0) (i32.const 12)))
  {data}
  (func (export "_start") {body}))
""".encode()


SPIN = wat("(loop $l (br $l))")


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    out_dir.mkdir()
    (in_dir / "input.txt").write_text("some input\n")
    return in_dir, out_dir


def run(module: bytes, dirs, limits: WasmLimits = WasmLimits(), **kw) -> ExecResult:
    in_dir, out_dir = dirs
    return run_wasm(module, kw.pop("args", []), in_dir, out_dir, limits, **kw)


def test_exit_code_from_proc_exit(dirs) -> None:
    result = run(wat("(call $exit (i32.const 3))"), dirs)
    assert result.exit_code == 3
    assert result.error is None


def test_returning_from_start_is_exit_zero(dirs) -> None:
    result = run(wat(""), dirs)
    assert (result.exit_code, result.error) == (0, None)
    assert result.usage.peak_memory_bytes == 65536
    assert result.usage.fuel > 0


def test_stdout_and_stderr_are_captured_to_files(dirs) -> None:
    module = wat(
        "(drop (call $write (i32.const 1) (i32.const 1024) (i32.const 6)))"
        "(drop (call $write (i32.const 2) (i32.const 1030) (i32.const 4)))",
        data='(data (i32.const 1024) "hello\\noops")',
    )
    result = run(module, dirs)
    assert result.exit_code == 0
    assert result.stdout_path.read_bytes() == b"hello\n"
    assert result.stderr_path.read_bytes() == b"oops"
    assert not result.stdout_truncated and not result.stderr_truncated
    # Logs live beside /out, never inside it where the job could overwrite them.
    assert result.stdout_path.parent != dirs[1]


def test_stdout_is_truncated_to_the_cap_and_says_so(dirs) -> None:
    module = wat("(drop (call $write (i32.const 1) (i32.const 1024) (i32.const 5000)))")
    result = run(module, dirs, WasmLimits(max_log_bytes=1000))
    assert result.exit_code == 0
    assert result.stdout_path.stat().st_size == 1000
    assert result.stdout_truncated


def test_stdin_is_empty(dirs) -> None:
    # read up to 100 bytes from fd 0 into 1024; exit with the count read
    module = wat(
        "(i32.store (i32.const 16) (i32.const 1024)) (i32.store (i32.const 20) (i32.const 100))"
        "(drop (call $fd_read (i32.const 0) (i32.const 16) (i32.const 1) (i32.const 24)))"
        "(call $exit (i32.load (i32.const 24)))"
    )
    assert run(module, dirs).exit_code == 0


def test_args_reach_the_program(dirs) -> None:
    # args_sizes_get: argc at 0; exit with argc (program name + 2 args)
    module = b"""
(module
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $sizes (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (drop (call $sizes (i32.const 0) (i32.const 4)))
    (call $exit (i32.load (i32.const 0)))))"""
    assert run(module, dirs, args=["a", "b"]).exit_code == 3


def test_fuel_exhaustion(dirs) -> None:
    result = run(SPIN, dirs, WasmLimits(max_fuel=100_000))
    assert result.error is not None and result.error.code == "out_of_fuel"
    assert result.exit_code is None
    assert result.usage.fuel == 100_000
    assert "100000" in result.error.message


def test_fuel_use_is_deterministic(dirs) -> None:
    module = wat(
        "(local $i i32) (local.set $i (i32.const 1000))"
        "(loop $l (local.set $i (i32.sub (local.get $i) (i32.const 1))) (br_if $l (local.get $i)))"
    )
    first, second = run(module, dirs), run(module, dirs)
    assert first.usage.fuel == second.usage.fuel > 1000


def test_timeout_stops_an_infinite_loop(dirs) -> None:
    result = run(SPIN, dirs, WasmLimits(max_seconds=0.2))
    assert result.error is not None and result.error.code == "timeout"
    assert result.exit_code is None
    # Stopped by the epoch deadline near 200 ms; generous bound for a loaded 2-core box.
    assert 190 <= result.usage.wall_ms < 3000


def test_memory_limit_makes_growth_fail_and_is_reported(dirs) -> None:
    # Grow a page at a time like malloc's sbrk; on failure exit 12 (ENOMEM-ish).
    module = wat(
        "(loop $l (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1))"
        "  (then (call $exit (i32.const 12)))) (br $l))"
    )
    result = run(module, dirs, WasmLimits(memory_bytes=1 << 20))
    assert result.exit_code == 12
    assert result.error is not None and result.error.code == "memory_limit"
    assert result.usage.peak_memory_bytes == 1 << 20
    assert "exited with code 12" in result.error.message


def test_memory_limit_below_module_minimum_fails_at_start(dirs) -> None:
    result = run(wat("", pages=40), dirs, WasmLimits(memory_bytes=1 << 20))
    assert result.error is not None and result.error.code == "memory_limit"
    assert result.exit_code is None


def test_nonzero_exit_with_room_to_spare_is_not_blamed_on_memory(dirs) -> None:
    result = run(wat("(call $exit (i32.const 1))"), dirs, WasmLimits(memory_bytes=64 << 20))
    assert (result.exit_code, result.error) == (1, None)


def _write_out(name: str, size: int) -> bytes:
    n = len(name)
    return wat(
        f"(if (call $open (i32.const {OUT_FD}) (i32.const 1024) (i32.const {n})"
        f"  (i32.const {O_CREAT | O_TRUNC}) (i64.const {RIGHT_WRITE}))"
        "  (then (call $exit (i32.const 40))))"
        f"(drop (call $write (i32.load (i32.const 12)) (i32.const 2048) (i32.const {size})))",
        data=f'(data (i32.const 1024) "{name}")',
    )


def test_job_writes_to_out(dirs) -> None:
    result = run(_write_out("result.bin", 3000), dirs)
    assert (result.exit_code, result.error) == (0, None)
    assert (dirs[1] / "result.bin").stat().st_size == 3000
    assert result.usage.output_bytes == 3000


def test_out_size_cap(dirs) -> None:
    result = run(_write_out("result.bin", 3000), dirs, WasmLimits(max_output_bytes=2999))
    assert result.exit_code == 0
    assert result.error is not None and result.error.code == "output_too_large"
    assert "2999" in result.error.message


def _open_status(dir_fd: int, path: str, oflags: int = 0, rights: int = RIGHT_READ) -> bytes:
    """Exit with path_open's errno (0 if the open succeeded)."""
    return wat(
        f"(call $exit (call $open (i32.const {dir_fd}) (i32.const 1024) (i32.const {len(path)})"
        f"  (i32.const {oflags}) (i64.const {rights})))",
        data=f'(data (i32.const 1024) "{path}")',
    )


def test_reading_inside_in_works(dirs) -> None:
    assert run(_open_status(IN_FD, "input.txt"), dirs).exit_code == 0


@pytest.mark.parametrize("path", ["/etc/passwd", "../../../../etc/passwd", "escape", "../out/x"])
def test_reading_outside_in_is_denied(dirs, path: str) -> None:
    in_dir, _ = dirs
    (in_dir / "escape").symlink_to("/etc/passwd")
    result = run(_open_status(IN_FD, path), dirs)
    assert result.exit_code not in (0, None), f"opened {path}"


def test_in_is_not_writable(dirs) -> None:
    in_dir, _ = dirs
    create = run(_open_status(IN_FD, "new.txt", O_CREAT, RIGHT_WRITE), dirs)
    assert create.exit_code not in (0, None)
    assert not (in_dir / "new.txt").exists()
    overwrite = run(_open_status(IN_FD, "input.txt", O_TRUNC, RIGHT_WRITE), dirs)
    assert overwrite.exit_code not in (0, None)
    assert (in_dir / "input.txt").read_text() == "some input\n"


def test_cancel_from_another_thread(dirs) -> None:
    token = CancelToken()
    results: list[ExecResult] = []
    worker = threading.Thread(
        target=lambda: results.append(
            run(SPIN, dirs, WasmLimits(max_seconds=60), cancel_token=token)
        )
    )
    worker.start()
    assert token.wait_started(timeout=30)
    token.cancel()
    worker.join(timeout=30)
    assert not worker.is_alive()
    [result] = results
    assert result.error is not None and result.error.code == "cancelled"
    assert result.usage.wall_ms < 30_000


def test_cancel_before_start_runs_nothing(dirs) -> None:
    token = CancelToken()
    token.cancel()
    result = run(_write_out("x", 1), dirs, cancel_token=token)
    assert result.error is not None and result.error.code == "cancelled"
    assert not (dirs[1] / "x").exists()


def test_trap_is_reported_as_trap(dirs) -> None:
    result = run(wat("unreachable"), dirs)
    assert result.error is not None and result.error.code == "trap"
    assert "unreachable" in result.error.message


@pytest.mark.parametrize(
    "module", [b"garbage", b"\0asm\x01\0\0\0\xff", b"(module (func $x (i32.add)))"]
)
def test_invalid_module(dirs, module: bytes) -> None:
    result = run(module, dirs)
    assert result.error is not None and result.error.code == "invalid_module"


def test_module_importing_unknown_host_functions_is_invalid(dirs) -> None:
    module = b'(module (import "env" "socket" (func)) (func (export "_start")))'
    result = run(module, dirs)
    assert result.error is not None and result.error.code == "invalid_module"
    assert "env" in result.error.message


def test_compiled_modules_are_cached_by_hash(dirs) -> None:
    runtime = WasmRuntime()
    for _ in range(3):
        assert run(wat(""), dirs, runtime=runtime).exit_code == 0
    run(wat("(call $exit (i32.const 1))"), dirs, runtime=runtime)
    stats = runtime.statistics()
    assert (stats.compiled, stats.cache_hits, stats.cached_modules) == (2, 2, 2)


def test_module_from_a_path(dirs, tmp_path: Path) -> None:
    path = tmp_path / "m.wat"
    path.write_bytes(wat("(call $exit (i32.const 7))"))
    assert run_wasm(path, [], dirs[0], dirs[1], WasmLimits()).exit_code == 7


def test_no_in_dir(tmp_path: Path) -> None:
    result = run_wasm(wat(""), [], None, tmp_path / "out", WasmLimits())
    assert result.exit_code == 0 and (tmp_path / "out").is_dir()


def test_error_converts_to_job_error(dirs) -> None:
    result = run(SPIN, dirs, WasmLimits(max_fuel=1000))
    err = result.error.to_job_error()
    assert isinstance(err, JobError)
    assert err.code == "out_of_fuel" and err.hint


def test_limits_validate() -> None:
    for bad in ({"memory_bytes": 0}, {"max_seconds": 0}, {"max_fuel": 0}, {"max_output_bytes": -1}):
        with pytest.raises(ValueError):
            WasmLimits(**bad)


def test_works_under_address_space_limit(dirs) -> None:
    # wasmtime reserves ~4 GiB per instance by default; ours must fit in 1 GiB.
    import resource
    import subprocess
    import sys

    code = (
        "import resource, sys; from pathlib import Path;"
        "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30));"
        "from worker.wasm import run_wasm, WasmLimits;"
        f"r = run_wasm({wat('(call $exit (i32.const 5))')!r}, [], None, Path(sys.argv[1]), WasmLimits());"
        "sys.exit(r.exit_code)"
    )
    del resource
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    proc = subprocess.run(
        [sys.executable, "-c", code, str(dirs[1])], env=env, capture_output=True, timeout=60
    )
    assert proc.returncode == 5, proc.stderr.decode()[-2000:]


def test_start_section_runs_under_the_same_limits(dirs) -> None:
    looping = b'(module (memory (export "memory") 1) (func $f (loop $l (br $l))) (start $f))'
    result = run(looping, dirs, WasmLimits(max_seconds=0.2))
    assert result.error is not None and result.error.code == "timeout"
    exiting = (
        b'(module (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))'
        b' (memory (export "memory") 1) (func $f (call $exit (i32.const 4))) (start $f))'
    )
    assert run(exiting, dirs).exit_code == 4


def test_module_without_start_function(dirs) -> None:
    result = run(b'(module (memory (export "memory") 1))', dirs)
    assert result.error is not None and result.error.code == "invalid_module"
    assert "_start" in result.error.message


def test_wait_started_returns_when_a_run_never_starts(dirs) -> None:
    token = CancelToken()
    run(b"garbage", dirs, cancel_token=token)
    assert token.wait_started(timeout=0)


def test_endless_stdout_is_stopped_before_it_fills_the_disk(dirs) -> None:
    module = wat(
        "(loop $l (drop (call $write (i32.const 1) (i32.const 1024) (i32.const 4096))) (br $l))"
    )
    result = run(module, dirs, WasmLimits(max_seconds=30, max_log_bytes=4096))
    assert result.error is not None and result.error.code == "output_too_large"
    assert result.stdout_truncated and result.stdout_path.stat().st_size == 4096
    assert result.usage.wall_ms < 25_000


def test_endless_out_file_is_stopped_while_running(dirs) -> None:
    module = wat(
        f"(drop (call $open (i32.const {OUT_FD}) (i32.const 1024) (i32.const 1)"
        f"  (i32.const {O_CREAT | O_TRUNC}) (i64.const {RIGHT_WRITE})))"
        "(loop $l (drop (call $write (i32.load (i32.const 12)) (i32.const 2048) (i32.const 4096)))"
        "  (br $l))",
        data='(data (i32.const 1024) "x")',
    )
    result = run(module, dirs, WasmLimits(max_seconds=30, max_output_bytes=1 << 20))
    assert result.error is not None and result.error.code == "output_too_large"
    assert result.usage.wall_ms < 25_000


def test_precompiled_native_code_is_never_loaded(dirs) -> None:
    import wasmtime

    native = wasmtime.Module(wasmtime.Engine(), wat("(call $exit (i32.const 9))")).serialize()
    result = run(native, dirs)
    assert result.exit_code is None
    assert result.error is not None and result.error.code == "invalid_module"


def _in_call(name: str, params: str, args: str, data: str) -> bytes:
    """Exit with the errno of WASI call ``name``(``args``) (0 if it succeeded)."""
    return f"""
(module
  (import "wasi_snapshot_preview1" "{name}" (func $op (param {params}) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  {data}
  (func (export "_start") (call $exit (call $op {args}))))
""".encode()


# a provider shares one unpacked bundle between the runs of jobs with the same
# spec (maskd.jobfiles.BundleCache): no run may change what the next one reads
IN_MUTATIONS = {
    "unlink": ("path_unlink_file", "i32 i32 i32", "(i32.const 3) (i32.const 1024) (i32.const 9)"),
    "mkdir": (
        "path_create_directory",
        "i32 i32 i32",
        "(i32.const 3) (i32.const 1100) (i32.const 3)",
    ),
    "rmdir": (
        "path_remove_directory",
        "i32 i32 i32",
        "(i32.const 3) (i32.const 1200) (i32.const 3)",
    ),
    "rename": (
        "path_rename",
        "i32 i32 i32 i32 i32 i32",
        "(i32.const 3) (i32.const 1024) (i32.const 9) (i32.const 3) (i32.const 1100) (i32.const 3)",
    ),
    "set_times": (
        "path_filestat_set_times",
        "i32 i32 i32 i32 i64 i64 i32",
        "(i32.const 3) (i32.const 0) (i32.const 1024) (i32.const 9) (i64.const 0) (i64.const 0)"
        " (i32.const 5)",
    ),
}


@pytest.mark.parametrize("op", sorted(IN_MUTATIONS))
def test_a_job_cannot_change_anything_in_in(dirs, op: str) -> None:
    in_dir, _ = dirs
    (in_dir / "sub").mkdir()
    before = {p.name: (p.stat().st_mtime_ns, p.is_dir()) for p in in_dir.iterdir()}
    name, params, args = IN_MUTATIONS[op]
    data = '(data (i32.const 1024) "input.txt") (data (i32.const 1100) "new")'
    data += ' (data (i32.const 1200) "sub")'
    result = run(_in_call(name, params, args, data), dirs)
    assert result.exit_code not in (0, None), f"{op} succeeded in /in"
    assert {p.name: (p.stat().st_mtime_ns, p.is_dir()) for p in in_dir.iterdir()} == before
    assert (in_dir / "input.txt").read_text() == "some input\n"

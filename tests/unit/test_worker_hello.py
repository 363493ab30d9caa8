"""The committed examples/hello program, run through the wasm executor as the daemon will."""

from __future__ import annotations

import shutil
from pathlib import Path

from scheduler.spec import load_spec
from worker.wasm import WasmLimits, run_wasm

HELLO = Path(__file__).parents[2] / "examples" / "hello"


def fnv1a32(data: bytes) -> int:
    h = 2166136261
    for b in data:
        h = ((h ^ b) * 16777619) & 0xFFFFFFFF
    return h


def test_hello_example_runs_and_checksums_its_inputs(tmp_path: Path) -> None:
    spec = load_spec(HELLO / "job.toml")
    # Stage inputs as the daemon does: each input under /in by its name.
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    for ref in spec.inputs:
        shutil.copytree(ref.value, in_dir / ref.name)
    limits = WasmLimits(
        memory_bytes=spec.resources.memory_mb << 20,
        max_fuel=spec.resources.max_fuel,
        max_seconds=spec.resources.max_seconds,
    )

    result = run_wasm(Path(spec.program.value), list(spec.args), in_dir, tmp_path / "out", limits)

    assert (result.exit_code, result.error) == (0, None), result.stderr_path.read_text()
    assert result.stdout_path.read_text() == (
        "hello from maskd\narg 1: 10\nsum of the first 10 squares: 385\n"
    )
    fox = (HELLO / "data" / "fox.txt").read_bytes()
    assert (tmp_path / "out" / "result.txt").read_text() == (
        f"data/fox.txt {len(fox)} fnv1a32:{fnv1a32(fox):08x}\nsum_of_squares(10) = 385\n"
    )
    assert 0 < result.usage.fuel < spec.resources.max_fuel
    assert result.usage.output_bytes == (tmp_path / "out" / "result.txt").stat().st_size


def test_hello_without_inputs_or_args(tmp_path: Path) -> None:
    result = run_wasm(HELLO / "hello.wasm", [], None, tmp_path / "out", WasmLimits())
    assert (result.exit_code, result.error) == (0, None)
    assert result.stdout_path.read_text() == "hello from maskd\n"
    assert (tmp_path / "out" / "result.txt").read_text() == ""


def test_hello_is_small_enough_to_commit() -> None:
    assert (HELLO / "hello.wasm").stat().st_size < 100_000

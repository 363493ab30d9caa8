"""The use-case examples (ml-train, render, analytics), run as the daemon runs them.

Each example's job.toml must validate, its committed .wasm must run under the
wasm executor with the bundled inputs staged under /in, and its output must be
right, checked against an independent Python computation where there is one.
Sizes are kept small so the whole file runs in seconds.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import io
import json
import math
import shutil
import statistics
import struct
import subprocess
import zlib
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from types import ModuleType

import pytest

from scheduler.spec import JobSpec, load_spec
from worker.results import ExecResult
from worker.wasm import WasmLimits, run_wasm

EXAMPLES = Path(__file__).parents[2] / "examples"
ML = EXAMPLES / "ml-train"
RENDER = EXAMPLES / "render"
ANALYTICS = EXAMPLES / "analytics"


def _module(path: Path) -> ModuleType:
    """Import a script that lives outside the package tree (compose.py, make_data.py)."""
    spec = importlib.util.spec_from_file_location(f"example_{path.parent.name}_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _stage(spec: JobSpec, tmp: Path) -> Path:
    """Inputs as the daemon stages them: each under /in by its name."""
    in_dir = tmp / "in"
    in_dir.mkdir()
    for ref in spec.inputs:
        src = Path(ref.value)
        if src.is_dir():
            shutil.copytree(src, in_dir / ref.name)
        else:
            shutil.copy(src, in_dir / ref.name)
    return in_dir


def _limits(spec: JobSpec) -> WasmLimits:
    return WasmLimits(
        memory_bytes=spec.resources.memory_mb << 20,
        max_fuel=spec.resources.max_fuel,
        max_seconds=spec.resources.max_seconds,
    )


def _run(
    spec: JobSpec, tmp: Path, args: list[str] | None = None, in_dir: Path | None = None
) -> tuple[ExecResult, Path]:
    """Run the spec's program; returns the result and its /out folder."""
    tmp.mkdir(parents=True, exist_ok=True)
    if in_dir is None:
        in_dir = _stage(spec, tmp)
    out = tmp / "out"
    result = run_wasm(
        Path(spec.program.value),
        list(spec.args) if args is None else args,
        in_dir,
        out,
        _limits(spec),
    )
    return result, out


def _ok(result: ExecResult) -> None:
    assert (result.exit_code, result.error) == (0, None), result.stderr_path.read_text()


# --- ml-train -------------------------------------------------------------------


def test_ml_train_learns_and_reports_metrics(tmp_path: Path) -> None:
    spec = load_spec(ML / "job.toml")
    assert spec.name == "ml-train" and [r.name for r in spec.inputs] == ["data"]
    epochs = int(spec.args[0])
    result, out = _run(spec, tmp_path)
    _ok(result)
    assert 0 < result.usage.fuel < spec.resources.max_fuel

    metrics = json.loads((out / "metrics.json").read_text())
    model = json.loads((out / "model.json").read_text())
    assert metrics["epochs"] == epochs
    assert metrics["seed"] == int(spec.args[2])
    assert metrics["n_train"] + metrics["n_test"] == metrics["rows"] == 1200
    assert metrics["n_test"] == 240
    for key in ("loss_per_epoch", "test_loss_per_epoch"):
        losses = metrics[key]
        assert len(losses) == epochs and all(math.isfinite(x) and x > 0 for x in losses)
    assert metrics["loss_per_epoch"][-1] < metrics["loss_per_epoch"][0]
    assert metrics["train_accuracy"] > 0.85
    assert metrics["test_accuracy"] > 0.85
    assert metrics["test_accuracy"] == pytest.approx(
        metrics["test_correct"] / metrics["n_test"], abs=1e-6
    )
    assert f"test accuracy {metrics['test_accuracy']:.4f}" in result.stdout_path.read_text()

    # The model file alone reproduces the claimed accuracy over the whole dataset.
    with open(ML / "data" / "exams.csv", newline="") as f:
        rows = list(csv.reader(f))
    header, data = rows[0], rows[1:]
    assert model["features"] == header[:-1] and model["label"] == header[-1]
    correct = 0
    for row in data:
        z = model["bias"]
        for w, m, s, x in zip(model["weights"], model["mean"], model["std"], row[:-1], strict=True):
            z += w * ((float(x) - m) / s)
        correct += (z >= 0) == (row[-1] == "1")
    assert correct == metrics["train_correct"] + metrics["test_correct"]


def test_ml_train_is_deterministic_per_seed(tmp_path: Path) -> None:
    spec = load_spec(ML / "job.toml")
    runs = {}
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        result, out = _run(spec, tmp_path / name, ["3", "0.05", seed])
        _ok(result)
        runs[name] = ((out / "model.json").read_bytes(), (out / "metrics.json").read_bytes())
    assert runs["a"] == runs["b"]
    assert runs["a"][0] != runs["c"][0]


@pytest.mark.parametrize("args", [["0", "0.1", "1"], ["5", "-1", "1"], ["5", "0.1"]])
def test_ml_train_rejects_bad_args(tmp_path: Path, args: list[str]) -> None:
    result, _ = _run(load_spec(ML / "job.toml"), tmp_path, args)
    assert result.exit_code == 64 and result.error is None


def test_ml_dataset_is_reproducible() -> None:
    make_data = _module(ML / "make_data.py")
    assert make_data.generate() == (ML / "data" / "exams.csv").read_text()


# --- render ---------------------------------------------------------------------


def _render(tmp: Path, args: list[str]) -> bytes:
    result, out = _run(load_spec(RENDER / "job.toml"), tmp, args)
    _ok(result)
    return (out / "tile.ppm").read_bytes()


def test_render_job_renders_its_tile(tmp_path: Path) -> None:
    compose = _module(RENDER / "compose.py")
    spec = load_spec(RENDER / "job.toml")
    assert spec.inputs == ()
    width, height, _x, _y, tw, th = (int(a) for a in spec.args)
    assert list(spec.args) == compose.plan_tiles(width, height, tw)[0]
    result, out = _run(spec, tmp_path)
    _ok(result)
    assert 0 < result.usage.fuel < spec.resources.max_fuel
    w, h, rgb = compose.parse_ppm((out / "tile.ppm").read_bytes())
    assert (w, h) == (tw, th)
    assert len(rgb) == tw * th * 3
    assert len({rgb[i : i + 3] for i in range(0, len(rgb), 3)}) > 10  # the sky's gradient


def test_render_tiles_are_seamless(tmp_path: Path) -> None:
    compose = _module(RENDER / "compose.py")
    width, height = 48, 32
    whole = compose.parse_ppm(_render(tmp_path / "whole", ["48", "32", "0", "0", "48", "32"]))[2]
    left = compose.parse_ppm(_render(tmp_path / "left", ["48", "32", "0", "0", "24", "32"]))[2]
    right = compose.parse_ppm(_render(tmp_path / "right", ["48", "32", "24", "0", "24", "32"]))[2]
    side = 24 * 3
    joined = b"".join(
        left[y * side : (y + 1) * side] + right[y * side : (y + 1) * side] for y in range(height)
    )
    assert joined == whole
    assert len({whole[i : i + 3] for i in range(0, len(whole), 3)}) > 200  # a scene, not a fill

    # Any tiling, uneven edge tiles included, composes to the same image.
    plan = compose.plan_tiles(width, height, 20)
    assert len(plan) == 6
    tiles = [(args, _render(tmp_path / f"t{i}", args)) for i, args in enumerate(plan)]
    assert compose.compose(tiles, width, height) == compose.encode_png(width, height, whole)


def _png_chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos = [], 8
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind, body = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", png[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF, kind
        chunks.append((kind, body))
        pos += 12 + length
    return chunks


def test_compose_writes_a_valid_png(tmp_path: Path) -> None:
    compose = _module(RENDER / "compose.py")
    width, height = 40, 24
    plan = compose.plan_tiles(width, height, 16)
    tiles = [(args, _render(tmp_path / f"t{i}", args)) for i, args in enumerate(plan)]
    png = compose.compose(tiles, width, height)

    chunks = _png_chunks(png)
    assert [k for k, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    assert struct.unpack(">IIBBBBB", chunks[0][1]) == (width, height, 8, 2, 0, 0, 0)
    raw = zlib.decompress(chunks[1][1])
    stride = width * 3
    assert len(raw) == height * (stride + 1)
    assert all(raw[y * (stride + 1)] == 0 for y in range(height))  # filter: none
    pixels = b"".join(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)] for y in range(height))
    whole = _render(
        tmp_path / "whole", [str(width), str(height), "0", "0", str(width), str(height)]
    )
    assert pixels == compose.parse_ppm(whole)[2]


def test_plan_tiles_covers_the_image_once() -> None:
    compose = _module(RENDER / "compose.py")
    plan = compose.plan_tiles(50, 30, 16)
    assert len(plan) == 4 * 2
    seen = [[0] * 50 for _ in range(30)]
    for args in plan:
        w, h, x, y, tw, th = (int(a) for a in args)
        assert (w, h) == (50, 30) and 1 <= tw <= 16 and 1 <= th <= 16
        for yy in range(y, y + th):
            for xx in range(x, x + tw):
                seen[yy][xx] += 1
    assert all(c == 1 for row in seen for c in row)
    assert compose.plan_tiles(8, 8, 100) == [["8", "8", "0", "0", "8", "8"]]
    with pytest.raises(ValueError):
        compose.plan_tiles(0, 8, 4)


def test_compose_refuses_gaps_overlaps_and_wrong_sizes() -> None:
    compose = _module(RENDER / "compose.py")

    def ppm(w: int, h: int) -> bytes:
        return b"P6\n%d %d\n255\n" % (w, h) + bytes(w * h * 3)

    plan = compose.plan_tiles(4, 2, 2)
    full = [(args, ppm(2, 2)) for args in plan]
    assert compose.compose(full, 4, 2)[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no tile covers"):
        compose.compose(full[:1], 4, 2)
    with pytest.raises(ValueError, match="overlaps"):
        compose.compose([*full, full[0]], 4, 2)
    with pytest.raises(ValueError, match="the plan said"):
        compose.compose([(plan[0], ppm(1, 2)), full[1]], 4, 2)
    with pytest.raises(ValueError, match="outside"):
        compose.compose([(["4", "2", "3", "0"], ppm(2, 2))], 4, 2)


@pytest.mark.parametrize(
    "args",
    [["8", "8", "4", "0", "5", "8"], ["8", "8", "0", "0", "0", "8"], ["8", "8", "0", "0"]],
)
def test_render_rejects_tiles_outside_the_image(tmp_path: Path, args: list[str]) -> None:
    result, out = _run(load_spec(RENDER / "job.toml"), tmp_path, args)
    assert result.exit_code == 64 and result.error is None
    assert not (out / "tile.ppm").exists()


# --- analytics ------------------------------------------------------------------


def _reference(csv_text: str, top_n: int) -> dict:
    """The report's numbers, computed independently in Python (money in cents)."""
    rows = list(csv.DictReader(io.StringIO(csv_text)))
    groups: dict[str, dict[str, list[int]]] = {
        k: defaultdict(lambda: [0, 0, 0]) for k in ("region", "product", "month", "pair")
    }
    values = []
    for r in rows:
        units = int(r["units"])
        cents = units * int(Decimal(r["price"]) * 100)
        values.append(cents)
        for kind, key in (
            ("region", r["region"]),
            ("product", r["product"]),
            ("month", r["date"][:7]),
            ("pair", (r["region"], r["product"])),
        ):
            g = groups[kind][key]
            g[0] += 1
            g[1] += units
            g[2] += cents

    def by_revenue(table: dict) -> list:
        return sorted(table.items(), key=lambda kv: (-kv[1][2], kv[0]))

    def entry(name: str, key: str, g: list[int]) -> dict:
        return {name: key, "orders": g[0], "units": g[1], "revenue": Decimal(g[2]) / 100}

    total = sum(values)
    regions = []
    for key, g in by_revenue(groups["region"]):
        e = entry("region", key, g)
        e["share"] = round(g[2] / total, 4)
        pairs = [(p, pg) for (r, p), pg in by_revenue(groups["pair"]) if r == key]
        e["top_products"] = [entry("product", p, pg) for p, pg in pairs[:top_n]]
        regions.append(e)
    return {
        "rows": len(rows),
        "total": {
            "orders": len(rows),
            "units": sum(int(r["units"]) for r in rows),
            "revenue": Decimal(total) / 100,
        },
        "order_value": {
            "mean": statistics.fmean(values) / 100,
            "median": Decimal(str(statistics.median(values))) / 100,
            "stddev": statistics.pstdev(values) / 100,
            "min": Decimal(min(values)) / 100,
            "max": Decimal(max(values)) / 100,
        },
        "regions": regions,
        "top_products": [entry("product", k, g) for k, g in by_revenue(groups["product"])[:top_n]],
        "all_products": [entry("product", k, g) for k, g in by_revenue(groups["product"])],
        "months": [entry("month", k, g) for k, g in sorted(groups["month"].items())],
    }


def test_analytics_report_matches_a_python_reference(tmp_path: Path) -> None:
    spec = load_spec(ANALYTICS / "job.toml")
    top_n = int(spec.args[0])
    result, out = _run(spec, tmp_path)
    _ok(result)
    assert 0 < result.usage.fuel < spec.resources.max_fuel

    report = json.loads((out / "report.json").read_text(), parse_float=Decimal)
    ref = _reference((ANALYTICS / "data" / "sales.csv").read_text(), top_n)
    assert report["rows"] == ref["rows"] == 5000
    assert report["total"] == ref["total"]
    assert report["top_n"] == top_n
    assert report["top_products"] == ref["top_products"]
    assert report["months"] == ref["months"]
    assert len(report["months"]) == 12
    assert len(report["regions"]) == len(ref["regions"])
    for got, want in zip(report["regions"], ref["regions"], strict=True):
        assert float(got.pop("share")) == pytest.approx(want.pop("share"), abs=1e-4)
        assert got == want
    stats, ref_stats = report["order_value"], ref["order_value"]
    for exact in ("median", "min", "max"):
        assert stats[exact] == ref_stats[exact], exact
    for approx in ("mean", "stddev"):
        assert float(stats[approx]) == pytest.approx(ref_stats[approx], abs=1e-4), approx

    lines = (out / "report.csv").read_text().splitlines()
    table = list(csv.reader(lines))
    assert table[0] == ["section", "key", "orders", "units", "revenue"]
    total = ref["total"]
    assert table[1] == ["total", "all", "5000", str(total["units"]), f"{total['revenue']:.2f}"]
    expected = [
        [section, e[section], str(e["orders"]), str(e["units"]), f"{e['revenue']:.2f}"]
        for section, entries in (
            ("region", ref["regions"]),
            ("product", ref["all_products"]),
            ("month", ref["months"]),
        )
        for e in entries
    ]
    assert table[2:] == expected

    stdout = result.stdout_path.read_text()
    assert f"5000 order lines, {total['units']} units, revenue {total['revenue']:.2f}" in stdout
    assert f"top region: {ref['regions'][0]['region']}" in stdout


def test_analytics_reports_a_malformed_line(tmp_path: Path) -> None:
    spec = load_spec(ANALYTICS / "job.toml")
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    (in_dir / "bad.csv").write_text(
        "date,region,product,units,price\n2024-01-02,North,widget,2,4.99\n2024-13-40,North,x,1,1\n"
    )
    result, out = _run(spec, tmp_path, ["3", "/in/bad.csv"], in_dir=in_dir)
    assert result.exit_code == 2 and result.error is None
    assert "/in/bad.csv:3: date must be YYYY-MM-DD" in result.stderr_path.read_text()
    assert not (out / "report.json").exists()


def test_analytics_dataset_is_reproducible() -> None:
    make_data = _module(ANALYTICS / "make_data.py")
    assert make_data.generate() == (ANALYTICS / "data" / "sales.csv").read_text()


# --- every example --------------------------------------------------------------

_BUILDS = {
    "hello": ("hello.c", "hello.wasm"),
    "ml-train": ("train.c", "train.wasm"),
    "render": ("render.c", "render.wasm"),
    "analytics": ("analyze.c", "analyze.wasm"),
}


def _can_build_wasm() -> bool:
    """The toolchain that built the committed files: Debian 12's clang 14 and wasi-libc.

    Another compiler version emits different (equally valid) code, so the
    byte-for-byte comparison only means something with this one.
    """
    if not (shutil.which("clang") and shutil.which("make")):
        return False
    version = subprocess.run(["clang", "--version"], capture_output=True, text=True).stdout
    return bool(
        "clang version 14." in version
        and Path("/usr/lib/wasm32-wasi/libc.a").exists()
        and list(Path("/usr/lib/llvm-14/lib/clang").glob("*/lib/wasi/libclang_rt.builtins-*.a"))
    )


@pytest.mark.parametrize("name", sorted(_BUILDS))
def test_example_wasm_is_committed_small_and_valid(name: str) -> None:
    wasm = EXAMPLES / name / _BUILDS[name][1]
    data = wasm.read_bytes()
    assert data[:8] == b"\0asm\x01\0\0\0" and len(data) < 100_000
    load_spec(EXAMPLES / name / "job.toml")


@pytest.mark.skipif(not _can_build_wasm(), reason="needs make, clang 14 and wasi-libc for wasm32")
@pytest.mark.parametrize("name", sorted(_BUILDS))
def test_example_wasm_rebuild_is_reproducible(tmp_path: Path, name: str) -> None:
    source, target = _BUILDS[name]
    for f in (source, "Makefile"):
        shutil.copy(EXAMPLES / name / f, tmp_path / f)
    # Built elsewhere, so the output must not depend on the build directory either.
    subprocess.run(
        ["make", "-s", target], cwd=tmp_path, check=True, capture_output=True, timeout=120
    )
    committed = hashlib.sha256((EXAMPLES / name / target).read_bytes()).hexdigest()
    assert hashlib.sha256((tmp_path / target).read_bytes()).hexdigest() == committed

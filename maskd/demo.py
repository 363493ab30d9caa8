"""The jobs of ``mask demo``: one real job per use case, run over a devnet.

The requester (node 0) submits the examples concurrently, polls
``v1.jobs.list`` until every job is terminal or the deadline passes, fetches
each result into the demo dir and reads one line of meaning out of it:

- hello: its ``sum of ...`` line;
- ml-train: the test accuracy from ``out/metrics.json``;
- analytics: the headline of ``out/report.json``;
- zk-stats: the statistics a provider proved over 16 private values
  (``out/outputs.json``), with the Groth16 proof checked once more here;
- render: one job per 160-px tile of a 640x480 image, composed with
  ``examples/render/compose.py`` into ``<demo dir>/render.png``.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
import time
import tomllib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

from maskd.devnet import DevnetError, DevNode
from maskd.devnet_chain import dump_toml

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TERMINAL = ("completed", "failed", "cancelled")
RENDER_SIZE = (640, 480)
RENDER_TILE = 160
TOKEN_UNIT = Decimal(10) ** 18

Progress = Callable[[str], None]


@dataclass
class DemoJob:
    """One submitted job and what became of it."""

    label: str  # "hello", "render 3/12", ...
    use_case: str  # "hello", "ml-train", "analytics", "render"
    spec: Path
    args: list[str] | None = None  # render tiles: the tile's args
    slug: str = ""  # its folder under results/; the label when empty
    job_id: str = ""
    submitted_at: float = 0.0  # wall clock, before the submit call
    state: str = "unsubmitted"
    info: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    result_dir: Path | None = None

    @property
    def done(self) -> bool:
        return self.error is not None or self.state in TERMINAL

    @property
    def ok(self) -> bool:
        return self.error is None and self.state == "completed"

    @property
    def completed_at(self) -> float | None:
        for t in self.info.get("transitions", []):
            if t["to"] == "completed":
                return t["at"]
        return None

    @property
    def seconds(self) -> float | None:
        at = self.completed_at
        return None if at is None else at - self.submitted_at


@dataclass
class SummaryRow:
    job: str
    use_case: str
    provider: str
    seconds: float | None
    cost: int | None  # base units
    output: str
    ok: bool


def examples_dir() -> Path:
    if (EXAMPLES / "hello" / "job.toml").exists():
        return EXAMPLES
    raise DevnetError(
        f"the examples are not in {EXAMPLES}",
        hint="run `mask demo` from a maskd source checkout",
    )


def load_compose(examples: Path) -> ModuleType:
    """examples/render/compose.py, imported by path (it is not a package)."""
    path = examples / "render" / "compose.py"
    spec = importlib.util.spec_from_file_location("maskd_demo_compose", path)
    if spec is None or spec.loader is None:
        raise DevnetError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- job.toml copies ---------------------------------------------------------


def tile_specs(examples: Path, dest: Path, plan: list[list[str]]) -> list[Path]:
    """One job.toml per tile in ``dest``: the render job with that tile's args."""
    base = examples / "render"
    doc = tomllib.loads((base / "job.toml").read_text())
    doc["program"] = str((base / doc["program"]).resolve())
    if "inputs" in doc:  # none today; keep them pointing at the example's folder
        doc["inputs"] = [
            str((base / i).resolve()) + ("/" if i.endswith("/") else "") for i in doc["inputs"]
        ]
    paths = []
    for i, args in enumerate(plan):
        path = dest / f"tile-{i:02d}" / "job.toml"
        path.parent.mkdir(parents=True)
        path.write_text(dump_toml({**doc, "args": args}))
        paths.append(path)
    return paths


# -- running -----------------------------------------------------------------


def _describe_error(error: Any) -> str:
    if isinstance(error, dict):
        text = f"{error.get('code', 'error')}: {error.get('message', '')}".rstrip(": ")
        if error.get("exit_code") is not None:
            text += f" (exit code {error['exit_code']})"
        return text
    return str(error)


def _short(peer_id: str | None) -> str:
    return peer_id[-8:] if peer_id else "-"


def submit_all(node: DevNode, jobs: list[DemoJob], progress: Progress) -> None:
    """Submit every job at once from a few threads (each call its own connection)."""

    def submit(job: DemoJob) -> None:
        job.submitted_at = time.time()
        try:
            reply = node.call("v1.jobs.submit", {"path": str(job.spec)}, timeout=30)
        except Exception as exc:  # a refused spec is the job's failure, not the demo's crash
            job.error = f"submit failed: {exc}"
            return
        job.job_id, job.state = reply["job_id"], reply["state"]

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(submit, jobs))
    n_ok = sum(1 for j in jobs if j.job_id)
    progress(f"submitted {n_ok}/{len(jobs)} jobs from {node.data_dir.name}")


def wait_all(
    node: DevNode, jobs: list[DemoJob], timeout: float, progress: Progress, every: float = 2.0
) -> None:
    """Poll until every job is terminal; a job still open at the deadline fails."""
    started = time.monotonic()
    deadline = started + timeout
    last_report = started
    by_id = {j.job_id: j for j in jobs if j.job_id}
    while True:
        rows = node.call("v1.jobs.list", timeout=10)
        for row in rows:
            job = by_id.get(row["job_id"])
            if job is None or row["role"] != "requester" or job.done:
                continue
            job.state = row["state"]
            if job.state in TERMINAL:
                job.info = node.call("v1.jobs.get", {"job_id": job.job_id})
                if job.state == "completed":
                    took = job.seconds
                    progress(
                        f"{job.label}: completed on {_short(job.info['provider'])}"
                        + (f" in {took:.1f} s" if took is not None else "")
                    )
                else:
                    job.error = _describe_error(job.info.get("error")) or job.state
                    progress(f"{job.label}: {job.state}: {job.error}")
        open_jobs = [j for j in jobs if not j.done]
        if not open_jobs:
            return
        now = time.monotonic()
        if now >= deadline:
            for j in open_jobs:
                j.error = f"still {j.state} after {timeout:.0f} s"
                progress(f"{j.label}: {j.error}")
            return
        if now - last_report >= every:
            last_report = now
            counts: dict[str, int] = {}
            for j in jobs:
                counts[j.state] = counts.get(j.state, 0) + 1
            states = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
            progress(f"{now - started:4.1f} s: {states}")
        time.sleep(0.2)


def fetch_results(node: DevNode, jobs: list[DemoJob], dest: Path) -> None:
    for job in jobs:
        if not job.ok:
            continue
        path = dest / (job.slug or job.label)
        try:
            node.call("v1.jobs.result", {"job_id": job.job_id, "dest": str(path)}, timeout=60)
        except Exception as exc:
            job.error = f"fetching the result failed: {exc}"
            continue
        job.result_dir = path


# -- reading results ---------------------------------------------------------


def hello_line(result: Path) -> str:
    lines = (result / "stdout.log").read_text(errors="replace").splitlines()
    for line in lines:
        if line.startswith("sum"):
            return line
    return lines[-1] if lines else "(no output)"


def ml_line(result: Path) -> str:
    m = json.loads((result / "out" / "metrics.json").read_text())
    return f"test accuracy {m['test_accuracy'] * 100:.1f}% ({m['test_correct']}/{m['n_test']})"


def analytics_line(result: Path) -> str:
    r = json.loads((result / "out" / "report.json").read_text())
    total = r["total"]
    region = max(r["regions"], key=lambda x: x["revenue"])
    product = r["top_products"][0]
    return (
        f"revenue {total['revenue']:,.2f} from {total['orders']} orders; "
        f"top region {region['region']}, top product {product['product']}"
    )


def zk_stats_line(result: Path) -> str:
    """The proven statistics, with the proof checked once more from the result's
    own files (``mask result`` writes the requester's verification key beside
    the provider's proof.json and public.json: snarkjs would accept them too)."""
    from zkp.formats import load_json_file
    from zkp.verify import verify_json

    o = json.loads((result / "out" / "outputs.json").read_text())
    verdict = verify_json(*(load_json_file(result / f) for f in ZK_FILES))
    if not verdict.valid:
        raise ValueError(f"the proof does not verify: {verdict.reason}")
    return (
        f"sum {o['sum']}, {o['count_above']} above {o['threshold']}, "
        f"mean {o['mean_floor']} of 16 private values; proof valid"
    )


ZK_FILES = ("verification_key.json", "proof.json", "public.json")


READERS: dict[str, Callable[[Path], str]] = {
    "hello": hello_line,
    "ml-train": ml_line,
    "analytics": analytics_line,
    "zk-stats": zk_stats_line,
}


def format_mask(base_units: int | None) -> str:
    """Token base units as MASK (1 MASK = 1e18 units), up to 10 decimals."""
    if base_units is None:
        return "-"
    return f"{Decimal(base_units) / TOKEN_UNIT:.10f}".rstrip("0").rstrip(".")


def display_path(path: Path) -> str:
    """``path`` relative to the working directory when it is below it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _price(job: DemoJob) -> int | None:
    price = job.info.get("price")
    return int(price) if price is not None else None


def summarise(jobs: list[DemoJob], render_out: Path, compose: ModuleType) -> list[SummaryRow]:
    rows = []
    for job in jobs:
        if job.use_case == "render":
            continue
        output = job.error or "(failed)"
        if job.ok and job.result_dir is not None:
            try:
                output = READERS[job.use_case](job.result_dir)
            except (OSError, ValueError, KeyError) as exc:
                job.error = output = f"unreadable result: {exc}"
        rows.append(
            SummaryRow(
                job.label,
                job.use_case,
                _short(job.info.get("provider")),
                job.seconds,
                _price(job) if job.ok else None,
                output,
                job.ok,
            )
        )
    tiles = [j for j in jobs if j.use_case == "render"]
    if tiles:
        rows.append(render_row(tiles, render_out, compose))
    return rows


def render_row(tiles: list[DemoJob], out: Path, compose: ModuleType) -> SummaryRow:
    width, height = RENDER_SIZE
    failed = [t for t in tiles if not t.ok or t.result_dir is None]
    if failed:
        output = f"{len(failed)}/{len(tiles)} tiles failed ({failed[0].label}: {failed[0].error})"
    else:
        try:
            pairs = [(t.args, (t.result_dir / "out" / "tile.ppm").read_bytes()) for t in tiles]
            out.write_bytes(compose.compose(pairs, width, height))
            output = f"{width}x{height} PNG from {len(tiles)} tiles -> {display_path(out)}"
        except (OSError, ValueError) as exc:
            output = f"composing failed: {exc}"
            for t in tiles:
                t.error = t.error or output
    per_provider: dict[str, int] = {}
    for t in tiles:
        if t.info.get("provider"):
            key = _short(t.info["provider"])
            per_provider[key] = per_provider.get(key, 0) + 1
    provider = "\n".join(f"{p} x{n}" for p, n in sorted(per_provider.items())) or "-"
    ends = [t.completed_at for t in tiles]
    seconds = (
        max(ends) - min(t.submitted_at for t in tiles) if all(e is not None for e in ends) else None
    )
    prices = [_price(t) for t in tiles]
    cost = sum(p for p in prices if p is not None) if any(p is not None for p in prices) else None
    return SummaryRow(
        f"render x{len(tiles)}",
        "render",
        provider,
        seconds,
        cost,
        output,
        not failed and all(t.ok for t in tiles),
    )


def run_demo_jobs(
    node: DevNode, out_dir: Path, progress: Progress, timeout: float = 90.0
) -> list[SummaryRow]:
    """Run every use case from ``node``; results go to ``out_dir`` (kept)."""
    examples = examples_dir()
    compose = load_compose(examples)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = out_dir / "results"
    shutil.rmtree(results, ignore_errors=True)  # ours, from an earlier run
    results.mkdir()
    render_png = out_dir / "render.png"
    render_png.unlink(missing_ok=True)

    jobs = [
        DemoJob(name, name, examples / name / "job.toml")
        for name in ("hello", "ml-train", "analytics", "zk-stats")
    ]
    plan = compose.plan_tiles(*RENDER_SIZE, RENDER_TILE)
    with tempfile.TemporaryDirectory(prefix="mask-demo-tiles-") as tmp:
        for i, (args, spec) in enumerate(
            zip(plan, tile_specs(examples, Path(tmp), plan), strict=True)
        ):
            label = f"render {i + 1}/{len(plan)}"
            jobs.append(DemoJob(label, "render", spec, args=args, slug=f"render-tile-{i + 1:02d}"))
        progress(
            f"submitting {len(jobs)} jobs: hello, ml-train, analytics, zk-stats and "
            f"{len(plan)} render tiles ({RENDER_SIZE[0]}x{RENDER_SIZE[1]} in {RENDER_TILE}-px tiles)"
        )
        submit_all(node, jobs, progress)  # the daemon bundles each spec on submit
    for job in jobs:
        if job.error:
            progress(f"{job.label}: {job.error}")
    wait_all(node, jobs, timeout, progress)
    fetch_results(node, jobs, results)
    return summarise(jobs, render_png, compose)

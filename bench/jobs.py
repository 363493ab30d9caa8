"""Jobs across a devnet: submit-to-start latency and sustained throughput.

1 requester (node0) and ``--providers`` providers on loopback. For a workload
(``hello``: the trivial WASM job; ``ml``: examples/ml-train) it submits
``--jobs`` jobs as fast as the requester accepts them, waits for all to end,
and prints one JSON line:

  submit_to_start p50/p99: from the submit RPC's return to the requester
      recording ``running`` (the provider's first heartbeat or its result);
  submit_to_done p50/p99;
  start_to_done p50/p99: from ``running`` to the end (the provider fetches the
      payload, runs, stores the output and sends the result; then the output
      fetch);
  jobs_per_s: completed jobs / (last completion - first submit).

Run: .venv/bin/python bench/jobs.py [--workload hello,ml] [--jobs 100] [--providers 4]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from maskd.client import Client  # noqa: E402
from maskd.devnet import start_devnet, stop_devnet, write_state  # noqa: E402

WORKLOADS = {
    "hello": ROOT / "examples" / "hello" / "job.toml",
    "ml": ROOT / "examples" / "ml-train" / "job.toml",
}
TERMINAL = {"completed", "failed", "cancelled"}


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


def run(workload: str, jobs: int, providers: int, root: Path, concurrency: int) -> dict:
    nodes = start_devnet(providers + 1, root / workload, timeout=180)
    write_state(root / workload, nodes)
    requester = nodes[0]
    try:
        started: dict[str, float] = {}
        done: dict[str, float] = {}
        states: dict[str, str] = {}
        submitted: dict[str, float] = {}
        lock = threading.Lock()
        all_done = threading.Event()
        slots = threading.Semaphore(concurrency)  # jobs in flight at once

        def watch() -> None:
            with Client.connect(str(requester.socket)) as client:
                for ev in client.watch():
                    if ev.get("type") != "job.state" or ev.get("role") != "requester":
                        continue
                    with lock:
                        j, s, ts = ev["job_id"], ev["state"], ev["ts"]
                        if s == "running":
                            started.setdefault(j, ts)
                        if s in TERMINAL and j not in states:
                            slots.release()
                            states[j] = s
                            done[j] = ts
                            started.setdefault(j, ts)  # a result may arrive before a heartbeat
                            if len(done) >= jobs:
                                all_done.set()
                                return

        t = threading.Thread(target=watch, daemon=True)
        t.start()
        time.sleep(0.5)  # the watch stream attaches (benchmark, not a test)
        spec = str(WORKLOADS[workload])
        t0 = time.time()
        with Client.connect(str(requester.socket)) as client:
            for _ in range(jobs):
                slots.acquire()
                out = client.call("v1.jobs.submit", {"path": spec}, timeout=60)
                submitted[out["job_id"]] = time.time()
        all_done.wait(timeout=600)
        with lock:
            s2s = [(started[j] - submitted[j]) * 1000 for j in submitted if j in started]
            s2d = [(done[j] - submitted[j]) * 1000 for j in submitted if j in done]
            # the provider's part: payload fetch, run, output stored, result sent
            r2d = [(done[j] - started[j]) * 1000 for j in submitted if j in done and j in started]
            completed = [j for j, s in states.items() if s == "completed"]
            last = max(done.values()) if done else time.time()
        return {
            "bench": "jobs",
            "workload": workload,
            "providers": providers,
            "jobs": jobs,
            "concurrency": concurrency,
            "completed": len(completed),
            "failed": sum(1 for s in states.values() if s != "completed"),
            "submit_to_start_p50_ms": round(pct(s2s, 0.5), 1) if s2s else None,
            "submit_to_start_p99_ms": round(pct(s2s, 0.99), 1) if s2s else None,
            "submit_to_done_p50_ms": round(pct(s2d, 0.5), 1) if s2d else None,
            "submit_to_done_p99_ms": round(pct(s2d, 0.99), 1) if s2d else None,
            "start_to_done_p50_ms": round(pct(r2d, 0.5), 1) if r2d else None,
            "start_to_done_p99_ms": round(pct(r2d, 0.99), 1) if r2d else None,
            "submit_rate_per_s": round(jobs / (max(submitted.values()) - t0), 1),
            "jobs_per_s": round(len(completed) / (last - t0), 2) if completed else 0.0,
        }
    finally:
        stop_devnet(root / workload)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workload", default="hello,ml")
    ap.add_argument("--jobs", type=int, default=100)
    ap.add_argument("--providers", type=int, default=4)
    ap.add_argument(
        "--concurrency",
        default="1,1000",
        help="jobs in flight at once; 1 measures latency alone, a large number throughput",
    )
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mkj", dir="/tmp"))
    try:
        for w in args.workload.split(","):
            for c in args.concurrency.split(","):
                print(json.dumps(run(w, args.jobs, args.providers, root / c, int(c))), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

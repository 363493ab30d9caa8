"""Offer propagation across N maskd processes on loopback.

For each N (default 5, 10, 20) it starts a devnet, lets every node republish
its offer so that the whole mesh carries ``--rate`` offers per second, and
watches every node's ``v1.watch`` stream. Propagation of one offer = the time
from its ``issued_at`` (publisher's clock; all on one machine) to the moment
the LAST node saw it. Prints one JSON line per N:

  {"bench": "gossip", "nodes": N, "offers": …, "p50_ms": …, "p99_ms": …,
   "cpu_ms_per_node_per_msg": …, "rss_mb_per_node": …, …}

Publishing phase matters. A node republishes every ``interval`` seconds,
counted from its first offer, with no jitter; nodes started together (as
``start_devnet`` does) all republish within ~0.5 s of each other, so "1 msg/s
at 20 nodes" becomes a burst of 20 offers every 20 s, which saturates 2 cores
and measures queueing, not propagation. By default (``--start staggered``) the
nodes are therefore started ``interval / N`` seconds apart, so that their
offers are spread over the interval;
``--start parallel`` reproduces the burst. ``max_offers_in_1s`` in the output
shows the publishing pattern actually measured.

Run: .venv/bin/python bench/gossip.py [--nodes 5,10,20] [--seconds 20] [--rate 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from maskd.client import Client  # noqa: E402
from maskd.devnet import (  # noqa: E402
    DevNode,
    devnet_config_path,
    start_devnet,
    stop_devnet,
    wait_full_view,
    write_state,
)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(q * (len(values) - 1))))
    return values[k]


def start_staggered(n: int, root: Path, env: dict, interval: float, timeout: float) -> list:
    """Start nodes one slot (``interval / n`` seconds) apart, so that their
    republish timers are spread over the interval.

    A node publishes its first offer when it has started and then every
    ``interval`` seconds. Starting node k at k slots after node 0 (without
    waiting for node k-1) makes the ready times, hence the phases, roughly
    one slot apart: start-up takes about as long for each node.
    """
    config = devnet_config_path()
    slot = interval / n
    nodes: list[DevNode] = []
    try:
        first = DevNode(root / "node0", config=config, env=env).start()
        nodes.append(first)
        first.wait_ready(timeout)
        boot = [first.addrs[0]]
        t0 = time.monotonic()
        for i in range(1, n):
            time.sleep(max(0.0, t0 + i * slot - time.monotonic()))
            node = DevNode(root / f"node{i}", config=config, bootstrap=boot, env=env)
            nodes.append(node.start())
        for node in nodes[1:]:
            node.wait_ready(timeout)
        wait_full_view(nodes, timeout)
        return nodes
    except BaseException:
        for node in nodes:
            node.kill()
        raise


def max_in_window(times: list[float], width: float) -> int:
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= width:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def watch(node, seen: dict, lock: threading.Lock, stop: threading.Event) -> None:
    try:
        with Client.connect(str(node.socket)) as client:
            for event in client.watch():
                if stop.is_set():
                    return
                if event.get("type") not in ("offer.added", "offer.updated"):
                    continue
                offer = event["offer"]
                if offer["peer_id"] == node.peer_id:
                    continue
                key = (offer["peer_id"], offer["seq"])
                with lock:
                    seen.setdefault(key, {"issued_at": offer["issued_at"], "at": {}})["at"][
                        node.peer_id
                    ] = event["ts"]
    except Exception:
        if not stop.is_set():
            raise


def run(n: int, seconds: float, rate: float, start: str = "staggered") -> dict:
    root = Path(tempfile.mkdtemp(prefix="mkb", dir="/tmp"))
    interval = max(0.2, n / rate)
    env = {
        "MASK_OFFERS_REPUBLISH_INTERVAL_S": str(interval),
        "MASK_OFFERS_TTL_S": str(max(6.0, interval * 4)),
        # no capacity-driven republishes: only the timer, so the rate is known
        "MASK_OFFERS_CAPACITY_CHECK_INTERVAL_S": "3600",
        # the production timers (configs/default.toml), not the devnet's fast ones
        "MASK_P2P_PING_INTERVAL_S": "5",
        "MASK_P2P_PING_TIMEOUT_S": "5",
        "MASK_P2P_HEARTBEAT_INTERVAL_S": os.environ.get("BENCH_HEARTBEAT_S", "1"),
        "MASK_P2P_DISCOVERY_INTERVAL_S": "30",
        "MASK_P2P_REDIAL_INTERVAL_S": "5",
    }
    t0 = time.monotonic()
    if start == "staggered":
        nodes = start_staggered(n, root, env, interval, timeout=180)
    else:
        nodes = start_devnet(n, root, env=env, timeout=180)
    write_state(root, nodes)
    startup_s = time.monotonic() - t0
    try:
        procs = [psutil.Process(node.pid) for node in nodes]
        seen: dict = {}
        lock = threading.Lock()
        stop = threading.Event()
        threads = [
            threading.Thread(target=watch, args=(node, seen, lock, stop), daemon=True)
            for node in nodes
        ]
        for t in threads:
            t.start()
        time.sleep(1.0)  # let every watch stream attach (benchmark, not a test)
        with lock:
            seen.clear()
        cpu0 = [sum(p.cpu_times()[:2]) for p in procs]
        w0 = time.time()
        time.sleep(seconds)
        w1 = time.time()
        cpu1 = [sum(p.cpu_times()[:2]) for p in procs]
        rss = [p.memory_info().rss / 2**20 for p in procs]
        time.sleep(2.0)  # let the last messages land
        stop.set()
        with lock:
            window = {k: v for k, v in seen.items() if w0 <= v["issued_at"] <= w1}
        full, partial = [], 0
        for item in window.values():
            if len(item["at"]) >= n - 1:
                full.append((max(item["at"].values()) - item["issued_at"]) * 1000)
            else:
                partial += 1
        msgs = len(window)
        cpu = [b - a for a, b in zip(cpu0, cpu1, strict=True)]
        return {
            "bench": "gossip",
            "nodes": n,
            "seconds": seconds,
            "rate_target_msg_s": rate,
            "start": start,
            "offers": msgs,
            "max_offers_in_1s": max_in_window([v["issued_at"] for v in window.values()], 1.0),
            "fully_propagated": len(full),
            "not_seen_by_all": partial,
            "p50_ms": round(percentile(full, 0.50), 1),
            "p99_ms": round(percentile(full, 0.99), 1),
            "max_ms": round(max(full), 1) if full else None,
            "cpu_ms_per_node_per_msg": round(1000 * statistics.mean(cpu) / msgs, 2)
            if msgs
            else None,
            "cpu_util_per_node": round(statistics.mean(cpu) / seconds, 3),
            "cpu_s_per_node": statistics.mean(cpu),
            "rss_mb_per_node": round(statistics.mean(rss), 1),
            "startup_s": round(startup_s, 1),
        }
    finally:
        stop_devnet(root)
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", default="5,10,20")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument(
        "--rate", type=float, default=5.0, help="offers per second across the whole mesh"
    )
    ap.add_argument(
        "--baseline-rate",
        type=float,
        default=0.5,
        help="a second, slower run per N; the CPU difference per extra message is the marginal cost (0: skip)",
    )
    ap.add_argument(
        "--start",
        choices=("staggered", "parallel"),
        default="staggered",
        help="staggered: spread the nodes' republish phases evenly (see above); "
        "parallel: start_devnet's simultaneous start, whose republishes come in bursts",
    )
    args = ap.parse_args()
    for n in [int(x) for x in args.nodes.split(",")]:
        result = run(n, args.seconds, args.rate, args.start)
        if args.baseline_rate > 0:
            base = run(n, args.seconds, args.baseline_rate, args.start)
            extra = result["offers"] - base["offers"]
            if extra > 0:
                result["marginal_cpu_ms_per_node_per_msg"] = round(
                    1000 * (result["cpu_s_per_node"] - base["cpu_s_per_node"]) / extra, 2
                )
            result["idle_cpu_util_per_node"] = base["cpu_util_per_node"]
        result["cpu_s_per_node"] = round(result["cpu_s_per_node"], 3)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

"""What proof-carrying results cost: verification, proving and on-chain gas.

One JSON line per measurement on stdout (the run's wall time on stderr), in
sections that can be run alone (``--sections verify``):

* ``verify``: Groth16 verification per proof for each installed backend
  (``zkp.verify.verify``, shape, curve, subgroup and pairing checks included),
  on the snarkjs cubic vector (1 public input) and on a
  ``zkp.testing.TrapdoorSetup`` key with ``--publics`` public inputs. ``warm``
  is a key already seen (its G2 points checked and converted once, as a node
  verifying many proofs of one circuit does); ``cold`` clears those caches
  before each call. Medians of ``--native N`` and ``--py-ecc N`` runs, wall
  time and process CPU time (``cpu_median_ms``: the cost of a proof however
  busy the machine is; ``met`` compares it with the target of under 10 ms
  with the native backend, issue 10). Also: parsing the three snarkjs files
  (``parse``) and ``vk_id``.
* ``prove`` and ``gas``: added by the prover and contract work (issue 10,
  parts 3 and 5): register a function in SECTIONS.

Run: .venv/bin/python bench/zk.py [--sections verify] [--native 200] [--py-ecc 3]
     [--publics 8] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zkp import backends as zk_backends  # noqa: E402
from zkp.formats import (  # noqa: E402
    Proof,
    VerifyingKey,
    load_json_file,
    parse_proof,
    parse_public,
    parse_vk,
    vk_id,
)
from zkp.testing import TrapdoorSetup  # noqa: E402
from zkp.verify import backends, verify  # noqa: E402

CUBIC = Path(__file__).resolve().parent.parent / "tests" / "data" / "vectors" / "groth16" / "cubic"
TARGET_NATIVE_MS = 10.0

Record = dict[str, Any]
Emit = Callable[[Record], None]


def _ms(samples: Sequence[float], cpu: Sequence[float] = ()) -> Record:
    record = {
        "runs": len(samples),
        "median_ms": round(statistics.median(samples) * 1e3, 3),
        "min_ms": round(min(samples) * 1e3, 3),
        "max_ms": round(max(samples) * 1e3, 3),
    }
    if cpu:  # process CPU time: what a proof costs, whatever else the machine runs
        record["cpu_median_ms"] = round(statistics.median(cpu) * 1e3, 3)
    return record


def _clear_caches() -> None:
    """Forget every key seen: the next verification pays for its G2 checks again."""
    for name in backends():
        module = zk_backends.load(name)
        for attr in ("_prepared_vk", "_in_subgroup"):
            cache = getattr(module, attr, None)
            if cache is not None:
                cache.cache_clear()


def _time_verify(
    vk: VerifyingKey, proof: Proof, public: Sequence[int], backend: str, runs: int, cold: bool
) -> tuple[list[float], list[float]]:
    wall, cpu = [], []
    for _ in range(runs):
        if cold:
            _clear_caches()
        t, c = time.perf_counter(), time.process_time()
        verdict = verify(vk, proof, public, backend=backend)
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - t)
        if not verdict.valid:  # a figure for a rejected proof would flatter the backend
            raise SystemExit(f"bench: {backend} rejected a valid proof: {verdict.reason}")
    return wall, cpu


def section_verify(args: argparse.Namespace, emit: Emit) -> None:
    vk_obj, proof_obj, public_obj = (
        load_json_file(CUBIC / name)
        for name in ("verification_key.json", "proof.json", "public.json")
    )
    samples = []
    for _ in range(args.native):
        t = time.perf_counter()
        parse_vk(vk_obj), parse_proof(proof_obj), parse_public(public_obj)
        samples.append(time.perf_counter() - t)
    emit({"bench": "zk", "kind": "parse", "what": "cubic vk+proof+public", **_ms(samples)})
    vk = parse_vk(vk_obj)
    vk_id(vk)  # imports eth-abi (~0.5 s): not part of the figure
    samples = []
    for _ in range(args.native):
        t = time.perf_counter()
        vk_id(vk)
        samples.append(time.perf_counter() - t)
    emit({"bench": "zk", "kind": "vk_id", "n_public": vk.n_public, **_ms(samples)})

    setup = TrapdoorSetup.new(args.publics, seed=1)
    public = [(i + 1) * 1_000_003 for i in range(args.publics)]
    statements = {
        "cubic": (vk, parse_proof(proof_obj), parse_public(public_obj)),
        f"trapdoor-{args.publics}": (setup.vk, setup.prove(public), public),
    }
    for backend in backends():
        runs = args.native if backend == "native" else args.py_ecc
        for name, (key, proof, xs) in statements.items():
            for cache in ("warm", "cold"):
                n = runs if cache == "warm" or backend == "native" else max(1, runs // 3)
                _time_verify(key, proof, xs, backend, 1, cold=False)  # warm the key's caches
                record = {
                    "bench": "zk",
                    "kind": "verify",
                    "backend": backend,
                    "statement": name,
                    "n_public": key.n_public,
                    "cache": cache,
                    **_ms(*_time_verify(key, proof, xs, backend, n, cold=cache == "cold")),
                }
                if backend == "native":
                    record["target_ms"] = TARGET_NATIVE_MS
                    record["met"] = record["cpu_median_ms"] < TARGET_NATIVE_MS
                emit(record)


#: name -> function(args, emit); ``prove`` and ``gas`` join here.
SECTIONS: dict[str, Callable[[argparse.Namespace, Emit], None]] = {"verify": section_verify}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated, from: {', '.join(SECTIONS)} (default: all)",
    )
    parser.add_argument("--native", type=int, default=None, help="native runs per case (200)")
    parser.add_argument("--py-ecc", type=int, default=None, help="py-ecc runs per case (3)")
    parser.add_argument("--publics", type=int, default=8, help="public inputs of the trapdoor key")
    parser.add_argument("--quick", action="store_true", help="few runs (a smoke test)")
    args = parser.parse_args(argv)
    args.native = args.native or (10 if args.quick else 200)
    args.py_ecc = args.py_ecc or (1 if args.quick else 3)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    return args


def main(argv: Sequence[str] | None = None) -> list[Record]:
    """Run the chosen sections, print one JSON line per measurement, return them."""
    args = parse_args(argv)
    records: list[Record] = []

    def emit(record: Record) -> None:
        records.append(record)
        print(json.dumps(record), flush=True)

    t0 = time.perf_counter()
    for name in args.sections:
        SECTIONS[name](args, emit)
    wall = {"bench": "zk", "kind": "run", "wall_s": round(time.perf_counter() - t0, 1)}
    print(json.dumps(wall), file=sys.stderr)
    return records


if __name__ == "__main__":
    main()

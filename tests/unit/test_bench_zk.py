"""bench/zk.py in --quick mode, one section at a time: each runs on the real
parts (zksnake, snarkjs when installed, the shipped circuits, py-evm with the
committed contracts), prints the records it returns, and keeps their shape.
The figures themselves are docs/BENCHMARKS.md's business; here only what
must hold on any machine (a proof's gas is a property of the contracts, a
peak RSS is above the process's start). ~30 s, most of it py-evm pairings."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from zkp.circuit import load_circuit, shipped_circuits
from zkp.prover import SnarkjsProver

_PATH = Path(__file__).resolve().parents[2] / "bench" / "zk.py"


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_zk", _PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench = _load_bench()

TIMING = {"runs", "median_ms", "min_ms", "max_ms", "cpu_median_ms"}
PROVE_KEYS = {
    "bench",
    "kind",
    "circuit",
    "constraints",
    "prover",
    *TIMING,
    "cold_ms",
    "cold_cpu_ms",
    "witness_median_ms",
    "witness_cpu_median_ms",
    "peak_rss_mb",
    "rss_of",
    "base_rss_mb",
}
GAS_KEYS = {"bench", "kind", "call", "circuit", "n_public", "gas"}


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> list[dict]:
    records = bench.main(list(argv))
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert printed == records
    assert records and all(r["bench"] == "zk" for r in records)
    return records


def test_verify_quick_times_the_native_backend_against_its_target(capsys) -> None:
    records = _run(capsys, "--sections", "verify", "--quick", "--backends", "native")
    assert [r["kind"] for r in records[:2]] == ["parse", "vk_id"]
    verifies = records[2:]
    assert {(r["statement"], r["cache"]) for r in verifies} == {
        (s, c) for s in ("cubic", "trapdoor-8") for c in ("warm", "cold")
    }
    for r in verifies:
        assert set(r) == {
            "bench",
            "kind",
            "backend",
            "statement",
            "n_public",
            "cache",
            *TIMING,
            "target_ms",
            "met",
        }
        assert r["backend"] == "native" and r["runs"] == 10
        assert r["target_ms"] == 10.0
        assert r["met"] == (r["cpu_median_ms"] < 10.0)


def test_prove_quick_measures_each_chosen_prover_in_its_own_process(capsys) -> None:
    provers = ["native", "snarkjs"] if SnarkjsProver().available() else ["native"]
    records = _run(
        capsys,
        "--sections",
        "prove",
        "--quick",
        "--circuits",
        "poseidon_preimage",
        "--provers",
        ",".join(provers),
    )
    circuit = load_circuit(shipped_circuits()["poseidon_preimage"])
    (info, *proves) = records
    assert info == {
        "bench": "zk",
        "kind": "circuit",
        "circuit": "poseidon_preimage",
        "constraints": circuit.constraints,
        "n_public": 2,
        "vk_id": bench.vk_id(circuit.vk),
        "wasm_bytes": circuit.wasm_path.stat().st_size,
        "zkey_bytes": circuit.zkey_path.stat().st_size,
    }
    assert [r["prover"] for r in proves] == list(bench.PROVERS)
    for r in proves:
        assert r["kind"] == "prove" and r["circuit"] == "poseidon_preimage"
        if r["prover"] not in provers:
            assert r["skipped"] == "not chosen (--provers)"
            continue
        assert set(r) == PROVE_KEYS
        assert r["runs"] == 1 and r["constraints"] == circuit.constraints
        assert 0 < r["witness_median_ms"] and 0 < r["median_ms"] <= r["max_ms"]
        assert r["rss_of"] == ("node" if r["prover"] == "snarkjs" else "process")
        assert r["peak_rss_mb"] > 0
        if r["rss_of"] == "process":  # the child's peak covers its start
            assert 0 < r["base_rss_mb"] < r["peak_rss_mb"]
        else:  # node's peak; the Python around it does not count
            assert r["base_rss_mb"] is None


def test_the_python_prover_is_kept_to_the_small_circuit_unless_all() -> None:
    args = bench.parse_args(["--provers", "python"])
    assert bench._skip("poseidon_preimage", "python", args) is None
    assert "--all" in bench._skip("private_stats", "python", args)
    assert bench._skip("private_stats", "python", bench.parse_args(["--all"])) is None
    assert bench._skip("private_stats", "native", args) == "not chosen (--provers)"
    quick = bench.parse_args(["--quick"])
    assert quick.provers == ["native"] and quick.prove_runs == 1


def test_gas_quick_measures_every_proof_carrying_call_on_py_evm(capsys) -> None:
    records = _run(capsys, "--sections", "gas", "--quick")
    assert all(r["kind"] == "gas" and GAS_KEYS <= set(r) for r in records)
    calls = [(r["call"], r["circuit"], r["n_public"]) for r in records]
    assert calls == [
        ("registerCircuit", "cubic", 1),
        ("registerCircuit", "poseidon_preimage", 2),
        ("registerCircuit", "private_stats", 6),
        ("registerCircuit", "cubic", 1),
        ("verifyProof", "cubic", 1),
        ("verifyProof", "poseidon_preimage", 2),
        ("claimWithProof", "poseidon_preimage", 2),
        ("slash", "poseidon_preimage", 2),
        ("StatsConsumer.ask", "private_stats", 6),
        ("verifyProof", "private_stats", 6),
        ("fulfill", "private_stats", 6),
    ]
    gas = {(r["call"], r["circuit"], r.get("again", False)): r["gas"] for r in records}
    assert gas[("registerCircuit", "cubic", True)] < 60_000  # idempotent: no key stored
    verifies = {r["n_public"]: r for r in records if r["call"] == "verifyProof"}
    # the snarkjs vector's proof is fixed, so its gas is too (docs/ledger.md)
    assert verifies[1]["gas"] == 221_872
    for r in verifies.values():
        assert r["target_gas"] == 250_000 and r["met"] == (r["gas"] < 250_000)
    assert verifies[1]["gas"] < verifies[2]["gas"] < verifies[6]["gas"] < 300_000
    # the proof-carrying transactions verify a proof and move tokens besides
    assert gas[("claimWithProof", "poseidon_preimage", False)] > verifies[2]["gas"]
    assert gas[("slash", "poseidon_preimage", False)] > verifies[2]["gas"]
    assert gas[("fulfill", "private_stats", False)] > verifies[6]["gas"]

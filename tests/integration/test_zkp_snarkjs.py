"""Interop with the real snarkjs 0.7.6 (``make zktools``: npm ci into .zktools/).

Our witnesses equal snarkjs's ``wtns calculate``; proofs from our native
prover verify in ``snarkjs groth16 verify`` (and a changed public signal does
not); snarkjs's own proofs (the ``snarkjs`` prover) verify in zkp.verify on
both backends. ``make test`` installs the toolchain, so a missing one is a
failure, not a skip; ``MASK_SKIP_ZKTOOLS=1`` skips this file where Node.js is
not available.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from zkp.circuit import load_circuit, shipped_circuits
from zkp.formats import proof_to_json, public_to_json
from zkp.poseidon import poseidon
from zkp.prover import ProverError, PythonProver, SnarkjsProver, check_provers, zktools_dir
from zkp.verify import verify
from zkp.witness import compute_witness

pytestmark = pytest.mark.integration

SHIPPED = shipped_circuits()
VALUES = [
    4210,
    5120,
    3980,
    6450,
    7020,
    4890,
    5560,
    6100,
    3720,
    8150,
    4475,
    5930,
    6780,
    4060,
    5340,
    7300,
]
INPUTS = {
    "poseidon_preimage": {"preimage": ["123", "456"], "binding": "987654321"},
    "private_stats": {
        "values": [str(v) for v in VALUES],
        "threshold": "5500",
        "commitment": str(poseidon(VALUES)),
        "binding": "42",
    },
}


@pytest.fixture(scope="module")
def snarkjs() -> list[str]:
    if os.environ.get("MASK_SKIP_ZKTOOLS") == "1":
        pytest.skip("MASK_SKIP_ZKTOOLS=1: no snarkjs")
    cli = zktools_dir() / "node_modules" / "snarkjs" / "build" / "cli.cjs"
    node = shutil.which("node")
    if node is None or not cli.is_file():  # make test installs it: missing is a failure
        pytest.fail(
            f"snarkjs is not installed at {cli} (run `make zktools`; MASK_SKIP_ZKTOOLS=1 skips)",
            pytrace=False,
        )
    return [node, str(cli)]


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)


def read_wtns(path: Path) -> list[int]:
    """snarkjs's .wtns: 'wtns', version 2, section 1 (n8, prime, count), section 2 (values)."""
    data = path.read_bytes()
    assert data[:4] == b"wtns"
    (count,) = struct.unpack_from("<I", data, 8)
    pos, found = 12, {}
    for _ in range(count):
        kind, size = struct.unpack_from("<IQ", data, pos)
        found[kind] = data[pos + 12 : pos + 12 + size]
        pos += 12 + size
    (n8,) = struct.unpack_from("<I", found[1], 0)
    (n_witness,) = struct.unpack_from("<I", found[1], 4 + n8)
    values = found[2]
    return [int.from_bytes(values[i * n8 : (i + 1) * n8], "little") for i in range(n_witness)]


@pytest.mark.parametrize("name", ["poseidon_preimage", "private_stats"])
def test_our_witness_equals_snarkjs_wtns_calculate(
    snarkjs: list[str], tmp_path: Path, name: str
) -> None:
    circuit = load_circuit(SHIPPED[name])
    (tmp_path / "input.json").write_text(json.dumps(INPUTS[name]))
    done = run(
        [*snarkjs, "wtns", "calculate", str(circuit.wasm_path), "input.json", "w.wtns"], tmp_path
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert compute_witness(circuit, INPUTS[name]) == read_wtns(tmp_path / "w.wtns")


@pytest.mark.parametrize("name", ["poseidon_preimage", "private_stats"])
def test_native_proofs_verify_in_snarkjs(snarkjs: list[str], tmp_path: Path, name: str) -> None:
    circuit = load_circuit(SHIPPED[name])
    proof, public = PythonProver("native").prove(circuit, INPUTS[name], deadline_s=120)
    (tmp_path / "proof.json").write_text(json.dumps(proof_to_json(proof)))
    (tmp_path / "public.json").write_text(json.dumps(public_to_json(public)))
    verify_cmd = [*snarkjs, "groth16", "verify", str(circuit.vk_path), "public.json", "proof.json"]
    done = run(verify_cmd, tmp_path)
    assert done.returncode == 0 and "OK" in done.stdout, done.stdout + done.stderr
    changed = [*public[:-1], public[-1] + 1]  # another binding: another job
    (tmp_path / "public.json").write_text(json.dumps(public_to_json(changed)))
    done = run(verify_cmd, tmp_path)
    assert done.returncode != 0 and "Invalid proof" in done.stdout + done.stderr


@pytest.mark.parametrize("name", ["poseidon_preimage", "private_stats"])
def test_snarkjs_proofs_verify_in_ours(snarkjs: list[str], name: str) -> None:
    circuit = load_circuit(SHIPPED[name])
    proof, public = SnarkjsProver().prove(circuit, INPUTS[name], deadline_s=120)
    assert public == tuple(compute_witness(circuit, INPUTS[name])[1 : len(public) + 1])
    assert verify(circuit.vk, proof, public, backend="native").valid
    if name == "poseidon_preimage":  # one py-ecc verification (~1 s)
        assert verify(circuit.vk, proof, public, backend="py_ecc").valid


def test_snarkjs_refuses_inputs_that_break_the_circuit(snarkjs: list[str]) -> None:
    circuit = load_circuit(SHIPPED["private_stats"])
    inputs = {**INPUTS["private_stats"], "commitment": "1"}
    with pytest.raises(ProverError, match="assert failed") as info:
        SnarkjsProver().prove(circuit, inputs, deadline_s=120)
    assert info.value.hint


def test_the_shipped_verification_keys_are_the_zkeys(snarkjs: list[str], tmp_path: Path) -> None:
    for path in SHIPPED.values():
        circuit = load_circuit(path)
        export = [*snarkjs, "zkey", "export", "verificationkey", str(circuit.zkey_path), "vk.json"]
        done = run(export, tmp_path)
        assert done.returncode == 0, done.stderr
        exported = json.loads((tmp_path / "vk.json").read_text())
        assert exported == json.loads(circuit.vk_path.read_text())


def test_the_snarkjs_prover_passes_its_start_check(snarkjs: list[str]) -> None:
    (result,) = check_provers([SnarkjsProver()])
    assert result.ok, result.reason

"""Interop with the real snarkjs 0.7.6 (``make zktools``: npm ci into .zktools/).

Our witnesses equal snarkjs's ``wtns calculate``; proofs from our native
prover verify in ``snarkjs groth16 verify`` (and a changed public signal does
not); snarkjs's own proofs (the ``snarkjs`` prover) verify in zkp.verify on
both backends. Our Poseidon template, compiled by circom2 at other widths than
the shipped circuits use, hashes as zkp.poseidon does. ``make test`` installs the toolchain, so a missing one is a
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

from zkp.binding import SNARK_SCALAR_FIELD
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


POSEIDON_WIDTHS = (1, 4, 7, 12)  # the shipped circuits hash 2 and 16 inputs
POSEIDON_TEST = """pragma circom 2.0.0;
include "lib/poseidon.circom";
template Widths() {
    signal input in[16];
    signal output out[%(count)d];
    component h[%(count)d];
%(body)s}
component main = Widths();
"""


def test_our_poseidon_template_hashes_as_zkp_poseidon_at_other_widths(
    snarkjs: list[str], tmp_path: Path
) -> None:
    root = Path(__file__).resolve().parents[2]
    shutil.copytree(root / "circuits" / "src" / "lib", tmp_path / "lib")
    body = ""
    for k, n in enumerate(POSEIDON_WIDTHS):
        body += f"    h[{k}] = Poseidon({n});\n"
        body += f"    for (var i = 0; i < {n}; i++) {{ h[{k}].in[i] <== in[i]; }}\n"
        body += f"    out[{k}] <== h[{k}].out;\n"
    source = POSEIDON_TEST % {"count": len(POSEIDON_WIDTHS), "body": body}
    (tmp_path / "widths.circom").write_text(source)
    circom = zktools_dir() / "node_modules" / "circom2" / "cli.js"
    # circom2 sees only its working directory: lib/ is copied next to the source.
    done = run([snarkjs[0], str(circom), "widths.circom", "--wasm", "-o", "."], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    wasm = tmp_path / "widths_js" / "widths.wasm"
    for seed in (1, 2):
        values = [pow(3 + seed, 101 + i, SNARK_SCALAR_FIELD) for i in range(16)]
        witness = compute_witness(wasm, {"in": values})
        expected = [poseidon(values[:n]) for n in POSEIDON_WIDTHS]
        assert witness[1 : 1 + len(POSEIDON_WIDTHS)] == expected

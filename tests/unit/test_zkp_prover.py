"""Provers (zkp.prover, zkp.groth16, zkp.curves): real proofs, checked by zkp.verify.

The native prover proves both shipped circuits; the py-ecc prover makes the
very same proof from the same blinding (so the two curve backends agree);
snarkjs's program is stood in for by small node scripts here, to test the
time limit, the kill of its process group and its failures (the real snarkjs
is in tests/integration/test_zkp_snarkjs.py).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import pytest

from zkp.binding import SNARK_SCALAR_FIELD as R
from zkp.circuit import load_circuit, shipped_circuits
from zkp.curves import CurveError, NativeCurve, PyEccCurve
from zkp.formats import FIELD_MODULUS, Proof
from zkp.groth16 import _fft, _to_odd_coset, root_of_unity
from zkp.poseidon import poseidon
from zkp.prover import (
    ProverError,
    PythonProver,
    SnarkjsProver,
    available_provers,
    check_provers,
    prover_names,
    select_prover,
)
from zkp.verify import verify
from zkp.witness import WitnessError

SHIPPED = shipped_circuits()
PREIMAGE = load_circuit(SHIPPED["poseidon_preimage"])
STATS = load_circuit(SHIPPED["private_stats"])
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
NODE = shutil.which("node")


def seeded(seed: int):
    rng = random.Random(seed)
    return lambda bound: rng.randrange(bound)


def stats_inputs() -> dict:
    return {
        "values": [str(v) for v in VALUES],
        "threshold": "5500",
        "commitment": str(poseidon(VALUES)),
        "binding": "77",
    }


# --- the native prover ------------------------------------------------------------------


def test_native_proof_of_a_poseidon_preimage_verifies() -> None:
    proof, public = PythonProver("native").prove(
        PREIMAGE, {"preimage": ["3", "4"], "binding": "9"}, deadline_s=60
    )
    assert public == (poseidon([3, 4]), 9)
    assert verify(PREIMAGE.vk, proof, public, backend="native").valid
    assert not verify(PREIMAGE.vk, proof, (public[0], 10), backend="native").valid


def test_native_proof_of_private_statistics_verifies() -> None:
    proof, public = PythonProver("native").prove(STATS, stats_inputs(), deadline_s=60)
    assert public == (
        sum(VALUES),
        sum(v > 5500 for v in VALUES),
        sum(VALUES) // 16,
        5500,
        poseidon(VALUES),
        77,
    )
    assert verify(STATS.vk, proof, public, backend="native").valid


def test_blinding_comes_from_the_rng() -> None:
    inputs = {"preimage": ["3", "4"], "binding": "9"}
    first = PythonProver("native", rng=seeded(1)).prove(PREIMAGE, inputs, deadline_s=60)
    again = PythonProver("native", rng=seeded(1)).prove(PREIMAGE, inputs, deadline_s=60)
    other = PythonProver("native", rng=seeded(2)).prove(PREIMAGE, inputs, deadline_s=60)
    assert first == again
    assert other[0] != first[0] and other[1] == first[1]
    assert verify(PREIMAGE.vk, other[0], other[1], backend="native").valid


def test_the_py_ecc_prover_makes_the_same_proof() -> None:
    inputs = {"preimage": ["3", "4"], "binding": "9"}
    native = PythonProver("native", rng=seeded(5)).prove(PREIMAGE, inputs, deadline_s=60)
    python = PythonProver("python", rng=seeded(5)).prove(PREIMAGE, inputs, deadline_s=60)
    assert python == native


def test_the_py_ecc_prover_stops_at_its_deadline() -> None:
    with pytest.raises(ProverError, match="timeout") as info:
        PythonProver("python").prove(STATS, stats_inputs(), deadline_s=1.0)
    assert info.value.code == "prove_timeout"


def test_a_bad_input_is_a_witness_error() -> None:
    inputs = {**stats_inputs(), "commitment": "1"}
    with pytest.raises(WitnessError, match="assert failed"):
        PythonProver("native").prove(STATS, inputs, deadline_s=60)


def test_a_cancelled_proof_stops() -> None:
    import threading

    cancel = threading.Event()
    cancel.set()
    with pytest.raises((WitnessError, ProverError), match="cancelled"):
        PythonProver("native").prove(STATS, stats_inputs(), deadline_s=60, cancel=cancel)


def _copy(tmp_path: Path) -> Path:
    dest = tmp_path / "c"
    shutil.copytree(PREIMAGE.dir, dest)
    return dest


def test_a_zkey_of_another_setup_is_refused(tmp_path: Path) -> None:
    path = _copy(tmp_path)
    vk = json.loads((path / "verification_key.json").read_text())
    vk["vk_alpha_1"] = ["1", "2", "1"]  # a valid point, not this key's
    (path / "verification_key.json").write_text(json.dumps(vk))
    with pytest.raises(ProverError, match="does not match verification_key.json"):
        PythonProver("native").prove(
            load_circuit(path), {"preimage": [1, 2], "binding": 1}, deadline_s=60
        )


def test_a_garbage_zkey_is_refused(tmp_path: Path) -> None:
    path = _copy(tmp_path)
    (path / "circuit.zkey").write_bytes(b"zkey" + os.urandom(300))
    with pytest.raises(ProverError, match="circuit.zkey: ") as info:
        PythonProver("native").prove(
            load_circuit(path), {"preimage": [1, 2], "binding": 1}, deadline_s=60
        )
    assert info.value.hint


def test_a_wasm_of_another_circuit_is_refused(tmp_path: Path) -> None:
    path = _copy(tmp_path)
    (path / "circuit.wasm").write_bytes(STATS.wasm_path.read_bytes())
    manifest = json.loads((path / "circuit.json").read_text())
    manifest["inputs"]["private"] = ["values", "threshold", "commitment"]
    (path / "circuit.json").write_text(json.dumps(manifest))
    inputs = {k: v for k, v in stats_inputs().items()}
    with pytest.raises(ProverError, match="circuit.wasm and circuit.zkey are of different"):
        PythonProver("native").prove(load_circuit(path), inputs, deadline_s=60)


# --- the arithmetic ------------------------------------------------------------------------


def test_fft_is_the_dft_with_ffjavascripts_roots() -> None:
    rng = random.Random(3)
    for power in (0, 1, 3):
        n = 1 << power
        root = root_of_unity(power)
        assert pow(root, n, R) == 1 and (n == 1 or pow(root, n // 2, R) != 1)
        values = [rng.randrange(R) for _ in range(n)]
        naive = [sum(v * pow(root, j * k, R) for j, v in enumerate(values)) % R for k in range(n)]
        assert _fft(values, root) == naive


def test_the_odd_coset_evaluates_the_same_polynomial() -> None:
    rng = random.Random(4)
    power, n = 3, 8
    coefficients = [rng.randrange(R) for _ in range(n)]
    root, inc = root_of_unity(power), root_of_unity(power + 1)

    def poly(x: int) -> int:
        return sum(c * pow(x, i, R) for i, c in enumerate(coefficients)) % R

    on_domain = [poly(pow(root, i, R)) for i in range(n)]
    assert _to_odd_coset(on_domain, power) == [poly(inc * pow(root, i, R) % R) for i in range(n)]


def test_both_curve_backends_agree_on_msms() -> None:
    from py_ecc import optimized_bn128 as bn

    rng = random.Random(6)
    native, python = NativeCurve(), PyEccCurve()
    g1 = [bn.normalize(bn.multiply(bn.G1, rng.randrange(1, R))) for _ in range(5)]
    g1 = [(int(x), int(y)) for x, y in g1] + [(0, 0)]
    g2 = [bn.normalize(bn.multiply(bn.G2, rng.randrange(1, R))) for _ in range(3)]
    g2 = [
        ((int(x.coeffs[0]), int(x.coeffs[1])), (int(y.coeffs[0]), int(y.coeffs[1]))) for x, y in g2
    ]
    scalars = [rng.randrange(R) for _ in g1]
    for ops in (native, python):
        ops.result1 = ops.to_g1(ops.msm(ops.g1_points(g1), scalars, lambda: None))
        ops.result2 = ops.to_g2(ops.msm(ops.g2_points(g2), scalars[:3], lambda: None))
        ops.zero = ops.to_g1(ops.msm(ops.g1_points(g1), [0] * len(g1), lambda: None))
    assert native.result1 == python.result1
    assert native.result2 == python.result2
    assert native.zero == python.zero == (0, 0)


def _fq2_sqrt(a):
    """A square root in Fq2 (q = 3 mod 4), or None."""
    from py_ecc.optimized_bn128 import FQ2

    q = FIELD_MODULUS
    a1 = a ** ((q - 3) // 4)
    alpha = a1 * a1 * a
    x0 = a1 * a
    if alpha == FQ2([q - 1, 0]):
        root = FQ2([0, 1]) * x0
    else:
        root = (FQ2([1, 0]) + alpha) ** ((q - 1) // 2) * x0
    return root if root * root == a else None


def test_a_g2_point_outside_the_subgroup_is_refused_not_a_panic() -> None:
    from py_ecc.optimized_bn128 import FQ2, b2

    k = 1
    while True:
        x = FQ2([k, 1])
        y = _fq2_sqrt(x * x * x + b2)
        if y is not None:
            break
        k += 1
    point = ((int(x.coeffs[0]), int(x.coeffs[1])), (int(y.coeffs[0]), int(y.coeffs[1])))
    with pytest.raises(CurveError, match="not in the subgroup"):
        NativeCurve().g2_points([point])


# --- snarkjs as a program (stood in for by node scripts) -------------------------------------


def fake_snarkjs(tmp_path: Path, script: str) -> SnarkjsProver:
    cli = tmp_path / "tools" / "node_modules" / "snarkjs" / "build" / "cli.cjs"
    cli.parent.mkdir(parents=True)
    cli.write_text(script)
    return SnarkjsProver(tmp_path / "tools")


def test_snarkjs_is_unavailable_without_its_install(tmp_path: Path) -> None:
    prover = SnarkjsProver(tmp_path / "nothing")
    assert not prover.available()
    with pytest.raises(ProverError, match="not installed") as info:
        prover.prove(PREIMAGE, {}, deadline_s=5)
    assert info.value.code == "prover_unavailable"
    assert "make zktools" in info.value.hint


needs_node = pytest.mark.skipif(NODE is None, reason="node is not installed")


@needs_node
def test_snarkjs_is_killed_with_its_children_at_the_deadline(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    prover = fake_snarkjs(
        tmp_path,
        "const {spawn} = require('child_process');"
        "const child = spawn('sleep', ['1000'], {stdio: 'ignore'});"
        f"require('fs').writeFileSync({json.dumps(str(pids))}, `${{process.pid}} ${{child.pid}}`);"
        "setInterval(() => {}, 1000);",
    )
    with pytest.raises(ProverError, match="timeout") as info:
        prover.prove(PREIMAGE, {"preimage": [1, 2], "binding": 1}, deadline_s=1.5)
    assert info.value.code == "prove_timeout"
    for pid in map(int, pids.read_text().split()):
        assert _dead(pid)  # killed with its group (an orphan may stay a zombie until reaped)


def _dead(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


@needs_node
def test_snarkjs_failures_carry_its_message(tmp_path: Path) -> None:
    prover = fake_snarkjs(
        tmp_path,
        "console.error('[ERROR] snarkJS: Error: Assert Failed.\\nError in template X_1 line: 9');"
        "process.exit(1);",
    )
    with pytest.raises(ProverError, match="assert failed") as info:
        prover.prove(PREIMAGE, {"preimage": [1, 2], "binding": 1}, deadline_s=30)
    assert "check the inputs" in info.value.hint


@needs_node
def test_snarkjs_output_is_checked(tmp_path: Path) -> None:
    prover = fake_snarkjs(
        tmp_path,
        "const fs = require('fs');"
        "const args = process.argv.slice(2);"
        "if (JSON.parse(fs.readFileSync(args[2])).binding !== '1') process.exit(3);"
        'fs.writeFileSync(args[5], \'{"pi_a": ["1", "3", "1"]}\');'
        "fs.writeFileSync(args[6], '[\"1\"]');",
    )
    with pytest.raises(ProverError, match="snarkjs wrote no usable proof"):
        prover.prove(PREIMAGE, {"preimage": [1, 2], "binding": 1}, deadline_s=30)


# --- choosing ----------------------------------------------------------------------------------


def test_select_prover_by_name() -> None:
    assert prover_names() == ["native", "snarkjs", "python"]
    assert select_prover("python").name == "python"
    assert select_prover("native").name == "native"
    assert select_prover(None).name == "native"  # zksnake is installed here
    with pytest.raises(ProverError, match="no prover called 'gpu'") as info:
        select_prover("gpu")
    assert "native, snarkjs, python" in info.value.hint


def test_available_provers_without_checking_lists_what_is_installed() -> None:
    names = [p.name for p in available_provers(check=False)]
    assert names[0] == "native" and "python" in names


class _FakeProver:
    def __init__(self, name: str, answer, installed: bool = True) -> None:
        self.name = name
        self._answer = answer
        self._installed = installed

    def available(self) -> bool:
        return self._installed

    def prove(self, circuit, inputs, *, deadline_s):
        if isinstance(self._answer, Exception):
            raise self._answer
        return self._answer


def test_check_provers_reports_each_failure() -> None:
    good = PythonProver("native")
    wrong = Proof(a=(1, 2), b=PREIMAGE.vk.beta2, c=(1, 2))
    results = check_provers(
        [
            _FakeProver("crashes", RuntimeError("boom")),
            _FakeProver("lies", (wrong, (1, 5))),
            _FakeProver("absent", None, installed=False),
            _FakeProver("refuses", ProverError("no GPU")),
            good,
        ]
    )
    by_name = {r.name: r for r in results}
    assert by_name["crashes"].reason == "RuntimeError: boom"
    assert "does not verify" in by_name["lies"].reason
    assert by_name["absent"].reason == "not installed"
    assert by_name["refuses"].reason == "no GPU"
    assert by_name["native"].ok and by_name["native"].prover is good
    assert not any(r.ok for r in results[:4])

"""The project's own circom templates (circuits/src/lib/) in the shipped circuits.

The circuits include nothing but lib/ (no circomlib: GPL-3.0); the Poseidon
constants committed there are zkp.poseidon's own; the shipped circuits' hashes
equal zkp.poseidon and values recorded from circomlib 2.0.5's Poseidon. The
constraint systems are read from the shipped .r1cs and checked directly: every
wire is used by a constraint, honest witnesses at the edges (0, the threshold,
2^32 - 1, every remainder) satisfy them, and witnesses with a changed output
do not. A few edge cases go all the way to a native proof that zkp.verify
accepts; a proof from a tampered witness is refused.
"""

from __future__ import annotations

import ast
import re
import struct
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from zkp.binding import SNARK_SCALAR_FIELD as R
from zkp.circuit import load_circuit, shipped_circuits
from zkp.poseidon import _PARTIAL_ROUNDS, _parameters, poseidon
from zkp.prover import PythonProver
from zkp.verify import verify
from zkp.witness import WitnessError, compute_witness

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "circuits" / "src"
LIB = SRC / "lib"
SHIPPED = shipped_circuits()
PREIMAGE = load_circuit(SHIPPED["poseidon_preimage"])
STATS = load_circuit(SHIPPED["private_stats"])
TOP = 2**32 - 1


# --- sources ---------------------------------------------------------------------------


def test_the_circuits_include_only_our_own_templates() -> None:
    sources = sorted(SRC.glob("*.circom")) + sorted(LIB.glob("*.circom"))
    assert {p.name for p in sources} >= {
        "poseidon_preimage.circom",
        "private_stats.circom",
        "poseidon.circom",
        "poseidon_constants.circom",
        "bits.circom",
        "compare.circom",
    }
    for source in sources:
        text = source.read_text()
        assert "circomlib" not in text.replace("circomlib's", ""), source
        for include in re.findall(r'^\s*include\s+"([^"]+)"', text, flags=re.M):
            target = (source.parent / include).resolve()
            assert target.parent == LIB, f"{source.name} includes {include}"
            assert target.is_file(), f"{source.name} includes a missing {include}"


def _constants_file() -> dict[str, dict[int, list]]:
    """poseidon_constants.circom's functions: name -> {t: the returned value}."""
    text = (LIB / "poseidon_constants.circom").read_text()
    found: dict[str, dict[int, list]] = {}
    for function, body in re.findall(r"function (\w+)\(t\) \{(.*?)\n\}", text, flags=re.S):
        branches = re.split(r"(?:if \(t == (\d+)\)|else \{ // t == (\d+))", body)[1:]
        values: dict[int, list] = {}
        for i in range(0, len(branches), 3):
            t = int(branches[i] or branches[i + 1])
            (returned,) = re.findall(r"return (.*?);", branches[i + 2], flags=re.S)
            values[t] = ast.literal_eval(returned)  # hex literals in nested lists
        found[function] = values
    return found


def test_the_committed_poseidon_constants_are_zkp_poseidons() -> None:
    constants = _constants_file()
    assert sorted(constants["poseidonPartialRounds"]) == list(range(2, 18))
    assert [constants["poseidonPartialRounds"][t] for t in range(2, 18)] == list(_PARTIAL_ROUNDS)
    for t in (2, 3, 17):  # the first, the preimage's, the last and widest (private_stats)
        round_constants, mds = _parameters(t)
        assert constants["poseidonRoundConstants"][t] == list(round_constants)
        assert constants["poseidonMds"][t] == [list(row) for row in mds]
    for t in range(2, 18):
        assert len(constants["poseidonRoundConstants"][t]) == (8 + _PARTIAL_ROUNDS[t - 2]) * t
        assert len(constants["poseidonMds"][t]) == t


# circomlib 2.0.5's Poseidon, recorded from its compiled circuits before the switch
# (their witness generators, run through zkp.witness): Poseidon(2) of [123, 456] and
# Poseidon(16) of 1..16.
CIRCOMLIB_VECTORS = [
    ([123, 456], 19620391833206800292073497099357851348339828238212863168390691880932172496143),
    (
        list(range(1, 17)),
        9989051620750914585850546081941653841776809718687451684622678807385399211877,
    ),
]


@pytest.mark.parametrize(("inputs", "expected"), CIRCOMLIB_VECTORS)
def test_our_circuits_hash_as_circomlib_did(inputs: list[int], expected: int) -> None:
    assert poseidon(inputs) == expected
    if len(inputs) == 2:
        witness = compute_witness(PREIMAGE, {"preimage": inputs, "binding": 1})
        assert witness[1] == expected
    else:
        witness = compute_witness(STATS, _stats_inputs(inputs, 0))
        assert witness[5] == expected  # the commitment the circuit checked


@pytest.mark.parametrize("seed", range(4))
def test_the_preimage_circuit_hashes_as_zkp_poseidon(seed: int) -> None:
    a, b = (pow(7 + seed, 97 + i, R) for i in range(2))  # spread over the whole field
    for preimage in ([a, b], [0, 0], [R - 1, a], [seed, R - 1 - seed]):
        witness = compute_witness(PREIMAGE, {"preimage": preimage, "binding": seed})
        assert witness[1:3] == [poseidon(preimage), seed]


# --- the constraint systems ---------------------------------------------------------------


@dataclass(frozen=True)
class R1cs:
    n_wires: int
    constraints: tuple[tuple[dict[int, int], dict[int, int], dict[int, int]], ...]

    def satisfied_by(self, witness: list[int]) -> bool:
        def value(lc: dict[int, int]) -> int:
            return sum(c * witness[w] for w, c in lc.items()) % R

        return all(value(a) * value(b) % R == value(c) for a, b, c in self.constraints)


@cache
def read_r1cs(path: Path) -> R1cs:
    """circom's .r1cs: header (section 1) and constraints (section 2), as A * B = C."""
    data = path.read_bytes()
    assert data[:4] == b"r1cs"
    (count,) = struct.unpack_from("<I", data, 8)
    sections, pos = {}, 12
    for _ in range(count):
        kind, size = struct.unpack_from("<IQ", data, pos)
        sections[kind] = (pos + 12, size)
        pos += 12 + size
    at, _ = sections[1]
    (n8,) = struct.unpack_from("<I", data, at)
    assert int.from_bytes(data[at + 4 : at + 4 + n8], "little") == R
    n_wires, *_ = struct.unpack_from("<IIII", data, at + 4 + n8)
    (n_constraints,) = struct.unpack_from("<I", data, at + 4 + n8 + 24)
    pos, _ = sections[2]
    constraints = []
    for _ in range(n_constraints):
        three = []
        for _ in range(3):
            (terms,) = struct.unpack_from("<I", data, pos)
            pos += 4
            lc = {}
            for _ in range(terms):
                (wire,) = struct.unpack_from("<I", data, pos)
                lc[wire] = int.from_bytes(data[pos + 4 : pos + 4 + n8], "little")
                pos += 4 + n8
            three.append(lc)
        constraints.append(tuple(three))
    return R1cs(n_wires, tuple(constraints))


@pytest.mark.parametrize("name", ["poseidon_preimage", "private_stats"])
def test_every_wire_is_used_by_a_constraint(name: str) -> None:
    # A signal set with <-- and never constrained would be a wire no constraint
    # mentions: the prover could put anything there.
    circuit = load_circuit(SHIPPED[name])
    r1cs = read_r1cs(circuit.r1cs_path)
    assert len(r1cs.constraints) == circuit.constraints
    used = {w for three in r1cs.constraints for lc in three for w in lc}
    assert used == set(range(r1cs.n_wires))


def test_constraint_counts() -> None:
    # 240 for our Poseidon of 2 (3 x^5 S-boxes of 3 constraints each in 8 full rounds,
    # one in 57 partial ones, less the constant first one) + the binding's square.
    assert PREIMAGE.constraints == 241
    # Poseidon of 16 (609), 19 range checks of 32 bits (16 values, the threshold, the
    # quotient and the remainder), 17 comparators of 33 (less one: remainder < 16 fixes
    # the top bit), the binding's square.
    assert STATS.constraints == 1778


def _stats_inputs(values: list[int], threshold: int, binding: int = 99) -> dict:
    return {
        "values": values,
        "threshold": threshold,
        "commitment": poseidon(values),
        "binding": binding,
    }


EDGES = {
    "all zero, threshold 0": ([0] * 16, 0),
    "all top, threshold top": ([TOP] * 16, TOP),
    "all top, threshold top - 1": ([TOP] * 16, TOP - 1),
    "all zero, threshold top": ([0] * 16, TOP),
    "at, below and above the threshold": ([1000, 999, 1001, 0, TOP, 1000] + [7] * 10, 1000),
    "zeros and ones over threshold 0": ([0, 1] * 8, 0),
    "remainder 15": ([1] * 15 + [0], 0),
    "remainder 15 at the top": ([TOP] * 15 + [TOP - 15], 5),
    "one value above threshold top - 1": ([TOP] + [0] * 15, TOP - 1),
}


@pytest.mark.parametrize(("values", "threshold"), EDGES.values(), ids=EDGES.keys())
def test_private_stats_at_the_edges(values: list[int], threshold: int) -> None:
    witness = compute_witness(STATS, _stats_inputs(values, threshold))
    total = sum(values)
    assert witness[1:4] == [total, sum(v > threshold for v in values), total // 16]
    assert read_r1cs(STATS.r1cs_path).satisfied_by(witness)


@pytest.mark.parametrize(
    ("values", "threshold"),
    [
        ([TOP + 1] + [0] * 15, 0),
        ([0] * 15 + [R - 1], 0),  # "-1"
        ([0] * 16, TOP + 1),
        ([0] * 16, R - 1),
    ],
    ids=["value 2^32", "value -1", "threshold 2^32", "threshold -1"],
)
def test_out_of_range_values_fail_the_range_check(values: list[int], threshold: int) -> None:
    with pytest.raises(WitnessError, match="assert failed in template Bits"):
        compute_witness(STATS, _stats_inputs(values, threshold))


@pytest.mark.parametrize(
    ("index", "delta"),
    [(1, 1), (1, -16), (2, 1), (2, -1), (3, 1), (3, -1), (4, 1), (5, 1)],
    ids=["sum+1", "sum-16", "count+1", "count-1", "mean+1", "mean-1", "threshold", "commitment"],
)
def test_a_changed_public_signal_breaks_the_constraints(index: int, delta: int) -> None:
    values, threshold = EDGES["at, below and above the threshold"]
    witness = compute_witness(STATS, _stats_inputs(values, threshold))
    forged = list(witness)
    forged[index] = (forged[index] + delta) % R
    assert not read_r1cs(STATS.r1cs_path).satisfied_by(forged)


def test_a_changed_hash_breaks_the_preimage_constraints() -> None:
    witness = compute_witness(PREIMAGE, {"preimage": [5, 6], "binding": 7})
    r1cs = read_r1cs(PREIMAGE.r1cs_path)
    assert r1cs.satisfied_by(witness)
    assert not r1cs.satisfied_by([witness[0], witness[1] + 1, *witness[2:]])


# --- real proofs ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "edge", ["all top, threshold top", "at, below and above the threshold", "remainder 15"]
)
def test_native_proofs_at_the_edges_verify(edge: str) -> None:
    values, threshold = EDGES[edge]
    proof, public = PythonProver("native").prove(
        STATS, _stats_inputs(values, threshold), deadline_s=60
    )
    total = sum(values)
    assert public[:3] == (total, sum(v > threshold for v in values), total // 16)
    assert verify(STATS.vk, proof, public, backend="native").valid
    lied = (public[0], public[1] + 1, *public[2:])
    assert not verify(STATS.vk, proof, lied, backend="native").valid


def test_a_proof_of_a_tampered_witness_does_not_verify() -> None:
    from zkp.curves import NativeCurve
    from zkp.groth16 import PreparedKey, prove
    from zkp.zkey import parse_zkey

    values, threshold = EDGES["at, below and above the threshold"]
    witness = compute_witness(STATS, _stats_inputs(values, threshold))
    forged = list(witness)
    forged[2] += 1  # one more value above the threshold than there is
    key = PreparedKey(parse_zkey(STATS.zkey_path.read_bytes()), NativeCurve())
    proof, public = prove(key, forged, 12345, 67890)
    assert public[1] == witness[2] + 1
    assert not verify(STATS.vk, proof, public, backend="native").valid
    honest, public = prove(key, witness, 12345, 67890)
    assert verify(STATS.vk, honest, public, backend="native").valid

"""zkp.verify: snarkjs proofs verify on both backends, every change breaks them, nothing raises.

py-ecc costs ~1 s a pairing check: it runs on the two snarkjs proofs, three
tampered ones and one trapdoor proof (all in the backend-agreement tests);
the bulk runs on the native backend.
"""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import pytest

from zkp.backends import native
from zkp.formats import (
    FIELD_MODULUS,
    SCALAR_FIELD,
    Proof,
    VerifyingKey,
    g2_on_curve,
    parse_proof,
    parse_public,
    parse_vk,
    proof_to_json,
    vk_to_json,
)
from zkp.testing import TrapdoorSetup
from zkp.verify import Verdict, backends, default_backend, verify, verify_json

CUBIC = Path(__file__).resolve().parents[1] / "data" / "vectors" / "groth16" / "cubic"
Q = FIELD_MODULUS
R = SCALAR_FIELD
PAIRING_FAILED = "the pairing check failed (the proof does not match the key and public inputs)"

# On the twist y^2 = x^3 + 3/(9+u) (x = 1, y a square root of 1 + b2 in Fq2, found
# by the norm method) but not in the r-torsion: r times it is not infinity.
TWIST_NOT_G2 = (
    (1, 0),
    (
        18278151005453108793778860132295291098363647455926340152056652516292830556603,
        5912654199736721486680175016176231956195085055698687135131307249486702594212,
    ),
)


def _load(name: str) -> object:
    return json.loads((CUBIC / name).read_text())


VK = parse_vk(_load("verification_key.json"))
PROOF = parse_proof(_load("proof.json"))
PROOF2 = parse_proof(_load("proof2.json"))
PUBLIC = parse_public(_load("public.json"))
PUBLIC2 = parse_public(_load("public2.json"))


def _neg1(p: tuple[int, int]) -> tuple[int, int]:
    return (p[0], (Q - p[1]) % Q)


def _neg2(p):  # type: ignore[no-untyped-def]
    x, (y0, y1) = p
    return (x, ((Q - y0) % Q, (Q - y1) % Q))


def test_the_twist_point_is_on_the_curve_but_not_in_g2() -> None:
    from py_ecc.optimized_bn128 import FQ2, is_inf, multiply

    assert g2_on_curve(TWIST_NOT_G2)
    (x0, x1), (y0, y1) = TWIST_NOT_G2
    point = (FQ2([x0, x1]), FQ2([y0, y1]), FQ2.one())
    assert not is_inf(multiply(point, R))


def test_backends_are_listed_in_preference_order() -> None:
    assert backends() == ["native", "py_ecc"]
    assert default_backend() == "native"


def test_unknown_backend_raises_a_configuration_error() -> None:
    with pytest.raises(
        ValueError, match="unknown zk backend 'gnark': choose one of native, py_ecc"
    ):
        verify(VK, PROOF, PUBLIC, backend="gnark")
    with pytest.raises(ValueError, match="unknown zk backend"):
        verify_json({}, {}, [], backend="gnark")


# ---------------------------------------------------------------- both backends agree

AGREEMENT = {
    # name: (vk, proof, public, expected reason or None)
    "snarkjs proof": (VK, PROOF, PUBLIC, None),
    "snarkjs proof2": (VK, PROOF2, PUBLIC2, None),
    "public changed": (VK, PROOF, (36,), PAIRING_FAILED),
    "A negated": (VK, replace(PROOF, a=_neg1(PROOF.a)), PUBLIC, PAIRING_FAILED),
    "delta negated": (VK, PROOF, PUBLIC, PAIRING_FAILED),  # vk replaced below
    "B not in G2": (VK, replace(PROOF, b=TWIST_NOT_G2), PUBLIC, "proof.pi_b: point is not in"),
    "beta not in G2": (
        replace(VK, beta2=TWIST_NOT_G2),
        PROOF,
        PUBLIC,
        "vk.vk_beta_2: point is not in the G2 subgroup",
    ),
    "A off the curve": (
        VK,
        replace(PROOF, a=(1, 3)),
        PUBLIC,
        "proof.pi_a: point is not on the curve",
    ),
    "public >= r": (VK, PROOF, (R,), "public[0] is not below the scalar field order r"),
    "too few public": (VK, PROOF, (), "public: 0 signals, but the key takes 1"),
}
AGREEMENT["delta negated"] = (replace(VK, delta2=_neg2(VK.delta2)), PROOF, PUBLIC, PAIRING_FAILED)


@pytest.mark.parametrize("name", list(AGREEMENT))
def test_both_backends_agree(name: str) -> None:
    vk, proof, public, reason = AGREEMENT[name]
    verdicts = {b: verify(vk, proof, public, backend=b) for b in ("native", "py_ecc")}
    assert verdicts["native"] == verdicts["py_ecc"]
    verdict = verdicts["native"]
    if reason is None:
        assert verdict == Verdict(True, None)
    else:
        assert not verdict.valid and verdict.reason is not None
        assert verdict.reason.startswith(reason), verdict.reason


def test_trapdoor_proofs_verify_on_both_backends() -> None:
    setup = TrapdoorSetup.new(3, seed=7)
    public = (1, 2, R - 1)
    proof = setup.prove(public, seed=3)
    assert verify(setup.vk, proof, public, backend="py_ecc") == Verdict(True)
    assert verify(setup.vk, proof, public, backend="native") == Verdict(True)


# ---------------------------------------------------------------- the vectors, natively


def test_snarkjs_proofs_cross_check() -> None:
    # public2 is the same statement (out = 35): each proof verifies with either file.
    for proof in (PROOF, PROOF2):
        for public in (PUBLIC, PUBLIC2):
            assert verify(VK, proof, public, backend="native").valid
    assert not verify(VK, PROOF, (34,), backend="native").valid
    assert not verify(VK, replace(PROOF, c=PROOF2.c), PUBLIC, backend="native").valid


def _flatten(vk: VerifyingKey, proof: Proof, public: tuple[int, ...]) -> list[int]:
    """Every integer of the statement, in a fixed order (see _unflatten)."""
    g2 = [vk.beta2, vk.gamma2, vk.delta2]
    flat = [*vk.alpha1, *(c for p in g2 for pair in p for c in pair)]
    flat += [c for p in vk.ic for c in p]
    flat += [*proof.a, *(c for pair in proof.b for c in pair), *proof.c, *public]
    return flat


def _unflatten(flat: list[int], n_ic: int) -> tuple[VerifyingKey, Proof, tuple[int, ...]]:
    it = iter(flat)

    def g1() -> tuple[int, int]:
        return (next(it), next(it))

    def g2():  # type: ignore[no-untyped-def]
        return ((next(it), next(it)), (next(it), next(it)))

    vk = VerifyingKey(g1(), g2(), g2(), g2(), tuple(g1() for _ in range(n_ic)))
    proof = Proof(g1(), g2(), g1())
    return vk, proof, tuple(it)


def test_every_single_field_change_is_invalid() -> None:
    flat = _flatten(VK, PROOF, PUBLIC)
    assert len(flat) == 2 + 4 * 3 + 2 * 2 + 2 + 4 + 2 + 1  # 27 integers in the statement
    assert _unflatten(flat, 2) == (VK, PROOF, PUBLIC)
    for i, old in enumerate(flat):
        bound = R if i == len(flat) - 1 else Q
        for new in ((old + 1) % bound, (old - 1) % bound, 0):
            changed = flat[:i] + [new] + flat[i + 1 :]
            verdict = verify(*_unflatten(changed, 2), backend="native")
            assert not verdict.valid and verdict.reason, (i, new)


def test_every_point_replaced_by_another_valid_point_is_invalid() -> None:
    # Negation keeps each point on the curve and in its group: only the pairing catches it.
    changes = {
        "alpha1": replace(VK, alpha1=_neg1(VK.alpha1)),
        "beta2": replace(VK, beta2=_neg2(VK.beta2)),
        "gamma2": replace(VK, gamma2=_neg2(VK.gamma2)),
        "delta2": replace(VK, delta2=_neg2(VK.delta2)),
        "ic0": replace(VK, ic=(_neg1(VK.ic[0]), VK.ic[1])),
        "ic1": replace(VK, ic=(VK.ic[0], _neg1(VK.ic[1]))),
    }
    for name, vk in changes.items():
        assert verify(vk, PROOF, PUBLIC, backend="native") == Verdict(False, PAIRING_FAILED), name
    for proof in (
        replace(PROOF, a=_neg1(PROOF.a)),
        replace(PROOF, b=_neg2(PROOF.b)),
        replace(PROOF, c=_neg1(PROOF.c)),
        replace(PROOF, a=(0, 0)),
        replace(PROOF, b=((0, 0), (0, 0))),
        replace(PROOF, c=(0, 0)),
        Proof(a=(0, 0), b=((0, 0), (0, 0)), c=(0, 0)),
    ):
        assert verify(VK, proof, PUBLIC, backend="native") == Verdict(False, PAIRING_FAILED)
    # Negating A and B together is the same proof: the equation holds (malleability).
    both = replace(PROOF, a=_neg1(PROOF.a), b=_neg2(PROOF.b))
    assert verify(VK, both, PUBLIC, backend="native").valid


# ---------------------------------------------------------------- hostile input, directly


HOSTILE = [
    ("vk", None, "vk: expected a VerifyingKey, got a NoneType"),
    ("vk", _load("verification_key.json"), "vk: expected a VerifyingKey, got a dict"),
    ("proof", "proof", "proof: expected a Proof, got a str"),
    ("public", None, "public: expected a sequence of integers, got a NoneType"),
    ("public", "35", "public: expected a sequence of integers, got a str"),
    ("public", {35: 1}, "public: expected a sequence of integers, got a dict"),
    ("public", (35, 1), "public: 2 signals, but the key takes 1"),
    ("public", [True], "public[0] is not an integer"),
    ("public", ["35"], "public[0] is not an integer"),
    ("public", [35.0], "public[0] is not an integer"),
    ("public", [-1], "public[0] is not below the scalar field order r"),
    ("public", [2**4000], "public[0] is not below the scalar field order r"),
    ("a", (1, 2, 1), "proof.pi_a: not a G1 point (x, y)"),
    ("a", ("1", "2"), "proof.pi_a: coordinates must be integers below the field modulus"),
    ("a", (True, 2), "proof.pi_a: coordinates must be integers below the field modulus"),
    ("a", (1, 2 + Q), "proof.pi_a: coordinates must be integers below the field modulus"),
    ("a", (-Q + 1, 2), "proof.pi_a: coordinates must be integers below the field modulus"),
    ("a", None, "proof.pi_a: not a G1 point (x, y)"),
    ("c", (1, 3), "proof.pi_c: point is not on the curve"),
    ("b", (1, 2), "proof.pi_b: not a G2 point ((x.c0, x.c1), (y.c0, y.c1))"),
    ("b", ((1, 2), (3, 4)), "proof.pi_b: point is not on the curve"),
    ("b", ((1, 2), (3,)), "proof.pi_b: not a G2 point ((x.c0, x.c1), (y.c0, y.c1))"),
    ("b", ((1, 2), (3, Q)), "proof.pi_b: coordinates must be integers below the field modulus"),
    ("b", TWIST_NOT_G2, "proof.pi_b: point is not in the G2 subgroup"),
    ("alpha1", (0, 0), "vk.vk_alpha_1: the point at infinity (a degenerate key)"),
    ("alpha1", (5, 7), "vk.vk_alpha_1: point is not on the curve"),
    ("gamma2", ((0, 0), (0, 0)), "vk.vk_gamma_2: the point at infinity"),
    ("delta2", ((0, 0), (0, 0)), "vk.vk_delta_2: the point at infinity"),
    ("delta2", VK.gamma2, "vk: gamma2 equals delta2 (phase 2 of the setup was skipped"),
    ("gamma2", TWIST_NOT_G2, "vk.vk_gamma_2: point is not in the G2 subgroup"),
    ("delta2", TWIST_NOT_G2, "vk.vk_delta_2: point is not in the G2 subgroup"),
    ("ic", (), "vk.IC: 0 points; a key has 1 to 1025"),
    ("ic", ((1, 2),) * 2000, "vk.IC: 2000 points; a key has 1 to 1025"),
    ("ic", [VK.ic[0], (1, 3)], "vk.IC[1]: point is not on the curve"),
    ("ic", "ab", "vk.IC: expected a tuple of G1 points, got a str"),
    ("ic", None, "vk.IC: expected a tuple of G1 points, got a NoneType"),
]


def _hostile(field: str, value: object) -> tuple[object, object, object]:
    vk: object = VK
    proof: object = PROOF
    public: object = PUBLIC
    if field == "vk":
        vk = value
    elif field == "proof":
        proof = value
    elif field == "public":
        public = value
    elif field in ("a", "b", "c"):
        proof = replace(PROOF, **{field: value})
    else:
        vk = replace(VK, **{field: value})
    return vk, proof, public


@pytest.mark.parametrize(("field", "value", "reason"), HOSTILE)
def test_hostile_input_is_rejected_with_a_reason_on_both_backends(
    field: str, value: object, reason: str
) -> None:
    args = _hostile(field, value)
    verdicts = [verify(*args, backend=b) for b in ("native", "py_ecc")]  # type: ignore[arg-type]
    assert verdicts[0] == verdicts[1]
    assert not verdicts[0].valid
    assert verdicts[0].reason is not None and verdicts[0].reason.startswith(reason), verdicts[0]


def test_a_key_with_a_point_at_infinity_in_ic_still_verifies() -> None:
    # snarkjs writes an unused public input's IC point as infinity: that key is fine.
    setup = TrapdoorSetup.new(2, seed=5)
    vk = replace(setup.vk, ic=(setup.vk.ic[0], setup.vk.ic[1], (0, 0)))
    forged = TrapdoorSetup(vk, setup.alpha, setup.beta, setup.gamma, setup.delta, (*setup.k[:2], 0))
    proof = forged.prove([3, 9])
    assert verify(vk, proof, [3, 9], backend="native").valid
    assert verify(vk, proof, [3, 8], backend="native").valid  # input 2 is not bound by this key
    assert not verify(vk, proof, [4, 9], backend="native").valid


def test_verify_json_turns_parse_errors_into_verdicts() -> None:
    vk, proof, public = (_load(n) for n in ("verification_key.json", "proof.json", "public.json"))
    assert verify_json(vk, proof, public) == Verdict(True)
    assert verify_json(vk, proof, ["36"]) == Verdict(False, PAIRING_FAILED)
    assert verify_json(vk, proof, ["0x23"]) == Verdict(
        False, "public[0] is not a decimal string: '0x23' (hex is not accepted)"
    )
    assert verify_json(vk, [], public) == Verdict(
        False, "proof: expected a JSON object, got a list"
    )
    assert verify_json(proof, proof, public) == Verdict(False, "vk: missing 'vk_alpha_1'")
    assert verify_json(public, proof, public) == Verdict(
        False, "vk: expected a JSON object, got a list"
    )
    assert verify_json({"IC": []}, proof, public) == Verdict(
        False, "vk: missing 'protocol' (is this a verification key?)"
    )
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    assert verify_json(vk, {"pi_a": deep, "pi_b": deep, "pi_c": deep}, deep) == Verdict(
        False, "proof.pi_a: expected a list of 3, got 1 elements"
    )


def test_random_mutations_never_raise() -> None:
    rng = random.Random(10)
    base = {
        "vk": _load("verification_key.json"),
        "proof": _load("proof.json"),
        "public": _load("public.json"),
    }
    junk = [None, True, 0, -1, 1.5, "", "0x1", "1" * 90, str(Q), [], {}, [[[]]], ["1", "2", "1"]]

    def mutate(obj: object) -> object:
        if isinstance(obj, dict) and obj:
            key = rng.choice(sorted(obj))
            obj[key] = mutate(obj[key]) if rng.random() < 0.8 else rng.choice(junk)
            return obj
        if isinstance(obj, list) and obj:
            i = rng.randrange(len(obj))
            roll = rng.random()
            if roll < 0.1:
                del obj[i]
            elif roll < 0.2:
                obj.append(rng.choice(junk))
            else:
                obj[i] = mutate(obj[i]) if rng.random() < 0.8 else rng.choice(junk)
            return obj
        if isinstance(obj, str) and obj.isdigit():
            return str(int(obj) + rng.choice([1, -1, Q, R]))
        return rng.choice(junk)

    for _ in range(300):
        case = json.loads(json.dumps(base))
        which = rng.choice(sorted(case))
        case[which] = mutate(case[which])
        verdict = verify_json(case["vk"], case["proof"], case["public"], backend="native")
        assert isinstance(verdict, Verdict)
        assert verdict.valid == (verdict.reason is None)


def test_a_backend_panic_is_an_invalid_verdict(monkeypatch: pytest.MonkeyPatch) -> None:
    class PanicException(BaseException):  # what pyo3 raises on a Rust panic
        pass

    def panics(*args: object) -> None:
        raise PanicException("assertion failed")

    monkeypatch.setattr(native, "check", panics)
    assert verify(VK, PROOF, PUBLIC, backend="native") == Verdict(
        False, "internal error in the native backend: a panic"
    )

    def breaks(*args: object) -> None:
        raise RecursionError

    monkeypatch.setattr(native, "check", breaks)
    assert verify(VK, PROOF, PUBLIC, backend="native") == Verdict(
        False, "internal error in the native backend: RecursionError"
    )

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(native, "check", interrupted)
    with pytest.raises(KeyboardInterrupt):
        verify(VK, PROOF, PUBLIC, backend="native")


# ---------------------------------------------------------------- the trapdoor setup


def test_trapdoor_setup_is_deterministic_and_round_trips() -> None:
    a, b = TrapdoorSetup.new(2, seed=11), TrapdoorSetup.new(2, seed=11)
    assert a.vk == b.vk and a.vk.n_public == 2
    assert TrapdoorSetup.new(2, seed=12).vk != a.vk
    assert a.prove([1, 2], seed=4) == b.prove([1, 2], seed=4)
    assert a.prove([1, 2], seed=4) != a.prove([1, 2], seed=5)
    assert parse_vk(json.loads(json.dumps(vk_to_json(a.vk)))) == a.vk
    proof = a.prove([1, 2])
    assert parse_proof(json.loads(json.dumps(proof_to_json(proof)))) == proof


def test_trapdoor_proofs_bind_their_public_inputs() -> None:
    setup = TrapdoorSetup.new(2, seed=1)
    for seed, public in enumerate([(0, 0), (1, 2), (R - 1, 123456789)]):
        proof = setup.prove(public, seed=seed)
        assert verify(setup.vk, proof, public, backend="native").valid
        assert not verify(setup.vk, proof, (public[0], (public[1] + 1) % R), backend="native").valid
        assert not verify(setup.vk, proof, ((public[0] + 1) % R, public[1]), backend="native").valid
        assert not verify(TrapdoorSetup.new(2, seed=2).vk, proof, public, backend="native").valid
    zero = TrapdoorSetup.new(0, seed=3)
    assert verify(zero.vk, zero.prove([]), [], backend="native").valid


def test_trapdoor_setup_refuses_wrong_inputs() -> None:
    setup = TrapdoorSetup.new(1)
    with pytest.raises(ValueError, match="expected 1 public inputs, got 2"):
        setup.prove([1, 2])
    with pytest.raises(ValueError, match="below the scalar field order"):
        setup.prove([R])


def test_verify_from_worker_threads_shares_the_cached_key() -> None:
    # The daemon verifies in trio's worker threads: zksnake objects cached for a
    # key in one thread must work in the others (pyo3 'unsendable' would panic).
    from concurrent.futures import ThreadPoolExecutor

    assert verify(VK, PROOF, PUBLIC, backend="native").valid  # cached here
    with ThreadPoolExecutor(4) as pool:
        verdicts = list(
            pool.map(
                lambda i: verify(VK, PROOF, PUBLIC if i % 2 else (36,), backend="native"), range(16)
            )
        )
    assert [v.valid for v in verdicts] == [bool(i % 2) for i in range(16)]

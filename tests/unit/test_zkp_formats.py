"""zkp.formats: snarkjs JSON in and out, Solidity calldata, vk_id, and hostile JSON rejected with reasons."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from zkp.binding import SNARK_SCALAR_FIELD
from zkp.formats import (
    FIELD_MODULUS,
    MAX_PUBLIC,
    SCALAR_FIELD,
    Proof,
    VerifyingKey,
    ZkFormatError,
    load_json_file,
    parse_proof,
    parse_public,
    parse_vk,
    proof_calldata,
    proof_to_json,
    public_to_json,
    vk_calldata,
    vk_id,
    vk_to_json,
)

# A snarkjs 0.7 Groth16 setup for x*x*x + x + 5 == out, copied from ../shared/vectors.
CUBIC = Path(__file__).resolve().parents[1] / "data" / "vectors" / "groth16" / "cubic"
Q = FIELD_MODULUS
R = SCALAR_FIELD


def _load(name: str) -> object:
    return json.loads((CUBIC / name).read_text())


@pytest.fixture
def vk_obj() -> dict:
    return _load("verification_key.json")


@pytest.fixture
def proof_obj() -> dict:
    return _load("proof.json")


def test_scalar_field_is_the_bindings() -> None:
    assert SCALAR_FIELD == SNARK_SCALAR_FIELD


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", ["proof.json", "proof2.json"])
def test_proof_round_trips_byte_for_byte(name: str) -> None:
    text = (CUBIC / name).read_text()
    assert json.dumps(proof_to_json(parse_proof(json.loads(text))), indent=1) == text


@pytest.mark.parametrize("name", ["public.json", "public2.json"])
def test_public_round_trips_byte_for_byte(name: str) -> None:
    text = (CUBIC / name).read_text()
    assert parse_public(json.loads(text)) == (35,)
    assert json.dumps(public_to_json(parse_public(json.loads(text))), indent=1) == text


def test_vk_round_trips_byte_for_byte_with_alphabeta() -> None:
    # vk_alphabeta_12 is recomputed (e(alpha, beta)), not carried: it must equal snarkjs's.
    text = (CUBIC / "verification_key.json").read_text()
    vk = parse_vk(json.loads(text))
    assert vk.n_public == 1 and len(vk.ic) == 2
    assert json.dumps(vk_to_json(vk), indent=1) == text


def test_vk_to_json_leaves_alphabeta_out_when_it_cannot_compute_it(
    vk_obj: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    import zkp.backends

    vk = parse_vk(vk_obj)
    bad = VerifyingKey((1, 3), vk.beta2, vk.gamma2, vk.delta2, vk.ic)  # alpha off the curve
    assert "vk_alphabeta_12" not in vk_to_json(bad)
    assert "vk_alphabeta_12" not in vk_to_json(VerifyingKey((0, 0), *vk_fields(vk)[1:]))
    monkeypatch.setattr(zkp.backends, "_try_import", lambda name: None)  # no zksnake
    as_json = vk_to_json(vk)
    assert "vk_alphabeta_12" not in as_json
    del vk_obj["vk_alphabeta_12"]
    assert as_json == vk_obj


def vk_fields(vk: VerifyingKey) -> tuple:
    return (vk.alpha1, vk.beta2, vk.gamma2, vk.delta2, vk.ic)


def test_parse_maps_snarkjs_order_to_c0_c1(vk_obj: dict, proof_obj: dict) -> None:
    vk = parse_vk(vk_obj)
    assert vk.gamma2 == (
        (
            10857046999023057135944570762232829481370756359578518086990519993285655852781,
            11559732032986387107991004021392285783925812861821192530917403151452391805634,
        ),
        (
            8495653923123431417604973247489272438418190587263600148770280649306958101930,
            4082367875863433681332203403145435568316851327593401208105741076214120093531,
        ),
    )  # G2's generator, as py-ecc writes it: FQ2([c0, c1])
    proof = parse_proof(proof_obj)
    assert proof.a == (int(proof_obj["pi_a"][0]), int(proof_obj["pi_a"][1]))


def test_infinity_round_trips_in_snarkjs_form(vk_obj: dict) -> None:
    vk_obj["IC"][0] = ["0", "1", "0"]
    vk = parse_vk(vk_obj)
    assert vk.ic[0] == (0, 0)
    assert vk_to_json(vk)["IC"][0] == ["0", "1", "0"]
    proof = Proof(a=(0, 0), b=((0, 0), (0, 0)), c=(1, 2))
    as_json = proof_to_json(proof)
    assert as_json["pi_b"] == [["0", "0"], ["1", "0"], ["0", "0"]]
    assert parse_proof(as_json) == proof


# ---------------------------------------------------------------- Solidity


def test_proof_calldata_is_eip197_order() -> None:
    proof = parse_proof(_load("proof.json"))
    assert proof_calldata(proof) == [
        21630315989039622636362491643146829868997678651128965099510043016083341457566,  # a.x
        13579980623189472828653295620292841965646358053285374363989526728900084566222,  # a.y
        18679955001741413599422080860450020425160954684110494233985655227404797615462,  # b.x.c1
        6489258911752066317122627180769523361366431686828667870399481378590963720527,  # b.x.c0
        14889020335095904779212799823708998653332928309973537430602364756375196966268,  # b.y.c1
        19851104433988820936425378919572944407660144912752887871912028040763372449389,  # b.y.c0
        15402303750339450338326438248721898549419640750147841558396121046995529873629,  # c.x
        14208687864920920034421024604559675168874365024231528379418825818613966938162,  # c.y
    ]


def test_vk_calldata_swaps_each_g2_pair(vk_obj: dict) -> None:
    data = vk_calldata(parse_vk(vk_obj))
    b = vk_obj["vk_beta_2"]
    assert data["beta2"] == [int(b[0][1]), int(b[0][0]), int(b[1][1]), int(b[1][0])]
    assert data["alpha1"] == [int(vk_obj["vk_alpha_1"][0]), int(vk_obj["vk_alpha_1"][1])]
    assert data["ic"] == [[int(p[0]), int(p[1])] for p in vk_obj["IC"]]
    assert set(data) == {"alpha1", "beta2", "gamma2", "delta2", "ic"}


CUBIC_VK_ID = "010da4a1bb6c9bfbd82fa92a00ce058ea7a745ebecaa95bffe7cc67d941df683"


def test_vk_id_is_stable_and_is_keccak_of_the_abi_encoding(vk_obj: dict) -> None:
    from eth_abi import encode
    from eth_utils import keccak

    vk = parse_vk(vk_obj)
    assert vk_id(vk) == CUBIC_VK_ID
    d = vk_calldata(vk)
    types = ["uint256[2]", "uint256[4]", "uint256[4]", "uint256[4]", "uint256[2][]"]
    encoded = encode(types, [d["alpha1"], d["beta2"], d["gamma2"], d["delta2"], d["ic"]])
    assert keccak(encoded).hex() == CUBIC_VK_ID


def _neg1(p: tuple[int, int]) -> tuple[int, int]:
    return (p[0], (Q - p[1]) % Q)


def _neg2(p):  # type: ignore[no-untyped-def]
    (x, (y0, y1)) = p
    return (x, ((Q - y0) % Q, (Q - y1) % Q))


def test_vk_id_changes_with_every_field(vk_obj: dict) -> None:
    vk = parse_vk(vk_obj)
    variants = [
        VerifyingKey(_neg1(vk.alpha1), vk.beta2, vk.gamma2, vk.delta2, vk.ic),
        VerifyingKey(vk.alpha1, _neg2(vk.beta2), vk.gamma2, vk.delta2, vk.ic),
        VerifyingKey(vk.alpha1, vk.beta2, _neg2(vk.gamma2), vk.delta2, vk.ic),
        VerifyingKey(vk.alpha1, vk.beta2, vk.gamma2, _neg2(vk.delta2), vk.ic),
        VerifyingKey(vk.alpha1, vk.beta2, vk.gamma2, vk.delta2, (_neg1(vk.ic[0]), vk.ic[1])),
        VerifyingKey(vk.alpha1, vk.beta2, vk.gamma2, vk.delta2, (vk.ic[0], _neg1(vk.ic[1]))),
        VerifyingKey(vk.alpha1, vk.beta2, vk.gamma2, vk.delta2, vk.ic[:1]),
        VerifyingKey(vk.alpha1, vk.beta2, vk.gamma2, vk.delta2, (*vk.ic, vk.ic[1])),
        # swapping c0 and c1 (snarkjs order vs EIP-197 order) is a different key
        VerifyingKey(
            vk.alpha1, tuple(pair[::-1] for pair in vk.beta2), vk.gamma2, vk.delta2, vk.ic
        ),
    ]
    ids = {vk_id(v) for v in variants}
    assert len(ids) == len(variants) and CUBIC_VK_ID not in ids


# ---------------------------------------------------------------- hostile JSON


def _set(obj: dict, path: tuple, value: object) -> dict:
    obj = copy.deepcopy(obj)
    target = obj
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return obj


def _drop(obj: dict, key: str) -> dict:
    obj = copy.deepcopy(obj)
    del obj[key]
    return obj


BAD_VKS = [
    (lambda vk: [vk], "vk: expected a JSON object, got a list"),
    (lambda vk: "vk", "vk: expected a JSON object, got 'vk'"),
    (lambda vk: None, "vk: expected a JSON object, got None"),
    (lambda vk: _drop(vk, "protocol"), "vk: missing 'protocol'"),
    (lambda vk: _drop(vk, "vk_alpha_1"), "vk: missing 'vk_alpha_1'"),
    (lambda vk: _drop(vk, "vk_beta_2"), "vk: missing 'vk_beta_2'"),
    (lambda vk: _drop(vk, "vk_gamma_2"), "vk: missing 'vk_gamma_2'"),
    (lambda vk: _drop(vk, "vk_delta_2"), "vk: missing 'vk_delta_2'"),
    (lambda vk: _drop(vk, "IC"), "vk: missing 'IC'"),
    (lambda vk: _drop(vk, "nPublic"), "vk: missing 'nPublic'"),
    (lambda vk: _set(vk, ("protocol",), "plonk"), "vk.protocol: expected 'groth16', got 'plonk'"),
    (lambda vk: _set(vk, ("curve",), "bls12381"), "vk.curve: expected 'bn128', got 'bls12381'"),
    (lambda vk: _set(vk, ("nPublic",), 2), "vk.nPublic: 2 but IC has 2 points"),
    (lambda vk: _set(vk, ("nPublic",), True), "vk.nPublic: expected an integer, got True"),
    (lambda vk: _set(vk, ("nPublic",), "1"), "vk.nPublic: expected an integer, got '1'"),
    (lambda vk: _set(vk, ("IC",), []), "vk.IC: 0 points; a key has 1 to 1025"),
    (lambda vk: _set(vk, ("IC",), {"0": 1}), "vk.IC: expected a list of points, got a dict"),
    (
        lambda vk: _set(vk, ("IC",), [vk["IC"][0]] * 1_000_000),
        "vk.IC: 1000000 points; a key has 1 to 1025",
    ),
    (lambda vk: _set(vk, ("IC", 1), vk["IC"][1][:2]), "vk.IC[1]: expected a list of 3, got 2"),
    (lambda vk: _set(vk, ("IC", 1, 0), str(Q)), "vk.IC[1]: x is not below the field modulus"),
    (lambda vk: _set(vk, ("IC", 1, 1), "1"), "vk.IC[1]: point is not on the curve"),
    (lambda vk: _set(vk, ("vk_alpha_1", 2), "2"), 'vk.vk_alpha_1: z is not "1"'),
    (lambda vk: _set(vk, ("vk_alpha_1", 1), "0x12"), "vk.vk_alpha_1: y is not a decimal string"),
    (lambda vk: _set(vk, ("vk_beta_2", 0, 1), "5"), "vk.vk_beta_2: point is not on the curve"),
    (lambda vk: _set(vk, ("vk_beta_2", 1, 0), str(Q + 1)), "vk.vk_beta_2: y.c0 is not below"),
    (lambda vk: _set(vk, ("vk_beta_2", 2), ["1", "1"]), 'vk.vk_beta_2: z is not ["1", "0"]'),
    (lambda vk: _set(vk, ("vk_gamma_2", 0), "12"), "vk.vk_gamma_2: x: expected a list of 2"),
    (
        lambda vk: _set(vk, ("vk_delta_2", 0), [["1"], ["2"]]),
        "vk.vk_delta_2: x.c0 is not a decimal",
    ),
]


@pytest.mark.parametrize(("mutate", "reason"), BAD_VKS)
def test_bad_vk_is_rejected_with_its_reason(vk_obj: dict, mutate, reason: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ZkFormatError) as info:
        parse_vk(mutate(vk_obj))
    assert info.value.reason.startswith(reason), info.value.reason
    assert str(info.value) == info.value.reason and "\n" not in info.value.reason


NUMBERS = [
    (str(Q), "x is not below the field modulus"),
    (Q, "x is not below the field modulus"),
    (10**100, "x is not below the field modulus"),
    ("9" * 1000, "x is too long (1000 characters)"),
    (
        "0x" + "ab" * 20,
        "x is not a decimal string: '0xababababababababababab...' (hex is not accepted)",
    ),
    ("-1", "x is not a decimal string: '-1'"),
    (-1, "x is negative"),
    (True, "x is not a decimal string: got True"),
    (False, "x is not a decimal string: got False"),
    (None, "x is not a decimal string: got None"),
    (1.0, "x is not a decimal string: got a float"),
    ([["1"]], "x is not a decimal string: got a list"),
    ({"x": "1"}, "x is not a decimal string: got a dict"),
    ("", "x is not a decimal string: ''"),
    (" 1", "x is not a decimal string: ' 1'"),
    ("1e3", "x is not a decimal string: '1e3'"),
    ("\u0661", "x is not a decimal string: '\u0661'"),  # ARABIC-INDIC ONE: int() takes it
    ("1_000", "x is not a decimal string: '1_000'"),
]


@pytest.mark.parametrize(("value", "reason"), NUMBERS)
def test_bad_proof_coordinate_is_rejected_with_its_reason(
    proof_obj: dict, value: object, reason: str
) -> None:
    with pytest.raises(ZkFormatError) as info:
        parse_proof(_set(proof_obj, ("pi_a", 0), value))
    assert info.value.reason == f"proof.pi_a: {reason}"


BAD_PROOFS = [
    (lambda p: _drop(p, "pi_a"), "proof: missing 'pi_a'"),
    (lambda p: _drop(p, "pi_b"), "proof: missing 'pi_b'"),
    (lambda p: _drop(p, "pi_c"), "proof: missing 'pi_c'"),
    (lambda p: p["pi_a"], "proof: expected a JSON object, got a list"),
    (lambda p: _set(p, ("protocol",), "fflonk"), "proof.protocol: expected 'groth16'"),
    (lambda p: _set(p, ("pi_a",), p["pi_a"] * 333_334), "proof.pi_a: expected a list of 3, got"),
    (lambda p: _set(p, ("pi_a",), "1,2,1"), "proof.pi_a: expected a list of 3, got '1,2,1'"),
    (lambda p: _set(p, ("pi_a", 1), str(int(p["pi_a"][1]) + 1)), "proof.pi_a: point is not on"),
    (lambda p: _set(p, ("pi_c",), ["0", "0", "1"]), "proof.pi_c: (0, 0) is not on the curve"),
    (lambda p: _set(p, ("pi_c",), ["1", "2", "0"]), "proof.pi_c: z is 0 but the point is not"),
    (lambda p: _set(p, ("pi_b", 0, 0), p["pi_b"][0][1]), "proof.pi_b: point is not on the curve"),
    (lambda p: _set(p, ("pi_b", 1), p["pi_b"][1][::-1]), "proof.pi_b: point is not on the curve"),
    (lambda p: _set(p, ("pi_b", 2), ["0", "0"]), "proof.pi_b: z is 0 but the point is not"),
    (lambda p: _set(p, ("pi_b", 0), [["1", "2"]]), "proof.pi_b: x: expected a list of 2, got 1"),
]


@pytest.mark.parametrize(("mutate", "reason"), BAD_PROOFS)
def test_bad_proof_is_rejected_with_its_reason(proof_obj: dict, mutate, reason: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ZkFormatError) as info:
        parse_proof(mutate(proof_obj))
    assert info.value.reason.startswith(reason), info.value.reason


def test_points_at_infinity_are_accepted() -> None:
    proof = parse_proof(
        {
            "pi_a": ["0", "1", "0"],
            "pi_b": [["0", "0"], ["1", "0"], ["0", "0"]],
            "pi_c": ["1", "2", "1"],
        }
    )
    assert proof == Proof(a=(0, 0), b=((0, 0), (0, 0)), c=(1, 2))


BAD_PUBLICS = [
    ({"0": "35"}, "public: expected a list of decimal strings, got a dict"),
    ("35", "public: expected a list of decimal strings, got '35'"),
    (["1"] * (MAX_PUBLIC + 1), "public: 1025 signals, at most 1024 are accepted"),
    (["1"] * 1_000_000, "public: 1000000 signals, at most 1024 are accepted"),
    ([str(R)], "public[0] is not below the scalar field order r"),
    (["1", R + 5], "public[1] is not below the scalar field order r"),
    ([-1], "public[0] is negative"),
    ([True], "public[0] is not a decimal string: got True"),
    (["0x23"], "public[0] is not a decimal string: '0x23' (hex is not accepted)"),
    ([["35"]], "public[0] is not a decimal string: got a list"),
    ([35.0], "public[0] is not a decimal string: got a float"),
]


@pytest.mark.parametrize(("obj", "reason"), BAD_PUBLICS)
def test_bad_public_is_rejected_with_its_reason(obj: object, reason: str) -> None:
    with pytest.raises(ZkFormatError) as info:
        parse_public(obj)
    assert info.value.reason == reason


def test_public_accepts_ints_and_the_largest_scalar() -> None:
    assert parse_public([0, "1", R - 1, str(R - 1)]) == (0, 1, R - 1, R - 1)
    assert parse_public([]) == ()


# ---------------------------------------------------------------- files


def test_load_json_file_reads_the_vectors() -> None:
    assert load_json_file(CUBIC / "public.json") == ["35"]


def test_load_json_file_missing_is_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_json_file(tmp_path / "nope.json")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "not JSON: "),
        (b'{"pi_a": [', "not JSON: "),
        (b"\xff\xfe\x00", "not JSON: "),
        (b"[" * 65 + b"]" * 65, "not JSON: "),
        (b"[" + b"9" * 5000 + b"]", "not JSON: "),  # over Python's int digit limit
    ],
)
def test_load_json_file_rejects_non_json(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "x.json"
    path.write_bytes(content)
    with pytest.raises(ZkFormatError) as info:
        load_json_file(path)
    assert info.value.reason.startswith(reason) and "\n" not in info.value.reason


def test_load_json_file_refuses_deep_nesting_even_under_py_ecc(tmp_path: Path) -> None:
    # py-ecc raises the recursion limit to 100,000 on import: json.loads would then
    # recurse half a million levels into the C stack and crash the process.
    import sys

    import zkp.backends.pyecc  # noqa: F401

    assert sys.getrecursionlimit() >= 100_000
    for content in (b"[" * 500_000, b"[" * 300_000 + b"]" * 300_000, b'{"a":' * 150_000):
        path = tmp_path / "deep.json"
        path.write_bytes(content)
        with pytest.raises(ZkFormatError) as info:
            load_json_file(path)
        assert info.value.reason.endswith("nested deeper than 64 levels")
    path.write_bytes(b"[" * 64 + b'"[[[[]]]]"' + b"]" * 64)  # brackets inside strings do not count
    assert load_json_file(path) is not None


def test_load_json_file_refuses_a_big_file(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    path.write_bytes(b"[" + b'"1",' * 300_000 + b'"1"]')
    with pytest.raises(ZkFormatError) as info:
        load_json_file(path)
    assert "larger than 1048576 bytes" in info.value.reason
    assert len(load_json_file(path, max_bytes=2 << 20)) == 300_001  # type: ignore[arg-type]

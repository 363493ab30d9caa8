"""Groth16 keys, proofs and public signals: snarkjs JSON in, plain ints out.

Everything that reaches a verifier backend passes through here first, and what
comes out is plain Python ints in fixed-shape tuples. That is the whole defence
against hostile JSON: the backends (py-ecc recurses on nested structures, the
native one panics on a point off the curve) only ever see integers that are
below their modulus and points that are on the curve. Each rejection is a
:class:`ZkFormatError` whose text is one bounded line naming the field, e.g.
``proof.pi_a: x is not below the field modulus``.

Shapes (snarkjs 0.7):

* a G1 point is ``[x, y, z]`` with ``z == "1"``; the point at infinity is
  ``["0", "1", "0"]``. In this package a G1 point is ``(x, y)`` and infinity
  is ``(0, 0)`` (as in EIP-196/197).
* a G2 point is ``[[x.c0, x.c1], [y.c0, y.c1], ["1", "0"]]`` (infinity
  ``[["0", "0"], ["1", "0"], ["0", "0"]]``); here ``((x.c0, x.c1), (y.c0,
  y.c1))``, the order py-ecc's ``FQ2([c0, c1])`` takes. Solidity/EIP-197
  calldata swaps each pair to ``(c1, c0)``: :func:`proof_calldata`,
  :func:`vk_calldata` and :func:`vk_id` use that order.

Pure: no I/O except :func:`load_json_file`; eth-abi and the pairing needed by
:func:`vk_to_json` are imported only when used, so ``python -m zkp`` starts
fast. Subgroup membership of G2 points is checked by the verifier (it costs a
scalar multiplication), not here.
"""

from __future__ import annotations

import json
import os
import re
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

__all__ = [
    "FIELD_MODULUS",
    "G1",
    "G1_INFINITY",
    "G2",
    "G2_INFINITY",
    "MAX_JSON_DEPTH",
    "MAX_PUBLIC",
    "SCALAR_FIELD",
    "Proof",
    "VerifyingKey",
    "ZkFormatError",
    "g1_on_curve",
    "g2_on_curve",
    "load_json_file",
    "parse_proof",
    "parse_public",
    "parse_vk",
    "proof_calldata",
    "proof_to_json",
    "public_to_json",
    "vk_calldata",
    "vk_id",
    "vk_to_json",
]

#: q, the prime of BN254's base field (coordinates live below it).
FIELD_MODULUS = 21888242871839275222246405745257275088696311157297823662689037894645226208583
#: r, the order of G1 and G2 (public signals live below it); = zkp.binding.SNARK_SCALAR_FIELD.
SCALAR_FIELD = 21888242871839275222246405745257275088548364400416034343698204186575808495617
#: The most public signals a key may have (and a public.json may hold).
MAX_PUBLIC = 1024
#: A decimal number below q or r has at most 77 digits; allow a little slack for leading zeros.
_MAX_DIGITS = 80
#: snarkjs files nest 4 deep; json.loads recurses per level (see load_json_file).
MAX_JSON_DEPTH = 64

G1 = tuple[int, int]
G2 = tuple[tuple[int, int], tuple[int, int]]

G1_INFINITY: G1 = (0, 0)
G2_INFINITY: G2 = ((0, 0), (0, 0))

# b2 = 3 / (9 + u), the twist's constant in Fq2 = Fq[u] / (u^2 + 1).
_B2 = (
    19485874751759354771024239261021720505790618469301721065564631296452457478373,
    266929791119991161246907387137283842545076965332900288569378510910307636690,
)


class ZkFormatError(ValueError):
    """A key, proof or public input that is not what snarkjs writes; ``reason`` is one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class VerifyingKey:
    """A Groth16 verifying key; ``ic[0]`` is the constant term, ``ic[i]`` public input i."""

    alpha1: G1
    beta2: G2
    gamma2: G2
    delta2: G2
    ic: tuple[G1, ...]

    @property
    def n_public(self) -> int:
        return len(self.ic) - 1


@dataclass(frozen=True, slots=True)
class Proof:
    """A Groth16 proof (A in G1, B in G2, C in G1)."""

    a: G1
    b: G2
    c: G1


# ---------------------------------------------------------------- curve checks


def _f2_mul(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    q = FIELD_MODULUS
    return ((a[0] * b[0] - a[1] * b[1]) % q, (a[0] * b[1] + a[1] * b[0]) % q)


def g1_on_curve(p: G1) -> bool:
    """Whether ``p`` (coordinates already below q) is on y^2 = x^3 + 3 or is infinity."""
    x, y = p
    if x == 0 and y == 0:
        return True
    q = FIELD_MODULUS
    return (y * y - x * x * x - 3) % q == 0


def g2_on_curve(p: G2) -> bool:
    """Whether ``p`` (coordinates already below q) is on the twist y^2 = x^3 + 3/(9+u)."""
    x, y = p
    if x == (0, 0) and y == (0, 0):
        return True
    lhs = _f2_mul(y, y)
    x3 = _f2_mul(_f2_mul(x, x), x)
    q = FIELD_MODULUS
    return lhs == ((x3[0] + _B2[0]) % q, (x3[1] + _B2[1]) % q)


# ---------------------------------------------------------------- parsing


def _show(value: object) -> str:
    """A short, one-line rendering of a hostile value for an error message."""
    if isinstance(value, str):
        text = repr(value[:24] + ("..." if len(value) > 24 else ""))
    elif isinstance(value, bool) or value is None:
        text = repr(value)
    elif isinstance(value, int):
        bits = value.bit_length()
        text = f"an integer of {bits} bits" if bits > 80 else str(value)
    else:
        text = "a " + type(value).__name__
    return text


def _number(value: object, where: str, what: str, *, bound: int, bound_name: str) -> int:
    """A decimal string (or a non-negative int) below ``bound``, as an int."""
    label = f"{where}: {what}" if what else where
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ZkFormatError(f"{label} is not a decimal string: got {_show(value)}")
    if isinstance(value, str):
        if len(value) > _MAX_DIGITS:
            raise ZkFormatError(f"{label} is too long ({len(value)} characters)")
        if not (value.isascii() and value.isdigit()):
            hint = " (hex is not accepted)" if value[:2].lower() == "0x" else ""
            raise ZkFormatError(f"{label} is not a decimal string: {_show(value)}{hint}")
        number = int(value)
    else:
        if value < 0:
            raise ZkFormatError(f"{label} is negative")
        number = value
    if number >= bound:
        raise ZkFormatError(f"{label} is not below the {bound_name}")
    return number


def _coord(value: object, where: str, what: str) -> int:
    return _number(value, where, what, bound=FIELD_MODULUS, bound_name="field modulus")


def _list(value: object, where: str, length: int) -> Sequence[Any]:
    if not isinstance(value, list | tuple):
        raise ZkFormatError(f"{where}: expected a list of {length}, got {_show(value)}")
    if len(value) != length:
        raise ZkFormatError(f"{where}: expected a list of {length}, got {len(value)} elements")
    return value


def _parse_g1(value: object, where: str) -> G1:
    xs = _list(value, where, 3)
    x = _coord(xs[0], where, "x")
    y = _coord(xs[1], where, "y")
    z = _coord(xs[2], where, "z")
    if z == 0:
        if (x, y) != (0, 1):
            raise ZkFormatError(f'{where}: z is 0 but the point is not ["0", "1", "0"] (infinity)')
        return G1_INFINITY
    if z != 1:
        raise ZkFormatError(f'{where}: z is not "1" (only affine points are accepted)')
    if (x, y) == (0, 0):
        raise ZkFormatError(f'{where}: (0, 0) is not on the curve (infinity is ["0", "1", "0"])')
    point = (x, y)
    if not g1_on_curve(point):
        raise ZkFormatError(f"{where}: point is not on the curve")
    return point


def _fq2(value: object, where: str, what: str) -> tuple[int, int]:
    pair = _list(value, f"{where}: {what}", 2)
    return (_coord(pair[0], where, f"{what}.c0"), _coord(pair[1], where, f"{what}.c1"))


def _parse_g2(value: object, where: str) -> G2:
    xs = _list(value, where, 3)
    x = _fq2(xs[0], where, "x")
    y = _fq2(xs[1], where, "y")
    z = _fq2(xs[2], where, "z")
    if z == (0, 0):
        if (x, y) != ((0, 0), (1, 0)):
            raise ZkFormatError(f"{where}: z is 0 but the point is not the point at infinity")
        return G2_INFINITY
    if z != (1, 0):
        raise ZkFormatError(f'{where}: z is not ["1", "0"] (only affine points are accepted)')
    if (x, y) == ((0, 0), (0, 0)):
        raise ZkFormatError(f"{where}: (0, 0) is not on the curve (infinity has z = 0)")
    point = (x, y)
    if not g2_on_curve(point):
        raise ZkFormatError(f"{where}: point is not on the curve")
    return point


def _dict(obj: object, what: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ZkFormatError(f"{what}: expected a JSON object, got {_show(obj)}")
    return obj


def _get(obj: dict[str, Any], key: str, what: str) -> Any:
    if key not in obj:
        raise ZkFormatError(f"{what}: missing {key!r}")
    return obj[key]


def _check_header(obj: dict[str, Any], what: str) -> None:
    protocol = obj.get("protocol", "groth16")
    if protocol != "groth16":
        raise ZkFormatError(f"{what}.protocol: expected 'groth16', got {_show(protocol)}")
    curve = obj.get("curve", "bn128")
    if curve not in ("bn128", "bn254"):
        hint = " (only BN254 / alt_bn128 is supported)"
        raise ZkFormatError(f"{what}.curve: expected 'bn128', got {_show(curve)}{hint}")


def parse_vk(obj: object) -> VerifyingKey:
    """A snarkjs ``verification_key.json`` (already decoded); ZkFormatError otherwise."""
    vk = _dict(obj, "vk")
    if "protocol" not in vk:
        raise ZkFormatError("vk: missing 'protocol' (is this a verification key?)")
    _check_header(vk, "vk")
    alpha1 = _parse_g1(_get(vk, "vk_alpha_1", "vk"), "vk.vk_alpha_1")
    beta2 = _parse_g2(_get(vk, "vk_beta_2", "vk"), "vk.vk_beta_2")
    gamma2 = _parse_g2(_get(vk, "vk_gamma_2", "vk"), "vk.vk_gamma_2")
    delta2 = _parse_g2(_get(vk, "vk_delta_2", "vk"), "vk.vk_delta_2")
    raw_ic = _get(vk, "IC", "vk")
    if not isinstance(raw_ic, list | tuple):
        raise ZkFormatError(f"vk.IC: expected a list of points, got {_show(raw_ic)}")
    if not 1 <= len(raw_ic) <= MAX_PUBLIC + 1:
        raise ZkFormatError(
            f"vk.IC: {len(raw_ic)} points; a key has 1 to {MAX_PUBLIC + 1} (public inputs + 1)"
        )
    n_public = _get(vk, "nPublic", "vk")
    if isinstance(n_public, bool) or not isinstance(n_public, int):
        raise ZkFormatError(f"vk.nPublic: expected an integer, got {_show(n_public)}")
    if n_public != len(raw_ic) - 1:
        raise ZkFormatError(
            f"vk.nPublic: {_show(n_public)} but IC has {len(raw_ic)} points (nPublic + 1 expected)"
        )
    ic = tuple(_parse_g1(p, f"vk.IC[{i}]") for i, p in enumerate(raw_ic))
    return VerifyingKey(alpha1=alpha1, beta2=beta2, gamma2=gamma2, delta2=delta2, ic=ic)


def parse_proof(obj: object) -> Proof:
    """A snarkjs ``proof.json`` (already decoded); ZkFormatError otherwise."""
    proof = _dict(obj, "proof")
    _check_header(proof, "proof")
    a = _parse_g1(_get(proof, "pi_a", "proof"), "proof.pi_a")
    b = _parse_g2(_get(proof, "pi_b", "proof"), "proof.pi_b")
    c = _parse_g1(_get(proof, "pi_c", "proof"), "proof.pi_c")
    return Proof(a=a, b=b, c=c)


def parse_public(obj: object) -> tuple[int, ...]:
    """A snarkjs ``public.json``: decimal strings (or ints), each below r; ZkFormatError otherwise."""
    if not isinstance(obj, list | tuple):
        raise ZkFormatError(f"public: expected a list of decimal strings, got {_show(obj)}")
    if len(obj) > MAX_PUBLIC:
        raise ZkFormatError(f"public: {len(obj)} signals, at most {MAX_PUBLIC} are accepted")
    return tuple(
        _number(x, f"public[{i}]", "", bound=SCALAR_FIELD, bound_name="scalar field order r")
        for i, x in enumerate(obj)
    )


# ---------------------------------------------------------------- writing


def _g1_json(p: G1) -> list[str]:
    if p == G1_INFINITY:
        return ["0", "1", "0"]
    return [str(p[0]), str(p[1]), "1"]


def _g2_json(p: G2) -> list[list[str]]:
    if p == G2_INFINITY:
        return [["0", "0"], ["1", "0"], ["0", "0"]]
    (x0, x1), (y0, y1) = p
    return [[str(x0), str(x1)], [str(y0), str(y1)], ["1", "0"]]


def vk_to_json(vk: VerifyingKey) -> dict[str, Any]:
    """The key as snarkjs writes it, ``vk_alphabeta_12`` (= e(alpha, beta)) included.

    ``json.dumps(vk_to_json(parse_vk(x)), indent=1)`` is byte-identical to the
    file snarkjs wrote. The pairing takes the native backend (~1 ms); without
    it, or for a key whose alpha or beta is not a valid point, the field is
    left out (snarkjs's verifier does not read it).
    """
    from zkp.backends import alphabeta_12

    out: dict[str, Any] = {
        "protocol": "groth16",
        "curve": "bn128",
        "nPublic": vk.n_public,
        "vk_alpha_1": _g1_json(vk.alpha1),
        "vk_beta_2": _g2_json(vk.beta2),
        "vk_gamma_2": _g2_json(vk.gamma2),
        "vk_delta_2": _g2_json(vk.delta2),
    }
    alphabeta = alphabeta_12(vk.alpha1, vk.beta2)
    if alphabeta is not None:
        out["vk_alphabeta_12"] = [[[str(c) for c in fq2] for fq2 in fq6] for fq6 in alphabeta]
    out["IC"] = [_g1_json(p) for p in vk.ic]
    return out


def proof_to_json(proof: Proof) -> dict[str, Any]:
    """The proof as snarkjs writes it."""
    return {
        "pi_a": _g1_json(proof.a),
        "pi_b": _g2_json(proof.b),
        "pi_c": _g1_json(proof.c),
        "protocol": "groth16",
        "curve": "bn128",
    }


def public_to_json(public: Sequence[int]) -> list[str]:
    """Public signals as snarkjs writes them (decimal strings)."""
    return [str(int(x)) for x in public]


# ---------------------------------------------------------------- Solidity


def _g2_evm(p: G2) -> list[int]:
    (x0, x1), (y0, y1) = p
    return [x1, x0, y1, y0]


def proof_calldata(proof: Proof) -> list[int]:
    """8 uint256 in EIP-197 order: a.x, a.y, b.x.c1, b.x.c0, b.y.c1, b.y.c0, c.x, c.y."""
    return [proof.a[0], proof.a[1], *_g2_evm(proof.b), proof.c[0], proof.c[1]]


def vk_calldata(vk: VerifyingKey) -> dict[str, Any]:
    """The key as the contracts take it (G2 coordinates in EIP-197 order)."""
    return {
        "alpha1": [vk.alpha1[0], vk.alpha1[1]],
        "beta2": _g2_evm(vk.beta2),
        "gamma2": _g2_evm(vk.gamma2),
        "delta2": _g2_evm(vk.delta2),
        "ic": [[p[0], p[1]] for p in vk.ic],
    }


def vk_id(vk: VerifyingKey) -> str:
    """The circuit id: keccak256(abi.encode(alpha1, beta2, gamma2, delta2, ic)), 64 hex chars.

    ``uint256[2], uint256[4], uint256[4], uint256[4], uint256[2][]`` with G2 in
    EIP-197 order: the contracts compute the same hash over the same calldata.
    """
    from eth_abi import encode
    from eth_utils import keccak

    data = vk_calldata(vk)
    encoded = encode(
        ["uint256[2]", "uint256[4]", "uint256[4]", "uint256[4]", "uint256[2][]"],
        [data["alpha1"], data["beta2"], data["gamma2"], data["delta2"], data["ic"]],
    )
    return keccak(encoded).hex()


# ---------------------------------------------------------------- files


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*\\?(?:"|\Z)', re.DOTALL)
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
_BRACKET_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")


def _nesting(data: bytes) -> int:
    """The deepest bracket nesting of ``data`` outside strings (unclosed ones count)."""
    brackets = _JSON_STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    return max(accumulate(array("b", brackets.translate(_BRACKET_STEPS))))


def load_json_file(path: str | os.PathLike[str], *, max_bytes: int = 1 << 20) -> object:
    """Read and decode a JSON file of at most ``max_bytes``.

    Raises OSError when it cannot be read, ZkFormatError when it is too big or
    is not JSON (nesting too deep and numbers too long included). The depth
    is checked before decoding: json.loads recurses once per level, and
    py-ecc raises the interpreter's recursion limit to 100,000 when imported,
    so a file of half a million "[" would overflow the C stack (a crash, not
    a RecursionError) in any process that has imported py-ecc.
    """
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    where = os.fspath(path)
    if len(data) > max_bytes:
        raise ZkFormatError(f"{where}: larger than {max_bytes} bytes")
    if _nesting(data) > MAX_JSON_DEPTH:
        raise ZkFormatError(f"not JSON: {where}: nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(data)
    except RecursionError:
        raise ZkFormatError(f"not JSON: {where}: nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, int digit limit
        first = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise ZkFormatError(f"not JSON: {where}: {first}") from None

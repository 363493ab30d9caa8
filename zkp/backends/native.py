"""The native backend: zksnake 0.1.0 (MIT; arkworks' BN254 through pyo3).

A Groth16 check is one multi-pairing (four Miller loops, one final
exponentiation), ~3 ms. zksnake panics (pyo3's PanicException, a
BaseException) when handed a point off the curve or outside the subgroup, so
nothing reaches its constructors unchecked: points arrive on the curve
(checked in Python by :mod:`zkp.formats` / :mod:`zkp.verify`), and every G2
point is built by deserialising its compressed form, which arkworks validates
(subgroup included) with a ValueError instead of a panic.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from zksnake._algebra import ec_bn254 as _ec  # noqa: F401 (ImportError = not installed)

from zkp.formats import G1, G1_INFINITY, G2, G2_INFINITY, SCALAR_FIELD, Proof, VerifyingKey

__all__ = ["NAME", "alphabeta_12", "check", "g1_mul", "g2_mul"]

NAME = "native"
_Y_NEGATIVE = 0x80  # arkworks' SWFlags::YIsNegative, top bit of the last byte

_ONE = _ec.pairing(_ec.PointG1.identity(), _ec.g2())


class _NotInSubgroup(Exception):
    pass


def _g1(p: G1) -> object:
    if p == G1_INFINITY:
        return _ec.PointG1.identity()
    return _ec.PointG1(p[0], p[1])


def _g2(p: G2) -> object:
    """The native point for ``p`` (on the curve); _NotInSubgroup when it is not in G2."""
    if p == G2_INFINITY:
        return _ec.g2() * 0
    (x0, x1), (y0, y1) = p
    raw = bytearray(x0.to_bytes(32, "little") + x1.to_bytes(32, "little"))
    try:
        point = _ec.PointG2.from_bytes(bytes(raw))
    except ValueError:
        # On the curve (checked before) but rejected: outside the r-torsion.
        raise _NotInSubgroup from None
    if point.y != [y0, y1]:
        point = -point
    if point.x != [x0, x1] or point.y != [y0, y1]:  # cannot happen for a point on the curve
        raise _NotInSubgroup
    return point


@functools.lru_cache(maxsize=64)
def _prepared_vk(vk: VerifyingKey) -> tuple[object, ...] | str:
    """The key's points in native form, or the reason it is unusable (cached per key)."""
    points = []
    for name, p in (("vk_beta_2", vk.beta2), ("vk_gamma_2", vk.gamma2), ("vk_delta_2", vk.delta2)):
        try:
            points.append(_g2(p))
        except _NotInSubgroup:
            return f"vk.{name}: point is not in the G2 subgroup"
    beta, gamma, delta = points
    return (_g1(vk.alpha1), beta, gamma, delta, [_g1(p) for p in vk.ic])


def check(vk: VerifyingKey, proof: Proof, public: Sequence[int]) -> str | None:
    """None when e(A,B) = e(alpha,beta) e(vk_x,gamma) e(C,delta), else the reason."""
    prepared = _prepared_vk(vk)
    if isinstance(prepared, str):
        return prepared
    alpha, beta, gamma, delta, ic = prepared
    try:
        b = _g2(proof.b)
    except _NotInSubgroup:
        return "proof.pi_b: point is not in the G2 subgroup"
    vk_x = ic[0]
    if public:
        vk_x = vk_x + _ec.multiscalar_mul_g1(ic[1:], list(public))
    product = _ec.multi_pairing([-_g1(proof.a), alpha, vk_x, _g1(proof.c)], [b, beta, gamma, delta])
    if product != _ONE:
        return "the pairing check failed (the proof does not match the key and public inputs)"
    return None


def _affine_g1(point: object) -> G1:
    if point.is_zero():
        return G1_INFINITY
    return (int(point.x), int(point.y))


def g1_mul(k: int) -> G1:
    """k times G1's generator, affine."""
    return _affine_g1(_ec.g1() * (k % SCALAR_FIELD))


def g2_mul(k: int) -> G2:
    """k times G2's generator, affine."""
    point = _ec.g2() * (k % SCALAR_FIELD)
    if point.is_zero():
        return G2_INFINITY
    x, y = point.x, point.y
    return ((int(x[0]), int(x[1])), (int(y[0]), int(y[1])))


@functools.lru_cache(maxsize=64)
def alphabeta_12(alpha1: G1, beta2: G2) -> tuple[tuple[tuple[int, int], ...], ...] | None:
    """e(alpha1, beta2) in snarkjs's nesting: [c0, c1] of Fq6, each [c0, c1, c2] of Fq2.

    None when beta2 is not in G2. zksnake exposes an Fq12 only through its
    repr (the 384 bytes of arkworks' serialisation: 12 little-endian Fq
    coefficients, c0 before c1 at each level, the order snarkjs nests them).
    """
    try:
        beta = _g2(beta2)
    except _NotInSubgroup:
        return None
    text = repr(_ec.pairing(_g1(alpha1), beta))
    raw = bytes(int(b, 16) for b in text.strip("[]").split(", "))
    coeffs = [int.from_bytes(raw[i * 32 : (i + 1) * 32], "little") for i in range(12)]
    fq2 = [(coeffs[2 * i], coeffs[2 * i + 1]) for i in range(6)]
    return (tuple(fq2[0:3]), tuple(fq2[3:6]))

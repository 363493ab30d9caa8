"""The reference backend: py-ecc's optimized_bn128, pure Python (~1 s a proof).

The Groth16 equation is checked as one product of four Miller loops and a
single final exponentiation (half the cost of four full pairings). G2 subgroup
membership is checked by multiplying by r (~45 ms); the key's three G2 points
are checked once per key (cached), the proof's B on every call. py-ecc
recurses on nested input and asserts on bad points, so it only ever sees ints
already range- and curve-checked by :mod:`zkp.verify`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from py_ecc.fields import optimized_bn128_FQ as FQ
from py_ecc.fields import optimized_bn128_FQ2 as FQ2
from py_ecc.fields import optimized_bn128_FQ12 as FQ12
from py_ecc.optimized_bn128 import G1 as _G1_GEN
from py_ecc.optimized_bn128 import G2 as _G2_GEN
from py_ecc.optimized_bn128 import add, is_inf, multiply, neg, normalize
from py_ecc.optimized_bn128.optimized_pairing import final_exponentiate, pairing

from zkp.formats import G1, G1_INFINITY, G2, G2_INFINITY, SCALAR_FIELD, Proof, VerifyingKey

__all__ = ["NAME", "check", "g1_mul", "g2_mul"]

NAME = "py_ecc"

_P1 = tuple[FQ, FQ, FQ]
_P2 = tuple[FQ2, FQ2, FQ2]


def _g1(p: G1) -> _P1:
    if p == G1_INFINITY:
        return (FQ.one(), FQ.one(), FQ.zero())
    return (FQ(p[0]), FQ(p[1]), FQ.one())


def _g2(p: G2) -> _P2:
    if p == G2_INFINITY:
        return (FQ2.one(), FQ2.one(), FQ2.zero())
    (x0, x1), (y0, y1) = p
    return (FQ2([x0, x1]), FQ2([y0, y1]), FQ2.one())


@functools.lru_cache(maxsize=256)
def _in_subgroup(p: G2) -> bool:
    """Whether ``p`` (on the twist) is in the r-torsion: r * p is infinity."""
    return is_inf(multiply(_g2(p), SCALAR_FIELD))


def check(vk: VerifyingKey, proof: Proof, public: Sequence[int]) -> str | None:
    """None when e(A,B) = e(alpha,beta) e(vk_x,gamma) e(C,delta), else the reason."""
    for name, p in (("vk_beta_2", vk.beta2), ("vk_gamma_2", vk.gamma2), ("vk_delta_2", vk.delta2)):
        if not _in_subgroup(p):
            return f"vk.{name}: point is not in the G2 subgroup"
    b = _g2(proof.b)
    if not is_inf(multiply(b, SCALAR_FIELD)):
        return "proof.pi_b: point is not in the G2 subgroup"
    vk_x = _g1(vk.ic[0])
    for x, point in zip(public, vk.ic[1:], strict=True):
        if x:
            vk_x = add(vk_x, multiply(_g1(point), x))
    f = (
        pairing(b, neg(_g1(proof.a)), final_exponentiate=False)
        * pairing(_g2(vk.beta2), _g1(vk.alpha1), final_exponentiate=False)
        * pairing(_g2(vk.gamma2), vk_x, final_exponentiate=False)
        * pairing(_g2(vk.delta2), _g1(proof.c), final_exponentiate=False)
    )
    if final_exponentiate(f) != FQ12.one():
        return "the pairing check failed (the proof does not match the key and public inputs)"
    return None


def g1_mul(k: int) -> G1:
    """k times G1's generator, affine."""
    point = multiply(_G1_GEN, k % SCALAR_FIELD)
    if is_inf(point):
        return G1_INFINITY
    x, y = normalize(point)
    return (int(x), int(y))


def g2_mul(k: int) -> G2:
    """k times G2's generator, affine."""
    point = multiply(_G2_GEN, k % SCALAR_FIELD)
    if is_inf(point):
        return G2_INFINITY
    x, y = normalize(point)
    return ((int(x.coeffs[0]), int(x.coeffs[1])), (int(y.coeffs[0]), int(y.coeffs[1])))

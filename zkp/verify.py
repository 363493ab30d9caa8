"""Groth16 verification over BN254: a verdict for any input, never an exception.

Proofs, keys and public inputs come from peers, so :func:`verify` treats all
three as hostile: it checks the cheapest things first (types, lengths,
ranges, points on the curve, a degenerate key), then hands the backend only
plain ints, and the backend checks G2 subgroup membership and the pairing
equation

    e(A, B) = e(alpha, beta) * e(IC_0 + sum x_i IC_i, gamma) * e(C, delta)

as one product of Miller loops with one final exponentiation. Every rejection
carries a one-line reason. Pure and synchronous: the daemon runs it in a
worker thread (py-ecc holds the GIL for ~1 s; the native backend ~3 ms).

The only exception :func:`verify` raises is ValueError for a backend name
that is unknown or not installed: that is the caller's configuration, not the
peer's input, and must not be mistaken for an invalid proof.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from zkp import backends as _backends
from zkp.formats import (
    FIELD_MODULUS,
    G1_INFINITY,
    G2_INFINITY,
    MAX_PUBLIC,
    SCALAR_FIELD,
    Proof,
    VerifyingKey,
    ZkFormatError,
    g1_on_curve,
    g2_on_curve,
    parse_proof,
    parse_public,
    parse_vk,
)

__all__ = ["Verdict", "backends", "default_backend", "verify", "verify_json"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a proof verified; ``reason`` is None exactly when it did."""

    valid: bool
    reason: str | None = None

    def __str__(self) -> str:
        return "valid" if self.valid else f"invalid: {self.reason}"


def backends() -> list[str]:
    """The installed backends, in order of preference (``native`` first)."""
    return _backends.installed()


def default_backend() -> str:
    """``native`` when zksnake imports, else ``py_ecc``."""
    return backends()[0]


# ---------------------------------------------------------------- shape checks


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _coord_ok(value: object) -> bool:
    return _is_int(value) and 0 <= value < FIELD_MODULUS


def _g1_reason(p: object, where: str) -> str | None:
    if not (isinstance(p, tuple | list) and len(p) == 2):
        return f"{where}: not a G1 point (x, y)"
    if not (_coord_ok(p[0]) and _coord_ok(p[1])):
        return f"{where}: coordinates must be integers below the field modulus"
    if not g1_on_curve((p[0], p[1])):
        return f"{where}: point is not on the curve"
    return None


def _g2_reason(p: object, where: str) -> str | None:
    if not (isinstance(p, tuple | list) and len(p) == 2):
        return f"{where}: not a G2 point ((x.c0, x.c1), (y.c0, y.c1))"
    for c in p:
        if not (isinstance(c, tuple | list) and len(c) == 2):
            return f"{where}: not a G2 point ((x.c0, x.c1), (y.c0, y.c1))"
        if not (_coord_ok(c[0]) and _coord_ok(c[1])):
            return f"{where}: coordinates must be integers below the field modulus"
    point = ((p[0][0], p[0][1]), (p[1][0], p[1][1]))
    if not g2_on_curve(point):
        return f"{where}: point is not on the curve"
    return None


def _vk_reason(vk: object) -> str | None:
    if not isinstance(vk, VerifyingKey):
        return f"vk: expected a VerifyingKey, got a {type(vk).__name__}"
    if not isinstance(vk.ic, tuple | list):
        return f"vk.IC: expected a tuple of G1 points, got a {type(vk.ic).__name__}"
    if not 1 <= len(vk.ic) <= MAX_PUBLIC + 1:
        return f"vk.IC: {len(vk.ic)} points; a key has 1 to {MAX_PUBLIC + 1}"
    reason = _g1_reason(vk.alpha1, "vk.vk_alpha_1")
    for name, p in (("vk_beta_2", vk.beta2), ("vk_gamma_2", vk.gamma2), ("vk_delta_2", vk.delta2)):
        reason = reason or _g2_reason(p, f"vk.{name}")
    for i, p in enumerate(vk.ic):
        reason = reason or _g1_reason(p, f"vk.IC[{i}]")
    if reason:
        return reason
    # A key with a point at infinity, or with gamma = delta (a setup whose
    # phase 2 was skipped), accepts forged proofs: refuse it outright.
    if G1_INFINITY == tuple(vk.alpha1):
        return "vk.vk_alpha_1: the point at infinity (a degenerate key)"
    for name, p in (("vk_beta_2", vk.beta2), ("vk_gamma_2", vk.gamma2), ("vk_delta_2", vk.delta2)):
        if G2_INFINITY == (tuple(p[0]), tuple(p[1])):
            return f"vk.{name}: the point at infinity (a degenerate key accepts forged proofs)"
    if _as_g2(vk.gamma2) == _as_g2(vk.delta2):
        return "vk: gamma2 equals delta2 (phase 2 of the setup was skipped: proofs can be forged)"
    return None


def _as_g2(p: Sequence[Sequence[int]]) -> tuple[tuple[int, int], tuple[int, int]]:
    return ((p[0][0], p[0][1]), (p[1][0], p[1][1]))


def _proof_reason(proof: object) -> str | None:
    if not isinstance(proof, Proof):
        return f"proof: expected a Proof, got a {type(proof).__name__}"
    return (
        _g1_reason(proof.a, "proof.pi_a")
        or _g2_reason(proof.b, "proof.pi_b")
        or _g1_reason(proof.c, "proof.pi_c")
    )


def _public_reason(public: object, n_public: int) -> str | None:
    if not isinstance(public, Sequence) or isinstance(public, str | bytes):
        return f"public: expected a sequence of integers, got a {type(public).__name__}"
    if len(public) != n_public:
        return f"public: {len(public)} signals, but the key takes {n_public}"
    for i, x in enumerate(public):
        if not _is_int(x):
            return f"public[{i}] is not an integer"
        if not 0 <= x < SCALAR_FIELD:
            return f"public[{i}] is not below the scalar field order r"
    return None


def _normalised(vk: VerifyingKey, proof: Proof) -> tuple[VerifyingKey, Proof]:
    """The same key and proof with every point a tuple of plain ints (hashable)."""

    def g1(p: Sequence[int]) -> tuple[int, int]:
        return (int(p[0]), int(p[1]))

    def g2(p: Sequence[Sequence[int]]) -> tuple[tuple[int, int], tuple[int, int]]:
        return ((int(p[0][0]), int(p[0][1])), (int(p[1][0]), int(p[1][1])))

    return (
        VerifyingKey(
            g1(vk.alpha1), g2(vk.beta2), g2(vk.gamma2), g2(vk.delta2), tuple(map(g1, vk.ic))
        ),
        Proof(g1(proof.a), g2(proof.b), g1(proof.c)),
    )


# ---------------------------------------------------------------- verification


def verify(
    vk: VerifyingKey, proof: Proof, public: Sequence[int], *, backend: str | None = None
) -> Verdict:
    """Check a Groth16 proof; never raises for any vk, proof or public input.

    ``backend`` is a name from :func:`backends` (default :func:`default_backend`);
    an unknown or missing one raises ValueError.
    """
    module = _backends.load(backend if backend is not None else default_backend())
    try:
        reason = _vk_reason(vk) or _proof_reason(proof)
        if reason is None:
            reason = _public_reason(public, vk.n_public)
        if reason is None:
            vk, proof = _normalised(vk, proof)
            reason = module.check(vk, proof, tuple(int(x) for x in public))
    except Exception as e:  # a backend bug must not take the caller down with it
        reason = f"internal error in the {module.NAME} backend: {type(e).__name__}"
    except BaseException as e:  # pyo3's PanicException derives from BaseException
        if type(e).__name__ != "PanicException":
            raise
        reason = f"internal error in the {module.NAME} backend: a panic"
    return Verdict(valid=reason is None, reason=reason)


def verify_json(
    vk_obj: object, proof_obj: object, public_obj: object, *, backend: str | None = None
) -> Verdict:
    """:func:`verify` on decoded snarkjs JSON; a parse error is an invalid verdict with its reason."""
    _backends.load(backend if backend is not None else default_backend())
    try:
        vk = parse_vk(vk_obj)
        proof = parse_proof(proof_obj)
        public = parse_public(public_obj)
    except ZkFormatError as e:
        return Verdict(valid=False, reason=e.reason)
    return verify(vk, proof, public, backend=backend)

"""A Groth16 setup whose toxic waste we keep, so tests can prove any statement.

Groth16's soundness rests on nobody knowing the setup's secrets (alpha, beta,
gamma, delta and the circuit's polynomials evaluated at tau). Knowing them,
one can make a proof that verifies for ANY public inputs, without a circuit:

    vk = (alpha G1, beta G2, gamma G2, delta G2, IC_i = k_i G1)
    A = a G1,  B = b G2,  C = ((a b - alpha beta - gamma sum x_i k_i) / delta) G1

(x_0 = 1), since then e(A, B) = e(alpha, beta) e(vk_x, gamma) e(C, delta).
That makes valid proofs for tests of the contracts, the job flow and the CLI
cheap (a few scalar multiplications, natively ~1 ms) and independent of any
circuit tooling. For tests only: a key made here proves nothing.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType

from zkp import backends as _backends
from zkp.formats import MAX_PUBLIC, SCALAR_FIELD, Proof, VerifyingKey

__all__ = ["TrapdoorSetup"]

R = SCALAR_FIELD


def _curve() -> ModuleType:
    return _backends.load(_backends.installed()[0])


def _nonzero(rng: random.Random) -> int:
    return rng.randrange(1, R)


@dataclass(frozen=True)
class TrapdoorSetup:
    """A verifying key and its secrets; :meth:`prove` makes valid proofs for any inputs."""

    vk: VerifyingKey
    alpha: int
    beta: int
    gamma: int
    delta: int
    k: tuple[int, ...]

    @classmethod
    def new(cls, n_public: int, seed: int = 1) -> TrapdoorSetup:
        """A setup for ``n_public`` public inputs, the same for the same seed."""
        if not 0 <= n_public <= MAX_PUBLIC:
            raise ValueError(f"n_public must be 0..{MAX_PUBLIC}, got {n_public}")
        rng = random.Random(f"zkp.testing.TrapdoorSetup/{seed}")
        alpha, beta, gamma, delta = (_nonzero(rng) for _ in range(4))
        k = tuple(_nonzero(rng) for _ in range(n_public + 1))
        curve = _curve()
        vk = VerifyingKey(
            alpha1=curve.g1_mul(alpha),
            beta2=curve.g2_mul(beta),
            gamma2=curve.g2_mul(gamma),
            delta2=curve.g2_mul(delta),
            ic=tuple(curve.g1_mul(ki) for ki in k),
        )
        return cls(vk=vk, alpha=alpha, beta=beta, gamma=gamma, delta=delta, k=k)

    def prove(self, public: Sequence[int], *, seed: int = 0) -> Proof:
        """A proof that verifies under :attr:`vk` for ``public`` (each below r)."""
        if len(public) != len(self.k) - 1:
            raise ValueError(f"expected {len(self.k) - 1} public inputs, got {len(public)}")
        if not all(0 <= x < R for x in public):
            raise ValueError("public inputs must be below the scalar field order r")
        rng = random.Random(f"zkp.testing.TrapdoorSetup.prove/{seed}")
        a, b = _nonzero(rng), _nonzero(rng)
        xk = (self.k[0] + sum(x * ki for x, ki in zip(public, self.k[1:], strict=True))) % R
        c = (a * b - self.alpha * self.beta - self.gamma * xk) * pow(self.delta, -1, R) % R
        curve = _curve()
        return Proof(a=curve.g1_mul(a), b=curve.g2_mul(b), c=curve.g1_mul(c))

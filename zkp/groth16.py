"""The Groth16 prover's arithmetic, as snarkjs's ``src/groth16_prove.js`` does it.

Given a proving key (``zkp.zkey``) and a full witness ``w`` (``w[0] == 1``):

1. Evaluate the QAP's A and B on the domain of size ``n = 2^power``: for
   each stored coefficient (matrix, constraint, signal, value),
   ``A[constraint] += value * w[signal]`` (matrix 0) or ``B[...]`` (matrix 1);
   ``C = A * B`` pointwise (the key stores no C: on the domain it is A*B).
2. Move each of A, B, C to the odd coset: inverse FFT to coefficients,
   multiply coefficient i by ``inc^i`` where ``inc`` is a primitive 2n-th root
   of unity, FFT back. There Z(x) = x^n - 1 = -2 is constant, and the key's H
   points already carry that factor, so ``h_i = A_i * B_i - C_i`` needs no
   division.
3. Multi-scalar multiplications, with random r and s:

       pi_a = alpha1 + sum w_i A_i + r delta1
       pi_b = beta2 + sum w_i B2_i + s delta2          (B1 likewise in G1)
       pi_c = sum_{i > nPublic} w_i C_i + sum h_i H_i + s pi_a + r B1 - r s delta1

The roots of unity are ffjavascript's, since the key's H points were made
with them: w_28 = g^t for g the smallest quadratic non-residue of r (5) and
r - 1 = 2^28 t, and w_k = w_{k+1}^2. The curve arithmetic is a
:class:`CurveOps` (zksnake's native MSM, or py-ecc). Pure: no I/O, no clock;
``check`` is called between the expensive steps so the caller can stop it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from zkp.formats import G1, G2, SCALAR_FIELD, Proof
from zkp.zkey import ProvingKey

__all__ = ["CurveOps", "PreparedKey", "h_scalars", "prove", "root_of_unity"]

R = SCALAR_FIELD
_TWO_ADICITY = 28
_T = (R - 1) >> _TWO_ADICITY


def _smallest_non_residue() -> int:
    g = 2
    while pow(g, (R - 1) // 2, R) != R - 1:
        g += 1
    return g


_NQR = _smallest_non_residue()
_ROOT_28 = pow(_NQR, _T, R)


def root_of_unity(power: int) -> int:
    """ffjavascript's primitive 2^power-th root of unity in Fr (power <= 28)."""
    if not 0 <= power <= _TWO_ADICITY:
        raise ValueError(f"power must be in [0, {_TWO_ADICITY}]")
    return pow(_ROOT_28, 1 << (_TWO_ADICITY - power), R)


def _fft(values: list[int], root: int) -> list[int]:
    """In-order radix-2 DFT: out[k] = sum_j values[j] * root^(jk). len is 2^k."""
    n = len(values)
    bits = n.bit_length() - 1
    out = [values[int(f"{i:0{bits}b}"[::-1], 2)] for i in range(n)] if bits else list(values)
    size = 2
    while size <= n:
        half = size // 2
        step = pow(root, n // size, R)
        twiddles = [1] * half
        for j in range(1, half):
            twiddles[j] = twiddles[j - 1] * step % R
        for start in range(0, n, size):
            for j in range(half):
                u = out[start + j]
                v = out[start + j + half] * twiddles[j] % R
                out[start + j] = (u + v) % R
                out[start + j + half] = (u - v) % R
        size *= 2
    return out


def _to_odd_coset(evaluations: list[int], power: int) -> list[int]:
    """Evaluations on the domain -> evaluations on inc * domain (inc a 2n-th root)."""
    n = len(evaluations)
    root = root_of_unity(power)
    n_inv = pow(n, R - 2, R)
    coefficients = _fft(evaluations, pow(root, R - 2, R))
    inc = root_of_unity(power + 1) if power < _TWO_ADICITY else _NQR * _NQR % R
    factor = n_inv
    for i in range(n):
        coefficients[i] = coefficients[i] * factor % R
        factor = factor * inc % R
    return _fft(coefficients, root)


def h_scalars(pk: ProvingKey, witness: Sequence[int]) -> list[int]:
    """The scalars for the key's H points: (A*B - C) on the odd coset."""
    n = pk.domain_size
    a = [0] * n
    b = [0] * n
    for coef in pk.coefficients:
        target = a if coef.matrix == 0 else b
        target[coef.constraint] = (target[coef.constraint] + coef.value * witness[coef.signal]) % R
    c = [x * y % R for x, y in zip(a, b, strict=True)]
    a_odd = _to_odd_coset(a, pk.power)
    b_odd = _to_odd_coset(b, pk.power)
    c_odd = _to_odd_coset(c, pk.power)
    return [(x * y - z) % R for x, y, z in zip(a_odd, b_odd, c_odd, strict=True)]


class CurveOps(Protocol):
    """Multi-scalar multiplication over BN254 with some point representation."""

    name: str

    def g1_points(self, points: Sequence[G1]) -> Any: ...

    def g2_points(self, points: Sequence[G2]) -> Any: ...

    def msm(self, points: Any, scalars: Sequence[int], check: Callable[[], None]) -> Any:
        """sum scalars[i] * points[i] (as many as there are scalars)."""
        ...

    def join(self, points: Sequence[Any]) -> Any:
        """Native points (msm results) as a points argument for :meth:`msm`."""
        ...

    def to_g1(self, point: Any) -> G1: ...

    def to_g2(self, point: Any) -> G2: ...


class PreparedKey:
    """A proving key's points in a backend's representation, with the constant
    points appended so that each proof element is one MSM."""

    def __init__(self, pk: ProvingKey, ops: CurveOps) -> None:
        self.pk = pk
        self.ops = ops
        self.a = ops.g1_points([*pk.a, pk.alpha1, pk.delta1])
        self.b1 = ops.g1_points([*pk.b1, pk.beta1, pk.delta1])
        self.b2 = ops.g2_points([*pk.b2, pk.beta2, pk.delta2])
        self.c = ops.g1_points([*pk.c, *pk.h, pk.delta1])


def _nothing() -> None:
    pass


def prove(
    key: PreparedKey,
    witness: Sequence[int],
    r: int,
    s: int,
    check: Callable[[], None] = _nothing,
) -> tuple[Proof, tuple[int, ...]]:
    """A Groth16 proof and its public signals (``witness[1 : nPublic + 1]``).

    ``r`` and ``s`` are the blinding scalars (uniform in [0, r) for
    zero-knowledge); ``check`` is called between steps and may raise to stop."""
    pk, ops = key.pk, key.ops
    if len(witness) != pk.n_vars:
        raise ValueError(f"the witness has {len(witness)} values; the key wants {pk.n_vars}")
    if not witness or witness[0] != 1:
        raise ValueError("the witness does not start with 1")
    w = [int(x) % R for x in witness]
    r, s = r % R, s % R
    check()
    h = h_scalars(pk, w)
    check()
    pi_a = ops.msm(key.a, [*w, 1, r], check)
    check()
    pi_b = ops.msm(key.b2, [*w, 1, s], check)
    check()
    b1 = ops.msm(key.b1, [*w, 1, s], check)
    check()
    partial_c = ops.msm(key.c, [*w[pk.n_public + 1 :], *h, (-r * s) % R], check)
    check()
    pi_c = ops.msm(ops.join([partial_c, pi_a, b1]), [1, s, r], check)
    proof = Proof(a=ops.to_g1(pi_a), b=ops.to_g2(pi_b), c=ops.to_g1(pi_c))
    return proof, tuple(w[1 : pk.n_public + 1])

"""Poseidon over BN254, as circomlib's ``Poseidon(n)`` template computes it.

A requester needs it outside any circuit: the ``private_stats`` circuit proves
facts about data committed by ``poseidon(values)``, so the commitment must be
computed before the job is placed, and ``poseidon_preimage`` reveals
``poseidon(preimage)``.

The parameters are the reference ones (Grassi et al., "Poseidon", and the
authors' ``generate_parameters_grain.sage``), derived here rather than copied:
x^5 S-box, 8 full rounds, the partial-round counts below for t = 2..17, and
round constants and the Cauchy MDS matrix drawn from the Grain LFSR seeded
with (prime field, x^alpha, 254 bits, t, R_F, R_P). circomlib and circomlibjs
use the same constants; tests check known vectors and the circuits' own
witness generators. Pure. Deriving the constants for one width costs about a
second the first time (they are cached).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import cache

from zkp.binding import SNARK_SCALAR_FIELD

__all__ = ["MAX_INPUTS", "poseidon"]

P = SNARK_SCALAR_FIELD
_FULL_ROUNDS = 8
# Partial rounds for t = 2 .. 17 (circomlib's N_ROUNDS_P).
_PARTIAL_ROUNDS = (56, 57, 56, 60, 60, 63, 64, 63, 60, 66, 60, 65, 70, 60, 64, 68)
#: The most inputs one call hashes (t = 17), as circomlib's Poseidon.
MAX_INPUTS = len(_PARTIAL_ROUNDS)
_FIELD_BITS = 254


def _grain_bits(t: int, partial: int) -> Iterator[int]:
    """The Grain LFSR's output bits, after its 160 warm-up steps and self-shrinking."""
    seed = "01" + "0000" + f"{_FIELD_BITS:012b}" + f"{t:012b}" + f"{_FULL_ROUNDS:010b}"
    seed += f"{partial:010b}" + "1" * 30
    state = [int(c) for c in seed]  # 80 bits, state[0] oldest

    def step() -> int:
        bit = state[62] ^ state[51] ^ state[38] ^ state[23] ^ state[13] ^ state[0]
        state.pop(0)
        state.append(bit)
        return bit

    for _ in range(160):
        step()
    while True:
        selector = step()
        while selector == 0:
            step()  # the bit a 0 selector discards
            selector = step()
        yield step()


def _field_element(bits: Iterator[int]) -> int:
    value = 0
    for _ in range(_FIELD_BITS):
        value = (value << 1) | next(bits)
    return value


@cache
def _parameters(t: int) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...]]:
    """(round constants, MDS matrix) for width ``t``."""
    partial = _PARTIAL_ROUNDS[t - 2]
    bits = _grain_bits(t, partial)
    constants = []
    for _ in range((_FULL_ROUNDS + partial) * t):
        value = _field_element(bits)
        while value >= P:  # rejection sampling
            value = _field_element(bits)
        constants.append(value)
    while True:
        draws = [_field_element(bits) % P for _ in range(2 * t)]
        if len(set(draws)) != len(draws):
            continue
        xs, ys = draws[:t], draws[t:]
        if any((x + y) % P == 0 for x in xs for y in ys):
            continue
        mds = tuple(tuple(pow(x + y, P - 2, P) for y in ys) for x in xs)
        return tuple(constants), mds


def poseidon(inputs: Sequence[int]) -> int:
    """Poseidon of 1 to 16 field elements (ints in [0, r)), circomlib's output."""
    n = len(inputs)
    if not 1 <= n <= MAX_INPUTS:
        raise ValueError(f"poseidon takes 1 to {MAX_INPUTS} inputs, got {n}")
    for value in inputs:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < P:
            raise ValueError("poseidon inputs are field elements: integers in [0, r)")
    t = n + 1
    constants, mds = _parameters(t)
    partial = _PARTIAL_ROUNDS[t - 2]
    half = _FULL_ROUNDS // 2
    state = [0, *inputs]
    for r in range(_FULL_ROUNDS + partial):
        state = [(s + constants[r * t + i]) % P for i, s in enumerate(state)]
        if half <= r < half + partial:
            state[0] = pow(state[0], 5, P)
        else:
            state = [pow(s, 5, P) for s in state]
        state = [sum(m * s for m, s in zip(row, state, strict=True)) % P for row in mds]
    return state[0]

"""Pairing backends for the Groth16 verifier, chosen by name.

Two interchangeable implementations of the same few operations:

* ``native``: zksnake (arkworks through pyo3), ~3 ms a verification;
* ``py_ecc``: py-ecc's optimized_bn128, pure Python, ~1 s: the reference.

Both take only what :mod:`zkp.formats` produces (ints below q, points on the
curve) and are never handed anything else (:mod:`zkp.verify` checks shapes
first). Each module provides:

* ``check(vk, proof, public) -> str | None``: the G2 subgroup checks and the
  pairing equation; ``None`` when the proof is valid, else the reason;
* ``g1_mul(k) -> G1`` and ``g2_mul(k) -> G2``: k times the generator, affine
  (for :mod:`zkp.testing`).

A backend is imported only when first used, so ``python -m zkp`` starts fast.
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType

from zkp.formats import (
    FIELD_MODULUS,
    G1,
    G1_INFINITY,
    G2,
    G2_INFINITY,
    g1_on_curve,
    g2_on_curve,
)

__all__ = ["NAMES", "alphabeta_12", "installed", "load"]

#: Every backend, in order of preference.
NAMES = ("native", "py_ecc")
_MODULES = {"native": "zkp.backends.native", "py_ecc": "zkp.backends.pyecc"}


@functools.cache
def _try_import(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(_MODULES[name])
    except ImportError:
        return None


def installed() -> list[str]:
    """The backends that import here, in order of preference."""
    return [name for name in NAMES if _try_import(name) is not None]


def load(name: str) -> ModuleType:
    """The backend module called ``name``; ValueError (with a hint) if unknown or missing."""
    if name not in _MODULES:
        raise ValueError(f"unknown zk backend {name!r}: choose one of {', '.join(NAMES)}")
    module = _try_import(name)
    if module is None:
        hint = " (pip install zksnake==0.1.0)" if name == "native" else ""
        raise ValueError(f"zk backend {name!r} is not installed{hint}")
    return module


Fq12Tower = tuple[tuple[tuple[int, int], ...], ...]


def alphabeta_12(alpha1: G1, beta2: G2) -> Fq12Tower | None:
    """e(alpha1, beta2) as snarkjs writes ``vk_alphabeta_12`` (the Fq2/Fq6/Fq12 tower).

    Only the native backend computes the same pairing as snarkjs (arkworks
    and ffjavascript agree value for value; py-ecc's Fq12 is another basis
    and its pairing differs by a fixed exponent). None without it, or when
    the points are not valid (at infinity, off the curve, beta outside G2).
    """
    module = _try_import("native")
    if module is None or not _valid(alpha1, beta2):
        return None
    return module.alphabeta_12(
        (alpha1[0], alpha1[1]), ((beta2[0][0], beta2[0][1]), (beta2[1][0], beta2[1][1]))
    )


def _valid(alpha1: object, beta2: object) -> bool:
    """Both points finite, of ints below q, on their curves (zksnake panics otherwise)."""
    try:
        coords = [*alpha1, *beta2[0], *beta2[1]]  # type: ignore[index, misc]
        if len(coords) != 6 or not all(type(c) is int and 0 <= c < FIELD_MODULUS for c in coords):
            return False
        a = (coords[0], coords[1])
        b = ((coords[2], coords[3]), (coords[4], coords[5]))
    except (TypeError, IndexError, KeyError):
        return False
    return a != G1_INFINITY and b != G2_INFINITY and g1_on_curve(a) and g2_on_curve(b)

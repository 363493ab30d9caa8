"""BN254 multi-scalar multiplication for the prover: zksnake (native) or py-ecc.

``NativeCurve`` hands the work to zksnake's arkworks MSM (MIT, a wheel; about
100x faster). arkworks *panics* on a point that is off the curve or, for G2,
outside the subgroup, and a pyo3 panic is a BaseException: so G1 points are
only built from coordinates ``zkp.zkey`` checked to be on the curve, and G2
points go through zksnake's compressed deserializer, which validates and
raises ValueError instead (turned into :class:`CurveError`).

``PyEccCurve`` is the pure-Python fallback (py-ecc's ``optimized_bn128``,
projective coordinates) with a bucket (Pippenger) MSM: fine for circuits of a
few hundred constraints, minutes for thousands. Both implement
``zkp.groth16.CurveOps``. Pure.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from zkp.formats import FIELD_MODULUS, G1, G2

__all__ = ["CurveError", "NativeCurve", "PyEccCurve", "native_available"]


class CurveError(ValueError):
    """A point the backend refuses (not on the curve, not in the subgroup)."""


def native_available() -> bool:
    """Whether zksnake (the native MSM) imports."""
    try:
        from zksnake._algebra import ec_bn254  # noqa: F401
    except ImportError:
        return False
    return True


def _fq2_is_negative(y: tuple[int, int]) -> bool:
    """arkworks' sign of an Fq2 element: y > -y, comparing c1 first, then c0."""
    q = FIELD_MODULUS
    neg = ((-y[0]) % q, (-y[1]) % q)
    return (y[1], y[0]) > (neg[1], neg[0])


class NativeCurve:
    """zksnake's BN254 (arkworks) points and MSM."""

    name = "zksnake"

    def __init__(self) -> None:
        from zksnake._algebra import ec_bn254

        self._ec = ec_bn254
        self._g1_zero = ec_bn254.PointG1.identity()
        self._g2_zero = ec_bn254.g2() * 0

    def g1_points(self, points: Sequence[G1]) -> tuple[str, list[Any]]:
        make = self._ec.PointG1
        zero = self._g1_zero
        # On the curve: zkp.zkey checked each one (arkworks would panic otherwise).
        return ("g1", [zero if p == (0, 0) else make(p[0], p[1]) for p in points])

    def _g2(self, p: G2) -> Any:
        (x0, x1), (y0, y1) = p
        if not (x0 or x1 or y0 or y1):
            return self._g2_zero
        flags = 0x80 if _fq2_is_negative((y0, y1)) else 0
        raw = bytearray(x0.to_bytes(32, "little") + x1.to_bytes(32, "little"))
        raw[-1] |= flags
        try:
            point = self._ec.PointG2.from_bytes(list(raw))
        except ValueError:
            raise CurveError("a G2 point is not in the subgroup (or not on the twist)") from None
        if (tuple(point.y) if not isinstance(point.y, tuple) else point.y) != (y0, y1):
            raise CurveError("a G2 point does not decompress to itself")
        return point

    def g2_points(self, points: Sequence[G2]) -> tuple[str, list[Any]]:
        return ("g2", [self._g2(p) for p in points])

    def msm(
        self, points: tuple[str, list[Any]], scalars: Sequence[int], check: Callable[[], None]
    ) -> Any:
        kind, items = points
        if len(items) != len(scalars):
            raise ValueError(f"{len(scalars)} scalars for {len(items)} points")
        if kind == "g1":
            return self._ec.multiscalar_mul_g1(items, list(scalars))
        return self._ec.multiscalar_mul_g2(items, list(scalars))

    def join(self, points: Sequence[Any]) -> tuple[str, list[Any]]:
        kind = "g1" if isinstance(points[0], self._ec.PointG1) else "g2"
        return (kind, list(points))

    def to_g1(self, point: Any) -> G1:
        return (0, 0) if point.is_zero() else (int(point.x), int(point.y))

    def to_g2(self, point: Any) -> G2:
        if point.is_zero():
            return ((0, 0), (0, 0))
        x, y = point.x, point.y
        return ((int(x[0]), int(x[1])), (int(y[0]), int(y[1])))


class PyEccCurve:
    """py-ecc's optimized_bn128 (pure Python), with a bucket MSM."""

    name = "py_ecc"

    def __init__(self) -> None:
        from py_ecc import optimized_bn128 as bn

        self._bn = bn

    def g1_points(self, points: Sequence[G1]) -> tuple[str, list[Any]]:
        bn = self._bn
        return (
            "g1",
            [None if p == (0, 0) else (bn.FQ(p[0]), bn.FQ(p[1]), bn.FQ.one()) for p in points],
        )

    def g2_points(self, points: Sequence[G2]) -> tuple[str, list[Any]]:
        bn = self._bn
        out: list[Any] = []
        for (x0, x1), (y0, y1) in points:
            if not (x0 or x1 or y0 or y1):
                out.append(None)
            else:
                out.append((bn.FQ2([x0, x1]), bn.FQ2([y0, y1]), bn.FQ2.one()))
        return ("g2", out)

    def _add(self, a: Any, b: Any) -> Any:
        if a is None:
            return b
        if b is None:
            return a
        return self._bn.add(a, b)

    def msm(
        self, points: tuple[str, list[Any]], scalars: Sequence[int], check: Callable[[], None]
    ) -> Any:
        _, items = points
        if len(items) != len(scalars):
            raise ValueError(f"{len(scalars)} scalars for {len(items)} points")
        pairs = [(p, s) for p, s in zip(items, scalars, strict=True) if s and p is not None]
        if not pairs:
            return None
        top = max(s for _, s in pairs).bit_length()
        window = max(1, min(12, len(pairs).bit_length() - 2))
        mask = (1 << window) - 1
        add, double = self._add, self._bn.double
        result = None
        for shift in reversed(range(0, top, window)):
            if result is not None:
                for _ in range(window):
                    result = double(result)
            buckets: list[Any] = [None] * mask
            for p, s in pairs:
                digit = (s >> shift) & mask
                if digit:
                    buckets[digit - 1] = add(buckets[digit - 1], p)
            running = total = None
            for bucket in reversed(buckets):
                running = add(running, bucket)
                total = add(total, running)
            result = add(result, total)
            check()
        return result

    def join(self, points: Sequence[Any]) -> tuple[str, list[Any]]:
        return ("any", list(points))

    def to_g1(self, point: Any) -> G1:
        if point is None or self._bn.is_inf(point):
            return (0, 0)
        x, y = self._bn.normalize(point)
        return (int(x), int(y))

    def to_g2(self, point: Any) -> G2:
        if point is None or self._bn.is_inf(point):
            return ((0, 0), (0, 0))
        x, y = self._bn.normalize(point)
        return ((int(x.coeffs[0]), int(x.coeffs[1])), (int(y.coeffs[0]), int(y.coeffs[1])))

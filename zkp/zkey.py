"""snarkjs's Groth16 proving key (``.zkey``) read into plain ints, hostile-safe.

The file is iden3's binary container: ``"zkey"``, a u32 version, a u32
section count, then sections of (u32 type, u64 length, bytes). A Groth16
key has these sections (snarkjs ``src/zkey_utils.js``):

    1  header        u32 protocol (1 = Groth16)
    2  Groth header  n8q, q, n8r, r, nVars, nPublic, domainSize, alpha1,
                     beta1, beta2, gamma2, delta1, delta2
    3  IC            nPublic + 1 G1 points
    4  coefficients  u32 count, then (u32 matrix, u32 constraint, u32 signal,
                     value) with value = v * R^2 mod r (R = 2^256), matrices
                     A (0) and B (1) only
    5  A             nVars G1 points
    6  B1            nVars G1 points
    7  B2            nVars G2 points
    8  C             nVars - nPublic - 1 G1 points
    9  H             domainSize G1 points
    10 contributions (not read)

Numbers are little-endian; points are (x, y) with each coordinate in
Montgomery form (x * R mod q), (0, 0) being the point at infinity, and G2
coordinates in snarkjs's order (x.c0, x.c1, y.c0, y.c1).

A zkey may come from a requester, so every count is checked against the
section lengths (and the file length) before anything is allocated, every
index in a coefficient is checked against the key's sizes, and every point is
checked to be on the curve (the native MSM panics on one that is not). A bad
file raises :class:`ZkeyError` with a reason. Pure: :func:`parse_zkey` takes
bytes; :func:`read_zkey` reads a file under a size cap.
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from protocol.errors import MaskError
from zkp.formats import (
    FIELD_MODULUS,
    G1,
    G2,
    SCALAR_FIELD,
    VerifyingKey,
    g1_on_curve,
    g2_on_curve,
)

__all__ = [
    "Coefficient",
    "ProvingKey",
    "ZkeyError",
    "parse_zkey",
    "read_zkey",
]

_MAGIC = b"zkey"
_GROTH16 = 1
_N8 = 32
_G1_BYTES = 2 * _N8
_G2_BYTES = 4 * _N8
_COEF_BYTES = 12 + _N8
_MAX_SECTIONS = 64
_MAX_POWER = 28  # BN254's scalar field has 2-adicity 28
# n8q, q, n8r, r, nVars, nPublic, domainSize, then alpha1 beta1 delta1 and beta2 gamma2 delta2
_HEADER_BYTES = 4 + _N8 + 4 + _N8 + 12 + 3 * _G1_BYTES + 3 * _G2_BYTES
_R_Q_INV = pow(2**256 % FIELD_MODULUS, -1, FIELD_MODULUS)  # Montgomery R^-1 mod q
_R2_R_INV = pow(pow(2**256, 2, SCALAR_FIELD), -1, SCALAR_FIELD)  # R^-2 mod r


class ZkeyError(MaskError):
    """A proving key that is not a usable snarkjs Groth16 .zkey over BN254."""

    code = "zkey_invalid"

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"circuit.zkey: {reason}",
            hint="circuit.zkey must be the Groth16 proving key snarkjs writes for bn128 "
            "(circuits/build.sh), from the same setup as verification_key.json",
        )
        self.reason = f"circuit.zkey: {reason}"


@dataclass(frozen=True, slots=True)
class Coefficient:
    """One nonzero entry of the QAP's A (matrix 0) or B (matrix 1), value plain."""

    matrix: int
    constraint: int
    signal: int
    value: int


@dataclass(frozen=True, slots=True)
class ProvingKey:
    """A Groth16 proving key with every field element plain (not Montgomery)."""

    n_vars: int
    n_public: int
    domain_size: int
    alpha1: G1
    beta1: G1
    delta1: G1
    beta2: G2
    gamma2: G2
    delta2: G2
    ic: tuple[G1, ...]
    coefficients: tuple[Coefficient, ...]
    a: tuple[G1, ...]
    b1: tuple[G1, ...]
    b2: tuple[G2, ...]
    c: tuple[G1, ...]  # for signals n_public + 1 .. n_vars - 1
    h: tuple[G1, ...]

    @property
    def power(self) -> int:
        return self.domain_size.bit_length() - 1

    def verifying_key(self) -> VerifyingKey:
        """The verifying key this proving key proves for."""
        return VerifyingKey(
            alpha1=self.alpha1, beta2=self.beta2, gamma2=self.gamma2, delta2=self.delta2, ic=self.ic
        )


class _Reader:
    """Bounded reads from one section."""

    def __init__(self, data: memoryview, name: str) -> None:
        self.data = data
        self.pos = 0
        self.name = name

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.data):
            raise ZkeyError(f"section {self.name} ends early")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u32(self) -> int:
        return int(struct.unpack_from("<I", self.take(4))[0])

    def number(self) -> int:
        return int.from_bytes(self.take(_N8), "little")


def _sections(data: memoryview) -> dict[int, memoryview]:
    if len(data) < 12 or bytes(data[:4]) != _MAGIC:
        raise ZkeyError("not a zkey file (no 'zkey' magic)")
    version, count = struct.unpack_from("<II", data, 4)
    if version != 1:
        raise ZkeyError(f"version {version}; only version 1 is read")
    if not 1 <= count <= _MAX_SECTIONS:
        raise ZkeyError(f"claims {count} sections")
    found: dict[int, memoryview] = {}
    pos = 12
    for _ in range(count):
        if pos + 12 > len(data):
            raise ZkeyError("ends inside its section table")
        kind, length = struct.unpack_from("<IQ", data, pos)
        pos += 12
        if length > len(data) - pos:
            raise ZkeyError(f"section {kind} claims {length} bytes, past the end of the file")
        if kind in found:
            raise ZkeyError(f"section {kind} appears twice")
        found[kind] = data[pos : pos + length]
        pos += length
    return found


def _expect_length(section: memoryview, want: int, name: str) -> None:
    if len(section) != want:
        raise ZkeyError(f"section {name} holds {len(section)} bytes, not {want}")


def _coord(raw: int, where: str) -> int:
    if raw >= FIELD_MODULUS:
        raise ZkeyError(f"{where}: a coordinate is not below the field modulus")
    return raw * _R_Q_INV % FIELD_MODULUS


def _g1(reader: _Reader, where: str) -> G1:
    xm, ym = reader.number(), reader.number()
    if xm == 0 and ym == 0:
        return (0, 0)
    point = (_coord(xm, where), _coord(ym, where))
    if not g1_on_curve(point):
        raise ZkeyError(f"{where}: a G1 point is not on the curve")
    return point


def _g2(reader: _Reader, where: str) -> G2:
    raw = [reader.number() for _ in range(4)]
    if not any(raw):
        return ((0, 0), (0, 0))
    x0, x1, y0, y1 = (_coord(v, where) for v in raw)
    point = ((x0, x1), (y0, y1))
    if not g2_on_curve(point):
        raise ZkeyError(f"{where}: a G2 point is not on the twist")
    return point


def _g1_points(section: memoryview, count: int, name: str) -> tuple[G1, ...]:
    _expect_length(section, count * _G1_BYTES, name)
    reader = _Reader(section, name)
    return tuple(_g1(reader, f"section {name}") for _ in range(count))


def parse_zkey(blob: bytes | bytearray | memoryview, *, max_vars: int = 1 << 24) -> ProvingKey:
    """A Groth16 proving key from .zkey bytes; ZkeyError with a reason otherwise."""
    data = memoryview(blob).cast("B")
    sections = _sections(data)
    for kind in range(1, 10):
        if kind not in sections:
            raise ZkeyError(f"section {kind} is missing")
    header = _Reader(sections[1], "1")
    _expect_length(sections[1], 4, "1 (header)")
    protocol = header.u32()
    if protocol != _GROTH16:
        raise ZkeyError(f"protocol {protocol} is not Groth16 (1)")

    _expect_length(sections[2], _HEADER_BYTES, "2 (Groth16 header)")
    g = _Reader(sections[2], "2")
    if g.u32() != _N8 or g.number() != FIELD_MODULUS:
        raise ZkeyError("the base field is not BN254's (bn128)")
    if g.u32() != _N8 or g.number() != SCALAR_FIELD:
        raise ZkeyError("the scalar field is not BN254's (bn128)")
    n_vars, n_public, domain_size = g.u32(), g.u32(), g.u32()
    if not 1 <= n_vars <= max_vars:
        raise ZkeyError(f"claims {n_vars} variables (at most {max_vars})")
    if not n_public + 1 <= n_vars:
        raise ZkeyError(f"claims {n_public} public inputs but {n_vars} variables")
    if domain_size < 1 or domain_size & (domain_size - 1) or domain_size > 1 << _MAX_POWER:
        raise ZkeyError(f"domain size {domain_size} is not a power of two up to 2^{_MAX_POWER}")
    if domain_size < n_public + 1:
        raise ZkeyError(f"domain size {domain_size} is smaller than its public inputs")
    where = "section 2"
    alpha1, beta1 = _g1(g, where), _g1(g, where)
    beta2, gamma2 = _g2(g, where), _g2(g, where)
    delta1, delta2 = _g1(g, where), _g2(g, where)

    ic = _g1_points(sections[3], n_public + 1, "3 (IC)")
    coefficients = _coefficients(sections[4], n_vars, domain_size)
    a = _g1_points(sections[5], n_vars, "5 (A)")
    b1 = _g1_points(sections[6], n_vars, "6 (B1)")
    _expect_length(sections[7], n_vars * _G2_BYTES, "7 (B2)")
    reader = _Reader(sections[7], "7")
    b2 = tuple(_g2(reader, "section 7 (B2)") for _ in range(n_vars))
    c = _g1_points(sections[8], n_vars - n_public - 1, "8 (C)")
    h = _g1_points(sections[9], domain_size, "9 (H)")
    return ProvingKey(
        n_vars=n_vars,
        n_public=n_public,
        domain_size=domain_size,
        alpha1=alpha1,
        beta1=beta1,
        delta1=delta1,
        beta2=beta2,
        gamma2=gamma2,
        delta2=delta2,
        ic=ic,
        coefficients=coefficients,
        a=a,
        b1=b1,
        b2=b2,
        c=c,
        h=h,
    )


def _coefficients(section: memoryview, n_vars: int, domain_size: int) -> tuple[Coefficient, ...]:
    if len(section) < 4:
        raise ZkeyError("section 4 (coefficients) ends early")
    (count,) = struct.unpack_from("<I", section, 0)
    _expect_length(section, 4 + count * _COEF_BYTES, "4 (coefficients)")
    out = []
    for matrix, constraint, signal, raw in _iter_coefficients(section, count):
        if matrix > 1:
            raise ZkeyError(f"a coefficient names matrix {matrix} (only A=0 and B=1 are stored)")
        if constraint >= domain_size:
            raise ZkeyError(f"a coefficient names constraint {constraint} of {domain_size}")
        if signal >= n_vars:
            raise ZkeyError(f"a coefficient names signal {signal} of {n_vars}")
        if raw >= SCALAR_FIELD:
            raise ZkeyError("a coefficient is not below the scalar field")
        out.append(Coefficient(matrix, constraint, signal, raw * _R2_R_INV % SCALAR_FIELD))
    return tuple(out)


def _iter_coefficients(section: memoryview, count: int) -> Iterator[tuple[int, int, int, int]]:
    unpack = struct.Struct("<III").unpack_from
    for i in range(count):
        pos = 4 + i * _COEF_BYTES
        matrix, constraint, signal = unpack(section, pos)
        raw = int.from_bytes(section[pos + 12 : pos + _COEF_BYTES], "little")
        yield matrix, constraint, signal, raw


def read_zkey(path: str | os.PathLike[str], *, max_bytes: int = 64 << 20) -> ProvingKey:
    """:func:`parse_zkey` of a file read under ``max_bytes``, not following a symlink."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise ZkeyError(f"cannot open it: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        try:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ZkeyError("not a regular file")
            size = st.st_size
            if size > max_bytes:
                raise ZkeyError(f"{size} bytes, over the {max_bytes}-byte limit")
            data = f.read(max_bytes + 1)
        except OSError as e:
            raise ZkeyError(f"cannot read it: {e.strerror}") from None
    if len(data) > max_bytes:
        raise ZkeyError(f"over the {max_bytes}-byte limit")
    return parse_zkey(data)

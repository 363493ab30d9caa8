"""snarkjs .zkey parsing (zkp.zkey): the shipped keys, and hostile files.

A proving key can come from a requester: truncated, garbage, lying about its
sizes, with indices out of range or points off the curve. Each is refused
with a ZkeyError and a reason, never another exception, and counts are
checked before anything is allocated.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zkp.circuit import load_circuit, shipped_circuits
from zkp.formats import FIELD_MODULUS, SCALAR_FIELD
from zkp.zkey import ZkeyError, parse_zkey, read_zkey

SHIPPED = shipped_circuits()
PREIMAGE = load_circuit(SHIPPED["poseidon_preimage"])
BLOB = PREIMAGE.zkey_path.read_bytes()
R_MONT_Q = 2**256 % FIELD_MODULUS


def sections(blob: bytes) -> list[tuple[int, bytes]]:
    (count,) = struct.unpack_from("<I", blob, 8)
    out, pos = [], 12
    for _ in range(count):
        kind, size = struct.unpack_from("<IQ", blob, pos)
        out.append((kind, blob[pos + 12 : pos + 12 + size]))
        pos += 12 + size
    return out


def build(parts: list[tuple[int, bytes]], version: int = 1) -> bytes:
    body = b"".join(struct.pack("<IQ", kind, len(data)) + data for kind, data in parts)
    return b"zkey" + struct.pack("<II", version, len(parts)) + body


def replaced(kind: int, data: bytes, blob: bytes = BLOB) -> bytes:
    return build([(k, data if k == kind else d) for k, d in sections(blob)])


def section(kind: int) -> bytes:
    return dict(sections(BLOB))[kind]


def patch(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


# --- the shipped keys ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["poseidon_preimage", "private_stats"])
def test_shipped_keys_parse_and_match_their_verification_keys(name: str) -> None:
    circuit = load_circuit(SHIPPED[name])
    pk = read_zkey(circuit.zkey_path)
    assert pk.verifying_key() == circuit.vk
    assert pk.n_public == circuit.vk.n_public
    assert pk.domain_size >= circuit.constraints + pk.n_public + 1
    assert pk.domain_size == 1 << pk.power
    assert len(pk.a) == len(pk.b1) == len(pk.b2) == pk.n_vars
    assert len(pk.c) == pk.n_vars - pk.n_public - 1
    assert len(pk.h) == pk.domain_size
    assert {c.matrix for c in pk.coefficients} == {0, 1}
    assert all(0 < c.value < SCALAR_FIELD for c in pk.coefficients)


def test_public_inputs_have_their_identity_constraints() -> None:
    # snarkjs adds A[nConstraints + s][s] = 1 for s = 0..nPublic
    pk = parse_zkey(BLOB)
    ones = {(c.constraint, c.signal) for c in pk.coefficients if c.matrix == 0 and c.value == 1}
    constraints = PREIMAGE.constraints
    assert {(constraints + s, s) for s in range(pk.n_public + 1)} <= ones


def test_the_rebuilt_container_is_byte_identical() -> None:
    assert build(sections(BLOB)) == BLOB


# --- hostile files ---------------------------------------------------------------------------


@pytest.mark.parametrize("cut", [0, 3, 11, 12, 20, 100, 700, 5000, 60_000, len(BLOB) - 1])
def test_truncated_files_are_refused(cut: int) -> None:
    with pytest.raises(ZkeyError) as info:
        parse_zkey(BLOB[:cut])
    assert info.value.reason.startswith("circuit.zkey: ")
    assert info.value.hint


@pytest.mark.parametrize(
    ("blob", "reason"),
    [
        (b"\x00" * 64, "no 'zkey' magic"),
        (b"zkey" + struct.pack("<II", 2, 10), "version 2"),
        (b"zkey" + struct.pack("<II", 1, 0), "claims 0 sections"),
        (b"zkey" + struct.pack("<II", 1, 1000), "claims 1000 sections"),
        (b"zkey" + struct.pack("<II", 1, 1) + struct.pack("<IQ", 1, 2**60), "past the end"),
        (build([(k, d) for k, d in sections(BLOB) if k != 9]), "section 9 is missing"),
        (build([*sections(BLOB), (3, section(3))]), "section 3 appears twice"),
        (replaced(1, struct.pack("<I", 2)), "protocol 2 is not Groth16"),
        (replaced(1, struct.pack("<I", 1) + b"\0"), "holds 5 bytes, not 4"),
        (replaced(2, section(2)[:-1]), "section 2 .* holds"),
    ],
)
def test_malformed_containers_are_refused(blob: bytes, reason: str) -> None:
    with pytest.raises(ZkeyError, match=reason):
        parse_zkey(blob)


def _header_with(offset: int, value: bytes) -> bytes:
    return replaced(2, patch(section(2), offset, value))


# Groth16 header offsets: n8q 0, q 4, n8r 36, r 40, nVars 72, nPublic 76, domain 80, alpha1 84
@pytest.mark.parametrize(
    ("blob", "reason"),
    [
        (_header_with(4, (FIELD_MODULUS + 2).to_bytes(32, "little")), "base field is not BN254"),
        (_header_with(40, (7).to_bytes(32, "little")), "scalar field is not BN254"),
        (_header_with(72, struct.pack("<I", 0)), "claims 0 variables"),
        (_header_with(72, struct.pack("<I", 2**31)), "claims 2147483648 variables"),
        (_header_with(76, struct.pack("<I", 10_000)), "public inputs but"),
        (_header_with(80, struct.pack("<I", 300)), "domain size 300 is not a power of two"),
        (_header_with(80, struct.pack("<I", 2**30)), "not a power of two up to"),
        (_header_with(84, (5).to_bytes(32, "little")), "section 2: a G1 point is not on the curve"),
        (_header_with(84, (FIELD_MODULUS).to_bytes(32, "little")), "not below the field modulus"),
        (_header_with(212, (5).to_bytes(32, "little")), "G2 point is not on the twist"),
    ],
)
def test_lying_headers_are_refused(blob: bytes, reason: str) -> None:
    with pytest.raises(ZkeyError, match=reason):
        parse_zkey(blob)


def test_sizes_claimed_in_the_header_must_match_the_sections() -> None:
    # One more variable than the point sections hold: refused before reading them.
    n_vars = struct.unpack_from("<I", section(2), 72)[0]
    blob = _header_with(72, struct.pack("<I", n_vars + 1))
    with pytest.raises(ZkeyError, match=r"holds \d+ bytes, not \d+"):
        parse_zkey(blob)


def _coefficient_with(field: int, value: int) -> bytes:
    data = section(4)
    entry = 4  # the first coefficient: matrix, constraint, signal (u32 each), value
    if field < 3:
        return replaced(4, patch(data, entry + 4 * field, struct.pack("<I", value)))
    return replaced(4, patch(data, entry + 12, value.to_bytes(32, "little")))


@pytest.mark.parametrize(
    ("blob", "reason"),
    [
        (_coefficient_with(0, 2), "names matrix 2"),
        (_coefficient_with(1, 2**20), "names constraint 1048576 of 256"),
        (_coefficient_with(2, 10**6), "names signal 1000000 of 245"),
        (_coefficient_with(3, SCALAR_FIELD), "not below the scalar field"),
        (replaced(4, struct.pack("<I", 2**31) + section(4)[4:]), "section 4 .* holds"),
        (replaced(4, b"\x01"), "section 4 .* ends early"),
    ],
)
def test_bad_coefficients_are_refused(blob: bytes, reason: str) -> None:
    with pytest.raises(ZkeyError, match=reason):
        parse_zkey(blob)


def test_a_point_off_the_curve_in_a_big_section_is_refused() -> None:
    h = section(9)
    off_curve = (3 * R_MONT_Q % FIELD_MODULUS).to_bytes(32, "little") * 2  # (3, 3)
    with pytest.raises(ZkeyError, match="section 9 .*: a G1 point is not on the curve"):
        parse_zkey(replaced(9, patch(h, 64 * 17, off_curve)))


def test_points_at_infinity_are_allowed() -> None:
    h = section(9)
    pk = parse_zkey(replaced(9, patch(h, 0, b"\0" * 64)))
    assert pk.h[0] == (0, 0)


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    flips=st.lists(
        st.tuples(st.integers(0, len(BLOB) - 1), st.integers(1, 255)), min_size=1, max_size=4
    )
)
def test_any_corruption_is_a_zkey_error_or_a_key(flips: list[tuple[int, int]]) -> None:
    data = bytearray(BLOB)
    for offset, xor in flips:
        data[offset] ^= xor
    try:
        parse_zkey(bytes(data))
    except ZkeyError:
        pass


def test_read_zkey_caps_the_size_and_refuses_symlinks(tmp_path: Path) -> None:
    path = tmp_path / "k.zkey"
    path.write_bytes(BLOB)
    assert read_zkey(path).n_vars == 245
    with pytest.raises(ZkeyError, match="over the 1000-byte limit"):
        read_zkey(path, max_bytes=1000)
    link = tmp_path / "link.zkey"
    link.symlink_to(path)
    with pytest.raises(ZkeyError, match="cannot open"):
        read_zkey(link)
    with pytest.raises(ZkeyError, match="cannot open"):
        read_zkey(tmp_path / "missing.zkey")

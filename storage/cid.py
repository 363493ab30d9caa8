"""Content ids: the CIDv1 / multihash subset that maskd stores and exchanges.

We hash with sha2-256 and name blocks with CIDv1 in base32 (``bafk…`` for raw
leaves, ``bafy…`` for dag-pb nodes), exactly as ``ipfs add --cid-version=1``
prints them.

Encoding a CID is on the importer's hot path (one per 256 KiB block), and
``multiformats.CID`` costs ~300 µs per construction on our machines, which alone
would be ~1.4 s per GB. So the fixed shape we emit (version 1, sha2-256,
base32) is encoded here by hand with ``base64`` and varints; every other input
form (CIDv0 ``Qm…``, other multibases) is parsed by ``multiformats``, and a unit
test checks both paths agree. The canonical form used as a key everywhere in
``storage`` is the base32 CIDv1 string; a CIDv0 is the same as CIDv1 dag-pb.
"""

from __future__ import annotations

import base64
import hashlib
from typing import NamedTuple

from protocol.errors import StorageError
from protocol.varint import decode_varint, encode_varint

RAW = 0x55
DAG_PB = 0x70
SHA2_256 = 0x12
IDENTITY = 0x00
CODECS = {RAW: "raw", DAG_PB: "dag-pb"}


class CidParts(NamedTuple):
    """A decoded CID: enough to re-hash a block and to know how to read it."""

    version: int
    codec: int
    hash_code: int
    digest: bytes


def cid_bytes_v1(codec: int, digest: bytes) -> bytes:
    """Binary CIDv1 for a sha2-256 digest."""
    return b"\x01" + encode_varint(codec) + b"\x12\x20" + digest


def format_cid(cid_bytes: bytes) -> str:
    """base32 multibase string of a binary CIDv1, unchecked (the hot path)."""
    return "b" + base64.b32encode(cid_bytes).decode("ascii").lower().rstrip("=")


def cid_to_str(cid_bytes: bytes) -> str:
    """Canonical string (base32 CIDv1) of a binary CID; a CIDv0 becomes CIDv1 dag-pb."""
    parts = parse_cid_bytes(cid_bytes)
    if parts.version == 0:
        cid_bytes = b"\x01" + encode_varint(DAG_PB) + cid_bytes
    return format_cid(cid_bytes)


def cid_from_digest(codec: int, digest: bytes) -> str:
    return format_cid(cid_bytes_v1(codec, digest))


def parse_cid_bytes(cid_bytes: bytes) -> CidParts:
    """Decode a binary CID (v0 or v1); raise StorageError ``cid_invalid`` if malformed."""
    try:
        if len(cid_bytes) == 34 and cid_bytes[0] == 0x12 and cid_bytes[1] == 0x20:
            return CidParts(0, DAG_PB, SHA2_256, bytes(cid_bytes[2:]))
        version, pos = decode_varint(cid_bytes, 0)
        if version != 1:
            raise ValueError(f"unsupported CID version {version}")
        codec, pos = decode_varint(cid_bytes, pos)
        hash_code, pos = decode_varint(cid_bytes, pos)
        length, pos = decode_varint(cid_bytes, pos)
        digest = bytes(cid_bytes[pos:])
        if len(digest) != length:
            raise ValueError("multihash length does not match digest")
    except ValueError as e:
        raise StorageError(
            f"invalid binary CID {bytes(cid_bytes[:40]).hex()}: {e}", code="cid_invalid"
        ) from None
    return CidParts(1, codec, hash_code, digest)


def cid_to_bytes(cid: str) -> bytes:
    """Binary form of a CID string in any multibase (v0 stays v0)."""
    if cid.startswith("b") and cid[1:2] != "" and cid.islower():
        try:
            s = cid[1:].upper()
            return base64.b32decode(s + "=" * (-len(s) % 8))
        except ValueError:  # binascii.Error is a ValueError
            pass  # fall through to the general parser for a precise error
    try:
        from multiformats import CID

        return bytes(CID.decode(cid))
    except Exception as e:  # multiformats raises several unrelated types
        raise StorageError(
            f"invalid CID {cid[:80]!r}: {e}",
            code="cid_invalid",
            hint="a CID looks like bafy… or bafk… (CIDv1, base32) or Qm… (CIDv0)",
        ) from None


def parse_cid(cid: str) -> CidParts:
    return parse_cid_bytes(cid_to_bytes(cid))


def canonical(cid: str) -> str:
    """The key form used by the store: base32 CIDv1; raises ``cid_invalid``."""
    if cid.startswith("bafk") or cid.startswith("bafy"):
        parse_cid(cid)  # validate
        return cid
    return cid_to_str(cid_to_bytes(cid))


def codec_of(cid: str) -> int:
    return parse_cid(cid).codec


def cid_of_bytes(data: bytes, codec: int = RAW) -> str:
    """CID of one block; for ``RAW`` and ≤ 256 KiB this is what ``ipfs add`` gives."""
    return cid_from_digest(codec, hashlib.sha256(data).digest())


def verify_block(cid: str | bytes, data: bytes | memoryview) -> bool:
    """Re-hash ``data`` and compare with the CID's multihash.

    Unsupported hash functions verify as False rather than raising, so a peer
    cannot make us accept a block we cannot check.
    """
    parts = parse_cid_bytes(cid) if isinstance(cid, bytes) else parse_cid(cid)
    if parts.hash_code == SHA2_256:
        return len(parts.digest) == 32 and hashlib.sha256(data).digest() == parts.digest
    if parts.hash_code == IDENTITY:
        return bytes(data) == parts.digest
    return False

"""CIDs must be byte-for-byte what Kubo prints for `ipfs add --cid-version=1 --raw-leaves`."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pytest
from multiformats import CID, multihash

from protocol.errors import StorageError
from storage.cid import (
    DAG_PB,
    RAW,
    canonical,
    cid_of_bytes,
    cid_to_bytes,
    cid_to_str,
    decode_varint,
    encode_varint,
    parse_cid,
    verify_block,
)
from storage.unixfs import import_file

# CIDs a real Kubo gave, copied from ../shared/vectors
VECTORS = json.loads(
    (Path(__file__).resolve().parents[1] / "data" / "vectors" / "cid_v1_rawleaves.json").read_text()
)


class ListSink:
    def __init__(self) -> None:
        self.blocks: list[tuple[str, bytes]] = []

    def __call__(self, cid: str, data: bytes) -> None:
        self.blocks.append((cid, data))


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: f"size={c['size']}")
def test_golden_random_cases_match_kubo(case: dict) -> None:
    data = random.Random(case["size"]).randbytes(case["size"])
    result = import_file(io.BytesIO(data), ListSink())
    assert result.cid == case["cid"]
    assert result.size == case["size"]


@pytest.mark.parametrize("case", VECTORS["text_cases"], ids=lambda c: c["text"])
def test_golden_text_cases_match_kubo(case: dict) -> None:
    data = case["text"].encode("utf-8")
    assert import_file(io.BytesIO(data), ListSink()).cid == case["cid"]
    assert cid_of_bytes(data) == case["cid"]


def test_every_emitted_block_verifies_and_root_is_last() -> None:
    sink = ListSink()
    result = import_file(io.BytesIO(random.Random(262145).randbytes(262145)), sink)
    assert [c for c, _ in sink.blocks][-1] == result.cid
    assert result.blocks == len(sink.blocks) == 3
    assert all(verify_block(c, d) for c, d in sink.blocks)


def test_fast_encoding_agrees_with_multiformats() -> None:
    for codec, name in ((RAW, "raw"), (DAG_PB, "dag-pb")):
        digest = random.Random(codec).randbytes(32)
        ours = cid_of_bytes(b"x", codec)
        mf = CID("base32", 1, name, multihash.digest(b"x", "sha2-256"))
        assert ours == str(mf)
        assert cid_to_bytes(ours) == bytes(mf)
        mf2 = CID("base32", 1, name, multihash.wrap(digest, "sha2-256"))
        assert cid_to_str(bytes(mf2)) == str(mf2)


def test_cidv0_and_base58_canonicalise_to_base32_v1() -> None:
    v1 = cid_of_bytes(b"node", DAG_PB)
    v0 = str(CID.decode(v1).set(version=0, base="base58btc"))
    assert v0.startswith("Qm")
    assert canonical(v0) == v1
    b58 = str(CID.decode(v1).set(base="base58btc"))
    assert canonical(b58) == v1
    assert parse_cid(v0).codec == DAG_PB


@pytest.mark.parametrize(
    "bad", ["", "bafy", "hello", "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyk"]
)
def test_invalid_cids_raise_cid_invalid(bad: str) -> None:
    with pytest.raises(StorageError) as info:
        parse_cid(bad)
    assert info.value.code == "cid_invalid"


def test_verify_block_detects_a_flipped_bit() -> None:
    data = bytearray(b"some block")
    cid = cid_of_bytes(bytes(data))
    data[3] ^= 1
    assert not verify_block(cid, bytes(data))


@pytest.mark.parametrize("n", [0, 1, 127, 128, 300, 2**32, 2**63 - 1])
def test_varint_round_trip(n: int) -> None:
    enc = encode_varint(n)
    assert decode_varint(enc) == (n, len(enc))


def test_varint_rejects_truncated_and_non_minimal() -> None:
    with pytest.raises(ValueError):
        decode_varint(b"\x80")
    with pytest.raises(ValueError):
        decode_varint(b"\x81\x00")

"""The job binding: the public input that ties a proof to one job and one pair.

Groth16 proofs are malleable and say nothing about who made them or for
which job. Every circuit this project runs therefore takes one extra public
input, the binding, and it is always the LAST public signal:

    binding = uint256(keccak256(abi.encode(bytes32 jobId, address requester,
                                           address provider))) mod r

where r is the BN254 scalar field order. The requester checks it before it
pays, and the contracts recompute it with the same expression, so a proof can
be neither replayed for another job nor claimed by another provider. Pure.
"""

from __future__ import annotations

from eth_abi import encode
from eth_utils import keccak, to_checksum_address

__all__ = ["SNARK_SCALAR_FIELD", "job_binding", "job_id_bytes"]

#: r, the order of BN254's G1 (the field circom signals live in).
SNARK_SCALAR_FIELD = 21888242871839275222246405745257275088548364400416034343698204186575808495617


def job_id_bytes(job_id: str | bytes) -> bytes:
    """A job id as its 32 bytes (hex with or without 0x, or bytes); ValueError otherwise."""
    if isinstance(job_id, str):
        text = job_id[2:] if job_id.startswith(("0x", "0X")) else job_id
        if len(text) != 64:
            raise ValueError(f"a job id is 32 bytes of hex, got {len(text)} characters")
        raw = bytes.fromhex(text)
    else:
        raw = bytes(job_id)
    if len(raw) != 32:
        raise ValueError(f"a job id is 32 bytes, got {len(raw)}")
    return raw


def job_binding(job_id: str | bytes, requester: str, provider: str) -> int:
    """The binding public input for a job between ``requester`` and ``provider``."""
    packed = encode(
        ["bytes32", "address", "address"],
        [job_id_bytes(job_id), to_checksum_address(requester), to_checksum_address(provider)],
    )
    return int.from_bytes(keccak(packed), "big") % SNARK_SCALAR_FIELD

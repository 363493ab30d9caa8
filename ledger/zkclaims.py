"""zk disputes in Python: the signed ZkResult and the contracts' argument tuples.

A provider signs each zk result it sends with EIP-712 ``ZkResult(bytes32
jobId, address requester, address provider, bytes32 circuitId, bytes32
publicHash, bytes32 proofHash)`` in the escrow's domain, where ``publicHash``
is ``keccak256(abi.encodePacked(uint256[] publicSignals))`` and ``proofHash``
``keccak256(abi.encodePacked(uint256[8] proof))`` (the proof in EIP-197
order, ``zkp.formats.proof_calldata``). The signature is the evidence
``SettlementEscrow.slash`` takes: whoever holds a signed result whose proof
does not verify (or whose binding is not the job's) can have the provider's
stake slashed. This module makes and checks those signatures exactly as the
contract hashes them, and builds the tuples ``claimWithProof``, ``slash`` and
``ComputeRequests.fulfill`` take.

Everything here may meet a peer's bytes, so inputs are checked and bounded:
a malformed proof, signal list, id or address raises :class:`ZkClaimError`
(a ``ValueError``) with a reason, and the ``verify``/``recover`` functions
return False/None instead of raising. Pure: no chain, no clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eth_abi import encode
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak

from ledger.agreement import agreement_message
from ledger.vouchers import MAX_UINT256, Domain, checksum
from protocol.market import AgreementTerms

__all__ = [
    "MAX_PUBLIC_SIGNALS",
    "ZK_RESULT_TYPES",
    "ZkClaimError",
    "agreement_args",
    "checked_proof",
    "checked_public",
    "claim_args",
    "fulfill_args",
    "proof_hash",
    "public_hash",
    "recover_zk_result_signer",
    "request_job_id",
    "sign_zk_result",
    "slash_args",
    "zk_job_args",
    "zk_result_digest",
    "zk_result_message",
    "verify_zk_result",
]

#: The most public signals the on-chain verifier takes (Groth16Verifier.MAX_PUBLIC).
MAX_PUBLIC_SIGNALS = 256

ZK_RESULT_TYPES: dict[str, list[dict[str, str]]] = {
    "ZkResult": [
        {"name": "jobId", "type": "bytes32"},
        {"name": "requester", "type": "address"},
        {"name": "provider", "type": "address"},
        {"name": "circuitId", "type": "bytes32"},
        {"name": "publicHash", "type": "bytes32"},
        {"name": "proofHash", "type": "bytes32"},
    ]
}

_SECP256K1_HALF_N = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0


class ZkClaimError(ValueError):
    """A proof, signal list, id or address that cannot go on chain; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _uint256(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_UINT256:
        raise ZkClaimError(f"{what} is not a uint256: {str(value)[:80]!r}")
    return value


def checked_proof(proof: Sequence[int]) -> tuple[int, ...]:
    """The proof as 8 uint256 (EIP-197 order, ``zkp.formats.proof_calldata``)."""
    if isinstance(proof, str | bytes) or not isinstance(proof, Sequence) or len(proof) != 8:
        raise ZkClaimError(
            "a proof is 8 uint256 (a.x, a.y, b.x.c1, b.x.c0, b.y.c1, b.y.c0, c.x, c.y)"
        )
    return tuple(_uint256(v, f"proof[{i}]") for i, v in enumerate(proof))


def checked_public(public: Sequence[int]) -> tuple[int, ...]:
    """The public signals as at most :data:`MAX_PUBLIC_SIGNALS` uint256 (range
    against r is the verifier's business: a signal >= r simply does not verify)."""
    if isinstance(public, str | bytes) or not isinstance(public, Sequence):
        raise ZkClaimError("public signals are a list of uint256")
    if len(public) > MAX_PUBLIC_SIGNALS:
        raise ZkClaimError(
            f"{len(public)} public signals; the verifier takes at most {MAX_PUBLIC_SIGNALS}"
        )
    return tuple(_uint256(v, f"public[{i}]") for i, v in enumerate(public))


def _bytes32(value: str | bytes, what: str) -> bytes:
    if isinstance(value, str):
        text = value[2:] if value.startswith(("0x", "0X")) else value
        if len(text) != 64:
            raise ZkClaimError(f"{what} is 32 bytes of hex, got {len(text)} characters")
        try:
            return bytes.fromhex(text)
        except ValueError:
            raise ZkClaimError(f"{what} is not hex: {value[:80]!r}") from None
    if not isinstance(value, bytes | bytearray) or len(value) != 32:
        raise ZkClaimError(f"{what} is not 32 bytes")
    return bytes(value)


def _address(value: str, what: str) -> str:
    try:
        return checksum(value)
    except ValueError as e:
        raise ZkClaimError(f"{what}: {e}") from None


def public_hash(public: Sequence[int]) -> bytes:
    """keccak256(abi.encodePacked(uint256[] publicSignals))."""
    return keccak(b"".join(v.to_bytes(32, "big") for v in checked_public(public)))


def proof_hash(proof: Sequence[int]) -> bytes:
    """keccak256(abi.encodePacked(uint256[8] proof))."""
    return keccak(b"".join(v.to_bytes(32, "big") for v in checked_proof(proof)))


def zk_result_message(
    job_id: str | bytes,
    requester: str,
    provider: str,
    circuit_id: str | bytes,
    proof: Sequence[int],
    public: Sequence[int],
) -> dict[str, Any]:
    """The EIP-712 ``message`` of a ZkResult (ZkClaimError on a malformed field)."""
    return {
        "jobId": _bytes32(job_id, "job id"),
        "requester": _address(requester, "requester"),
        "provider": _address(provider, "provider"),
        "circuitId": _bytes32(circuit_id, "circuit id"),
        "publicHash": public_hash(public),
        "proofHash": proof_hash(proof),
    }


def zk_result_digest(
    domain: Domain,
    job_id: str | bytes,
    requester: str,
    provider: str,
    circuit_id: str | bytes,
    proof: Sequence[int],
    public: Sequence[int],
) -> bytes:
    """The EIP-712 digest a provider signs (``SettlementEscrow.zkResultDigest``)."""
    message = zk_result_message(job_id, requester, provider, circuit_id, proof, public)
    signable = encode_typed_data(domain.typed(), ZK_RESULT_TYPES, message)
    return keccak(b"\x19" + signable.version + signable.header + signable.body)


def sign_zk_result(
    domain: Domain,
    key: bytes,
    job_id: str | bytes,
    requester: str,
    provider: str,
    circuit_id: str | bytes,
    proof: Sequence[int],
    public: Sequence[int],
) -> bytes:
    """The provider's 65-byte (r||s||v) signature over its zk result.

    ``provider`` must be ``key``'s account: a provider signs only its own results."""
    provider = _address(provider, "provider")
    if Account.from_key(key).address != provider:
        raise ZkClaimError("the key is not the provider's: a provider signs its own results")
    message = zk_result_message(job_id, requester, provider, circuit_id, proof, public)
    signed = Account.sign_typed_data(key, domain.typed(), ZK_RESULT_TYPES, message)
    return bytes(signed.signature)


def recover_zk_result_signer(
    domain: Domain,
    job_id: str | bytes,
    requester: str,
    provider: str,
    circuit_id: str | bytes,
    proof: Sequence[int],
    public: Sequence[int],
    signature: bytes,
) -> str | None:
    """Who signed, or None for anything malformed (it may come from a peer).
    High-s and v outside {27, 28} are refused, as the escrow refuses them."""
    if not isinstance(signature, bytes | bytearray) or len(signature) != 65:
        return None
    if signature[64] not in (27, 28) or int.from_bytes(signature[32:64], "big") > _SECP256K1_HALF_N:
        return None
    try:
        message = zk_result_message(job_id, requester, provider, circuit_id, proof, public)
        signable = encode_typed_data(domain.typed(), ZK_RESULT_TYPES, message)
        return Account.recover_message(signable, signature=bytes(signature))
    except Exception:  # ZkClaimError, and eth_account's zoo of types for bad input
        return None


def verify_zk_result(
    domain: Domain,
    job_id: str | bytes,
    requester: str,
    provider: str,
    circuit_id: str | bytes,
    proof: Sequence[int],
    public: Sequence[int],
    signature: bytes,
) -> bool:
    """True when ``provider`` signed this result (what ``slash`` checks first)."""
    signer = recover_zk_result_signer(
        domain, job_id, requester, provider, circuit_id, proof, public, signature
    )
    return signer is not None and isinstance(provider, str) and signer.lower() == provider.lower()


# ------------------------------------------------------------ contract arguments


def agreement_args(terms: AgreementTerms) -> tuple[Any, ...]:
    """``SettlementEscrow.Agreement`` as a tuple, in AGREEMENT_TYPES order (what
    the requester signed; ``ledger.agreement.agreement_message`` makes the values)."""
    try:
        m = agreement_message(terms)
    except ValueError as e:
        raise ZkClaimError(f"the agreement has a malformed field: {e}") from None
    return (
        m["jobId"],
        m["requesterPeer"],
        _address(m["requester"], "requester"),
        m["providerPeer"],
        _address(m["provider"], "provider"),
        _uint256(m["priceTotal"], "priceTotal"),
        m["cpu"],
        m["memoryMb"],
        m["gpu"],
        m["maxSeconds"],
        m["maxFuel"],
        m["deadline"],
        m["specCid"],
        m["heartbeatIntervalMs"],
        m["circuitId"],
    )


def claim_args(
    terms: AgreementTerms,
    requester_signature: bytes,
    proof: Sequence[int],
    public: Sequence[int],
) -> tuple[Any, ...]:
    """``claimWithProof(agreement, requesterSignature, proof, publicSignals)``'s arguments."""
    if not isinstance(requester_signature, bytes | bytearray) or len(requester_signature) != 65:
        raise ZkClaimError("the requester's signature is 65 bytes (r||s||v)")
    return (
        agreement_args(terms),
        bytes(requester_signature),
        list(checked_proof(proof)),
        list(checked_public(public)),
    )


def zk_job_args(
    job_id: str | bytes, requester: str, provider: str, circuit_id: str | bytes
) -> tuple[bytes, str, str, bytes]:
    """``SettlementEscrow.ZkJob(jobId, requester, provider, circuitId)``."""
    return (
        _bytes32(job_id, "job id"),
        _address(requester, "requester"),
        _address(provider, "provider"),
        _bytes32(circuit_id, "circuit id"),
    )


def slash_args(
    job_id: str | bytes,
    requester: str,
    provider: str,
    circuit_id: str | bytes,
    provider_signature: bytes,
    proof: Sequence[int],
    public: Sequence[int],
) -> tuple[Any, ...]:
    """``slash(job, providerSignature, proof, publicSignals)``'s arguments."""
    if not isinstance(provider_signature, bytes | bytearray) or len(provider_signature) != 65:
        raise ZkClaimError("the provider's signature is 65 bytes (r||s||v)")
    return (
        zk_job_args(job_id, requester, provider, circuit_id),
        bytes(provider_signature),
        list(checked_proof(proof)),
        list(checked_public(public)),
    )


def fulfill_args(
    request_id: int, provider: str, proof: Sequence[int], public: Sequence[int]
) -> tuple[Any, ...]:
    """``ComputeRequests.fulfill(requestId, provider, proof, publicSignals)``'s arguments."""
    return (
        _uint256(request_id, "request id"),
        _address(provider, "provider"),
        list(checked_proof(proof)),
        list(checked_public(public)),
    )


def request_job_id(chain_id: int, requests: str, request_id: int) -> bytes:
    """``ComputeRequests.jobIdOf``: keccak256(abi.encode(chainid, contract, requestId)),
    the job id a DApp's request is placed on the mesh with."""
    return keccak(
        encode(
            ["uint256", "address", "uint256"],
            [
                _uint256(chain_id, "chain id"),
                _address(requests, "ComputeRequests"),
                _uint256(request_id, "request id"),
            ],
        )
    )

"""EIP-712 agreements and signed results, with the account (secp256k1) key.

An agreement is typed data, not an opaque blob, for two reasons: a wallet
(MetaMask, geth) shows a person every field before they sign, and the
settlement escrow can recover the signer on chain with ``ecrecover`` over the
same struct hash when the parties disagree. The domain binds a signature to
one chain and one escrow contract, so it cannot be replayed elsewhere.

Results are signed with EIP-191 (``personal_sign``) over the exact bytes of
``protocol.market.result_signing_bytes``: they are checked off chain only.

Pure functions over keys and structs; signing costs ~1 ms, recovery ~0.5 ms,
so the cores call them inline.
"""

from __future__ import annotations

from typing import Any

from eth_account import Account
from eth_account.messages import encode_defunct, encode_typed_data

from ledger.vouchers import Domain, sign_voucher
from protocol.market import AgreementTerms, JobResult, result_signing_bytes

__all__ = [
    "AGREEMENT_TYPES",
    "DOMAIN_NAME",
    "DOMAIN_VERSION",
    "ZERO_ADDRESS",
    "AccountKeys",
    "agreement_message",
    "recover_agreement_signer",
    "sign_agreement",
    "sign_result",
    "verify_agreement",
    "verify_result",
]

DOMAIN_NAME = "maskd"
DOMAIN_VERSION = "1"
#: The domain's contract when no chain is configured (``chain.backend = "off"``).
ZERO_ADDRESS = "0x" + "00" * 20

AGREEMENT_TYPES: dict[str, list[dict[str, str]]] = {
    "Agreement": [
        {"name": "jobId", "type": "bytes32"},
        {"name": "requesterPeer", "type": "string"},
        {"name": "requester", "type": "address"},
        {"name": "providerPeer", "type": "string"},
        {"name": "provider", "type": "address"},
        {"name": "priceTotal", "type": "uint256"},
        {"name": "cpu", "type": "uint32"},
        {"name": "memoryMb", "type": "uint64"},
        {"name": "gpu", "type": "uint32"},
        {"name": "maxSeconds", "type": "uint64"},
        {"name": "maxFuel", "type": "uint64"},
        {"name": "deadline", "type": "uint64"},
        {"name": "specCid", "type": "string"},
        {"name": "heartbeatIntervalMs", "type": "uint32"},
        {"name": "circuitId", "type": "bytes32"},
    ]
}


def _domain(terms: AgreementTerms) -> dict[str, Any]:
    return {
        "name": DOMAIN_NAME,
        "version": DOMAIN_VERSION,
        "chainId": terms.chain_id,
        "verifyingContract": terms.verifying_contract,
    }


def agreement_message(terms: AgreementTerms) -> dict[str, Any]:
    """The EIP-712 ``message`` for ``terms`` (raises ValueError on a malformed field)."""
    return {
        "jobId": bytes.fromhex(terms.job_id),
        "requesterPeer": terms.requester_peer,
        "requester": terms.requester_account,
        "providerPeer": terms.provider_peer,
        "provider": terms.provider_account,
        "priceTotal": int(terms.price_total),
        "cpu": terms.cpu,
        "memoryMb": terms.memory_mb,
        "gpu": terms.gpu,
        "maxSeconds": terms.max_seconds,
        "maxFuel": terms.max_fuel,
        "deadline": terms.deadline,
        "specCid": terms.spec_cid,
        "heartbeatIntervalMs": terms.heartbeat_interval_ms,
        "circuitId": circuit_id_bytes(terms.circuit_id),
    }


def circuit_id_bytes(circuit_id: str) -> bytes:
    """A terms ``circuit_id`` as bytes32: empty is zero (not a zk job); ValueError otherwise."""
    if not circuit_id:
        return bytes(32)
    raw = bytes.fromhex(circuit_id)
    if len(raw) != 32:
        raise ValueError(f"circuit_id is 32 bytes of hex, got {len(raw)} bytes")
    return raw


def sign_agreement(terms: AgreementTerms, account_key: bytes) -> bytes:
    signed = Account.sign_typed_data(
        account_key, _domain(terms), AGREEMENT_TYPES, agreement_message(terms)
    )
    return bytes(signed.signature)


def recover_agreement_signer(terms: AgreementTerms, signature: bytes) -> str | None:
    """The address that signed, or None for a malformed signature or terms."""
    try:
        signable = encode_typed_data(_domain(terms), AGREEMENT_TYPES, agreement_message(terms))
        return Account.recover_message(signable, signature=signature)
    except Exception:  # eth_account raises a zoo of types for bad input
        return None


def verify_agreement(terms: AgreementTerms, signature: bytes, account: str) -> bool:
    signer = recover_agreement_signer(terms, signature)
    return signer is not None and signer.lower() == account.lower()


def sign_result(result: JobResult, account_key: bytes) -> bytes:
    signed = Account.sign_message(
        encode_defunct(primitive=result_signing_bytes(result)), account_key
    )
    return bytes(signed.signature)


def verify_result(result: JobResult, account: str) -> bool:
    try:
        signer = Account.recover_message(
            encode_defunct(primitive=result_signing_bytes(result)), signature=result.signature
        )
    except Exception:
        return False
    return signer.lower() == account.lower()


class AccountKeys:
    """``protocol.market.MarketKeys`` over one account key, for the market cores."""

    def __init__(self, account_key: bytes, domain: Domain | None = None):
        self._key = account_key
        self._account = Account.from_key(account_key).address
        #: the escrow this node settles with: vouchers are signed in its domain
        self.domain = domain or Domain(31337, ZERO_ADDRESS)

    @property
    def account(self) -> str:
        return self._account

    def sign_agreement(self, terms: AgreementTerms) -> bytes:
        return sign_agreement(terms, self._key)

    def verify_agreement(self, terms: AgreementTerms, signature: bytes, account: str) -> bool:
        return verify_agreement(terms, signature, account)

    def sign_result(self, result: JobResult) -> bytes:
        return sign_result(result, self._key)

    def verify_result(self, result: JobResult, account: str) -> bool:
        return verify_result(result, account)

    def sign_voucher(self, provider_account: str, cumulative: int) -> bytes:
        return sign_voucher(self.domain, self._key, provider_account, cumulative).signature

    def __repr__(self) -> str:  # never the key
        return f"AccountKeys({self._account})"

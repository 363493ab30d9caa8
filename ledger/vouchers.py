"""Cumulative EIP-712 vouchers: what a requester signs so a provider can be paid.

One voucher per requester-provider channel carries the channel's total owed so
far; the escrow pays only the increase over what it already settled, so the
latest voucher covers any number of jobs and an old one pays nothing. The
typed data is exactly what ``SettlementEscrow`` hashes (docs/ledger.md): the
domain binds a voucher to one chain and one escrow, the struct to one channel.

Pure functions over keys; signing ~1 ms with coincurve, recovery ~0.5 ms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import is_checksum_address, is_hex_address, to_checksum_address

__all__ = [
    "DOMAIN_NAME",
    "DOMAIN_VERSION",
    "MAX_UINT256",
    "VOUCHER_TYPES",
    "Domain",
    "SignedVoucher",
    "checksum",
    "recover_voucher_signer",
    "sign_voucher",
    "verify_voucher",
]

DOMAIN_NAME = "maskd"
DOMAIN_VERSION = "1"
MAX_UINT256 = 2**256 - 1

VOUCHER_TYPES: dict[str, list[dict[str, str]]] = {
    "Voucher": [
        {"name": "requester", "type": "address"},
        {"name": "provider", "type": "address"},
        {"name": "cumulative", "type": "uint256"},
    ]
}


def checksum(address: str) -> str:
    """The EIP-55 form of a 0x address; ValueError (with the value) if it is not one."""
    if not isinstance(address, str) or not is_hex_address(address):
        raise ValueError(f"not an address: {str(address)[:64]!r}")
    if address != address.lower() and not is_checksum_address(address):
        raise ValueError(f"bad EIP-55 checksum: {address!r}")
    return to_checksum_address(address)


@dataclass(frozen=True, slots=True)
class Domain:
    """The EIP-712 domain of one escrow on one chain (agreements use it too)."""

    chain_id: int
    escrow: str

    def typed(self) -> dict[str, Any]:
        return {
            "name": DOMAIN_NAME,
            "version": DOMAIN_VERSION,
            "chainId": self.chain_id,
            "verifyingContract": self.escrow,
        }


@dataclass(frozen=True, slots=True)
class SignedVoucher:
    """A channel's cumulative total, signed by its requester (65 bytes, r||s||v)."""

    requester: str
    provider: str
    cumulative: int
    signature: bytes


def _message(requester: str, provider: str, cumulative: int) -> dict[str, Any]:
    if not 0 <= cumulative <= MAX_UINT256:
        raise ValueError("cumulative is not a uint256")
    return {
        "requester": checksum(requester),
        "provider": checksum(provider),
        "cumulative": cumulative,
    }


def sign_voucher(
    domain: Domain, requester_key: bytes, provider: str, cumulative: int
) -> SignedVoucher:
    requester = Account.from_key(requester_key).address
    signed = Account.sign_typed_data(
        requester_key, domain.typed(), VOUCHER_TYPES, _message(requester, provider, cumulative)
    )
    return SignedVoucher(requester, checksum(provider), cumulative, bytes(signed.signature))


def recover_voucher_signer(
    domain: Domain, requester: str, provider: str, cumulative: int, signature: bytes
) -> str | None:
    """The address that signed, or None for anything malformed (a peer sent it)."""
    if not isinstance(signature, bytes | bytearray) or len(signature) != 65:
        return None
    try:
        signable = encode_typed_data(
            domain.typed(), VOUCHER_TYPES, _message(requester, provider, cumulative)
        )
        return Account.recover_message(signable, signature=bytes(signature))
    except Exception:  # eth_account raises a zoo of types for bad input
        return None


def verify_voucher(domain: Domain, voucher: SignedVoucher) -> bool:
    """True when the channel's requester signed it. High-s and v outside {27, 28}
    are refused, as the escrow (OpenZeppelin ECDSA) refuses them."""
    sig = voucher.signature
    if len(sig) != 65 or sig[64] not in (27, 28):
        return False
    if int.from_bytes(sig[32:64], "big") > _SECP256K1_HALF_N:
        return False
    signer = recover_voucher_signer(
        domain, voucher.requester, voucher.provider, voucher.cumulative, sig
    )
    return signer is not None and signer.lower() == voucher.requester.lower()


_SECP256K1_HALF_N = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0

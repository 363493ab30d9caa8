"""Peer ids, gossip signatures and identity records.

Pure functions over bytes and keys: no files, no clock, no libp2p import (that
costs 1.5 s of start-up and protocol/ must stay cheap to import).

An Ed25519 libp2p peer id is the identity multihash of the protobuf-encoded
public key, so the public key can be read straight out of the id: a signed
message names its signer, and nobody needs a key directory.
"""

from __future__ import annotations

import functools

import base58
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from eth_account import Account
from eth_account.messages import encode_defunct

from protocol.messages import (
    GOSSIP_SIGNING_PREFIX,
    IDENTITY_SIGNING_PREFIX,
    IdentityRecord,
    SignedGossip,
)

# identity multihash (0x00), length 36, protobuf PublicKey{Type: Ed25519 (1), Data: 32 bytes}
_ED25519_PEER_ID_PREFIX = bytes([0x00, 0x24, 0x08, 0x01, 0x12, 0x20])


class BadPeerId(ValueError):
    pass


def peer_id_from_ed25519(public_key: bytes) -> str:
    if len(public_key) != 32:
        raise BadPeerId("an Ed25519 public key is 32 bytes")
    return base58.b58encode(_ED25519_PEER_ID_PREFIX + public_key).decode()


@functools.lru_cache(maxsize=4096)
def ed25519_from_peer_id(peer_id: str) -> Ed25519PublicKey:
    """The public key inside an Ed25519 peer id; BadPeerId for anything else."""
    try:
        raw = base58.b58decode(peer_id)
    except ValueError as exc:
        raise BadPeerId(f"not base58: {exc}") from None
    if len(raw) != 38 or not raw.startswith(_ED25519_PEER_ID_PREFIX):
        raise BadPeerId("not an Ed25519 peer id")
    return Ed25519PublicKey.from_public_bytes(raw[len(_ED25519_PEER_ID_PREFIX) :])


def sign_gossip(body: bytes, key: Ed25519PrivateKey) -> SignedGossip:
    return SignedGossip(body=body, signature=key.sign(GOSSIP_SIGNING_PREFIX + body))


def verify_gossip(envelope: SignedGossip, peer_id: str) -> bool:
    try:
        ed25519_from_peer_id(peer_id).verify(
            envelope.signature, GOSSIP_SIGNING_PREFIX + envelope.body
        )
    except (InvalidSignature, BadPeerId):
        return False
    return True


def identity_message(peer_id: str, account: str, x25519: bytes, issued_at: int) -> str:
    return f"{IDENTITY_SIGNING_PREFIX}{peer_id}:{account.lower()}:{x25519.hex()}:{issued_at}"


def make_identity_record(
    account_key: bytes, peer_id: str, x25519: bytes, issued_at: int
) -> IdentityRecord:
    acct = Account.from_key(account_key)
    msg = encode_defunct(text=identity_message(peer_id, acct.address, x25519, issued_at))
    sig = acct.sign_message(msg).signature
    return IdentityRecord(
        peer_id=peer_id,
        account=acct.address,
        x25519=x25519,
        issued_at=issued_at,
        signature=bytes(sig),
    )


@functools.lru_cache(maxsize=4096)
def verify_identity_record(record: IdentityRecord) -> bool:
    """True when ``record.account`` signed the binding. Cached: offers repeat it."""
    if len(record.x25519) != 32 or len(record.signature) != 65:
        return False
    try:
        msg = encode_defunct(
            text=identity_message(record.peer_id, record.account, record.x25519, record.issued_at)
        )
        signer = Account.recover_message(msg, signature=record.signature)
    except Exception:  # malformed signatures raise a variety of errors
        return False
    return signer.lower() == record.account.lower()

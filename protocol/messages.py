"""Wire schemas: everything a peer may send us, as strict msgspec Structs.

Gossip carries a ``SignedGossip`` envelope whose ``body`` is the MessagePack
encoding of one tagged ``GossipBody`` and whose ``signature`` is the
publisher's Ed25519 signature over ``GOSSIP_SIGNING_PREFIX + body``. Signing
the exact bytes (not a re-encoding) means there is no canonicalisation to get
wrong, and the body can be stored and shown later with its proof attached.

Compatibility rule (major version 1): fields are only ever added, at the end,
with defaults. Golden encodings under tests/data/wire/ must keep decoding.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

OFFERS_TOPIC = "/mask/offers/1"
BIDS_TOPIC = "/mask/bids/1"
MARKET_PROTOCOL = "/mask/market/1"
JOB_PROTOCOL = "/mask/job/1"
BLOCKS_PROTOCOL = "/mask/blocks/1"

GOSSIP_SIGNING_PREFIX = b"maskd-gossip:v1:"
IDENTITY_SIGNING_PREFIX = "maskd-identity:v1:"

# Executors a provider may advertise. Unknown names are rejected at validation.
KNOWN_EXECUTORS = frozenset({"wasm", "native", "zk-groth16"})


class IdentityRecord(msgspec.Struct, frozen=True, kw_only=True):
    """Binds a libp2p peer id to an Ethereum account and an X25519 key.

    ``signature`` is an EIP-191 personal-message signature by ``account`` over
    :func:`protocol.identity.identity_message`. A requester learns from it which
    address to pay and which address must sign results; a sender learns which
    X25519 key to encrypt payloads to.
    """

    peer_id: str
    account: str  # 0x-prefixed checksum address
    x25519: bytes  # 32-byte public key
    issued_at: int  # unix seconds
    signature: bytes  # 65 bytes r||s||v


class Gpu(msgspec.Struct, frozen=True, kw_only=True):
    # shown in every peer's `mask offers` and `mask top`: bounded at decoding
    name: Annotated[str, msgspec.Meta(max_length=256)]
    memory_mb: int
    uuid: Annotated[str, msgspec.Meta(max_length=128)] = ""


class Prices(msgspec.Struct, frozen=True, kw_only=True):
    """Prices per resource unit, token base units as decimal strings.

    Strings, because MessagePack integers stop at 2**64 and an 18-decimal token
    passes that at about 18 whole tokens.
    """

    cpu_core_hour: str = "0"
    memory_gb_hour: str = "0"
    gpu_hour: str = "0"
    storage_gb_hour: str = "0"


class ResourceOffer(msgspec.Struct, frozen=True, kw_only=True, tag="offer"):
    """A provider's standing offer. One per peer; a higher ``seq`` replaces it."""

    offer_id: str
    peer_id: str
    seq: int
    identity: IdentityRecord
    cpu: int
    memory_mb: int
    disk_mb: int
    gpus: tuple[Gpu, ...] = ()
    executors: tuple[str, ...] = ()
    prices: Prices = Prices()
    storage_mb: int = 0  # free storage for sale (pins), MB
    addrs: tuple[str, ...] = ()
    issued_at: float = 0.0
    expires_at: float = 0.0
    #: MASK base units staked in the escrow, as the provider last read it (a
    #: decimal string; the chain is the authority, this is for display and choice)
    stake: str = "0"


class OfferWithdrawal(msgspec.Struct, frozen=True, kw_only=True, tag="offer_withdrawal"):
    """Sent on clean shutdown so others drop the offer at once, not at expiry."""

    offer_id: str
    peer_id: str
    seq: int
    issued_at: float
    expires_at: float


GossipBody = ResourceOffer | OfferWithdrawal


class SignedGossip(msgspec.Struct, frozen=True, array_like=True):
    body: bytes
    signature: bytes

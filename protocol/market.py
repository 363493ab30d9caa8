"""Market wire schemas: bids (gossip) and the direct ``/mask/market/1`` messages.

A requester gossips a signed :class:`JobBid` on ``/mask/bids/1`` (no payload:
only what a provider needs to decide). Providers answer over a direct stream
with a :class:`Quote` or a :class:`Refusal`; the two then exchange an
:class:`Agreement` (EIP-712, both account keys sign: see ``ledger/agreement.py``);
while the job runs the provider sends :class:`Heartbeat`\\ s and finally a
:class:`JobResult` signed by its account key. Either side may send :class:`Cancel`.

Bids travel in the same ``SignedGossip`` envelope as offers and are signed
the same way (Ed25519 over ``GOSSIP_SIGNING_PREFIX + body``); the body's tag
tells a bid from an offer, so one signature can never be replayed as the other.
Direct messages need no peer signature: the stream is authenticated (Noise),
and the shell passes the remote peer id in as ``source``.

Compatibility rule (major version 1): fields are only added, at the end, with
defaults. Amounts are decimal strings (MessagePack integers stop at 2**64).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Protocol

import msgspec

from protocol.identity import verify_identity_record
from protocol.messages import KNOWN_EXECUTORS, IdentityRecord
from protocol.pipeline import GossipPipeline
from protocol.verdict import Reason

# Text a peer sends that we keep and show: bounded at decoding (a longer one
# does not decode), so a peer cannot store megabytes in a job's row.
MAX_CODE_CHARS = 64
MAX_DETAIL_CHARS = 1024
MAX_ERROR_MESSAGE_CHARS = 4096
Code = Annotated[str, msgspec.Meta(max_length=MAX_CODE_CHARS)]
Detail = Annotated[str, msgspec.Meta(max_length=MAX_DETAIL_CHARS)]
ErrorMessage = Annotated[str, msgspec.Meta(max_length=MAX_ERROR_MESSAGE_CHARS)]
Count = Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]

__all__ = [
    "RESULT_SIGNING_PREFIX",
    "Agreement",
    "AgreementTerms",
    "BidLimits",
    "BidValidator",
    "Cancel",
    "Heartbeat",
    "JobBid",
    "JobRequirements",
    "JobResult",
    "MarketKeys",
    "MarketMessage",
    "Payment",
    "Quote",
    "Refusal",
    "UsageReport",
    "decode_bid",
    "decode_market",
    "encode_market",
    "is_amount",
    "is_job_id",
    "result_signing_bytes",
]

RESULT_SIGNING_PREFIX = b"maskd-result:v1:"
#: The largest direct market message we read; a result is the biggest, < 1 KiB.
MAX_MARKET_MESSAGE_BYTES = 16384

_JOB_ID_RE = re.compile(r"^[0-9a-f]{64}$")


def is_job_id(value: str) -> bool:
    """Job ids are sha256 hex digests: they fit an EIP-712 ``bytes32``."""
    return bool(_JOB_ID_RE.match(value))


def is_amount(value: str) -> bool:
    """A token amount: decimal digits that fit a uint256."""
    return value.isascii() and value.isdigit() and len(value) <= 78 and int(value) < 2**256


class JobRequirements(msgspec.Struct, frozen=True, kw_only=True):
    executor: str
    cpu: int
    memory_mb: int
    gpu: int = 0
    max_seconds: int
    max_fuel: int = 0  # 0: no fuel budget (wall time is the only bound)


class JobBid(msgspec.Struct, frozen=True, kw_only=True, tag="job_bid"):
    """A requester's call for quotes. A fresh round for the same job has a higher seq."""

    job_id: str
    peer_id: str  # the requester
    identity: IdentityRecord
    requirements: JobRequirements
    max_total: str  # token base units
    deadline: int  # unix seconds: placed and finished by then
    spec_cid: str
    issued_at: float
    expires_at: float
    seq: int


class Quote(msgspec.Struct, frozen=True, kw_only=True, tag="quote"):
    """A provider's price for one bid round; it holds capacity until ``valid_until``."""

    job_id: str
    bid_seq: int  # the round this answers
    peer_id: str  # the provider
    identity: IdentityRecord
    price_total: str
    valid_until: float
    free_cpu: int
    free_memory_mb: int
    free_gpu: int = 0


class Refusal(msgspec.Struct, frozen=True, kw_only=True, tag="refusal"):
    """``reason`` is a scheduler.policy.RefusalReason value (or ``quote_lapsed``,
    ``bad_agreement`` when a provider declines an agreement)."""

    job_id: str
    bid_seq: int
    peer_id: str
    reason: Code
    detail: Detail = ""


class AgreementTerms(msgspec.Struct, frozen=True, kw_only=True):
    """What both parties sign (EIP-712 typed data, ``ledger.agreement``)."""

    job_id: str
    requester_peer: str
    requester_account: str
    provider_peer: str
    provider_account: str
    price_total: str
    cpu: int
    memory_mb: int
    gpu: int
    max_seconds: int
    max_fuel: int
    deadline: int
    spec_cid: str
    heartbeat_interval_ms: int  # the requester's liveness clock, so both sides agree
    chain_id: int
    verifying_contract: str  # the settlement escrow; a zero address until the ledger issue
    #: for a zk job, the on-chain id of its circuit (``zkp`` vk id, 64 hex
    #: characters): the escrow pays a provider that proves the job against it
    #: when the requester refuses to. Empty for every other job (signed as zero).
    circuit_id: str = ""


class Agreement(msgspec.Struct, frozen=True, kw_only=True, tag="agreement"):
    """Sent with the requester's signature; sent back with both (the countersign)."""

    terms: AgreementTerms
    requester_signature: bytes
    provider_signature: bytes = b""


class UsageReport(msgspec.Struct, frozen=True, kw_only=True):
    fuel: Count = 0
    wall_ms: Count = 0
    peak_memory_bytes: Count = 0
    output_bytes: Count = 0
    #: native jobs: CPU time from the job's cgroup (user + system), milliseconds
    cpu_ms: Count = 0
    #: GPU jobs: GPU-seconds billed, as milliseconds (wall time x GPUs assigned)
    gpu_ms: Count = 0


class Heartbeat(msgspec.Struct, frozen=True, kw_only=True, tag="heartbeat"):
    """``resumed``: the provider restarted and asks before it runs the job again;
    the requester answers with the agreement (go on, seq starts over) or a
    ``Cancel`` (``replaced``, ``cancelled``). Peers that predate it ignore it."""

    job_id: str
    peer_id: str
    seq: int
    usage: UsageReport = UsageReport()
    resumed: bool = False


class JobResult(msgspec.Struct, frozen=True, kw_only=True, tag="job_result"):
    """Signed (EIP-191) by the provider's account over :func:`result_signing_bytes`."""

    job_id: str
    peer_id: str
    output_cid: str
    usage: UsageReport
    stdout_sha256: bytes
    stderr_sha256: bytes
    exit_code: int | None
    error_code: Code = ""
    error_message: ErrorMessage = ""
    signature: bytes = b""


class Cancel(msgspec.Struct, frozen=True, kw_only=True, tag="cancel"):
    """From the requester: stop the job, or release a quote it will not take.

    ``reason``: ``cancelled`` (by the user), ``released`` (a quote not taken),
    ``replaced`` (another provider has the job now: what a provider that speaks
    of a job it lost is told), ``heartbeat_timeout``, ``deadline``, ..."""

    job_id: str
    peer_id: str
    reason: Code = "cancelled"


class Payment(msgspec.Struct, frozen=True, kw_only=True, tag="payment"):
    """From the requester once it verified ``job_id``'s result: the channel's
    next cumulative voucher (EIP-712, ``ledger/vouchers.py``), the total it owes
    this provider so far, this job included. The channel (requester and provider
    accounts) and the domain are the agreement's, so they are not repeated."""

    job_id: str
    peer_id: str  # the requester
    cumulative: str  # token base units, a decimal uint256
    signature: bytes


MarketMessage = Quote | Refusal | Agreement | Heartbeat | JobResult | Cancel | Payment

_encoder = msgspec.msgpack.Encoder()
_market_decoder = msgspec.msgpack.Decoder(MarketMessage)
_bid_decoder = msgspec.msgpack.Decoder(JobBid)


def encode_market(message: MarketMessage | JobBid) -> bytes:
    return _encoder.encode(message)


def decode_market(data: bytes) -> MarketMessage:
    """Strict; raises msgspec.DecodeError / ValidationError, or ValueError when too large."""
    if len(data) > MAX_MARKET_MESSAGE_BYTES:
        raise ValueError(f"market message of {len(data)} bytes is over the limit")
    return _market_decoder.decode(data)


def decode_bid(body: bytes) -> JobBid:
    return _bid_decoder.decode(body)


def result_signing_bytes(result: JobResult) -> bytes:
    """The exact bytes a provider signs: the result with an empty signature."""
    return RESULT_SIGNING_PREFIX + _encoder.encode(msgspec.structs.replace(result, signature=b""))


class MarketKeys(Protocol):
    """The account-key operations the market cores need, injected by the daemon
    (``ledger.agreement.AccountKeys``) so the cores stay free of key handling."""

    @property
    def account(self) -> str: ...

    def sign_agreement(self, terms: AgreementTerms) -> bytes: ...

    def verify_agreement(self, terms: AgreementTerms, signature: bytes, account: str) -> bool: ...

    def sign_result(self, result: JobResult) -> bytes: ...

    def verify_result(self, result: JobResult, account: str) -> bool: ...

    def sign_voucher(self, provider_account: str, cumulative: int) -> bytes: ...


# --- bid validation ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BidLimits:
    max_message_bytes: int = 8192
    max_clock_skew_s: float = 30.0
    max_ttl_s: float = 600.0
    seen_cache_size: int = 65536
    max_resource: int = 1 << 40
    max_string: int = 256


class BidValidator(GossipPipeline[JobBid, tuple[str, str]]):
    """Bids: the shared pipeline (``protocol/pipeline.py``) plus the bid's own part.

    Replay state is the highest seq per (requester, job): a requester runs many
    jobs at once, and a fresh round for one job must not shadow another's.
    """

    carries = (JobBid,)
    limits: BidLimits

    def __init__(self, limits: BidLimits = BidLimits()):
        super().__init__(limits)

    # --- the pipeline's hooks ----------------------------------------------

    def decode_body(self, body: bytes) -> JobBid:
        return _bid_decoder.decode(body)

    def replay_key(self, bid: JobBid) -> tuple[str, str]:
        return bid.peer_id, bid.job_id

    def lapsed(self, bid: JobBid, now: float) -> Reason | None:
        return Reason.DEADLINE_PASSED if bid.deadline <= now else None

    def problem(self, bid: JobBid) -> tuple[Reason, str] | None:
        lim = self.limits
        req = bid.requirements
        if not is_job_id(bid.job_id):
            return Reason.BAD_FIELD, "job_id is not a sha256 hex digest"
        if not 0 <= bid.seq < 1 << 63:
            return Reason.BAD_FIELD, "seq out of range"
        if req.executor not in KNOWN_EXECUTORS:
            return Reason.BAD_FIELD, f"unknown executor {req.executor[:32]!r}"
        if not (1 <= req.cpu <= lim.max_resource and 1 <= req.memory_mb <= lim.max_resource):
            return Reason.BAD_FIELD, "cpu and memory_mb must be >= 1"
        if not 0 <= req.gpu <= lim.max_resource:
            return Reason.BAD_FIELD, "gpu out of range"
        if not 1 <= req.max_seconds <= lim.max_resource or not 0 <= req.max_fuel < 1 << 63:
            return Reason.BAD_FIELD, "max_seconds or max_fuel out of range"
        if not is_amount(bid.max_total):
            return Reason.BAD_FIELD, "max_total is not a decimal uint256"
        if not 0 < len(bid.spec_cid) <= lim.max_string:
            return Reason.BAD_FIELD, "spec_cid is empty or too long"
        if bid.identity.peer_id != bid.peer_id:
            return Reason.BAD_IDENTITY, "identity record is for another peer"
        if not verify_identity_record(bid.identity):
            return Reason.BAD_IDENTITY, "account signature does not verify"
        return None

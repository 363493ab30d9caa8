"""The provider's ledger, sans-IO: what each requester owes, what its vouchers
cover, and which batches settle them on chain.

Why a pure core: money is where a race or a clock read costs most, so every
rule lives here as plain state changes driven by the shell
(``ledger/service.py``) with ``now`` and a random number passed in. The shell
persists what a call changed (``ledger/store.py``) before it acts on it.

Payments (docs/ledger.md "Ledger"): per channel (requester -> this provider)
the highest valid voucher is kept; ``credit = latest.cumulative - paid_total``
and a job is paid when the credit covers its price, the job a payment names
first, then the others in delivery order (first fit). So payments may arrive
twice or out of order, a later voucher covers a lost one, and a stale total
leaves its job unpaid. The cheapest checks run first; the signature (an
``ecrecover``) is checked only for a voucher that would be kept.

Batches: the latest voucher of each channel above what is settled or already
in a batch is *pending*; a batch is planned (a row) before it is sent, sent
(its hash stored), mined, then final after ``confirmations`` blocks. A batch
whose transaction reverted or left the chain makes its vouchers pending again:
the escrow pays only ``cumulative - settled``, so a resend never pays twice.
Chain errors back off exponentially (capped, jittered by the caller's random).

zk claims (docs/ledger.md "Claims in the daemon"): a delivery whose voucher is
missing (past ``voucher_timeout_s``, or at once when the requester disputed
the result) and whose agreement named a circuit is claimed on chain with the
provider's own proof (``SettlementEscrow.claimWithProof``), once per job: the
claim is a row (``planned``) before it is sent, ``sent`` with its hash, then
``paid``, ``reverted`` (with the contract's reason, never retried) or
``failed`` (the evidence could not be read). A paid claim pays the job like a
voucher would: its price counts in ``paid_total``, because the contract added
it to ``settled`` and the requester adds it to its cumulative when it sees the
``ProofClaimed`` event. A claim the contract refused for the provider's own
reasons (``invalid_proof``, ``binding_mismatch``, ...) writes the job off: it
no longer counts as owed, nor against the requester's standing.

Memory is bounded: unpaid deliveries are kept per channel, paid ones only as
totals and a bounded set of recent job ids; finished batches only the last
:data:`RECENT_BATCHES`, finished claims the last :data:`RECENT_CLAIMS`.
"""

from __future__ import annotations

import enum
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from ledger.ports import SettleReceipt
from ledger.vouchers import MAX_UINT256, SignedVoucher, checksum
from protocol.errors import MaskError

__all__ = [
    "ALREADY_CLAIMED",
    "CLAIM_KEEPS_DEBT",
    "CLAIM_LIVE",
    "IN_FLIGHT",
    "MAX_BATCH_CANDIDATES",
    "SKIP_BAD_SIGNATURE",
    "SKIP_INSUFFICIENT_DEPOSIT",
    "SKIP_NOT_INCREASE",
    "SKIP_ZERO_ADDRESS",
    "TX_GAS_CAP",
    "Batch",
    "BatchChange",
    "BatchState",
    "ChainHealth",
    "Claim",
    "ClaimChange",
    "ClaimEvidence",
    "ClaimReceipt",
    "ClaimRefused",
    "ClaimState",
    "ClaimUnavailable",
    "Delivery",
    "GasPacker",
    "LedgerConfig",
    "LedgerCore",
    "LedgerError",
    "LedgerState",
    "Outcome",
    "PaymentReason",
    "PaymentVerdict",
    "Standing",
    "backoff_delay",
    "send_gas",
]

#: ``VoucherSkipped`` reasons (docs/ledger.md).
SKIP_BAD_SIGNATURE = 1
SKIP_NOT_INCREASE = 2
SKIP_INSUFFICIENT_DEPOSIT = 3
SKIP_ZERO_ADDRESS = 4
#: EIP-7825: no transaction may ask for more gas than this.
TX_GAS_CAP = 16_777_216
#: Vouchers offered to one gas sizing; ~260 first-time vouchers fit in the cap.
MAX_BATCH_CANDIDATES = 1024
#: Finished batches kept in memory for ``mask ledger`` (all stay in the store).
RECENT_BATCHES = 50
#: Paid job ids remembered so a late duplicate payment is "ignored", not "unknown".
RECENT_PAID = 65_536
MAX_JOB_ID_CHARS = 128
#: Finished claims kept in memory for ``mask ledger`` and ``mask explain`` (all stay in the store).
RECENT_CLAIMS = 4096


class LedgerError(MaskError):
    code = "ledger_error"


@dataclass(frozen=True, slots=True)
class LedgerConfig:
    """``[ledger]`` in the config (seconds, gas). Validated on construction."""

    batch_max_age_s: float = 30.0
    batch_max_vouchers: int = 50
    batch_gas_limit: int = 15_000_000
    confirmations: int = 1
    voucher_timeout_s: float = 60.0
    escrow_cache_s: float = 10.0
    retry_base_s: float = 1.0
    retry_max_s: float = 60.0
    #: a sent transaction with no receipt after this long is treated as dropped
    tx_timeout_s: float = 180.0
    #: how often the receipts of batches in flight are read
    poll_interval_s: float = 2.0
    #: claim zk jobs whose voucher is missing on chain with the provider's proof
    zk_claims: bool = True

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise LedgerError(
                    f"ledger.{what}", code="config_invalid", hint="fix [ledger] in the config"
                )

        need(self.batch_max_age_s >= 0, "batch_max_age_s must be >= 0")
        need(self.batch_max_vouchers >= 1, "batch_max_vouchers must be >= 1")
        need(
            100_000 <= self.batch_gas_limit <= TX_GAS_CAP * 10 // 11,
            f"batch_gas_limit must be between 100000 and {TX_GAS_CAP * 10 // 11}"
            " (EIP-7825 caps a transaction at 16777216 gas; 10% is kept as margin)",
        )
        need(self.confirmations >= 1, "confirmations must be >= 1")
        need(self.voucher_timeout_s > 0, "voucher_timeout_s must be > 0")
        need(self.escrow_cache_s >= 0, "escrow_cache_s must be >= 0")
        need(0 < self.retry_base_s <= self.retry_max_s, "retry_base_s must be in (0, retry_max_s]")
        need(self.tx_timeout_s > 0, "tx_timeout_s must be > 0")
        need(self.poll_interval_s > 0, "poll_interval_s must be > 0")


# --- payments -----------------------------------------------------------------


class Outcome(enum.StrEnum):
    """What a payment did for the job it names (the gossip verdicts' meaning)."""

    ACCEPTED = "accepted"  # the job is paid
    IGNORED = "ignored"  # nothing new, no harm (a duplicate of a paid job's payment)
    REJECTED = "rejected"  # the job is not paid by it: count it against the requester


class PaymentReason(enum.StrEnum):
    PAID = "paid"
    MALFORMED = "malformed"  # not a uint256, not 65 bytes, not an address
    WRONG_CHANNEL = "wrong_channel"  # another provider's or another requester's voucher
    UNKNOWN_JOB = "unknown_job"
    BAD_SIGNATURE = "bad_signature"
    STALE = "stale"  # not above the voucher already kept
    UNDERPAID = "underpaid"  # kept, but its total does not cover the job


@dataclass(frozen=True, slots=True)
class PaymentVerdict:
    """The shell persists ``kept``, ``paid`` and ``underpaid`` in one transaction."""

    outcome: Outcome
    reason: PaymentReason
    job_id: str
    kept: SignedVoucher | None = None  # the channel's new latest voucher
    paid: tuple[str, ...] = ()  # jobs that became paid
    underpaid: str | None = None  # the job to flag: its own payment left it unpaid
    detail: str = ""


@dataclass(slots=True)
class Delivery:
    """A result that went out, and what a voucher must cover for it (base units)."""

    job_id: str
    requester: str
    requester_peer: str
    price: int
    delivered_at: float
    due_at: float
    paid_at: float | None = None
    missing_at: float | None = None
    underpaid_at: float | None = None
    #: a claim was opened for it (whatever came of it: one claim per job)
    claimed: bool = False
    #: no longer owed: the chain refused its claim for the provider's own reasons
    written_off_at: float | None = None


@dataclass(frozen=True, slots=True)
class Standing:
    """How a requester pays: jobs paid, jobs past due without a voucher, jobs
    whose own payment did not cover them (the last two are cleared by payment),
    and jobs the chain paid on the provider's proof because it did not."""

    paid: int = 0
    voucher_missing: int = 0
    underpaid: int = 0
    claimed: int = 0


@dataclass(slots=True)
class _Channel:
    requester: str
    latest: SignedVoucher | None = None
    latest_at: float = 0.0
    settled: int = 0
    delivered_total: int = 0
    paid_total: int = 0
    paid_count: int = 0
    claimed_count: int = 0  # of paid_count, paid on chain by a claim
    unpaid: dict[str, Delivery] = field(default_factory=dict)  # delivery order
    pending_since: float | None = None
    #: (cumulative, until) after a skip: that voucher is not offered again
    #: until ``until`` (None: never; a newer voucher is offered at once)
    hold: tuple[int, float | None] | None = None
    last_skip: str | None = None

    @property
    def credit(self) -> int:
        return (self.latest.cumulative if self.latest else 0) - self.paid_total


# --- batches ------------------------------------------------------------------


class BatchState(enum.StrEnum):
    PLANNED = "planned"
    SENT = "sent"
    MINED = "mined"
    FINAL = "final"
    REVERTED = "reverted"
    DROPPED = "dropped"


IN_FLIGHT = frozenset({BatchState.PLANNED, BatchState.SENT, BatchState.MINED})


@dataclass(frozen=True, slots=True)
class Batch:
    id: int
    entries: tuple[tuple[str, int], ...]  # (requester, cumulative)
    state: BatchState
    created_at: float
    gas: int = 0
    tx_hash: str | None = None
    sent_at: float | None = None
    gas_used: int | None = None
    block: int | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class BatchChange:
    """A batch's new row, and the channels whose confirmed ``settled`` rose."""

    batch: Batch
    settled: tuple[tuple[str, int], ...] = ()


@dataclass(slots=True)
class ChainHealth:
    """The batcher's view of the chain: failures in a row and when to try again."""

    attempts: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    retry_at: float | None = None


def backoff_delay(attempt: int, base: float, cap: float, rand: float) -> float:
    """Seconds before try ``attempt + 1``: ``base * 2**(attempt-1)`` capped at
    ``cap``, half of it fixed and half jittered by ``rand`` in [0, 1)."""
    delay = min(cap, base * 2.0 ** min(max(attempt - 1, 0), 60))
    return delay / 2 + delay / 2 * min(max(rand, 0.0), 1.0)


def send_gas(estimate: int) -> int:
    """The gas a batch is sent with: its estimate and 10%, never over the cap."""
    return min(estimate + estimate // 10, TX_GAS_CAP)


class GasPacker:
    """The longest prefix of ``count`` vouchers whose gas estimate fits ``limit``.

    Pure and driven by the shell: ask :meth:`next_probe` for a prefix length,
    estimate it on chain, :meth:`observe` the answer; when ``next_probe`` says
    None, :meth:`result` is ``(n, gas)`` (``n == 0``: not even one fits). The
    whole list is tried first (the usual case: one probe); after that, probes
    alternate linear interpolation (gas is nearly linear in vouchers) and
    bisection, so the worst case stays logarithmic.
    """

    def __init__(self, count: int, limit: int):
        self.limit = limit
        self._fit = (0, 0)  # the longest prefix known to fit, and its gas
        self._over = (count + 1, 0)  # the shortest known not to, and its gas
        self._first = count > 0
        self._count = count
        self.probes = 0

    def next_probe(self) -> int | None:
        lo, hi = self._fit[0], self._over[0]
        if lo + 1 >= hi:
            return None
        if self._first:
            return self._count
        if self.probes % 2 == 1 and self._over[1] > self._fit[1]:
            span = self._over[1] - self._fit[1]
            guess = lo + (self.limit - self._fit[1]) * (hi - lo) // span
        else:
            guess = (lo + hi) // 2
        return min(max(guess, lo + 1), hi - 1)

    def observe(self, n: int, gas: int) -> None:
        self._first = False
        self.probes += 1
        if gas <= self.limit:
            if n > self._fit[0]:
                self._fit = (n, gas)
        elif n < self._over[0]:
            self._over = (n, gas)

    def result(self) -> tuple[int, int]:
        return self._fit


# --- zk claims ----------------------------------------------------------------


class ClaimState(enum.StrEnum):
    PLANNED = "planned"  # a row, not sent (or to be sent again)
    SENT = "sent"  # the node accepted the transaction: its hash is stored
    PAID = "paid"  # ProofClaimed: the chain paid the job
    REVERTED = "reverted"  # the contract refused it (``reason``); never retried
    FAILED = "failed"  # never sent: the evidence could not be read or sent (``reason``)


CLAIM_LIVE = frozenset({ClaimState.PLANNED, ClaimState.SENT})
#: The contract's refusal when the job was claimed already (by this node before
#: a crash, or by anyone for it: the price goes to the provider either way).
ALREADY_CLAIMED = "already_claimed"
#: Refusals after which the job still counts against the requester: it owes the
#: price but its deposit could not pay it. Every other refusal is the provider's
#: (a proof the chain rejects, a late claim) and writes the job off.
CLAIM_KEEPS_DEBT = frozenset({"insufficient_deposit"})


@dataclass(frozen=True, slots=True)
class ClaimEvidence:
    """What ``claimWithProof`` takes, from the provider's own records: the
    agreement both parties signed (``protocol.market.Agreement`` as the job row
    keeps it, msgpack), the proof in EIP-197 order, the public signals (binding
    last) and the circuit's verification key (snarkjs JSON), to register it."""

    job_id: str
    agreement: bytes
    proof: tuple[int, ...]
    public: tuple[int, ...]
    vk: bytes = b""


@dataclass(frozen=True, slots=True)
class Claim:
    """One job's claim on chain (amounts in base units)."""

    job_id: str
    requester: str
    price: int
    state: ClaimState
    created_at: float
    tx_hash: str | None = None
    sent_at: float | None = None
    block: int | None = None
    gas_used: int | None = None
    amount: int | None = None  # what the chain paid
    reason: str | None = None  # snake_case: the contract's error, or why it failed
    error: str | None = None  # the same in words


@dataclass(frozen=True, slots=True)
class ClaimReceipt:
    """A mined claim transaction: ``amount`` from its ProofClaimed event; for a
    reverted one, the contract's ``reason`` (snake_case) and ``error`` in words."""

    tx_hash: str
    block_number: int
    status: bool
    gas_used: int
    amount: int | None = None
    reason: str = ""
    error: str = ""


class ClaimRefused(Exception):
    """The contract refused a claim (its dry run reverted): ``reason`` is the
    custom error in snake_case (``invalid_proof``, ``already_claimed``, ...)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class ClaimUnavailable(Exception):
    """A zk job's claim cannot be made from this node's records (its result is
    gone, its proof or agreement unreadable): ``reason`` in snake_case."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ClaimChange:
    """A claim's new row and what it did to the deliveries, written together."""

    claim: Claim
    paid: tuple[str, ...] = ()
    written_off: tuple[str, ...] = ()


# --- restore ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LedgerState:
    """What the store hands the core on start (``LedgerStore.load``)."""

    unpaid: Sequence[Delivery] = ()  # in delivery order
    #: per requester: (delivered_total, paid_total, paid_count)
    totals: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    recent_paid: Sequence[tuple[str, str]] = ()  # (job_id, requester), oldest first
    vouchers: Sequence[tuple[SignedVoucher, float]] = ()  # latest per channel, received_at
    settled: dict[str, int] = field(default_factory=dict)
    batches: Sequence[Batch] = ()  # in flight, and the most recent finished ones
    next_batch_id: int = 1
    claims: Sequence[Claim] = ()  # live, and the most recent finished ones
    #: per requester: jobs paid by a claim (of the paid count)
    claimed: dict[str, int] = field(default_factory=dict)


class LedgerCore:
    """One provider's channels and batches. Not thread-safe; no I/O, no clock."""

    def __init__(self, provider: str, config: LedgerConfig | None = None):
        self.provider = checksum(provider)
        self.config = config or LedgerConfig()
        self.health = ChainHealth()
        self._channels: dict[str, _Channel] = {}
        self._jobs: dict[str, _Channel] = {}  # unpaid job -> its channel
        self._recent_paid: OrderedDict[str, str] = OrderedDict()
        self._batches: dict[int, Batch] = {}  # in flight
        self._finished: deque[Batch] = deque(maxlen=RECENT_BATCHES)
        self._next_batch_id = 1
        self._claims: dict[str, Claim] = {}  # live (planned, sent)
        self._claims_done: OrderedDict[str, Claim] = OrderedDict()
        self._unclaimable: set[str] = set()  # unpaid jobs that are not zk jobs

    # --- restore ----------------------------------------------------------

    @classmethod
    def restore(
        cls, provider: str, config: LedgerConfig | None, state: LedgerState, *, now: float
    ) -> tuple[LedgerCore, tuple[str, ...]]:
        """The core as the store left it, and the jobs its credit now pays
        (nonempty only when a crash fell between a delivery and its allocation)."""
        core = cls(provider, config)
        for requester, (delivered, paid, count) in state.totals.items():
            ch = core._channel(requester)
            ch.delivered_total, ch.paid_total, ch.paid_count = delivered, paid, count
        for d in state.unpaid:
            ch = core._channel(d.requester)
            ch.unpaid[d.job_id] = replace(d, requester=ch.requester)
            core._jobs[d.job_id] = ch
        for job_id, requester in state.recent_paid:
            core._remember_paid(job_id, checksum(requester))
        for voucher, received_at in state.vouchers:
            ch = core._channel(voucher.requester)
            ch.latest, ch.latest_at = voucher, received_at
        for requester, settled in state.settled.items():
            core._channel(requester).settled = settled
        for requester, count in state.claimed.items():
            core._channel(requester).claimed_count = count
        for claim in sorted(state.claims, key=lambda c: (c.created_at, c.job_id)):
            if claim.state in CLAIM_LIVE:
                core._claims[claim.job_id] = claim
            else:
                core._remember_claim(claim)
        for batch in sorted(state.batches, key=lambda b: b.id):
            if batch.state in IN_FLIGHT:
                core._batches[batch.id] = batch
            else:
                core._finished.append(batch)
        core._next_batch_id = max(
            [state.next_batch_id, *(b.id + 1 for b in state.batches)], default=1
        )
        in_flight = core._in_flight()
        for ch in core._channels.values():
            if ch.latest and ch.latest.cumulative > max(ch.settled, in_flight.get(ch.requester, 0)):
                ch.pending_since = ch.latest_at
        paid: list[str] = []
        for ch in core._channels.values():
            paid += core._allocate(ch, None, now)
        return core, tuple(paid)

    # --- deliveries and payments -------------------------------------------

    def knows(self, job_id: str) -> bool:
        return job_id in self._jobs or job_id in self._recent_paid

    def expect(
        self,
        job_id: str,
        requester_account: str,
        requester_peer: str,
        price: int,
        *,
        now: float,
        due_at: float | None = None,
    ) -> tuple[Delivery | None, tuple[str, ...]]:
        """A result goes out for ``job_id``: a voucher is due for ``price`` by
        ``due_at`` (default ``now + voucher_timeout_s``). Call it *before* the
        result is sent, or a fast payment finds no job. Returns the new delivery
        (None for a job already known: replays are harmless) and the jobs the
        channel's existing credit pays (a zero price is paid at once)."""
        if self.knows(job_id):
            return None, ()
        if not 0 <= price <= MAX_UINT256:
            raise ValueError(f"price is not a uint256: {price}")
        ch = self._channel(requester_account)
        due = now + self.config.voucher_timeout_s if due_at is None else due_at
        d = Delivery(job_id, ch.requester, requester_peer, price, now, due)
        ch.unpaid[job_id] = d
        ch.delivered_total += price
        self._jobs[job_id] = ch
        return d, tuple(self._allocate(ch, None, now))

    def withdraw(self, job_id: str) -> Delivery | None:
        """Forget an unpaid delivery whose job ended without its result reaching
        the requester (a crash between :meth:`expect` and the send, then the
        requester replaced us): no voucher is owed for it, so it must never turn
        ``voucher_missing`` against the requester. Returns what was dropped."""
        ch = self._jobs.get(job_id)
        if ch is None or job_id not in ch.unpaid:
            return None
        d = ch.unpaid.pop(job_id)
        ch.delivered_total -= d.price
        del self._jobs[job_id]
        self._unclaimable.discard(job_id)
        return replace(d)

    def on_wire_payment(
        self,
        job_id: object,
        requester_peer: object,
        cumulative: object,
        signature: object,
        *,
        verify: Callable[[SignedVoucher], bool],
        now: float,
    ) -> PaymentVerdict:
        """A ``Payment`` off the wire: the channel is the job's (its requester's
        account, this provider); everything a peer sent is checked here."""
        jid = job_id if isinstance(job_id, str) else ""
        if not jid or len(jid) > MAX_JOB_ID_CHARS:
            return _reject(jid[:MAX_JOB_ID_CHARS], PaymentReason.MALFORMED, "bad job id")
        ch = self._jobs.get(jid)
        requester = ch.requester if ch else self._recent_paid.get(jid)
        if requester is None:
            return _reject(jid, PaymentReason.UNKNOWN_JOB, "no result was delivered for it")
        peer = ch.unpaid[jid].requester_peer if ch else None
        if peer is not None and requester_peer != peer:
            return _reject(jid, PaymentReason.WRONG_CHANNEL, "not from the job's requester")
        if not (
            isinstance(cumulative, str)
            and cumulative.isascii()
            and cumulative.isdigit()
            and len(cumulative) <= 78
            and int(cumulative) <= MAX_UINT256
        ):
            return _reject(jid, PaymentReason.MALFORMED, "cumulative is not a decimal uint256")
        if not isinstance(signature, bytes) or len(signature) != 65:
            return _reject(jid, PaymentReason.MALFORMED, "signature is not 65 bytes")
        voucher = SignedVoucher(requester, self.provider, int(cumulative), signature)
        return self.on_payment(jid, voucher, verify=verify, now=now)

    def on_payment(
        self,
        job_id: str,
        voucher: SignedVoucher,
        *,
        verify: Callable[[SignedVoucher], bool],
        now: float,
    ) -> PaymentVerdict:
        """Apply the credit rule for one payment (see the module doc)."""
        if not _well_formed(voucher):
            return _reject(job_id, PaymentReason.MALFORMED, "not a well-formed voucher")
        if voucher.provider.lower() != self.provider.lower():
            return _reject(job_id, PaymentReason.WRONG_CHANNEL, "a voucher for another provider")
        ch = self._jobs.get(job_id)
        requester = ch.requester if ch else self._recent_paid.get(job_id)
        if requester is None:
            return _reject(job_id, PaymentReason.UNKNOWN_JOB, "no result was delivered for it")
        if voucher.requester.lower() != requester.lower():
            return _reject(job_id, PaymentReason.WRONG_CHANNEL, "not the job's requester")
        ch = self._channels[requester]
        latest = ch.latest.cumulative if ch.latest else 0
        if ch.latest is not None and voucher.cumulative <= latest:
            if job_id not in ch.unpaid:
                return PaymentVerdict(Outcome.IGNORED, PaymentReason.STALE, job_id)
            return self._underpaid(ch, job_id, PaymentReason.STALE, (), None, now)
        try:
            genuine = verify(voucher)
        except Exception:  # a verifier must not crash on a peer's bytes; count it as bad
            genuine = False
        if not genuine:
            return _reject(job_id, PaymentReason.BAD_SIGNATURE, "not the requester's signature")
        kept = SignedVoucher(ch.requester, self.provider, voucher.cumulative, voucher.signature)
        if not self._is_pending(ch, self._in_flight()):
            ch.pending_since = now
        ch.latest, ch.latest_at = kept, now
        if ch.hold is not None and ch.hold[0] < kept.cumulative:
            ch.hold = None
        paid = tuple(self._allocate(ch, job_id, now))
        if job_id in ch.unpaid:
            return self._underpaid(ch, job_id, PaymentReason.UNDERPAID, paid, kept, now)
        return PaymentVerdict(Outcome.ACCEPTED, PaymentReason.PAID, job_id, kept, paid)

    def _underpaid(
        self,
        ch: _Channel,
        job_id: str,
        reason: PaymentReason,
        paid: tuple[str, ...],
        kept: SignedVoucher | None,
        now: float,
    ) -> PaymentVerdict:
        d = ch.unpaid[job_id]
        flag = None
        if d.underpaid_at is None:
            d.underpaid_at, flag = now, job_id
        detail = f"credit {ch.credit} does not cover the price {d.price}"
        return PaymentVerdict(Outcome.REJECTED, reason, job_id, kept, paid, flag, detail)

    def _allocate(self, ch: _Channel, named: str | None, now: float) -> list[str]:
        """Pay what the credit covers: the named job first, then first fit."""
        order = list(ch.unpaid)
        if named in ch.unpaid:
            order.remove(named)
            order.insert(0, named)
        paid = []
        for job_id in order:
            d = ch.unpaid[job_id]
            if d.price <= ch.credit:
                ch.paid_total += d.price
                ch.paid_count += 1
                del ch.unpaid[job_id]
                del self._jobs[job_id]
                self._unclaimable.discard(job_id)
                self._remember_paid(job_id, ch.requester)
                d.paid_at = now
                paid.append(job_id)
        return paid

    def _remember_paid(self, job_id: str, requester: str) -> None:
        self._recent_paid[job_id] = requester
        while len(self._recent_paid) > RECENT_PAID:
            self._recent_paid.popitem(last=False)

    def overdue(self, now: float) -> list[str]:
        """Jobs whose voucher is ``voucher_timeout_s`` late: now ``voucher_missing``."""
        late = []
        for ch in self._channels.values():
            for d in ch.unpaid.values():
                if d.missing_at is None and d.due_at <= now:
                    d.missing_at = now
                    late.append(d.job_id)
        return late

    def missing(self) -> list[Delivery]:
        """Unpaid jobs flagged ``voucher_missing``, oldest first (copies)."""
        late = [
            d
            for ch in self._channels.values()
            for d in ch.unpaid.values()
            if d.missing_at is not None
        ]
        return [replace(d) for d in sorted(late, key=lambda d: (d.due_at, d.job_id))]

    def delivery(self, job_id: str) -> Delivery | None:
        ch = self._jobs.get(job_id)
        return replace(ch.unpaid[job_id]) if ch else None

    def owed_by(self, requester: str, running: int = 0) -> int:
        """What ``requester`` owes this provider beyond what the chain settled:
        delivered prices plus ``running`` (jobs under way), minus settled."""
        ch = self._find(requester)
        if ch is None:
            return running
        return max(ch.delivered_total + running - ch.settled, 0)

    def standing(self, requester: str) -> Standing:
        ch = self._find(requester)
        if ch is None:
            return Standing()
        unpaid = ch.unpaid.values()
        return Standing(
            paid=ch.paid_count,
            voucher_missing=sum(d.missing_at is not None for d in unpaid),
            underpaid=sum(d.underpaid_at is not None for d in unpaid),
            claimed=ch.claimed_count,
        )

    def dispute(self, job_id: str, requester_peer: str, now: float) -> bool:
        """The requester refused the result (``Cancel(verification_failed)`` after
        it went out): its voucher will not come, so the job is ``voucher_missing``
        now, and a zk job goes straight to its claim (the contract decides).
        Only the job's requester can; True when the job became missing."""
        ch = self._jobs.get(job_id)
        if ch is None:
            return False
        d = ch.unpaid[job_id]
        if d.requester_peer != requester_peer or d.missing_at is not None:
            return False
        d.missing_at = now
        return True

    # --- zk claims ------------------------------------------------------------

    def claim_candidates(self) -> list[str]:
        """Unpaid ``voucher_missing`` jobs with no claim yet (and not known to be
        non-zk), oldest first: the shell reads each one's evidence."""
        if not self.config.zk_claims:
            return []
        late = [
            d
            for ch in self._channels.values()
            for d in ch.unpaid.values()
            if d.missing_at is not None and not d.claimed and d.job_id not in self._unclaimable
        ]
        return [d.job_id for d in sorted(late, key=lambda d: (d.missing_at, d.job_id))]

    def not_claimable(self, job_id: str) -> None:
        """Not a zk job (its agreement names no circuit): never a claim. Kept in
        memory while the job is unpaid; after a restart the shell asks again."""
        if job_id in self._jobs:
            self._unclaimable.add(job_id)

    def open_claim(self, job_id: str, now: float) -> Claim | None:
        """A new ``planned`` claim for an unpaid job (None: paid meanwhile, or it
        had one). The store writes it, with its evidence, before it is sent."""
        ch = self._jobs.get(job_id)
        if ch is None or ch.unpaid[job_id].claimed:
            return None
        d = ch.unpaid[job_id]
        d.claimed = True
        claim = Claim(job_id, ch.requester, d.price, ClaimState.PLANNED, now)
        self._claims[job_id] = claim
        return claim

    def claim_unavailable(self, job_id: str, reason: str, error: str, now: float) -> Claim | None:
        """A zk job whose evidence cannot be read here (its result is gone, its
        proof unreadable): a ``failed`` claim at once, never sent. The job stays
        ``voucher_missing``: the requester did not pay it."""
        claim = self.open_claim(job_id, now)
        if claim is None:
            return None
        return self._end_claim(claim, ClaimState.FAILED, reason=reason, error=error).claim

    def claim_sent(self, job_id: str, tx_hash: str, now: float) -> Claim:
        return self._set_claim(job_id, state=ClaimState.SENT, tx_hash=tx_hash, sent_at=now)

    def claim_resend(self, job_id: str, error: str) -> Claim:
        """A sent claim's transaction vanished and the chain has no claim for the
        job: ``planned`` again (a second send that meets the first is refused
        ``already_claimed``, which counts as paid)."""
        return self._set_claim(
            job_id, state=ClaimState.PLANNED, tx_hash=None, sent_at=None, error=error
        )

    def claim_failed(self, job_id: str, reason: str, error: str, now: float) -> ClaimChange:
        """It cannot be sent, for a reason that is not the contract's (malformed
        evidence): ``failed``; the job stays ``voucher_missing``."""
        claim = self._live_claim(job_id)
        return self._end_claim(claim, ClaimState.FAILED, reason=reason, error=error)

    def claim_paid(
        self,
        job_id: str,
        amount: int | None,
        now: float,
        *,
        block: int | None = None,
        gas_used: int | None = None,
    ) -> ClaimChange:
        """ProofClaimed (or ``already_claimed``): the job is paid, its price in
        ``paid_total`` (the chain added it to ``settled``; the shell reads that
        again). A job a voucher paid meanwhile stays paid once."""
        claim = self._live_claim(job_id)
        ch = self._channel(claim.requester)
        paid: tuple[str, ...] = ()
        d = ch.unpaid.get(job_id)
        if d is not None:
            del ch.unpaid[job_id]
            del self._jobs[job_id]
            ch.paid_total += d.price
            ch.paid_count += 1
            self._remember_paid(job_id, ch.requester)
            d.paid_at = now
            paid = (job_id,)
        ch.claimed_count += 1
        return self._end_claim(
            claim,
            ClaimState.PAID,
            amount=claim.price if amount is None else amount,
            block=block,
            gas_used=gas_used,
            paid=paid,
        )

    def claim_reverted(
        self,
        job_id: str,
        reason: str,
        error: str,
        now: float,
        *,
        block: int | None = None,
        gas_used: int | None = None,
    ) -> ClaimChange:
        """The contract refused the claim (in the dry run or on chain): recorded,
        never retried. ``already_claimed`` is a claim that did land: paid. A
        refusal in :data:`CLAIM_KEEPS_DEBT` leaves the job ``voucher_missing``;
        any other writes it off (no longer owed, nor counted against the requester)."""
        if reason == ALREADY_CLAIMED:
            return self.claim_paid(job_id, None, now, block=block, gas_used=gas_used)
        claim = self._live_claim(job_id)
        written: tuple[str, ...] = ()
        ch = self._channel(claim.requester)
        d = ch.unpaid.get(job_id)
        if d is not None and reason not in CLAIM_KEEPS_DEBT:
            del ch.unpaid[job_id]
            del self._jobs[job_id]
            ch.delivered_total -= d.price
            self._remember_paid(job_id, ch.requester)  # a late voucher for it is not "unknown"
            d.written_off_at = now
            written = (job_id,)
        return self._end_claim(
            claim,
            ClaimState.REVERTED,
            reason=reason,
            error=error,
            block=block,
            gas_used=gas_used,
            written_off=written,
        )

    def claim(self, job_id: str) -> Claim | None:
        return self._claims.get(job_id) or self._claims_done.get(job_id)

    def live_claims(self, *states: ClaimState) -> list[Claim]:
        want = set(states) or CLAIM_LIVE
        return sorted(
            (c for c in self._claims.values() if c.state in want),
            key=lambda c: (c.created_at, c.job_id),
        )

    def recent_claims(self) -> list[Claim]:
        return sorted(
            [*self._claims_done.values(), *self._claims.values()],
            key=lambda c: (c.created_at, c.job_id),
        )

    def _live_claim(self, job_id: str) -> Claim:
        claim = self._claims.get(job_id)
        if claim is None:
            raise LedgerError(f"no claim in flight for job {job_id}", code="claim_not_in_flight")
        return claim

    def _set_claim(self, job_id: str, **changes: object) -> Claim:
        claim = replace(self._live_claim(job_id), **changes)  # type: ignore[arg-type]
        self._claims[job_id] = claim
        return claim

    def _end_claim(
        self,
        claim: Claim,
        state: ClaimState,
        *,
        paid: tuple[str, ...] = (),
        written_off: tuple[str, ...] = (),
        **changes: object,
    ) -> ClaimChange:
        done = replace(claim, state=state, **changes)  # type: ignore[arg-type]
        self._claims.pop(claim.job_id, None)
        self._remember_claim(done)
        self._unclaimable.discard(claim.job_id)
        return ClaimChange(done, paid, written_off)

    def _remember_claim(self, claim: Claim) -> None:
        self._claims_done[claim.job_id] = claim
        while len(self._claims_done) > RECENT_CLAIMS:
            self._claims_done.popitem(last=False)

    # --- batching -----------------------------------------------------------

    def pending_vouchers(self, now: float) -> list[SignedVoucher]:
        """The latest voucher of every channel above what is settled or already
        in a batch (and not held after a skip), oldest pending first."""
        in_flight = self._in_flight()
        chans = [ch for ch in self._channels.values() if self._is_pending(ch, in_flight, now)]
        chans.sort(key=lambda ch: (ch.pending_since or 0.0, ch.requester))
        return [ch.latest for ch in chans if ch.latest is not None]

    def should_settle(self, now: float) -> bool:
        """A batch is due: backed-off retries are over, and the oldest pending
        voucher is ``batch_max_age_s`` old or ``batch_max_vouchers`` are pending."""
        due = self.settle_due_at(now)
        return due is not None and due <= now

    def settle_due_at(self, now: float) -> float | None:
        in_flight = self._in_flight()
        pending = [ch for ch in self._channels.values() if self._is_pending(ch, in_flight, now)]
        if not pending:
            return None
        if len(pending) >= self.config.batch_max_vouchers:
            due = now
        else:
            due = min(ch.pending_since or 0.0 for ch in pending) + self.config.batch_max_age_s
        return max(due, self.health.retry_at or due)

    def next_timer(self, now: float) -> float | None:
        """The earliest time :meth:`overdue` or :meth:`should_settle` changes
        (a hold lapsing included): when the shell should look again."""
        times = [
            d.due_at
            for ch in self._channels.values()
            for d in ch.unpaid.values()
            if d.missing_at is None
        ]
        times += [
            ch.hold[1] for ch in self._channels.values() if ch.hold and ch.hold[1] is not None
        ]
        if (due := self.settle_due_at(now)) is not None:
            times.append(due)
        return min(times, default=None)

    def open_batch(self, vouchers: Sequence[SignedVoucher], gas: int, now: float) -> Batch:
        """A new batch (``planned``) over ``vouchers``: the store writes it
        before the shell sends it."""
        entries = tuple((v.requester, v.cumulative) for v in vouchers)
        batch = Batch(self._next_batch_id, entries, BatchState.PLANNED, now, gas=gas)
        self._next_batch_id += 1
        self._batches[batch.id] = batch
        return batch

    def batch_sent(self, batch_id: int, tx_hash: str, now: float) -> Batch:
        return self._set(batch_id, state=BatchState.SENT, tx_hash=tx_hash, sent_at=now)

    def batch_failed(self, batch_id: int, error: str, now: float, rand: float) -> BatchChange:
        """Sending failed: the batch is dropped (its vouchers pending again) and
        the chain backs off."""
        self.chain_failed(error, now, rand)
        return BatchChange(self._set(batch_id, state=BatchState.DROPPED, error=error))

    def batch_dropped(self, batch_id: int, error: str) -> BatchChange:
        return BatchChange(self._set(batch_id, state=BatchState.DROPPED, error=error))

    def batch_receipt(
        self, batch_id: int, receipt: SettleReceipt | None, head: int, now: float, rand: float
    ) -> BatchChange | None:
        """What a receipt lookup (and the chain head) says about a sent batch;
        None when nothing changed."""
        b = self._batches.get(batch_id)
        if b is None or b.state not in (BatchState.SENT, BatchState.MINED):
            return None
        if receipt is None:
            if b.state is BatchState.MINED:
                return self.batch_dropped(batch_id, "its transaction left the chain (reorg)")
            if b.sent_at is not None and now - b.sent_at >= self.config.tx_timeout_s:
                return self.batch_dropped(
                    batch_id, f"not mined within {self.config.tx_timeout_s:g}s: sent again"
                )
            return None
        fields = {"gas_used": receipt.gas_used, "block": receipt.block_number}
        if not receipt.status:
            error = (
                f"settleBatch {receipt.tx_hash} reverted in block {receipt.block_number}"
                f" (gas used {receipt.gas_used} of {b.gas})"
            )
            self.chain_failed(error, now, rand)
            return BatchChange(
                self._set(batch_id, state=BatchState.REVERTED, error=error, **fields)
            )
        if head - receipt.block_number + 1 < self.config.confirmations:
            if b.state is BatchState.MINED and b.block == receipt.block_number:
                return None
            return BatchChange(self._set(batch_id, state=BatchState.MINED, **fields))
        self.chain_ok()
        batch = self._set(batch_id, state=BatchState.FINAL, **fields)
        return BatchChange(batch, self._apply_receipt(receipt, now))

    def _apply_receipt(self, receipt: SettleReceipt, now: float) -> tuple[tuple[str, int], ...]:
        raised: dict[str, int] = {}
        ours = self.provider.lower()
        for s in receipt.settled:
            if s.provider.lower() == ours and (ch := self._find(s.requester)):
                if s.cumulative > ch.settled:
                    ch.settled = raised[ch.requester] = s.cumulative
        for k in receipt.skipped:
            if k.provider.lower() != ours or not (ch := self._find(k.requester)):
                continue
            ch.last_skip = _SKIP_NAMES.get(k.reason, f"reason {k.reason}")
            if k.reason == SKIP_NOT_INCREASE:
                if k.cumulative > ch.settled:  # the chain has at least this much
                    ch.settled = raised[ch.requester] = k.cumulative
            elif k.reason == SKIP_INSUFFICIENT_DEPOSIT:
                ch.hold = (k.cumulative, now + self.config.retry_max_s)
            else:  # will never pay: wait for a newer voucher
                ch.hold = (k.cumulative, None)
        return tuple(raised.items())

    def settled_seen(self, requester: str, settled: int) -> bool:
        """The chain said ``settled(requester, provider)``; True when it rose."""
        ch = self._find(requester)
        if ch is None or settled <= ch.settled:
            return False
        ch.settled = settled
        return True

    def batch(self, batch_id: int) -> Batch | None:
        if batch_id in self._batches:
            return self._batches[batch_id]
        return next((b for b in self._finished if b.id == batch_id), None)

    def in_flight(self, *states: BatchState) -> list[Batch]:
        want = set(states) or IN_FLIGHT
        return [b for b in self._batches.values() if b.state in want]

    def recent_batches(self) -> list[Batch]:
        return sorted([*self._finished, *self._batches.values()], key=lambda b: b.id)

    def _set(self, batch_id: int, **changes: object) -> Batch:
        b = self._batches.get(batch_id)
        if b is None:
            raise LedgerError(f"batch {batch_id} is not in flight", code="batch_not_in_flight")
        b = replace(b, **changes)  # type: ignore[arg-type]
        if b.state in IN_FLIGHT:
            self._batches[batch_id] = b
        else:
            del self._batches[batch_id]
            self._finished.append(b)
        return b

    # --- the chain's health ---------------------------------------------------

    def chain_failed(self, error: str, now: float, rand: float) -> float:
        """A chain call failed: back off. Returns when to try again."""
        h = self.health
        h.attempts += 1
        h.last_error, h.last_error_at = error, now
        c = self.config
        h.retry_at = now + backoff_delay(h.attempts, c.retry_base_s, c.retry_max_s, rand)
        return h.retry_at

    def chain_ok(self) -> None:
        self.health.attempts = 0
        self.health.retry_at = None

    # --- views --------------------------------------------------------------

    def channels(self) -> list[dict[str, object]]:
        rows = []
        for ch in sorted(self._channels.values(), key=lambda c: c.requester):
            st = self.standing(ch.requester)
            rows.append(
                {
                    "requester": ch.requester,
                    "provider": self.provider,
                    "direction": "in",
                    "cumulative": str(ch.latest.cumulative if ch.latest else 0),
                    "settled": str(ch.settled),
                    "delivered": str(ch.delivered_total),
                    "paid": str(ch.paid_total),
                    "unpaid_jobs": len(ch.unpaid),
                    "standing": {
                        "paid": st.paid,
                        "voucher_missing": st.voucher_missing,
                        "underpaid": st.underpaid,
                        "claimed": st.claimed,
                    },
                    "last_skip": ch.last_skip,
                }
            )
        return rows

    # --- helpers ------------------------------------------------------------

    def _channel(self, requester: str) -> _Channel:
        key = checksum(requester)
        ch = self._channels.get(key)
        if ch is None:
            ch = self._channels[key] = _Channel(key)
        return ch

    def _find(self, requester: str) -> _Channel | None:
        try:
            return self._channels.get(checksum(requester))
        except ValueError:
            return None

    def _in_flight(self) -> dict[str, int]:
        top: dict[str, int] = {}
        for b in self._batches.values():
            for requester, cumulative in b.entries:
                top[requester] = max(top.get(requester, 0), cumulative)
        return top

    def _is_pending(
        self, ch: _Channel, in_flight: dict[str, int], now: float | None = None
    ) -> bool:
        if ch.latest is None:
            return False
        if ch.latest.cumulative <= max(ch.settled, in_flight.get(ch.requester, 0)):
            return False
        if now is not None and ch.hold is not None and ch.hold[0] >= ch.latest.cumulative:
            return ch.hold[1] is not None and now >= ch.hold[1]
        return True


_SKIP_NAMES = {
    SKIP_BAD_SIGNATURE: "bad_signature",
    SKIP_NOT_INCREASE: "not_increase",
    SKIP_INSUFFICIENT_DEPOSIT: "insufficient_deposit",
    SKIP_ZERO_ADDRESS: "zero_address",
}


def _reject(job_id: str, reason: PaymentReason, detail: str) -> PaymentVerdict:
    return PaymentVerdict(Outcome.REJECTED, reason, job_id, detail=detail)


def _well_formed(v: object) -> bool:
    if not isinstance(v, SignedVoucher):
        return False
    c = v.cumulative
    if not isinstance(c, int) or isinstance(c, bool) or not 0 <= c <= MAX_UINT256:
        return False
    if not isinstance(v.signature, bytes) or len(v.signature) != 65:
        return False
    try:
        checksum(v.requester)
        checksum(v.provider)
    except ValueError:
        return False
    return True

"""The provider's side of the market, sans-IO: events in, commands out.

:class:`ProviderCore` answers bids with the bid policy (``scheduler.policy``),
remembers what it quoted until the quote lapses, turns a valid agreement
into a countersign and an execution, heartbeats while the job runs, and signs
the result. Like the requester core it reads no clock and does no I/O; the
commands it returns are run in order, persistence first.

Capacity is counted in one place: running jobs against the configured
totals. A quote does *not* reserve: it says "this is my price, and I had room
when you asked". Capacity is committed only when the agreement arrives, and
checked again then (hard, with the same policy checks as a bid): an agreement
that no longer fits is declined with the capacity reason (``insufficient_cpu``,
``busy``, ...) and the requester offers it to its next quote. Reserving on
quote made a burst of bids fill every slot with reservations for the same
first few jobs (every provider sees the bids in the same order) and refuse the
rest for a whole re-bid period; a declined agreement costs one round trip.
A remembered quote is dropped on lapse, on the requester's
``Cancel(reason="released")``, or when the agreement arrives.

Hostile requesters: bids from one requester are rate limited (token bucket,
``bid_rate_per_s``; the excess is dropped and counted as ``bid_rate_limited``)
and one requester holds at most ``max_quotes_per_requester`` open quotes
(refused with ``too_many_quotes``), so a flood from one peer cannot take the
quotes an honest requester needs. Quotes are keyed by (requester, job id): a
peer that bids with another requester's job id gets a quote of its own and
neither replaces nor blocks the other's.

Restarts: a job the previous run left matched or running is not run again
blindly. :meth:`ProviderCore.resume` asks first, with a heartbeat marked
``resumed`` every interval; the requester answers with the agreement (run it
again from the start) or a ``Cancel`` (``replaced``: another provider has the
job, so nothing is owed for it here). No answer by the job's deadline and the
job ends ``cancelled`` (``unconfirmed``).

Relayed jobs (a DApp's request on ComputeRequests, placed by a gateway; the
executor reports the bundle's ``relay``): the contract pays on fulfilment,
so no voucher is expected (no ``ExpectPayment``: the gateway's account never
turns ``voucher_missing``), and the job's record says which request pays it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from protocol.market import (
    MAX_CODE_CHARS,
    MAX_DETAIL_CHARS,
    MAX_ERROR_MESSAGE_CHARS,
    Agreement,
    Cancel,
    Heartbeat,
    JobBid,
    JobResult,
    MarketKeys,
    MarketMessage,
    Payment,
    Quote,
    Refusal,
    UsageReport,
    encode_market,
    is_amount,
)
from protocol.messages import IdentityRecord
from scheduler import policy
from scheduler.jobstate import JobEvent, JobState, transition
from scheduler.spec import Relay
from scheduler.store import CreateJob, JobRow, RecordTransition

__all__ = [
    "AbortExecution",
    "DisputePayment",
    "ExpectPayment",
    "ForwardPayment",
    "Funds",
    "WithdrawPayment",
    "ExecutionOutcome",
    "failed_outcome",
    "FetchPayload",
    "paid_by",
    "ProviderCommand",
    "ProviderConfig",
    "ProviderCore",
    "SendHeartbeat",
    "SendProviderAgreement",
    "SendQuote",
    "SendRefusal",
    "SendResult",
    "StartExecution",
    "StoreOutput",
]

ROLE = "provider"


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    peer_id: str
    identity: IdentityRecord
    cpu: int
    memory_mb: int
    prices: policy.UnitPrices
    gpu: int = 0
    executors: frozenset[str] = frozenset({"wasm"})
    banned: frozenset[str] = frozenset()
    max_concurrent_jobs: int = 8  # running jobs
    max_open_quotes: int = 4096  # quotes remembered at once (they reserve nothing)
    max_quotes_per_requester: int = 64  # ... of which one requester may hold this many
    bid_rate_per_s: float = 50.0  # bids heard from one requester a second, on average
    bid_burst: int = 200  # ... and at most this many at once
    bid_rate_peers: int = 4096  # requesters whose bid rate is remembered (LRU)
    quote_ttl_s: float = 30.0
    start_margin_s: float = 5.0
    #: the escrow this provider is paid through: agreements must name it
    chain_id: int = 31337
    verifying_contract: str = "0x" + "00" * 20
    #: check the requester's escrow before quoting, and expect a voucher per job
    paid: bool = False


@dataclass(frozen=True, slots=True)
class Funds:
    """A requester's money as the provider's ledger sees it (base units):
    ``available`` in the escrow (on chain, cached) and what it already ``owes``
    this provider for delivered jobs not yet settled."""

    available: int
    owes: int


# --- commands ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendQuote:
    peer_id: str
    message: Quote


@dataclass(frozen=True, slots=True)
class SendRefusal:
    peer_id: str
    message: Refusal


@dataclass(frozen=True, slots=True)
class ExpectPayment:
    """A result went out: the ledger waits for the requester's voucher for it."""

    job_id: str
    requester_peer: str
    requester_account: str
    price: int


@dataclass(frozen=True, slots=True)
class WithdrawPayment:
    """The job ended here (cancelled, replaced, never confirmed) before its result
    went out: drop any voucher the ledger expects for it (a crash may have come
    between ``ExpectPayment`` and the send)."""

    job_id: str


@dataclass(frozen=True, slots=True)
class DisputePayment:
    """The requester refused a result that went out (``Cancel(verification_failed)``
    after the job ended here): no voucher will come, so the ledger treats the job
    as ``voucher_missing`` now (a zk job goes to its on-chain claim)."""

    job_id: str
    requester_peer: str


@dataclass(frozen=True, slots=True)
class ForwardPayment:
    """A requester's ``Payment``: the ledger checks and keeps the voucher."""

    source: str
    payment: Payment


@dataclass(frozen=True, slots=True)
class SendProviderAgreement:
    """The countersigned agreement, back to the requester."""

    peer_id: str
    message: Agreement


@dataclass(frozen=True, slots=True)
class SendHeartbeat:
    peer_id: str
    message: Heartbeat


@dataclass(frozen=True, slots=True)
class SendResult:
    peer_id: str
    message: JobResult


@dataclass(frozen=True, slots=True)
class FetchPayload:
    """Fetch the program and inputs named by ``spec_cid`` from ``peer_id``."""

    job_id: str
    peer_id: str
    spec_cid: str


@dataclass(frozen=True, slots=True)
class StartExecution:
    """Run the job; report with :meth:`ProviderCore.execution_finished`."""

    job_id: str
    agreement: Agreement


@dataclass(frozen=True, slots=True)
class AbortExecution:
    job_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class StoreOutput:
    """Store ``/out`` as a DAG; report its CID with :meth:`ProviderCore.output_stored`."""

    job_id: str


ProviderCommand = (
    ExpectPayment
    | WithdrawPayment
    | DisputePayment
    | ForwardPayment
    | CreateJob
    | RecordTransition
    | SendQuote
    | SendRefusal
    | SendProviderAgreement
    | SendHeartbeat
    | SendResult
    | FetchPayload
    | StartExecution
    | AbortExecution
    | StoreOutput
)


@dataclass(frozen=True, slots=True)
class ExecutionOutcome:
    """What the executor reports (worker.results.ExecResult, boiled down for the wire)."""

    exit_code: int | None
    usage: UsageReport
    stdout_sha256: bytes
    stderr_sha256: bytes
    error_code: str = ""
    error_message: str = ""
    #: the bundle's relay: a DApp's request whose contract pays, not a voucher
    relay: Relay | None = None


def paid_by(relay: Relay) -> dict:
    """How a relayed job's provider record says who pays (``explanation.paid_by``)."""
    return {
        "kind": "compute_request",
        "chain_id": relay.chain_id,
        "contract": relay.contract,
        "request_id": relay.request_id,
    }


def failed_outcome(code: str, message: str) -> ExecutionOutcome:
    """A run that produced nothing: no exit code, no usage, empty logs."""
    empty = hashlib.sha256(b"").digest()
    return ExecutionOutcome(
        exit_code=None,
        usage=UsageReport(),
        stdout_sha256=empty,
        stderr_sha256=empty,
        error_code=code,
        error_message=message,
    )


@dataclass(slots=True)
class _Reservation:
    bid: JobBid
    price_total: int
    valid_until: float


@dataclass(slots=True)
class _Job:
    agreement: Agreement
    state: JobState
    interval: float
    next_heartbeat: float
    heartbeat_seq: int = 0
    usage: UsageReport = field(default_factory=UsageReport)
    outcome: ExecutionOutcome | None = None
    confirmed: bool = True  # False: resumed after a restart, asking the requester first

    @property
    def requester(self) -> str:
        return self.agreement.terms.requester_peer


class ProviderCore:
    def __init__(
        self,
        config: ProviderConfig,
        keys: MarketKeys,
        *,
        funds: Callable[[str], Funds | None] = lambda account: None,
    ):
        """``funds(requester_account)`` reads the ledger's cached view of a
        requester's escrow (no I/O; None: unknown, which refuses when ``paid``)."""
        self.config = config
        self._keys = keys
        self._funds = funds
        # keyed by (requester peer, job id): job ids are only unique per requester
        self._reservations: dict[tuple[str, str], _Reservation] = {}
        self._quotes_held: Counter[str] = Counter()  # open quotes per requester
        self._bid_rate = policy.RateLimiter(
            rate=config.bid_rate_per_s, burst=config.bid_burst, max_keys=config.bid_rate_peers
        )
        self._jobs: dict[str, _Job] = {}
        self.counters: Counter[str] = Counter()

    # --- queries --------------------------------------------------------------

    def running(self) -> list[str]:
        return list(self._jobs)

    def reserved(self) -> list[str]:
        return [job_id for _, job_id in self._reservations]

    def free(self) -> tuple[int, int, int]:
        """Free (cpu, memory_mb, gpu): the totals less running jobs (quotes reserve nothing)."""
        cpu, mem, gpu = self.config.cpu, self.config.memory_mb, self.config.gpu
        for j in self._jobs.values():
            t = j.agreement.terms
            cpu, mem, gpu = cpu - t.cpu, mem - t.memory_mb, gpu - t.gpu
        return cpu, mem, gpu

    def next_deadline(self) -> float | None:
        times = [r.valid_until for r in self._reservations.values()]
        times += [j.next_heartbeat for j in self._jobs.values() if j.outcome is None]
        times += [float(j.agreement.terms.deadline) for j in self._jobs.values() if not j.confirmed]
        return min(times, default=None)

    # --- inputs -----------------------------------------------------------------

    def over_bid_rate(self, requester: str, now: float) -> bool:
        """Whether ``requester`` has used up its bid rate now (takes no token): the
        gossip layer then neither delivers nor relays its bid."""
        return not self._bid_rate.would_allow(requester, now)

    def handle_bid(self, bid: JobBid, now: float) -> list[ProviderCommand]:
        """A bid the validation pipeline accepted."""
        if not self._bid_rate.allow(bid.peer_id, now):
            self.counters["bid_rate_limited"] += 1  # no answer: it would feed the flood
            return []
        if bid.job_id in self._jobs:
            self.counters["bid_for_running_job"] += 1
            return []
        key = (bid.peer_id, bid.job_id)
        old = self._reservations.get(key)
        if old is not None and old.bid.seq >= bid.seq:
            self.counters["bid_stale"] += 1
            return []
        if old is not None:
            self._drop_quote(key)
        cpu, mem, gpu = self.free()
        held, most = self._quotes_held[bid.peer_id], self.config.max_quotes_per_requester
        if held >= most:
            self.counters["refused_too_many_quotes"] += 1
            detail = f"{held} quotes open for this requester, the most is {most}"
            return [self._decline(bid.peer_id, bid.job_id, "too_many_quotes", detail, bid.seq)]
        if len(self._reservations) >= self.config.max_open_quotes:
            self.counters["refused_busy"] += 1
            detail = f"{len(self._reservations)} quotes outstanding"
            return [self._decline(bid.peer_id, bid.job_id, "busy", detail, bid.seq)]
        decision = policy.evaluate(self._policy_bid(bid), self._policy_state(now))
        if isinstance(decision, policy.Refusal):
            self.counters[f"refused_{decision.reason.value}"] += 1
            reason = decision.reason.value
            return [self._decline(bid.peer_id, bid.job_id, reason, decision.detail, bid.seq)]
        if self.config.paid:
            short = self._escrow_short(bid.identity.account, decision.price_total)
            if short is not None:
                self.counters["refused_insufficient_escrow"] += 1
                reason = policy.RefusalReason.INSUFFICIENT_ESCROW.value
                return [self._decline(bid.peer_id, bid.job_id, reason, short, bid.seq)]
        self._reservations[key] = _Reservation(bid, decision.price_total, decision.valid_until)
        self._quotes_held[bid.peer_id] += 1
        quote = Quote(
            job_id=bid.job_id,
            bid_seq=bid.seq,
            peer_id=self.config.peer_id,
            identity=self.config.identity,
            price_total=str(decision.price_total),
            valid_until=decision.valid_until,
            free_cpu=cpu,
            free_memory_mb=mem,
            free_gpu=gpu,
        )
        return [SendQuote(bid.peer_id, quote)]

    def _escrow_short(self, account: str, price: int) -> str | None:
        """Why the requester's escrow cannot pay ``price`` now, or None if it can."""
        funds = self._funds(account)
        if funds is None:
            return "the requester's escrow could not be read from the chain"
        running = sum(
            int(j.agreement.terms.price_total)
            for j in self._jobs.values()
            if j.agreement.terms.requester_account == account
        )
        need = funds.owes + running + price
        if funds.available >= need:
            return None
        return (
            f"escrow available {funds.available}, owed here {funds.owes + running}, "
            f"this job {price} (base units)"
        )

    def handle_message(
        self, source: str, message: MarketMessage, now: float
    ) -> list[ProviderCommand]:
        if isinstance(message, Payment):
            if not self.config.paid:
                self.counters["payment_unexpected"] += 1
                return []
            return [ForwardPayment(source, message)]
        if isinstance(message, Agreement):
            return self._on_agreement(source, message, now)
        if isinstance(message, Cancel):
            return self._on_cancel(source, message)
        self.counters[f"unexpected_{type(message).__name__.lower()}"] += 1
        return []

    def _on_agreement(self, source: str, a: Agreement, now: float) -> list[ProviderCommand]:
        t = a.terms
        running = self._jobs.get(t.job_id)
        if running is not None:
            if running.agreement.terms == t and source == t.requester_peer:
                if not running.confirmed:
                    return self._confirm(running, now)
                # our countersign was lost: send it again, nothing else changes
                return [SendProviderAgreement(source, running.agreement)]
            self.counters["agreement_for_running_job"] += 1
            return []
        key = (source, t.job_id)
        res = self._reservations.get(key)
        if res is None:
            self.counters["agreement_without_quote"] += 1
            return [self._decline(source, t.job_id, "quote_lapsed", "no live quote for this job")]
        self._drop_quote(key)
        problem = self._agreement_problem(a, res)
        if problem is not None:
            self.counters["bad_agreement"] += 1
            return [self._decline(source, t.job_id, "bad_agreement", problem, res.bid.seq)]
        # the quote reserved nothing: commit only if the job still fits now
        full = policy.evaluate(
            self._policy_bid(res.bid), self._policy_state(now), checks=policy.CAPACITY_CHECKS
        )
        if isinstance(full, policy.Refusal):
            self.counters[f"agreement_declined_{full.reason.value}"] += 1
            return [self._decline(source, t.job_id, full.reason.value, full.detail, res.bid.seq)]
        signed = msgspec.structs.replace(a, provider_signature=self._keys.sign_agreement(t))
        interval = t.heartbeat_interval_ms / 1000
        job = _Job(signed, JobState.PENDING, interval, now + interval)
        self._jobs[t.job_id] = job
        stored = {
            "spec_cid": t.spec_cid,
            "requester_peer": t.requester_peer,
            "requester_account": t.requester_account,
            "deadline": t.deadline,
        }
        return [
            CreateJob(t.job_id, ROLE, stored),
            self._transition(
                job,
                JobEvent.MATCHED,
                agreement=encode_market(signed),
                price=t.price_total,
                provider_peer=self.config.peer_id,
                provider_account=self._keys.account,
            ),
            SendProviderAgreement(source, signed),
            FetchPayload(t.job_id, source, t.spec_cid),
            self._transition(job, JobEvent.STARTED),
            StartExecution(t.job_id, signed),
            self._heartbeat(job, now),
        ]

    def _agreement_problem(self, a: Agreement, res: _Reservation) -> str | None:
        t, bid, req = a.terms, res.bid, res.bid.requirements
        if t.provider_peer != self.config.peer_id or t.provider_account != self._keys.account:
            return "the agreement names another provider"
        if t.requester_account != bid.identity.account:
            return "the requester account differs from the bid's identity record"
        if not is_amount(t.price_total) or int(t.price_total) < res.price_total:
            return f"price {t.price_total} is below the quote {res.price_total}"
        asked = (req.cpu, req.memory_mb, req.gpu, req.max_seconds, req.max_fuel)
        if (t.cpu, t.memory_mb, t.gpu, t.max_seconds, t.max_fuel) != asked:
            return "the limits differ from the bid"
        if t.deadline != bid.deadline or t.spec_cid != bid.spec_cid:
            return "the deadline or spec differs from the bid"
        if (t.chain_id, t.verifying_contract.lower()) != (
            self.config.chain_id,
            self.config.verifying_contract.lower(),
        ):
            return (
                f"the agreement is for escrow {t.verifying_contract[:42]} on chain "
                f"{t.chain_id}; this provider is paid by {self.config.verifying_contract} "
                f"on chain {self.config.chain_id}"
            )
        if not 100 <= t.heartbeat_interval_ms <= 600_000:
            return "heartbeat interval out of range"
        if not self._keys.verify_agreement(t, a.requester_signature, t.requester_account):
            return "the requester's signature does not verify"
        return None

    def _on_cancel(self, source: str, c: Cancel) -> list[ProviderCommand]:
        job = self._jobs.get(c.job_id)
        if job is not None and source == job.requester:
            del self._jobs[c.job_id]
            if job.outcome is not None:
                # already finished; the result is on its way or the output is being stored
                self.counters["cancel_after_finish"] += 1
            ended: list[ProviderCommand] = [
                self._transition(job, JobEvent.CANCELLED, reason=c.reason)
            ]
            if self.config.paid:
                ended.append(WithdrawPayment(c.job_id))
            if not job.confirmed:  # resumed and never started: nothing to abort
                self.counters["resume_cancelled"] += 1
                return ended
            return [*ended, AbortExecution(c.job_id, c.reason)]
        if (source, c.job_id) in self._reservations:
            self._drop_quote((source, c.job_id))
            self.counters["quote_released"] += 1
            return []
        if job is None and c.reason == "verification_failed" and self.config.paid:
            # the result went out and the requester refused it: the ledger checks
            # that the job was delivered to ``source`` (its requester) and claims it
            self.counters["result_disputed"] += 1
            return [DisputePayment(c.job_id, source)]
        self.counters["cancel_ignored"] += 1
        return []

    def execution_progress(self, job_id: str, usage: UsageReport) -> None:
        job = self._jobs.get(job_id)
        if job is not None:
            job.usage = usage

    def execution_finished(
        self, job_id: str, outcome: ExecutionOutcome, now: float
    ) -> list[ProviderCommand]:
        job = self._jobs.get(job_id)
        if job is None or job.outcome is not None:
            self.counters["stale_execution"] += 1  # aborted: cancelled or replaced
            return []
        job.outcome, job.usage = outcome, outcome.usage
        return [StoreOutput(job_id)]

    def output_stored(self, job_id: str, output_cid: str, now: float) -> list[ProviderCommand]:
        job = self._jobs.pop(job_id, None)
        if job is None or job.outcome is None:
            self.counters["stale_output"] += 1
            return []
        o = job.outcome
        result = JobResult(
            job_id=job_id,
            peer_id=self.config.peer_id,
            output_cid=output_cid,
            usage=o.usage,
            stdout_sha256=o.stdout_sha256,
            stderr_sha256=o.stderr_sha256,
            exit_code=o.exit_code,
            # bounded like the peer's decoder bounds them (protocol.market)
            error_code=o.error_code[:MAX_CODE_CHARS],
            error_message=o.error_message[:MAX_ERROR_MESSAGE_CHARS],
        )
        result = msgspec.structs.replace(result, signature=self._keys.sign_result(result))
        usage = msgspec.to_builtins(o.usage)
        sent = [
            self._transition(job, JobEvent.RESULT_RECEIVED, output_cid=output_cid, usage=usage),
            SendResult(job.requester, result),
        ]
        # provider side: "verifying" lasts as long as the send; nothing comes back
        if o.error_code:
            error = {"code": o.error_code, "message": o.error_message}
            return [*sent, self._transition(job, JobEvent.FAILED, error=error)]
        if o.relay is not None:
            # the request's contract pays whoever's proof is submitted: no voucher
            self.counters["relayed_delivered"] += 1
            explanation = {"paid_by": paid_by(o.relay)}
            return [*sent, self._transition(job, JobEvent.VERIFIED, explanation=explanation)]
        done: list[ProviderCommand] = [*sent, self._transition(job, JobEvent.VERIFIED)]
        if self.config.paid:
            t = job.agreement.terms
            done.insert(
                0, ExpectPayment(job_id, t.requester_peer, t.requester_account, int(t.price_total))
            )
        return done

    def duplicate_job(self, job_id: str, now: float) -> list[ProviderCommand]:
        """The store refused to create ``job_id``: a job with that id ran here before
        (a peer reusing ids). Nothing of the agreement was persisted or started:
        forget it, free its capacity, and decline it."""
        job = self._jobs.pop(job_id, None)
        self.counters["duplicate_job"] += 1
        if job is None:
            return []
        return [
            self._decline(
                job.requester, job_id, "duplicate_job", "a job with this id was run here before"
            )
        ]

    def output_failed(
        self, job_id: str, code: str, message: str, now: float
    ) -> list[ProviderCommand]:
        """Storing the output failed: the job fails with that reason and no output,
        and the requester is told so in a signed result (its logs are lost too)."""
        job = self._jobs.get(job_id)
        if job is None or job.outcome is None:
            self.counters["stale_output"] += 1
            return []
        job.outcome = dataclasses.replace(job.outcome, error_code=code, error_message=message)
        return self.output_stored(job_id, "", now)

    def resume(self, row: JobRow, now: float) -> list[ProviderCommand]:
        """Pick up a job a previous run left matched or running. The requester may
        have replaced us while we were down: ask it (a ``resumed`` heartbeat, every
        interval) and run the job again only when it answers with the agreement."""
        if row.agreement is None or row.state not in (JobState.MATCHED, JobState.RUNNING):
            return []
        signed = msgspec.msgpack.decode(row.agreement, type=Agreement)
        interval = signed.terms.heartbeat_interval_ms / 1000
        job = _Job(signed, row.state, interval, now + interval, confirmed=False)
        self._jobs[row.job_id] = job
        if now >= signed.terms.deadline:
            return self._give_up(job)
        self.counters["resumed_asking"] += 1
        return [self._heartbeat(job, now)]

    def _confirm(self, job: _Job, now: float) -> list[ProviderCommand]:
        """The requester answered a resumed job's question with the agreement: run it
        again from the start (the sandbox's state did not survive the restart)."""
        job.confirmed = True
        self.counters["resume_confirmed"] += 1
        t = job.agreement.terms
        cmds: list[ProviderCommand] = [FetchPayload(t.job_id, job.requester, t.spec_cid)]
        if job.state is JobState.MATCHED:
            cmds.append(self._transition(job, JobEvent.STARTED))
        return [*cmds, StartExecution(t.job_id, job.agreement), self._heartbeat(job, now)]

    def _give_up(self, job: _Job) -> list[ProviderCommand]:
        """A resumed job the requester never confirmed by its deadline: ended, not run."""
        del self._jobs[job.agreement.terms.job_id]
        self.counters["resume_unconfirmed"] += 1
        job_id = job.agreement.terms.job_id
        ended: list[ProviderCommand] = [
            self._transition(job, JobEvent.CANCELLED, reason="unconfirmed")
        ]
        return [*ended, WithdrawPayment(job_id)] if self.config.paid else ended

    # --- timers -----------------------------------------------------------------

    def handle_timer(self, now: float) -> list[ProviderCommand]:
        for key in [k for k, r in self._reservations.items() if r.valid_until <= now]:
            self._drop_quote(key)
            self.counters["quote_lapsed"] += 1
        cmds: list[ProviderCommand] = []
        for job in list(self._jobs.values()):
            if not job.confirmed and now >= job.agreement.terms.deadline:
                cmds += self._give_up(job)
            elif job.outcome is None and job.next_heartbeat <= now:
                cmds.append(self._heartbeat(job, now))
        return cmds

    # --- helpers ----------------------------------------------------------------

    def _policy_state(self, now: float) -> policy.ProviderState:
        cpu, mem, gpu = self.free()
        return policy.ProviderState(
            executors=self.config.executors,
            free_cpu=cpu,
            free_memory_mb=mem,
            free_gpu=gpu,
            prices=self.config.prices,
            banned=self.config.banned,
            running_jobs=len(self._jobs),
            max_concurrent_jobs=self.config.max_concurrent_jobs,
            now=now,
            start_margin_seconds=self.config.start_margin_s,
            quote_ttl_seconds=self.config.quote_ttl_s,
        )

    @staticmethod
    def _policy_bid(bid: JobBid) -> policy.Bid:
        req = bid.requirements
        return policy.Bid(
            job_id=bid.job_id,
            requester=bid.peer_id,
            executor=req.executor,
            cpu=req.cpu,
            memory_mb=req.memory_mb,
            gpu=req.gpu,
            max_seconds=req.max_seconds,
            max_total=int(bid.max_total),
            deadline=float(bid.deadline),
        )

    def _drop_quote(self, key: tuple[str, str]) -> None:
        del self._reservations[key]
        requester = key[0]
        self._quotes_held[requester] -= 1
        if self._quotes_held[requester] <= 0:
            del self._quotes_held[requester]

    def _heartbeat(self, job: _Job, now: float) -> SendHeartbeat:
        hb = Heartbeat(
            job_id=job.agreement.terms.job_id,
            peer_id=self.config.peer_id,
            seq=job.heartbeat_seq,
            usage=job.usage,
            resumed=not job.confirmed,
        )
        job.heartbeat_seq += 1
        job.next_heartbeat = now + job.interval
        return SendHeartbeat(job.requester, hb)

    def _decline(
        self, peer: str, job_id: str, reason: str, detail: str, seq: int = 0
    ) -> SendRefusal:
        return SendRefusal(
            peer,
            Refusal(
                job_id=job_id,
                bid_seq=seq,
                peer_id=self.config.peer_id,
                reason=reason[:MAX_CODE_CHARS],
                detail=detail[:MAX_DETAIL_CHARS],
            ),
        )

    def _transition(
        self, job: _Job, event: JobEvent, *, reason: str | None = None, **fields: object
    ) -> RecordTransition:
        job.state = transition(job.state, event)
        return RecordTransition(job.agreement.terms.job_id, ROLE, event, fields, reason=reason)

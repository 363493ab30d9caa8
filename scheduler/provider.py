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
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from dataclasses import dataclass, field

import msgspec

from protocol.market import (
    Agreement,
    Cancel,
    Heartbeat,
    JobBid,
    JobResult,
    MarketKeys,
    MarketMessage,
    Quote,
    Refusal,
    UsageReport,
    encode_market,
    is_amount,
)
from protocol.messages import IdentityRecord
from scheduler import policy
from scheduler.jobstate import JobEvent, JobState, transition
from scheduler.store import CreateJob, JobRow, RecordTransition

__all__ = [
    "AbortExecution",
    "ExecutionOutcome",
    "failed_outcome",
    "FetchPayload",
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
    quote_ttl_s: float = 30.0
    start_margin_s: float = 5.0


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
    CreateJob
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

    @property
    def requester(self) -> str:
        return self.agreement.terms.requester_peer


class ProviderCore:
    def __init__(self, config: ProviderConfig, keys: MarketKeys):
        self.config = config
        self._keys = keys
        self._reservations: dict[str, _Reservation] = {}
        self._jobs: dict[str, _Job] = {}
        self.counters: Counter[str] = Counter()

    # --- queries --------------------------------------------------------------

    def running(self) -> list[str]:
        return list(self._jobs)

    def reserved(self) -> list[str]:
        return list(self._reservations)

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
        return min(times, default=None)

    # --- inputs -----------------------------------------------------------------

    def handle_bid(self, bid: JobBid, now: float) -> list[ProviderCommand]:
        """A bid the validation pipeline accepted."""
        if bid.job_id in self._jobs:
            self.counters["bid_for_running_job"] += 1
            return []
        old = self._reservations.pop(bid.job_id, None)
        if old is not None and old.bid.seq >= bid.seq:
            self._reservations[bid.job_id] = old
            self.counters["bid_stale"] += 1
            return []
        cpu, mem, gpu = self.free()
        me = self.config.peer_id
        if len(self._reservations) >= self.config.max_open_quotes:
            self.counters["refused_busy"] += 1
            detail = f"{len(self._reservations)} quotes outstanding"
            refusal = Refusal(
                job_id=bid.job_id, bid_seq=bid.seq, peer_id=me, reason="busy", detail=detail
            )
            return [SendRefusal(bid.peer_id, refusal)]
        decision = policy.evaluate(self._policy_bid(bid), self._policy_state(now))
        if isinstance(decision, policy.Refusal):
            self.counters[f"refused_{decision.reason.value}"] += 1
            refusal = Refusal(
                job_id=bid.job_id,
                bid_seq=bid.seq,
                peer_id=me,
                reason=decision.reason.value,
                detail=decision.detail,
            )
            return [SendRefusal(bid.peer_id, refusal)]
        self._reservations[bid.job_id] = _Reservation(
            bid, decision.price_total, decision.valid_until
        )
        quote = Quote(
            job_id=bid.job_id,
            bid_seq=bid.seq,
            peer_id=me,
            identity=self.config.identity,
            price_total=str(decision.price_total),
            valid_until=decision.valid_until,
            free_cpu=cpu,
            free_memory_mb=mem,
            free_gpu=gpu,
        )
        return [SendQuote(bid.peer_id, quote)]

    def handle_message(
        self, source: str, message: MarketMessage, now: float
    ) -> list[ProviderCommand]:
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
                # our countersign was lost: send it again, nothing else changes
                return [SendProviderAgreement(source, running.agreement)]
            self.counters["agreement_for_running_job"] += 1
            return []
        res = self._reservations.get(t.job_id)
        if res is None or res.bid.peer_id != source:
            self.counters["agreement_without_quote"] += 1
            return [self._decline(source, t.job_id, "quote_lapsed", "no live quote for this job")]
        problem = self._agreement_problem(a, res)
        if problem is not None:
            del self._reservations[t.job_id]
            self.counters["bad_agreement"] += 1
            return [self._decline(source, t.job_id, "bad_agreement", problem, res.bid.seq)]
        del self._reservations[t.job_id]
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
            return [
                self._transition(job, JobEvent.CANCELLED, reason=c.reason),
                AbortExecution(c.job_id, c.reason),
            ]
        res = self._reservations.get(c.job_id)
        if res is not None and source == res.bid.peer_id:
            del self._reservations[c.job_id]
            self.counters["quote_released"] += 1
            return []
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
            error_code=o.error_code,
            error_message=o.error_message,
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
        return [*sent, self._transition(job, JobEvent.VERIFIED)]

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
        """Restart a job a previous run left matched or running: run it again from the start."""
        if row.agreement is None or row.state not in (JobState.MATCHED, JobState.RUNNING):
            return []
        signed = msgspec.msgpack.decode(row.agreement, type=Agreement)
        interval = signed.terms.heartbeat_interval_ms / 1000
        job = _Job(signed, row.state, interval, now + interval)
        self._jobs[row.job_id] = job
        cmds: list[ProviderCommand] = [
            FetchPayload(row.job_id, job.requester, signed.terms.spec_cid)
        ]
        if row.state is JobState.MATCHED:
            cmds.append(self._transition(job, JobEvent.STARTED))
        return [*cmds, StartExecution(row.job_id, signed), self._heartbeat(job, now)]

    # --- timers -----------------------------------------------------------------

    def handle_timer(self, now: float) -> list[ProviderCommand]:
        for job_id in [j for j, r in self._reservations.items() if r.valid_until <= now]:
            del self._reservations[job_id]
            self.counters["quote_lapsed"] += 1
        return [
            self._heartbeat(job, now)
            for job in self._jobs.values()
            if job.outcome is None and job.next_heartbeat <= now
        ]

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

    def _heartbeat(self, job: _Job, now: float) -> SendHeartbeat:
        hb = Heartbeat(
            job_id=job.agreement.terms.job_id,
            peer_id=self.config.peer_id,
            seq=job.heartbeat_seq,
            usage=job.usage,
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
                reason=reason,
                detail=detail,
            ),
        )

    def _transition(
        self, job: _Job, event: JobEvent, *, reason: str | None = None, **fields: object
    ) -> RecordTransition:
        job.state = transition(job.state, event)
        return RecordTransition(job.agreement.terms.job_id, ROLE, event, fields, reason=reason)

"""The requester's side of the market, sans-IO: events in, commands out.

One :class:`RequesterCore` tracks every job this node has submitted. It never
touches a socket, a clock or the disk: each call takes ``now`` and returns a
list of commands, *in the order they must run*. Persistence commands
(:class:`~scheduler.store.CreateJob`, :class:`~scheduler.store.RecordTransition`)
come before the sends they justify, so a shell that runs the list in order
persists every transition before acting on it. Timers follow aioquic: the
shell sleeps until :meth:`RequesterCore.next_deadline` and calls
:meth:`RequesterCore.handle_timer`.

A job's market life (docs/market.md has the diagram)::

    submit -> PublishBid; quotes and refusals arrive for one quote window
    window ends (or enough quotes) -> rank -> SendAgreement to the best
    countersigned -> matched; first heartbeat -> running
    heartbeats stop / provider deadline missed -> provider_replaced -> next quote,
        or a fresh bid round when none is left
    result from the current provider -> verifying -> FetchOutput
    output verified -> completed, owed recorded in the same transaction (a
        relayed job, ``JobSpec.relay``: nothing owed and no voucher; the
        DApp's contract pays when the gateway submits the proof)
    output rejected (verify mode zk: a proof that fails) -> not paid, the
        provider scored down and excluded -> provider_replaced -> a fresh bid
        round, at most ``max_verify_attempts`` providers in all, then failed
        with ``verification_failed`` and every provider's reason

Peer mistakes (a quote for an unknown job, a result from a replaced provider)
are dropped and counted in :attr:`RequesterCore.counters`, never raised. A
provider that speaks of a job it no longer has (it was replaced, or the job
was cancelled, while it was down or cut off) is told so with a ``Cancel``
(``replaced`` / ``cancelled``), so both sides' records end the same way; a
provider back from a restart that still has the job (a ``resumed`` heartbeat)
is answered with the agreement, and its heartbeat count starts over.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import msgspec

from protocol.errors import JobError
from protocol.identity import verify_identity_record
from protocol.market import (
    Agreement,
    AgreementTerms,
    Cancel,
    Heartbeat,
    JobBid,
    JobRequirements,
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
from protocol.messages import IdentityRecord, ResourceOffer
from scheduler.explain import explain_job
from scheduler.jobstate import JobEvent, JobState, transition
from scheduler.reputation import Evidence, EvidenceKind, ReputationBook
from scheduler.selection import Candidate, Capacity, Job, Requirements, rank
from scheduler.spec import JobSpec
from scheduler.store import CreateJob, JobRow, OwedEntry, RecordTransition

__all__ = [
    "FetchOutput",
    "FetchLogs",
    "PublishBid",
    "RequesterCommand",
    "RequesterConfig",
    "RequesterCore",
    "RequesterJob",
    "SendAgreement",
    "SendCancel",
    "SendPayment",
]

ROLE = "requester"
#: Verify modes whose rejected result sends the job to another provider: a
#: proof is checked against the requester's own key, so a failure is the
#: provider's, and another provider may well prove it. (A receipt that cannot
#: be fetched fails the job, as before.)
_REPLACE_ON_REJECTED = frozenset({"zk"})
_PLACED = frozenset({JobState.MATCHED, JobState.RUNNING})
#: what a provider replaced for each reason showed (scheduler.reputation)
_REPLACED_EVIDENCE = {
    "heartbeat_timeout": EvidenceKind.VANISHED,
    "provider_deadline_missed": EvidenceKind.TIMED_OUT,
    "bad_result_signature": EvidenceKind.CAUGHT_WRONG,
    "verification_failed": EvidenceKind.CAUGHT_WRONG,
}
#: An agreement declined for one of these may be offered to that provider in a later round.
_TRANSIENT_DECLINES = frozenset(
    {"busy", "insufficient_cpu", "insufficient_memory", "insufficient_gpu", "quote_lapsed"}
)


@dataclass(frozen=True, slots=True)
class RequesterConfig:
    peer_id: str
    identity: IdentityRecord
    chain_id: int = 31337
    verifying_contract: str = "0x" + "00" * 20
    quote_window_s: float = 0.5  # collect quotes this long before choosing
    enough_quotes: int = 3  # ... or choose as soon as this many arrived
    bid_ttl_s: float = 30.0
    rebid_after_s: float = 1.0  # a round with no usable quote is repeated after this
    rebid_jitter: float = 0.5  # ... plus up to this fraction more, per job (spreads re-bids)
    admit_by_offers: bool = True  # bid for no more cpu at once than the offer book holds ...
    admit_extra: float = 0.0  # ... times (1 + this); 0.5 measured worse (re-bid rounds)
    agreement_timeout_s: float = 5.0  # countersign or be skipped
    heartbeat_interval_s: float = 1.0  # asked of the provider in the agreement
    missed_heartbeats: int = 3  # this many missed intervals and the provider is replaced
    start_grace_s: float = 5.0  # provider deadline = matched + max_seconds + this
    max_open_jobs: int = 10_000
    max_quotes_per_job: int = 64
    finished_kept: int = 4096  # finished jobs remembered, to recognise late results
    #: sign and send each verified job's cumulative voucher (``Payment``); off
    #: only when no chain is configured (``chain.backend = "off"``)
    pay: bool = True
    #: on a restart, send again the latest voucher of channels paid this recently
    #: (the provider may never have received it; a duplicate pays nothing twice)
    resend_vouchers_s: float = 86400.0
    #: a voucher is not acknowledged: send the channel's latest again this many
    #: seconds after it was first sent (a provider that died as it arrived gets
    #: it once it is back; a duplicate pays nothing twice)
    voucher_resend_after_s: tuple[float, ...] = (5.0, 30.0, 120.0)
    #: verify mode zk: this many providers' results may fail their check before
    #: the job fails with ``verification_failed`` (each failure places it again)
    max_verify_attempts: int = 3


# --- commands ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PublishBid:
    """Sign with the peer key and gossip on ``/mask/bids/1``."""

    bid: JobBid


@dataclass(frozen=True, slots=True)
class SendAgreement:
    peer_id: str
    message: Agreement


@dataclass(frozen=True, slots=True)
class SendCancel:
    peer_id: str
    message: Cancel


@dataclass(frozen=True, slots=True)
class FetchOutput:
    """Fetch ``output_cid`` from the provider, check it per ``verify_mode``, and
    report back with :meth:`RequesterCore.output_verified`."""

    job_id: str
    peer_id: str
    output_cid: str
    verify_mode: str


@dataclass(frozen=True, slots=True)
class FetchLogs:
    """Fetch a failed job's output (its stdout and stderr) from the provider, so the
    requester can read why it failed; best effort, nothing reports back."""

    job_id: str
    peer_id: str
    output_cid: str


@dataclass(frozen=True, slots=True)
class SendPayment:
    """The channel's cumulative voucher, to the provider (after the owed row is
    persisted, so the total it carries is never more than the store holds)."""

    peer_id: str
    message: Payment


RequesterCommand = (
    CreateJob
    | RecordTransition
    | PublishBid
    | SendAgreement
    | SendCancel
    | FetchOutput
    | FetchLogs
    | SendPayment
)


# --- the job record ------------------------------------------------------------


@dataclass(slots=True)
class RequesterJob:
    """What the core knows about one job. Read it (``explain``); do not mutate it."""

    job_id: str
    spec: JobSpec
    spec_cid: str
    requirements: JobRequirements
    max_total: int
    deadline: int
    submitted_at: float
    state: JobState = JobState.PENDING
    bid_seq: int = 0
    queued: bool = False  # waiting for room in the offer book before its first bid
    round_opened_at: float = 0.0
    answered: set[str] = field(default_factory=set)  # peers that answered this round
    window_ends: float | None = None
    rebid_at: float | None = None
    quotes: dict[str, Quote] = field(default_factory=dict)
    refusals: dict[str, Refusal] = field(default_factory=dict)
    excluded: set[str] = field(default_factory=set)
    offered: AgreementTerms | None = None
    agreement_deadline: float | None = None
    provider: str | None = None
    terms: AgreementTerms | None = None
    agreement: Agreement | None = None  # ours, signed: the answer to a resumed provider
    liveness_deadline: float | None = None
    provider_deadline: float | None = None
    heartbeat_seq: int = -1
    usage: UsageReport = UsageReport()
    output_cid: str | None = None
    replaced: list[str] = field(default_factory=list)
    late_results: int = 0
    error: dict | None = None
    explanation: dict | None = None
    #: each provider whose result failed verification: peer, account, output, reason
    verification_failures: list[dict] = field(default_factory=list)

    def timers(self) -> Iterable[float]:
        if self.state in (JobState.PENDING, JobState.MATCHED, JobState.RUNNING):
            yield float(self.deadline)
        for t in (
            self.window_ends,
            self.rebid_at,
            self.agreement_deadline,
            self.liveness_deadline,
            self.provider_deadline,
        ):
            if t is not None:
                yield t


def _requirements(spec: JobSpec) -> JobRequirements:
    """What a bid asks of providers, from the job's spec."""
    res = spec.resources
    return JobRequirements(
        executor=spec.executor,
        cpu=res.cpu,
        memory_mb=res.memory_mb,
        gpu=res.gpu,
        max_seconds=res.max_seconds,
        max_fuel=res.max_fuel or 0,
    )


def _failures_from(verification: dict | None) -> list[dict]:
    """The rejected attempts a job row's ``verification`` records (written by
    the shell's output checker, ``maskd.payloads``), for a resumed job."""
    attempts = verification.get("attempts") if isinstance(verification, dict) else None
    if not isinstance(attempts, list):
        return []
    return [
        {
            "provider_peer": a.get("provider_peer"),
            "provider_account": a.get("provider_account"),
            "output_cid": a.get("output_cid"),
            "reason": a.get("reason"),
        }
        for a in attempts
        if isinstance(a, dict) and a.get("valid") is False
    ]


class RequesterCore:
    def __init__(
        self,
        config: RequesterConfig,
        keys: MarketKeys,
        *,
        offers: Callable[[], Iterable[ResourceOffer]] = tuple,
        peer_stats: Callable[[str], tuple[float, float]] = lambda peer: (0.0, 0.0),
    ):
        """``offers`` reads the offer book (for explanations); ``peer_stats(peer)``
        gives (reputation from outside, latency in ms), e.g. from the mesh's
        misbehaviour scores and pings. Neither may do I/O."""
        self.config = config
        self._keys = keys
        self._offers = offers
        self._peer_stats = peer_stats
        # Our own evidence about each provider account (scheduler.reputation):
        # its score ranks quotes, added to peer_stats's. The store keeps the
        # evidence; ``load_evidence`` reads it back at start.
        self.book = ReputationBook()
        self._jobs: dict[str, RequesterJob] = {}
        self._finished: OrderedDict[str, RequesterJob] = OrderedDict()
        self._submitted = 0
        self._queue: deque[str] = deque()  # queued job ids, submission order
        self._admit_check_at: float | None = None
        self.counters: Counter[str] = Counter()
        # cumulative owed per provider account: the sum of the store's owed rows
        self.channels: dict[str, int] = {}
        # per provider account: (first sent at, resends done, provider peer, job id)
        self._resends: dict[str, tuple[float, int, str, str]] = {}

    # --- queries --------------------------------------------------------------

    def job(self, job_id: str) -> RequesterJob | None:
        return self._jobs.get(job_id) or self._finished.get(job_id)

    def open_jobs(self) -> list[RequesterJob]:
        return list(self._jobs.values())

    def explain(self, job_id: str, now: float) -> dict:
        job = self.job(job_id)
        if job is None:
            raise JobError(f"no job {job_id}", code="job_not_found")
        return self._explain(job, now)

    def _explain(self, job: RequesterJob, now: float) -> dict:
        """``explain_job``, plus each provider whose result failed verification."""
        out = explain_job(job, self._offers(), now=now)
        if job.verification_failures:
            out["verification_failures"] = [dict(f) for f in job.verification_failures]
            lines = [f"results rejected ({len(job.verification_failures)}):"]
            lines += [
                f"  {str(f.get('provider_peer'))[-8:]}: {f.get('reason')}"
                for f in job.verification_failures
            ]
            out["text"] = "\n".join([out["text"], *lines])
        return out

    def next_deadline(self) -> float | None:
        times = [t for job in self._jobs.values() for t in job.timers()]
        if self._queue and self._admit_check_at is not None:
            times.append(self._admit_check_at)
        delays = self.config.voucher_resend_after_s
        times += [first + delays[done] for first, done, _, _ in self._resends.values()]
        return min(times, default=None)

    # --- local inputs -----------------------------------------------------------

    def submit(
        self, spec: JobSpec, spec_cid: str, now: float
    ) -> tuple[str, list[RequesterCommand]]:
        if len(self._jobs) >= self.config.max_open_jobs:
            raise JobError(
                f"{len(self._jobs)} jobs are open, the most is {self.config.max_open_jobs}",
                code="too_many_jobs",
                hint="wait for some to finish, or raise the limit in the config",
            )
        self._submitted += 1
        seed = f"{self.config.peer_id}\n{spec_cid}\n{now!r}\n{self._submitted}"
        job_id = hashlib.sha256(seed.encode()).hexdigest()
        job = RequesterJob(
            job_id=job_id,
            spec=spec,
            spec_cid=spec_cid,
            requirements=_requirements(spec),
            max_total=spec.price.max_total,
            deadline=int(now + spec.price.deadline_seconds),
            submitted_at=now,
        )
        self._jobs[job_id] = job
        stored = {
            "spec": msgspec.to_builtins(spec),
            "spec_cid": spec_cid,
            "deadline": job.deadline,
            "submitted_at": now,
        }
        return job_id, [CreateJob(job_id, ROLE, stored), *self._enqueue(job, now)]

    def cancel(self, job_id: str, now: float) -> list[RequesterCommand]:
        job = self._jobs.get(job_id)
        if job is None:
            raise JobError(f"job {job_id} is not active", code="job_not_active")
        cmds = self._finish(job, JobEvent.CANCELLED, now, stop_provider="cancelled")
        return cmds + self._admit(now)

    def output_verified(
        self, job_id: str, ok: bool, detail: str, now: float
    ) -> list[RequesterCommand]:
        job = self._jobs.get(job_id)
        if job is None or job.state is not JobState.VERIFYING or job.terms is None:
            self.counters["stale_verification"] += 1
            return []
        if not ok:
            return self._rejected(job, detail, now) + self._admit(now)
        t = job.terms
        verified = self._evidence(job, EvidenceKind.VERIFIED, now)
        if job.spec.relay is not None:
            # a DApp's request: its contract pays the provider when the gateway
            # submits the proof; nothing is owed here and no voucher is signed
            self.counters["relayed_verified"] += 1
            return self._finish(job, JobEvent.VERIFIED, now, evidence=verified) + self._admit(now)
        owed = OwedEntry(job.job_id, t.provider_peer, t.provider_account, t.price_total)
        cmds = self._finish(job, JobEvent.VERIFIED, now, owed=owed, evidence=verified)
        self.channels[t.provider_account] = self.channels.get(t.provider_account, 0) + int(
            t.price_total
        )
        if self.config.pay:
            cmds.append(self._payment(job.job_id, t.provider_peer, t.provider_account, now))
        return cmds + self._admit(now)

    def _rejected(self, job: RequesterJob, detail: str, now: float) -> list[RequesterCommand]:
        """The result did not pass: nothing is owed, the provider loses reputation,
        and a zk job goes to another provider while attempts remain."""
        t = job.terms
        assert t is not None
        failure = {
            "provider_peer": t.provider_peer,
            "provider_account": t.provider_account,
            "output_cid": job.output_cid,
            "reason": detail,
        }
        if not any(
            (f.get("provider_peer"), f.get("output_cid")) == (t.provider_peer, job.output_cid)
            for f in job.verification_failures
        ):  # a restart may check the same result again
            job.verification_failures.append(failure)
        self.counters["verification_failed"] += 1
        if (
            job.spec.verify.mode in _REPLACE_ON_REJECTED
            and len(job.verification_failures) < self.config.max_verify_attempts
        ):
            job.output_cid = None
            return self._replace(
                job, now, reason="verification_failed", detail=detail, output_cid=None
            )
        wrong = self._evidence(job, EvidenceKind.CAUGHT_WRONG, now, detail)
        if job.spec.verify.mode in _REPLACE_ON_REJECTED:
            n = len(job.verification_failures)
            message = f"the results of {n} provider(s) failed verification; the last: {detail}"
        else:
            message = detail
        error = {"code": "verification_failed", "message": message}
        return self._finish(job, JobEvent.FAILED, now, error=error, evidence=wrong)

    def load_channels(self, owed: Iterable[OwedEntry], now: float) -> list[RequesterCommand]:
        """Start from the store's owed rows (append-only, one per job): each
        channel's cumulative is their sum. Channels paid within
        ``resend_vouchers_s`` get their latest voucher again: a crash may have
        come between persisting the owed row and sending the voucher."""
        self.channels = {}
        last: dict[str, OwedEntry] = {}
        for entry in owed:
            account = entry.provider_account
            self.channels[account] = self.channels.get(account, 0) + int(entry.amount)
            if entry.recorded_at >= now - self.config.resend_vouchers_s:
                last[account] = entry
        if not self.config.pay:
            return []
        return [
            self._payment(e.job_id, e.provider_peer, account, now) for account, e in last.items()
        ]

    def _payment(
        self,
        job_id: str,
        provider_peer: str,
        provider_account: str,
        now: float,
        *,
        first_at: float | None = None,
        resends: int = 0,
    ) -> SendPayment:
        cumulative = self.channels[provider_account]
        if resends < len(self.config.voucher_resend_after_s):
            first = now if first_at is None else first_at
            self._resends[provider_account] = (first, resends, provider_peer, job_id)
        else:
            self._resends.pop(provider_account, None)
        payment = Payment(
            job_id=job_id,
            peer_id=self.config.peer_id,
            cumulative=str(cumulative),
            signature=self._keys.sign_voucher(provider_account, cumulative),
        )
        self.counters["vouchers_signed"] += 1
        return SendPayment(provider_peer, payment)

    def resume(self, row: JobRow, now: float) -> list[RequesterCommand]:
        """Pick up a job a previous run of the daemon left open (``store.open_jobs``)."""
        spec = msgspec.convert(row.spec["spec"], JobSpec)
        job = RequesterJob(
            job_id=row.job_id,
            spec=spec,
            spec_cid=row.spec["spec_cid"],
            requirements=_requirements(spec),
            max_total=spec.price.max_total,
            deadline=int(row.spec["deadline"]),
            submitted_at=float(row.spec["submitted_at"]),
            state=row.state,
        )
        job.verification_failures = _failures_from(row.verification)
        for failure in job.verification_failures:
            job.excluded.add(str(failure.get("provider_peer")))
        self._jobs[job.job_id] = job
        if row.state is JobState.PENDING or row.agreement is None:
            return self._enqueue(job, now)
        agreement = msgspec.msgpack.decode(row.agreement, type=Agreement)
        job.terms, job.provider = agreement.terms, agreement.terms.provider_peer
        job.agreement = msgspec.structs.replace(agreement, provider_signature=b"")
        if row.state is JobState.VERIFYING and row.output_cid:
            job.output_cid = row.output_cid
            return [FetchOutput(job.job_id, job.provider, row.output_cid, spec.verify.mode)]
        # matched or running: give the provider one liveness period to show it is still there
        job.liveness_deadline = now + self._heartbeat_timeout()
        job.provider_deadline = now + job.requirements.max_seconds + self.config.start_grace_s
        return []

    # --- peer inputs ------------------------------------------------------------

    def handle_message(
        self, source: str, message: MarketMessage, now: float
    ) -> list[RequesterCommand]:
        """A direct message from ``source`` (the stream's authenticated peer id)."""
        cmds = self._handle_message(source, message, now)
        return cmds + self._admit(now) if self._queue else cmds

    def _handle_message(
        self, source: str, message: MarketMessage, now: float
    ) -> list[RequesterCommand]:
        job_id = message.terms.job_id if isinstance(message, Agreement) else message.job_id
        job = self._jobs.get(job_id)
        if isinstance(message, JobResult):
            return self._on_result(source, message, job, now)
        if isinstance(message, Heartbeat) and (job is None or source != job.provider):
            return self._from_former_provider(source, message, job, "heartbeat")
        if job is None:
            self.counters[f"unknown_job_{type(message).__name__.lower()}"] += 1
            return []
        if isinstance(message, Quote):
            return self._on_quote(source, message, job, now)
        if isinstance(message, Refusal):
            return self._on_refusal(source, message, job, now)
        if isinstance(message, Agreement):
            return self._on_countersign(source, message, job, now)
        if isinstance(message, Heartbeat):
            return self._on_heartbeat(source, message, job, now)
        self.counters["unexpected_message"] += 1
        return []

    def _on_quote(self, source: str, q: Quote, job: RequesterJob, now: float) -> list:
        if job.state is not JobState.PENDING or q.bid_seq != job.bid_seq:
            self.counters["stale_quote"] += 1
            return []
        if q.peer_id != source or q.identity.peer_id != source:
            self.counters["quote_source_mismatch"] += 1
            return []
        if source in job.excluded or source in job.quotes:
            self.counters["quote_ignored"] += 1
            return []
        if not is_amount(q.price_total) or int(q.price_total) > job.max_total:
            self.counters["quote_over_budget"] += 1
            return []
        if q.valid_until <= now or not verify_identity_record(q.identity):
            self.counters["quote_invalid"] += 1
            return []
        if len(job.quotes) >= self.config.max_quotes_per_job:
            self.counters["quote_overflow"] += 1
            return []
        job.quotes[source] = q
        job.refusals.pop(source, None)
        job.answered.add(source)
        waiting_for_window = job.window_ends is not None
        if job.offered is None and (
            not waiting_for_window
            or len(job.quotes) >= self.config.enough_quotes
            or self._all_answered(job)
        ):
            return self._select(job, now)
        return []

    def _all_answered(self, job: RequesterJob) -> bool:
        """Every other provider in the offer book answered this round: waiting out
        the quote window would bring nothing more."""
        me = self.config.peer_id
        expected = {o.peer_id for o in self._offers()} - {me}
        return bool(expected) and expected <= job.answered

    def _on_refusal(self, source: str, r: Refusal, job: RequesterJob, now: float) -> list:
        if r.peer_id != source:
            self.counters["refusal_source_mismatch"] += 1
            return []
        if job.offered is not None and job.offered.provider_peer == source:
            # the provider declined the agreement itself: full by now (quotes reserve
            # nothing), its quote lapsed, or it found fault with the terms
            job.refusals[source] = r
            job.quotes.pop(source, None)
            if r.reason not in _TRANSIENT_DECLINES:
                job.excluded.add(source)  # a later round may ask it again otherwise
            job.offered = job.agreement_deadline = None
            return self._select(job, now)
        if job.state is JobState.PENDING and r.bid_seq == job.bid_seq:
            job.refusals[source] = r
            job.answered.add(source)
            if job.window_ends is not None and job.offered is None and self._all_answered(job):
                return self._select(job, now)
        return []

    def _on_countersign(self, source: str, a: Agreement, job: RequesterJob, now: float) -> list:
        offered = job.offered
        if offered is None or source != offered.provider_peer or a.terms != offered:
            self.counters["unexpected_agreement"] += 1
            return []
        if not self._keys.verify_agreement(a.terms, a.provider_signature, offered.provider_account):
            self.counters["bad_countersign"] += 1
            job.excluded.add(source)
            job.offered = job.agreement_deadline = None
            return self._select(job, now)
        job.offered = job.agreement_deadline = None
        job.window_ends = job.rebid_at = None
        job.provider, job.terms = source, a.terms
        job.agreement = msgspec.structs.replace(a, provider_signature=b"")
        job.heartbeat_seq = -1
        job.liveness_deadline = now + self._heartbeat_timeout()
        job.provider_deadline = now + job.requirements.max_seconds + self.config.start_grace_s
        # Release the runners-up now rather than at the end: their reserved
        # capacity is what the next jobs need. A failover bids afresh.
        me = self.config.peer_id
        released = [
            SendCancel(peer, Cancel(job_id=job.job_id, peer_id=me, reason="released"))
            for peer in sorted(job.quotes)
            if peer != source
        ]
        job.quotes = {source: job.quotes[source]} if source in job.quotes else {}
        return released + [
            self._transition(
                job,
                JobEvent.MATCHED,
                provider_peer=source,
                provider_account=offered.provider_account,
                price=offered.price_total,
                agreement=encode_market(a),
            )
        ]

    def _on_heartbeat(self, source: str, hb: Heartbeat, job: RequesterJob, now: float) -> list:
        if source != job.provider or job.state not in _PLACED:
            self.counters["heartbeat_ignored"] += 1
            return []
        if hb.resumed and job.agreement is not None:
            # the provider restarted and asks whether the job is still its own: it
            # is; it runs it again from the start, and counts heartbeats from 0
            self.counters["provider_resumed"] += 1
            job.heartbeat_seq = hb.seq
            job.liveness_deadline = now + self._heartbeat_timeout()
            return [SendAgreement(source, job.agreement)]
        if hb.seq <= job.heartbeat_seq:
            self.counters["heartbeat_stale"] += 1
            return []
        job.heartbeat_seq, job.usage = hb.seq, hb.usage
        job.liveness_deadline = now + self._heartbeat_timeout()
        if job.state is JobState.MATCHED:
            return [self._transition(job, JobEvent.STARTED)]
        return []

    def _from_former_provider(
        self, source: str, message: Heartbeat | JobResult, job: RequesterJob | None, kind: str
    ) -> list[RequesterCommand]:
        """A heartbeat or result for a job ``source`` is not (or no longer) running
        for us. A provider we replaced, or whose job ended while it was away, is
        told so, so that it ends its record of the job instead of running it on
        (or again) for a price nobody owes it; anyone else is ignored."""
        job = job or self._finished.get(message.job_id)
        if job is None:
            self.counters[f"unknown_job_{kind}"] += 1
            return []
        if source in job.replaced:
            reason = "replaced"
        elif (
            kind == "heartbeat"  # a result means the provider has already ended its record
            and source == job.provider
            and job.state in (JobState.FAILED, JobState.CANCELLED)
        ):
            reason = "cancelled"
        else:
            self.counters[f"{kind}_ignored"] += 1
            return []
        if kind == "result":
            job.late_results += 1
            self.counters["late_result_ignored"] += 1
        self.counters[f"told_{reason}"] += 1
        cancel = Cancel(job_id=job.job_id, peer_id=self.config.peer_id, reason=reason)
        return [SendCancel(source, cancel)]

    def _on_result(self, source: str, r: JobResult, job: RequesterJob | None, now: float) -> list:
        if job is None or source != job.provider:
            return self._from_former_provider(source, r, job, "result")
        if job.state not in _PLACED or job.terms is None:
            self.counters["result_ignored"] += 1
            return []
        if r.peer_id != source or not self._keys.verify_result(r, job.terms.provider_account):
            self.counters["bad_result_signature"] += 1
            return self._replace(job, now, reason="bad_result_signature")
        cmds: list[RequesterCommand] = []
        if job.state is JobState.MATCHED:
            cmds.append(self._transition(job, JobEvent.STARTED))
        job.usage = r.usage
        job.liveness_deadline = job.provider_deadline = None
        usage = msgspec.to_builtins(r.usage)
        # a result that arrives at all arrived in time: a late one finds the
        # provider already replaced (the timers run first)
        on_time = self._evidence(job, EvidenceKind.ON_TIME, now)
        if r.error_code:
            # a failed run still has logs: keep its output CID and fetch it, so
            # `mask job ID --logs` can show the program's stderr
            fields = {}
            if r.output_cid:
                job.output_cid = fields["output_cid"] = r.output_cid
            cmds.append(
                self._transition(
                    job, JobEvent.RESULT_RECEIVED, usage=usage, evidence=on_time, **fields
                )
            )
            error = {"code": r.error_code, "message": r.error_message, "exit_code": r.exit_code}
            cmds += self._finish(job, JobEvent.FAILED, now, error=error)
            if r.output_cid:
                cmds.append(FetchLogs(job.job_id, source, r.output_cid))
            return cmds + self._wake_one(now)
        job.output_cid = r.output_cid
        cmds.append(
            self._transition(
                job,
                JobEvent.RESULT_RECEIVED,
                usage=usage,
                output_cid=r.output_cid,
                evidence=on_time,
            )
        )
        cmds.append(FetchOutput(job.job_id, source, r.output_cid, job.spec.verify.mode))
        return cmds + self._wake_one(now)

    def _wake_one(self, now: float) -> list[RequesterCommand]:
        """A result means a provider has just freed the job's capacity: the oldest job
        waiting out its re-bid delay bids again now rather than when the delay ends."""
        for job in self._jobs.values():
            if (
                job.state is JobState.PENDING
                and not job.queued
                and job.rebid_at is not None
                and job.offered is None
                and job.window_ends is None
            ):
                self.counters["rebid_woken"] += 1
                return self._new_round(job, now)
        return []

    # --- timers -----------------------------------------------------------------

    def handle_timer(self, now: float) -> list[RequesterCommand]:
        cmds: list[RequesterCommand] = []
        for job in list(self._jobs.values()):
            cmds += self._job_timers(job, now)
        return cmds + self._admit(now) + self._resend_vouchers(now)

    def _resend_vouchers(self, now: float) -> list[RequesterCommand]:
        """Each channel's latest voucher again, on the schedule, until it is done."""
        cmds: list[RequesterCommand] = []
        delays = self.config.voucher_resend_after_s
        for account, (first, done, peer, job_id) in list(self._resends.items()):
            if first + delays[done] <= now:
                self.counters["vouchers_resent"] += 1
                cmds.append(
                    self._payment(job_id, peer, account, now, first_at=first, resends=done + 1)
                )
        return cmds

    def _job_timers(self, job: RequesterJob, now: float) -> list[RequesterCommand]:
        if (
            job.state in (JobState.PENDING, JobState.MATCHED, JobState.RUNNING)
            and now >= job.deadline
        ):
            error = {"code": "deadline_passed", "message": f"not finished by {job.deadline}"}
            late = (
                self._evidence(job, EvidenceKind.TIMED_OUT, now, "the job's deadline passed")
                if job.state in _PLACED and job.terms is not None
                else ()
            )
            return self._finish(
                job, JobEvent.FAILED, now, error=error, stop_provider="deadline", evidence=late
            )
        if job.state in _PLACED:
            if job.liveness_deadline is not None and now >= job.liveness_deadline:
                return self._replace(job, now, reason="heartbeat_timeout")
            if job.provider_deadline is not None and now >= job.provider_deadline:
                return self._replace(job, now, reason="provider_deadline_missed")
            return []
        if job.state is not JobState.PENDING or job.queued:
            return []
        if job.agreement_deadline is not None and now >= job.agreement_deadline:
            assert job.offered is not None
            self.counters["agreement_timeout"] += 1
            job.excluded.add(job.offered.provider_peer)
            job.offered = job.agreement_deadline = None
            return self._select(job, now)
        if job.window_ends is not None and now >= job.window_ends:
            return self._select(job, now)
        if job.rebid_at is not None and now >= job.rebid_at:
            return self._new_round(job, now)
        return []

    # --- steps ------------------------------------------------------------------

    def _enqueue(self, job: RequesterJob, now: float) -> list[RequesterCommand]:
        job.queued = True
        self._queue.append(job.job_id)
        return self._admit(now)

    def _admit(self, now: float) -> list[RequesterCommand]:
        """Open the first bid round of queued jobs, in submission order, while the
        cpu they ask for fits in what the offer book holds less what this node's
        jobs already bid for or occupy. Bidding for more at once only collects
        refusals and re-bids. An empty book (or ``admit_by_offers`` off) limits
        nothing; one job is always let through."""
        if not self._queue:
            self._admit_check_at = None
            return []
        cmds: list[RequesterCommand] = []
        room: int | None = None
        if self.config.admit_by_offers:
            me = self.config.peer_id
            total = math.ceil(
                sum(o.cpu for o in self._offers() if o.peer_id != me)
                * (1 + self.config.admit_extra)
            )
            if total > 0:
                busy = sum(
                    j.requirements.cpu
                    for j in self._jobs.values()
                    if not j.queued and j.state in (JobState.PENDING, *_PLACED)
                )
                room = total - busy
        while self._queue:
            job = self._jobs.get(self._queue[0])
            if job is None or not job.queued:
                self._queue.popleft()
                continue
            if room is not None and job.requirements.cpu > room and room < total:
                break
            self._queue.popleft()
            job.queued = False
            if room is not None:
                room -= job.requirements.cpu
            cmds += self._new_round(job, now)
        self._admit_check_at = now + self.config.rebid_after_s if self._queue else None
        return cmds

    def _new_round(self, job: RequesterJob, now: float) -> list[RequesterCommand]:
        job.bid_seq += 1
        job.round_opened_at = now
        job.quotes.clear()
        job.answered = set()
        job.window_ends = now + self.config.quote_window_s
        job.rebid_at = None
        bid = JobBid(
            job_id=job.job_id,
            peer_id=self.config.peer_id,
            identity=self.config.identity,
            requirements=job.requirements,
            max_total=str(job.max_total),
            deadline=job.deadline,
            spec_cid=job.spec_cid,
            issued_at=now,
            expires_at=min(now + self.config.bid_ttl_s, float(job.deadline)),
            seq=job.bid_seq,
        )
        return [PublishBid(bid)]

    def _select(self, job: RequesterJob, now: float) -> list[RequesterCommand]:
        """Offer the agreement to the best usable quote, or wait for the next round."""
        job.window_ends = None
        req = job.requirements
        candidates = []
        for peer, q in job.quotes.items():
            if peer in job.excluded or q.valid_until <= now:
                continue
            outside, latency = self._peer_stats(peer)
            candidates.append(
                Candidate(
                    peer_id=peer,
                    price_total=int(q.price_total),
                    reputation=self.book.score(q.identity.account) + outside,
                    latency_ms=latency,
                    capacity=Capacity(q.free_cpu, q.free_memory_mb, q.free_gpu),
                )
            )
        ranked = rank(
            Job(job.job_id, Requirements(req.cpu, req.memory_mb, req.gpu), job.max_total),
            candidates,
        )
        if not ranked:
            # deterministic per job and round, so re-bids of a burst do not all land at once
            u = hashlib.sha256(f"{job.job_id}/{job.bid_seq}".encode()).digest()
            jitter = self.config.rebid_jitter * int.from_bytes(u[:8], "big") / 2**64
            delay = self.config.rebid_after_s * (1 + jitter)
            job.rebid_at = max(now, job.round_opened_at + delay)
            return self._new_round(job, now) if job.rebid_at <= now else []
        best = job.quotes[ranked[0].peer_id]
        terms = AgreementTerms(
            job_id=job.job_id,
            requester_peer=self.config.peer_id,
            requester_account=self._keys.account,
            provider_peer=best.peer_id,
            provider_account=best.identity.account,
            price_total=best.price_total,
            cpu=req.cpu,
            memory_mb=req.memory_mb,
            gpu=req.gpu,
            max_seconds=req.max_seconds,
            max_fuel=req.max_fuel,
            deadline=job.deadline,
            spec_cid=job.spec_cid,
            heartbeat_interval_ms=round(self.config.heartbeat_interval_s * 1000),
            chain_id=self.config.chain_id,
            verifying_contract=self.config.verifying_contract,
            circuit_id=job.spec.zk.circuit_id if job.spec.zk is not None else "",
        )
        job.offered = terms
        job.agreement_deadline = now + self.config.agreement_timeout_s
        signature = self._keys.sign_agreement(terms)
        return [SendAgreement(best.peer_id, Agreement(terms=terms, requester_signature=signature))]

    def _replace(
        self, job: RequesterJob, now: float, *, reason: str, detail: str = "", **fields: object
    ) -> list[RequesterCommand]:
        old = job.provider
        assert old is not None
        self.counters[f"replaced_{reason}"] += 1
        kind = _REPLACED_EVIDENCE.get(reason, EvidenceKind.VANISHED)
        evidence = self._evidence(job, kind, now, detail or reason) if job.terms else ()
        cmds: list[RequesterCommand] = [
            self._transition(
                job,
                JobEvent.PROVIDER_REPLACED,
                reason=reason,
                evidence=evidence,
                provider_peer=None,
                provider_account=None,
                price=None,
                agreement=None,
                **fields,
            ),
            SendCancel(old, Cancel(job_id=job.job_id, peer_id=self.config.peer_id, reason=reason)),
        ]
        job.replaced.append(old)
        job.excluded.add(old)
        job.quotes.pop(old, None)
        job.provider = job.terms = job.agreement = None
        job.liveness_deadline = job.provider_deadline = None
        return cmds + self._select(job, now)

    def _finish(
        self,
        job: RequesterJob,
        event: JobEvent,
        now: float,
        *,
        error: dict | None = None,
        owed: OwedEntry | None = None,
        stop_provider: str | None = None,
        evidence: tuple[Evidence, ...] = (),
    ) -> list[RequesterCommand]:
        fields: dict = {}
        if error is not None:
            if job.verification_failures:
                error = {
                    **error,
                    "verification_failures": [dict(f) for f in job.verification_failures],
                }
            job.error = fields["error"] = error
        if event is JobEvent.FAILED and (
            job.state is JobState.PENDING or job.verification_failures
        ):
            job.explanation = fields["explanation"] = self._explain(job, now)
        cmds: list[RequesterCommand] = [
            self._transition(job, event, owed=owed, evidence=evidence, **fields)
        ]
        me = self.config.peer_id
        if stop_provider is not None and job.provider is not None:
            cmds.append(
                SendCancel(
                    job.provider, Cancel(job_id=job.job_id, peer_id=me, reason=stop_provider)
                )
            )
        # release the capacity the other quoters hold for us
        waiting = job.offered.provider_peer if job.offered is not None else None
        for peer in sorted(set(job.quotes) | ({waiting} if waiting else set())):
            if peer != job.provider:
                cmds.append(
                    SendCancel(peer, Cancel(job_id=job.job_id, peer_id=me, reason="released"))
                )
        job.window_ends = job.rebid_at = job.agreement_deadline = job.offered = None
        job.liveness_deadline = job.provider_deadline = None
        del self._jobs[job.job_id]
        self._finished[job.job_id] = job
        while len(self._finished) > self.config.finished_kept:
            self._finished.popitem(last=False)
        return cmds

    def _transition(
        self,
        job: RequesterJob,
        event: JobEvent,
        *,
        owed: OwedEntry | None = None,
        reason: str | None = None,
        evidence: tuple[Evidence, ...] = (),
        **fields: object,
    ) -> RecordTransition:
        """Advance the in-memory state; the shell persists the returned command first
        (with the evidence it carries, which the reputation book counts now)."""
        job.state = transition(job.state, event)
        for e in evidence:
            self.book.add(e)
        return RecordTransition(
            job.job_id, ROLE, event, fields, owed=owed, reason=reason, evidence=evidence
        )

    def _evidence(
        self, job: RequesterJob, kind: EvidenceKind, now: float, detail: str = ""
    ) -> tuple[Evidence, ...]:
        """One piece of evidence about the job's current provider (none unplaced)."""
        t = job.terms
        if t is None:
            return ()
        return (
            Evidence(
                provider_account=t.provider_account,
                provider_peer=t.provider_peer,
                job_id=job.job_id,
                kind=kind,
                at=now,
                mode=job.spec.verify.mode,
                detail=detail[:200],
            ),
        )

    def load_evidence(self, evidence: Iterable[Evidence]) -> None:
        """Start from the evidence the store holds (``JobStore.evidence``)."""
        self.book = ReputationBook(evidence)

    def _heartbeat_timeout(self) -> float:
        return self.config.heartbeat_interval_s * self.config.missed_heartbeats

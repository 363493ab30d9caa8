"""The gateway's decisions, sans-IO: on-chain requests in, commands out.

A DApp asks ComputeRequests for a zk job (``Requested``); a node with
``[gateway] enabled = true`` places it on the mesh as a relayed zk job
(``scheduler.spec.Relay``), and once the job's proof is verified submits it
with ``fulfill``, which pays the provider and calls the DApp back. This module
decides, for each request, what happens next and why; ``maskd.gateway`` does
the I/O (the chain, the job store, the block store) and persists every
record this core hands it (``maskd.gateway_store``) before acting on it.

A request's life::

    Requested -> skipped (never placed: a reason)
              -> waiting -> placing -> placed -> verified -> fulfilled
                                    \\-> failed   \\-> failed   (a reason)
              (any open state) -> expired (past its deadline, or refunded)

Nothing is retried forever: an input that cannot be read or a job that fails
ends the request ``failed`` with its reason; a fulfil that meets a transient
chain error is tried again, at most ``max_fulfil_attempts`` times. Another
gateway may answer first: the request is then ``fulfilled`` (not by us), and
our job, if still running, is cancelled. At most ``max_open`` requests are
being placed, run or fulfilled at once; the rest wait, oldest first.

Everything a request carries came from a stranger's transaction (the CID
especially): it is stored and shown, never trusted. Times are the chain's
(block timestamps), passed in as ``chain_now``; the core reads no clock.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

__all__ = [
    "Cancel",
    "Fulfil",
    "GatewayCore",
    "GatewayRules",
    "KnownCircuit",
    "Place",
    "RequestRecord",
    "Save",
    "State",
    "record_from_json",
    "record_json",
]


class State(enum.StrEnum):
    SKIPPED = "skipped"  # never placed (unknown circuit, too cheap, too late, ...)
    WAITING = "waiting"  # to be placed when there is room (max_open)
    PLACING = "placing"  # its input is being read and its job submitted
    PLACED = "placed"  # a job runs for it on the mesh
    VERIFIED = "verified"  # the job's proof was verified here: to be fulfilled
    FULFILLED = "fulfilled"  # fulfilled on chain (by us, or by another gateway)
    FAILED = "failed"  # gave up, with a reason
    EXPIRED = "expired"  # past its deadline (or refunded) before it was fulfilled


#: States a request leaves no more.
FINAL = frozenset({State.SKIPPED, State.FULFILLED, State.FAILED, State.EXPIRED})
#: States that count against ``max_open``.
OPEN = frozenset({State.PLACING, State.PLACED, State.VERIFIED})


@dataclass(frozen=True, slots=True)
class GatewayRules:
    """``[gateway]``'s limits, in the units the core uses (base units, seconds)."""

    min_payment: int = 1
    max_open: int = 4
    #: the job must end this long before the request's deadline (the fulfil's time)
    fulfil_margin_s: int = 60
    #: a request with less time than this left is not placed
    min_time_left_s: int = 180
    max_fulfil_attempts: int = 5
    #: finished requests kept in memory (all stay in the store), the newest
    max_final_kept: int = 10_000
    #: the longest a relayed job's own deadline may be (scheduler.spec's cap)
    max_job_s: int = 30 * 24 * 3600


@dataclass(frozen=True, slots=True)
class KnownCircuit:
    """A circuit this gateway can place (shipped, or in ``circuits_dir``)."""

    circuit_id: str  # zkp.formats.vk_id: 64 hex, what requests name
    name: str
    path: str  # the circuit folder a job spec names
    n_outputs: int
    public_inputs: tuple[str, ...]  # the public input signals, binding excluded, in order
    input_names: tuple[str, ...] = ()  # every input signal (circuit.json), binding included


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """What the gateway knows and did about one request (one row of its store)."""

    request_id: int
    requester: str
    circuit_id: str
    inputs: tuple[int, ...]
    n_outputs: int
    input_cid: str  # a stranger's text: shown through render.safe_text only
    payment: int
    deadline: int  # chain time (seconds)
    callback: str
    block_number: int
    state: State
    updated_at: float
    circuit: str = ""  # the known circuit's name, "" when unknown
    reason: str = ""  # why it was skipped, failed or expired (snake_case)
    detail: str = ""  # ... in words
    job_id: str = ""
    provider: str = ""  # the provider account the proof binds (paid by fulfil)
    output_cid: str = ""
    tx_hash: str = ""  # the fulfil transaction, when known
    by_us: bool = False  # fulfilled by this gateway's transaction
    attempts: int = 0  # fulfil attempts that met a transient error
    adopt: bool = False  # was placing when the daemon stopped: look for its job first


# --- commands -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Save:
    """Persist the record (before the commands after it run)."""

    record: RequestRecord


@dataclass(frozen=True, slots=True)
class Place:
    """Read the request's input, build its relayed zk job, submit it; report with
    :meth:`GatewayCore.placed` or :meth:`GatewayCore.place_failed`. ``adopt``:
    first look for a job already submitted for it (a restart while placing)."""

    record: RequestRecord
    circuit: KnownCircuit
    job_deadline_s: int
    adopt: bool = False


@dataclass(frozen=True, slots=True)
class Fulfil:
    """Submit the job's proof with ``fulfill`` (checking the request first);
    report with :meth:`GatewayCore.fulfilled` / ``fulfil_failed`` / ``expired``."""

    record: RequestRecord


@dataclass(frozen=True, slots=True)
class Cancel:
    """Cancel a job we placed whose request no longer needs it."""

    job_id: str
    reason: str


Command = Save | Place | Fulfil | Cancel


# --- the core ---------------------------------------------------------------------------


class GatewayCore:
    """Every request this gateway has seen, and what to do next. ``circuits``
    maps circuit ids (vk ids, lower-case hex) to what can be placed."""

    def __init__(self, rules: GatewayRules, circuits: Mapping[str, KnownCircuit]):
        self.rules = rules
        self.circuits = dict(circuits)
        self.records: dict[int, RequestRecord] = {}
        self.counters: Counter[str] = Counter()
        self._busy: set[int] = set()  # a Place or Fulfil is running for it

    # --- queries ------------------------------------------------------------------

    def get(self, request_id: int) -> RequestRecord | None:
        return self.records.get(request_id)

    def placed_jobs(self) -> list[RequestRecord]:
        """Requests whose job runs: the shell reports each job's end."""
        return [r for r in self.records.values() if r.state is State.PLACED]

    def open_count(self) -> int:
        return sum(1 for r in self.records.values() if r.state in OPEN)

    # --- inputs -------------------------------------------------------------------

    def load(self, records: Iterable[RequestRecord]) -> None:
        """Start from the store. A request that was being placed when the daemon
        stopped may have a job already: it waits, marked to be adopted first."""
        for r in records:
            if r.state is State.PLACING:
                r = replace(r, state=State.WAITING, adopt=True)
            self.records[r.request_id] = r
        self._trim()

    def _trim(self) -> None:
        """Forget the oldest finished requests past ``max_final_kept`` (the store
        keeps them; the shell looks there before taking one for new)."""
        final = [rid for rid, r in self.records.items() if r.state in FINAL]
        excess = len(final) - self.rules.max_final_kept
        if excess > 0:
            for rid in sorted(final)[:excess]:
                del self.records[rid]

    def requested(self, event: Any, chain_now: int, now: float) -> list[Command]:
        """A ``Requested`` event (``ledger.zkchain.Requested``) read from the chain."""
        rid = event.request_id
        if rid in self.records:
            self.counters["requested_again"] += 1  # a rescan after a restart
            return []
        circuit = self.circuits.get(str(event.circuit_id).lower())
        record = RequestRecord(
            request_id=rid,
            requester=event.requester,
            circuit_id=str(event.circuit_id).lower(),
            inputs=tuple(event.inputs),
            n_outputs=event.n_outputs,
            input_cid=event.input_cid,
            payment=event.payment,
            deadline=event.deadline,
            callback=event.callback,
            block_number=event.block_number,
            state=State.WAITING,
            updated_at=now,
            circuit=circuit.name if circuit else "",
        )
        why = self._skip(record, circuit, chain_now)
        if why is not None:
            self.counters[f"skipped_{why[0]}"] += 1
            record = replace(record, state=State.SKIPPED, reason=why[0], detail=why[1])
        else:
            self.counters["requests_accepted"] += 1
        self.records[rid] = record
        return [Save(record), *self._admit(chain_now, now)]

    def _skip(
        self, r: RequestRecord, circuit: KnownCircuit | None, chain_now: int
    ) -> tuple[str, str] | None:
        """Why this gateway will not place ``r``, cheapest check first, or None."""
        if circuit is None:
            return (
                "unknown_circuit",
                f"circuit {r.circuit_id[:64]} is neither shipped nor in gateway.circuits_dir",
            )
        if r.n_outputs != circuit.n_outputs or len(r.inputs) != len(circuit.public_inputs):
            return (
                "layout_mismatch",
                f"the request has {r.n_outputs} outputs and {len(r.inputs)} inputs; "
                f"{circuit.name} has {circuit.n_outputs} and {len(circuit.public_inputs)}",
            )
        if r.payment < self.rules.min_payment:
            return (
                "payment_too_low",
                f"payment {r.payment} is below gateway.min_payment {self.rules.min_payment}",
            )
        left = r.deadline - chain_now
        if left < self.rules.min_time_left_s:
            return (
                "deadline_too_close",
                f"{max(left, 0)} s left before the deadline; placing needs "
                f"{self.rules.min_time_left_s} s (gateway.min_time_left_s)",
            )
        return None

    def placed(self, request_id: int, job_id: str, now: float) -> list[Command]:
        r = self._release(request_id)
        if r is None or r.state is not State.PLACING:
            self.counters["stale_placed"] += 1
            return [Cancel(job_id, "request_closed")] if r is not None else []
        self.counters["placed"] += 1
        return self._save(replace(r, state=State.PLACED, job_id=job_id, updated_at=now))

    def place_failed(self, request_id: int, reason: str, detail: str, now: float) -> list[Command]:
        """The input could not be read or the job not submitted: not retried."""
        r = self._release(request_id)
        if r is None or r.state is not State.PLACING:
            self.counters["stale_place_failed"] += 1
            return []
        self.counters[f"failed_{reason}"] += 1
        return self._save(
            replace(r, state=State.FAILED, reason=reason, detail=detail[:500], updated_at=now)
        )

    def job_ended(
        self,
        request_id: int,
        *,
        completed: bool,
        provider: str,
        output_cid: str,
        error: str,
        now: float,
    ) -> list[Command]:
        """The placed job ended: completed (its proof verified here) or not."""
        r = self.records.get(request_id)
        if r is None or r.state is not State.PLACED:
            self.counters["stale_job_end"] += 1
            return []
        if not completed:
            self.counters["failed_job_failed"] += 1
            return self._save(
                replace(
                    r,
                    state=State.FAILED,
                    reason="job_failed",
                    detail=error[:500] or "the job ended without a verified proof",
                    updated_at=now,
                )
            )
        self.counters["verified"] += 1
        return self._save(
            replace(
                r, state=State.VERIFIED, provider=provider, output_cid=output_cid, updated_at=now
            )
        )

    def fulfilled(
        self, request_id: int, *, by_us: bool, tx_hash: str, provider: str, now: float
    ) -> list[Command]:
        """Fulfilled on chain: by our transaction (``by_us``), or found so (a
        ``Fulfilled`` event, the request's status). The record's ``by_us`` says
        whether the proof that was paid is our job's (its provider's)."""
        self._busy.discard(request_id)
        r = self.records.get(request_id)
        if r is None:
            return []
        ours = by_us or bool(provider and r.provider and provider.lower() == r.provider.lower())
        if r.state is State.FULFILLED:
            if (ours and not r.by_us) or (tx_hash and not r.tx_hash):  # details came later
                return self._save(
                    replace(
                        r,
                        by_us=r.by_us or ours,
                        tx_hash=r.tx_hash or tx_hash,
                        reason="" if r.by_us or ours else r.reason,
                        detail="" if r.by_us or ours else r.detail,
                    )
                )
            return []
        cmds: list[Command] = []
        if r.state is State.PLACED and r.job_id:
            cmds.append(Cancel(r.job_id, "fulfilled_elsewhere"))  # stop the work: nobody pays it
        self.counters["fulfilled_by_us" if ours else "fulfilled_elsewhere"] += 1
        done = replace(
            r,
            state=State.FULFILLED,
            by_us=ours,
            tx_hash=tx_hash or r.tx_hash,
            provider=r.provider or provider,
            reason="" if ours else "fulfilled_elsewhere",
            detail="" if ours else "another proof was submitted first",
            updated_at=now,
        )
        return [*self._save(done), *cmds]

    def fulfil_failed(
        self, request_id: int, reason: str, detail: str, *, transient: bool, now: float
    ) -> list[Command]:
        """The fulfil was refused (final) or met a transient error (tried again
        at the next tick, ``max_fulfil_attempts`` times in all)."""
        self._busy.discard(request_id)
        r = self.records.get(request_id)
        if r is None or r.state is not State.VERIFIED:
            return []
        attempts = r.attempts + 1
        if transient and attempts < self.rules.max_fulfil_attempts:
            self.counters["fulfil_retry"] += 1
            return self._save(replace(r, attempts=attempts, detail=detail[:500], updated_at=now))
        self.counters["failed_fulfil"] += 1
        return self._save(
            replace(
                r,
                state=State.FAILED,
                attempts=attempts,
                reason=reason,
                detail=detail[:500],
                updated_at=now,
            )
        )

    def expired(self, request_id: int, detail: str, now: float) -> list[Command]:
        """Past its deadline, or refunded, before we fulfilled it."""
        self._busy.discard(request_id)
        r = self.records.get(request_id)
        if r is None or r.state in FINAL:
            return []
        self.counters["expired"] += 1
        cmds: list[Command] = []
        if r.state is State.PLACED and r.job_id:
            cmds.append(Cancel(r.job_id, "request_expired"))
        done = replace(r, state=State.EXPIRED, reason="expired", detail=detail, updated_at=now)
        return [*self._save(done), *cmds]

    def tick(self, chain_now: int, now: float) -> list[Command]:
        """Expire what is past its deadline, fulfil what is verified, place what
        waits and fits. Call it after each chain poll."""
        self._trim()
        cmds: list[Command] = []
        for r in sorted(self.records.values(), key=lambda r: r.request_id):
            if r.state in FINAL or r.request_id in self._busy:
                continue
            if r.deadline <= chain_now:
                cmds += self.expired(r.request_id, f"deadline {r.deadline} passed", now)
            elif r.state is State.VERIFIED:
                self._busy.add(r.request_id)
                cmds.append(Fulfil(r))
        return cmds + self._admit(chain_now, now)

    # --- helpers ----------------------------------------------------------------------

    def _admit(self, chain_now: int, now: float) -> list[Command]:
        cmds: list[Command] = []
        waiting = sorted(
            (r for r in self.records.values() if r.state is State.WAITING),
            key=lambda r: r.request_id,
        )
        for r in waiting:
            if self.open_count() >= self.rules.max_open:
                break
            circuit = self.circuits.get(r.circuit_id)
            left = r.deadline - chain_now
            if circuit is None or left < self.rules.min_time_left_s:  # waited too long
                cmds += self._save(
                    replace(
                        r,
                        state=State.EXPIRED,
                        reason="deadline_too_close",
                        detail=f"{max(left, 0)} s left when there was room to place it",
                        updated_at=now,
                    )
                )
                continue
            job_s = min(left - self.rules.fulfil_margin_s, self.rules.max_job_s)
            placing = replace(r, state=State.PLACING, adopt=False, updated_at=now)
            self._busy.add(r.request_id)
            cmds += [*self._save(placing), Place(placing, circuit, job_s, adopt=r.adopt)]
        return cmds

    def _release(self, request_id: int) -> RequestRecord | None:
        self._busy.discard(request_id)
        return self.records.get(request_id)

    def _save(self, record: RequestRecord) -> list[Command]:
        self.records[record.request_id] = record
        return [Save(record)]


# --- records as JSON (the store, the RPC) ------------------------------------------------


def record_json(r: RequestRecord) -> dict[str, Any]:
    """A record as JSON: uint256 values as decimal strings."""
    return {
        "request_id": str(r.request_id),
        "state": r.state.value,
        "circuit": r.circuit,
        "circuit_id": r.circuit_id,
        "requester": r.requester,
        "inputs": [str(v) for v in r.inputs],
        "n_outputs": r.n_outputs,
        "input_cid": r.input_cid,
        "payment": str(r.payment),
        "deadline": r.deadline,
        "callback": r.callback,
        "block_number": r.block_number,
        "reason": r.reason,
        "detail": r.detail,
        "job_id": r.job_id,
        "provider": r.provider,
        "output_cid": r.output_cid,
        "tx_hash": r.tx_hash,
        "by_us": r.by_us,
        "attempts": r.attempts,
        "adopt": r.adopt,
        "updated_at": r.updated_at,
    }


def record_from_json(d: Mapping[str, Any]) -> RequestRecord:
    """The inverse of :func:`record_json` (our own store's rows; KeyError,
    ValueError or TypeError for one that is not)."""
    return RequestRecord(
        request_id=int(d["request_id"]),
        requester=str(d["requester"]),
        circuit_id=str(d["circuit_id"]),
        inputs=tuple(int(v) for v in d["inputs"]),
        n_outputs=int(d["n_outputs"]),
        input_cid=str(d["input_cid"]),
        payment=int(d["payment"]),
        deadline=int(d["deadline"]),
        callback=str(d["callback"]),
        block_number=int(d["block_number"]),
        state=State(d["state"]),
        updated_at=float(d["updated_at"]),
        circuit=str(d.get("circuit", "")),
        reason=str(d.get("reason", "")),
        detail=str(d.get("detail", "")),
        job_id=str(d.get("job_id", "")),
        provider=str(d.get("provider", "")),
        output_cid=str(d.get("output_cid", "")),
        tx_hash=str(d.get("tx_hash", "")),
        by_us=bool(d.get("by_us", False)),
        attempts=int(d.get("attempts", 0)),
        adopt=bool(d.get("adopt", False)),
    )

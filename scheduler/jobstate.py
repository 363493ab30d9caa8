"""The job state machine: every legal transition, in one table.

Like h11's ``_state.py``, the whole lifecycle lives in :data:`TRANSITIONS`, so
a reader (and ``mask explain``) sees every path a job can take in one place,
and a bug that tries to move a job the wrong way fails loudly at the call
instead of corrupting the persisted state. The daemon persists the new state
*before* acting on it (DESIGN.md §5); this module only decides what is legal.

::

    pending ──matched──► matched ──started──► running ──result_received──► verifying ──verified──► completed
       ▲                    │                    │                            │
       └─provider_replaced──┴────────────────────┴────────────────────────────┘
    pending | matched | running | verifying ──failed──► failed
    pending | matched | running | verifying ──cancelled──► cancelled

Events are past tense: they record what happened; the state is what follows.
Pure: no clock, no I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

from protocol.errors import JobError

__all__ = [
    "TERMINAL_STATES",
    "TRANSITIONS",
    "IllegalTransition",
    "JobEvent",
    "JobState",
    "allowed_events",
    "is_terminal",
    "transition",
]


class JobState(enum.StrEnum):
    PENDING = "pending"  # waiting for quotes, or for a replacement provider
    MATCHED = "matched"  # an agreement is signed; the payload is on its way
    RUNNING = "running"  # the provider reported the job started
    VERIFYING = "verifying"  # a result arrived; checking it before paying
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class JobEvent(enum.StrEnum):
    MATCHED = "matched"  # a provider was selected and both signed the agreement
    STARTED = "started"  # the provider's first heartbeat
    RESULT_RECEIVED = "result_received"
    VERIFIED = "verified"  # the result passed the spec's verify mode
    PROVIDER_REPLACED = "provider_replaced"  # missed heartbeats/deadline: back to the market
    FAILED = "failed"  # unplaceable by the deadline, bad result, executor error, ...
    CANCELLED = "cancelled"  # the requester cancelled


_ACTIVE = (JobState.PENDING, JobState.MATCHED, JobState.RUNNING, JobState.VERIFYING)

TRANSITIONS: Mapping[tuple[JobState, JobEvent], JobState] = MappingProxyType(
    {
        (JobState.PENDING, JobEvent.MATCHED): JobState.MATCHED,
        (JobState.MATCHED, JobEvent.STARTED): JobState.RUNNING,
        (JobState.RUNNING, JobEvent.RESULT_RECEIVED): JobState.VERIFYING,
        (JobState.VERIFYING, JobEvent.VERIFIED): JobState.COMPLETED,
        # Failover: the provider is dropped and the job goes back to the market.
        # From verifying too: a result whose proof fails (verify mode zk) is
        # not paid and the job is placed again elsewhere (a bounded number of times).
        (JobState.MATCHED, JobEvent.PROVIDER_REPLACED): JobState.PENDING,
        (JobState.RUNNING, JobEvent.PROVIDER_REPLACED): JobState.PENDING,
        (JobState.VERIFYING, JobEvent.PROVIDER_REPLACED): JobState.PENDING,
        **{(s, JobEvent.FAILED): JobState.FAILED for s in _ACTIVE},
        **{(s, JobEvent.CANCELLED): JobState.CANCELLED for s in _ACTIVE},
    }
)

TERMINAL_STATES: frozenset[JobState] = frozenset(
    {JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED}
)

_ALLOWED: Mapping[JobState, frozenset[JobEvent]] = MappingProxyType(
    {s: frozenset(e for (s2, e) in TRANSITIONS if s2 is s) for s in JobState}
)


class IllegalTransition(JobError):
    """Our own code tried to move a job along an edge the table does not have.

    This is a local bug (h11's LocalProtocolError), never a peer's mistake:
    peer messages that do not fit the job's state are rejected at the boundary
    before they become events.
    """

    code = "illegal_transition"

    def __init__(self, state: JobState, event: JobEvent):
        allowed = ", ".join(sorted(e.value for e in _ALLOWED[state])) or "none: it is terminal"
        super().__init__(
            f"job in state {state.value!r} cannot take event {event.value!r}",
            hint=f"events allowed in {state.value!r}: {allowed}",
        )
        self.state = state
        self.event = event


def transition(state: JobState, event: JobEvent) -> JobState:
    """The state that follows ``event`` in ``state``; raises :class:`IllegalTransition`."""
    try:
        return TRANSITIONS[state, event]
    except KeyError:
        raise IllegalTransition(state, event) from None


def allowed_events(state: JobState) -> frozenset[JobEvent]:
    """Events ``state`` accepts (empty for terminal states)."""
    return _ALLOWED[state]


def is_terminal(state: JobState) -> bool:
    return state in TERMINAL_STATES

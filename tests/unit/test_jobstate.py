"""The job state machine: every (state, event) pair, legal or not."""

from __future__ import annotations

import itertools

import pytest

from protocol.errors import JobError
from scheduler.jobstate import (
    TERMINAL_STATES,
    TRANSITIONS,
    IllegalTransition,
    JobEvent,
    JobState,
    allowed_events,
    is_terminal,
    transition,
)

S, E = JobState, JobEvent

# Written out by hand from DESIGN.md §5 so the table in the module is checked
# against an independent statement of the design, not against itself.
EXPECTED = {
    (S.PENDING, E.MATCHED): S.MATCHED,
    (S.MATCHED, E.STARTED): S.RUNNING,
    (S.RUNNING, E.RESULT_RECEIVED): S.VERIFYING,
    (S.VERIFYING, E.VERIFIED): S.COMPLETED,
    (S.MATCHED, E.PROVIDER_REPLACED): S.PENDING,
    (S.RUNNING, E.PROVIDER_REPLACED): S.PENDING,
    (S.VERIFYING, E.PROVIDER_REPLACED): S.PENDING,  # a proof that fails: placed again
    **{(s, E.FAILED): S.FAILED for s in (S.PENDING, S.MATCHED, S.RUNNING, S.VERIFYING)},
    **{(s, E.CANCELLED): S.CANCELLED for s in (S.PENDING, S.MATCHED, S.RUNNING, S.VERIFYING)},
}
ALL_PAIRS = list(itertools.product(JobState, JobEvent))
LEGAL = [p for p in ALL_PAIRS if p in EXPECTED]
ILLEGAL = [p for p in ALL_PAIRS if p not in EXPECTED]


def test_table_is_exactly_the_design() -> None:
    assert dict(TRANSITIONS) == EXPECTED
    assert len(LEGAL) + len(ILLEGAL) == len(JobState) * len(JobEvent) == 49


@pytest.mark.parametrize(("state", "event"), LEGAL, ids=[f"{s.value}+{e.value}" for s, e in LEGAL])
def test_legal_transition(state: JobState, event: JobEvent) -> None:
    assert transition(state, event) is EXPECTED[state, event]


@pytest.mark.parametrize(
    ("state", "event"), ILLEGAL, ids=[f"{s.value}+{e.value}" for s, e in ILLEGAL]
)
def test_illegal_transition(state: JobState, event: JobEvent) -> None:
    with pytest.raises(IllegalTransition) as info:
        transition(state, event)
    err = info.value
    assert isinstance(err, JobError)
    assert err.code == "illegal_transition"
    assert (err.state, err.event) == (state, event)
    assert state.value in err.message and event.value in err.message
    assert err.hint


def test_terminal_states_accept_nothing() -> None:
    assert TERMINAL_STATES == {S.COMPLETED, S.FAILED, S.CANCELLED}
    for state in JobState:
        assert is_terminal(state) == (state in TERMINAL_STATES)
        assert (allowed_events(state) == frozenset()) == is_terminal(state)


def test_allowed_events_match_table() -> None:
    for state in JobState:
        assert allowed_events(state) == {e for (s, e) in EXPECTED if s is state}


def test_states_and_events_accept_their_string_values() -> None:
    # The daemon persists states as text; reading one back must round-trip.
    assert transition(JobState("pending"), JobEvent("matched")) is S.MATCHED
    assert [s.value for s in JobState] == [
        "pending",
        "matched",
        "running",
        "verifying",
        "completed",
        "failed",
        "cancelled",
    ]


def test_every_state_reaches_a_terminal_state() -> None:
    # No state is a trap: from anywhere a job can still end.
    for start in JobState:
        seen, frontier = {start}, [start]
        while frontier:
            s = frontier.pop()
            for e in allowed_events(s):
                n = transition(s, e)
                if n not in seen:
                    seen.add(n)
                    frontier.append(n)
        assert seen & TERMINAL_STATES

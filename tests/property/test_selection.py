"""Provider selection: examples for the ranking, hypothesis for the batch."""

from __future__ import annotations

import hashlib
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.selection import Candidate, Capacity, Job, Requirements, assign, rank, select

BIG = Capacity(cpu=64, memory_mb=65536)
JOB = Job("job-1", Requirements(cpu=1, memory_mb=64))


def cand(
    peer: str, price: int, rep: float = 0.5, lat: float = 10.0, cap: Capacity = BIG
) -> Candidate:
    return Candidate(peer_id=peer, price_total=price, reputation=rep, latency_ms=lat, capacity=cap)


# --- rank / select: examples -------------------------------------------------


def test_price_then_reputation_then_latency() -> None:
    quotes = [
        cand("slow", 5, rep=0.9, lat=50),
        cand("cheap", 4, rep=0.1, lat=99),
        cand("fast", 5, rep=0.9, lat=5),
        cand("trusted", 5, rep=0.95, lat=90),
    ]
    assert [c.peer_id for c in rank(JOB, quotes)] == ["cheap", "trusted", "fast", "slow"]


def test_full_ties_break_by_hash_of_job_and_peer() -> None:
    peers = [f"peer-{i}" for i in range(8)]
    ranked = [c.peer_id for c in rank(JOB, [cand(p, 5) for p in peers])]
    expected = sorted(peers, key=lambda p: hashlib.sha256((JOB.job_id + p).encode()).digest())
    assert ranked == expected
    # A different job orders the same peers differently: no peer always wins ties.
    other = [c.peer_id for c in rank(Job("job-2", JOB.requirements), [cand(p, 5) for p in peers])]
    assert other != ranked


def test_ineligible_quotes_are_dropped() -> None:
    job = Job("j", Requirements(cpu=2, memory_mb=100, gpu=1), max_total=10)
    quotes = [
        cand("few-cpu", 1, cap=Capacity(1, 1000, 1)),
        cand("few-mem", 1, cap=Capacity(4, 99, 1)),
        cand("no-gpu", 1, cap=Capacity(4, 1000, 0)),
        cand("too-dear", 11, cap=Capacity(4, 1000, 1)),
        cand("ok", 10, cap=Capacity(2, 100, 1)),
    ]
    assert [c.peer_id for c in rank(job, quotes)] == ["ok"]
    assert select(job, quotes[:4]) is None


def test_a_peer_quoting_twice_counts_once_with_its_best_quote() -> None:
    ranked = rank(JOB, [cand("a", 9), cand("b", 5), cand("a", 3)])
    assert [(c.peer_id, c.price_total) for c in ranked] == [("a", 3), ("b", 5)]


@pytest.mark.parametrize(
    "bad",
    [
        {"reputation": math.nan},
        {"reputation": math.inf},
        {"latency_ms": math.nan},
        {"latency_ms": -1.0},
        {"price_total": -1},
    ],
)
def test_candidate_rejects_values_that_break_ordering(bad) -> None:
    fields = {
        "peer_id": "p",
        "price_total": 1,
        "reputation": 0.5,
        "latency_ms": 1.0,
        "capacity": BIG,
    }
    with pytest.raises(ValueError):
        Candidate(**{**fields, **bad})


def test_assign_rejects_duplicate_job_ids() -> None:
    with pytest.raises(ValueError, match="job-1"):
        assign([JOB, JOB], {}, {})


def test_assign_example_spills_to_next_provider_when_full() -> None:
    jobs = [Job(f"j{i}", Requirements(cpu=2, memory_mb=10)) for i in range(3)]
    quotes = {j.job_id: [cand("cheap", 1), cand("dear", 2)] for j in jobs}
    caps = {"cheap": Capacity(cpu=4, memory_mb=100), "dear": Capacity(cpu=2, memory_mb=100)}
    assert assign(jobs, quotes, caps) == {"j0": "cheap", "j1": "cheap", "j2": "dear"}


def test_assign_without_capacity_entry_uses_the_smallest_quoted_capacity() -> None:
    jobs = [Job(f"j{i}", Requirements(cpu=1, memory_mb=10)) for i in range(3)]
    quotes = {
        "j0": [cand("p", 1, cap=Capacity(3, 100))],
        "j1": [cand("p", 1, cap=Capacity(2, 100))],
        "j2": [cand("p", 1, cap=Capacity(3, 100))],
    }
    assert assign(jobs, quotes, {}) == {"j0": "p", "j1": "p"}


# --- properties ----------------------------------------------------------------

PEERS = [f"p{i}" for i in range(5)]
small = st.integers(min_value=0, max_value=6)
capacities_st = st.builds(Capacity, cpu=small, memory_mb=small, gpu=st.integers(0, 2))
requirements_st = st.builds(
    Requirements, cpu=st.integers(1, 3), memory_mb=st.integers(1, 3), gpu=st.integers(0, 1)
)
candidate_st = st.builds(
    Candidate,
    peer_id=st.sampled_from(PEERS),
    price_total=st.integers(0, 4),  # narrow ranges: ties must be common
    reputation=st.sampled_from([0.0, 0.5, 1.0]),
    latency_ms=st.sampled_from([1.0, 2.0]),
    capacity=capacities_st,
)


@st.composite
def markets(draw):
    n = draw(st.integers(0, 6))
    jobs = [
        Job(f"j{i}", draw(requirements_st), draw(st.none() | st.integers(0, 4))) for i in range(n)
    ]
    quotes = {j.job_id: draw(st.lists(candidate_st, max_size=6)) for j in jobs}
    caps = draw(st.dictionaries(st.sampled_from(PEERS), capacities_st))
    return jobs, quotes, caps


def effective_capacity(peer: str, quotes, caps) -> Capacity:
    if peer in caps:
        return caps[peer]
    mine = [c.capacity for qs in quotes.values() for c in qs if c.peer_id == peer]
    return Capacity(*(min(getattr(c, f) for c in mine) for f in ("cpu", "memory_mb", "gpu")))


def used(result, jobs, peer: str) -> Capacity:
    reqs = [j.requirements for j in jobs if result.get(j.job_id) == peer]
    return Capacity(*(sum(getattr(r, f) for r in reqs) for f in ("cpu", "memory_mb", "gpu")))


def fits(req, cap: Capacity) -> bool:
    return req.cpu <= cap.cpu and req.memory_mb <= cap.memory_mb and req.gpu <= cap.gpu


def eligible(job: Job, c: Candidate) -> bool:
    return fits(job.requirements, c.capacity) and (
        job.max_total is None or c.price_total <= job.max_total
    )


@settings(max_examples=300, deadline=None)
@given(markets())
def test_no_job_twice_and_only_to_a_peer_that_quoted(market) -> None:
    jobs, quotes, caps = market
    result = assign(jobs, quotes, caps)
    assert set(result) <= {j.job_id for j in jobs}
    by_id = {j.job_id: j for j in jobs}
    for job_id, peer in result.items():
        assert any(c.peer_id == peer and eligible(by_id[job_id], c) for c in quotes[job_id])


@settings(max_examples=300, deadline=None)
@given(markets())
def test_no_provider_over_committed(market) -> None:
    jobs, quotes, caps = market
    result = assign(jobs, quotes, caps)
    for peer in set(result.values()):
        cap, use = effective_capacity(peer, quotes, caps), used(result, jobs, peer)
        assert use.cpu <= cap.cpu and use.memory_mb <= cap.memory_mb and use.gpu <= cap.gpu


@settings(max_examples=300, deadline=None)
@given(markets())
def test_cheapest_eligible_quote_wins(market) -> None:
    """No job could move to a cheaper quote whose provider still has room at the end,
    and no unplaced job has an eligible quote from a provider with room."""
    jobs, quotes, caps = market
    result = assign(jobs, quotes, caps)
    for job in jobs:
        chosen = result.get(job.job_id)
        chosen_price = min(
            (c.price_total for c in quotes[job.job_id] if c.peer_id == chosen and eligible(job, c)),
            default=None,
        )
        for c in quotes[job.job_id]:
            if not eligible(job, c) or c.peer_id == chosen:
                continue
            room = effective_capacity(c.peer_id, quotes, caps)
            use = used(result, jobs, c.peer_id)
            left = Capacity(room.cpu - use.cpu, room.memory_mb - use.memory_mb, room.gpu - use.gpu)
            if fits(job.requirements, left):
                assert chosen is not None, f"{job.job_id} unplaced though {c.peer_id} had room"
                assert chosen_price <= c.price_total


@settings(max_examples=200, deadline=None)
@given(st.lists(candidate_st, max_size=8), requirements_st, st.none() | st.integers(0, 4))
def test_select_picks_the_cheapest_eligible(quotes, req, max_total) -> None:
    job = Job("j", req, max_total)
    best = select(job, quotes)
    prices = [c.price_total for c in quotes if eligible(job, c)]
    if not prices:
        assert best is None
    else:
        assert best is not None and best.price_total == min(prices)


@settings(max_examples=300, deadline=None)
@given(markets(), st.randoms(use_true_random=False))
def test_result_independent_of_input_order(market, rnd: random.Random) -> None:
    jobs, quotes, caps = market
    expected = assign(jobs, quotes, caps)
    shuffled_jobs = rnd.sample(jobs, len(jobs))
    shuffled_quotes = {
        k: rnd.sample(v, len(v)) for k, v in rnd.sample(list(quotes.items()), len(quotes))
    }
    shuffled_caps = dict(rnd.sample(list(caps.items()), len(caps)))
    assert assign(shuffled_jobs, shuffled_quotes, shuffled_caps) == expected
    for job in jobs:
        assert rank(job, quotes[job.job_id]) == rank(
            job, rnd.sample(quotes[job.job_id], len(quotes[job.job_id]))
        )

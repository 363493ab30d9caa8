"""Deterministic provider selection: which quote does a requester take?

A pure function of the job and the quotes, so every requester (and every test,
and a replayed log) reaches the same choice from the same inputs, whatever
order the quotes arrived in from the mesh. The order is: price ascending,
reputation descending, latency ascending, then ``sha256(job_id + peer_id)``;
hashing the job id into the tie-break spreads ties across providers instead
of always favouring the one with the smallest peer id.

:func:`assign` places a batch of jobs at once and never over-commits a
provider beyond its capacity (cpu, memory, gpu).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Candidate", "Capacity", "Job", "Requirements", "assign", "rank", "select"]


@dataclass(frozen=True, slots=True)
class Requirements:
    cpu: int
    memory_mb: int
    gpu: int = 0


@dataclass(frozen=True, slots=True)
class Capacity:
    """Resources a provider has left."""

    cpu: int
    memory_mb: int
    gpu: int = 0

    def fits(self, req: Requirements) -> bool:
        return req.cpu <= self.cpu and req.memory_mb <= self.memory_mb and req.gpu <= self.gpu

    def minus(self, req: Requirements) -> Capacity:
        return Capacity(self.cpu - req.cpu, self.memory_mb - req.memory_mb, self.gpu - req.gpu)


@dataclass(frozen=True, slots=True)
class Job:
    """A job to place. ``max_total`` (token base units) excludes dearer quotes."""

    job_id: str
    requirements: Requirements
    max_total: int | None = None


@dataclass(frozen=True, slots=True)
class Candidate:
    """A quote as the requester sees it: the provider's price and free capacity,
    plus what the requester knows locally (reputation, measured latency)."""

    peer_id: str
    price_total: int
    reputation: float
    latency_ms: float
    capacity: Capacity

    def __post_init__(self) -> None:
        # NaN compares false with everything and would make the order depend on
        # input order; reject it (and other nonsense) at construction.
        if not math.isfinite(self.reputation):
            raise ValueError(f"reputation must be finite, got {self.reputation}")
        if not math.isfinite(self.latency_ms) or self.latency_ms < 0:
            raise ValueError(f"latency_ms must be finite and >= 0, got {self.latency_ms}")
        if self.price_total < 0:
            raise ValueError(f"price_total must be >= 0, got {self.price_total}")


def _sort_key(job_id: str, c: Candidate) -> tuple:
    tie = hashlib.sha256((job_id + c.peer_id).encode()).digest()
    # The trailing fields only order two quotes from the same peer, so the
    # result is a total order and never depends on input order.
    cap = c.capacity
    return (
        c.price_total,
        -c.reputation,
        c.latency_ms,
        tie,
        c.peer_id,
        -cap.cpu,
        -cap.memory_mb,
        -cap.gpu,
    )


def _eligible(job: Job, c: Candidate) -> bool:
    if job.max_total is not None and c.price_total > job.max_total:
        return False
    return c.capacity.fits(job.requirements)


def rank(job: Job, quotes: Iterable[Candidate]) -> list[Candidate]:
    """Eligible quotes, best first, at most one per peer (its best)."""
    best: dict[str, tuple[tuple, Candidate]] = {}
    for c in quotes:
        if not _eligible(job, c):
            continue
        key = _sort_key(job.job_id, c)
        if c.peer_id not in best or key < best[c.peer_id][0]:
            best[c.peer_id] = (key, c)
    return [c for _, c in sorted(best.values(), key=lambda kc: kc[0])]


def select(job: Job, quotes: Iterable[Candidate]) -> Candidate | None:
    """The best eligible quote, or None when no provider can take the job."""
    ranked = rank(job, quotes)
    return ranked[0] if ranked else None


def assign(
    jobs: Sequence[Job],
    quotes_by_job: Mapping[str, Sequence[Candidate]],
    capacities: Mapping[str, Capacity],
) -> dict[str, str]:
    """Place a batch: ``{job_id: peer_id}`` for every job that could be placed.

    ``capacities`` is what each provider has left; a provider missing from it
    is held to the smallest capacity it quoted (its quotes are snapshots of the
    same free resources, and the smallest is the safe one).

    Greedy in job-id order: each job takes its best-ranked quote whose provider
    still has room. Job ids are content hashes, so the order favours no
    requester, and the result depends on the inputs' values, not their order.
    """
    seen: set[str] = set()
    for job in jobs:
        if job.job_id in seen:
            raise ValueError(f"job {job.job_id!r} appears twice in one batch")
        seen.add(job.job_id)

    remaining: dict[str, Capacity] = dict(capacities)
    quoted: dict[str, Capacity] = {}
    for job in jobs:
        for c in quotes_by_job.get(job.job_id, ()):
            if c.peer_id in remaining:
                continue
            prev = quoted.get(c.peer_id)
            cap = c.capacity
            quoted[c.peer_id] = (
                cap
                if prev is None
                else Capacity(
                    min(prev.cpu, cap.cpu),
                    min(prev.memory_mb, cap.memory_mb),
                    min(prev.gpu, cap.gpu),
                )
            )
    remaining.update(quoted)

    result: dict[str, str] = {}
    for job in sorted(jobs, key=lambda j: j.job_id):
        for c in rank(job, quotes_by_job.get(job.job_id, ())):
            if remaining[c.peer_id].fits(job.requirements):
                result[job.job_id] = c.peer_id
                remaining[c.peer_id] = remaining[c.peer_id].minus(job.requirements)
                break
    return result

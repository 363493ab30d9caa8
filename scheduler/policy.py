"""A provider's bid policy: should I quote for this job, and at what price?

The policy is a chain of small checks (bacalhau's bid strategies,
gossipsub's validation pipeline): each returns ``None`` to pass or a
:class:`Refusal` carrying a reason from a fixed enum. The first refusal wins,
so the cheapest and most decisive checks come first. Refusals are typed so the
requester's ``mask explain`` can say *why* a job is pending
(``insufficient_memory``) instead of "no provider answered".

Pure: inputs are small frozen structs, ``now`` is a field of the provider's
state, and the result is a value. The shell gathers the provider's free
resources and sends the quote or refusal.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = [
    "CAPACITY_CHECKS",
    "CHECKS",
    "Bid",
    "Check",
    "ProviderState",
    "Quote",
    "RateLimiter",
    "Refusal",
    "RefusalReason",
    "UnitPrices",
    "evaluate",
    "floor_price",
]

_SECONDS_PER_HOUR = 3600
_MB_PER_GB = 1024  # memory prices are per GiB; requests are in MiB


class RefusalReason(enum.StrEnum):
    EXECUTOR_UNSUPPORTED = "executor_unsupported"
    INSUFFICIENT_CPU = "insufficient_cpu"
    INSUFFICIENT_MEMORY = "insufficient_memory"
    INSUFFICIENT_GPU = "insufficient_gpu"
    PRICE_BELOW_FLOOR = "price_below_floor"
    REQUESTER_BANNED = "requester_banned"
    DEADLINE_TOO_SHORT = "deadline_too_short"
    BUSY = "busy"
    #: this requester already holds the provider's most open quotes per requester
    TOO_MANY_QUOTES = "too_many_quotes"
    #: the requester's escrow deposit (less what it is taking back) does not cover
    #: what it owes this provider plus this job (read on chain, cached)
    INSUFFICIENT_ESCROW = "insufficient_escrow"


@dataclass(frozen=True, slots=True)
class Bid:
    """What a provider needs from a bid to decide. ``deadline`` is absolute, on the
    same clock as :attr:`ProviderState.now`; ``max_total`` is in token base units."""

    job_id: str
    requester: str
    executor: str
    cpu: int
    memory_mb: int
    gpu: int
    max_seconds: int
    max_total: int
    deadline: float

    def __post_init__(self) -> None:
        # The wire layer validates peers' bids; this guards the arithmetic below
        # (a negative request would produce a negative price).
        if self.cpu < 1 or self.memory_mb < 1 or self.gpu < 0:
            raise ValueError("a bid needs cpu >= 1, memory_mb >= 1 and gpu >= 0")
        if self.max_seconds < 1 or self.max_total < 0:
            raise ValueError("a bid needs max_seconds >= 1 and max_total >= 0")


@dataclass(frozen=True, slots=True)
class UnitPrices:
    """The provider's floor prices, integer token base units per hour."""

    cpu_core_hour: int
    memory_gb_hour: int
    gpu_hour: int = 0


@dataclass(frozen=True, slots=True)
class ProviderState:
    """A snapshot of the provider, taken by the shell when the bid arrives."""

    executors: frozenset[str]
    free_cpu: int
    free_memory_mb: int
    free_gpu: int
    prices: UnitPrices
    banned: frozenset[str]
    running_jobs: int
    max_concurrent_jobs: int
    now: float
    #: Time to fetch the payload and start; a deadline must leave room for it.
    start_margin_seconds: float = 5.0
    #: How long a quote binds the provider.
    quote_ttl_seconds: float = 30.0


@dataclass(frozen=True, slots=True)
class Quote:
    job_id: str
    price_total: int
    valid_until: float


@dataclass(frozen=True, slots=True)
class Refusal:
    job_id: str
    reason: RefusalReason
    detail: str  # for people: the numbers behind the reason


Check = Callable[[Bid, ProviderState], Refusal | None]


def floor_price(bid: Bid, prices: UnitPrices) -> int:
    """The least the provider accepts: per-unit prices x resources x max_seconds.

    Computed in integers over a common denominator and rounded up once, so the
    provider never undercharges by rounding and the result is exact.
    """
    per_hour_scaled = (
        prices.cpu_core_hour * bid.cpu * _MB_PER_GB
        + prices.memory_gb_hour * bid.memory_mb
        + prices.gpu_hour * bid.gpu * _MB_PER_GB
    )
    numerator = per_hour_scaled * bid.max_seconds
    denominator = _MB_PER_GB * _SECONDS_PER_HOUR
    return -(-numerator // denominator)


def _banned(bid: Bid, s: ProviderState) -> Refusal | None:
    if bid.requester in s.banned:
        return Refusal(
            bid.job_id, RefusalReason.REQUESTER_BANNED, "this provider does not serve the requester"
        )
    return None


def _executor(bid: Bid, s: ProviderState) -> Refusal | None:
    if bid.executor not in s.executors:
        offered = ", ".join(sorted(s.executors)) or "none"
        return Refusal(
            bid.job_id,
            RefusalReason.EXECUTOR_UNSUPPORTED,
            f"executor {bid.executor!r} not offered (offers: {offered})",
        )
    return None


def _busy(bid: Bid, s: ProviderState) -> Refusal | None:
    if s.running_jobs >= s.max_concurrent_jobs:
        return Refusal(
            bid.job_id,
            RefusalReason.BUSY,
            f"running {s.running_jobs} of {s.max_concurrent_jobs} jobs",
        )
    return None


def _cpu(bid: Bid, s: ProviderState) -> Refusal | None:
    if bid.cpu > s.free_cpu:
        return Refusal(
            bid.job_id, RefusalReason.INSUFFICIENT_CPU, f"asks {bid.cpu} cores, {s.free_cpu} free"
        )
    return None


def _memory(bid: Bid, s: ProviderState) -> Refusal | None:
    if bid.memory_mb > s.free_memory_mb:
        return Refusal(
            bid.job_id,
            RefusalReason.INSUFFICIENT_MEMORY,
            f"asks {bid.memory_mb} MB, {s.free_memory_mb} MB free",
        )
    return None


def _gpu(bid: Bid, s: ProviderState) -> Refusal | None:
    if bid.gpu > s.free_gpu:
        return Refusal(
            bid.job_id, RefusalReason.INSUFFICIENT_GPU, f"asks {bid.gpu} GPUs, {s.free_gpu} free"
        )
    return None


def _deadline(bid: Bid, s: ProviderState) -> Refusal | None:
    needed = bid.max_seconds + s.start_margin_seconds
    left = bid.deadline - s.now
    if left < needed:
        return Refusal(
            bid.job_id,
            RefusalReason.DEADLINE_TOO_SHORT,
            f"{left:.1f} s to the deadline, needs {needed:.1f} s (max_seconds + start margin)",
        )
    return None


def _price(bid: Bid, s: ProviderState) -> Refusal | None:
    floor = floor_price(bid, s.prices)
    if floor > bid.max_total:
        return Refusal(
            bid.job_id,
            RefusalReason.PRICE_BELOW_FLOOR,
            f"floor price {floor} is above the bid's max_total {bid.max_total}",
        )
    return None


#: The default chain, cheapest and most decisive first. A banned requester
#: learns nothing else about this provider.
CHECKS: tuple[Check, ...] = (_banned, _executor, _busy, _cpu, _memory, _gpu, _deadline, _price)

#: The checks a provider runs again when an agreement arrives: quotes reserve
#: nothing, so the capacity the quote saw may be gone by then.
CAPACITY_CHECKS: tuple[Check, ...] = (_busy, _cpu, _memory, _gpu)


def evaluate(
    bid: Bid, state: ProviderState, *, checks: Sequence[Check] = CHECKS
) -> Quote | Refusal:
    """Run the chain; the first refusal wins, otherwise quote the floor price."""
    for check in checks:
        refusal = check(bid, state)
        if refusal is not None:
            return refusal
    return Quote(
        job_id=bid.job_id,
        price_total=floor_price(bid, state.prices),
        valid_until=state.now + state.quote_ttl_seconds,
    )


class RateLimiter:
    """Token buckets, one per key (a requester's peer id): ``rate`` tokens a
    second, at most ``burst``; each allowed event takes one. Pure: ``now`` is
    passed in, and a clock that steps back refills nothing.

    Bounded: at most ``max_keys`` buckets; the least recently used is forgotten
    (and starts full if its key comes back), so a swarm of peer ids costs
    memory up to the bound and no more.
    """

    def __init__(self, *, rate: float, burst: float, max_keys: int):
        if rate <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("a rate limiter needs rate > 0, burst >= 1 and max_keys >= 1")
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    def __len__(self) -> int:
        return len(self._buckets)

    def would_allow(self, key: str, now: float) -> bool:
        """Whether ``key`` has a token now; takes none (a key never seen has a full bucket)."""
        tokens, at = self._buckets.get(key, (self.burst, now))
        if now > at:
            tokens = min(self.burst, tokens + (now - at) * self.rate)
        return tokens >= 1

    def allow(self, key: str, now: float) -> bool:
        """Take a token for ``key`` if it has one."""
        tokens, at = self._buckets.pop(key, (self.burst, now))
        if now > at:
            tokens, at = min(self.burst, tokens + (now - at) * self.rate), now
        allowed = tokens >= 1
        if allowed:
            tokens -= 1
        self._buckets[key] = (tokens, at)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return allowed

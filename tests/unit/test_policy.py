"""The provider's bid policy: one test per refusal reason, the price, the order."""

from __future__ import annotations

import dataclasses

import pytest

from scheduler.policy import (
    CHECKS,
    Bid,
    ProviderState,
    Quote,
    Refusal,
    RefusalReason,
    UnitPrices,
    evaluate,
    floor_price,
)

NOW = 1_000_000.0
# 3600 per core-hour = 1 per core-second; 3600*1024 per GiB-hour = 1 per MiB-second.
PRICES = UnitPrices(cpu_core_hour=3600, memory_gb_hour=3600 * 1024, gpu_hour=7200)

BID = Bid(
    job_id="job-1",
    requester="req-a",
    executor="wasm",
    cpu=2,
    memory_mb=100,
    gpu=0,
    max_seconds=10,
    max_total=10_000,
    deadline=NOW + 300,
)
STATE = ProviderState(
    executors=frozenset({"wasm"}),
    free_cpu=4,
    free_memory_mb=1024,
    free_gpu=0,
    prices=PRICES,
    banned=frozenset(),
    running_jobs=0,
    max_concurrent_jobs=4,
    now=NOW,
    start_margin_seconds=5.0,
    quote_ttl_seconds=30.0,
)


def bid(**changes) -> Bid:
    return dataclasses.replace(BID, **changes)


def state(**changes) -> ProviderState:
    return dataclasses.replace(STATE, **changes)


def test_acceptable_bid_gets_a_quote_at_the_floor_price() -> None:
    result = evaluate(BID, STATE)
    # 2 cores x 10 s x 1/core-s + 100 MiB x 10 s x 1/MiB-s
    assert result == Quote(job_id="job-1", price_total=20 + 1000, valid_until=NOW + 30.0)


def test_floor_price_counts_gpu_and_rounds_up_once() -> None:
    assert floor_price(bid(gpu=1), PRICES) == 20 + 1000 + 20
    # 1 core-second at 1 token/core-hour is 1/3600 of a token: rounds up to 1.
    cheap = UnitPrices(cpu_core_hour=1, memory_gb_hour=1, gpu_hour=0)
    assert floor_price(bid(cpu=1, memory_mb=1, max_seconds=1), cheap) == 1
    # Rounding happens on the sum, not per term (3 x 1/3 is 1, not 3).
    thirds = UnitPrices(cpu_core_hour=1200, memory_gb_hour=0, gpu_hour=0)
    assert floor_price(bid(cpu=3, max_seconds=1), thirds) == 1
    assert floor_price(bid(cpu=1, max_seconds=1), UnitPrices(0, 0, 0)) == 0


def test_exact_price_is_accepted_one_less_refused() -> None:
    assert isinstance(evaluate(bid(max_total=1020), STATE), Quote)
    refusal = evaluate(bid(max_total=1019), STATE)
    assert isinstance(refusal, Refusal)
    assert refusal.reason is RefusalReason.PRICE_BELOW_FLOOR
    assert "1020" in refusal.detail and "1019" in refusal.detail


@pytest.mark.parametrize(
    ("the_bid", "the_state", "reason"),
    [
        (bid(executor="native"), STATE, RefusalReason.EXECUTOR_UNSUPPORTED),
        (bid(cpu=5), STATE, RefusalReason.INSUFFICIENT_CPU),
        (bid(memory_mb=1025), STATE, RefusalReason.INSUFFICIENT_MEMORY),
        (bid(gpu=1, max_total=10**9), STATE, RefusalReason.INSUFFICIENT_GPU),
        (bid(max_total=1), STATE, RefusalReason.PRICE_BELOW_FLOOR),
        (BID, state(banned=frozenset({"req-a"})), RefusalReason.REQUESTER_BANNED),
        (bid(deadline=NOW + 14.9), STATE, RefusalReason.DEADLINE_TOO_SHORT),
        (bid(deadline=NOW - 1), STATE, RefusalReason.DEADLINE_TOO_SHORT),
        (BID, state(running_jobs=4), RefusalReason.BUSY),
    ],
    ids=lambda v: v.value if isinstance(v, RefusalReason) else "",
)
def test_each_refusal_reason(the_bid: Bid, the_state: ProviderState, reason: RefusalReason) -> None:
    result = evaluate(the_bid, the_state)
    assert isinstance(result, Refusal)
    assert result.reason is reason
    assert result.job_id == the_bid.job_id
    assert result.detail


def test_deadline_with_exactly_enough_margin_is_accepted() -> None:
    assert isinstance(evaluate(bid(deadline=NOW + 15), STATE), Quote)


def test_gpu_job_with_a_free_gpu_is_quoted() -> None:
    assert isinstance(evaluate(bid(gpu=1), state(free_gpu=1)), Quote)


def test_reasons_are_a_fixed_set() -> None:
    assert {r.value for r in RefusalReason} == {
        "insufficient_escrow",
        "executor_unsupported",
        "insufficient_cpu",
        "insufficient_memory",
        "insufficient_gpu",
        "price_below_floor",
        "requester_banned",
        "deadline_too_short",
        "busy",
        "too_many_quotes",
    }


def test_cheapest_and_most_decisive_check_comes_first() -> None:
    # A banned requester with an impossible bid is refused as banned: the
    # reason a provider gives must not leak its capacity to a banned peer.
    everything_wrong = bid(executor="native", cpu=99, memory_mb=10**6, max_total=1, deadline=NOW)
    result = evaluate(everything_wrong, state(banned=frozenset({"req-a"}), running_jobs=4))
    assert isinstance(result, Refusal)
    assert result.reason is RefusalReason.REQUESTER_BANNED
    assert len(CHECKS) == 8


def test_custom_check_chain() -> None:
    def always_busy(b: Bid, s: ProviderState) -> Refusal | None:
        return Refusal(b.job_id, RefusalReason.BUSY, "maintenance")

    assert evaluate(BID, STATE, checks=(always_busy,)) == Refusal(
        "job-1", RefusalReason.BUSY, "maintenance"
    )
    assert isinstance(evaluate(BID, STATE, checks=()), Quote)


@pytest.mark.parametrize(
    "changes", [{"cpu": 0}, {"memory_mb": 0}, {"gpu": -1}, {"max_seconds": 0}, {"max_total": -1}]
)
def test_bid_rejects_impossible_values(changes) -> None:
    with pytest.raises(ValueError):
        bid(**changes)


def test_structs_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        BID.cpu = 3  # type: ignore[misc]

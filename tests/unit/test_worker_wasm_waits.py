"""Time limits hold however a WASM job waits: sleeping in ``poll_oneoff`` too.

Layouts (WASI preview 1): a subscription is 48 bytes (userdata u64 @0, tag u8
@8, then @16 either a clock {id u32, timeout u64 @24, precision u64 @32,
flags u16 @40} or an fd u32); an event is 32 bytes (userdata u64 @0, errno
u16 @8, type u8 @10, nbytes u64 @16, flags u16 @24).
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import trio

from worker.wasm import CancelToken, ExecResult, WasmLimits, execution_limiter, run_wasm

HOUR_NS = 3600 * 10**9
SUBS, EVENTS, NEVENTS, CLOCK_NOW = 128, 512, 1000, 1008
MONOTONIC, REALTIME, ABSTIME = 1, 0, 1
INVAL, FAULT = 28, 21


def module(body: str, pages: int = 1) -> bytes:
    return f"""
(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func $now (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") {pages})
  (func $clock (param $i i32) (param $userdata i64) (param $id i32) (param $timeout i64) (param $flags i32)
    (local $at i32) (local.set $at (i32.add (i32.const {SUBS}) (i32.mul (local.get $i) (i32.const 48))))
    (i64.store (local.get $at) (local.get $userdata))
    (i32.store8 offset=8 (local.get $at) (i32.const 0))
    (i32.store offset=16 (local.get $at) (local.get $id))
    (i64.store offset=24 (local.get $at) (local.get $timeout))
    (i32.store16 offset=40 (local.get $at) (local.get $flags)))
  (func $fd (param $i i32) (param $userdata i64) (param $type i32) (param $fd i32)
    (local $at i32) (local.set $at (i32.add (i32.const {SUBS}) (i32.mul (local.get $i) (i32.const 48))))
    (i64.store (local.get $at) (local.get $userdata))
    (i32.store8 offset=8 (local.get $at) (local.get $type))
    (i32.store offset=16 (local.get $at) (local.get $fd)))
  (func $poll_n (param $n i32) (result i32)
    (call $poll (i32.const {SUBS}) (i32.const {EVENTS}) (local.get $n) (i32.const {NEVENTS})))
  (func $mono (result i64)
    (drop (call $now (i32.const {MONOTONIC}) (i64.const 0) (i32.const {CLOCK_NOW})))
    (i64.load (i32.const {CLOCK_NOW})))
  (func (export "_start") {body}))
""".encode()


def sleep_for(ns: int, clock: int = MONOTONIC) -> bytes:
    return module(
        f"(call $clock (i32.const 0) (i64.const 7) (i32.const {clock}) (i64.const {ns}) (i32.const 0))"
        "(call $exit (call $poll_n (i32.const 1)))"
    )


def run_bounded(wasm: bytes, tmp: Path, limits: WasmLimits, token=None) -> ExecResult:
    """run_wasm in a thread, so a run that ignores its limits fails the test, not the suite."""
    results: list[ExecResult] = []
    worker = threading.Thread(
        target=lambda: results.append(run_wasm(wasm, [], None, tmp / "out", limits, token)),
        daemon=True,
    )
    worker.start()
    if token is not None:
        assert token.wait_started(timeout=30)
        token.cancel()
    worker.join(timeout=20)
    assert not worker.is_alive(), "the run outlived its limits"
    [result] = results
    return result


def test_sleep_past_the_time_limit_is_stopped_at_the_limit(tmp_path: Path) -> None:
    result = run_bounded(sleep_for(HOUR_NS), tmp_path, WasmLimits(max_seconds=0.5))
    assert result.error is not None and result.error.code == "timeout"
    assert result.exit_code is None
    assert 450 <= result.usage.wall_ms < 3000


def test_sleep_until_an_absolute_time_is_stopped_at_the_limit(tmp_path: Path) -> None:
    wasm = module(
        "(call $clock (i32.const 0) (i64.const 7) (i32.const 1)"
        f"  (i64.add (call $mono) (i64.const {HOUR_NS})) (i32.const {ABSTIME}))"
        "(call $exit (call $poll_n (i32.const 1)))"
    )
    result = run_bounded(wasm, tmp_path, WasmLimits(max_seconds=0.3))
    assert result.error is not None and result.error.code == "timeout"
    assert result.usage.wall_ms < 3000


def test_realtime_sleep_is_stopped_at_the_limit(tmp_path: Path) -> None:
    result = run_bounded(sleep_for(HOUR_NS, REALTIME), tmp_path, WasmLimits(max_seconds=0.3))
    assert result.error is not None and result.error.code == "timeout"


def test_cancel_stops_a_sleeping_job(tmp_path: Path) -> None:
    token = CancelToken()
    result = run_bounded(sleep_for(HOUR_NS), tmp_path, WasmLimits(max_seconds=600), token)
    assert result.error is not None and result.error.code == "cancelled"
    assert result.usage.wall_ms < 10_000


def test_a_sleep_that_ends_in_a_loop_still_stops(tmp_path: Path) -> None:
    # a job that retries its sleep forever (as libc's sleep() does on EINTR)
    wasm = module(
        f"(loop $l (call $clock (i32.const 0) (i64.const 7) (i32.const 1) (i64.const {HOUR_NS})"
        "  (i32.const 0)) (drop (call $poll_n (i32.const 1))) (br $l))"
    )
    result = run_bounded(wasm, tmp_path, WasmLimits(max_seconds=0.3))
    assert result.error is not None and result.error.code == "timeout"


def expect(*checks: str) -> str:
    """Exit with 10 + the index of the first check that is false, else 0."""
    return (
        "".join(
            f"(if (i32.eqz {check}) (then (call $exit (i32.const {10 + i}))))"
            for i, check in enumerate(checks)
        )
        + "(call $exit (i32.const 0))"
    )


def test_short_sleep_sleeps_and_reports_its_event(tmp_path: Path) -> None:
    wasm = module(
        "(local $t i64) (local.set $t (call $mono))"
        "(call $clock (i32.const 0) (i64.const 7) (i32.const 1) (i64.const 30000000) (i32.const 0))"
        + expect(
            "(i32.eqz (call $poll_n (i32.const 1)))",
            f"(i32.eq (i32.load (i32.const {NEVENTS})) (i32.const 1))",
            f"(i64.eq (i64.load (i32.const {EVENTS})) (i64.const 7))",  # userdata
            f"(i32.eqz (i32.load16_u (i32.const {EVENTS + 8})))",  # errno
            f"(i32.eqz (i32.load8_u (i32.const {EVENTS + 10})))",  # type: clock
            "(i64.ge_u (i64.sub (call $mono) (local.get $t)) (i64.const 30000000))",
        )
    )
    result = run_bounded(wasm, tmp_path, WasmLimits(max_seconds=10))
    assert (result.exit_code, result.error) == (0, None)
    assert result.usage.wall_ms >= 30


def test_absolute_sleep_never_wakes_before_the_jobs_clock_says(tmp_path: Path) -> None:
    wasm = module(
        "(local $until i64) (local.set $until (i64.add (call $mono) (i64.const 40000000)))"
        "(call $clock (i32.const 0) (i64.const 7) (i32.const 1) (local.get $until) (i32.const 1))"
        "(drop (call $poll_n (i32.const 1)))"
        "(call $exit (i64.lt_u (call $mono) (local.get $until)))"
    )
    for _ in range(5):
        result = run_bounded(wasm, tmp_path, WasmLimits(max_seconds=10))
        assert (result.exit_code, result.error) == (0, None)


def test_earliest_of_two_clocks_fires(tmp_path: Path) -> None:
    wasm = module(
        f"(call $clock (i32.const 0) (i64.const 1) (i32.const 1) (i64.const {HOUR_NS}) (i32.const 0))"
        "(call $clock (i32.const 1) (i64.const 2) (i32.const 1) (i64.const 1000000) (i32.const 0))"
        + expect(
            "(i32.eqz (call $poll_n (i32.const 2)))",
            f"(i32.eq (i32.load (i32.const {NEVENTS})) (i32.const 1))",
            f"(i64.eq (i64.load (i32.const {EVENTS})) (i64.const 2))",
        )
    )
    result = run_bounded(wasm, tmp_path, WasmLimits(max_seconds=10))
    assert (result.exit_code, result.error) == (0, None)


def test_fd_subscription_is_ready_at_once(tmp_path: Path) -> None:
    # stdin (empty) and an hour-long clock: the fd is ready without waiting
    wasm = module(
        f"(call $clock (i32.const 0) (i64.const 1) (i32.const 1) (i64.const {HOUR_NS}) (i32.const 0))"
        "(call $fd (i32.const 1) (i64.const 2) (i32.const 1) (i32.const 0))"
        + expect(
            "(i32.eqz (call $poll_n (i32.const 2)))",
            f"(i32.eq (i32.load (i32.const {NEVENTS})) (i32.const 1))",
            f"(i64.eq (i64.load (i32.const {EVENTS})) (i64.const 2))",
            f"(i32.eq (i32.load8_u (i32.const {EVENTS + 10})) (i32.const 1))",  # type: fd_read
        )
    )
    result = run_bounded(wasm, tmp_path, WasmLimits(max_seconds=10))
    assert (result.exit_code, result.error) == (0, None)
    assert result.usage.wall_ms < 5000


@pytest.mark.parametrize(
    ("body", "errno"),
    [
        ("(call $exit (call $poll_n (i32.const 0)))", INVAL),
        # a clock the sandbox does not have
        (
            "(call $clock (i32.const 0) (i64.const 1) (i32.const 9) (i64.const 1) (i32.const 0))"
            "(call $exit (call $poll_n (i32.const 1)))",
            INVAL,
        ),
        # subscriptions past the end of memory
        (
            "(call $exit (call $poll (i32.const 65500) (i32.const 0) (i32.const 1) (i32.const 0)))",
            FAULT,
        ),
        (
            "(call $exit (call $poll (i32.const 0) (i32.const 65530) (i32.const 1) (i32.const 0)))",
            FAULT,
        ),
    ],
)
def test_bad_polls_fail_with_an_errno(tmp_path: Path, body: str, errno: int) -> None:
    result = run_bounded(module(body), tmp_path, WasmLimits(max_seconds=10))
    assert (result.exit_code, result.error) == (errno, None)


def test_huge_subscription_counts_are_refused_without_reading_them(tmp_path: Path) -> None:
    # 1M subscriptions fit in 800 pages; parsing them all would hold the GIL for seconds
    body = "(call $exit (call $poll (i32.const 0) (i32.const 0) (i32.const 1000000) (i32.const 0)))"
    result = run_bounded(module(body, pages=800), tmp_path, WasmLimits(max_seconds=10))
    assert (result.exit_code, result.error) == (INVAL, None)
    assert result.usage.wall_ms < 2000


async def test_cancelled_sleeping_jobs_give_their_threads_back(tmp_path: Path) -> None:
    # The daemon runs jobs in threads it abandons on cancel; each keeps its
    # limiter token until the run really ends. Hour-long sleeps must not keep them.
    jobs = 25
    limiter = execution_limiter(jobs)
    tokens = [CancelToken() for _ in range(jobs)]

    async def one(i: int) -> None:
        def job() -> ExecResult:
            limits = WasmLimits(max_seconds=600)
            return run_wasm(sleep_for(HOUR_NS), [], None, tmp_path / f"o{i}", limits, tokens[i])

        try:
            await trio.to_thread.run_sync(job, abandon_on_cancel=True, limiter=limiter)
        except trio.Cancelled:
            tokens[i].cancel()
            raise

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for i in range(jobs):
                nursery.start_soon(one, i)
            await trio.to_thread.run_sync(lambda: all(t.wait_started(30) for t in tokens))
            nursery.cancel_scope.cancel()
        for _ in range(jobs):  # every token comes back once every run has ended
            await limiter.acquire_on_behalf_of(object())


async def test_execution_limiter_is_not_the_default_one() -> None:
    limiter = execution_limiter(3)
    assert limiter.total_tokens == 3
    assert limiter is not trio.to_thread.current_default_thread_limiter()

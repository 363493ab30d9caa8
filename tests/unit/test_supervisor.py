"""protocol.supervisor: one failure is that task's, never the node's."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from protocol.errors import JobError
from protocol.supervisor import Supervisor, TaskFailure

pytestmark = pytest.mark.trio


@pytest.fixture
def autojump_clock():
    return trio.testing.MockClock(autojump_threshold=0)


async def test_run_turns_an_error_into_a_reported_failure_of_that_task():
    sup = Supervisor("t")
    reported: list[TaskFailure] = []

    async def boom(x):
        raise KeyError(x)

    async def report(f: TaskFailure) -> None:
        reported.append(f)

    assert await sup.run("execute", boom, "k", context="job1", on_error=report) is False
    assert reported == [TaskFailure("execute", "job1", "KeyError", "'k'")]
    assert sup.failures["execute"] == 1
    assert sup.statistics()["recent"][0]["context"] == "job1"


async def test_a_typed_error_is_reported_by_its_code():
    sup = Supervisor("t")

    async def typed():
        raise JobError("the bundle is unusable", code="bad_bundle")

    assert await sup.run("execute", typed) is False
    assert sup.recent[-1].error == "bad_bundle"


async def test_an_error_while_reporting_is_counted_not_raised():
    sup = Supervisor("t")

    async def boom():
        raise ValueError("x")

    async def bad_report(f):
        raise RuntimeError("inbox closed")

    assert await sup.run("store_output", boom, on_error=bad_report) is False
    assert sup.failures == {"store_output": 1, "store_output.on_error": 1}


async def test_cancellation_is_never_swallowed():
    sup = Supervisor("t")
    with trio.move_on_after(0.01) as scope:
        await sup.run("loop", trio.sleep_forever)
    assert scope.cancelled_caught
    assert not sup.failures


async def test_keep_running_restarts_a_failed_loop_with_backoff(autojump_clock):
    sup = Supervisor("t")
    starts: list[float] = []

    async def loop():
        starts.append(trio.current_time())
        if len(starts) <= 3:
            raise OSError("disk hiccup")

    t0 = trio.current_time()
    await sup.keep_running("offer_loop", loop, first_backoff=1.0, max_backoff=3.0)
    assert [s - t0 for s in starts] == [0.0, 1.0, 3.0, 6.0]  # 1, 2, then capped at 3
    assert sup.failures["offer_loop"] == 3

"""A bug in one job's task fails that job, with a reason both sides see; never the node.

Each test injects a failure into one kind of task the market shells start
(fetching the bundle, executing, storing the output, checking the output) and
then runs an honest job through the same provider.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from scheduler.jobstate import JobState
from scheduler.testing import Script
from tests.component.harness import Market, spec

pytestmark = pytest.mark.trio


@pytest.fixture
def autojump_clock():
    return trio.testing.MockClock(autojump_threshold=0)


def _error(market: Market, job_id: str, role: str, store=None) -> dict:
    row = (store or market.requester.store).get(job_id, role=role)
    return row.error or {}


@pytest.mark.parametrize(
    ("crash", "code", "words"),
    [
        ("fetch", "provider_error", "AttributeError"),
        ("execute", "provider_error", "MemoryError"),
        ("store", "output_store_failed", "File name too long"),
    ],
)
async def test_a_provider_task_that_raises_fails_that_job_only(
    autojump_clock, tmp_path, crash, code, words
):
    poisoned: set[str] = set()

    def script(job_id: str) -> Script:
        return Script(crash=crash) if job_id in poisoned else Script()

    async with trio.open_nursery() as nursery:
        market = Market(nursery, tmp_path)
        provider = await market.add_provider(11, script=script)
        req = await market.add_requester()
        bad = await req.service.submit(spec(), "bafkreispecbad")
        poisoned.add(bad)
        assert await market.wait_state(bad, JobState.COMPLETED, JobState.FAILED) is JobState.FAILED
        # both sides know why
        assert _error(market, bad, "requester")["code"] == code
        assert words in _error(market, bad, "requester")["message"]
        assert _error(market, bad, "provider", provider.store)["code"] == code
        assert (
            provider.service.supervisor.failures[
                {"fetch": "execute", "execute": "execute", "store": "store_output"}[crash]
            ]
            == 1
        )
        assert req.store.owed() == []
        # the provider is still up and runs the next, honest job
        good = await req.service.submit(spec(), "bafkreispecgood")
        assert await market.wait_state(good, JobState.COMPLETED, JobState.FAILED) is (
            JobState.COMPLETED
        )
        assert provider.service.core.running() == []
        nursery.cancel_scope.cancel()


async def test_a_requester_fetch_that_raises_fails_that_job_only(autojump_clock, tmp_path):
    async with trio.open_nursery() as nursery:
        market = Market(nursery, tmp_path)
        await market.add_provider(11)
        req = await market.add_requester()
        market.outputs.crash = True
        bad = await req.service.submit(spec(), "bafkreispecbad")
        assert await market.wait_state(bad, JobState.COMPLETED, JobState.FAILED) is JobState.FAILED
        assert "embedded null byte" in str(_error(market, bad, "requester"))
        assert req.service.supervisor.failures["fetch_output"] == 1
        market.outputs.crash = False
        good = await req.service.submit(spec(), "bafkreispecgood")
        assert await market.wait_state(good, JobState.COMPLETED, JobState.FAILED) is (
            JobState.COMPLETED
        )
        nursery.cancel_scope.cancel()


async def test_a_core_that_raises_on_one_event_does_not_end_the_service(autojump_clock, tmp_path):
    async with trio.open_nursery() as nursery:
        market = Market(nursery, tmp_path)
        provider = await market.add_provider(11)
        req = await market.add_requester()
        real = provider.service.core.handle_bid
        calls = []

        def explode_once(bid, now):
            calls.append(bid.job_id)
            if len(calls) == 1:
                raise KeyError("a bug in the core")
            return real(bid, now)

        provider.service.core.handle_bid = explode_once
        job = await req.service.submit(spec(), "bafkreispec")
        # the first bid blew up in the core; the re-bid is answered and the job runs
        assert await market.wait_state(job, JobState.COMPLETED, JobState.FAILED) is (
            JobState.COMPLETED
        )
        assert provider.service.supervisor.failures["event"] == 1
        nursery.cancel_scope.cancel()


async def test_an_agreement_for_a_job_id_this_provider_ran_before_leaves_no_ghost(
    autojump_clock, tmp_path
):
    """A hostile requester bids and agrees with the id of a job that already ran
    here: the store refuses to create it twice. The provider must not keep a
    ghost job holding capacity (8 of them would fill it for good): it declines
    the agreement, and the job goes elsewhere."""
    from protocol.errors import JobError

    async with trio.open_nursery() as nursery:
        market = Market(nursery, tmp_path)
        first = await market.add_provider(11, max_concurrent_jobs=1)
        real_apply = first.service._store.apply
        refused: list[str] = []

        async def apply(cmd, now):
            if type(cmd).__name__ == "CreateJob" and not refused:
                refused.append(cmd.job_id)
                raise JobError(f"job {cmd.job_id} already exists as provider", code="job_exists")
            return await real_apply(cmd, now)

        first.service._store.apply = apply
        req = await market.add_requester()
        job = await req.service.submit(spec(), "bafkreispec")
        await market.wait_for(req, lambda: bool(refused))
        second = await market.add_provider(12)
        assert await market.wait_state(job, JobState.COMPLETED, JobState.FAILED) is (
            JobState.COMPLETED
        )
        # no ghost: the first provider holds nothing and still takes work
        assert first.service.core.running() == []
        assert first.service.drops["duplicate_job"] == 1
        second.scope.cancel()
        market.streams.unregister(second.peer_id)
        market.bus.unsubscribe(second.peer_id)
        other = await req.service.submit(spec(), "bafkreispec2")
        assert await market.wait_state(other, JobState.COMPLETED, JobState.FAILED) is (
            JobState.COMPLETED
        )
        nursery.cancel_scope.cancel()

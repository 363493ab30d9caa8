"""Requester and provider services end to end over the fakes, in virtual time.

MockClock(autojump_threshold=0) makes every timer instant and exact, so a test
can assert the virtual time at which something happened.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from scheduler.jobstate import JobEvent, JobState
from scheduler.testing import Script
from tests.component.harness import Market, spec

pytestmark = pytest.mark.trio


@pytest.fixture
def autojump_clock():
    return trio.testing.MockClock(autojump_threshold=0)


def replaced_at(market: Market, job_id: str) -> list[tuple[float, str]]:
    log = market.requester.store.transitions(job_id, role="requester")
    return [(t.at, t.fields.get("reason")) for t in log if t.event is JobEvent.PROVIDER_REPLACED]


async def test_one_requester_and_three_providers_complete_20_jobs(autojump_clock, tmp_path):
    async with trio.open_nursery() as nursery:
        market = Market(nursery, tmp_path)
        providers = [await market.add_provider(n, cpu=4) for n in (11, 12, 13)]
        req = await market.add_requester()
        jobs = [await req.service.submit(spec(), f"bafkreispec{i}") for i in range(20)]
        for job_id in jobs:
            assert await market.wait_state(job_id, JobState.COMPLETED, JobState.FAILED) is (
                JobState.COMPLETED
            )
        # every job owed exactly once, to the provider that ran it, at its agreed price
        owed = req.store.owed()
        assert sorted(e.job_id for e in owed) == sorted(jobs)
        for entry in owed:
            row = req.store.get(entry.job_id, role="requester")
            assert (entry.provider_peer, entry.amount) == (row.provider_peer, row.price)
        # capacity was respected (4 cpu each), so the work spread over all three
        ran = {p.peer_id: len(p.worker.finished) for p in providers}
        assert sum(ran.values()) == 20 and all(ran.values())
        # providers persisted their side too, and the quotes they held for jobs that
        # went elsewhere were released by the requester, not left to lapse
        t_done = trio.current_time()
        for p in providers:
            done = p.store.jobs(role="provider")
            assert {j.state for j in done} == {JobState.COMPLETED}
            await market.wait_for(p, lambda p=p: p.service.core.reserved() == [])
            assert p.service.core.running() == []
        assert trio.current_time() == t_done
        nursery.cancel_scope.cancel()


async def test_heartbeat_loss_reassigns_at_the_right_virtual_time(autojump_clock, tmp_path):
    async with trio.open_nursery() as nursery:
        market = Market(nursery, tmp_path)
        for n in (11, 12, 13):
            await market.add_provider(n, script=lambda job_id: Script(duration=10.0))
        req = await market.add_requester(heartbeat_interval_s=1.0, missed_heartbeats=3)
        job_id = await req.service.submit(spec(), "bafkreispec")
        await market.wait_state(job_id, JobState.RUNNING)
        t_running = trio.current_time()
        first = req.store.get(job_id, role="requester").provider_peer
        # the provider heartbeats at t+1 and t+2, then drops off the network
        await trio.sleep(2.5)
        market.streams.partition(first)
        await market.wait_state(job_id, JobState.PENDING)
        # last heartbeat heard at t+2; three missed intervals later it is replaced
        assert trio.current_time() == pytest.approx(t_running + 5.0)
        assert replaced_at(market, job_id) == [
            (pytest.approx(t_running + 5.0), "heartbeat_timeout")
        ]
        # runners-up were released when it matched, so a fresh round (one 0.5 s
        # quote window) places it elsewhere, and the job completes there
        await market.wait_state(job_id, JobState.COMPLETED)
        row = req.store.get(job_id, role="requester")
        assert row.provider_peer != first
        assert trio.current_time() == pytest.approx(t_running + 5.0 + 0.5 + 10.0)
        assert [e.provider_peer for e in req.store.owed()] == [row.provider_peer]
        nursery.cancel_scope.cancel()


async def test_killed_provider_is_replaced_and_the_job_completes_elsewhere(
    autojump_clock, tmp_path
):
    async with trio.open_nursery() as nursery:
        market = Market(nursery, tmp_path)
        for n in (11, 12):
            await market.add_provider(n, script=lambda job_id: Script(duration=4.0))
        req = await market.add_requester()
        job_id = await req.service.submit(spec(), "bafkreispec")
        await market.wait_state(job_id, JobState.RUNNING)
        first_peer = req.store.get(job_id, role="requester").provider_peer
        first = next(p for p in market.providers if p.peer_id == first_peer)
        market.kill(first)
        await market.wait_state(job_id, JobState.COMPLETED)
        assert replaced_at(market, job_id)[0][1] == "heartbeat_timeout"
        assert len(req.store.owed()) == 1
        nursery.cancel_scope.cancel()


async def test_deadline_expiry_fails_the_job_with_an_explanation(autojump_clock, tmp_path):
    async with trio.open_nursery() as nursery:
        market = Market(nursery, tmp_path)
        for n in (11, 12):
            await market.add_provider(n, cpu=2)  # the job needs 4
        req = await market.add_requester()
        t0 = trio.current_time()
        job_id = await req.service.submit(spec(cpu=4, max_seconds=10, deadline=30), "bafkreispec")
        # while pending, explain names each refusal
        await trio.sleep(1.0)
        pending = req.service.core.explain(job_id, trio.current_time())
        assert pending["state"] == "pending" and pending["open_for_s"] == pytest.approx(1.0)
        assert {a["reason"] for a in pending["answers"]} == {"insufficient_cpu"}
        assert "asks 4 cores, 2 free" in pending["text"]
        assert await market.wait_state(job_id, JobState.FAILED) is JobState.FAILED
        assert trio.current_time() == pytest.approx(t0 + 30)
        row = req.store.get(job_id, role="requester")
        assert row.error["code"] == "deadline_passed"
        assert row.explanation["bid_rounds"] >= 2  # it kept asking
        assert {a["reason"] for a in row.explanation["answers"]} == {"insufficient_cpu"}
        assert req.store.owed() == []
        nursery.cancel_scope.cancel()


async def test_a_replaced_provider_that_comes_back_is_told_so_stops_and_is_owed_nothing(
    autojump_clock, tmp_path
):
    # the first run anywhere takes 8 s, the next 10 s: the replaced provider comes
    # back while both it and its replacement are still running
    durations = iter([8.0, 10.0, 10.0])
    async with trio.open_nursery() as nursery:
        market = Market(nursery, tmp_path)
        for n in (11, 12, 13):
            await market.add_provider(n, script=lambda job_id: Script(duration=next(durations)))
        req = await market.add_requester(heartbeat_interval_s=1.0, missed_heartbeats=3)
        core = req.service.core
        job_id = await req.service.submit(spec(), "bafkreispec")
        await market.wait_state(job_id, JobState.RUNNING)
        t0 = trio.current_time()
        first_peer = req.store.get(job_id, role="requester").provider_peer
        first = next(p for p in market.providers if p.peer_id == first_peer)
        # cut the first provider off: it keeps running, its heartbeats are lost, and
        # so is the requester's cancel; it comes back before it finishes
        market.streams.partition(first_peer)
        await market.wait_state(job_id, JobState.PENDING)
        assert trio.current_time() == pytest.approx(t0 + 3.0)
        await market.wait_state(job_id, JobState.RUNNING)  # the replacement has started
        market.streams.heal(first_peer)
        # its next heartbeat is answered with Cancel(replaced): it stops and its
        # record ends cancelled, not completed at a price nobody owes it
        first_row = lambda: first.store.get(job_id, role="provider")  # noqa: E731
        await market.wait_for(first, lambda: first_row().state is JobState.CANCELLED)
        assert trio.current_time() < t0 + 8.0
        await market.wait_for(first, lambda: first.worker.aborted == [job_id])
        assert first.worker.finished == []
        reasons = [t.fields.get("reason") for t in first.store.transitions(job_id, role="provider")]
        assert reasons[-1] == "replaced"
        assert core.counters["told_replaced"] >= 1
        assert market.state(job_id) is JobState.RUNNING  # still with the replacement
        await market.wait_state(job_id, JobState.COMPLETED)
        assert trio.current_time() == pytest.approx(t0 + 3.0 + 0.5 + 10.0)  # + a quote window
        owed = req.store.owed()
        assert len(owed) == 1 and owed[0].provider_peer not in (first_peer, None)
        assert core.job(job_id).replaced == [first_peer]
        assert core.job(job_id).late_results == 0
        nursery.cancel_scope.cancel()


async def test_cancel_stops_the_job_on_the_provider(autojump_clock, tmp_path):
    async with trio.open_nursery() as nursery:
        market = Market(nursery, tmp_path)
        for n in (11, 12, 13):
            await market.add_provider(n, script=lambda job_id: Script(hang=True))
        req = await market.add_requester()
        job_id = await req.service.submit(spec(), "bafkreispec")
        await market.wait_state(job_id, JobState.RUNNING)
        provider_peer = req.store.get(job_id, role="requester").provider_peer
        node = next(p for p in market.providers if p.peer_id == provider_peer)
        await req.service.cancel(job_id)
        assert market.state(job_id) is JobState.CANCELLED
        await market.wait_for(node, lambda: job_id in node.worker.aborted)
        assert node.store.get(job_id, role="provider").state is JobState.CANCELLED
        # the others released the capacity they had quoted for it
        for p in market.providers:
            await market.wait_for(p, lambda p=p: p.service.core.reserved() == [])
            assert p.service.core.running() == []
        assert req.store.owed() == []
        nursery.cancel_scope.cancel()


async def test_a_failed_run_keeps_its_output_so_the_requester_can_read_the_logs(
    autojump_clock, tmp_path
):
    async with trio.open_nursery() as nursery:
        market = Market(nursery, tmp_path)
        failing = Script(error_code="nonzero_exit", error_message="exit 3", exit_code=3)
        await market.add_provider(11, script=lambda job_id: failing)
        req = await market.add_requester()
        job_id = await req.service.submit(spec(), "bafkreispec")
        assert await market.wait_state(job_id, JobState.FAILED) is JobState.FAILED
        row = req.store.get(job_id, role="requester")
        assert row.error["code"] == "nonzero_exit" and row.error["exit_code"] == 3
        # the provider stored the run's output (its logs) and the requester kept the
        # CID and fetched it, without verifying anything or paying for it
        assert row.output_cid
        with trio.fail_after(5):  # virtual time: the spawned fetch runs at once
            while not market.outputs.logs_fetched:
                await trio.sleep(0.01)
        assert market.outputs.logs_fetched == [(job_id, row.output_cid)]
        assert market.outputs.fetched == []
        assert req.store.owed() == []
        nursery.cancel_scope.cancel()

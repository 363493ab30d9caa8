"""``mask top``'s real asyncio client against a real RpcServer (trio, in a thread)."""

from __future__ import annotations

import asyncio
import contextlib
import queue
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from textual.widgets import Static

from maskd.rpc import RpcServer, serve_in_thread
from maskd.tui import AsyncioRpcClient, TopApp, socket_client_factory
from maskd.tui.widgets import JobsTable, OffersTable, PeersTable, job_key
from protocol.errors import DaemonUnavailable, RpcError

WAIT_S = 5
INFO = {"peer_id": "12D3KooWRealSocketNode", "peers": 1, "uptime_s": 5.0}
PEER = {"peer_id": "12D3KooWRealPeer0001", "addrs": [], "latency_ms": 3.0, "score": 1.0}
OFFER = {"offer_id": "offer-real-0001", "peer_id": PEER["peer_id"], "cpu": 2, "memory_mb": 1024}
JOB = {
    "job_id": "f" * 64,
    "role": "requester",
    "name": "hello",
    "state": "matched",
    "provider": PEER["peer_id"],
    "price": "250000000000000000",
    "usage": None,
    "error": None,
    "created_at": 1.0,
    "updated_at": 1.0,
}


class FakeDaemon:
    """Handlers for an RpcServer whose watch stream the test feeds.

    Without ``jobs`` it is a daemon from before jobs (no ``v1.jobs.list``).
    """

    def __init__(self, jobs: list[dict] | None = None) -> None:
        self.events: queue.Queue[dict | None] = queue.Queue()
        self.jobs = jobs

    def handlers(self) -> dict:
        async def info(params):
            return INFO

        async def peers(params):
            return [PEER]

        async def offers(params):
            return [OFFER]

        async def missing(params):
            raise RpcError("gone", rpc_code=-32004, code="job_not_found", hint="see mask jobs")

        async def jobs(params):
            return self.jobs

        methods = {
            "v1.node.info": info,
            "v1.peers.list": peers,
            "v1.offers.list": offers,
            "v1.missing": missing,
        }
        if self.jobs is not None:
            methods["v1.jobs.list"] = jobs
        return methods

    async def watch(self, params, send) -> None:
        while True:
            event = await trio.to_thread.run_sync(self.events.get, abandon_on_cancel=True)
            if event is None:
                return
            await send({"method": "v1.event", "params": event})

    @contextlib.contextmanager
    def serving(self, path: Path) -> Iterator[Path]:
        server = RpcServer(path, self.handlers(), {"v1.watch": self.watch})
        try:
            with serve_in_thread(server) as socket_path:
                yield socket_path
        finally:
            self.events.put(None)  # free a reader thread the server abandoned
            self.events = queue.Queue()


async def wait_until(condition, pause) -> None:
    async with asyncio.timeout(WAIT_S):
        while not condition():
            await pause()


@pytest.mark.asyncio
async def test_asyncio_client_calls_watch_and_errors(tmp_path):
    daemon = FakeDaemon()
    with daemon.serving(tmp_path / "maskd.sock") as path:
        client = await AsyncioRpcClient.connect(path)
        assert await client.node_info() == INFO
        assert await client.peers() == [PEER]
        assert await client.offers() == [OFFER]
        with pytest.raises(RpcError) as old:
            await client.jobs()
        assert (old.value.rpc_code, old.value.code) == (-32601, "method_not_found")
        with pytest.raises(RpcError) as info:
            await client.call("v1.missing")
        assert (info.value.rpc_code, info.value.hint) == (-32004, "see mask jobs")
        events = client.watch()
        daemon.events.put({"type": "peer.joined", "peer_id": "x"})
        async with asyncio.timeout(WAIT_S):
            assert await anext(events) == {"type": "peer.joined", "peer_id": "x"}
        await events.aclose()
        await client.close()


@pytest.mark.asyncio
async def test_asyncio_client_no_daemon(tmp_path):
    with pytest.raises(DaemonUnavailable) as info:
        await AsyncioRpcClient.connect(tmp_path / "none.sock")
    assert info.value.message == f"no maskd daemon at {tmp_path / 'none.sock'}"


@pytest.mark.asyncio
async def test_top_over_a_real_socket_survives_a_daemon_restart(tmp_path):
    daemon = FakeDaemon()
    path = tmp_path / "maskd.sock"
    app = TopApp(socket_client_factory(path), socket_label=path, retry_cap=0.05)
    with contextlib.ExitStack() as running:
        running.enter_context(daemon.serving(path))
        async with app.run_test(size=(160, 40)) as pilot:
            peers = app.query_one(PeersTable)
            offers = app.query_one(OffersTable)
            banner = app.query_one("#banner", Static)
            await wait_until(lambda: app.loads == 1, pilot.pause)
            assert peers.keys() == [PEER["peer_id"]]
            assert offers.keys() == [OFFER["offer_id"]]
            assert not app.query_one(JobsTable).display  # this daemon predates jobs
            daemon.events.put({"type": "offer.added", "offer": {**OFFER, "offer_id": "o-2"}})
            await wait_until(lambda: offers.row_count == 2, pilot.pause)

            running.close()  # the daemon stops
            await wait_until(lambda: banner.display, pilot.pause)
            assert str(banner.render()) == f"daemon not reachable at {path} — retrying…"

            running.enter_context(daemon.serving(path))  # and comes back
            await wait_until(lambda: not banner.display, pilot.pause)
            assert app.loads == 2
            assert offers.keys() == [OFFER["offer_id"]]  # reloaded from the new daemon


@pytest.mark.asyncio
async def test_top_over_a_real_socket_shows_jobs_and_follows_job_state(tmp_path):
    daemon = FakeDaemon(jobs=[JOB])
    path = tmp_path / "maskd.sock"
    app = TopApp(socket_client_factory(path), socket_label=path, refresh_interval=3600.0)
    with daemon.serving(path):
        async with app.run_test(size=(160, 50)) as pilot:
            jobs = app.query_one(JobsTable)
            await wait_until(lambda: app.loads == 1, pilot.pause)
            key = job_key(JOB["job_id"], "requester")
            assert jobs.display and jobs.keys() == [key]
            assert [str(c) for c in jobs.get_row(key)][3:6] == ["matched", "12D3KooW…0001", "0.25"]
            event = {"type": "job.state", "job_id": JOB["job_id"], "role": "requester"}
            daemon.events.put({**event, "state": "running", "ts": 2.0})
            await wait_until(lambda: str(jobs.get_cell(key, "state")) == "running", pilot.pause)
            # a job this table has not seen: the list is fetched again
            daemon.jobs = [JOB, {**JOB, "job_id": "e" * 64, "created_at": 3.0}]
            daemon.events.put({**event, "job_id": "e" * 64, "state": "pending", "ts": 3.0})
            await wait_until(lambda: jobs.row_count == 2, pilot.pause)
            assert jobs.keys() == [job_key("e" * 64, "requester"), key]
            # the reload brought the daemon's own view of the first job back
            assert str(jobs.get_cell(key, "state")) == "matched"

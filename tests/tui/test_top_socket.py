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
from maskd.tui.widgets import OffersTable, PeersTable
from protocol.errors import DaemonUnavailable, RpcError

WAIT_S = 5
INFO = {"peer_id": "12D3KooWRealSocketNode", "peers": 1, "uptime_s": 5.0}
PEER = {"peer_id": "12D3KooWRealPeer0001", "addrs": [], "latency_ms": 3.0, "score": 1.0}
OFFER = {"offer_id": "offer-real-0001", "peer_id": PEER["peer_id"], "cpu": 2, "memory_mb": 1024}


class FakeDaemon:
    """Handlers for an RpcServer whose watch stream the test feeds."""

    def __init__(self) -> None:
        self.events: queue.Queue[dict | None] = queue.Queue()

    def handlers(self) -> dict:
        async def info(params):
            return INFO

        async def peers(params):
            return [PEER]

        async def offers(params):
            return [OFFER]

        async def missing(params):
            raise RpcError("gone", rpc_code=-32004, code="job_not_found", hint="see mask jobs")

        return {
            "v1.node.info": info,
            "v1.peers.list": peers,
            "v1.offers.list": offers,
            "v1.missing": missing,
        }

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
            daemon.events.put({"type": "offer.added", "offer": {**OFFER, "offer_id": "o-2"}})
            await wait_until(lambda: offers.row_count == 2, pilot.pause)

            running.close()  # the daemon stops
            await wait_until(lambda: banner.display, pilot.pause)
            assert str(banner.render()) == f"daemon not reachable at {path} — retrying…"

            running.enter_context(daemon.serving(path))  # and comes back
            await wait_until(lambda: not banner.display, pilot.pause)
            assert app.loads == 2
            assert offers.keys() == [OFFER["offer_id"]]  # reloaded from the new daemon

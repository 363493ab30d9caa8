"""The SDK against a real RpcServer: sync Client (server in a thread) and TrioClient."""

from __future__ import annotations

import contextlib
import os
import socket
import threading

import pytest
import trio

from maskd.client import Client, TrioClient, _Calls
from maskd.rpc import RpcServer, serve_in_thread
from protocol.errors import DaemonUnavailable, RpcError

WAIT_S = 5
INFO = {"peer_id": "12D3KooWtest", "peers": 2}
PEERS = [{"peer_id": "12D3KooWa", "addrs": [], "latency_ms": None, "score": 0.0, "offer": None}]
OFFERS = [{"offer_id": "of-1", "peer_id": "12D3KooWa"}]


class Watch:
    """The v1.watch handler; records whether its client went away."""

    def __init__(self) -> None:
        self.left = threading.Event()  # waited on from the test's thread

    async def __call__(self, params, send):
        try:
            for i in range(params.get("count", 0)):
                await send({"method": "v1.event", "params": {"type": "peer.joined", "i": i}})
            if params.get("fail"):
                raise RpcError("no watching", rpc_code=-32011, code="watch_denied", hint="ask")
            if params.get("hold"):
                await trio.sleep_forever()
        except trio.Cancelled:
            self.left.set()
            raise


def handlers():
    async def info(params):
        return INFO

    async def peers(params):
        return PEERS

    async def offers(params):
        return OFFERS

    async def missing(params):
        raise RpcError("no such job", rpc_code=-32004, code="job_not_found", hint="see mask jobs")

    async def stuck(params):
        await trio.sleep_forever()

    return {
        "v1.node.info": info,
        "v1.peers.list": peers,
        "v1.offers.list": offers,
        "v1.missing": missing,
        "v1.stuck": stuck,
    }


@pytest.fixture
def watch() -> Watch:
    return Watch()


@pytest.fixture
def daemon(tmp_path, watch):
    server = RpcServer(tmp_path / "maskd.sock", handlers(), {"v1.watch": watch})
    with serve_in_thread(server) as path:
        yield path


def test_request_ids_increment():
    calls = _Calls()
    assert [calls.request("m", None)[0] for _ in range(3)] == [1, 2, 3]


# --- sync ----------------------------------------------------------------------


def test_convenience_calls(daemon):
    with Client.connect(daemon) as client:
        assert client.node_info() == INFO
        assert client.peers() == PEERS
        assert client.offers() == OFFERS
        assert "v1.watch" in client.hello()["methods"]
        assert client.call("v1.node.info", {"ignored": 1}) == INFO


def test_connect_finds_the_socket_from_the_environment(daemon, monkeypatch):
    monkeypatch.setenv("MASK_SOCKET", os.fspath(daemon))
    with Client.connect() as client:
        assert client.socket_path == daemon
        assert client.node_info() == INFO


def test_error_response_becomes_rpc_error(daemon):
    with Client.connect(daemon) as client:
        with pytest.raises(RpcError) as info:
            client.call("v1.missing")
        assert (info.value.rpc_code, info.value.code, info.value.hint) == (
            -32004,
            "job_not_found",
            "see mask jobs",
        )
        with pytest.raises(RpcError) as info:
            client.call("v9.unknown")
        assert info.value.rpc_code == -32601
        assert info.value.code == "method_not_found"
        assert client.node_info() == INFO  # still usable


def test_missing_socket_is_daemon_unavailable(tmp_path):
    path = tmp_path / "nothing.sock"
    with pytest.raises(DaemonUnavailable) as info:
        Client.connect(path)
    assert info.value.message == f"no maskd daemon at {path}"
    assert "maskd --data-dir" in info.value.hint and "MASK_SOCKET" in info.value.hint


def test_refused_socket_is_daemon_unavailable(tmp_path):
    path = tmp_path / "stale.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(os.fspath(path))
    stale.close()
    with pytest.raises(DaemonUnavailable) as info:
        Client.connect(path)
    assert info.value.code == "daemon_unavailable"
    assert info.value.message == f"no maskd daemon at {path}"


def test_a_stuck_daemon_times_out(daemon):
    with Client.connect(daemon) as client, pytest.raises(DaemonUnavailable) as info:
        client.call("v1.stuck", timeout=0.2)
    assert info.value.code == "daemon_timeout"
    assert "v1.stuck" in info.value.message


def test_watch_yields_event_params_until_the_stream_ends(daemon):
    with Client.connect(daemon) as client:
        events = list(client.watch({"count": 3}))
        assert [e["i"] for e in events] == [0, 1, 2]
        assert events[0]["type"] == "peer.joined"
        assert client.node_info() == INFO  # watch used its own connection


def test_watch_error_raises_rpc_error(daemon):
    with Client.connect(daemon) as client, pytest.raises(RpcError) as info:
        list(client.watch({"fail": True}))
    assert info.value.code == "watch_denied"


def test_leaving_a_watch_early_closes_its_connection(daemon, watch):
    with Client.connect(daemon) as client:
        events = client.watch({"count": 1, "hold": True})
        assert next(events)["i"] == 0
        events.close()
    assert watch.left.wait(WAIT_S)  # the server noticed and cancelled the handler


# --- trio ----------------------------------------------------------------------


@pytest.fixture
async def trio_daemon(tmp_path, nursery, watch):
    server = RpcServer(tmp_path / "maskd.sock", handlers(), {"v1.watch": watch})
    return await nursery.start(server.serve)


async def test_trio_client_calls_and_errors(trio_daemon):
    async with await TrioClient.connect(trio_daemon) as client:
        assert await client.node_info() == INFO
        assert await client.peers() == PEERS
        assert await client.offers() == OFFERS
        with pytest.raises(RpcError) as info:
            await client.call("v1.missing")
        assert info.value.hint == "see mask jobs"
        with pytest.raises(DaemonUnavailable) as timeout:
            await client.call("v1.stuck", timeout=0.2)
        assert timeout.value.code == "daemon_timeout"


async def test_trio_client_missing_socket(tmp_path):
    with pytest.raises(DaemonUnavailable) as info:
        await TrioClient.connect(tmp_path / "none.sock")
    assert info.value.message.startswith("no maskd daemon at ")


async def test_trio_watch_and_daemon_going_away(tmp_path, nursery, watch):
    server = RpcServer(tmp_path / "maskd.sock", handlers(), {"v1.watch": watch})
    server_scope = trio.CancelScope()

    async def run_server(task_status=trio.TASK_STATUS_IGNORED):
        with server_scope:
            await server.serve(task_status=task_status)

    path = await nursery.start(run_server)
    client = await TrioClient.connect(path)
    async with contextlib.aclosing(client.watch({"count": 2})) as events:
        assert [e["i"] async for e in events] == [0, 1]
    with trio.fail_after(WAIT_S):
        async with contextlib.aclosing(client.watch({"count": 1, "hold": True})) as events:
            assert (await events.__anext__())["i"] == 0
            server_scope.cancel()  # the daemon stops
            with pytest.raises(DaemonUnavailable) as info:
                await events.__anext__()
    assert info.value.code == "daemon_disconnected"
    with pytest.raises(DaemonUnavailable):
        await client.node_info()
    await client.close()

"""RpcServer: framing, errors, streams, limits, socket lifecycle.

Runs under trio (the project's trio_mode) with the real clock: real sockets
and an autojump clock do not mix. Every wait is bounded by ``fail_after``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
from collections import deque
from typing import Any

import pytest
import trio

from maskd.rpc import LineFramer, LineTooLong, RpcServer, maskd_version
from protocol.errors import MaskError, RpcError

WAIT_S = 5


class Raw:
    """A bare line-level client, so tests can send anything at all."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.framer = LineFramer(1 << 24)
        self.lines: deque[bytes] = deque()

    @classmethod
    async def connect(cls, path) -> Raw:
        return cls(await trio.open_unix_socket(os.fspath(path)))

    async def send(self, message: Any) -> None:
        data = message if isinstance(message, bytes) else json.dumps(message).encode()
        await self.stream.send_all(data + b"\n")

    async def recv(self) -> dict | None:
        """The next message, or None once the server closed the connection."""
        with trio.fail_after(WAIT_S):
            while not self.lines:
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    data = b""
                if not data:
                    return None
                self.lines.extend(self.framer.feed(data))
        return json.loads(self.lines.popleft())

    async def call(self, method: str, params: Any = None, req_id: Any = 1) -> dict:
        request = {"jsonrpc": "2.0", "id": req_id, "method": method}
        if params is not None:
            request["params"] = params
        await self.send(request)
        response = await self.recv()
        assert response is not None
        return response


class Recorder:
    def __init__(self) -> None:
        self.notified = trio.Event()
        self.stream_started = trio.Event()
        self.stream_finished = trio.Event()
        self.stream_cancelled = False
        self.release_stream = trio.Event()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def make_server(path, recorder: Recorder, **kwargs) -> RpcServer:
    async def echo(params):
        return params

    async def note(params):
        recorder.notified.set()
        return None

    async def refuse(params):
        raise RpcError("no such job", rpc_code=-32004, code="job_not_found", hint="see mask jobs")

    async def mask_error(params):
        raise MaskError("wallet locked", code="wallet_locked", hint="unlock it")

    async def crash(params):
        raise ZeroDivisionError("boom")

    async def not_json(params):
        return object()

    async def watch(params, send):
        recorder.stream_started.set()
        try:
            for i in range(params.get("count", 0)):
                await send({"method": "v1.event", "params": {"type": "tick", "i": i}})
            if params.get("bare"):
                await send({"type": "bare"})
            if params.get("fail"):
                raise RpcError("watch refused", rpc_code=-32010, code="nope")
            if params.get("hold"):
                await recorder.release_stream.wait()
        except trio.Cancelled:
            recorder.stream_cancelled = True
            raise
        finally:
            recorder.stream_finished.set()

    handlers = {
        "v1.echo": echo,
        "v1.note": note,
        "v1.refuse": refuse,
        "v1.mask_error": mask_error,
        "v1.crash": crash,
        "v1.not_json": not_json,
    }
    return RpcServer(path, handlers, {"v1.watch": watch}, **kwargs)


@pytest.fixture
async def server(tmp_path, nursery, recorder) -> RpcServer:
    server = make_server(tmp_path / "maskd.sock", recorder)
    await nursery.start(server.serve)
    return server


# --- framing ---------------------------------------------------------------


def test_framer_splits_lines_across_chunks():
    framer = LineFramer(100)
    assert framer.feed(b'{"a":') == []
    assert framer.feed(b'1}\n{"b":2}\n{"c"') == [b'{"a":1}', b'{"b":2}']
    assert framer.finish() == b'{"c"'
    assert framer.finish() is None


def test_framer_rejects_a_line_over_the_limit_even_without_newline():
    with pytest.raises(LineTooLong):
        LineFramer(10).feed(b"x" * 11)
    with pytest.raises(LineTooLong):
        LineFramer(10).feed(b"x" * 11 + b"\n")
    assert LineFramer(10).feed(b"x" * 10 + b"\n") == [b"x" * 10]


# --- calls and errors ----------------------------------------------------------


async def test_hello_reports_version_and_sorted_methods(server):
    conn = await Raw.connect(server.socket_path)
    response = await conn.call("v1.rpc.hello", req_id="h-1")
    assert response["id"] == "h-1"
    assert response["result"]["version"] == maskd_version()
    methods = response["result"]["methods"]
    assert methods == sorted(methods)
    assert {"v1.rpc.hello", "v1.watch", "v1.echo"} <= set(methods)


async def test_response_carries_request_id_and_result(server):
    conn = await Raw.connect(server.socket_path)
    assert await conn.call("v1.echo", {"x": 1}, req_id=7) == {
        "jsonrpc": "2.0",
        "id": 7,
        "result": {"x": 1},
    }
    assert (await conn.call("v1.echo", [], req_id=8))["result"] == {}


@pytest.mark.parametrize(
    "line",
    [
        b'{"jsonrpc": "2.0", "id": 1, "meth',
        # a string that is not UTF-8 (msgspec raises UnicodeDecodeError for it)
        b'{"jsonrpc": "2.0", "id": 1, "method": "\xff"}',
    ],
)
async def test_malformed_json_is_a_parse_error_and_keeps_the_connection(server, line):
    conn = await Raw.connect(server.socket_path)
    await conn.send(line)
    response = await conn.recv()
    assert response["error"]["code"] == -32700
    assert response["id"] is None
    assert (await conn.call("v1.echo", {"still": "here"}, req_id=2))["result"] == {"still": "here"}


@pytest.mark.parametrize(
    "message",
    [[1, 2], "hello", 5, {"id": 1, "method": "v1.echo"}, {"jsonrpc": "2.0", "id": 1}],
)
async def test_valid_json_that_is_not_a_request_is_invalid_request(server, message):
    conn = await Raw.connect(server.socket_path)
    await conn.send(message)
    assert (await conn.recv())["error"]["code"] == -32600
    assert (await conn.call("v1.echo", {}, req_id=2))["result"] == {}


async def test_unknown_method_names_the_method(server):
    conn = await Raw.connect(server.socket_path)
    response = await conn.call("v9.nope", req_id=3)
    assert response["id"] == 3
    assert response["error"]["code"] == -32601
    assert "v9.nope" in response["error"]["message"]


@pytest.mark.parametrize("params", ["a string", 5, True, [1, 2]])
async def test_params_that_are_not_an_object_are_invalid_params(server, params):
    conn = await Raw.connect(server.socket_path)
    response = await conn.call("v1.echo", params, req_id=4)
    assert response["id"] == 4
    assert response["error"]["code"] == -32602


async def test_rpc_error_keeps_its_code_and_hint(server):
    conn = await Raw.connect(server.socket_path)
    error = (await conn.call("v1.refuse"))["error"]
    assert error == {
        "code": -32004,
        "message": "no such job",
        "data": {"code": "job_not_found", "hint": "see mask jobs"},
    }


async def test_mask_error_is_a_server_error_with_code_and_hint(server):
    conn = await Raw.connect(server.socket_path)
    error = (await conn.call("v1.mask_error"))["error"]
    assert error["code"] == -32000
    assert error["message"] == "wallet locked"
    assert error["data"] == {"code": "wallet_locked", "hint": "unlock it"}


async def test_unexpected_exception_is_internal_error_logged_with_traceback(server, caplog):
    conn = await Raw.connect(server.socket_path)
    with caplog.at_level(logging.ERROR, logger="maskd.rpc"):
        error = (await conn.call("v1.crash"))["error"]
    assert error["code"] == -32603
    assert "boom" not in error["message"]  # internals stay in the log
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.exc_info and record.exc_info[0] is ZeroDivisionError
    assert (await conn.call("v1.echo", {}, req_id=2))["result"] == {}


async def test_result_that_is_not_json_is_internal_error(server, caplog):
    conn = await Raw.connect(server.socket_path)
    with caplog.at_level(logging.CRITICAL, logger="maskd.rpc"):
        assert (await conn.call("v1.not_json"))["error"]["code"] == -32603
    assert (await conn.call("v1.echo", {}, req_id=2))["result"] == {}


async def test_notifications_get_no_response(server, recorder):
    conn = await Raw.connect(server.socket_path)
    await conn.send({"jsonrpc": "2.0", "method": "v1.note"})
    await conn.send({"jsonrpc": "2.0", "method": "v1.nope"})
    await conn.send({"jsonrpc": "2.0", "method": "v1.crash"})
    await conn.send({"jsonrpc": "2.0", "method": "v1.echo", "params": "not an object"})
    with trio.fail_after(WAIT_S):
        await recorder.notified.wait()
    # The first thing that comes back answers the next request, not the notes.
    assert (await conn.call("v1.echo", {"n": 1}, req_id=9)) == {
        "jsonrpc": "2.0",
        "id": 9,
        "result": {"n": 1},
    }


async def test_too_long_line_is_refused_and_the_connection_closed(tmp_path, nursery, recorder):
    server = make_server(tmp_path / "s.sock", recorder, max_line_bytes=1000)
    await nursery.start(server.serve)
    conn = await Raw.connect(server.socket_path)
    await conn.send({"jsonrpc": "2.0", "id": 1, "method": "v1.echo", "params": {"x": "y" * 2000}})
    response = await conn.recv()
    assert response["error"]["code"] == -32600
    assert "too large" in response["error"]["message"]
    assert await conn.recv() is None  # closed
    assert (await (await Raw.connect(server.socket_path)).call("v1.echo", {}))["result"] == {}


# --- streams -------------------------------------------------------------------


async def test_stream_sends_notifications_then_a_final_response(server):
    conn = await Raw.connect(server.socket_path)
    await conn.send({"jsonrpc": "2.0", "id": 5, "method": "v1.watch", "params": {"count": 2}})
    assert await conn.recv() == {
        "jsonrpc": "2.0",
        "method": "v1.event",
        "params": {"type": "tick", "i": 0},
    }
    assert (await conn.recv())["params"]["i"] == 1
    assert await conn.recv() == {"jsonrpc": "2.0", "id": 5, "result": None}
    # the connection is free again
    assert (await conn.call("v1.echo", {}, req_id=6))["result"] == {}


async def test_stream_bare_params_become_an_event_notification(server):
    conn = await Raw.connect(server.socket_path)
    await conn.send({"jsonrpc": "2.0", "id": 5, "method": "v1.watch", "params": {"bare": True}})
    assert await conn.recv() == {"jsonrpc": "2.0", "method": "v1.event", "params": {"type": "bare"}}


async def test_stream_error_ends_with_an_error_response(server):
    conn = await Raw.connect(server.socket_path)
    await conn.send({"jsonrpc": "2.0", "id": 5, "method": "v1.watch", "params": {"fail": True}})
    response = await conn.recv()
    assert response["id"] == 5
    assert response["error"]["code"] == -32010


async def test_request_during_a_stream_is_told_the_connection_is_busy(server, recorder):
    conn = await Raw.connect(server.socket_path)
    await conn.send({"jsonrpc": "2.0", "id": 1, "method": "v1.watch", "params": {"hold": True}})
    with trio.fail_after(WAIT_S):
        await recorder.stream_started.wait()
    response = await conn.call("v1.echo", {}, req_id=2)
    assert response["id"] == 2
    assert response["error"]["data"]["code"] == "connection_busy"
    recorder.release_stream.set()
    assert await conn.recv() == {"jsonrpc": "2.0", "id": 1, "result": None}


async def test_client_leaving_mid_stream_cancels_the_handler_quietly(server, recorder, caplog):
    conn = await Raw.connect(server.socket_path)
    with caplog.at_level(logging.DEBUG, logger="maskd.rpc"):
        await conn.send({"jsonrpc": "2.0", "id": 1, "method": "v1.watch", "params": {"hold": True}})
        with trio.fail_after(WAIT_S):
            await recorder.stream_started.wait()
        await conn.stream.aclose()
        with trio.fail_after(WAIT_S):
            await recorder.stream_finished.wait()
            while server.active_connections:
                await trio.sleep(0.01)
    assert recorder.stream_cancelled
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert (await (await Raw.connect(server.socket_path)).call("v1.echo", {}))["result"] == {}


# --- limits --------------------------------------------------------------------


async def test_connections_beyond_the_limit_are_refused_and_closed(tmp_path, nursery, recorder):
    server = make_server(tmp_path / "s.sock", recorder, max_connections=2)
    await nursery.start(server.serve)
    held = [await Raw.connect(server.socket_path) for _ in range(2)]
    for conn in held:  # both are being served
        assert (await conn.call("v1.echo", {}))["result"] == {}
    extra = await Raw.connect(server.socket_path)
    refusal = await extra.recv()
    assert refusal["error"]["data"]["code"] == "rpc_busy"
    assert await extra.recv() is None
    await held[0].stream.aclose()
    with trio.fail_after(WAIT_S):
        while server.active_connections > 1:
            await trio.sleep(0.01)
    again = await Raw.connect(server.socket_path)
    assert (await again.call("v1.echo", {}))["result"] == {}


# --- socket lifecycle ------------------------------------------------------------


async def test_socket_is_0600_and_removed_on_exit(tmp_path, recorder):
    path = tmp_path / "maskd.sock"
    umask_before = os.umask(0o022)
    os.umask(umask_before)
    async with trio.open_nursery() as nursery:
        await nursery.start(make_server(path, recorder).serve)
        mode = os.stat(path).st_mode
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == 0o600
        nursery.cancel_scope.cancel()
    assert not path.exists()
    assert os.umask(umask_before) == umask_before  # restored


async def test_stale_socket_is_replaced(tmp_path, nursery, recorder):
    path = tmp_path / "maskd.sock"
    crashed = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    crashed.bind(os.fspath(path))
    crashed.close()  # the file stays, nothing listens: a crashed daemon
    server = make_server(path, recorder)
    await nursery.start(server.serve)
    assert (await (await Raw.connect(path)).call("v1.echo", {}))["result"] == {}


async def test_live_socket_means_daemon_running(server, recorder):
    second = make_server(server.socket_path, recorder)
    with pytest.raises(MaskError) as info, trio.fail_after(WAIT_S):
        await second.serve()
    assert info.value.code == "daemon_running"
    assert str(server.socket_path) in info.value.message
    assert "--data-dir" in info.value.hint
    # the first daemon still owns and serves its socket
    assert (await (await Raw.connect(server.socket_path)).call("v1.echo", {}))["result"] == {}


async def test_a_regular_file_in_the_way_is_not_removed(tmp_path, recorder):
    path = tmp_path / "maskd.sock"
    path.write_text("precious")
    with pytest.raises(MaskError) as info, trio.fail_after(WAIT_S):
        await make_server(path, recorder).serve()
    assert info.value.code == "socket_path_invalid"
    assert path.read_text() == "precious"

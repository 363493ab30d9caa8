"""Hostile input on the RPC socket and the decoders: nesting bombs, idle and busy sockets.

The nesting bombs run in a subprocess that imports eth_account first: py_ecc
raises the recursion limit to 100,000 there (as in the daemon), so an
unbounded decode overflows the C stack and the process dies with SIGSEGV
instead of raising. The test asserts that the process lived.

Idle timeouts run the server's connection handler on in-memory streams under
an autojump clock, so they take no real time and assert exact virtual times.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from maskd.client import Client, TrioClient
from maskd.rpc import LineFramer, RpcServer, serve_in_thread
from protocol import blocks, jobdata
from protocol.codec import (
    DECODE_ERRORS,
    MAX_NESTING,
    NestingTooDeep,
    check_nesting,
    decode_body,
    decode_json,
    decode_msgpack,
)
from protocol.errors import DaemonUnavailable, RpcError, WireError

REPO = Path(__file__).resolve().parents[2]
BOMB_DEPTH = 40_000
WAIT_S = 5


def depth(value: Any) -> int:
    """Nesting depth as check_nesting counts it: [] is 1, [[]] is 2, 1 is 0."""
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    return 0


def nested(levels: int, leaf: Any = None) -> Any:
    value = leaf
    for i in range(levels):
        value = [value] if i % 2 else {"k": value}
    return value


# --- check_nesting / decode_json / decode_msgpack ----------------------------------


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
@pytest.mark.parametrize("levels", [0, 1, 5, MAX_NESTING])
def test_nesting_up_to_the_limit_decodes(fmt, levels):
    value = nested(levels, leaf="x")
    if fmt == "json":
        assert decode_json(json.dumps(value).encode()) == value
    else:
        assert decode_msgpack(msgspec.msgpack.encode(value)) == value


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
def test_one_level_past_the_limit_is_refused(fmt):
    value = nested(MAX_NESTING + 1)
    data = json.dumps(value).encode() if fmt == "json" else msgspec.msgpack.encode(value)
    with pytest.raises(NestingTooDeep) as info:
        check_nesting(data, MAX_NESTING, fmt=fmt)
    err = info.value
    assert isinstance(err, WireError) and isinstance(err, msgspec.DecodeError)
    assert isinstance(err, DECODE_ERRORS)
    assert err.code == "nesting_too_deep" and "64" in err.message and err.hint


@pytest.mark.parametrize(
    "data",
    [
        b"[" * BOMB_DEPTH,  # never closed
        b"[" * BOMB_DEPTH + b"]" * BOMB_DEPTH,
        b'{"a":' * BOMB_DEPTH,
        b'{"jsonrpc": "2.0", "params": ' + b"[" * BOMB_DEPTH,
        b"]" + b"[" * BOMB_DEPTH,  # an upper bound is fine for invalid JSON
        b'"\\\\"' + b"[" * BOMB_DEPTH,  # an escaped backslash ends no string early
    ],
)
def test_json_bombs_are_refused_before_decoding(data):
    with pytest.raises(NestingTooDeep):
        decode_json(data)


@pytest.mark.parametrize(
    "data",
    [
        b'["' + b"[" * BOMB_DEPTH + b'"]',  # brackets inside a string are text
        b'["\\"' + b"[{" * BOMB_DEPTH + b'"]',  # ...also after an escaped quote
        b'"\\\\\\"' + b"[" * BOMB_DEPTH + b'"',
        b"[" * 10 + b'"' + b"[" * BOMB_DEPTH,  # an unterminated string
    ],
)
def test_brackets_inside_strings_do_not_count(data):
    check_nesting(data, MAX_NESTING)  # no NestingTooDeep; decoding may fail otherwise


@pytest.mark.parametrize(
    "data",
    [
        b"\x91" * BOMB_DEPTH + b"\xc0",  # fixarray of one
        b"\x81\xa1k" * BOMB_DEPTH + b"\xc0",  # fixmap of one
        b"\xdc\x00\x01" * BOMB_DEPTH + b"\xc0",  # array16
        b"\xdf\x00\x00\x00\x01\xc0" * BOMB_DEPTH + b"\xc0",  # map32, nil keys
        b"\x92\xc4\x03abc" * BOMB_DEPTH + b"\xc0",  # bin payloads are skipped, not walked
    ],
)
def test_msgpack_bombs_are_refused_before_decoding(data):
    with pytest.raises(NestingTooDeep):
        decode_msgpack(data)


def test_msgpack_payload_bytes_that_look_like_containers_do_not_count():
    value = [b"\x91" * BOMB_DEPTH, "\u0091" * 100, [[1]], {"k": b"\xdc" * 1000}]
    assert decode_msgpack(msgspec.msgpack.encode(value)) == value


json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.binary(max_size=8).map(lambda b: b.decode("latin-1")),
    st.text(alphabet=st.sampled_from('[]{}"\\ab\u00e9\U0001f600\n'), max_size=8),
)
json_values = st.recursive(
    json_leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.text(alphabet='[]{}"\\k', max_size=3), children, max_size=3),
    ),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None)
@given(value=json_values, max_depth=st.integers(0, 6))
def test_check_nesting_agrees_with_the_real_depth(value, max_depth):
    for data, fmt in (
        (json.dumps(value).encode(), "json"),
        (msgspec.json.encode(value), "json"),
        (msgspec.msgpack.encode(value), "msgpack"),
    ):
        if depth(value) > max_depth:
            with pytest.raises(NestingTooDeep):
                check_nesting(data, max_depth, fmt=fmt)
        else:
            check_nesting(data, max_depth, fmt=fmt)


def test_a_gossip_sized_message_costs_microseconds():
    # Offer-shaped: strings, ints, random bytes (which hold container-like bytes).
    message = msgspec.msgpack.encode(
        {
            "type": "offer",
            "offer_id": "f" * 64,
            "identity": {"x25519": os.urandom(32), "signature": os.urandom(65)},
            "gpus": [{"name": "H100", "memory_mb": 81920}] * 4,
            "addrs": ["/ip4/10.0.0.1/tcp/4001"] * 4,
            "noise": os.urandom(600),
        }
    )
    assert 900 < len(message) < 1200
    rounds = 2000
    start = time.perf_counter()
    for _ in range(rounds):
        check_nesting(message, fmt="msgpack")
    per_message_s = (time.perf_counter() - start) / rounds
    assert per_message_s < 200e-6  # measured ~2 µs; generous for a loaded CI box


# --- typed decoders of peer input -------------------------------------------------


def _unknown_field_nested(levels: int, tag: str) -> bytes:
    """A tagged map with one unknown field nested ``levels`` deep: msgspec skips it."""
    return b"\x82\xa4type" + msgspec.msgpack.encode(tag) + b"\xa1z" + b"\x91" * levels + b"\xc0"


@pytest.mark.parametrize(
    ("decode", "tag", "error"),
    [
        (jobdata.decode_body, "payload_data", WireError),
        (blocks.decode_message, "want", blocks.FrameError),
        (decode_body, "offer", DECODE_ERRORS),
    ],
)
def test_typed_decoders_reject_an_unknown_field_nested_past_the_recursion_limit(decode, tag, error):
    """msgspec skips unknown fields recursively and raises RecursionError past the limit."""
    levels = sys.getrecursionlimit() + 10
    with pytest.raises(error):
        decode(_unknown_field_nested(levels, tag))


# --- bombs against a real server and client, with py_ecc's recursion limit --------------

_SERVER_SCRIPT = r"""
import json, sys
import eth_account  # noqa: F401  (py_ecc raises the recursion limit, as in maskd)
import trio
from maskd.rpc import RpcServer

assert sys.getrecursionlimit() >= 100_000
BOMBS = [
    b"[" * 40_000,
    b"[" * 40_000 + b"]" * 40_000,
    b'{"jsonrpc": "2.0", "id": 1, "method": "v1.echo", "params": {"x": '
    + b"[" * 40_000 + b"]" * 40_000 + b"}}",
]


async def main(path):
    async def echo(params):
        return params

    server = RpcServer(path, {"v1.echo": echo})
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        stream = await trio.open_unix_socket(path)
        for bomb in BOMBS:
            await stream.send_all(bomb + b"\n")
        await stream.send_all(b'{"jsonrpc":"2.0","id":2,"method":"v1.echo","params":{"ok":1}}\n')
        received = b""
        with trio.fail_after(30):
            while received.count(b"\n") < len(BOMBS) + 1:
                data = await stream.receive_some(65536)
                if not data:
                    break
                received += data
        sys.stdout.write(received.decode())
        nursery.cancel_scope.cancel()


trio.run(main, sys.argv[1])
"""

_CLIENT_SCRIPT = r"""
import json, socket, sys, threading
import eth_account  # noqa: F401
from pathlib import Path
from maskd.client import Client
from protocol.errors import MaskError

assert sys.getrecursionlimit() >= 100_000
ours, daemon = socket.socketpair()
deep = b"[" * 40_000 + b"]" * 40_000
lines = (
    b'{"jsonrpc": "2.0", "id": 1, "result": ' + deep + b"}\n"
    + b'{"jsonrpc": "2.0", "id": 2, "result": "fine"}\n'
)
threading.Thread(target=daemon.sendall, args=(lines,), daemon=True).start()
client = Client(ours, Path("fake.sock"))
try:
    client.call("v1.deep", timeout=20)
except MaskError as exc:
    print(json.dumps({"code": exc.code, "message": exc.message}))
print(json.dumps({"next": client.call("v1.fine", timeout=20)}))
"""


def _run_python(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.fspath(REPO)}
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_nesting_bombs_on_the_socket_get_errors_and_the_daemon_lives(tmp_path):
    done = _run_python(_SERVER_SCRIPT, os.fspath(tmp_path / "s.sock"))
    assert done.returncode == 0, f"server process died ({done.returncode}): {done.stderr[-2000:]}"
    responses = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(responses) == 4
    for bomb in responses[:3]:
        assert bomb["error"]["code"] == -32700
        assert bomb["error"]["data"]["code"] == "request_too_deep"
        assert "nested deeper than 64" in bomb["error"]["message"]
        assert bomb["id"] is None
    assert responses[3] == {"jsonrpc": "2.0", "id": 2, "result": {"ok": 1}}


def test_a_nesting_bomb_from_the_daemon_is_an_error_not_a_crash():
    done = _run_python(_CLIENT_SCRIPT)
    assert done.returncode == 0, f"client process died ({done.returncode}): {done.stderr[-2000:]}"
    first, second = (json.loads(line) for line in done.stdout.splitlines())
    assert first["code"] == "response_too_deep"
    assert "nested deeper than" in first["message"]
    assert second == {"next": "fine"}


# --- idle connections (in-memory streams, autojump clock) ----------------------------


def idle_server(**kwargs) -> RpcServer:
    async def echo(params):
        return params

    async def slow(params):
        await trio.sleep(params["seconds"])
        return "done"

    async def watch(params, send):
        for i in range(params.get("count", 0)):
            await trio.sleep(params.get("every", 0))
            await send({"type": "tick", "i": i})

    return RpcServer(
        "/unused/maskd.sock", {"v1.echo": echo, "v1.slow": slow}, {"v1.watch": watch}, **kwargs
    )


class Peer:
    """The client's end of an in-memory connection."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.framer = LineFramer(1 << 20)
        self.lines: deque[bytes] = deque()

    async def send(self, message: Any) -> None:
        data = message if isinstance(message, bytes) else json.dumps(message).encode() + b"\n"
        await self.stream.send_all(data)

    async def recv(self) -> dict | None:
        while not self.lines:
            data = await self.stream.receive_some(65536)
            if not data:
                return None
            self.lines.extend(self.framer.feed(data))
        return json.loads(self.lines.popleft())

    async def call(self, method: str, params: dict, req_id: int = 1) -> dict:
        await self.send({"jsonrpc": "2.0", "id": req_id, "method": method, "params": params})
        response = await self.recv()
        assert response is not None
        return response


async def connect(nursery, server: RpcServer, pair=trio.testing.memory_stream_pair) -> Peer:
    client_end, server_end = pair()
    nursery.start_soon(server.handle_stream, server_end)
    return Peer(client_end)


def assert_idle_notice(message: dict | None, timeout: float) -> None:
    assert message is not None
    assert message["id"] is None
    assert message["error"]["data"]["code"] == "idle_timeout"
    assert f"no request for {timeout:g} s" in message["error"]["message"]


async def test_an_idle_connection_is_told_and_closed_after_the_timeout(nursery, autojump_clock):
    server = idle_server(idle_timeout=60)
    start = trio.current_time()
    peer = await connect(nursery, server)
    assert_idle_notice(await peer.recv(), 60)
    assert trio.current_time() - start == pytest.approx(60)
    assert await peer.recv() is None
    assert server.active_connections == 0


async def test_each_request_restarts_the_idle_clock(nursery, autojump_clock):
    server = idle_server(idle_timeout=60)
    start = trio.current_time()
    peer = await connect(nursery, server)
    for at in (50, 100, 150):
        await trio.sleep_until(start + at)
        assert (await peer.call("v1.echo", {"at": at}))["result"] == {"at": at}
    assert_idle_notice(await peer.recv(), 60)
    assert trio.current_time() - start == pytest.approx(210)


async def test_bytes_without_a_whole_request_do_not_count_as_activity(nursery, autojump_clock):
    server = idle_server(idle_timeout=60)
    start = trio.current_time()
    peer = await connect(nursery, server)

    async def drip():
        for byte in b'{"jsonrpc": "2.0"':
            await peer.send(bytes([byte]))
            await trio.sleep(10)

    nursery.start_soon(drip)
    assert_idle_notice(await peer.recv(), 60)
    assert trio.current_time() - start == pytest.approx(60)


async def test_a_running_stream_or_call_is_not_idle(nursery, autojump_clock):
    server = idle_server(idle_timeout=60)
    start = trio.current_time()
    peer = await connect(nursery, server)
    slow = await peer.call("v1.slow", {"seconds": 600})
    assert slow["result"] == "done"
    assert trio.current_time() - start == pytest.approx(600)
    await peer.send(
        {"jsonrpc": "2.0", "id": 2, "method": "v1.watch", "params": {"count": 3, "every": 500}}
    )
    for i in range(3):
        assert (await peer.recv())["params"] == {"type": "tick", "i": i}
    assert (await peer.recv()) == {"jsonrpc": "2.0", "id": 2, "result": None}
    assert trio.current_time() - start == pytest.approx(2100)
    # Idle from the moment the stream ended.
    assert_idle_notice(await peer.recv(), 60)
    assert trio.current_time() - start == pytest.approx(2160)


async def test_a_client_that_stops_reading_is_closed(nursery, autojump_clock):
    server = idle_server(idle_timeout=60)
    start = trio.current_time()
    # Lockstep: a write completes only when the other side reads it.
    peer = await connect(nursery, server, trio.testing.lockstep_stream_pair)
    await peer.send({"jsonrpc": "2.0", "id": 1, "method": "v1.watch", "params": {"count": 10_000}})
    with trio.fail_after(3600):
        while server.active_connections:
            await trio.sleep(1)
    assert trio.current_time() - start == pytest.approx(60, abs=1)


def test_idle_timeout_must_be_positive():
    with pytest.raises(ValueError):
        RpcServer("/unused/maskd.sock", idle_timeout=0)


# --- a busy daemon, and an idle connection the daemon closed -------------------------------


def wait_for(condition, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


@pytest.fixture
def busy_daemon(tmp_path):
    """A daemon that serves one connection, and holds it."""

    async def echo(params):
        return params

    async def watch(params, send):
        await trio.sleep_forever()

    server = RpcServer(
        tmp_path / "maskd.sock", {"v1.echo": echo}, {"v1.watch": watch}, max_connections=1
    )
    with serve_in_thread(server) as path, Client.connect(path) as holder:
        assert holder.call("v1.echo", {"held": True}) == {"held": True}
        yield path


def assert_busy(exc: DaemonUnavailable, path) -> None:
    assert exc.code == "daemon_busy"
    assert exc.message == f"maskd at {path} is busy: too many connections (limit 1)"
    assert "close other mask clients" in exc.hint


def test_a_busy_daemon_is_reported_as_busy_not_as_stopped(busy_daemon):
    with Client.connect(busy_daemon) as client, pytest.raises(DaemonUnavailable) as info:
        client.call("v1.echo", {})
    assert_busy(info.value, busy_daemon)


def test_a_busy_daemon_refuses_a_watch_as_busy(busy_daemon):
    with Client.connect(busy_daemon) as client, pytest.raises(DaemonUnavailable) as info:
        next(client.watch())
    assert_busy(info.value, busy_daemon)


async def test_a_busy_daemon_is_busy_for_the_trio_client_too(busy_daemon):
    client = await TrioClient.connect(busy_daemon)
    with pytest.raises(DaemonUnavailable) as info:
        await client.call("v1.echo", {})
    await client.close()
    assert_busy(info.value, busy_daemon)


def test_the_cli_says_busy_with_a_hint(busy_daemon):
    from click.testing import CliRunner

    from maskd.cli import main

    result = CliRunner().invoke(main, ["--socket", os.fspath(busy_daemon), "status"])
    assert result.exit_code == 1
    assert "is busy: too many connections" in result.stderr
    assert "hint: close other mask clients" in result.stderr
    assert "stopped" not in result.stderr


@pytest.fixture
def short_idle_daemon(tmp_path):
    async def echo(params):
        return params

    server = RpcServer(tmp_path / "maskd.sock", {"v1.echo": echo}, idle_timeout=0.2)
    with serve_in_thread(server) as path:
        yield server, path


def test_the_client_reconnects_after_the_daemon_closed_it_for_idling(short_idle_daemon):
    server, path = short_idle_daemon
    with Client.connect(path) as client:
        assert client.call("v1.echo", {"n": 1}) == {"n": 1}
        wait_for(lambda: server.active_connections == 0)
        assert client.call("v1.echo", {"n": 2}) == {"n": 2}


async def test_the_trio_client_reconnects_after_the_daemon_closed_it_for_idling(
    short_idle_daemon,
):
    server, path = short_idle_daemon
    async with await TrioClient.connect(path) as client:
        assert await client.call("v1.echo", {"n": 1}) == {"n": 1}
        with trio.fail_after(WAIT_S):
            while server.active_connections:
                await trio.sleep(0.005)
        assert await client.call("v1.echo", {"n": 2}) == {"n": 2}


def test_a_request_that_crossed_the_idle_notice_is_sent_again(short_idle_daemon):
    """The daemon reads nothing after its notice, so resending cannot run a call twice."""

    _, path = short_idle_daemon
    ours, daemon = socket.socketpair()
    notice = {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": -32000, "message": "idle", "data": {"code": "idle_timeout"}},
    }
    daemon.sendall(json.dumps(notice).encode() + b"\n")
    with Client(ours, Path(path)) as client:
        assert client.call("v1.echo", {"n": 3}) == {"n": 3}
    daemon.close()


def test_other_errors_without_an_id_are_raised_not_waited_out(short_idle_daemon):

    _, path = short_idle_daemon
    ours, daemon = socket.socketpair()
    error = {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "Parse error: x"}}
    daemon.sendall(json.dumps(error).encode() + b"\n")
    with Client(ours, Path(path)) as client, pytest.raises(RpcError) as info:
        client.call("v1.echo", {}, timeout=WAIT_S)
    assert info.value.rpc_code == -32700
    daemon.close()


def test_a_busy_daemon_is_busy_for_mask_top_too(busy_daemon):
    """``mask top``'s asyncio client said "not reachable" for a busy daemon."""
    import asyncio

    from maskd.tui.client import AsyncioRpcClient

    async def call_and_watch() -> list[DaemonUnavailable]:
        seen = []
        client = await AsyncioRpcClient.connect(busy_daemon)
        try:
            with pytest.raises(DaemonUnavailable) as info:
                await client.call("v1.node.info", timeout=5)
            seen.append(info.value)
            with pytest.raises(DaemonUnavailable) as info:
                async for _ in client.watch():
                    pass
            seen.append(info.value)
        finally:
            await client.close()
        return seen

    for exc in asyncio.run(call_and_watch()):
        assert_busy(exc, busy_daemon)

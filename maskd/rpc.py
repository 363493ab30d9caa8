"""The daemon's JSON-RPC 2.0 server over a Unix socket (trio).

Wire format: one JSON object per line, both directions. Method names carry a
major version (``v1.peers.list``). A *unary* method answers one response; a
*stream* method (``v1.watch``) sends notifications on the same connection and
ends with one response carrying the request's id (``result: null`` when the
handler returned, an ``error`` when it raised). A stream occupies its
connection until it ends; clients open another connection for calls.

Why the shape below: the daemon must survive anything a local client sends
(garbage, huge lines, nesting bombs, vanishing mid-stream, connecting and
never speaking), so every connection is bounded (line size, nesting depth,
outbound queue, idle time, time stuck writing, number of connections) and
every failure becomes a JSON-RPC error, never an exception that escapes into
the node's nursery. Each connection has exactly one writer task, so lines
never interleave.

Connection-level errors carry ``"id": null`` and come unasked: ``rpc_busy``
(too many connections; sent on accept, then the connection is closed) and
``idle_timeout`` (no request for ``idle_timeout`` seconds while no stream
runs; the connection is then closed and no request after it was read, so a
client may resend). A connection whose client reads nothing for
``idle_timeout`` seconds while the daemon has a line to write is closed too.

Error codes: -32700 parse error (also "nested too deep"), -32600 invalid request (also "request too
large", which closes the connection), -32601 method not found, -32602 invalid
params, -32603 internal error (logged), -32000 a ``MaskError`` raised by a
handler. Errors carry ``data: {"code": <snake_case>, "hint": <str|null>}``.
Batches (JSON arrays) are not supported and answer -32600.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.metadata
import logging
import math
import os
import socket
import stat
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import msgspec
import trio

from maskd.rpc_wire import (
    _NO_ID,
    DEFAULT_MAX_LINE_BYTES,
    DEFAULT_MAX_NESTING,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    SERVER_ERROR,
    LineFramer,
    LineTooLong,
    _error,
    _parse_request,
    _Reject,
    _result,
    encode_message,
    error_from_response,
)
from protocol.errors import MaskError, RpcError

__all__ = [
    "PARSE_ERROR",
    "INVALID_REQUEST",
    "METHOD_NOT_FOUND",
    "INVALID_PARAMS",
    "INTERNAL_ERROR",
    "SERVER_ERROR",
    "DEFAULT_MAX_LINE_BYTES",
    "DEFAULT_IDLE_TIMEOUT_S",
    "DEFAULT_MAX_NESTING",
    "LineFramer",
    "LineTooLong",
    "RpcServer",
    "UnaryHandler",
    "StreamHandler",
    "SendNotification",
    "encode_message",
    "error_from_response",
    "maskd_version",
    "serve_in_thread",
]

log = logging.getLogger("maskd.rpc")


DEFAULT_MAX_CONNECTIONS = 64
# A connection with no request for this long (and no stream running) is
# closed, so idle clients cannot hold every slot.
DEFAULT_IDLE_TIMEOUT_S = 60.0
# Outbound messages queued per connection before a stream handler's send()
# blocks: a slow reader slows its own stream, never the daemon's memory.
OUTBOX_CAPACITY = 64
# The longest a refusal ("too many connections") may take to write.
REFUSAL_WRITE_TIMEOUT_S = 1.0
# sockaddr_un.sun_path is 108 bytes on Linux, including the NUL.
MAX_UNIX_PATH_BYTES = 107

HELLO_METHOD = "v1.rpc.hello"
DEFAULT_EVENT_METHOD = "v1.event"

SendNotification = Callable[[dict[str, Any]], Awaitable[None]]
UnaryHandler = Callable[[dict[str, Any]], Awaitable[Any]]
StreamHandler = Callable[[dict[str, Any], SendNotification], Awaitable[None]]


def maskd_version() -> str:
    """The installed maskd version; "0.1.0" when running from a source tree."""
    try:
        return importlib.metadata.version("maskd")
    except importlib.metadata.PackageNotFoundError:
        return "0.1.0"


# --- framing (sans-IO) -------------------------------------------------------


# --- the server ----------------------------------------------------------------


class _Connection:
    """Per-connection state shared by its reader, dispatcher and writer."""

    def __init__(self, stream: trio.abc.Stream, idle_timeout: float) -> None:
        self.stream = stream
        self.outbox_send, self.outbox_receive = trio.open_memory_channel[bytes](OUTBOX_CAPACITY)
        self.stream_scope: trio.CancelScope | None = None
        self.idle_timeout = idle_timeout
        # The reader's wait for the next request; its deadline is the idle deadline.
        self.waiting: trio.CancelScope | None = None
        self.idle_deadline = math.inf

    def restart_idle_clock(self) -> None:
        """After a request, and when a stream ends: idle from now, unless a stream runs."""
        if self.stream_scope is None:
            self.idle_deadline = trio.current_time() + self.idle_timeout
        else:
            self.idle_deadline = math.inf
        if self.waiting is not None:
            self.waiting.deadline = self.idle_deadline


class _ClientGone(Exception):
    """The client closed its connection while a stream handler was sending."""


class RpcServer:
    """JSON-RPC 2.0 over a Unix socket; see the module docstring for the rules.

    ``handlers`` maps method names to ``async def(params) -> result``;
    ``streams`` maps method names to ``async def(params, send) -> None`` where
    ``send(notification)`` queues ``{"method": ..., "params": ...}`` (a dict
    without ``"method"`` is sent as the params of a ``v1.event``). ``send``
    blocks while the client is slow to read and raises when it is gone, which
    ends the handler by cancellation.
    """

    def __init__(
        self,
        socket_path: str | os.PathLike[str],
        handlers: Mapping[str, UnaryHandler] | None = None,
        streams: Mapping[str, StreamHandler] | None = None,
        *,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT_S,
        max_nesting: int = DEFAULT_MAX_NESTING,
        version: str | None = None,
    ) -> None:
        if idle_timeout <= 0:
            raise ValueError(f"idle_timeout must be positive, not {idle_timeout}")
        self.socket_path = Path(socket_path)
        self.max_line_bytes = max_line_bytes
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.max_nesting = max_nesting
        self.version = version or maskd_version()
        self._handlers: dict[str, UnaryHandler] = dict(handlers or {})
        self._streams: dict[str, StreamHandler] = dict(streams or {})
        overlap = self._handlers.keys() & self._streams.keys()
        if overlap:
            raise ValueError(f"methods registered as both unary and stream: {sorted(overlap)}")
        self._handlers[HELLO_METHOD] = self._hello
        self._active_connections = 0

    @property
    def methods(self) -> list[str]:
        return sorted(self._handlers.keys() | self._streams.keys())

    @property
    def active_connections(self) -> int:
        return self._active_connections

    async def _hello(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"version": self.version, "methods": self.methods}

    # -- lifecycle --

    async def serve(self, *, task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind, signal readiness with the socket path, serve until cancelled.

        The socket file is removed on the way out (only if it is still ours).
        """
        await self._clear_stale_socket()
        listener, inode = self._bind()
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, self.handle_stream, [listener])
                log.info("rpc listening on %s", self.socket_path)
                task_status.started(self.socket_path)
        finally:
            listener.socket.close()
            with contextlib.suppress(OSError):
                if os.stat(self.socket_path).st_ino == inode:
                    os.unlink(self.socket_path)

    async def _clear_stale_socket(self) -> None:
        path = self.socket_path
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise MaskError(
                f"{path} exists and is not a socket",
                code="socket_path_invalid",
                hint="remove it or point --socket/--data-dir elsewhere",
            )
        try:
            probe = await trio.open_unix_socket(os.fspath(path))
        except ConnectionRefusedError:
            log.info("removing stale socket %s left by a previous maskd", path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            raise MaskError(
                f"cannot check the existing socket {path}: {exc.strerror}",
                code="socket_path_invalid",
                hint="is another user's maskd using it? point --socket/--data-dir elsewhere",
            ) from exc
        await probe.aclose()
        raise MaskError(
            f"another maskd is already serving on {path}",
            code="daemon_running",
            hint="stop it first, or start this one with another --data-dir",
        )

    def _bind(self) -> tuple[trio.SocketListener, int]:
        path = os.fspath(self.socket_path)
        if len(os.fsencode(path)) > MAX_UNIX_PATH_BYTES:
            raise MaskError(
                f"socket path is too long for a Unix socket ({len(path)} bytes): {path}",
                code="socket_path_invalid",
                hint="use a shorter --data-dir or set --socket to a shorter path",
            )
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # bind() creates the file with 0777 & ~umask: no window where
            # another user could connect. umask is process-wide, so hold it
            # only around this one synchronous call.
            old_umask = os.umask(0o177)
            try:
                sock.bind(path)
            finally:
                os.umask(old_umask)
            os.chmod(path, 0o600)
            sock.listen(min(self.max_connections, socket.SOMAXCONN))
            sock.setblocking(False)
            inode = os.stat(path).st_ino
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise MaskError(
                    f"another maskd is already serving on {path}",
                    code="daemon_running",
                    hint="stop it first, or start this one with another --data-dir",
                ) from exc
            raise MaskError(
                f"cannot listen on {path}: {exc.strerror}",
                code="socket_bind_failed",
                hint="check that the data dir is writable",
            ) from exc
        return trio.SocketListener(trio.socket.from_stdlib_socket(sock)), inode

    # -- connections --

    async def handle_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one connected client until it leaves or is closed; then close it.

        ``serve()`` calls this for each connection; tests hand it one end of a
        ``trio.testing.memory_stream_pair()``.
        """
        if self._active_connections >= self.max_connections:
            await self._refuse(stream)
            return
        self._active_connections += 1
        try:
            conn = _Connection(stream, self.idle_timeout)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_loop, conn, nursery.cancel_scope)
                with conn.outbox_send:
                    await self._read_loop(conn, nursery)
        except Exception:
            # A bug here must cost one connection, never the daemon.
            log.exception("rpc connection failed")
        finally:
            self._active_connections -= 1
            with trio.CancelScope(shield=True), contextlib.suppress(trio.BrokenResourceError):
                await stream.aclose()

    async def _refuse(self, stream: trio.abc.Stream) -> None:
        response = _error(
            None,
            SERVER_ERROR,
            f"too many connections (limit {self.max_connections})",
            code="rpc_busy",
            hint="close other mask clients and retry",
        )
        with trio.move_on_after(REFUSAL_WRITE_TIMEOUT_S):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(encode_message(response))
                # let the client's first request land before closing (bounded, like
                # the write): a client whose write met a closed socket would lose
                # the refusal with it (asyncio drops what it had not read yet)
                await stream.receive_some(4096)
        with contextlib.suppress(trio.BrokenResourceError):
            await stream.aclose()

    async def _write_loop(self, conn: _Connection, connection_scope: trio.CancelScope) -> None:
        """The only task that writes to this connection.

        A client that reads nothing for ``idle_timeout`` while we have a line
        for it is gone as far as we are concerned: otherwise it would hold its
        slot (and a handler) forever.
        """
        async with conn.outbox_receive:
            async for line in conn.outbox_receive:
                with trio.move_on_after(self.idle_timeout) as stuck:
                    try:
                        await conn.stream.send_all(line)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        log.debug("rpc client went away while we were writing")
                        connection_scope.cancel()
                        return
                if stuck.cancelled_caught:
                    log.info("rpc client read nothing for %g s; closing it", self.idle_timeout)
                    connection_scope.cancel()
                    return

    async def _read_loop(self, conn: _Connection, nursery: trio.Nursery) -> None:
        """Read lines and handle them in order; streams run beside the reader."""
        framer = LineFramer(self.max_line_bytes)
        conn.restart_idle_clock()
        while True:
            # Only whole requests restart the idle clock: a client dripping
            # one byte a minute is idle too.
            with trio.CancelScope(deadline=conn.idle_deadline) as waiting:
                conn.waiting = waiting
                try:
                    data = await conn.stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
            conn.waiting = None
            if waiting.cancelled_caught:
                await conn.outbox_send.send(
                    encode_message(
                        _error(
                            None,
                            SERVER_ERROR,
                            f"closing an idle connection (no request for {self.idle_timeout:g} s)",
                            code="idle_timeout",
                            hint="connect again; maskd.client does so by itself",
                        )
                    )
                )
                break
            if not data:
                tail = framer.finish()
                if tail is not None and conn.stream_scope is None:
                    await self._handle_line(conn, tail, nursery)
                break
            try:
                lines = framer.feed(data)
            except LineTooLong:
                await conn.outbox_send.send(
                    encode_message(
                        _error(
                            None,
                            INVALID_REQUEST,
                            f"request too large (limit {self.max_line_bytes} bytes)",
                            code="request_too_large",
                            hint="send smaller requests; large data goes through `mask put`",
                        )
                    )
                )
                break
            for line in lines:
                if line.strip():
                    await self._handle_line(conn, line, nursery)
                    conn.restart_idle_clock()
        # The client is gone (or must go): a stream has nobody left to feed.
        if conn.stream_scope is not None:
            conn.stream_scope.cancel()

    async def _handle_line(self, conn: _Connection, line: bytes, nursery: trio.Nursery) -> None:
        try:
            req_id, method, params = _parse_request(line, self.max_nesting)
        except _Reject as reject:
            if reject.response is not None:
                await conn.outbox_send.send(encode_message(reject.response))
            return
        reply_id = None if req_id is _NO_ID else req_id
        if conn.stream_scope is not None:
            response: dict[str, Any] | None = _error(
                reply_id,
                INVALID_REQUEST,
                "this connection is busy with a stream; open another connection",
                code="connection_busy",
            )
        elif method in self._streams:
            if req_id is _NO_ID:
                return  # a stream needs an id to end with; nobody would listen
            conn.stream_scope = trio.CancelScope()
            nursery.start_soon(self._run_stream, conn, req_id, method, params)
            return
        elif method in self._handlers:
            response = await self._call_unary(reply_id, method, params)
        else:
            response = _error(
                reply_id,
                METHOD_NOT_FOUND,
                f"Method not found: {method}",
                code="method_not_found",
                hint=f"`{HELLO_METHOD}` lists this daemon's methods; is mask newer than maskd?",
            )
        if req_id is not _NO_ID and response is not None:
            await conn.outbox_send.send(self._encode_response(reply_id, method, response))

    def _encode_response(self, req_id: Any, method: str, response: dict[str, Any]) -> bytes:
        try:
            return encode_message(response)
        except (TypeError, msgspec.EncodeError, ValueError, OverflowError):
            log.exception("rpc %s returned a result that is not JSON", method)
            return encode_message(
                _error(req_id, INTERNAL_ERROR, "Internal error", code="internal_error")
            )

    async def _call_unary(self, req_id: Any, method: str, params: dict[str, Any]) -> dict | None:
        try:
            result = await self._handlers[method](params)
        except Exception as exc:  # every handler failure becomes an answer
            return self._error_for(req_id, method, exc)
        return _result(req_id, result)

    def _error_for(self, req_id: Any, method: str, exc: Exception) -> dict[str, Any]:
        if isinstance(exc, RpcError):
            return _error(req_id, exc.rpc_code, exc.message, code=exc.code, hint=exc.hint)
        if isinstance(exc, MaskError):
            return _error(req_id, SERVER_ERROR, exc.message, code=exc.code, hint=exc.hint)
        log.error("rpc %s failed", method, exc_info=exc)
        return _error(
            req_id,
            INTERNAL_ERROR,
            f"Internal error in {method}",
            code="internal_error",
            hint="see the maskd log for the traceback",
        )

    async def _run_stream(
        self, conn: _Connection, req_id: Any, method: str, params: dict[str, Any]
    ) -> None:
        scope = conn.stream_scope
        assert scope is not None

        async def send(notification: dict[str, Any]) -> None:
            if "method" not in notification:
                notification = {"method": DEFAULT_EVENT_METHOD, "params": notification}
            line = encode_message({"jsonrpc": "2.0", **notification})
            try:
                await conn.outbox_send.send(line)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                raise _ClientGone from None

        response: dict[str, Any] | None = None
        with scope:
            try:
                await self._streams[method](params, send)
                response = _result(req_id, None)
            except _ClientGone:
                log.debug("rpc %s: client went away", method)
            except Exception as exc:
                response = self._error_for(req_id, method, exc)
        conn.stream_scope = None
        conn.restart_idle_clock()
        if scope.cancelled_caught:
            log.debug("rpc %s: stream ended because the client went away", method)
            return
        if response is not None:
            with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
                await conn.outbox_send.send(encode_message(response))


# --- running a server from synchronous code ------------------------------------


@contextlib.contextmanager
def serve_in_thread(server: RpcServer, *, start_timeout: float = 10.0) -> Iterator[Path]:
    """Run ``server`` on its own trio loop in a thread, for sync callers.

    Used by tests of the CLI and SDK (which are synchronous) and by tools that
    need a fake daemon. Yields the socket path once it accepts connections;
    stops the server and joins the thread on exit.
    """
    ready = threading.Event()
    state: dict[str, Any] = {}

    class _Started:
        """Stands in for a nursery's task_status, so errors arrive unwrapped."""

        def started(self, value: Any = None) -> None:
            ready.set()

    async def main() -> None:
        with trio.CancelScope() as scope:
            state["scope"] = scope
            state["token"] = trio.lowlevel.current_trio_token()
            await server.serve(task_status=_Started())  # type: ignore[arg-type]

    def run() -> None:
        try:
            trio.run(main)
        except BaseException as exc:  # reported to the caller below
            state["error"] = exc
        finally:
            ready.set()

    thread = threading.Thread(target=run, name=f"rpc-{server.socket_path.name}", daemon=True)
    thread.start()
    if not ready.wait(start_timeout):
        raise TimeoutError(f"rpc server on {server.socket_path} did not start")
    if "error" in state:
        thread.join()
        raise state["error"]
    try:
        yield server.socket_path
    finally:
        with contextlib.suppress(trio.RunFinishedError):
            trio.from_thread.run_sync(state["scope"].cancel, trio_token=state["token"])
        thread.join(start_timeout)

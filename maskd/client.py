"""The Python SDK for a local maskd: the same calls the CLI makes.

Two clients with one API: ``Client`` (synchronous, a plain ``socket``; for the
CLI, scripts and notebooks) and ``TrioClient`` (for trio programs). Both map
failures at this boundary onto the error tree, so callers handle exactly two
things: ``DaemonUnavailable`` (nothing answers, or it went away, is stuck, or
is busy: ``code`` says which) and ``RpcError`` (the daemon answered with an
error; ``code`` and ``hint`` come from the error's ``data``).

The daemon closes a connection that has been idle for a while (60 s by
default) and says so with an ``idle_timeout`` error; it reads no request
after that, so a call that meets it reconnects and sends its request again,
once. A daemon at its connection limit answers ``rpc_busy`` on accept:
that is ``DaemonUnavailable`` with code ``daemon_busy``, not "stopped".
Answers nested deeper than ``MAX_RESPONSE_NESTING`` are refused before
decoding (``RpcError``, code ``response_too_deep``).

A ``watch()`` uses a connection of its own, because a stream occupies its
connection until it ends; the client stays usable for calls meanwhile.
Neither client is safe to share between threads; ``TrioClient`` serialises
concurrent calls from tasks with a lock.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import trio

from maskd.paths import find_socket
from maskd.rpc import (
    INTERNAL_ERROR,
    LineFramer,
    LineTooLong,
    encode_message,
    error_from_response,
)
from protocol.codec import DECODE_ERRORS, NestingTooDeep, decode_json
from protocol.errors import DaemonUnavailable, RpcError

__all__ = ["Client", "TrioClient", "DEFAULT_TIMEOUT", "daemon_unavailable"]

DEFAULT_TIMEOUT = 10.0
# Answers can be big (a mesh's offer book); requests are small.
MAX_RESPONSE_BYTES = 64 << 20
# Answers nest a few levels (a job, its usage, its error); 128 leaves room.
MAX_RESPONSE_NESTING = 128
_RECV_BYTES = 65536


def daemon_unavailable(path: Path, reason: str | None = None) -> DaemonUnavailable:
    """The error every client raises when nothing answers on ``path``."""
    message = f"no maskd daemon at {path}"
    if reason:
        message += f" ({reason})"
    return DaemonUnavailable(
        message,
        hint="start one with `maskd --data-dir …` or point --socket/MASK_SOCKET at its socket",
    )


def _connect_error(path: Path, exc: OSError) -> DaemonUnavailable:
    if isinstance(exc, FileNotFoundError | ConnectionRefusedError):
        return daemon_unavailable(path)
    if isinstance(exc, PermissionError):
        return DaemonUnavailable(
            f"permission denied on {path}",
            hint="the socket is private (0600): run mask as the user that runs maskd",
            code="daemon_forbidden",
        )
    return daemon_unavailable(path, exc.strerror or str(exc))


def _gone(path: Path) -> DaemonUnavailable:
    return DaemonUnavailable(
        f"maskd at {path} closed the connection",
        hint="the daemon stopped or restarted; check its log and retry",
        code="daemon_disconnected",
    )


def daemon_busy(path: Path, message: str) -> DaemonUnavailable:
    return DaemonUnavailable(
        f"maskd at {path} is busy: {message}",
        hint="close other mask clients (mask top, mask job --follow, scripts) or retry shortly",
        code="daemon_busy",
    )


def _too_deep(path: Path) -> RpcError:
    return RpcError(
        f"maskd at {path} sent an answer nested deeper than {MAX_RESPONSE_NESTING} levels",
        rpc_code=INTERNAL_ERROR,
        code="response_too_deep",
        hint="the daemon relayed something malformed; check its log",
    )


def _timed_out(path: Path, method: str, timeout: float) -> DaemonUnavailable:
    return DaemonUnavailable(
        f"maskd at {path} did not answer {method} within {timeout:g} s",
        hint="the daemon may be overloaded or stuck; check its log",
        code="daemon_timeout",
    )


class _Calls:
    """Sans-IO bookkeeping shared by both clients: ids, requests, answers."""

    def __init__(self) -> None:
        self._next_id = 1

    def request(self, method: str, params: dict[str, Any] | None) -> tuple[int, bytes]:
        req_id = self._next_id
        self._next_id += 1
        message = {"jsonrpc": "2.0", "id": req_id, "method": method, "params": params or {}}
        return req_id, encode_message(message)


class _Retry(Exception):
    """The daemon closed this connection for idling before it read our request."""


_TOO_DEEP: dict[str, Any] = {}  # _decode's answer for a line nested too deep


def _decode(line: bytes) -> dict[str, Any] | None:
    """One message from the daemon; None for anything that is not an object.

    A line nested too deep is ``_TOO_DEEP``: a call cannot tell whether it
    was its answer, so it fails; a watch skips it.
    """
    try:
        message = decode_json(line, max_depth=MAX_RESPONSE_NESTING)
    except NestingTooDeep:
        return _TOO_DEEP
    except DECODE_ERRORS:
        return None
    return message if isinstance(message, dict) else None


def is_connection_error(message: dict[str, Any]) -> bool:
    """An unasked error with ``"id": null``: about the connection, or about a
    request the daemon could not read (so, on a call's connection, ours)."""
    return "id" in message and message["id"] is None and message.get("error") is not None


def _raise_connection_error(path: Path, message: dict[str, Any]) -> None:
    """Raise what an ``id: null`` error means: _Retry, busy, or the RpcError itself."""
    error = error_from_response(message["error"])
    if error.code == "idle_timeout":
        raise _Retry
    if error.code == "rpc_busy":
        raise daemon_busy(path, error.message)
    raise error


def _reply(path: Path, message: dict[str, Any], req_id: int) -> tuple[bool, Any]:
    """What ``message`` means to a call waiting for ``req_id``: (is it the answer, result).

    Raises the answer's RpcError, a connection-level error, or _Retry.
    """
    if message is _TOO_DEEP:
        raise _too_deep(path)
    if message.get("id") == req_id:
        return True, _answer(message)
    if is_connection_error(message):
        _raise_connection_error(path, message)
    return False, None  # a late answer to a call that timed out earlier


def _answer(message: dict[str, Any]) -> Any:
    """The result of a response, or raise the RpcError it carries."""
    if "error" in message and message["error"] is not None:
        raise error_from_response(message["error"])
    return message.get("result")


def _is_notification(message: dict[str, Any]) -> bool:
    return "id" not in message and isinstance(message.get("method"), str)


# --- synchronous ---------------------------------------------------------------


class Client:
    """Synchronous client. ``with Client.connect() as c: c.node_info()``."""

    def __init__(self, sock: socket.socket, socket_path: Path) -> None:
        self.socket_path = socket_path
        self._sock = sock
        self._framer = LineFramer(MAX_RESPONSE_BYTES)
        self._lines: deque[bytes] = deque()
        self._calls = _Calls()

    @classmethod
    def connect(
        cls, socket_path: str | os.PathLike[str] | None = None, *, timeout: float = DEFAULT_TIMEOUT
    ) -> Client:
        path = find_socket(socket_path)
        return cls(_open_socket(path, timeout), path)

    def call(
        self, method: str, params: dict[str, Any] | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> Any:
        """Call ``method`` and return its result; raises RpcError/DaemonUnavailable."""
        deadline = time.monotonic() + timeout
        try:
            try:
                return self._exchange(method, params, deadline)
            except _Retry:
                self._reconnect(timeout)
            try:
                return self._exchange(method, params, deadline)
            except _Retry:
                raise _gone(self.socket_path) from None
        except TimeoutError:
            raise _timed_out(self.socket_path, method, timeout) from None
        except OSError as exc:
            raise _gone(self.socket_path) from exc

    def _exchange(self, method: str, params: dict[str, Any] | None, deadline: float) -> Any:
        req_id, request = self._calls.request(method, params)
        self._sock.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            self._sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed by the daemon: what it said before closing is still readable
        while True:
            done, result = _reply(self.socket_path, self._next_message(deadline), req_id)
            if done:
                return result

    def _reconnect(self, timeout: float) -> None:
        self._sock.close()
        self._sock = _open_socket(self.socket_path, timeout)
        self._framer = LineFramer(MAX_RESPONSE_BYTES)
        self._lines.clear()

    def watch(self, params: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Yield the ``params`` of each ``v1.watch`` notification, until the stream ends.

        Uses its own connection, closed when the iterator is closed or exhausted.
        """
        watcher = Client(_open_socket(self.socket_path, DEFAULT_TIMEOUT), self.socket_path)
        try:
            req_id, request = watcher._calls.request("v1.watch", params)
            try:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    watcher._sock.sendall(request)
                watcher._sock.settimeout(None)
                while True:
                    message = watcher._next_message(math.inf)
                    if message is _TOO_DEEP:
                        continue  # an event we cannot read; the stream goes on
                    if _is_notification(message):
                        yield message.get("params") or {}
                    elif message.get("id") == req_id:
                        _answer(message)
                        return
                    elif is_connection_error(message):
                        _raise_connection_error(self.socket_path, message)
            except (OSError, _Retry) as exc:
                raise _gone(self.socket_path) from exc
        finally:
            watcher.close()

    def _next_message(self, deadline: float) -> dict[str, Any]:
        while True:
            while self._lines:
                message = _decode(self._lines.popleft())
                if message is not None:
                    return message
            if deadline != math.inf:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                self._sock.settimeout(remaining)
            data = self._sock.recv(_RECV_BYTES)
            if not data:
                raise _gone(self.socket_path)
            try:
                self._lines.extend(self._framer.feed(data))
            except LineTooLong:
                raise _gone(self.socket_path) from None

    def hello(self) -> dict[str, Any]:
        return self.call("v1.rpc.hello")

    def node_info(self) -> dict[str, Any]:
        return self.call("v1.node.info")

    def peers(self) -> list[dict[str, Any]]:
        return self.call("v1.peers.list")

    def offers(self) -> list[dict[str, Any]]:
        return self.call("v1.offers.list")

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _open_socket(path: Path, timeout: float) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(os.fspath(path))
    except OSError as exc:
        sock.close()
        raise _connect_error(path, exc) from None
    return sock


# --- trio ----------------------------------------------------------------------


class TrioClient:
    """The same API for trio code; every method that talks is ``async``.

    ``watch()`` is an async generator: wrap it in ``contextlib.aclosing`` so
    its connection closes when you stop early.
    """

    def __init__(self, stream: trio.SocketStream, socket_path: Path) -> None:
        self.socket_path = socket_path
        self._stream = stream
        self._framer = LineFramer(MAX_RESPONSE_BYTES)
        self._lines: deque[bytes] = deque()
        self._calls = _Calls()
        self._lock = trio.Lock()

    @classmethod
    async def connect(cls, socket_path: str | os.PathLike[str] | None = None) -> TrioClient:
        path = find_socket(socket_path)
        return cls(await _open_stream(path), path)

    async def call(
        self, method: str, params: dict[str, Any] | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> Any:
        async with self._lock:
            try:
                with trio.fail_after(timeout):
                    try:
                        return await self._exchange(method, params)
                    except _Retry:
                        await self._reconnect()
                    try:
                        return await self._exchange(method, params)
                    except _Retry:
                        raise _gone(self.socket_path) from None
            except trio.TooSlowError:
                raise _timed_out(self.socket_path, method, timeout) from None
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise _gone(self.socket_path) from exc

    async def _exchange(self, method: str, params: dict[str, Any] | None) -> Any:
        req_id, request = self._calls.request(method, params)
        with contextlib.suppress(trio.BrokenResourceError):
            # Closed by the daemon: what it said before closing is still readable.
            await self._stream.send_all(request)
        while True:
            done, result = _reply(self.socket_path, await self._next_message(), req_id)
            if done:
                return result

    async def _reconnect(self) -> None:
        await self.close()
        self._stream = await _open_stream(self.socket_path)
        self._framer = LineFramer(MAX_RESPONSE_BYTES)
        self._lines.clear()

    async def watch(self, params: dict[str, Any] | None = None) -> AsyncIterator[dict[str, Any]]:
        """Yield the ``params`` of each notification until the stream ends."""
        watcher = TrioClient(await _open_stream(self.socket_path), self.socket_path)
        try:
            req_id, request = watcher._calls.request("v1.watch", params)
            try:
                with contextlib.suppress(trio.BrokenResourceError):
                    await watcher._stream.send_all(request)
                while True:
                    message = await watcher._next_message()
                    if message is _TOO_DEEP:
                        continue  # an event we cannot read; the stream goes on
                    if _is_notification(message):
                        yield message.get("params") or {}
                    elif message.get("id") == req_id:
                        _answer(message)
                        return
                    elif is_connection_error(message):
                        _raise_connection_error(self.socket_path, message)
            except (trio.BrokenResourceError, trio.ClosedResourceError, _Retry) as exc:
                raise _gone(self.socket_path) from exc
        finally:
            with trio.CancelScope(shield=True):
                await watcher.close()

    async def _next_message(self) -> dict[str, Any]:
        while True:
            while self._lines:
                message = _decode(self._lines.popleft())
                if message is not None:
                    return message
            data = await self._stream.receive_some(_RECV_BYTES)
            if not data:
                raise _gone(self.socket_path)
            try:
                self._lines.extend(self._framer.feed(data))
            except LineTooLong:
                raise _gone(self.socket_path) from None

    async def hello(self) -> dict[str, Any]:
        return await self.call("v1.rpc.hello")

    async def node_info(self) -> dict[str, Any]:
        return await self.call("v1.node.info")

    async def peers(self) -> list[dict[str, Any]]:
        return await self.call("v1.peers.list")

    async def offers(self) -> list[dict[str, Any]]:
        return await self.call("v1.offers.list")

    async def close(self) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self._stream.aclose()

    async def __aenter__(self) -> TrioClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def _open_stream(path: Path) -> trio.SocketStream:
    try:
        return await trio.open_unix_socket(os.fspath(path))
    except OSError as exc:
        raise _connect_error(path, exc) from None

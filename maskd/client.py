"""The Python SDK for a local maskd: the same calls the CLI makes.

Two clients with one API: ``Client`` (synchronous, a plain ``socket``; for the
CLI, scripts and notebooks) and ``TrioClient`` (for trio programs). Both map
failures at this boundary onto the error tree, so callers handle exactly two
things: ``DaemonUnavailable`` (nothing answers, or it went away or is stuck)
and ``RpcError`` (the daemon answered with an error; ``code`` and ``hint``
come from the error's ``data``).

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

import msgspec
import trio

from maskd.paths import find_socket
from maskd.rpc import LineFramer, LineTooLong, encode_message, error_from_response
from protocol.errors import DaemonUnavailable

__all__ = ["Client", "TrioClient", "DEFAULT_TIMEOUT", "daemon_unavailable"]

DEFAULT_TIMEOUT = 10.0
# Answers can be big (a mesh's offer book); requests are small.
MAX_RESPONSE_BYTES = 64 << 20
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


def _decode(line: bytes) -> dict[str, Any] | None:
    """One message from the daemon; None for anything that is not an object."""
    try:
        message = msgspec.json.decode(line)
    except msgspec.DecodeError:
        return None
    return message if isinstance(message, dict) else None


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
        req_id, request = self._calls.request(method, params)
        deadline = time.monotonic() + timeout
        try:
            self._sock.settimeout(timeout)
            self._sock.sendall(request)
            while True:
                message = self._next_message(deadline)
                if message.get("id") == req_id:
                    return _answer(message)
                # else: a late answer to a call that timed out earlier.
        except TimeoutError:
            raise _timed_out(self.socket_path, method, timeout) from None
        except OSError as exc:
            raise _gone(self.socket_path) from exc

    def watch(self, params: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Yield the ``params`` of each ``v1.watch`` notification, until the stream ends.

        Uses its own connection, closed when the iterator is closed or exhausted.
        """
        watcher = Client(_open_socket(self.socket_path, DEFAULT_TIMEOUT), self.socket_path)
        try:
            req_id, request = watcher._calls.request("v1.watch", params)
            try:
                watcher._sock.sendall(request)
                watcher._sock.settimeout(None)
                while True:
                    message = watcher._next_message(math.inf)
                    if _is_notification(message):
                        yield message.get("params") or {}
                    elif message.get("id") == req_id:
                        _answer(message)
                        return
            except OSError as exc:
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
            req_id, request = self._calls.request(method, params)
            try:
                with trio.fail_after(timeout):
                    await self._stream.send_all(request)
                    while True:
                        message = await self._next_message()
                        if message.get("id") == req_id:
                            return _answer(message)
            except trio.TooSlowError:
                raise _timed_out(self.socket_path, method, timeout) from None
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise _gone(self.socket_path) from exc

    async def watch(self, params: dict[str, Any] | None = None) -> AsyncIterator[dict[str, Any]]:
        """Yield the ``params`` of each notification until the stream ends."""
        watcher = TrioClient(await _open_stream(self.socket_path), self.socket_path)
        try:
            req_id, request = watcher._calls.request("v1.watch", params)
            try:
                await watcher._stream.send_all(request)
                while True:
                    message = await watcher._next_message()
                    if _is_notification(message):
                        yield message.get("params") or {}
                    elif message.get("id") == req_id:
                        _answer(message)
                        return
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
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

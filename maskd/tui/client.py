"""What ``mask top`` needs from a daemon, and the real asyncio implementation.

Textual runs on asyncio and the daemon (and ``maskd.client.TrioClient``) on
trio, so the TUI has its own small client over ``asyncio.open_unix_connection``.
It speaks the same wire (``maskd.rpc`` framing) and raises the same errors as
the SDK. ``TopClient`` is the interface the app depends on, so tests drive the
app with ``maskd.tui.testing.FakeTopClient`` instead of a socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import msgspec

from maskd.client import (
    DEFAULT_TIMEOUT,
    MAX_RESPONSE_BYTES,
    MAX_RESPONSE_NESTING,
    daemon_busy,
    daemon_unavailable,
    is_connection_error,
)
from maskd.rpc import LineFramer, LineTooLong, encode_message, error_from_response
from protocol.codec import decode_json
from protocol.errors import DaemonUnavailable

__all__ = ["TopClient", "ClientFactory", "AsyncioRpcClient", "socket_client_factory"]


class TopClient(Protocol):
    """The calls ``mask top`` makes. Every failure is a ``MaskError``."""

    async def node_info(self) -> dict[str, Any]: ...

    async def peers(self) -> list[dict[str, Any]]: ...

    async def offers(self) -> list[dict[str, Any]]: ...

    async def jobs(self) -> list[dict[str, Any]]:
        """``v1.jobs.list``. A daemon older than jobs answers -32601 (method not found)."""
        ...

    async def wallet_balance(self) -> dict[str, Any]:
        """``v1.wallet.balance``. A node without a chain answers ``chain_off``."""
        ...

    async def ledger_show(self) -> dict[str, Any]:
        """``v1.ledger.show``: channels, vouchers, batches and the chain's status."""
        ...

    def watch(self) -> AsyncIterator[dict[str, Any]]:
        """Event params (``{"type": ..., ...}``) until the daemon goes away."""
        ...

    async def close(self) -> None: ...


# Connects a fresh client; raises DaemonUnavailable when nothing answers.
ClientFactory = Callable[[], Awaitable[TopClient]]


def _gone(path: Path) -> DaemonUnavailable:
    return DaemonUnavailable(f"maskd at {path} closed the connection", code="daemon_disconnected")


class _Connection:
    """One socket: request/response by id, notifications passed through."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: Path
    ) -> None:
        self.path = path
        self._reader = reader
        self._writer = writer
        self._framer = LineFramer(MAX_RESPONSE_BYTES)
        self._lines: deque[bytes] = deque()
        self._next_id = 1

    @classmethod
    async def open(cls, path: Path) -> _Connection:
        try:
            reader, writer = await asyncio.open_unix_connection(os.fspath(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise daemon_unavailable(path) from None
        except OSError as exc:
            raise daemon_unavailable(path, exc.strerror or str(exc)) from None
        return cls(reader, writer, path)

    async def send_request(self, method: str, params: dict[str, Any] | None) -> int:
        req_id = self._next_id
        self._next_id += 1
        message = {"jsonrpc": "2.0", "id": req_id, "method": method, "params": params or {}}
        try:
            self._writer.write(encode_message(message))
            await self._writer.drain()
        except (ConnectionError, OSError):
            # closed by the daemon (busy, idle): what it said before closing is
            # still readable, and says why; next_message reads it, or ends in _gone
            pass
        return req_id

    async def next_message(self) -> dict[str, Any]:
        while True:
            while self._lines:
                try:
                    # the daemon relays text from strangers: bounded before decoding
                    message = decode_json(self._lines.popleft(), max_depth=MAX_RESPONSE_NESTING)
                except msgspec.DecodeError:
                    continue
                if isinstance(message, dict):
                    return message
            try:
                data = await self._reader.read(65536)
            except (ConnectionError, OSError) as exc:
                raise _gone(self.path) from exc
            if not data:
                raise _gone(self.path)
            try:
                self._lines.extend(self._framer.feed(data))
            except LineTooLong:
                raise _gone(self.path) from None

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()


def _check_connection_error(path: Path, message: dict[str, Any]) -> None:
    """An ``id: null`` error is about the connection: a daemon at its connection
    limit is busy (not stopped); after an idle close the TUI reconnects."""
    if not is_connection_error(message):
        return
    error = error_from_response(message["error"])
    if error.code == "rpc_busy":
        raise daemon_busy(path, error.message)
    raise _gone(path)


def _answer(message: dict[str, Any]) -> Any:
    if message.get("error") is not None:
        raise error_from_response(message["error"])
    return message.get("result")


class AsyncioRpcClient:
    """The real ``TopClient``: calls on one connection, each watch on its own."""

    def __init__(self, connection: _Connection) -> None:
        self.socket_path = connection.path
        self._conn = connection
        self._lock = asyncio.Lock()

    @classmethod
    async def connect(cls, socket_path: str | os.PathLike[str]) -> AsyncioRpcClient:
        return cls(await _Connection.open(Path(socket_path)))

    async def call(
        self, method: str, params: dict[str, Any] | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> Any:
        async with self._lock:
            try:
                async with asyncio.timeout(timeout):
                    req_id = await self._conn.send_request(method, params)
                    while True:
                        message = await self._conn.next_message()
                        _check_connection_error(self.socket_path, message)
                        if message.get("id") == req_id:
                            return _answer(message)
            except TimeoutError:
                raise DaemonUnavailable(
                    f"maskd at {self.socket_path} did not answer {method} within {timeout:g} s",
                    code="daemon_timeout",
                ) from None

    async def node_info(self) -> dict[str, Any]:
        return await self.call("v1.node.info")

    async def peers(self) -> list[dict[str, Any]]:
        return await self.call("v1.peers.list")

    async def offers(self) -> list[dict[str, Any]]:
        return await self.call("v1.offers.list")

    async def jobs(self) -> list[dict[str, Any]]:
        return await self.call("v1.jobs.list")

    async def wallet_balance(self) -> dict[str, Any]:
        return await self.call("v1.wallet.balance")

    async def ledger_show(self) -> dict[str, Any]:
        return await self.call("v1.ledger.show")

    async def watch(self, params: dict[str, Any] | None = None) -> AsyncIterator[dict[str, Any]]:
        conn = await _Connection.open(self.socket_path)
        try:
            req_id = await conn.send_request("v1.watch", params)
            while True:
                message = await conn.next_message()
                _check_connection_error(self.socket_path, message)
                if "id" not in message and isinstance(message.get("method"), str):
                    yield message.get("params") or {}
                elif message.get("id") == req_id:
                    _answer(message)
                    return
        finally:
            await conn.close()

    async def close(self) -> None:
        await self._conn.close()


def socket_client_factory(socket_path: str | os.PathLike[str]) -> ClientFactory:
    """The factory ``mask top`` uses: a fresh AsyncioRpcClient per (re)connect."""

    async def connect() -> TopClient:
        return await AsyncioRpcClient.connect(socket_path)

    return connect

"""Fakes for the block exchange: in-memory streams and misbehaving peers.

``FakeNetwork`` connects ``BlockExchange`` instances over trio's memory
streams, wrapped to the ``read/write/close/reset`` shape of a libp2p stream,
so the real protocol code runs end to end without sockets. A peer can be
given a behaviour that wraps its side of every stream: ``Hang`` (never
answers), ``DieAfter`` (the connection breaks after N bytes), ``Delay``
(every write waits). A corrupting peer is an ordinary server whose block
source is ``corrupting_source``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import trio
import trio.testing

from storage.exchange import BlockExchange, BlockSource


async def inline(fn, *args):
    """``run_blocking`` for tests: call the store directly (MockClock-friendly)."""
    return fn(*args)


class MemoryByteStream:
    """One end of a trio memory stream pair, with a libp2p stream's methods."""

    def __init__(self, stream: trio.abc.HalfCloseableStream) -> None:
        self._stream = stream
        self.closed = False

    async def read(self, n: int | None = None) -> bytes:
        return await self._stream.receive_some(n or 65536)

    async def write(self, data: bytes) -> None:
        await self._stream.send_all(data)

    async def close(self) -> None:
        self.closed = True
        await self._stream.aclose()

    async def reset(self) -> None:
        await self.close()


class Behaviour:
    """Wraps a server's end of each stream; the base passes everything through."""

    def wrap(self, stream: MemoryByteStream) -> MemoryByteStream:
        return stream


class _Wrapped(MemoryByteStream):
    def __init__(self, inner: MemoryByteStream) -> None:
        self.inner = inner

    async def read(self, n: int | None = None) -> bytes:
        return await self.inner.read(n)

    async def write(self, data: bytes) -> None:
        await self.inner.write(data)

    async def close(self) -> None:
        await self.inner.close()

    async def reset(self) -> None:
        await self.inner.reset()


@dataclass
class Hang(Behaviour):
    """Reads requests and never answers (a stuck peer)."""

    def wrap(self, stream):
        class _Hung(_Wrapped):
            async def write(self, data: bytes) -> None:
                await trio.sleep_forever()

        return _Hung(stream)


@dataclass
class Delay(Behaviour):
    """Every write waits ``seconds`` first (a slow peer)."""

    seconds: float

    def wrap(self, stream):
        seconds = self.seconds

        class _Slow(_Wrapped):
            async def write(self, data: bytes) -> None:
                await trio.sleep(seconds)
                await self.inner.write(data)

        return _Slow(stream)


@dataclass
class DieAfter(Behaviour):
    """The peer's connection breaks once it has written ``nbytes`` (it died)."""

    nbytes: int
    written: int = 0

    def wrap(self, stream):
        outer = self

        class _Dying(_Wrapped):
            async def write(self, data: bytes) -> None:
                room = outer.nbytes - outer.written
                if room <= 0:
                    await self.inner.reset()
                    raise trio.BrokenResourceError("peer died")
                await self.inner.write(data[:room])
                outer.written += min(room, len(data))
                if len(data) > room:
                    await self.inner.reset()
                    raise trio.BrokenResourceError("peer died")

        return _Dying(stream)


def corrupting_source(inner: BlockSource, bad: Callable[[str], bool]) -> BlockSource:
    """A block source that flips one byte of every block ``bad(cid)`` selects."""

    def source(cids: list[str]) -> list[tuple[str, bytes | None]]:
        out = []
        for cid, data in inner(cids):
            if data is not None and bad(cid):
                data = bytes([data[0] ^ 0xFF]) + data[1:] if data else b"\x00"
            out.append((cid, data))
        return out

    return source


@dataclass
class FakeNetwork:
    """Peers by id; ``open_stream_from(me)`` is an ``OpenStream`` for exchange ``me``."""

    nursery: trio.Nursery
    servers: dict[str, BlockExchange] = field(default_factory=dict)
    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    opened: dict[str, int] = field(default_factory=dict)
    active: dict[str, int] = field(default_factory=dict)
    max_active: dict[str, int] = field(default_factory=dict)

    def add(self, peer_id: str, exchange: BlockExchange, behaviour: Behaviour | None = None):
        self.servers[peer_id] = exchange
        if behaviour is not None:
            self.behaviours[peer_id] = behaviour

    def open_stream_from(self, me: str):
        async def open_stream(peer_id: str) -> MemoryByteStream:
            server = self.servers.get(peer_id)
            if server is None:
                raise ConnectionRefusedError(f"no peer {peer_id}")
            client_end, server_end = trio.testing.memory_stream_pair()
            theirs = self.behaviours.get(peer_id, Behaviour()).wrap(MemoryByteStream(server_end))
            self.opened[peer_id] = self.opened.get(peer_id, 0) + 1
            self.nursery.start_soon(self._serve, server, theirs, peer_id, me)
            return MemoryByteStream(client_end)

        return open_stream

    async def _serve(self, server: BlockExchange, stream, peer_id: str, me: str) -> None:
        self.active[peer_id] = self.active.get(peer_id, 0) + 1
        self.max_active[peer_id] = max(self.max_active.get(peer_id, 0), self.active[peer_id])
        try:
            await server.handle_stream(stream, me)
        finally:
            self.active[peer_id] -= 1

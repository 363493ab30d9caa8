"""p2p/patches.py: the buffered TCP read keeps py-libp2p's read contract."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from libp2p.io.exceptions import ConnectionClosedError
from libp2p.io.trio import TrioTCPStream

from p2p import patches


class CountingStream:
    """A trio byte stream that counts receive_some calls (stands in for the socket)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.receives = 0

    async def receive_some(self, max_bytes=None):
        self.receives += 1
        return await self.inner.receive_some(max_bytes)

    async def send_all(self, data):
        await self.inner.send_all(data)

    async def aclose(self):
        await self.inner.aclose()


@pytest.fixture(autouse=True)
def patched():
    patches.buffer_tcp_reads()


async def test_small_reads_are_served_from_one_receive_in_order() -> None:
    left, right = trio.testing.memory_stream_pair()
    counting = CountingStream(right)
    tcp = TrioTCPStream(counting)
    # three length-prefixed messages arrive together, as on a busy socket
    wire = b"".join(len(m).to_bytes(2, "big") + m for m in (b"abc", b"defgh", b"i" * 1000))
    await left.send_all(wire)
    got = []
    for _ in range(3):
        length = int.from_bytes(await tcp.read(2), "big")
        got.append(await tcp.read(length))
    assert got == [b"abc", b"defgh", b"i" * 1000]
    assert counting.receives == 1  # unpatched: 6 (one per read)


async def test_read_never_returns_more_than_asked_and_none_takes_the_rest() -> None:
    left, right = trio.testing.memory_stream_pair()
    tcp = TrioTCPStream(right)
    await left.send_all(b"0123456789")
    assert await tcp.read(0) == b""
    assert await tcp.read(3) == b"012"
    assert await tcp.read(4) == b"3456"
    assert await tcp.read(None) == b"789"


async def test_large_reads_ask_for_at_least_what_the_caller_wants() -> None:
    left, right = trio.testing.memory_stream_pair()
    tcp = TrioTCPStream(right)
    big = bytes(range(256)) * 4096  # 1 MiB, more than one buffered receive
    async with trio.open_nursery() as nursery:
        nursery.start_soon(left.send_all, big)
        out = bytearray()
        while len(out) < len(big):
            chunk = await tcp.read(len(big) - len(out))
            assert chunk
            out += chunk
    assert bytes(out) == big


async def test_end_of_stream_and_closed_resources_read_as_eof() -> None:
    left, right = trio.testing.memory_stream_pair()
    tcp = TrioTCPStream(right)
    await left.send_all(b"xy")
    await left.aclose()
    assert await tcp.read(1) == b"x"
    assert await tcp.read(1) == b"y"  # buffered bytes outlive the peer's close
    assert await tcp.read(1) == b""
    await right.aclose()
    assert await tcp.read(5) == b""


async def test_a_broken_connection_is_connection_closed_error() -> None:
    class Broken:
        async def receive_some(self, max_bytes=None):
            raise trio.BrokenResourceError("reset by peer")

    with pytest.raises(ConnectionClosedError):
        await TrioTCPStream(Broken()).read(10)

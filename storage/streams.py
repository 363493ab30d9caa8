"""Framed message streams for ``/mask/blocks/1``, over any byte stream.

The exchange never touches libp2p types: it takes a stream object with
``async read(n) -> bytes`` (up to n bytes; ``b""`` or an ``EOFError`` at the
end), ``async write(data)``, ``async close()`` and ``async reset()`` — the
shape of py-libp2p's ``INetStream``. ``storage.testing`` adapts trio's memory
streams to the same shape, so component tests run the real protocol code.
"""

from __future__ import annotations

from typing import Protocol

import trio

from protocol.blocks import (
    MAX_FRAME_BYTES,
    BlockMessage,
    FrameDecoder,
    FrameError,
    decode_message,
    encode_frame,
)

READ_SIZE = 1 << 20


class ByteStream(Protocol):
    async def read(self, n: int | None = None) -> bytes: ...

    async def write(self, data: bytes) -> None: ...

    async def close(self) -> None: ...

    async def reset(self) -> None: ...


class StreamBroken(Exception):
    """The transport failed (reset, closed under us, connection gone)."""


class FramedStream:
    """Messages in and out of one stream; one writer at a time (a lock)."""

    def __init__(self, stream: ByteStream, *, max_frame: int = MAX_FRAME_BYTES) -> None:
        self.stream = stream
        self._decoder = FrameDecoder(max_frame)
        self._frames: list[bytes] = []
        self._send_lock = trio.Lock()
        self.bytes_in = 0
        self.bytes_out = 0

    async def send(self, message: BlockMessage) -> None:
        frame = encode_frame(message)
        async with self._send_lock:
            try:
                await self.stream.write(frame)
            except trio.Cancelled:
                raise
            except Exception as exc:
                raise StreamBroken(f"write failed: {type(exc).__name__}: {exc}") from None
        self.bytes_out += len(frame)

    async def receive(self) -> BlockMessage | None:
        """The next message; None at a clean end of stream.

        Raises ``FrameError`` when the peer breaks the protocol, ``StreamBroken``
        when the transport fails or the stream ends inside a frame.
        """
        while not self._frames:
            try:
                data = await self.stream.read(READ_SIZE)
            except trio.Cancelled:
                raise
            except EOFError:
                data = b""
            except Exception as exc:
                raise StreamBroken(f"read failed: {type(exc).__name__}: {exc}") from None
            if not data:
                if self._decoder.buffered:
                    raise StreamBroken("stream ended inside a frame")
                return None
            self.bytes_in += len(data)
            self._frames = self._decoder.feed(data)
            self._frames.reverse()
        return decode_message(self._frames.pop())

    async def close(self) -> None:
        await _quietly(self.stream.close)

    async def reset(self) -> None:
        await _quietly(self.stream.reset)


async def _quietly(fn) -> None:
    with trio.move_on_after(2) as scope:
        scope.shield = True
        try:
            await fn()
        except Exception:
            pass


__all__ = ["ByteStream", "FramedStream", "FrameError", "StreamBroken", "READ_SIZE"]

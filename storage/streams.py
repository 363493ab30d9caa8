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
# Big frames are written in pieces of this size: a Yamux DATA frame is then its
# 12-byte header plus 65,507 bytes = 65,519, exactly Noise's largest plaintext
# (65,535 - 16 for the tag), so it goes out as one Noise message. Written whole,
# py-libp2p cuts a frame into 65,524-byte Yamux frames, and Noise each of those
# into two messages (65,519 + 17 bytes): twice the encryptions, sends, reads
# and decryptions on both sides.
WRITE_PIECE = 65_535 - 16 - 12
# Gather at least this much of a frame in the muxer before reading it (see
# ``gather_buffered``); smaller frames (wants, answers' tails) are read at once.
GATHER_MIN = 128 << 10


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
                if len(frame) <= WRITE_PIECE:
                    await self.stream.write(frame)
                else:
                    for start in range(0, len(frame), WRITE_PIECE):
                        await self.stream.write(frame[start : start + WRITE_PIECE])
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
            missing = self._decoder.missing
            if missing >= GATHER_MIN:
                await gather_buffered(self.stream, missing)
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


async def widen_receive_window(stream: ByteStream, size: int) -> int:
    """Let the peer send up to ``size`` bytes ahead on this stream; the increment granted.

    A Yamux stream starts with a 256 KiB receive window, and py-libp2p 0.8.1 grows
    it only when window updates come within 4 measured RTTs of each other, so a
    bulk answer may be held to a window per round trip (and a sender with no
    window polls every 10 ms). The spec lets a receiver grant
    more credit at any time with a WINDOW_UPDATE, so we grant it once, up front,
    and raise the stream's target so its own updates keep the window that wide.
    Duck-typed on py-libp2p's ``YamuxStream`` (reached through the ``NetStream``'s
    ``muxed_stream``); any other stream (Mplex, the test fakes) is left alone: 0.
    """
    muxed = getattr(stream, "muxed_stream", stream)
    lock = getattr(muxed, "window_lock", None)
    send_update = getattr(muxed, "send_window_update", None)
    if (
        lock is None
        or send_update is None
        or not isinstance(getattr(muxed, "recv_window", None), int)
        or not isinstance(getattr(muxed, "target_recv_window", None), int)
    ):
        return 0
    async with lock:
        delta = size - muxed.recv_window
        if delta <= 0:
            return 0
        muxed.recv_window += delta
        muxed.target_recv_window = max(muxed.target_recv_window, size)
    try:
        await send_update(delta)
    except trio.Cancelled:
        raise
    except Exception as exc:
        raise StreamBroken(f"window update failed: {type(exc).__name__}: {exc}") from None
    return delta


async def gather_buffered(stream: ByteStream, want: int) -> None:
    """Wait until ``want`` bytes wait unread in the stream's Yamux buffer, or it ends.

    py-libp2p answers every ``read`` with what is buffered (one 64 KiB Yamux frame
    at a time when the reader keeps up) and sends a WINDOW_UPDATE per read: a
    1 MiB Blocks frame cost ~16 reads, 16 updates (each encrypted, sent and
    handled by the peer) and 16 wake-ups of our decoder. Waiting for the frame's
    missing bytes first makes that one read and one update. We wait on the same
    per-stream event the muxer's own ``read`` waits on, and never for more than
    half the receive window, so the peer always has the credit to send what we
    wait for. Duck-typed on py-libp2p's ``YamuxStream``; other streams: no wait.
    """
    muxed = getattr(stream, "muxed_stream", stream)
    conn = getattr(muxed, "conn", None)
    stream_id = getattr(muxed, "stream_id", None)
    buffers = getattr(conn, "stream_buffers", None)
    events = getattr(conn, "stream_events", None)
    window = getattr(muxed, "target_recv_window", None)
    if not isinstance(buffers, dict) or not isinstance(events, dict) or not isinstance(window, int):
        return
    want = min(want, window // 2)
    shutting_down = getattr(conn, "event_shutting_down", None)
    while True:
        buffer = buffers.get(stream_id)
        if (
            buffer is None
            or len(buffer) >= want
            or getattr(muxed, "recv_closed", True)
            or getattr(muxed, "reset_received", True)
            or (shutting_down is not None and shutting_down.is_set())
        ):
            return
        event = events.get(stream_id)
        if event is None:
            return
        await event.wait()
        if events.get(stream_id) is event:
            events[stream_id] = trio.Event()


async def _quietly(fn) -> None:
    with trio.move_on_after(2) as scope:
        scope.shield = True
        try:
            await fn()
        except Exception:
            pass


__all__ = [
    "ByteStream",
    "FramedStream",
    "FrameError",
    "StreamBroken",
    "READ_SIZE",
    "widen_receive_window",
    "gather_buffered",
]

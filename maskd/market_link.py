"""The market's link to the mesh: bids on gossip, one stream per peer for the rest.

- ``MeshGossip`` publishes bids on ``/mask/bids/1``;
- ``MarketTransport`` sends varint-framed messages on ``/mask/market/1``, one
  kept stream per peer;
- ``MarketRouter`` serves ``/mask/market/1``: reads frames, routes each to the
  requester or the provider service, and scores a peer that sends garbage.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import msgspec
import trio

from protocol.codec import DECODE_ERRORS
from protocol.market import Agreement, Cancel, Payment, decode_market
from protocol.messages import MARKET_PROTOCOL

log = logging.getLogger("maskd.market_link")

MAX_FRAME = 1 << 20
READ_TIMEOUT_S = 30.0  # a kept stream with nothing on it this long is closed


class MeshGossip:
    def __init__(self, mesh):
        self.mesh = mesh

    async def publish(self, topic: str, data: bytes) -> None:
        await self.mesh.publish(topic, data)


class MarketTransport:
    """One long-lived ``/mask/market/1`` stream per peer, varint-framed messages.

    Opening a stream costs a multistream negotiation (~6-10 ms on loopback), so a
    stream is kept and reused; ``handle_market_stream`` reads frames in a loop.
    Sends to one peer are serialised by a per-peer lock (the requester and the
    provider service share this transport), so frames never interleave and leave
    in call order. A write that fails on a kept stream is retried once on a fresh
    one (a duplicate is harmless: the cores drop stale and repeated messages); a
    stream idle longer than ``idle_s`` is closed rather than reused, well inside
    the server's 30 s read timeout, so a write never lands on a stream the
    server has stopped reading.
    """

    def __init__(self, mesh, *, idle_s: float = 10.0):
        self.mesh = mesh
        self.idle_s = idle_s
        self._streams: dict[str, tuple[Any, float]] = {}  # peer -> (stream, last used)
        self._locks: dict[str, trio.Lock] = {}

    async def send(self, peer_id: str, data: bytes) -> None:
        from libp2p.utils.varint import encode_uvarint

        frame = encode_uvarint(len(data)) + data
        lock = self._locks.setdefault(peer_id, trio.Lock())
        async with lock:
            kept = self._streams.pop(peer_id, None)
            if kept is not None:
                stream, used = kept
                if time.monotonic() - used <= self.idle_s:
                    try:
                        with trio.fail_after(10):
                            await stream.write(frame)
                        self._streams[peer_id] = (stream, time.monotonic())
                        return
                    except trio.Cancelled:
                        await self._discard(stream, reset=True)
                        raise
                    except Exception:
                        await self._discard(stream, reset=True)
                else:
                    await self._discard(stream, reset=False)
            try:
                with trio.fail_after(10):
                    stream = await self.mesh.new_stream(peer_id, MARKET_PROTOCOL)
                    try:
                        await stream.write(frame)
                    except BaseException:
                        await self._discard(stream, reset=True)
                        raise
                self._streams[peer_id] = (stream, time.monotonic())
            except trio.TooSlowError:
                raise OSError(f"sending to {peer_id} timed out") from None
            except OSError:
                raise
            except Exception as exc:  # libp2p's stream and dial errors
                raise OSError(f"cannot reach {peer_id}: {exc}") from None

    @staticmethod
    async def _discard(stream, *, reset: bool) -> None:
        with trio.move_on_after(1) as scope:
            scope.shield = True
            try:
                await (stream.reset() if reset else stream.close())
            except Exception:
                pass


class MarketRouter:
    """``/mask/market/1`` server side: frames in, each to the service it is for.

    An agreement this node has not countersigned, a cancel or a payment (the
    requester's voucher) is for the provider service; everything else is for
    the requester service. A frame that does not decode ends the stream and
    costs the peer ``undecodable``.
    """

    def __init__(
        self,
        my_peer_id: str,
        requester: Any,
        provider: Any | None,
        penalise: Callable[[str, str], None],
        *,
        read_timeout: float = READ_TIMEOUT_S,
    ):
        self.my_peer_id = my_peer_id
        self.requester = requester
        self.provider = provider
        self.penalise = penalise
        self.read_timeout = read_timeout

    async def handle(self, stream) -> None:
        from libp2p.utils.varint import read_varint_prefixed_bytes_limited

        peer = stream.muxed_conn.peer_id.to_base58()
        try:
            while True:
                with trio.fail_after(self.read_timeout):
                    data = await read_varint_prefixed_bytes_limited(stream, MAX_FRAME)
                try:
                    msg = decode_market(data)
                except (*DECODE_ERRORS, msgspec.ValidationError, ValueError):
                    self.penalise(peer, "undecodable")
                    break
                to_provider = isinstance(msg, (Cancel, Payment)) or (
                    isinstance(msg, Agreement)
                    and msg.terms.provider_peer == self.my_peer_id
                    and not msg.provider_signature
                )
                target = self.provider if to_provider else self.requester
                if target is not None:
                    target.deliver(peer, data)
        except trio.Cancelled:
            raise
        except Exception:
            pass  # end of stream, reset, timeout: the sender's core retries or times out
        finally:
            with trio.move_on_after(1):
                try:
                    await stream.close()
                except Exception:
                    pass

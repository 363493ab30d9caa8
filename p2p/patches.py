"""Targeted changes to py-libp2p 0.8.1, each for a measured reason.

Applied once, idempotently, by ``apply()`` before a host starts. Each patch
replaces one module-level name; none changes behaviour peers can observe.

1. ``RpcQueue`` size. The per-peer outbound pubsub queue is hard-wired to 32
   RPCs through a default argument; bursts beyond it are dropped and logged
   at DEBUG only. We raise it (still bounded) from config.
2. Signed peer records on every RPC. py-libp2p attaches the sender's signed
   peer record to every pubsub RPC and the receiver re-parses and re-verifies
   it (an Ed25519 check plus peerstore writes) each time: ~0.7 ms per RPC per
   hop here, the largest single item in a gossip message's CPU profile. A
   record whose bytes equal the last one accepted from the same peer carries
   nothing new, so we skip re-verifying it. A changed record (new addresses,
   new seq) is verified in full as before.
3. Buffered TCP reads. Every Noise message is read as a 2-byte length and
   then its body, each a ``receive_some`` of exactly what is asked: two or
   more ``recv`` system calls and two trio scheduling rounds per message
   (~40,000 of each per GB of block transfer). ``TrioTCPStream.read`` now
   asks the socket for up to 256 KiB and keeps what the caller did not ask
   for, serving the next reads from it. Callers still get at most ``n``
   bytes, in order; the bytes on the wire are unchanged.
"""

from __future__ import annotations

from collections import OrderedDict

_applied: dict[str, object] = {}
_RECORD_CACHE_SIZE = 4096
TCP_READ_SIZE = 256 << 10


def apply(*, outbound_queue: int) -> None:
    from libp2p.pubsub import rpc_queue

    buffer_tcp_reads()

    defaults = rpc_queue.RpcQueue.__init__.__defaults__
    rpc_queue.RpcQueue.__init__.__defaults__ = (outbound_queue, defaults[-1])

    if "record_cache" in _applied:
        return
    from libp2p.pubsub import gossipsub, pubsub
    from libp2p.pubsub import utils as pubsub_utils

    original = pubsub_utils.maybe_consume_signed_record
    last_ok: OrderedDict[bytes, bytes] = OrderedDict()

    def maybe_consume_signed_record_cached(msg, host, peer_id) -> bool:
        if not msg.HasField("senderRecord"):
            return True
        key = peer_id.to_bytes()
        record = msg.senderRecord
        if last_ok.get(key) == record:
            last_ok.move_to_end(key)
            return True
        ok = original(msg, host, peer_id)
        if ok:
            last_ok[key] = bytes(record)
            last_ok.move_to_end(key)
            while len(last_ok) > _RECORD_CACHE_SIZE:
                last_ok.popitem(last=False)
        return ok

    pubsub.maybe_consume_signed_record = maybe_consume_signed_record_cached
    gossipsub.maybe_consume_signed_record = maybe_consume_signed_record_cached
    _applied["record_cache"] = original


def buffer_tcp_reads() -> None:
    """Patch 3 (see the module docstring); idempotent."""
    if "tcp_reads" in _applied:
        return
    import trio
    from libp2p.io import trio as libp2p_trio
    from libp2p.io.exceptions import ConnectionClosedError

    cls = libp2p_trio.TrioTCPStream

    async def read(self, n: int | None = None) -> bytes:
        if n is not None and n <= 0:
            return b""
        async with self.read_lock:
            buf = self.__dict__.get("_mask_rbuf")
            if buf is not None:
                pos = self._mask_rpos
                end = len(buf) if n is None else min(len(buf), pos + n)
                if end >= len(buf):
                    self._mask_rbuf = None
                else:
                    self._mask_rpos = end
                return buf[pos:end]
            try:
                data = await self.stream.receive_some(max(n or 0, TCP_READ_SIZE))
            except trio.BrokenResourceError as error:
                raise ConnectionClosedError(
                    f"TCP connection reset by remote peer: {error}", transport="tcp"
                ) from error
            except trio.ClosedResourceError:
                return b""  # closed locally: EOF, as py-libp2p's own read answers
            if n is None or len(data) <= n:
                return data
            self._mask_rbuf = data
            self._mask_rpos = n
            return data[:n]

    _applied["tcp_reads"] = cls.read
    cls.read = read

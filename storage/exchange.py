"""Block exchange between peers: ``/mask/blocks/1`` (server and client).

Server: ``BlockExchange.handle_stream(stream, peer_id)`` answers ``WantBlocks``
from a block source (the local store, read in a worker thread), pipelined and
in order, with bounded work per peer: at most ``serve_streams_per_peer``
streams and ``serve_queue`` queued wants on each. A ``PinRequest`` goes to the
``on_pin_request`` callback (the storage service) and its answer back on the
same stream.

Client: ``BlockExchange.fetch_dag(root, peers)`` brings every missing block of
a DAG into the local store. It walks the DAG as blocks arrive, and asks up to
``max_peers`` peers at once over one stream each, each with up to
``requests_per_peer`` pipelined wants of about ``want_bytes``; a global budget
bounds the bytes asked for and not yet stored. Answers go to a per-peer
storer as they arrive (the next want does not wait for the disk), which
writes what has arrived in batches (``BlockStore.put_many``). Every block is re-hashed
against its CID before it is stored: a mismatch penalises the peer (through
the ``penalise`` callback into the mesh scorer) and drops it from the fetch.
A want that is not fully answered within ``request_timeout_s``, or a stream
that breaks, drops that peer too; its outstanding blocks go back to the queue
for the other peers. A block is tried at most ``max_attempts`` times.

The transport is injected: ``open_stream(peer_id)`` returns a stream with the
``storage.streams.ByteStream`` shape, so the same code runs over libp2p in the
daemon and over in-memory streams in tests (``storage.testing``).
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio

from protocol.blocks import (
    MAX_WANT_CIDS,
    Blocks,
    DontHave,
    FrameError,
    PinRequest,
    PinResponse,
    WantBlocks,
)
from protocol.errors import StorageError
from storage.blockstore import BlockStore
from storage.cid import DAG_PB, RAW, canonical, cid_to_str, parse_cid
from storage.dagpb import decode_node
from storage.fetch_state import (
    DEFAULT_HINT,
    NODE_HINT,
    ByteBudget,
    ExchangeSettings,
    ExchangeStats,
    FetchProgress,
    FetchResult,
    FetchState,
    ProgressFn,
)
from storage.streams import ByteStream, FramedStream, StreamBroken, widen_receive_window

__all__ = [
    "BlockExchange",
    "ExchangeSettings",
    "ExchangeStats",
    "FetchProgress",
    "FetchResult",
    "OpenStream",
    "leaf_error",
]

log = logging.getLogger("maskd.storage.exchange")

OpenStream = Callable[[str], Awaitable[ByteStream]]
Penalise = Callable[[str, str], None]
BlockSource = Callable[[list[str]], list[tuple[str, bytes | None]]]
PinHandler = Callable[[str, PinRequest], Awaitable[PinResponse]]
RunBlocking = Callable[..., Awaitable[Any]]


class _PeerDropped(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Reservation:
    """One want's share of the byte budget, given back as its blocks are stored."""

    __slots__ = ("budget", "left")

    def __init__(self, budget: ByteBudget, n: int) -> None:
        self.budget = budget
        self.left = n

    def release(self, n: int) -> None:
        n = min(n, self.left)
        if n > 0:
            self.left -= n
            self.budget.release(n)

    def release_all(self) -> None:
        self.release(self.left)


class _Arrival:
    """Blocks received for one want, waiting for the storer."""

    __slots__ = ("blocks", "reserved", "reservation")

    def __init__(self, blocks, reserved: int, reservation: _Reservation) -> None:
        self.blocks = blocks
        self.reserved = reserved
        self.reservation = reservation


class _Session:
    """One peer's tasks in one fetch: the first failure cancels them all."""

    def __init__(self) -> None:
        self.failure: Exception | None = None
        self.scope: trio.CancelScope | None = None

    async def guard(self, fn, *args) -> None:
        try:
            await fn(*args)
        except Exception as exc:
            if self.failure is None:
                self.failure = exc
            self.scope.cancel()


def leaf_error(exc: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup):
        inner = [e for e in exc.exceptions if not isinstance(e, trio.Cancelled)]
        exc = (inner or exc.exceptions)[0]
    return exc


def _child_hint(codec: int, tsize: int) -> int:
    return max(1, min(tsize, 2 << 20)) if codec == RAW else max(1, min(tsize, NODE_HINT))


class BlockExchange:
    def __init__(
        self,
        store: BlockStore,
        open_stream: OpenStream,
        *,
        penalise: Penalise = lambda peer, reason: None,
        source: BlockSource | None = None,
        on_pin_request: PinHandler | None = None,
        settings: ExchangeSettings = ExchangeSettings(),
        thread_limiter: trio.CapacityLimiter | None = None,
        run_blocking: RunBlocking | None = None,
    ) -> None:
        """``run_blocking(fn, *args)`` runs the store's blocking calls; by default in
        a worker thread behind ``thread_limiter``. Tests pass ``storage.testing.inline``
        so that trio's MockClock sees no threads and timeouts are exact."""
        self.store = store
        self.open_stream = open_stream
        self.penalise = penalise
        self.source = source or self._store_source
        self.on_pin_request = on_pin_request
        self.settings = settings
        self.stats = ExchangeStats()
        self._limiter = thread_limiter or trio.CapacityLimiter(8)
        self._run_blocking = run_blocking or self._in_thread
        self._budget = ByteBudget(settings.max_inflight_bytes)
        self._serving: dict[str, int] = {}
        self._req_ids = itertools.count(1)

    async def _in_thread(self, fn, *args):
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    # ------------------------------------------------------------ serving
    def _store_source(self, cids: list[str]) -> list[tuple[str, bytes | None]]:
        out: list[tuple[str, bytes | None]] = []
        for cid in cids:
            try:
                out.append((cid, self.store.get(cid)))
            except StorageError:
                out.append((cid, None))
        return out

    async def handle_stream(self, stream: ByteStream, peer_id: str) -> None:
        """Serve one inbound stream until the peer closes it. Never raises."""
        s = self.settings
        if self._serving.get(peer_id, 0) >= s.serve_streams_per_peer:
            self.stats.refused_streams += 1
            await FramedStream(stream).reset()
            return
        self._serving[peer_id] = self._serving.get(peer_id, 0) + 1
        framed = FramedStream(stream)
        try:
            await self._serve(framed, peer_id)
        except BaseException as exc:
            # A group may mix a real error with Cancelled (the peer went away while we
            # were being cancelled): handle the error; a cancellation that is still
            # due is raised again at the caller's next checkpoint.
            err = leaf_error(exc)
            if not isinstance(err, Exception):
                await framed.reset()
                raise
            if isinstance(err, FrameError):
                self.stats.bad_frames += 1
                log.info("peer %s broke /mask/blocks/1: %s", peer_id, err)
                self.penalise(peer_id, "block_protocol")
            elif not isinstance(
                err, StreamBroken | trio.BrokenResourceError | trio.ClosedResourceError
            ):
                log.error("serving blocks to %s failed", peer_id, exc_info=err)
            await framed.reset()
        else:
            await framed.close()
        finally:
            self._serving[peer_id] -= 1
            if not self._serving[peer_id]:
                del self._serving[peer_id]

    async def _serve(self, framed: FramedStream, peer_id: str) -> None:
        s = self.settings
        wants_send, wants_recv = trio.open_memory_channel[WantBlocks](s.serve_queue)
        out_send, out_recv = trio.open_memory_channel[tuple](2)
        pin_slot = trio.Semaphore(1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._load_loop, wants_recv, out_send.clone())
            nursery.start_soon(self._write_loop, framed, out_recv)
            async with wants_send, out_send:
                while True:
                    msg = await framed.receive()
                    if msg is None:
                        break
                    if isinstance(msg, WantBlocks):
                        if not 0 < len(msg.cids) <= MAX_WANT_CIDS:
                            raise FrameError("bad_want", f"{len(msg.cids)} cids")
                        await wants_send.send(msg)
                    elif isinstance(msg, PinRequest) and self.on_pin_request is not None:
                        if pin_slot.value == 0:
                            await out_send.send(
                                (
                                    "pin",
                                    PinResponse(req_id=msg.req_id, accepted=False, reason="busy"),
                                )
                            )
                            continue
                        await pin_slot.acquire()
                        nursery.start_soon(self._pin, peer_id, msg, out_send.clone(), pin_slot)
                    else:
                        raise FrameError("unexpected", type(msg).__name__)

    async def _pin(self, peer_id, msg: PinRequest, out: trio.MemorySendChannel, slot) -> None:
        async with out:
            try:
                response = await self.on_pin_request(peer_id, msg)
            except StorageError as exc:
                response = PinResponse(req_id=msg.req_id, accepted=False, reason=exc.code)
            finally:
                slot.release()
            await out.send(("pin", response))

    async def _load_loop(self, wants: trio.MemoryReceiveChannel, out: trio.MemorySendChannel):
        async with out:
            async for want in wants:
                try:
                    keys = [canonical(c) for c in want.cids]
                except StorageError:
                    raise FrameError("bad_cid", "in a want") from None
                found = await self._run_blocking(self.source, keys)
                await out.send(("blocks", want.req_id, found))

    async def _write_loop(self, framed: FramedStream, out: trio.MemoryReceiveChannel) -> None:
        frame_bytes = self.settings.frame_bytes
        async for item in out:
            if item[0] == "pin":
                await framed.send(item[1])
                continue
            _, req_id, found = item
            self.stats.served_wants += 1
            batch: list[tuple[str, bytes]] = []
            size = 0
            missing = []
            for cid, data in found:
                if data is None:
                    missing.append(cid)
                    continue
                if batch and size + len(data) > frame_bytes:
                    await framed.send(Blocks(req_id=req_id, blocks=batch))
                    batch, size = [], 0
                batch.append((cid, data))
                size += len(data)
                self.stats.served_blocks += 1
                self.stats.served_bytes += len(data)
            if batch:
                await framed.send(Blocks(req_id=req_id, blocks=batch))
            if missing:
                self.stats.served_dont_have += len(missing)
                await framed.send(DontHave(req_id=req_id, cids=missing))

    # ------------------------------------------------------------ fetching
    async def fetch_dag(
        self,
        root: str,
        peers: Sequence[str],
        *,
        progress: ProgressFn | None = None,
        pin: bool = False,
        max_bytes: int | None = None,
    ) -> FetchResult:
        """Fetch every block of the DAG at ``root`` that the store lacks; with
        ``pin``, pin the root once the DAG is complete.

        The whole fetch runs inside the store's ``writing()`` guard, so ``gc`` waits
        for it; the pin is taken inside that guard too, since a ``gc`` waiting for
        the guard runs the moment it is released and would delete the fetched,
        still unpinned blocks. A caller that uses the DAG afterwards without pinning
        it (an export) must hold ``store.lease(root)`` across the fetch and the use.

        ``max_bytes`` bounds the block bytes received from all peers together,
        counted as they arrive (not by the sizes links declare, which a peer
        chooses): past it the fetch fails ``too_large``.

        Raises StorageError: ``no_peers``, ``fetch_failed``, ``block_unavailable``,
        ``too_large``, or the store's own (``store_full``, …); blocks stored before an error stay
        (unpinned: whole and valid, and ``gc`` removes them).
        """
        root = canonical(root)
        guard = self.store.writing()
        await self._run_blocking(guard.__enter__)
        try:
            result = await self._fetch(root, peers, progress, max_bytes)
            if pin:
                await self._run_blocking(self.store.pin, root)
            return result
        finally:
            guard.__exit__(None, None, None)

    async def _fetch(
        self, root: str, peers: Sequence[str], progress, max_bytes: int | None = None
    ) -> FetchResult:
        missing = await self._run_blocking(self.store.missing, root)
        fetch = FetchState(self.settings, progress, max_bytes=max_bytes)
        if not missing:
            return FetchResult(root, 0, 0, {}, {})
        chosen = list(dict.fromkeys(peers))[: self.settings.max_peers]
        if not chosen:
            raise StorageError(
                f"{len(missing)} block(s) of {root} are not here and no peer is connected",
                code="no_peers",
                hint="connect to a peer that has the CID, or check `mask peers`",
            )
        for cid in missing:
            fetch.enqueue(cid, NODE_HINT if parse_cid(cid).codec == DAG_PB else DEFAULT_HINT)
        fetch.active.update(chosen)
        fetch.report()
        async with trio.open_nursery() as nursery:
            for peer in chosen:
                nursery.start_soon(self._peer_session, fetch, peer, root)
            nursery.start_soon(self._watch, fetch, nursery.cancel_scope)
        if fetch.error is not None:
            raise fetch.error
        fetch.report()
        return FetchResult(root, fetch.blocks_done, fetch.bytes_done, fetch.used, fetch.dropped)

    async def _watch(self, fetch: FetchState, scope: trio.CancelScope) -> None:
        while not fetch.finished():
            await fetch.changed.wait()
        if fetch.error is not None:
            scope.cancel()

    async def _peer_session(self, fetch: FetchState, peer: str, root: str) -> None:
        s = self.settings
        try:
            with trio.fail_after(s.open_timeout_s):
                framed = FramedStream(await self.open_stream(peer))
                await widen_receive_window(framed.stream, s.receive_window)
        except trio.TooSlowError:
            self._drop(fetch, peer, "timeout opening a stream")
            return
        except Exception as exc:  # opening a libp2p stream raises many types
            self._drop(fetch, peer, f"cannot open a stream: {type(exc).__name__}: {exc}")
            return
        session = _Session()
        reservations: set[_Reservation] = set()
        try:
            waiting: dict[int, trio.MemorySendChannel] = {}
            to_store, from_wire = trio.open_memory_channel[_Arrival](math.inf)
            stored_all = trio.Event()
            async with trio.open_nursery() as nursery:
                session.scope = nursery.cancel_scope
                nursery.start_soon(session.guard, self._read_answers, framed, waiting)
                nursery.start_soon(
                    session.guard, self._storer, fetch, from_wire, peer, root, stored_all
                )
                async with to_store, trio.open_nursery() as requesters:
                    for _ in range(s.requests_per_peer):
                        requesters.start_soon(
                            session.guard,
                            self._requester,
                            fetch,
                            framed,
                            waiting,
                            peer,
                            to_store.clone(),
                            reservations,
                        )
                await stored_all.wait()
                nursery.cancel_scope.cancel()
        finally:
            for reservation in list(reservations):
                reservation.release_all()
            if session.failure is None and fetch.error is None:
                await framed.close()
            else:
                await framed.reset()
        if session.failure is not None:
            self._peer_failed(fetch, peer, session.failure)
        else:
            fetch.retire(peer)

    def _peer_failed(self, fetch: FetchState, peer: str, exc: Exception) -> None:
        if isinstance(exc, _PeerDropped):
            self._drop(fetch, peer, exc.reason)
        elif isinstance(exc, StreamBroken | trio.BrokenResourceError | trio.ClosedResourceError):
            self._drop(fetch, peer, f"stream failed: {exc}")
        elif isinstance(exc, FrameError):
            self.penalise(peer, "block_protocol")
            self._drop(fetch, peer, f"protocol violation: {exc}")
        elif isinstance(exc, StorageError) and exc.code in ("cid_invalid", "dag_invalid"):
            self.penalise(peer, "block_protocol")
            self._drop(fetch, peer, f"sent an invalid block: {exc.message}")
        elif isinstance(exc, StorageError):
            fetch.fail(exc)  # our own store's failure (store_full, …) ends the fetch
        else:
            log.error("fetch from %s failed unexpectedly", peer, exc_info=exc)
            self._drop(fetch, peer, f"{type(exc).__name__}: {exc}")

    def _drop(self, fetch: FetchState, peer: str, reason: str) -> None:
        self.stats.dropped_peers += 1
        log.info("fetch: dropping peer %s: %s", peer, reason)
        fetch.drop_peer(peer, reason)
        for cid, owner in list(fetch.inflight.items()):
            if owner == peer:
                fetch.requeue(cid, DEFAULT_HINT, peer)

    async def _read_answers(self, framed: FramedStream, waiting: dict) -> None:
        while True:
            msg = await framed.receive()
            if msg is None:
                raise StreamBroken("peer closed the stream")
            if not isinstance(msg, Blocks | DontHave):
                raise FrameError("unexpected", type(msg).__name__)
            channel = waiting.get(msg.req_id)
            if channel is None:
                raise FrameError("unsolicited", f"answer to unknown request {msg.req_id}")
            await channel.send(msg)

    async def _requester(
        self, fetch, framed, waiting, peer: str, to_store, reservations: set
    ) -> None:
        """Ask this peer for queued blocks, one want at a time, and hand what comes
        back to the storer: the next want goes out as soon as this one is answered,
        not stored, so the disk and the wire work at once (the byte budget, released
        as blocks are stored, bounds what waits in between)."""
        s = self.settings
        async with to_store:
            while True:
                while not fetch.finished() and peer in fetch.active:
                    batch = fetch.take(peer)
                    if batch:
                        break
                    await fetch.changed.wait()
                else:
                    return
                hints = dict(batch)
                reservation = _Reservation(
                    self._budget, await self._budget.acquire(sum(hints.values()))
                )
                reservations.add(reservation)
                req_id = next(self._req_ids)
                send, recv = trio.open_memory_channel(MAX_WANT_CIDS + 1)
                waiting[req_id] = send
                try:
                    with trio.move_on_after(s.request_timeout_s) as scope:
                        await framed.send(WantBlocks(req_id=req_id, cids=list(hints)))
                        await self._collect(fetch, recv, hints, peer, reservation, to_store)
                    if scope.cancelled_caught:
                        self.stats.timeouts += 1
                        raise _PeerDropped(f"no full answer within {s.request_timeout_s:g} s")
                finally:
                    del waiting[req_id]

    async def _collect(
        self, fetch: FetchState, recv, hints: dict[str, int], peer, reservation, to_store
    ) -> None:
        """Receive every answer to one want; blocks go to the storer as they come."""
        pending = set(hints)
        while pending:
            msg = await recv.receive()
            if isinstance(msg, DontHave):
                for cid in msg.cids:
                    if cid not in pending:
                        raise FrameError("unsolicited", f"dont_have for {cid}")
                    pending.discard(cid)
                    fetch.requeue(cid, hints[cid], peer, failed=False)
                    reservation.release(hints[cid])
                continue
            for cid, _ in msg.blocks:
                if cid not in pending:
                    raise FrameError("unsolicited", f"block {cid}")
                pending.discard(cid)
            if not fetch.received(sum(len(data) for _, data in msg.blocks)):
                return  # over the fetch's byte budget: it has failed, store nothing more
            to_store.send_nowait(
                _Arrival(msg.blocks, sum(hints[cid] for cid, _ in msg.blocks), reservation)
            )

    async def _storer(self, fetch: FetchState, arrivals, peer, root, done: trio.Event) -> None:
        """Store what arrives from one peer, in batches: one thread hop per batch,
        whose blocks are re-hashed and written in parallel (``BlockStore.put_many``)."""
        s = self.settings
        async with arrivals:
            async for first in arrivals:
                batch = [first]
                size = sum(len(data) for _, data in first.blocks)
                while size < s.store_batch_bytes:
                    try:
                        more = arrivals.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    batch.append(more)
                    size += sum(len(data) for _, data in more.blocks)
                blocks = [block for arrival in batch for block in arrival.blocks]
                try:
                    stored = await self._run_blocking(self._store_blocks, blocks)
                finally:
                    for arrival in batch:
                        arrival.reservation.release(arrival.reserved)
                self._record_stored(fetch, stored, peer, root)
        done.set()

    def _record_stored(self, fetch: FetchState, stored, peer: str, root: str) -> None:
        corrupt = [cid for cid, children, _, _ in stored if children is None]
        for cid, children, size, dag_size in stored:
            if children is None:
                continue
            fetch.delivered(cid, size, peer)
            self.stats.fetched_blocks += 1
            self.stats.fetched_bytes += size
            for child, hint in children:
                fetch.enqueue(child, hint)
            if cid == root:
                fetch.dag_bytes = dag_size
        if corrupt:
            self.stats.corrupt_blocks += len(corrupt)
            log.warning(
                "peer %s sent %d corrupt block(s), first %s", peer, len(corrupt), corrupt[0]
            )
            self.penalise(peer, "block_hash_mismatch")
            raise _PeerDropped(f"sent a block that does not match its CID ({corrupt[0]})")
        fetch._notify()
        fetch.report()

    def _store_blocks(self, blocks) -> list[tuple[str, list | None, int, int]]:
        """In a worker thread: re-hash and store the blocks, list their absent children.

        Returns ``(cid, children, size, dag_size)`` per block: ``children`` is None
        for a block that does not hash to its CID (nothing is stored for it);
        ``dag_size`` is the block's size plus its links' cumulative sizes.
        """
        out: list[tuple[str, list | None, int, int]] = []
        results = self.store.put_many(blocks)
        for (cid, data), result in zip(blocks, results, strict=True):
            if result is None:
                out.append((cid, None, len(data), 0))
                continue
            children: list[tuple[str, int]] = []
            dag_size = len(data)
            if parse_cid(cid).codec == DAG_PB:
                for link in decode_node(data).links:
                    child = cid_to_str(link.hash)
                    dag_size += link.tsize
                    if not self.store.has(child):
                        children.append((child, _child_hint(parse_cid(child).codec, link.tsize)))
            out.append((cid, children, len(data), dag_size))
        return out

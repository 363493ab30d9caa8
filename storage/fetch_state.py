"""The state of fetches in progress: what is queued, in flight, refused, done.

Everything here is synchronous, so each change is atomic under trio; the
exchange's tasks (``storage.exchange``) call it and wait on ``changed``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from protocol.blocks import MAX_WANT_CIDS
from protocol.errors import StorageError
from storage.cid import DAG_PB, parse_cid

DEFAULT_HINT = 262_144  # an unknown block is probably one full chunk
NODE_HINT = 16_384  # a dag-pb file node is ~8 KiB (174 links)


@dataclass(frozen=True, slots=True)
class ExchangeSettings:
    request_timeout_s: float = 10.0
    max_attempts: int = 3
    max_peers: int = 8
    requests_per_peer: int = 4
    want_bytes: int = 2 << 20
    max_inflight_bytes: int = 64 << 20
    frame_bytes: int = 1 << 20  # the server packs blocks into frames of about this
    serve_streams_per_peer: int = 4
    serve_queue: int = 8
    open_timeout_s: float = 5.0
    receive_window: int = 16 << 20  # Yamux credit granted to a peer on a fetch stream
    store_batch_bytes: int = 8 << 20  # the storer writes up to this much per thread hop


@dataclass(frozen=True, slots=True)
class FetchProgress:
    blocks_done: int  # fetched in this call
    bytes_done: int
    blocks_known: int  # fetched + still to fetch, as far as the walk has seen
    dag_bytes: int | None  # the whole DAG's size from its root, once known
    peers: int  # peers still serving this fetch


@dataclass(frozen=True, slots=True)
class FetchResult:
    root: str
    blocks: int
    bytes: int
    peers_used: dict[str, int]  # peer -> blocks it delivered
    peers_dropped: dict[str, str]  # peer -> why


@dataclass
class ExchangeStats:
    served_wants: int = 0
    served_blocks: int = 0
    served_bytes: int = 0
    served_dont_have: int = 0
    refused_streams: int = 0
    bad_frames: int = 0
    fetched_blocks: int = 0
    fetched_bytes: int = 0
    corrupt_blocks: int = 0
    timeouts: int = 0
    dropped_peers: int = 0


class ByteBudget:
    """Bytes asked for and not yet stored, summed over every peer of every fetch."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.free = total
        self._changed = trio.Event()

    async def acquire(self, n: int) -> int:
        n = min(n, self.total)
        while self.free < n:
            await self._changed.wait()
        self.free -= n
        return n

    def release(self, n: int) -> None:
        self.free += n
        self._changed.set()
        self._changed = trio.Event()


ProgressFn = Callable[[FetchProgress], None]


@dataclass
class FetchState:
    """One fetch's shared state; every change is sync, so atomic under trio."""

    settings: ExchangeSettings
    progress: ProgressFn | None
    nodes: deque = field(default_factory=deque)  # (cid, hint): dag-pb first (more work)
    leaves: deque = field(default_factory=deque)
    queued: set[str] = field(default_factory=set)
    inflight: dict[str, str] = field(default_factory=dict)  # cid -> peer
    excluded: dict[str, set[str]] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)
    active: set[str] = field(default_factory=set)
    dropped: dict[str, str] = field(default_factory=dict)
    used: dict[str, int] = field(default_factory=dict)
    blocks_done: int = 0
    bytes_done: int = 0
    dag_bytes: int | None = None
    error: StorageError | None = None
    changed: trio.Event = field(default_factory=trio.Event)
    max_bytes: int | None = None  # block bytes this fetch may receive, from all peers
    bytes_received: int = 0

    def _notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def finished(self) -> bool:
        return self.error is not None or not (self.queued or self.inflight)

    def enqueue(self, cid: str, hint: int) -> None:
        if cid in self.queued or cid in self.inflight:
            return
        self.queued.add(cid)
        (self.nodes if parse_cid(cid).codec == DAG_PB else self.leaves).append((cid, hint))

    def take(self, peer: str) -> list[tuple[str, int]]:
        """Up to ``want_bytes`` of queued blocks this peer has not refused."""
        batch: list[tuple[str, int]] = []
        budget = self.settings.want_bytes
        for queue in (self.nodes, self.leaves):
            skipped = []
            while queue and budget > 0 and len(batch) < MAX_WANT_CIDS:
                cid, hint = queue.popleft()
                if peer in self.excluded.get(cid, ()):
                    skipped.append((cid, hint))
                    if len(skipped) > 4 * MAX_WANT_CIDS:
                        break
                    continue
                batch.append((cid, hint))
                budget -= hint
            queue.extendleft(reversed(skipped))
        for cid, _ in batch:
            self.queued.discard(cid)
            self.inflight[cid] = peer
        return batch

    def requeue(self, cid: str, hint: int, peer: str, *, failed: bool = True) -> None:
        """A block ``peer`` did not deliver: try it elsewhere.

        ``failed``: the peer failed (timeout, broken stream, corrupt data), which
        counts against the block's attempt limit; a plain "don't have" does not.
        """
        if self.inflight.get(cid) == peer:
            del self.inflight[cid]
        self.excluded.setdefault(cid, set()).add(peer)
        tries = self.attempts.get(cid, 0) + failed
        self.attempts[cid] = tries
        if tries >= self.settings.max_attempts:
            self.fail(
                StorageError(
                    f"block {cid} could not be fetched after {tries} attempts",
                    code="fetch_failed",
                    hint="the peers that have it are failing or slow; try again later",
                )
            )
            return
        self.enqueue(cid, hint)
        self._check_servable()
        self._notify()

    def delivered(self, cid: str, size: int, peer: str) -> None:
        self.inflight.pop(cid, None)
        self.excluded.pop(cid, None)
        self.blocks_done += 1
        self.bytes_done += size
        self.used[peer] = self.used.get(peer, 0) + 1

    def retire(self, peer: str) -> None:
        """The peer's part is over because the fetch is (not a failure)."""
        self.active.discard(peer)
        self._notify()

    def drop_peer(self, peer: str, reason: str) -> None:
        if peer in self.active:
            self.active.discard(peer)
            self.dropped[peer] = reason
        self._check_servable()
        self._notify()

    def _check_servable(self) -> None:
        if self.error is not None or not (self.queued or self.inflight):
            return
        if not self.active:
            why = "; ".join(f"{p}: {r}" for p, r in sorted(self.dropped.items())) or "none"
            self.fail(
                StorageError(
                    f"no peer left to fetch from ({len(self.queued) + len(self.inflight)} "
                    f"known blocks missing); peers dropped: {why}",
                    code="fetch_failed",
                    hint="check that a peer that has the CID is connected (`mask peers`)",
                )
            )
            return
        for cid in self.queued:
            refused = self.excluded.get(cid, set())
            if self.active <= refused:
                self.fail(
                    StorageError(
                        f"no connected peer has block {cid}",
                        code="block_unavailable",
                        hint="the DAG is incomplete on every peer asked; `mask put` it again "
                        "where the data is, or ask other peers",
                    )
                )
                return

    def received(self, nbytes: int) -> bool:
        """Count block bytes as they arrive (before they are stored); False, and
        the fetch fails ``too_large``, once they pass ``max_bytes``."""
        self.bytes_received += nbytes
        if self.max_bytes is None or self.bytes_received <= self.max_bytes:
            return True
        self.fail(
            StorageError(
                f"the DAG is larger than {self.max_bytes:,} bytes: {self.bytes_received:,}"
                " arrived and it is not complete",
                code="too_large",
                hint="the DAG is bigger than it was said to be, or than this node accepts",
            )
        )
        return False

    def fail(self, error: StorageError) -> None:
        if self.error is None:
            self.error = error
        self._notify()

    def report(self) -> None:
        if self.progress is not None:
            known = self.blocks_done + len(self.queued) + len(self.inflight)
            self.progress(
                FetchProgress(
                    self.blocks_done, self.bytes_done, known, self.dag_bytes, len(self.active)
                )
            )

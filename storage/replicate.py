"""Storage as a resource: ask providers to pin a CID for a while, and host pins.

Requester side (``replicate``): the candidates are the offers in the book with
``storage_mb`` large enough for the DAG, connected, not us, cheapest
``storage_gb_hour`` first (ties by peer id, so the choice is deterministic).
Each gets a ``PinRequest`` on ``/mask/blocks/1``; the provider fetches the DAG
from us and pins it, then answers. Up to ``copies`` acceptances are recorded
in ``<data_dir>/storage/replicas.jsonl``: what is owed to whom, for the ledger
issue to settle. Refusals are tried past, in price order.

Provider side (``on_pin_request``): refuse when we sell no storage, the DAG
does not fit what we sell (minus what we already host), or the duration is
out of range; else fetch it from the requester, measure it, pin it, record it
in ``<data_dir>/storage/hosted.jsonl``, and unpin it when it expires.

The requester's ``size`` is a claim. The fetch stops as soon as the DAG is
seen to be larger than that claim plus ``PIN_SLACK_BYTES`` (by the root's own
cumulative size, else by the bytes that arrived) or than the room we sell. The
check runs after each batch the exchange stores, so a liar whose link sizes
lie too makes us store at most one batch and one frame past the limit
(``store_batch_bytes`` + ``MAX_FRAME_BYTES``), not its DAG. After the fetch the
DAG is measured block by block (each distinct block once) and that size is
what is checked, recorded and billed; a refused DAG is left unpinned for gc.
While a pin is fetched, what it may grow to is set aside from the room. A CID that was pinned here
before the request (the operator's own data) keeps its pin when the contract
ends; a second contract for a hosted CID extends, never shortens, its stay.

Both files are append-only JSON lines, fsynced per record: an operator can
read them, and a crash loses at most the record being written.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from protocol.blocks import PinRequest, PinResponse
from protocol.errors import StorageError
from storage.blockstore import BlockStore
from storage.cid import DAG_PB, RAW, canonical, cid_to_str, parse_cid
from storage.dagpb import decode_node
from storage.fetch_state import FetchProgress
from storage.streams import FramedStream

log = logging.getLogger("maskd.storage.replicate")

GB = 10**9
MAX_DURATION_S = 365 * 86400.0
PIN_TIMEOUT_BASE_S = 30.0
PIN_TIMEOUT_PER_MB_S = 0.1  # a provider fetches at 10 MB/s at worst before we give up
#: A DAG may be this much larger than its requester said before we stop fetching.
PIN_SLACK_BYTES = 1 << 20


def owed(size: int, duration_s: float, price_gb_hour: str) -> int:
    """Token base units for ``size`` bytes over ``duration_s``, rounded up."""
    return math.ceil(size * int(price_gb_hour) * duration_s / (GB * 3600))


def dag_size(store: BlockStore, cid: str) -> int:
    """The DAG's cumulative size from its root block (exact for UnixFS DAGs)."""
    data = store.get(cid)
    if parse_cid(cid).codec != DAG_PB:
        return len(data)
    return len(data) + sum(link.tsize for link in decode_node(data).links)


def measure_dag(store: BlockStore, cid: str, limit: int) -> int:
    """The DAG's size as stored here: each distinct block once, read from disk.

    Stops as soon as the sum passes ``limit`` (returning it, > ``limit``), so a
    huge DAG already in the store costs no more to measure than a small one.
    """
    total = 0
    seen: set[str] = set()
    stack = [canonical(cid)]
    while stack:
        key = stack.pop()
        if key in seen:
            continue
        seen.add(key)
        codec = parse_cid(key).codec
        if codec not in (DAG_PB, RAW):
            raise StorageError(f"cannot measure {key}: codec 0x{codec:x}", code="unsupported_codec")
        data = store.get(key)
        total += len(data)
        if total > limit:
            return total
        if codec == DAG_PB:
            stack.extend(cid_to_str(link.hash) for link in decode_node(data).links)
    return total


class _SizeExceeded(StorageError):
    code = "size_mismatch"


def _size_check(declared_limit: int, room: int) -> Callable[[int], None]:
    """Raise when ``n`` bytes is more than the requester declared (+slack) or we sell."""

    def check(n: int) -> None:
        if n > declared_limit:
            raise _SizeExceeded(
                f"the DAG is larger than its requester declared ({n:,} > {declared_limit:,} bytes)",
                hint="the requester must send the DAG's real cumulative size",
            )
        if n > room:
            raise _SizeExceeded(
                f"the DAG does not fit the storage left ({n:,} > {room:,} bytes)",
                code="too_large",
                hint="ask a provider with more storage",
            )

    return check


def _append(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _read(path: Path) -> list[dict]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            log.warning("%s: skipping a torn line (a crash while appending)", path)
    return out


class Replicator:
    def __init__(
        self,
        store: BlockStore,
        exchange,
        data_dir: Path,
        *,
        peer_id: str,
        open_stream: Callable[[str], Awaitable[Any]],
        connected_peers: Callable[[], list[str]],
        list_offers: Callable[[], list],
        storage_mb: int,
        price_gb_hour: str,
        clock: Callable[[], float],
        limiter: trio.CapacityLimiter,
    ) -> None:
        self.store = store
        self.exchange = exchange
        self.peer_id = peer_id
        self.open_stream = open_stream
        self.connected_peers = connected_peers
        self.list_offers = list_offers
        self.storage_mb = storage_mb
        self.price_gb_hour = price_gb_hour
        self.clock = clock
        self.limiter = limiter
        self.replicas_file = data_dir / "storage" / "replicas.jsonl"
        self.hosted_file = data_dir / "storage" / "hosted.jsonl"
        now = clock()
        self.hosted: dict[str, dict] = {}
        for rec in _read(self.hosted_file):
            if rec.get("event") == "pinned" and rec["expires_at"] > now:
                self._host(rec)
            elif rec.get("event") == "expired":
                self.hosted.pop(rec["cid"], None)
        self._hosted_changed = trio.Event()
        self._reserved_bytes = 0  # set aside for pins being fetched
        self._req_ids = iter(range(1, 1 << 62))

    async def _blocking(self, fn, *args):
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    # ------------------------------------------------------------ requester
    def candidates(self, size: int) -> list[tuple[str, str]]:
        connected = set(self.connected_peers())
        out = []
        for offer in self.list_offers():
            if offer.peer_id == self.peer_id or offer.peer_id not in connected:
                continue
            if offer.storage_mb <= 0 or offer.storage_mb * (1 << 20) < size:
                continue
            out.append((int(offer.prices.storage_gb_hour), offer.peer_id))
        return [(peer, str(price)) for price, peer in sorted(out)]

    async def replicate(self, cid: str, copies: int, duration_s: float) -> dict:
        size = await self._blocking(dag_size, self.store, cid)
        if await self._blocking(self.store.missing, cid):
            raise StorageError(
                f"{cid} is not complete in the local store",
                code="dag_incomplete",
                hint="`mask put` it (or `mask get` it) on this node first",
            )
        candidates = self.candidates(size)
        if not candidates:
            raise StorageError(
                f"no connected provider sells storage for {size:,} bytes",
                code="no_providers",
                hint="providers set offers.storage_mb > 0; see `mask offers`",
            )
        placed: list[dict] = []
        refused: dict[str, str] = {}
        for peer, _ in candidates:
            if len(placed) >= copies:
                break
            response = await self._ask(peer, cid, size, duration_s, refused)
            if response is None:
                continue
            record = {
                "event": "replica",
                "ts": self.clock(),
                "provider": peer,
                "cid": cid,
                "size": size,
                "duration_s": duration_s,
                "price_gb_hour": response.price_gb_hour,
                "owed": str(owed(size, duration_s, response.price_gb_hour)),
                "expires_at": response.expires_at,
            }
            await self._blocking(_append, self.replicas_file, record)
            placed.append(record)
        return {
            "cid": cid,
            "size": size,
            "requested": copies,
            "placed": placed,
            "refused": refused,
            "owed_total": str(sum(int(r["owed"]) for r in placed)),
        }

    async def _ask(self, peer, cid, size, duration_s, refused) -> PinResponse | None:
        req = PinRequest(req_id=next(self._req_ids), cid=cid, size=size, duration_s=duration_s)
        timeout = PIN_TIMEOUT_BASE_S + PIN_TIMEOUT_PER_MB_S * size / 1e6
        framed = None
        try:
            with trio.fail_after(timeout):
                framed = FramedStream(await self.open_stream(peer))
                await framed.send(req)
                answer = await framed.receive()
        except trio.TooSlowError:
            refused[peer] = f"no answer within {timeout:.0f} s"
            return None
        except Exception as exc:  # a peer's stream can fail in many ways
            refused[peer] = f"{type(exc).__name__}: {exc}"
            return None
        finally:
            if framed is not None:
                await framed.close()
        if not isinstance(answer, PinResponse) or answer.req_id != req.req_id:
            refused[peer] = "answered something other than a pin response"
            return None
        if not answer.accepted:
            refused[peer] = answer.reason or "refused"
            return None
        return answer

    # ------------------------------------------------------------- provider
    def _hosted_bytes(self) -> int:
        return sum(rec["size"] for rec in self.hosted.values())

    def _host(self, record: dict) -> None:
        """Hold ``record``'s CID until the latest expiry of any contract for it."""
        held = self.hosted.get(record["cid"])
        if held is None:
            self.hosted[record["cid"]] = record
        else:  # several contracts for one CID: one pin, held for the longest stay
            self.hosted[record["cid"]] = {
                **held,
                "expires_at": max(held["expires_at"], record["expires_at"]),
            }

    async def on_pin_request(self, peer: str, req: PinRequest) -> PinResponse:
        def no(reason: str) -> PinResponse:
            log.info("refusing to pin %s for %s: %s", req.cid, peer, reason)
            return PinResponse(req_id=req.req_id, accepted=False, reason=reason)

        if self.storage_mb <= 0:
            return no("no_storage")
        if not 0 < req.duration_s <= MAX_DURATION_S:
            return no("bad_duration")
        try:
            cid = canonical(req.cid)
        except StorageError:
            return no("cid_invalid")
        room = (self.storage_mb << 20) - self._hosted_bytes() - self._reserved_bytes
        if req.size < 0 or req.size > room:
            return no("too_large")
        declared_limit = req.size + PIN_SLACK_BYTES
        # what this pin may grow to is set aside while it is fetched, so pins
        # fetched at the same time cannot together exceed what we sell
        reserved = min(declared_limit, room)
        self._reserved_bytes += reserved
        sources = [p for p in req.sources if p != self.peer_id][:8] or [peer]
        try:
            size, blocks, was_pinned = await self._fetch_measured(
                cid, sources, declared_limit=declared_limit, room=room
            )
        except StorageError as exc:
            return no(exc.code)
        finally:
            self._reserved_bytes -= reserved
        # pinned before and not by a contract of ours: the operator's, kept at expiry
        kept_pin = was_pinned and cid not in self.hosted
        expires_at = self.clock() + req.duration_s
        record = {
            "event": "pinned",
            "ts": self.clock(),
            "requester": peer,
            "cid": cid,
            "size": size,
            "declared_size": req.size,
            "duration_s": req.duration_s,
            "price_gb_hour": self.price_gb_hour,
            "owed": str(owed(size, req.duration_s, self.price_gb_hour)),
            "expires_at": expires_at,
            "fetched_blocks": blocks,
            "kept_pin": kept_pin,
        }
        await self._blocking(_append, self.hosted_file, record)
        self._host(record)
        self._hosted_changed.set()
        return PinResponse(
            req_id=req.req_id,
            accepted=True,
            price_gb_hour=self.price_gb_hour,
            expires_at=expires_at,
        )

    async def _fetch_measured(
        self, cid: str, sources: list[str], *, declared_limit: int, room: int
    ) -> tuple[int, int, bool]:
        """Fetch, measure and pin the DAG; ``(size, blocks fetched, pinned already)``.

        ``check`` ends the fetch as soon as the DAG is seen to be too large: by the
        size its root claims (honest DAGs), else by the bytes that arrived (DAGs
        whose link sizes lie). The lease keeps a gc off the fetched blocks until
        they are measured and pinned; refused blocks are left unpinned for gc.
        """

        check = _size_check(declared_limit, room)

        def on_progress(p: FetchProgress) -> None:
            check(max(p.bytes_done, p.dag_bytes or 0))

        lease = self.store.lease(cid)
        await self._blocking(lease.__enter__)
        try:
            limit = min(declared_limit, room)
            try:
                # bytes counted as they arrive, whatever the DAG's links claim
                result = await self.exchange.fetch_dag(
                    cid, sources, progress=on_progress, max_bytes=limit
                )
            except StorageError as exc:
                if exc.code == "too_large":  # over the budget: say which bound it broke
                    check(limit + 1)
                raise
            size = await self._blocking(measure_dag, self.store, cid, limit)
            check(size)
            was_pinned = cid in await self._blocking(self.store.pins)
            if not was_pinned:
                await self._blocking(self.store.pin, cid)
        finally:
            lease.__exit__(None, None, None)
        return size, result.blocks, was_pinned

    async def expiry_loop(self) -> None:
        """Unpin hosted replicas when their time is up (gc then frees them)."""
        while True:
            now = self.clock()
            for cid, rec in list(self.hosted.items()):
                if rec["expires_at"] <= now:
                    del self.hosted[cid]
                    if not rec.get("kept_pin"):  # never the operator's own pin
                        await self._blocking(self.store.unpin, cid)
                    await self._blocking(
                        _append, self.hosted_file, {"event": "expired", "cid": cid, "ts": now}
                    )
            nxt = min((r["expires_at"] for r in self.hosted.values()), default=now + 60)
            with trio.move_on_after(max(0.5, min(60.0, nxt - now))):
                await self._hosted_changed.wait()
                self._hosted_changed = trio.Event()

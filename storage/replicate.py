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
out of range; else fetch it from the requester, pin it, record it in
``<data_dir>/storage/hosted.jsonl``, and unpin it when it expires.

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
from storage.cid import DAG_PB, parse_cid
from storage.dagpb import decode_node
from storage.streams import FramedStream

log = logging.getLogger("maskd.storage.replicate")

GB = 10**9
MAX_DURATION_S = 365 * 86400.0
PIN_TIMEOUT_BASE_S = 30.0
PIN_TIMEOUT_PER_MB_S = 0.1  # a provider fetches at 10 MB/s at worst before we give up


def owed(size: int, duration_s: float, price_gb_hour: str) -> int:
    """Token base units for ``size`` bytes over ``duration_s``, rounded up."""
    return math.ceil(size * int(price_gb_hour) * duration_s / (GB * 3600))


def dag_size(store: BlockStore, cid: str) -> int:
    """The DAG's cumulative size from its root block (exact for UnixFS DAGs)."""
    data = store.get(cid)
    if parse_cid(cid).codec != DAG_PB:
        return len(data)
    return len(data) + sum(link.tsize for link in decode_node(data).links)


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
                self.hosted[rec["cid"]] = rec
            elif rec.get("event") == "expired":
                self.hosted.pop(rec["cid"], None)
        self._hosted_changed = trio.Event()
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

    async def on_pin_request(self, peer: str, req: PinRequest) -> PinResponse:
        def no(reason: str) -> PinResponse:
            log.info("refusing to pin %s for %s: %s", req.cid, peer, reason)
            return PinResponse(req_id=req.req_id, accepted=False, reason=reason)

        if self.storage_mb <= 0:
            return no("no_storage")
        if not 0 < req.duration_s <= MAX_DURATION_S:
            return no("bad_duration")
        if req.size < 0 or req.size + self._hosted_bytes() > self.storage_mb << 20:
            return no("too_large")
        sources = [p for p in req.sources if p != self.peer_id][:8] or [peer]
        try:
            # pinned inside the fetch's writing() guard: a gc cannot slip in between
            result = await self.exchange.fetch_dag(req.cid, sources, pin=True)
        except StorageError as exc:
            return no(exc.code)
        expires_at = self.clock() + req.duration_s
        record = {
            "event": "pinned",
            "ts": self.clock(),
            "requester": peer,
            "cid": req.cid,
            "size": req.size,
            "duration_s": req.duration_s,
            "price_gb_hour": self.price_gb_hour,
            "owed": str(owed(req.size, req.duration_s, self.price_gb_hour)),
            "expires_at": expires_at,
            "fetched_blocks": result.blocks,
        }
        await self._blocking(_append, self.hosted_file, record)
        self.hosted[req.cid] = record
        self._hosted_changed.set()
        return PinResponse(
            req_id=req.req_id,
            accepted=True,
            price_gb_hour=self.price_gb_hour,
            expires_at=expires_at,
        )

    async def expiry_loop(self) -> None:
        """Unpin hosted replicas when their time is up (gc then frees them)."""
        while True:
            now = self.clock()
            for cid, rec in list(self.hosted.items()):
                if rec["expires_at"] <= now:
                    del self.hosted[cid]
                    await self._blocking(self.store.unpin, cid)
                    await self._blocking(
                        _append, self.hosted_file, {"event": "expired", "cid": cid, "ts": now}
                    )
            nxt = min((r["expires_at"] for r in self.hosted.values()), default=now + 60)
            with trio.move_on_after(max(0.5, min(60.0, nxt - now))):
                await self._hosted_changed.wait()
                self._hosted_changed = trio.Event()

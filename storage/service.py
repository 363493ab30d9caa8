"""The node's storage service: block store, exchange, IPFS backend, RPC methods.

Owns ``<data_dir>/blocks`` (the ``BlockStore``, quota from the config), the
``BlockExchange`` serving and fetching over ``/mask/blocks/1``, the optional
Kubo backend, and replication (``replicate.py``). The node hands it plain
callables (open a stream, list peers, penalise, publish an event, look up an
offer), so this package imports nothing of p2p or the scheduler.

RPC methods (params and results are JSON objects; errors are StorageError):

- ``v1.storage.put``   {path, encrypt_to?} -> {cid, size, blocks, encrypted_to}
- ``v1.storage.get``   {cid, dest, peers?, pin?, symlinks?} -> {cid, dest, size, fetched_blocks, …}
  (the export is bounded by ``exporter.DEFAULT_LIMITS``; a DAG's symlinks are
  refused unless ``symlinks``, and then written only when they stay inside dest)
- ``v1.storage.pin`` / ``v1.storage.unpin`` {cid}
- ``v1.storage.gc``    {} -> {blocks, bytes}
- ``v1.storage.stat``  {} -> {blocks, bytes, pinned_roots, quota_bytes, backend, exchange}
- ``v1.storage.replicate`` {cid, copies, duration_s} -> {placed, refused, owed}

Paths are on the daemon's machine (the CLI shares it) and must be absolute.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import trio

from protocol.blocks import BLOCKS_PROTOCOL
from protocol.errors import StorageError
from protocol.supervisor import Supervisor
from storage.blockstore import BlockStore
from storage.cid import canonical
from storage.crypto import encrypt_stream
from storage.exchange import BlockExchange, ExchangeSettings, FetchProgress
from storage.exporter import DEFAULT_LIMITS, ExportLimits, export_to_path
from storage.ipfs import KuboClient
from storage.replicate import Replicator

log = logging.getLogger("maskd.storage")

DISK_RESERVE_BYTES = 64 << 20  # `mask get` leaves at least this much free
DISK_RESERVE_INODES = 1024


def export_within_disk(cid: str, get_block, dest: str, **kw) -> None:
    """``export_to_path`` under :func:`disk_limits`; a refusal says what is free."""
    limits = disk_limits(dest)
    try:
        export_to_path(cid, get_block, dest, limits=limits, **kw)
    except StorageError as exc:
        if exc.code != "export_limit":
            raise
        raise StorageError(
            exc.message,
            code=exc.code,
            hint=f"the disk under {os.path.dirname(dest)} has {limits.max_bytes:,} bytes and"
            f" {limits.max_entries:,} entries free for it (less a reserve); free some space"
            " or choose another -o",
        ) from None


def disk_limits(dest: str) -> ExportLimits:
    """The export limits for writing under ``dest``: the defaults, lowered to what
    its filesystem has free, so a DAG that declares more is refused before
    anything is written (a decompression bomb cannot fill the disk)."""
    st = os.statvfs(os.path.dirname(os.path.abspath(dest)))
    free = st.f_bavail * st.f_frsize - DISK_RESERVE_BYTES
    entries = DEFAULT_LIMITS.max_entries
    if st.f_files:  # filesystems without an inode table report 0
        entries = min(entries, st.f_favail - DISK_RESERVE_INODES)
    return ExportLimits(
        max_bytes=max(0, min(DEFAULT_LIMITS.max_bytes, free)),
        max_entries=max(1, entries),
        max_depth=DEFAULT_LIMITS.max_depth,
        max_blocks=DEFAULT_LIMITS.max_blocks,
    )


PROGRESS_INTERVAL_S = 0.25  # most storage.progress events per second: 4 per operation


def _abs_path(params: dict, key: str) -> str:
    value = params.get(key)
    if not isinstance(value, str) or not value:
        raise StorageError(f"missing parameter {key!r}", code="invalid_params")
    if not os.path.isabs(value):
        raise StorageError(
            f"{key} {value!r} is not an absolute path",
            code="invalid_params",
            hint="the daemon resolves paths on its own; send an absolute path",
        )
    return value


def _cid_param(params: dict) -> str:
    value = params.get("cid")
    if not isinstance(value, str):
        raise StorageError("missing parameter 'cid'", code="invalid_params")
    return canonical(value)


def peer_of(stream) -> str:
    """The remote peer id of a py-libp2p stream (duck-typed: no libp2p import)."""
    return stream.muxed_conn.peer_id.to_base58()


class StorageService:
    def __init__(
        self,
        settings,  # maskd.config.StorageConfig
        data_dir: Path,
        *,
        peer_id: str,
        open_stream: Callable[[str, str], Awaitable[Any]],
        connected_peers: Callable[[], list[str]],
        penalise: Callable[[str, str], None],
        publish: Callable[[dict], None],
        lookup_offer: Callable[[str], Any],
        list_offers: Callable[[], list],
        storage_mb: int = 0,
        price_gb_hour: str = "0",
        clock: Callable[[], float] = time.time,
        fsync: bool = True,
        kubo_transport=None,
        supervisor: Supervisor | None = None,
    ) -> None:
        self.supervisor = supervisor or Supervisor("storage", logger=log)
        self.settings = settings
        self.data_dir = Path(data_dir)
        self.peer_id = peer_id
        self.connected_peers = connected_peers
        self.publish = publish
        self.lookup_offer = lookup_offer
        self.clock = clock
        self.store = BlockStore(
            self.data_dir / "blocks", quota_bytes=settings.quota_mb << 20, fsync=fsync
        )
        self.kubo: KuboClient | None = None
        if settings.backend == "ipfs":
            self.kubo = KuboClient(
                settings.ipfs_api, timeout=settings.ipfs_timeout_s, transport=kubo_transport
            )
        self.limiter = trio.CapacityLimiter(8)
        self.exchange = BlockExchange(
            self.store,
            lambda peer: open_stream(peer, BLOCKS_PROTOCOL),
            penalise=penalise,
            source=self._source,
            settings=ExchangeSettings(
                request_timeout_s=settings.fetch_timeout_s,
                max_peers=settings.fetch_max_peers,
                requests_per_peer=settings.fetch_requests_per_peer,
                max_inflight_bytes=settings.fetch_inflight_mb << 20,
                serve_streams_per_peer=settings.serve_streams_per_peer,
            ),
            thread_limiter=self.limiter,
        )
        self.replicator = Replicator(
            self.store,
            self.exchange,
            self.data_dir,
            peer_id=peer_id,
            open_stream=lambda peer: open_stream(peer, BLOCKS_PROTOCOL),
            connected_peers=connected_peers,
            list_offers=list_offers,
            storage_mb=storage_mb,
            price_gb_hour=price_gb_hour,
            clock=clock,
            limiter=self.limiter,
        )
        self.exchange.on_pin_request = self.replicator.on_pin_request
        self.served_corrupt = 0

    # ------------------------------------------------------------ running
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Check the IPFS backend (a mismatch is a start-up error), then expire
        hosted replicas until cancelled."""
        if self.kubo is not None:
            cid = await self._blocking(self.kubo.probe)
            log.info("IPFS backend at %s computes our CIDs (probe %s)", self.kubo.api, cid)
        task_status.started()
        await self.supervisor.keep_running("pin_expiry_loop", self.replicator.expiry_loop)

    async def handle_stream(self, stream) -> None:
        """The libp2p handler for ``/mask/blocks/1``."""
        await self.exchange.handle_stream(stream, peer_of(stream))

    async def _blocking(self, fn, *args):
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    def _source(self, cids: list[str]) -> list[tuple[str, bytes | None]]:
        """Blocks for a peer, re-hashed when ``verify_on_serve``; Kubo as a fallback."""
        out: list[tuple[str, bytes | None]] = []
        for cid in cids:
            data = None
            try:
                data = self.store.get(cid, verify=self.settings.verify_on_serve)
            except StorageError as exc:
                if exc.code == "block_corrupt":
                    self.served_corrupt += 1
                    log.warning("not serving %s: corrupt on disk", cid)
                elif self.kubo is not None:
                    try:
                        data = self.kubo.block_get(cid)
                    except StorageError:
                        data = None
            out.append((cid, data))
        return out

    # ---------------------------------------------------------------- RPC
    def rpc_methods(self) -> dict[str, Callable[[dict], Awaitable[Any]]]:
        return {
            "v1.storage.put": self.put,
            "v1.storage.get": self.get,
            "v1.storage.pin": self.pin,
            "v1.storage.unpin": self.unpin,
            "v1.storage.gc": self.gc,
            "v1.storage.stat": self.stat,
            "v1.storage.replicate": self.replicate,
        }

    async def put(self, params: dict) -> dict:
        path = _abs_path(params, "path")
        if not os.path.lexists(path):
            raise StorageError(f"{path} does not exist", code="path_not_found")
        encrypt_to = params.get("encrypt_to") or None
        if encrypt_to is None:
            cid, size, blocks = await self._add(path)
        else:
            recipient = self._x25519_of(encrypt_to)
            if os.path.isdir(path):
                raise StorageError(
                    f"{path} is a directory; --encrypt-to takes one file",
                    code="invalid_params",
                    hint="pack the directory first (tar), then put the archive",
                )
            tmp_dir = self.data_dir / "tmp"
            tmp_dir.mkdir(exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=tmp_dir, prefix="enc-")
            try:
                with os.fdopen(fd, "wb") as dst, open(path, "rb") as src:
                    await self._blocking(encrypt_stream, src, dst, recipient)
                cid, size, blocks = await self._add(tmp)
            finally:
                os.unlink(tmp)
        self.publish({"type": "storage.put", "cid": cid, "size": size})
        return {"cid": cid, "size": size, "blocks": blocks, "encrypted_to": encrypt_to}

    async def _add(self, path: str) -> tuple[str, int, int | None]:
        if self.kubo is not None:
            cid = await self._blocking(self.kubo.add_path, path)
            return cid, _path_size(path), None
        result = await self._blocking(self.store.add_path, path)
        return result.cid, result.size, result.blocks

    def _x25519_of(self, peer_id: str) -> bytes:
        offer = self.lookup_offer(peer_id)
        if offer is None:
            raise StorageError(
                f"no offer from peer {peer_id} is known, so its encryption key is not",
                code="unknown_peer",
                hint="the recipient must be online and publishing an offer (`mask offers`)",
            )
        return offer.identity.x25519

    async def get(self, params: dict) -> dict:
        """Fetch a DAG and write it to ``dest``: no links unless asked (then only
        inside ``dest``), and never more than the disk under ``dest`` has free."""
        cid = _cid_param(params)
        dest = _abs_path(params, "dest")
        symlinks = params.get("symlinks", False)
        if not isinstance(symlinks, bool):
            raise StorageError("symlinks must be true or false", code="invalid_params")
        if os.path.lexists(dest):
            raise StorageError(f"{dest} already exists", code="path_exists", hint="choose a new -o")
        if self.kubo is not None:
            await self._blocking(
                lambda: export_within_disk(cid, self.kubo.block_get, dest, symlinks=symlinks)
            )
            return {"cid": cid, "dest": dest, "size": _path_size(dest), "fetched_blocks": 0}
        peers = params.get("peers") or [p for p in self.connected_peers() if p != self.peer_id]
        last = [0.0]

        def progress(p: FetchProgress) -> None:
            now = self.clock()
            if now - last[0] >= PROGRESS_INTERVAL_S:
                last[0] = now
                self.publish({"type": "storage.progress", "op": "get", "cid": cid, **asdict(p)})

        # The lease keeps the DAG from a gc between the fetch and the end of the
        # export (without ``pin`` nothing else does); ``pin`` is taken inside the
        # fetch's writing() guard, so the pinned DAG is never unprotected either.
        lease = self.store.lease(cid)
        await self._blocking(lease.__enter__)
        try:
            started = time.perf_counter()
            result = await self.exchange.fetch_dag(
                cid, list(peers), progress=progress, pin=bool(params.get("pin"))
            )
            fetched = time.perf_counter()
            self.publish(
                {
                    "type": "storage.progress",
                    "op": "get",
                    "cid": cid,
                    "done": True,
                    "blocks_done": result.blocks,
                    "bytes_done": result.bytes,
                }
            )
            await self._blocking(
                lambda: export_within_disk(
                    cid, self.store.get, dest, verify=False, symlinks=symlinks
                )
            )
        finally:
            lease.__exit__(None, None, None)
        return {
            "fetch_s": round(fetched - started, 4),
            "export_s": round(time.perf_counter() - fetched, 4),
            "cid": cid,
            "dest": dest,
            "size": _path_size(dest),
            "fetched_blocks": result.blocks,
            "fetched_bytes": result.bytes,
            "peers_used": result.peers_used,
            "peers_dropped": result.peers_dropped,
        }

    async def pin(self, params: dict) -> dict:
        cid = _cid_param(params)
        if self.kubo is not None:
            await self._blocking(self.kubo.pin_add, cid)
        else:
            await self._blocking(self.store.pin, cid)
        return {"cid": cid, "pinned": True}

    async def unpin(self, params: dict) -> dict:
        cid = _cid_param(params)
        if self.kubo is not None:
            await self._blocking(self.kubo.pin_rm, cid)
            return {"cid": cid, "unpinned": True}
        return {"cid": cid, "unpinned": await self._blocking(self.store.unpin, cid)}

    async def gc(self, params: dict) -> dict:
        result = await self._blocking(self.store.gc)
        return {"blocks": result.blocks, "bytes": result.bytes}

    async def stat(self, params: dict) -> dict:
        st = await self._blocking(self.store.stat)
        return {
            "blocks": st.blocks,
            "bytes": st.bytes,
            "pinned_roots": st.pinned_roots,
            "quota_bytes": st.quota_bytes,
            "backend": self.settings.backend,
            "ipfs_api": self.kubo.api if self.kubo else None,
            "served_corrupt": self.served_corrupt,
            "exchange": asdict(self.exchange.stats),
            "replicas_hosted": len(self.replicator.hosted),
        }

    async def replicate(self, params: dict) -> dict:
        cid = _cid_param(params)
        copies = params.get("copies", 1)
        duration_s = params.get("duration_s", 24 * 3600.0)
        if not isinstance(copies, int) or not 1 <= copies <= 16:
            raise StorageError("copies must be a whole number from 1 to 16", code="invalid_params")
        if not isinstance(duration_s, int | float) or not 60 <= duration_s <= 365 * 86400:
            raise StorageError("duration_s must be between 60 s and a year", code="invalid_params")
        return await self.replicator.replicate(cid, copies, float(duration_s))


def _path_size(path: str) -> int:
    if not os.path.isdir(path):
        return os.lstat(path).st_size
    total = 0
    for dirpath, _, files in os.walk(path):
        total += sum(os.lstat(os.path.join(dirpath, f)).st_size for f in files)
    return total

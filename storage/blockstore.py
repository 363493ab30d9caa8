"""The node's block store: content-addressed blocks on disk, pins, gc, quota.

Layout under ``root`` (the daemon passes ``<data_dir>/blocks``)::

    root/pins.json            {"version": 1, "pins": [cid, …]}  (recursive pins)
    root/<xy>/<cid>           one file per block, xy = cid[-3:-1]
    root/<xy>/.tmp-*          a write in progress (deleted on open)

The shard is the next-to-last two characters of the base32 CID, as Kubo's
flatfs does: the last character of a 36-byte CID carries only 3 bits.

Crash safety: blocks and the pin file are written with ``fsutil.write_atomic``
(temp file, fsync, rename), so no reader ever sees half a block. A root is
pinned only after every block of its DAG is present (``pin`` checks with
``missing``) and after the shard directories holding them are fsynced, so even
after power loss a pin never points at an incomplete DAG. The counters behind
``stat`` and the quota are rebuilt from the files on open: the directory tree
is the only truth, so there is no index to get out of step.

Pins are a JSON file, not SQLite: the set is small (roots only), it is always
rewritten whole with the same atomic-rename primitive as blocks (one crash
argument for everything), and it needs no connection bound to one thread
while the daemon calls us from ``trio.to_thread`` workers.

Thread safety: one lock covers the counters, the pins and the registry of
blocks being written; the file I/O itself runs outside it, so writers overlap.
Each block being written has one owner (the thread that reserved it); anyone
else who wants the same block waits for that owner's write to settle instead
of taking "it is on its way" for "it is here", and writes it itself if the
owner failed. So once ``put``, ``put_many`` or an importer's sink returns, the
block is on disk and registered for the next ``sync``, and concurrent identical
or overlapping imports each pin a complete DAG. ``writing()`` marks a
multi-block write that will end in a pin (an import, a network fetch); ``gc``
waits for those to finish so it never deletes blocks of a DAG being built. The
pin must be taken before the guard is released (``_add``, ``import_car`` and
``BlockExchange.fetch_dag(pin=True)`` do so): after it, a waiting ``gc`` runs at
once. A DAG that is used without a pin (fetched, then exported) is held with
``lease(root)`` instead, which ``gc`` treats as a pin while it is held.
"""

from __future__ import annotations

import errno
import json
import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from protocol.errors import StorageError
from storage import car
from storage.cid import DAG_PB, RAW, canonical, cid_to_str, parse_cid, verify_block
from storage.dagpb import decode_node
from storage.fsutil import TMP_PREFIX, fsync_dir, write_atomic
from storage.unixfs import ImportResult, import_file, import_path

MAX_BLOCK_SIZE = 2 << 20  # bitswap's hard limit; our own blocks are ≤ 256 KiB
PINS_FILE = "pins.json"
PUT_WORKERS = 8  # put_many's threads: parallel fdatasyncs share the journal commits
GC_HINT = "raise storage.quota_mb in the config, or run `mask blocks gc` to drop unpinned blocks"


@dataclass(frozen=True, slots=True)
class StoreStat:
    blocks: int
    bytes: int
    pinned_roots: int
    quota_bytes: int | None


@dataclass(frozen=True, slots=True)
class GcResult:
    blocks: int
    bytes: int


class _GcGuard:
    """Any number of writers, or one collector; a collector waits for writers.

    It also keeps the leases (``BlockStore.lease``): roots whose DAGs a collector
    must treat as live. A lease is taken only while no collector runs, so the set
    a collector reads when it starts holds for its whole run.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._writers = 0
        self._collecting = False
        self._leases: dict[str, int] = {}

    def hold(self, key: str) -> None:
        with self._cond:
            self._cond.wait_for(lambda: not self._collecting)
            self._leases[key] = self._leases.get(key, 0) + 1

    def release(self, key: str) -> None:
        with self._cond:
            if self._leases[key] == 1:
                del self._leases[key]
            else:
                self._leases[key] -= 1

    @contextmanager
    def writing(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._collecting)
            self._writers += 1
        try:
            yield
        finally:
            with self._cond:
                self._writers -= 1
                self._cond.notify_all()

    @contextmanager
    def collecting(self) -> Iterator[set[str]]:
        """Yields the leased roots (fixed until the collector is done)."""
        with self._cond:
            self._cond.wait_for(lambda: not self._collecting and self._writers == 0)
            self._collecting = True
            leased = set(self._leases)
        try:
            yield leased
        finally:
            with self._cond:
                self._collecting = False
                self._cond.notify_all()


class _ParallelWriter:
    """Importer sink that writes blocks on a few threads.

    Per-block fdatasync is I/O wait, not CPU: overlapping several of them with
    each other and with hashing the next chunk is most of the store's import
    speed. The importer computed each CID itself, so blocks are not re-hashed.
    At most ``max_pending`` blocks (4 MiB) are in memory at once.
    """

    def __init__(self, store: BlockStore, workers: int = 4, max_pending: int = 16) -> None:
        self._store = store
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="maskd-blockwrite")
        self._slots = threading.BoundedSemaphore(max_pending)
        self._error: BaseException | None = None

    def __call__(self, cid: str, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        # The slot comes first so that a reservation is handed to the pool at once:
        # a thread waiting in ``_reserve`` for a block we own must never wait on us.
        self._slots.acquire()
        try:
            if not self._store._reserve(cid, len(data)):  # here, maybe after waiting
                self._slots.release()
                return
            try:
                future = self._pool.submit(self._store._write_reserved, cid, data)
            except BaseException:
                self._store._settle(cid, len(data), written=False)
                raise
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(self._done)

    def _done(self, future: Future) -> None:
        self._slots.release()
        if future.exception() is not None and self._error is None:
            self._error = future.exception()

    def close(self, *, raise_error: bool = True) -> None:
        self._pool.shutdown(wait=True)
        if raise_error and self._error is not None:
            raise self._error


_put_pool: ThreadPoolExecutor | None = None
_put_pool_lock = threading.Lock()


def _shared_put_pool() -> ThreadPoolExecutor:
    """One pool for every store's ``put_many`` (threads are made lazily, at most 8)."""
    global _put_pool
    with _put_pool_lock:
        if _put_pool is None:
            _put_pool = ThreadPoolExecutor(PUT_WORKERS, thread_name_prefix="maskd-blockput")
        return _put_pool


class BlockStore:
    """Blocks by CID on local disk. Blocking calls: run them in a worker thread."""

    def __init__(
        self, root: str | os.PathLike, *, quota_bytes: int | None = None, fsync: bool = True
    ) -> None:
        self.root = Path(root)
        self.quota_bytes = quota_bytes
        self._fsync = fsync
        self._lock = threading.RLock()
        self._guard = _GcGuard()
        self._dirty_dirs: set[str] = set()
        # reserved, being written: the event is set once the write settles
        self._pending: dict[str, threading.Event] = {}
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._blocks, self._bytes = self._recover()
        except OSError as e:
            raise StorageError(
                f"cannot open block store at {self.root}: {e.strerror}",
                code="store_unavailable",
                hint="check that the data dir exists and is writable",
            ) from None
        self._pins = self._load_pins()

    # -- opening ---------------------------------------------------------

    def _recover(self) -> tuple[int, int]:
        """Delete leftover temp files and count what is really there."""
        blocks = total = 0
        for entry in os.scandir(self.root):
            if entry.name.startswith(TMP_PREFIX):
                os.unlink(entry.path)
            elif entry.is_dir(follow_symlinks=False) and len(entry.name) == 2:
                for block in os.scandir(entry.path):
                    if block.name.startswith(TMP_PREFIX):
                        os.unlink(block.path)
                    else:
                        blocks += 1
                        total += block.stat(follow_symlinks=False).st_size
        return blocks, total

    def _load_pins(self) -> set[str]:
        path = self.root / PINS_FILE
        try:
            doc = json.loads(path.read_text())
            return {canonical(c) for c in doc["pins"]}
        except FileNotFoundError:
            return set()
        except (ValueError, KeyError, TypeError, StorageError) as e:
            raise StorageError(
                f"pin file {path} is unreadable: {e}",
                code="pins_corrupt",
                hint="it is only ever replaced atomically; restore it from a backup or delete it "
                "and pin your roots again",
            ) from None

    # -- blocks ----------------------------------------------------------

    def _path(self, key: str) -> str:
        return os.path.join(self.root, key[-3:-1], key)

    def has(self, cid: str) -> bool:
        return os.path.exists(self._path(canonical(cid)))

    def get(self, cid: str, *, verify: bool = False) -> bytes:
        """The block's bytes; ``verify`` re-hashes (blocks were hashed on put)."""
        key = canonical(cid)
        try:
            with open(self._path(key), "rb", buffering=0) as f:
                data = f.read()
        except FileNotFoundError:
            raise StorageError(
                f"block {key} is not in the local store",
                code="block_not_found",
                hint="fetch it from a peer first, or check the CID",
            ) from None
        if verify and not verify_block(key, data):
            raise StorageError(
                f"block {key} on disk does not match its CID",
                code="block_corrupt",
                hint="the disk may be failing; delete the block and fetch it again",
            )
        return data

    def put(self, cid: str, data: bytes) -> bool:
        """Store a block after re-hashing it; False if it was already here (or another
        thread was writing it: then once that write is done, so it is here on return)."""
        key = canonical(cid)
        if len(data) > MAX_BLOCK_SIZE:
            raise StorageError(
                f"block {key} is {len(data):,} bytes, over the {MAX_BLOCK_SIZE:,} limit",
                code="block_too_large",
            )
        if not verify_block(key, data):
            raise StorageError(
                f"data does not hash to {key}",
                code="block_hash_mismatch",
                hint="the sender gave corrupt or forged data for this CID",
            )
        return self._store(key, data)

    def put_many(self, blocks: Sequence[tuple[str, bytes]]) -> list[bool | None]:
        """``put`` several blocks at once, each re-hashed, on a few threads.

        Per block: True (stored), False (already here) or None (it does not hash to
        its CID: nothing stored). Each block is still written with ``write_atomic``
        (temp file, fdatasync, rename); doing several at once overlaps their
        fdatasyncs, which the file system then serves with shared journal commits
        (measured here: 0.3 ms a block instead of 2-4 ms one after another). Any other
        error (``store_full``, ``block_too_large``, …) is raised once every block of
        the batch is settled; the blocks written before it are whole.
        """

        def one(item: tuple[str, bytes]) -> bool | None:
            try:
                return self.put(*item)
            except StorageError as exc:
                if exc.code == "block_hash_mismatch":
                    return None
                raise

        if len(blocks) < 2:
            return [one(b) for b in blocks]
        futures = [_shared_put_pool().submit(one, b) for b in blocks]
        results: list[bool | None] = []
        error: BaseException | None = None
        for future in futures:
            try:
                results.append(future.result())
            except BaseException as exc:  # noqa: BLE001 - re-raised below, after the rest
                error = error or exc
                results.append(None)
        if error is not None:
            raise error
        return results

    def _store(self, key: str, data: bytes) -> bool:
        if not self._reserve(key, len(data)):
            return False
        self._write_reserved(key, data)
        return True

    def _reserve(self, key: str, size: int) -> bool:
        """Claim a block and its quota before writing it: True means the caller now
        owns the write and must end it with ``_write_reserved`` (or ``_settle``);
        False means the block is on disk. A block another thread is writing is
        waited for, never reported as here before it is; if that write fails, the
        block is claimed again (the caller has the bytes). Never call this while
        holding ``self._lock`` or owning a reservation whose write is not under way."""
        while True:
            with self._lock:
                settled = self._pending.get(key)
                if settled is None:
                    if os.path.exists(self._path(key)):
                        return False
                    if self.quota_bytes is not None and self._bytes + size > self.quota_bytes:
                        raise StorageError(
                            f"block store full: {self._bytes:,} of {self.quota_bytes:,} bytes "
                            f"quota used, and a {size:,}-byte block does not fit",
                            code="store_full",
                            hint=GC_HINT,
                        )
                    self._pending[key] = threading.Event()
                    self._blocks += 1
                    self._bytes += size
                    return True
            settled.wait()

    def _settle(self, key: str, size: int, *, written: bool) -> None:
        """End a reservation: keep its quota if the block is on disk, else give it back;
        wake whoever waits for it."""
        shard = os.path.dirname(self._path(key))
        with self._lock:
            if written:
                # The block is visible (renamed) but not yet durable: sync() must fsync
                # its shard, and the root in case the shard is new (whoever created
                # it, so a second writer into a fresh shard cannot miss it).
                self._dirty_dirs.update((shard, str(self.root)))
            else:
                self._blocks -= 1
                self._bytes -= size
            self._pending.pop(key).set()

    def _write_reserved(self, key: str, data: bytes) -> None:
        """The slow part (file I/O), outside the lock so writer threads overlap."""
        path = self._path(key)
        try:
            shard = os.path.dirname(path)
            if not os.path.isdir(shard):
                os.makedirs(shard, exist_ok=True)
            write_atomic(path, data, fsync=self._fsync)
        except OSError as e:
            self._settle(key, len(data), written=False)
            raise StorageError(
                f"cannot write block {key}: {e.strerror}",
                code="store_full" if e.errno == errno.ENOSPC else "store_write_failed",
                hint="free disk space, or " + GC_HINT,
            ) from None
        except BaseException:
            self._settle(key, len(data), written=False)
            raise
        self._settle(key, len(data), written=True)

    def delete(self, cid: str) -> bool:
        key = canonical(cid)
        with self._lock:
            return self._delete(key) is not None

    def _delete(self, key: str) -> int | None:
        path = self._path(key)
        try:
            size = os.stat(path).st_size
            os.unlink(path)
        except FileNotFoundError:
            return None
        self._blocks -= 1
        self._bytes -= size
        return size

    def cids(self) -> Iterator[str]:
        """Every stored CID (a snapshot per shard directory)."""
        for entry in sorted(os.scandir(self.root), key=lambda e: e.name):
            if entry.is_dir(follow_symlinks=False) and len(entry.name) == 2:
                for name in sorted(os.listdir(entry.path)):
                    if not name.startswith(TMP_PREFIX):
                        yield name

    def sync(self) -> None:
        """Make every block written so far durable (fsync the directories renamed into)."""
        with self._lock:
            if self._fsync:
                for directory in sorted(self._dirty_dirs, key=len, reverse=True):
                    fsync_dir(directory)
            self._dirty_dirs.clear()

    # -- DAGs ------------------------------------------------------------

    def _walk(self, root: str) -> Iterator[tuple[str, bool]]:
        """DFS pre-order over the DAG, deduplicated: ``(cid, present)``."""
        seen: set[str] = set()
        stack = [canonical(root)]
        while stack:
            cid = stack.pop()
            if cid in seen:
                continue
            seen.add(cid)
            codec = parse_cid(cid).codec
            if codec == DAG_PB:
                try:
                    data = self.get(cid)
                except StorageError:
                    yield cid, False
                    continue
                yield cid, True
                links = decode_node(data).links
                stack.extend(cid_to_str(link.hash) for link in reversed(links))
            elif codec == RAW:
                yield cid, self.has(cid)
            else:
                raise StorageError(
                    f"cannot walk {cid}: unsupported codec 0x{codec:x}", code="unsupported_codec"
                )

    def missing(self, root: str) -> list[str]:
        """Blocks of the DAG at ``root`` that are not here yet (children of absent
        nodes are unknown until those nodes arrive, so call again as you fetch)."""
        return [cid for cid, present in self._walk(root) if not present]

    # -- pins and gc -----------------------------------------------------

    def pins(self) -> list[str]:
        with self._lock:
            return sorted(self._pins)

    def pin(self, cid: str) -> None:
        """Pin a DAG recursively; refused unless every block is present."""
        key = canonical(cid)
        with self._lock:
            absent = self.missing(key)
            if absent:
                raise StorageError(
                    f"cannot pin {key}: {len(absent)} block(s) of its DAG are missing, "
                    f"first {absent[0]}",
                    code="dag_incomplete",
                    hint="fetch the whole DAG before pinning it",
                )
            self.sync()
            if key not in self._pins:
                self._write_pins(self._pins | {key})

    def unpin(self, cid: str) -> bool:
        key = canonical(cid)
        with self._lock:
            if key not in self._pins:
                return False
            self._write_pins(self._pins - {key})
            return True

    def _write_pins(self, pins: set[str]) -> None:
        doc = json.dumps({"version": 1, "pins": sorted(pins)}, indent=1).encode()
        write_atomic(str(self.root / PINS_FILE), doc, fsync=self._fsync)
        if self._fsync:
            fsync_dir(str(self.root))
        self._pins = pins

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold while writing blocks that a later ``pin`` will protect (gc waits)."""
        with self._guard.writing():
            yield

    @contextmanager
    def lease(self, cid: str) -> Iterator[None]:
        """Keep the DAG at ``cid`` from ``gc`` while held, without pinning it.

        For a DAG that is used right after it is fetched or written (exported,
        pinned by a later step): blocks of it that are here when ``lease`` returns,
        and any stored while it is held, survive every ``gc`` until it is released.
        Entering waits for a ``gc`` already running (so run it in a worker thread);
        leaving never blocks. Leases are in memory only and nest (counted per root).
        """
        key = canonical(cid)
        self._guard.hold(key)
        try:
            yield
        finally:
            self._guard.release(key)

    def gc(self) -> GcResult:
        """Delete every block not reachable from a pin or a held ``lease``."""
        with self._guard.collecting() as leased, self._lock:
            live: set[str] = set()
            for root in self._pins:
                live.update(cid for cid, present in self._walk(root) if present)
            for root in leased - self._pins:
                try:
                    live.update(cid for cid, present in self._walk(root) if present)
                except StorageError:  # unsupported codec: only the root block is known
                    live.add(root)
            removed = freed = 0
            for cid in list(self.cids()):
                if cid not in live:
                    size = self._delete(cid)
                    if size is not None:
                        removed += 1
                        freed += size
            return GcResult(removed, freed)

    def stat(self) -> StoreStat:
        with self._lock:
            return StoreStat(self._blocks, self._bytes, len(self._pins), self.quota_bytes)

    # -- import / export -------------------------------------------------

    def add_path(
        self, path: str | os.PathLike, *, pin: bool = True, hidden: bool = False
    ) -> ImportResult:
        """Import a file or directory into the store; pin only once it is all here."""
        return self._add(lambda sink: import_path(path, sink, hidden=hidden), pin)

    def add_stream(self, src: BinaryIO, *, pin: bool = True) -> ImportResult:
        """Import one file from a binary stream (a pipe, a socket, a BytesIO)."""
        return self._add(lambda sink: import_file(src, sink), pin)

    def _add(self, run_import, pin: bool) -> ImportResult:
        with self.writing():
            writer = _ParallelWriter(self)
            try:
                result = run_import(writer)
            except BaseException:
                writer.close(raise_error=False)  # the import's own error explains more
                raise
            writer.close()  # waits for every write; raises the first write error
            if pin:
                self.pin(result.cid)
        return result

    def export_car(self, root: str, out: BinaryIO) -> int:
        """Write the DAG at ``root`` as CAR v1 (DFS order); return the block count."""
        key = canonical(root)

        def blocks() -> Iterator[tuple[str, bytes]]:
            for cid, _ in self._walk(key):
                yield cid, self.get(cid)  # raises block_not_found for a partial DAG

        return car.write_car([key], blocks(), out)

    def import_car(self, src: BinaryIO, *, pin: bool = False) -> list[str]:
        """Store every block of a CAR (each re-hashed); optionally pin its roots."""
        with self.writing():
            roots, sections = car.read_car(src)
            for cid, data in sections:
                self.put(cid, data)
            if pin:
                for root in roots:
                    self.pin(root)
        return roots

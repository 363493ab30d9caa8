"""Where a node keeps job payloads, and how long (the shell around maskd.retention).

Under ``<data_dir>/jobs/``:

- ``private/bundles/<spec_cid>.car``: the requester's own job bundles;
- ``private/results/<output_cid>.car``: a provider's results, and results a
  requester fetched (the user's outputs);
- ``private/received/<job_id>.bundle.car``: a bundle a provider is fetching
  (unlinked once unpacked);
- ``private/cache/<spec_cid>~<requester peer>/``: bundles a provider fetched,
  verified and unpacked, shared by its jobs with that spec and requester
  (:class:`BundleCache`);
- ``work/<job_id>/``: one run's scratch (``result/``, ``logs/``);
- ``.tmp-*`` in any of these: a write in progress.

:class:`Sweeper` deletes what :func:`maskd.retention.plan_sweep` says, once
when the jobs service starts and every :data:`SWEEP_INTERVAL_S` after.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import shutil
import tempfile
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from maskd.retention import Area, Deletion, JobRef, RetentionPolicy, StoredFile, plan_sweep
from protocol.supervisor import Supervisor
from scheduler.async_store import ThreadedStore
from storage.carfile import write_path_car

log = logging.getLogger("maskd.jobs")

#: Retention is counted in hours: a file deleted up to ten minutes late is
#: noise, and each pass lists every file and reads every job row.
SWEEP_INTERVAL_S = 600.0
#: Cached bundles kept at most, whatever their size: bounds the index, the
#: directories on disk, and the scan at start.
MAX_CACHED_BUNDLES = 1024
#: File timestamps come from the kernel's coarse clock (a few ms behind
#: ``time.time()``): a temp file made just after start could look older than
#: the start. Only files this much older than the start count as left by an
#: earlier process.
START_SLACK_S = 1.0
TMP = ".tmp-"
#: Temp dirs the jobs service makes in ``jobs/`` (``bundle-``/``logs-``: older versions).
JOBS_DIR_TMP = (TMP, "bundle-", "logs-")


class PrivateFiles:
    """Where a node keeps job payloads as CAR files, outside the shared block store.

    Named by content id, so identical payloads share a file. ``lock`` is held
    while a bundle or result is put in place and while the sweep decides and
    deletes, so a sweep never deletes a file it did not see.
    """

    def __init__(self, root: Path):
        self.root = root
        for sub in ("bundles", "results", "received", "cache"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self.lock = trio.Lock()

    def bundle(self, spec_cid: str) -> Path:
        return self.root / "bundles" / f"{spec_cid}.car"

    def result(self, output_cid: str) -> Path:
        return self.root / "results" / f"{output_cid}.car"

    def received_bundle(self, job_id: str) -> Path:
        return self.root / "received" / f"{job_id}.bundle.car"

    @property
    def cache_root(self) -> Path:
        return self.root / "cache"

    def tmp(self) -> Path:
        fd, name = tempfile.mkstemp(prefix=TMP, dir=self.root)
        os.close(fd)
        return Path(name)

    async def add(self, src: Path, kind: str) -> str:
        """Import ``src`` as a CAR into ``bundles/`` or ``results/``; its root CID."""
        tmp = self.tmp()
        try:
            result = await trio.to_thread.run_sync(lambda: write_path_car(src, tmp))
            dest = self.bundle(result.cid) if kind == "bundle" else self.result(result.cid)
            async with self.lock:
                os.replace(tmp, dest)  # a fresh mtime: the sweep's placement grace starts now
        finally:
            tmp.unlink(missing_ok=True)
        return result.cid


# ------------------------------------------------------------------ the provider's cache


@dataclasses.dataclass(slots=True)
class _Entry:
    size: int
    users: int
    last_used: float


@dataclasses.dataclass(frozen=True, slots=True)
class CacheStatistics:
    entries: int
    bytes: int
    in_use: int
    hits: int
    misses: int
    evicted: int


class BundleCache:
    """Unpacked job bundles a provider fetched and verified, by (spec_cid, requester).

    Only ``fill`` makes an entry, and the daemon's fill is the verified fetch
    (every block re-hashed against spec_cid, maskd.jobs.fetch_private) and an
    export, into a temp dir renamed into place whole: a directory under its
    final name is a complete, verified bundle, after a restart too.

    Keyed by the requester as well as the spec: spec_cid is gossiped in the
    bid, and a hit skips the requester's authorisation of the fetch, so a peer
    that only knows a spec_cid must not get a job run on another requester's
    bundle and read its output.

    Runs share an entry: worker.wasm mounts its ``in/`` read-only (the job
    cannot create, change or delete anything there) and the worker only reads
    ``job.json`` and ``program.wasm``; each run has its own work dir and /out.

    Bounded by ``max_bytes`` and ``max_entries``, least recently used first.
    Entries a run holds (``lease``/``release``) are never evicted or swept, so
    the cache can exceed the bound by what runs hold; the bound is enforced at
    each fill and each sweep.
    """

    def __init__(
        self,
        root: Path,
        *,
        max_bytes: int,
        max_entries: int = MAX_CACHED_BUNDLES,
        clock: Callable[[], float] = time.time,
    ):
        self.root = root
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first
        self._fills: dict[str, trio.Lock] = {}
        self.counters: Counter[str] = Counter()
        root.mkdir(parents=True, exist_ok=True)
        found = []
        for p in root.iterdir():
            if not p.name.startswith(TMP) and p.is_dir() and not p.is_symlink():
                found.append((p.stat().st_mtime, p.name, _du(p)))
        for mtime, name, size in sorted(found):
            self._entries[name] = _Entry(size, 0, mtime)

    def path(self, key: str) -> Path:
        return self.root / key

    def lease(self, key: str) -> Path | None:
        """The entry's dir, held until :meth:`release`; None if not cached."""
        e = self._entries.get(key)
        if e is None:
            return None
        e.users += 1
        e.last_used = self._clock()
        self._entries.move_to_end(key)
        return self.path(key)

    def release(self, key: str) -> None:
        e = self._entries.get(key)
        if e is not None and e.users > 0:
            e.users -= 1
            e.last_used = self._clock()

    async def acquire(self, key: str, fill: Callable[[Path], Awaitable[None]]) -> Path:
        """The unpacked bundle for ``key``, leased; on a miss ``fill(dir)`` makes it.

        One fill per key at a time: runs that want the same bundle wait for the
        first fill and share it; if it fails, the next one fills for itself (its
        own job's fetch is authorised separately by the requester).
        """
        lock = self._fills.setdefault(key, trio.Lock())
        try:
            async with lock:
                path = self.lease(key)
                if path is not None:
                    self.counters["hits"] += 1
                    return path
                self.counters["misses"] += 1
                path = await self._fill(key, fill)
        finally:
            if not lock.locked():  # nobody holds or waits (trio hands a lock over)
                self._fills.pop(key, None)
        try:
            await self.remove(self.evict())
        except BaseException:
            self.release(key)
            raise
        return path

    async def _fill(self, key: str, fill: Callable[[Path], Awaitable[None]]) -> Path:
        staged = self.root / f"{TMP}{secrets.token_hex(8)}"
        try:
            await fill(staged)
            size = await trio.to_thread.run_sync(_du, staged)
        except BaseException:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_delete, staged)
            raise
        path = self.path(key)
        if os.path.lexists(path):
            _delete(path)  # not an entry (a stray file): make way
        os.rename(staged, path)  # whole or not at all
        self._entries[key] = _Entry(size, 1, self._clock())
        return path

    def evict(self) -> list[Path]:
        """Unindex idle entries, least recently used first, until within bounds;
        their dirs, moved aside, for :meth:`remove`."""
        trash = []
        total = sum(e.size for e in self._entries.values())
        for key, e in list(self._entries.items()):
            if total <= self.max_bytes and len(self._entries) <= self.max_entries:
                break
            if e.users == 0:
                total -= e.size
                trash.append(self._unindex(key))
                self.counters["evicted"] += 1
        return trash

    def drop_if_idle(self, key: str) -> Path | None:
        """For the sweep: unindex ``key`` unless a run holds it (checked at the
        call); its dir, moved aside, for :meth:`remove`."""
        e = self._entries.get(key)
        if e is None or e.users:
            return None
        return self._unindex(key)

    def _unindex(self, key: str) -> Path:
        del self._entries[key]
        trash = self.root / f"{TMP}trash-{secrets.token_hex(8)}"
        try:
            os.rename(self.path(key), trash)  # a new fill for key may start at once
            os.utime(trash)  # ours, in flight: not a leftover of an earlier process
        except FileNotFoundError:
            pass  # removed behind our back: nothing to delete
        return trash

    async def remove(self, paths: list[Path]) -> None:
        if paths:
            with trio.CancelScope(shield=True):  # moved aside: nobody else will delete them
                await trio.to_thread.run_sync(_delete_all, paths)

    def entries(self) -> list[StoredFile]:
        return [
            StoredFile(Area.CACHED_BUNDLE, key, e.last_used, str(self.path(key)))
            for key, e in self._entries.items()
        ]

    def in_use(self) -> frozenset[str]:
        return frozenset(k for k, e in self._entries.items() if e.users)

    def statistics(self) -> CacheStatistics:
        return CacheStatistics(
            entries=len(self._entries),
            bytes=sum(e.size for e in self._entries.values()),
            in_use=sum(1 for e in self._entries.values() if e.users),
            hits=self.counters["hits"],
            misses=self.counters["misses"],
            evicted=self.counters["evicted"],
        )


# ------------------------------------------------------------------ the sweep


class Sweeper:
    """Deletes job files per ``plan_sweep``: once at start, then every ``interval_s``.

    The decision and the deletions happen under ``files.lock`` (the lock that
    placing a bundle or result takes), and a cached bundle is dropped only if
    no run took it since the scan. ``clock`` gives ``now`` (wall time, like the
    job store's timestamps); the interval is a trio sleep, so tests drive both.
    """

    def __init__(
        self,
        jobs_dir: Path,
        files: PrivateFiles,
        store: ThreadedStore,
        cache: BundleCache,
        policy: RetentionPolicy,
        *,
        clock: Callable[[], float] = time.time,
        interval_s: float = SWEEP_INTERVAL_S,
        scan: Callable[[], Awaitable[list[StoredFile]]] | None = None,
        supervisor: Supervisor | None = None,
    ):
        self.supervisor = supervisor
        self.jobs_dir = jobs_dir
        self.files = files
        self.store = store
        self.cache = cache
        self.policy = policy
        self._clock = clock
        self.interval_s = interval_s
        self.started_at = clock() - START_SLACK_S
        self._scan = scan or self.scan
        self.counters: Counter[str] = Counter()
        self.swept = trio.Event()  # set and replaced after every pass

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.sweep()  # what a crash left goes before the services start
        task_status.started()
        if self.supervisor is None:
            await self._loop()
        else:  # anything else that goes wrong restarts the loop, not the node
            await self.supervisor.keep_running("sweep_loop", self._loop)

    async def _loop(self) -> None:
        while True:
            await trio.sleep(self.interval_s)
            try:
                await self.sweep()
            except OSError as exc:  # a disk that cannot be listed now: not worth the node
                self.counters["sweep_failed"] += 1
                log.warning(
                    "sweeping job files failed (retried in %.0f s): %s", self.interval_s, exc
                )

    async def scan(self) -> list[StoredFile]:
        return await trio.to_thread.run_sync(scan_files, self.jobs_dir, self.files)

    async def sweep(self) -> list[Deletion]:
        """One pass; what it deleted."""
        async with self.files.lock:
            rows = await self.store.jobs()  # scheduler.async_store facade
            found = await self._scan()
            plan = plan_sweep(
                [JobRef.from_row(r) for r in rows],
                [*found, *self.cache.entries()],
                self._clock(),
                self.policy,
                started_at=self.started_at,
                in_use=self.cache.in_use(),
            )
            done, paths = [], []
            for d in plan:
                if d.file.area is Area.CACHED_BUNDLE:
                    moved = self.cache.drop_if_idle(d.file.name)
                    if moved is None:
                        continue  # a run holds it
                    paths.append(moved)
                else:
                    paths.append(Path(d.file.path))
                done.append(d)
            failed = await trio.to_thread.run_sync(_delete_all, paths)
        await self.cache.remove(self.cache.evict())
        self.counters["sweeps"] += 1
        self.counters["delete_failed"] += failed
        for d in done:
            self.counters[d.reason.value] += 1
        if done:
            reasons = Counter(d.reason.value for d in done)
            log.info(
                "job files swept: %s", ", ".join(f"{n} {r}" for r, n in sorted(reasons.items()))
            )
        self.swept.set()
        self.swept = trio.Event()
        return done


def scan_files(jobs_dir: Path, files: PrivateFiles) -> list[StoredFile]:
    """What is on disk, for :func:`plan_sweep` (the cache's entries come from its index)."""
    out: list[StoredFile] = []

    def add(area: Area, name: str, entry: os.DirEntry) -> None:
        try:
            mtime = entry.stat(follow_symlinks=False).st_mtime
        except FileNotFoundError:
            return  # gone since the listing
        out.append(StoredFile(area, name, mtime, entry.path))

    def listing(d: Path) -> list[os.DirEntry]:
        try:
            with os.scandir(d) as it:
                return list(it)
        except FileNotFoundError:
            return []

    for e in listing(jobs_dir):
        if e.name.startswith(JOBS_DIR_TMP):
            add(Area.TMP, e.name, e)
    for e in listing(jobs_dir / "work"):
        add(Area.WORK, e.name, e)
    for sub, area in (("bundles", Area.BUNDLE), ("results", Area.RESULT)):
        for e in listing(files.root / sub):
            if e.name.startswith(TMP):
                add(Area.TMP, e.name, e)
            elif e.name.endswith(".car"):
                add(area, e.name.removesuffix(".car"), e)
    for e in listing(files.root / "received"):
        add(Area.TMP if e.name.startswith(TMP) else Area.RECEIVED, e.name, e)
    for d in (files.root, files.cache_root):
        for e in listing(d):
            if e.name.startswith(TMP):
                add(Area.TMP, e.name, e)
    return out


def _du(path: Path) -> int:
    total = 0
    for dirpath, _, names in os.walk(path):
        for n in names:
            try:
                total += os.lstat(os.path.join(dirpath, n)).st_size
            except FileNotFoundError:
                pass
    return total


def _delete(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _delete_all(paths: list[Path]) -> int:
    """Delete each; the number that could not be (logged, retried next sweep)."""
    failed = 0
    for p in paths:
        try:
            _delete(p)
        except FileNotFoundError:
            pass
        except OSError as exc:
            failed += 1
            log.warning("cannot delete %s: %s", p, exc)
    return failed

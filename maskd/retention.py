"""Which private job files may go, and why: a pure decision (no I/O, no clock).

A node keeps job payloads outside the shared block store (``maskd.jobfiles``).
:func:`plan_sweep` takes what the job store says about each job, what is on
disk, and ``now``, and returns the files to delete, each with a named reason.
The shell (``maskd.jobfiles.Sweeper``) lists the files, reads the store, and
deletes what this returns, under the lock that placing a file takes.

The rules, one per area (docs/architecture.md, "Jobs", has the same table):

``bundle``  (requester, ``bundles/<spec_cid>.car``)
    kept while any job of ours with that spec_cid is not terminal (it is served
    to the job's provider, and to a replacement one); then kept for
    ``bundle_s`` after the last of them ended.
``result``  (``results/<output_cid>.car``)
    a result one of our *requester* jobs names is the user's output
    (``mask result``, ``mask job --logs``): never deleted. One only our
    *provider* jobs name is kept for ``result_s`` after the last of them ended
    (the requester fetches it as soon as it is told, or when it resumes).
``cached_bundle``  (provider, ``cache/<spec_cid>~<requester peer>/``)
    kept while a run holds it or a job of ours with that spec_cid and
    requester is not terminal; then kept for ``bundle_s`` after its last use
    and the last such job's end. (The cache's byte bound evicts sooner.)
``work``  (provider, ``work/<job_id>/``, one run's scratch)
    deleted once its job is terminal (its result is a CAR by then).
``received``, ``tmp``  (a fetch or a write in progress)
    deleted only if an earlier process left them (``mtime < started_at``).

Files no job names (an import whose job was never recorded, a result whose job
was cancelled as it finished) follow their area's period, counted from the
file's mtime. And whatever the retention, a bundle, result or cached bundle
placed or used less than :data:`PLACEMENT_GRACE_S` ago stays: that covers the
moment between placing a file and the job store naming it (a submit with a spec_cid whose old bundle is
being swept, a provider's result before its row records ``output_cid``).
"""

from __future__ import annotations

import enum
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from scheduler.jobstate import TERMINAL_STATES
from scheduler.store import JobRow

__all__ = [
    "PLACEMENT_GRACE_S",
    "Area",
    "Deletion",
    "JobRef",
    "Reason",
    "RetentionPolicy",
    "StoredFile",
    "cache_key",
    "plan_sweep",
]

#: Nothing placed or used less than this long ago is deleted, whatever the retention.
PLACEMENT_GRACE_S = 600.0


class Area(enum.StrEnum):
    BUNDLE = "bundle"
    RESULT = "result"
    CACHED_BUNDLE = "cached_bundle"
    WORK = "work"
    RECEIVED = "received"
    TMP = "tmp"


class Reason(enum.StrEnum):
    BUNDLE_EXPIRED = "bundle_expired"  # every job using it ended over bundle_s ago
    RESULT_EXPIRED = "result_expired"  # a provider's result whose jobs ended over result_s ago
    CACHE_IDLE = "cache_idle"  # a cached bundle unused (and its jobs ended) for bundle_s
    ORPHAN_EXPIRED = "orphan_expired"  # no job names it and it is older than its area's period
    RUN_ENDED = "run_ended"  # the scratch dir of a terminal job
    LEFT_BY_CRASH = "left_by_crash"  # a temp file or a half fetch from an earlier process


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    result_s: float = 72 * 3600.0
    bundle_s: float = 3600.0


@dataclass(frozen=True, slots=True)
class JobRef:
    """What retention needs to know of one job row."""

    job_id: str
    role: str
    ended_at: float | None  # None while the job is not terminal
    spec_cid: str | None
    output_cid: str | None
    requester_peer: str | None = None  # provider rows: who sent the bundle

    @classmethod
    def from_row(cls, row: JobRow) -> JobRef:
        spec = row.spec or {}
        return cls(
            job_id=row.job_id,
            role=row.role,
            # terminal rows take no more transitions: updated_at is when it ended
            ended_at=row.updated_at if row.state in TERMINAL_STATES else None,
            spec_cid=spec.get("spec_cid"),
            output_cid=row.output_cid,
            requester_peer=spec.get("requester_peer"),
        )


@dataclass(frozen=True, slots=True)
class StoredFile:
    area: Area
    name: str  # spec_cid, output_cid, cache key, job_id; the file name for tmp/received
    mtime: float  # when it was placed (a cached bundle: last used)
    path: str = ""  # the shell's handle; passed through


@dataclass(frozen=True, slots=True)
class Deletion:
    file: StoredFile
    reason: Reason


def cache_key(spec_cid: str, requester_peer: str) -> str:
    """A cached bundle's name: one per (spec_cid, requester) (see BundleCache for why)."""
    return f"{spec_cid}~{requester_peer}"


def plan_sweep(
    jobs: Iterable[JobRef],
    files: Iterable[StoredFile],
    now: float,
    policy: RetentionPolicy,
    *,
    started_at: float,
    in_use: frozenset[str] = frozenset(),
) -> list[Deletion]:
    """The files to delete now, in the order given. ``in_use``: cache keys a run holds."""
    bundles: dict[str, list[JobRef]] = defaultdict(list)
    user_outputs: set[str] = set()
    results: dict[str, list[JobRef]] = defaultdict(list)
    cached: dict[str, list[JobRef]] = defaultdict(list)
    runs: dict[str, JobRef] = {}
    for j in jobs:
        if j.role == "requester":
            if j.spec_cid:
                bundles[j.spec_cid].append(j)
            if j.output_cid:
                user_outputs.add(j.output_cid)
        else:
            runs[j.job_id] = j
            if j.output_cid:
                results[j.output_cid].append(j)
            if j.spec_cid and j.requester_peer:
                cached[cache_key(j.spec_cid, j.requester_peer)].append(j)

    def expired(refs: list[JobRef], mtime: float, keep_s: float) -> bool:
        if now - mtime < max(keep_s, PLACEMENT_GRACE_S):
            return False
        return all(r.ended_at is not None and now - r.ended_at >= keep_s for r in refs)

    def verdict(f: StoredFile) -> Reason | None:
        if f.area is Area.BUNDLE:
            refs = bundles.get(f.name, [])
            if expired(refs, f.mtime, policy.bundle_s):
                return Reason.BUNDLE_EXPIRED if refs else Reason.ORPHAN_EXPIRED
        elif f.area is Area.RESULT:
            if f.name in user_outputs:
                return None
            refs = results.get(f.name, [])
            if expired(refs, f.mtime, policy.result_s):
                return Reason.RESULT_EXPIRED if refs else Reason.ORPHAN_EXPIRED
        elif f.area is Area.CACHED_BUNDLE:
            if f.name in in_use:
                return None
            if expired(cached.get(f.name, []), f.mtime, policy.bundle_s):
                return Reason.CACHE_IDLE
        elif f.area is Area.WORK:
            run = runs.get(f.name)
            if run is not None:
                return Reason.RUN_ENDED if run.ended_at is not None else None
            if expired([], f.mtime, policy.bundle_s):
                return Reason.ORPHAN_EXPIRED
        elif f.mtime < started_at:  # tmp, received: in flight unless an earlier process left it
            return Reason.LEFT_BY_CRASH
        return None

    return [Deletion(f, r) for f in files if (r := verdict(f)) is not None]

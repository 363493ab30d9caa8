"""The one way into the job store from async code.

``JobStore`` is sqlite: blocking. The daemon reaches it only through
:class:`ThreadedStore`, which runs every call in a worker thread behind one
``CapacityLimiter(1)``: calls are serialised (one connection, never two
threads in it at once) and never take a slot of trio's default thread
limiter, which the rest of the daemon shares. Nothing async calls the
``JobStore`` directly.

:class:`InlineStore` has the same methods and calls sqlite on the event loop.
It is for component tests under ``MockClock(autojump_threshold=0)``: a task
waiting on a thread looks idle, so autojump would move virtual time while
sqlite runs and the timings those tests assert would drift.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import trio

from scheduler.reputation import Evidence
from scheduler.store import (
    CreateJob,
    JobRow,
    JobStore,
    OwedEntry,
    RecordTransition,
    Role,
    TransitionRow,
    UnknownJob,
)

__all__ = ["AsyncStore", "InlineStore", "ThreadedStore"]

T = TypeVar("T")


class AsyncStore(Protocol):
    async def apply(self, command: CreateJob | RecordTransition, now: float) -> JobRow: ...


class _Facade:
    store: JobStore

    async def _call(self, fn: Callable[[], T]) -> T:
        raise NotImplementedError

    async def apply(self, command: CreateJob | RecordTransition, now: float) -> JobRow:
        return await self._call(lambda: self.store.apply(command, now=now))

    async def get(self, job_id: str, *, role: Role) -> JobRow:
        return await self._call(lambda: self.store.get(job_id, role=role))

    async def find(self, job_id: str) -> JobRow | None:
        """The job under either role (requester first), or None."""

        def find() -> JobRow | None:
            for role in ("requester", "provider"):
                try:
                    return self.store.get(job_id, role=role)
                except UnknownJob:
                    continue
            return None

        return await self._call(find)

    async def jobs(self, *, role: Role | None = None) -> list[JobRow]:
        return await self._call(lambda: self.store.jobs(role=role))

    async def open_jobs(self, *, role: Role | None = None) -> list[JobRow]:
        return await self._call(lambda: self.store.open_jobs(role=role))

    async def transitions(self, job_id: str, *, role: Role) -> list[TransitionRow]:
        return await self._call(lambda: self.store.transitions(job_id, role=role))

    async def owed(self) -> list[OwedEntry]:
        return await self._call(self.store.owed)

    async def owed_totals(self) -> dict[str, int]:
        return await self._call(self.store.owed_totals)

    async def evidence(self, *, provider_account: str | None = None) -> list[Evidence]:
        return await self._call(lambda: self.store.evidence(provider_account=provider_account))

    async def run(self, fn: Callable[[JobStore], Any]) -> Any:
        """Any other read, as one call under the same limiter."""
        return await self._call(lambda: fn(self.store))


class ThreadedStore(_Facade):
    """The daemon's store: sqlite in a worker thread, one call at a time."""

    def __init__(self, store: JobStore):
        self.store = store
        self._limiter = trio.CapacityLimiter(1)

    async def _call(self, fn: Callable[[], T]) -> T:
        return await trio.to_thread.run_sync(fn, limiter=self._limiter)


class InlineStore(_Facade):
    """sqlite on the event loop (component tests under autojump; see the module doc)."""

    def __init__(self, store: JobStore):
        self.store = store

    async def _call(self, fn: Callable[[], T]) -> T:
        return fn()

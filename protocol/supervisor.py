"""One supervisor for a daemon's background work: one failure, never the node.

Every task a service starts on behalf of something (a job's execution, a fetch,
a send, a periodic loop) runs through :meth:`Supervisor.run` or
:meth:`Supervisor.keep_running`. An exception that escapes the task is turned
into a failure *of that thing*: it is counted by kind, logged once with its
context (a traceback only when it is not one of our typed errors), and handed
to the caller's ``on_error``, which reports it the way that thing reports any
failure (a job fails with a reason both sides see; a loop is restarted after a
back-off). Cancellation is never caught: shutting down still works.

The supervisor holds no nursery: tasks run in their service's own nursery, so
each still lives somewhere one can point to, and the supervisor only decides
what an error means.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from protocol.errors import MaskError

__all__ = ["Supervisor", "TaskFailure"]

MAX_RECENT = 32  # failures kept for `mask status` / tests


@dataclass(frozen=True, slots=True)
class TaskFailure:
    kind: str  # what sort of task: "execute", "store_output", "offer_loop", ...
    context: str  # which one: a job id, a peer id, ...
    error: str  # the exception's type name, or a MaskError's code
    message: str


def describe(exc: BaseException) -> tuple[str, str]:
    """(error, message) for people and logs: a MaskError's code, else the type name."""
    if isinstance(exc, MaskError):
        return exc.code, exc.message
    return type(exc).__name__, str(exc) or type(exc).__name__


class Supervisor:
    def __init__(self, name: str, *, logger: logging.Logger | None = None):
        self.name = name
        self.log = logger or logging.getLogger(f"maskd.{name}")
        self.failures: Counter[str] = Counter()
        self.recent: deque[TaskFailure] = deque(maxlen=MAX_RECENT)

    def record(self, kind: str, context: str, exc: BaseException) -> TaskFailure:
        """Count and log one failure (once, with context); the record of it."""
        error, message = describe(exc)
        failure = TaskFailure(kind, context, error, message)
        self.failures[kind] += 1
        self.recent.append(failure)
        where = f"{kind} ({context})" if context else kind
        if isinstance(exc, MaskError):
            self.log.warning("%s failed: %s: %s", where, error, message)
        else:
            self.log.error("%s failed unexpectedly: %s: %s", where, error, message, exc_info=exc)
        return failure

    async def run(
        self,
        kind: str,
        fn: Callable[..., Awaitable[Any]],
        *args: Any,
        context: str = "",
        on_error: Callable[[TaskFailure], Awaitable[None]] | None = None,
    ) -> bool:
        """Run one unit of work; True if it finished, False if it failed (and was reported)."""
        try:
            await fn(*args)
            return True
        except Exception as exc:
            failure = self.record(kind, context, exc)
        if on_error is not None:
            try:
                await on_error(failure)
            except Exception as exc:  # reporting the failure failed: still not the node's end
                self.record(f"{kind}.on_error", context, exc)
        return False

    async def keep_running(
        self,
        kind: str,
        loop: Callable[[], Awaitable[Any]],
        *,
        first_backoff: float = 1.0,
        max_backoff: float = 60.0,
        sleep: Callable[[float], Awaitable[None]] = trio.sleep,
    ) -> None:
        """Run a service loop for good: after a failure, log it and restart it,
        waiting ``first_backoff`` doubled per consecutive failure (capped). A
        loop that returns normally is done."""
        backoff = first_backoff
        while True:
            if await self.run(kind, loop):
                return
            await sleep(backoff)
            backoff = min(max_backoff, backoff * 2)

    def statistics(self) -> dict[str, Any]:
        return {
            "failures": dict(self.failures),
            "recent": [
                {"kind": f.kind, "context": f.context, "error": f.error, "message": f.message}
                for f in self.recent
            ],
        }

"""WASI ``poll_oneoff`` that a run's time limit and cancel can end.

wasmtime's own ``poll_oneoff`` sleeps in native code, where the epoch that
stops a run is never checked: a job that sleeps for an hour would hold its
thread for an hour whatever its ``max_seconds``. Each run's linker shadows it
with this one, which waits on the run's stop event instead, so the wait ends
at the earliest of the job's own timeout, the run's wall deadline and a
cancel.

What the sandbox can poll: clocks, and fds that are regular files, ``/in``,
``/out``, an empty stdin and stdout/stderr files. None of those ever blocks,
so fd subscriptions are reported ready at once (as a POSIX ``poll`` does for
regular files); a bad fd shows up on the read or write that follows.

The core (:func:`parse_subscriptions`, :func:`clock_deadlines`,
:func:`fired_events`) is pure; :func:`define_poll_oneoff` binds it to a run.

Clocks: the job's monotonic clock is wasmtime's, which counts from when the
store's WASI context was built; the run notes the host's monotonic clock just
after (``guest_epoch_ns``), so an absolute deadline maps to a host time no
earlier than the job's own clock would say. Realtime deadlines are taken
relative to the host's realtime clock at the call.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import wasmtime

__all__ = [
    "MAX_SUBSCRIPTIONS",
    "Subscription",
    "clock_deadlines",
    "define_poll_oneoff",
    "fired_events",
    "parse_subscriptions",
]

SUBSCRIPTION = struct.Struct("<QB7xI4xQQH6x")  # 48 bytes
EVENT = struct.Struct("<QHB5xQH6x")  # 32 bytes
# No sandbox program has a reason to poll more; parsing a million would hold
# the GIL (and so the daemon's event loop) for seconds.
MAX_SUBSCRIPTIONS = 4096

EVENT_CLOCK, EVENT_FD_READ, EVENT_FD_WRITE = 0, 1, 2
CLOCK_REALTIME, CLOCK_MONOTONIC = 0, 1
SUBCLOCK_ABSTIME = 1
ERRNO_SUCCESS, ERRNO_FAULT, ERRNO_INTR, ERRNO_INVAL = 0, 21, 27, 28

_U32 = 0xFFFF_FFFF


@dataclass(frozen=True, slots=True)
class Subscription:
    userdata: int
    kind: int  # EVENT_CLOCK, EVENT_FD_READ or EVENT_FD_WRITE
    clock: int = 0
    timeout_ns: int = 0
    absolute: bool = False


def parse_subscriptions(data: bytes) -> list[Subscription] | int:
    """The subscriptions in ``data`` (a whole number of 48-byte records), or an errno."""
    subs: list[Subscription] = []
    for userdata, tag, word, timeout, _precision, flags in SUBSCRIPTION.iter_unpack(data):
        if tag == EVENT_CLOCK:
            if word not in (CLOCK_REALTIME, CLOCK_MONOTONIC):
                return ERRNO_INVAL  # the CPU-time clocks are not offered (as in wasmtime)
            subs.append(Subscription(userdata, tag, word, timeout, bool(flags & SUBCLOCK_ABSTIME)))
        elif tag in (EVENT_FD_READ, EVENT_FD_WRITE):
            subs.append(Subscription(userdata, tag))
        else:
            return ERRNO_INVAL
    return subs


def clock_deadlines(
    subs: Sequence[Subscription], *, now_ns: int, guest_epoch_ns: int, realtime_ns: int
) -> list[int | None]:
    """Each subscription's deadline on the host's monotonic clock; None for fds.

    An fd subscription is ready at once, so its deadline is ``now_ns``."""
    out: list[int | None] = []
    for sub in subs:
        if sub.kind != EVENT_CLOCK:
            out.append(now_ns)
        elif not sub.absolute:
            out.append(now_ns + sub.timeout_ns)
        elif sub.clock == CLOCK_MONOTONIC:
            out.append(guest_epoch_ns + sub.timeout_ns)
        else:
            out.append(now_ns + (sub.timeout_ns - realtime_ns))
    return out


def fired_events(
    subs: Sequence[Subscription], deadlines: Sequence[int | None], now_ns: int
) -> list[bytes]:
    """The 32-byte events of the subscriptions due by ``now_ns``."""
    return [
        EVENT.pack(sub.userdata, ERRNO_SUCCESS, sub.kind, 0, 0)
        for sub, at in zip(subs, deadlines, strict=True)
        if at is not None and at <= now_ns
    ]


def define_poll_oneoff(
    linker: wasmtime.Linker,
    sleep_until: Callable[[int], bool],
    guest_epoch_ns: Callable[[], int],
) -> None:
    """Shadow WASI's ``poll_oneoff`` in ``linker`` (after ``define_wasi``).

    ``sleep_until(ns)`` blocks until the host's ``time.monotonic_ns()`` reaches
    ``ns`` and returns True, or returns False at once when the run is stopped
    (its deadline, a cancel, a quota): the call then fails with EINTR and the
    job stops at its next epoch check. ``guest_epoch_ns()`` is the host
    monotonic time the job's monotonic clock counts from.

    Never raises into wasmtime: a Python exception crossing a host call is
    parked in a process-wide slot in wasmtime-py, where another thread's trap
    could pick it up.
    """
    linker.allow_shadowing = True
    i32 = wasmtime.ValType.i32()
    ty = wasmtime.FuncType([i32, i32, i32, i32], [i32])

    def poll_oneoff(caller: wasmtime.Caller, in_ptr: int, out_ptr: int, n: int, nout: int) -> int:
        try:
            return _poll(caller, in_ptr & _U32, out_ptr & _U32, n & _U32, nout & _U32)
        except Exception:  # noqa: BLE001 - see the docstring: an errno, never an exception
            return ERRNO_FAULT

    def _poll(caller: wasmtime.Caller, in_ptr: int, out_ptr: int, n: int, nout: int) -> int:
        if n == 0 or n > MAX_SUBSCRIPTIONS:
            return ERRNO_INVAL
        memory = caller.get("memory")
        if not isinstance(memory, wasmtime.Memory):
            return ERRNO_FAULT
        size = memory.data_len(caller)
        if (
            in_ptr + n * SUBSCRIPTION.size > size
            or out_ptr + n * EVENT.size > size
            or nout + 4 > size
        ):
            return ERRNO_FAULT
        subs = parse_subscriptions(
            bytes(memory.read(caller, in_ptr, in_ptr + n * SUBSCRIPTION.size))
        )
        if isinstance(subs, int):
            return subs
        now = time.monotonic_ns()
        deadlines = clock_deadlines(
            subs, now_ns=now, guest_epoch_ns=guest_epoch_ns(), realtime_ns=time.time_ns()
        )
        wake = min(at for at in deadlines if at is not None)
        if wake > now and not sleep_until(wake):
            return ERRNO_INTR
        events = fired_events(subs, deadlines, max(wake, time.monotonic_ns()))
        if events:  # at most n, and memory only grows: the bounds checked above hold
            memory.write(caller, b"".join(events), out_ptr)
        memory.write(caller, len(events).to_bytes(4, "little"), nout)
        return ERRNO_SUCCESS

    linker.define_func("wasi_snapshot_preview1", "poll_oneoff", ty, poll_oneoff, access_caller=True)

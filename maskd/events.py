"""A bounded fan-out of node events to watchers (``v1.watch``, the TUI).

Publishing never blocks the node: each subscriber has its own bounded queue,
and a subscriber that falls that far behind is cut off (its stream ends; the
client reconnects and reloads) rather than slowing everyone else.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import trio


class EventBus:
    def __init__(self, *, queue_size: int = 1024, clock: Callable[[], float] = time.time):
        self.queue_size = queue_size
        self.clock = clock
        self._subscribers: set[trio.MemorySendChannel] = set()
        self.published = 0
        self.dropped_subscribers = 0

    def publish(self, event: dict[str, Any]) -> None:
        event.setdefault("ts", self.clock())
        self.published += 1
        for send in list(self._subscribers):
            try:
                send.send_nowait(event)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.discard(send)
                send.close()
                self.dropped_subscribers += 1

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[trio.MemoryReceiveChannel]:
        send, recv = trio.open_memory_channel[dict](self.queue_size)
        self._subscribers.add(send)
        try:
            yield recv
        finally:
            self._subscribers.discard(send)
            send.close()
            recv.close()

    def subscriber_count(self) -> int:
        return len(self._subscribers)

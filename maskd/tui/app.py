"""``mask top``: a live view of this node, its peers and the offer book.

How it stays live: one background worker owns the daemon session. It
connects (through an injected client factory), opens ``v1.watch``, loads a
snapshot (node info, peers, offers), then applies watch events as they come
and re-reads the snapshot every ``refresh_interval`` seconds. The periodic
re-read is not redundant: the daemon may drop events for a slow watcher
(its queues are bounded) and latency/score change without events, so
snapshots reconcile whatever the events missed. When the daemon goes away the
worker shows a banner and reconnects with capped exponential backoff; on
success it reloads everything and hides the banner.

State flows one way: the worker calls the ``apply_*`` methods, which are
synchronous and only touch widgets (Textual's "attributes down").
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import Footer, Static

from maskd import render
from maskd.tui.client import ClientFactory, TopClient
from maskd.tui.widgets import OffersTable, PeersTable, offer_row, peer_row
from protocol.errors import DaemonUnavailable, MaskError

__all__ = ["TopApp"]

REFRESH_INTERVAL_S = 2.0
RETRY_INITIAL_S = 0.1
RETRY_CAP_S = 2.0


class TopApp(App[None]):
    """Peers and offers, live. Takes a client factory so tests can fake the daemon."""

    CSS_PATH = "top.tcss"
    TITLE = "mask top"
    BINDINGS = [Binding("q", "quit", "quit")]

    def __init__(
        self,
        client_factory: ClientFactory,
        *,
        socket_label: str | os.PathLike[str] = "the daemon socket",
        refresh_interval: float = REFRESH_INTERVAL_S,
        retry_initial: float = RETRY_INITIAL_S,
        retry_cap: float = RETRY_CAP_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self._client_factory = client_factory
        self.socket_label = os.fspath(socket_label)
        self.refresh_interval = refresh_interval
        self.retry_initial = retry_initial
        self.retry_cap = retry_cap
        self._clock = clock
        self._offers: dict[str, dict[str, Any]] = {}
        self._refresh_now = asyncio.Event()
        # How many snapshots have been loaded (tests and the status line use it).
        self.loads = 0
        self.connected = False

    def compose(self) -> ComposeResult:
        yield Static("connecting…", id="node")
        yield Static("", id="banner")
        with Vertical(id="tables"):
            yield PeersTable(id="peers")
            yield OffersTable(id="offers")
            # A later issue adds a JobsTable here, fed by v1.jobs.list and job.* events.
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#banner", Static).display = False
        self.run_session()

    # -- the session worker --

    @work(exclusive=True, group="session")
    async def run_session(self) -> None:
        """Connect, follow, and on any daemon failure retry with backoff. Forever."""
        delay = self.retry_initial
        while True:
            try:
                client = await self._client_factory()
            except MaskError as exc:
                self.show_unreachable(exc)
            else:
                try:
                    await self._follow(client)
                    self.show_unreachable(None)  # the daemon ended the stream
                except MaskError as exc:
                    self.show_unreachable(exc)
                finally:
                    with contextlib.suppress(MaskError, OSError):
                        await client.close()
                if self.loads:
                    delay = self.retry_initial
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.retry_cap)

    async def _follow(self, client: TopClient) -> None:
        events = client.watch()
        await self._load(client)
        followers = [
            asyncio.create_task(self._apply_events(events)),
            asyncio.create_task(self._refresh_loop(client)),
        ]
        try:
            done, _ = await asyncio.wait(followers, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in followers:
                task.cancel()
            await asyncio.gather(*followers, return_exceptions=True)
            with contextlib.suppress(Exception):
                await events.aclose()  # type: ignore[attr-defined]
        for task in done:
            task.result()  # re-raise the failure that ended the session

    async def _load(self, client: TopClient) -> None:
        info = await client.node_info()
        peers = await client.peers()
        offers = await client.offers()
        self.apply_snapshot(info, peers, offers)
        self.loads += 1
        self.connected = True
        self.query_one("#banner", Static).display = False

    async def _apply_events(self, events: AsyncIterator[dict[str, Any]]) -> None:
        async for event in events:
            if isinstance(event, Mapping):
                self.apply_event(event)

    async def _refresh_loop(self, client: TopClient) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.refresh_interval):
                    await self._refresh_now.wait()
            self._refresh_now.clear()
            await self._load(client)

    # -- state → widgets (synchronous) --

    def show_unreachable(self, exc: MaskError | None) -> None:
        self.connected = False
        if exc is None or isinstance(exc, DaemonUnavailable):
            text = f"daemon not reachable at {self.socket_label} — retrying…"
        else:
            text = f"error: {exc.message} — retrying…"
        banner = self.query_one("#banner", Static)
        banner.update(text)
        banner.display = True

    def apply_snapshot(
        self,
        info: Mapping[str, Any],
        peers: list[dict[str, Any]],
        offers: list[dict[str, Any]],
    ) -> None:
        self.apply_node_info(info)
        self.query_one(PeersTable).reconcile(
            (str(p["peer_id"]), peer_row(p)) for p in peers if p.get("peer_id")
        )
        self._offers = {str(o["offer_id"]): o for o in offers if o.get("offer_id")}
        now = self._clock()
        self.query_one(OffersTable).reconcile(
            (key, offer_row(offer, now)) for key, offer in self._offers.items()
        )

    def apply_node_info(self, info: Mapping[str, Any]) -> None:
        parts = [
            f"node {info.get('peer_id') or render.DASH}",
            f"{info.get('peers', render.DASH)} peers",
            f"{info.get('offers', render.DASH)} offers",
            f"up {render.format_duration(info.get('uptime_s'))}",
        ]
        if info.get("role"):
            parts.append(str(info["role"]))
        if info.get("version"):
            parts.append(f"maskd {info['version']}")
        self.query_one("#node", Static).update(" · ".join(parts))

    def apply_event(self, event: Mapping[str, Any]) -> None:
        """One ``v1.event``; unknown types (``job.*`` for now) are ignored."""
        kind = event.get("type")
        if kind == "peer.joined":
            peer = event.get("peer") if isinstance(event.get("peer"), Mapping) else {}
            peer_id = peer.get("peer_id") or event.get("peer_id")
            if peer_id:
                self.query_one(PeersTable).upsert(str(peer_id), peer_row(peer))
        elif kind == "peer.left":
            peer = event.get("peer") if isinstance(event.get("peer"), Mapping) else {}
            peer_id = peer.get("peer_id") or event.get("peer_id")
            if peer_id:
                self.query_one(PeersTable).remove(str(peer_id))
        elif kind in ("offer.added", "offer.updated"):
            offer = event.get("offer")
            if isinstance(offer, Mapping) and offer.get("offer_id"):
                key = str(offer["offer_id"])
                self._offers[key] = dict(offer)
                self.query_one(OffersTable).upsert(key, offer_row(offer, self._clock()))
        elif kind in ("offer.expired", "offer.withdrawn"):
            offer = event.get("offer") if isinstance(event.get("offer"), Mapping) else {}
            offer_id = offer.get("offer_id") or event.get("offer_id")
            if offer_id:
                self._offers.pop(str(offer_id), None)
                self.query_one(OffersTable).remove(str(offer_id))
        elif kind == "node.info":
            info = event.get("node") or event.get("info")
            if isinstance(info, Mapping):
                self.apply_node_info(info)
            else:
                self._refresh_now.set()

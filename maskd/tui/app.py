"""``mask top``: a live view of this node, its peers, the offer book, its jobs and its money.

How it stays live: one background worker owns the daemon session. It
connects (through an injected client factory), opens ``v1.watch``, loads a
snapshot (node info, peers, offers, jobs), then applies watch events as they come
and re-reads the snapshot every ``refresh_interval`` seconds. The periodic
re-read is not redundant: the daemon may drop events for a slow watcher
(its queues are bounded) and latency/score change without events, so
snapshots reconcile whatever the events missed. When the daemon goes away the
worker shows a banner and reconnects with capped exponential backoff; on
success it reloads everything and hides the banner.

Jobs: a ``job.state`` event changes its row's state in place. An event for a
job the table does not have yet (a new one) asks for ``v1.jobs.list`` again;
that reload is debounced (at most one per ``refresh_interval``, on top of the
periodic one), so a burst of new jobs costs one call. A daemon from before
jobs answers ``v1.jobs.list`` with -32601: the jobs table is hidden and not
asked for again until the next connect (the daemon may have been upgraded).

Money (``m`` switches to it and back): balances, channels, vouchers, batches
and the chain's status, from ``v1.wallet.balance`` and ``v1.ledger.show``.
There are no money events, and a balance costs the daemon chain reads, so
these two calls are polled every ``refresh_interval`` only while the money
view is on screen (and once at once when it is opened). A node without a
chain (``chain_off``, or a ledger whose state is ``off``) shows that instead
of empty tables; a daemon from before money (-32601) says so. A refusal or a
timeout of a money call is shown in the view and does not end the session;
only a daemon that goes away does.

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
from textual.widgets import ContentSwitcher, Footer, Static

from maskd import render
from maskd.rpc import METHOD_NOT_FOUND
from maskd.tui.client import ClientFactory, TopClient
from maskd.tui.money import ChannelsTable, MoneyPane, MoneyState
from maskd.tui.widgets import (
    JobsTable,
    OffersTable,
    PeersTable,
    job_key,
    job_row,
    job_sort_key,
    offer_row,
    peer_row,
)
from protocol.errors import DaemonUnavailable, MaskError, RpcError

__all__ = ["TopApp"]

REFRESH_INTERVAL_S = 2.0
RETRY_INITIAL_S = 0.1
RETRY_CAP_S = 2.0

VIEWS = ("tables", "money")
HELP = (
    "m  money view, and back to peers & jobs    ? this help    q quit\n"
    "peers & jobs: the node, its peers, the offer book and its jobs (newest first), "
    "live from the daemon's events\n"
    "money: balances (MASK and base units), channels (in: a requester owes this node; "
    "out: this node owes a provider), pending vouchers, voucher_missing jobs, settlement "
    "batches, and the chain's status; read while the view is shown"
)


class TopApp(App[None]):
    """Peers, offers and jobs, live, and money on ``m``. Takes a client factory so tests
    can fake the daemon."""

    CSS_PATH = "top.tcss"
    TITLE = "mask top"
    BINDINGS = [
        # Both on m: check_action shows the one that leaves the current view.
        Binding("m", "view('money')", "money"),
        Binding("m", "view('tables')", "peers & jobs"),
        Binding("question_mark", "help", "help"),
        Binding("q", "quit", "quit"),
    ]

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
        self._jobs: dict[str, dict[str, Any]] = {}
        self._refresh_now = asyncio.Event()
        # Set by an event for a job we have not listed; the jobs reloader clears it.
        self._jobs_stale = asyncio.Event()
        # False once this connection's daemon said it has no v1.jobs.list.
        self.jobs_supported = True
        # How many snapshots have been loaded (tests and the status line use it).
        self.loads = 0
        self.connected = False
        # Which view is on screen: "tables" (peers, offers, jobs) or "money".
        self.view = "tables"
        # Set while the money view is shown; the money poller waits on it.
        self._money_visible = asyncio.Event()
        # Set to read money now (the view was just opened) instead of at the next interval.
        self._money_now = asyncio.Event()
        # Polls of the money calls that reached the view (tests use it).
        self.money_loads = 0
        self._seen_ready = False

    def compose(self) -> ComposeResult:
        yield Static("connecting…", id="node")
        yield Static("", id="banner")
        yield Static(HELP, id="help", markup=False)
        with ContentSwitcher(initial="tables", id="views"):
            with Vertical(id="tables"):
                yield PeersTable(id="peers")
                yield OffersTable(id="offers")
                yield JobsTable(id="jobs")
            yield MoneyPane(id="money")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#banner", Static).display = False
        self.query_one("#help", Static).display = False
        self.run_session()

    def on_ready(self) -> None:
        self._seen_ready = True

    @property
    def closing(self) -> bool:
        """True once the app shuts down and its widgets are being removed.

        Textual cancels the session worker then, but the tasks it follows with
        may still run a step before the cancellation reaches them (a refresh
        whose timer fired); they check this instead of touching gone widgets.
        """
        return self._seen_ready and not self.is_running

    # -- keys --

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "view":
            return bool(parameters) and parameters[0] != self.view  # hide the current view's key
        return True

    def action_view(self, name: str) -> None:
        """Show ``name`` ("tables" or "money"); the money view starts polling at once."""
        if name not in VIEWS or name == self.view:
            return
        self.view = name
        self.query_one("#views", ContentSwitcher).current = name
        if name == "money":
            self.sub_title = "money"
            self._money_now.set()
            self._money_visible.set()
            self.query_one(ChannelsTable).focus()
        else:
            self.sub_title = ""
            self._money_visible.clear()
            self.query_one(PeersTable).focus()
        self.refresh_bindings()

    def action_help(self) -> None:
        help_text = self.query_one("#help", Static)
        help_text.display = not help_text.display

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
        self.jobs_supported = True  # a new connection may be to a newer daemon
        events = client.watch()
        await self._load(client)
        followers = [
            asyncio.create_task(self._apply_events(events)),
            asyncio.create_task(self._refresh_loop(client)),
            asyncio.create_task(self._jobs_reload_loop(client)),
            asyncio.create_task(self._money_loop(client)),
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
        jobs = await self._fetch_jobs(client)
        if self.closing:
            return
        self.apply_snapshot(info, peers, offers)
        self.apply_jobs(jobs)
        self.loads += 1
        self.connected = True
        self.query_one("#banner", Static).display = False

    async def _fetch_jobs(self, client: TopClient) -> list[dict[str, Any]] | None:
        """The job list, or None when this daemon has no jobs (v1.jobs.list unknown)."""
        # Cleared before the call: an unknown job's event that arrives while
        # it is in flight may not be in its answer, so it asks again.
        self._jobs_stale.clear()
        if not self.jobs_supported:
            return None
        try:
            jobs = await client.jobs()
        except RpcError as exc:
            if exc.rpc_code != METHOD_NOT_FOUND:
                raise
            self.jobs_supported = False
            return None
        return [job for job in jobs if isinstance(job, Mapping)] if isinstance(jobs, list) else []

    async def _apply_events(self, events: AsyncIterator[dict[str, Any]]) -> None:
        async for event in events:
            if isinstance(event, Mapping):
                if self.closing:
                    return
                self.apply_event(event)

    async def _refresh_loop(self, client: TopClient) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.refresh_interval):
                    await self._refresh_now.wait()
            self._refresh_now.clear()
            await self._load(client)

    async def _jobs_reload_loop(self, client: TopClient) -> None:
        """Reload jobs when an event names one we lack; then rest a refresh interval."""
        while True:
            await self._jobs_stale.wait()
            jobs = await self._fetch_jobs(client)
            if not self.closing:
                self.apply_jobs(jobs)
            await asyncio.sleep(self.refresh_interval)

    async def _money_loop(self, client: TopClient) -> None:
        """While the money view is shown: read money now, then every refresh interval."""
        while True:
            await self._money_visible.wait()
            self._money_now.clear()
            state = await self._fetch_money(client)
            if self._money_visible.is_set() and not self.closing:
                self.apply_money(state)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.refresh_interval):
                    await self._money_now.wait()

    async def _fetch_money(self, client: TopClient) -> MoneyState:
        """Both money calls. A refusal or a timeout becomes part of the state (the
        connection still works: a slow chain read must not make ``mask top``
        reconnect in a loop); a daemon that went away raises and ends the session."""
        errors: list[str] = []
        ledger: Mapping[str, Any] | None = None
        try:
            answer = await client.ledger_show()
        except (RpcError, DaemonUnavailable) as exc:
            _reraise_unless_refused(exc)
            if isinstance(exc, RpcError) and exc.rpc_code == METHOD_NOT_FOUND:
                return MoneyState(unsupported=True)
            if exc.code == "chain_off":
                return MoneyState(chain_off=True, off_hint=exc.hint)
            errors.append(_money_error("v1.ledger.show", exc))
        else:
            ledger = answer if isinstance(answer, Mapping) else {}
            status = ledger.get("status")
            if isinstance(status, Mapping) and status.get("state") == "off":
                return MoneyState(ledger=ledger, chain_off=True)
        balance: Mapping[str, Any] | None = None
        try:
            answer = await client.wallet_balance()
        except (RpcError, DaemonUnavailable) as exc:
            _reraise_unless_refused(exc)
            if exc.code == "chain_off":
                return MoneyState(ledger=ledger, chain_off=True, off_hint=exc.hint)
            errors.append(_money_error("v1.wallet.balance", exc))
        else:
            balance = answer if isinstance(answer, Mapping) else None
        return MoneyState(ledger=ledger, balance=balance, errors=tuple(errors))

    # -- state → widgets (synchronous) --

    def apply_money(self, state: MoneyState) -> None:
        self.query_one(MoneyPane).show(state, self._clock())
        self.money_loads += 1

    def show_unreachable(self, exc: MaskError | None) -> None:
        if self.closing:
            return
        self.connected = False
        if exc is None or (isinstance(exc, DaemonUnavailable) and exc.code != "daemon_busy"):
            text = f"daemon not reachable at {self.socket_label} — retrying…"
        else:
            # A daemon's error may quote a peer or a job: Text, never markup.
            text = f"error: {exc.message} — retrying…"
        banner = self.query_one("#banner", Static)
        banner.update(render.untrusted(text, multiline=True))
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

    def apply_jobs(self, jobs: list[dict[str, Any]] | None) -> None:
        """Show ``jobs`` newest first; None (a daemon without jobs) hides the table."""
        table = self.query_one(JobsTable)
        if jobs is None:
            self._jobs = {}
            table.reconcile(())
            table.display = False
            return
        ordered = sorted((job for job in jobs if job.get("job_id")), key=job_sort_key, reverse=True)
        self._jobs = {job_key(job["job_id"], job.get("role")): dict(job) for job in ordered}
        table.reconcile((key, job_row(job)) for key, job in self._jobs.items())
        table.display = True

    def apply_job_state(self, event: Mapping[str, Any]) -> None:
        """One ``job.state``: its row's state changes in place; an unknown job reloads."""
        job_id = event.get("job_id")
        state = event.get("state")
        if not job_id or not isinstance(state, str) or not self.jobs_supported:
            return
        role = event.get("role")
        if role:
            key = job_key(job_id, role)
            keys = [key] if key in self._jobs else []
        else:  # no role given: every row of that job
            keys = [k for k, job in self._jobs.items() if job.get("job_id") == job_id]
        if not keys:
            self._jobs_stale.set()
            return
        table = self.query_one(JobsTable)
        for key in keys:
            job = self._jobs[key]
            job["state"] = state
            if isinstance(event.get("ts"), int | float):
                job["updated_at"] = event["ts"]
            table.upsert(key, job_row(job))

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
        self.query_one("#node", Static).update(
            render.untrusted(" · ".join(parts), max_chars=4 * render.CELL_MAX_CHARS)
        )

    def apply_event(self, event: Mapping[str, Any]) -> None:
        """One ``v1.event``; unknown types are ignored."""
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
        elif kind == "job.state":
            self.apply_job_state(event)
        elif kind == "node.info":
            info = event.get("node") or event.get("info")
            if isinstance(info, Mapping):
                self.apply_node_info(info)
            else:
                self._refresh_now.set()


def _reraise_unless_refused(exc: MaskError) -> None:
    """A daemon that answered (an RpcError) or was slow (``daemon_timeout``) keeps
    the session; one that went away or is busy ends it, like any other call."""
    if isinstance(exc, DaemonUnavailable) and exc.code != "daemon_timeout":
        raise exc


def _money_error(method: str, exc: MaskError) -> str:
    """What the money view says about a failed call: raw text, the pane escapes it."""
    text = f"{method}: {exc.message}"
    return f"{text} ({exc.hint})" if exc.hint else text

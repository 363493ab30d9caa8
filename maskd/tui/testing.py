"""A fake daemon for ``mask top`` tests (public, like httpcore's mock backends).

``FakeTopClient`` holds node info, peers, offers and jobs, and plays both
roles the app needs: its ``connect`` is the client factory and the object it
returns is the client. Tests change state and push events (``add_offer``,
``remove_peer``, ``add_job``, ``update_job``, ``push_event``) and take the
daemon away and back (``disconnect``, ``reconnect``); the app cannot tell it
from a socket. ``FakeTopClient(..., jobs=None)`` is a daemon from before jobs:
``jobs()`` answers -32601 like an RpcServer that lacks the method.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Iterable
from typing import Any

from maskd.rpc import METHOD_NOT_FOUND
from protocol.errors import DaemonUnavailable, MaskError, RpcError

__all__ = ["FakeTopClient", "chain_off_ledger"]

_GONE = object()


def chain_off_ledger(chain_id: int = 31337) -> dict[str, Any]:
    """``v1.ledger.show`` of a node with ``chain.backend = off`` (as ``maskd.money`` answers)."""
    return {
        "chain": {"backend": "off", "rpc_url": "off", "chain_id": chain_id, "confirmations": 1},
        "contracts": {"token": None, "escrow": "0x" + "0" * 40},
        "channels": [],
        "batches": [],
        "pending_vouchers": [],
        "missing": [],
        "status": {"state": "off", "last_error": None, "next_retry_at": None, "attempts": 0},
    }


class FakeTopClient:
    """Scripted daemon state and events; pass ``fake.connect`` to ``TopApp``."""

    def __init__(
        self,
        info: dict[str, Any] | None = None,
        peers: Iterable[dict[str, Any]] = (),
        offers: Iterable[dict[str, Any]] = (),
        jobs: Iterable[dict[str, Any]] | None = (),
        *,
        socket_path: str = "/fake/maskd.sock",
        ledger: dict[str, Any] | None = None,
        balance: dict[str, Any] | None = None,
    ) -> None:
        self.socket_path = socket_path
        self.info: dict[str, Any] = dict(info or {"peer_id": "12D3KooWFakeNode", "peers": 0})
        self.peer_state: dict[str, dict[str, Any]] = {p["peer_id"]: dict(p) for p in peers}
        self.offer_state: dict[str, dict[str, Any]] = {o["offer_id"]: dict(o) for o in offers}
        # Keyed by (job_id, role), like the daemon's job store.
        self.job_state: dict[tuple[str, str], dict[str, Any]] = {
            (j["job_id"], j["role"]): dict(j) for j in jobs or ()
        }
        self.supports_jobs = jobs is not None
        self.job_calls = 0  # v1.jobs.list calls, answered or refused
        self.ledger_state = ledger
        self.balance_state = balance
        self.money_errors: dict[str, MaskError] = {}  # method name -> what it raises
        self.supports_money = True
        self.money_calls = 0  # v1.ledger.show and v1.wallet.balance calls
        self.up = True
        self.connects = 0  # successful connects
        self._watchers: list[asyncio.Queue[Any]] = []

    # -- the client factory and the client --

    async def connect(self) -> FakeTopClient:
        self._check_up()
        self.connects += 1
        return self

    async def node_info(self) -> dict[str, Any]:
        self._check_up()
        return {**self.info, "peers": len(self.peer_state), "offers": len(self.offer_state)}

    async def peers(self) -> list[dict[str, Any]]:
        self._check_up()
        return [dict(p) for p in self.peer_state.values()]

    async def offers(self) -> list[dict[str, Any]]:
        self._check_up()
        return [dict(o) for o in self.offer_state.values()]

    async def jobs(self) -> list[dict[str, Any]]:
        self._check_up()
        self.job_calls += 1
        if not self.supports_jobs:
            raise RpcError(
                "Method not found: v1.jobs.list", rpc_code=METHOD_NOT_FOUND, code="method_not_found"
            )
        return [dict(j) for j in self.job_state.values()]

    async def ledger_show(self) -> dict[str, Any]:
        self._money_call("v1.ledger.show")
        if self.ledger_state is None:
            return chain_off_ledger()
        return copy.deepcopy(self.ledger_state)

    async def wallet_balance(self) -> dict[str, Any]:
        self._money_call("v1.wallet.balance")
        if self.ledger_state is None:
            raise RpcError(
                "this node has no chain (chain.backend = off)",
                code="chain_off",
                hint='set [chain] backend = "embedded" or "rpc" in the config',
            )
        if self.balance_state is None:
            raise RpcError(
                "the chain is not connected: not connected to the chain yet",
                code="chain_unreachable",
                hint="`mask ledger` shows the retries; check [chain] rpc_url",
            )
        return dict(self.balance_state)

    def _money_call(self, method: str) -> None:
        self._check_up()
        self.money_calls += 1
        if not self.supports_money:
            raise RpcError(
                f"Method not found: {method}", rpc_code=METHOD_NOT_FOUND, code="method_not_found"
            )
        if method in self.money_errors:
            raise self.money_errors[method]

    def watch(self) -> AsyncIterator[dict[str, Any]]:
        """Subscribes at once (not at first iteration), like a real subscription."""
        self._check_up()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self._watchers.append(queue)
        return self._drain(queue)

    async def _drain(self, queue: asyncio.Queue[Any]) -> AsyncIterator[dict[str, Any]]:
        try:
            while True:
                item = await queue.get()
                if item is _GONE:
                    raise self._unavailable()
                yield item
        finally:
            if queue in self._watchers:
                self._watchers.remove(queue)

    async def close(self) -> None:
        return None

    # -- driving it from a test --

    @property
    def watching(self) -> int:
        """How many watch streams are open now."""
        return len(self._watchers)

    def push_event(self, event: dict[str, Any]) -> None:
        """Deliver one event (the ``params`` of a v1.event) to every watcher."""
        for queue in self._watchers:
            queue.put_nowait(dict(event))

    def add_peer(self, peer: dict[str, Any]) -> None:
        self.peer_state[peer["peer_id"]] = dict(peer)
        self.push_event({"type": "peer.joined", "peer_id": peer["peer_id"], "peer": peer})

    def remove_peer(self, peer_id: str) -> None:
        peer = self.peer_state.pop(peer_id, {"peer_id": peer_id})
        self.push_event({"type": "peer.left", "peer_id": peer_id, "peer": peer})

    def add_offer(self, offer: dict[str, Any]) -> None:
        kind = "offer.updated" if offer["offer_id"] in self.offer_state else "offer.added"
        self.offer_state[offer["offer_id"]] = dict(offer)
        self.push_event({"type": kind, "peer_id": offer.get("peer_id"), "offer": offer})

    def remove_offer(self, offer_id: str, *, kind: str = "offer.withdrawn") -> None:
        offer = self.offer_state.pop(offer_id, {"offer_id": offer_id})
        self.push_event({"type": kind, "peer_id": offer.get("peer_id"), "offer": offer})

    def add_job(self, job: dict[str, Any], *, event: bool = True) -> None:
        """A new job (or a replaced one); the daemon announces it with ``job.state``."""
        self.job_state[(job["job_id"], job["role"])] = dict(job)
        if event:
            self._job_event(self.job_state[(job["job_id"], job["role"])])

    def update_job(
        self, job_id: str, role: str = "requester", *, event: bool = True, **changes: Any
    ) -> None:
        """Change fields of a job; ``job.state`` goes out (as the daemon's does) on each change."""
        job = self.job_state[(job_id, role)]
        job.update(changes)
        if event:
            self._job_event(job)

    def _job_event(self, job: dict[str, Any]) -> None:
        self.push_event(
            {
                "type": "job.state",
                "job_id": job["job_id"],
                "role": job["role"],
                "state": job.get("state"),
                "ts": job.get("updated_at"),
            }
        )

    def disconnect(self) -> None:
        """The daemon dies: open watches fail, calls and connects are refused."""
        self.up = False
        for queue in self._watchers:
            queue.put_nowait(_GONE)

    def reconnect(self) -> None:
        """The daemon is back; the app's next retry succeeds."""
        self.up = True

    def _check_up(self) -> None:
        if not self.up:
            raise self._unavailable()

    def _unavailable(self) -> DaemonUnavailable:
        return DaemonUnavailable(f"no maskd daemon at {self.socket_path}")

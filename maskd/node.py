"""The node: wires every service into one trio nursery.

This is the composition root. It owns no protocol logic of its own: the
validation pipeline, scores and the offer book are pure modules; the mesh is
the libp2p shell; this file connects their inputs and outputs, publishes this
node's offer, and serves the RPC methods.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import trio

from maskd import known_peers
from maskd.config import Config
from maskd.events import EventBus
from maskd.identity import NodeIdentity
from p2p.mesh import Mesh, MeshHandlers
from p2p.validation import GossipValidator, ValidationLimits
from protocol.blocks import BLOCKS_PROTOCOL
from protocol.codec import encode
from protocol.identity import sign_gossip
from protocol.messages import BIDS_TOPIC, OFFERS_TOPIC, Gpu, OfferWithdrawal, Prices, ResourceOffer
from protocol.supervisor import Supervisor
from protocol.verdict import Outcome
from scheduler.offer_book import OfferAdded, OfferBook, OfferEvent, OfferRemoved, OfferUpdated
from storage.service import StorageService
from worker.capacity import Capacity, measure

log = logging.getLogger("maskd.node")


KNOWN_PEERS_SAVE_S = 10.0  # how often connected peers are recorded (a small JSON file)


def maskd_version() -> str:
    try:
        from importlib.metadata import version

        return version("maskd")
    except Exception:
        return "0.1.0"


def offer_json(offer: ResourceOffer) -> dict[str, Any]:
    return {
        "offer_id": offer.offer_id,
        "peer_id": offer.peer_id,
        "account": offer.identity.account,
        "seq": offer.seq,
        "cpu": offer.cpu,
        "memory_mb": offer.memory_mb,
        "disk_mb": offer.disk_mb,
        "storage_mb": offer.storage_mb,
        "gpus": [msgspec.structs.asdict(g) for g in offer.gpus],
        "executors": list(offer.executors),
        "prices": msgspec.structs.asdict(offer.prices),
        "addrs": list(offer.addrs),
        "issued_at": offer.issued_at,
        "expires_at": offer.expires_at,
        "stake": offer.stake,
    }


class Node:
    def __init__(
        self,
        config: Config,
        identity: NodeIdentity,
        *,
        clock: Callable[[], float] = time.time,
        measure_capacity: Callable[[], Capacity] | None = None,
        rng: random.Random | None = None,
    ):
        self.config = config
        self.identity = identity
        self.clock = clock
        self.rng = rng or random.Random()
        self.started_at = clock()
        self.events = EventBus()
        # every background task of this node runs under it (protocol.supervisor)
        self.supervisor = Supervisor("node", logger=log)
        self.book = OfferBook()
        self.validator = GossipValidator(
            ValidationLimits(max_message_bytes=config.p2p.max_message_bytes)
        )
        self.mesh = Mesh(
            config.p2p,
            identity.peer_seed,
            validator=self.validator,
            handlers=MeshHandlers(
                peer_connected=self._peer_connected,
                peer_disconnected=self._peer_disconnected,
                gossip_accepted=self._gossip_accepted,
            ),
            clock=clock,
            topics={OFFERS_TOPIC: "offers", BIDS_TOPIC: "bids"},
            supervisor=self.supervisor,
        )
        self.offer_id = hashlib.sha256(
            f"{identity.peer_id}:{self.started_at}:{os.getpid()}".encode()
        ).hexdigest()[:16]
        self._seq = 0
        self._my_offer: ResourceOffer | None = None
        self._capacity: Capacity | None = None
        self._measure = measure_capacity or self._measure_default
        self._book_changed = trio.Event()
        self._republish_now = trio.Event()
        self.ready = trio.Event()
        self.storage = StorageService(
            config.storage,
            config.data_path,
            peer_id=identity.peer_id,
            open_stream=self.mesh.new_stream,
            connected_peers=lambda: [v.peer_id for v in self.mesh.peers()],
            penalise=self.mesh.penalise,
            publish=self.events.publish,
            lookup_offer=self.book.get,
            list_offers=self.book.offers,
            storage_mb=config.offers.storage_mb if self.sells else 0,
            price_gb_hour=config.offers.prices.storage_gb_hour,
            clock=clock,
            supervisor=self.supervisor,
        )
        self.mesh.set_stream_handler(BLOCKS_PROTOCOL, self.storage.handle_stream)
        from maskd.jobs import Jobs
        from maskd.money import Money

        self.money = Money(
            config,
            identity.account_key,
            data_path=config.data_path,
            clock=clock,
            owed_out=self._owed_out,
            penalise=self.mesh.penalise,
            rng=self.rng,
        )
        self.jobs = Jobs(self)
        self.mesh.topic_validators["bids"] = self.jobs.validate_bid
        self._peers_file = config.data_path / known_peers.FILE_NAME
        self._known_peers = known_peers.load(self._peers_file, clock())
        self._known_saved_at = clock()
        self.mesh.remember((e["peer_id"], e["addrs"]) for e in self._known_peers)

    @property
    def sells(self) -> bool:
        return self.config.node.role in ("provider", "both")

    # ------------------------------------------------------------------ run
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        from maskd.rpc import RpcServer

        cfg = self.config
        server = RpcServer(
            cfg.socket_path,
            self.rpc_methods(),
            self.rpc_streams(),
            max_line_bytes=cfg.rpc.max_line_bytes,
            max_connections=cfg.rpc.max_connections,
            idle_timeout=cfg.rpc.idle_timeout_s,
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            await nursery.start(self.mesh.run)
            await nursery.start(self.storage.run)
            await nursery.start(self.money.run)
            await nursery.start(self.jobs.run)
            keep = self.supervisor.keep_running
            nursery.start_soon(keep, "expiry_loop", self._expiry_loop)
            nursery.start_soon(keep, "known_peers_loop", self._known_peers_loop)
            if self.sells:
                nursery.start_soon(keep, "offer_loop", self._offer_loop)
            self._write_ready_file()
            self.ready.set()
            task_status.started(self)
            try:
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True):
                    await self._shutdown()
                nursery.cancel_scope.cancel()

    async def _known_peers_loop(self) -> None:
        """Record who we are connected to, so a restart can find them again."""
        while True:
            await trio.sleep(KNOWN_PEERS_SAVE_S)
            await self._save_known_peers()

    async def _save_known_peers(self) -> None:
        now = self.clock()
        entries = known_peers.merge(self._known_peers, self.mesh.dialable_peers(), now)
        saved, self._known_peers = self._known_peers, entries
        if not known_peers.needs_save(saved, entries, self._known_saved_at, now):
            return
        self._known_saved_at = now
        try:
            await trio.to_thread.run_sync(known_peers.save, self._peers_file, entries)
        except OSError as exc:
            log.warning("could not save known peers to %s: %s", self._peers_file, exc)

    async def _shutdown(self) -> None:
        """Withdraw our offer (best effort, bounded) before the mesh goes away."""
        with trio.move_on_after(2):
            await self._save_known_peers()
        if self._my_offer is not None:
            with trio.move_on_after(2):
                try:
                    await self._publish_withdrawal()
                    # give the gossip a moment to leave the socket
                    await trio.sleep(0.2)
                except Exception as exc:
                    log.warning("could not withdraw offer: %s", exc)
        (self.config.data_path / "maskd.json").unlink(missing_ok=True)

    def _write_ready_file(self) -> None:
        info = {
            "pid": os.getpid(),
            "peer_id": self.identity.peer_id,
            "addrs": self.full_addrs(),
            "socket": str(self.config.socket_path),
        }
        path = self.config.data_path / "maskd.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(info))
        os.replace(tmp, path)
        for addr in info["addrs"]:
            print(f"listening on {addr}", flush=True)
        print(f"rpc socket {info['socket']}", flush=True)

    def full_addrs(self) -> list[str]:
        suffix = f"/p2p/{self.identity.peer_id}"
        return [a if a.endswith(suffix) else a + suffix for a in self.mesh.addrs]

    # --------------------------------------------------------- mesh events
    def _peer_connected(self, peer_id: str) -> None:
        self.events.publish(
            {"type": "peer.joined", "peer_id": peer_id, "peer": self._peer_json(peer_id)}
        )

    def _peer_disconnected(self, peer_id: str) -> None:
        self.events.publish({"type": "peer.left", "peer_id": peer_id})
        self._emit(self.book.peer_departed(peer_id))

    def _gossip_accepted(self, topic: str, outcome: Outcome) -> None:
        msg = outcome.message
        now = self.clock()
        if isinstance(msg, ResourceOffer):
            self._emit(self.book.apply(msg, now))
        elif isinstance(msg, OfferWithdrawal):
            self._emit(self.book.withdraw(msg))

    def _emit(self, events: list[OfferEvent]) -> None:
        for ev in events:
            if isinstance(ev, OfferAdded):
                kind = "offer.added"
            elif isinstance(ev, OfferUpdated):
                kind = "offer.updated"
            else:
                assert isinstance(ev, OfferRemoved)
                kind = "offer.expired" if ev.reason == "expired" else "offer.withdrawn"
                # The validator's replay state outlives the offer (p2p/validation.py):
                # forgetting it here let a departed publisher's still-valid offer back in.
            payload = {"type": kind, "peer_id": ev.offer.peer_id, "offer": offer_json(ev.offer)}
            if isinstance(ev, OfferRemoved):
                payload["reason"] = ev.reason
            self.events.publish(payload)
        if events:
            self._book_changed.set()
            self._book_changed = trio.Event()

    async def _expiry_loop(self) -> None:
        while True:
            nxt = self.book.next_expiry()
            delay = 1.0 if nxt is None else max(0.0, min(1.0, nxt - self.clock()))
            with trio.move_on_after(delay):
                await self._book_changed.wait()
            self._emit(self.book.expire(self.clock()))

    # -------------------------------------------------------------- offers
    def initial_capacity(self) -> Capacity:
        """Measured once at start (the market's capacity); the offer loop re-measures."""
        if self._capacity is None:
            try:
                self._capacity = self._measure()
            except Exception as exc:
                log.warning("measuring capacity failed: %s", exc)
                return Capacity(cpu=0, memory_mb=0, disk_mb=0, gpus=())
        return self._capacity

    def _measure_default(self) -> Capacity:
        o = self.config.offers
        return measure(
            self.config.data_path, cpu=o.cpu, memory_mb=o.memory_mb, disk_mb=o.disk_mb, gpus=o.gpus
        )

    @staticmethod
    def _capacity_changed(old: Capacity | None, new: Capacity) -> bool:
        if old is None:
            return True
        if old.cpu != new.cpu or old.gpus != new.gpus:
            return True

        def moved(a: int, b: int) -> bool:
            return abs(a - b) > max(64, a // 10)  # >10 %: not every page-cache wobble

        return moved(old.memory_mb, new.memory_mb) or moved(old.disk_mb, new.disk_mb)

    def _next_seq(self) -> int:
        # Milliseconds since the epoch, strictly increasing: a restarted node's
        # offers must outrank the ones peers remember from its previous run.
        self._seq = max(self._seq + 1, int(self.clock() * 1000))
        return self._seq

    def build_offer(self, cap: Capacity) -> ResourceOffer:
        o = self.config.offers
        now = self.clock()
        return ResourceOffer(
            offer_id=self.offer_id,
            peer_id=self.identity.peer_id,
            seq=self._next_seq(),
            identity=self.identity.record,
            cpu=cap.cpu,
            memory_mb=cap.memory_mb,
            disk_mb=cap.disk_mb,
            gpus=tuple(Gpu(name=g.name, memory_mb=g.memory_mb, uuid=g.uuid) for g in cap.gpus),
            executors=self.jobs.executors(),
            prices=Prices(**msgspec.structs.asdict(o.prices)),
            storage_mb=o.storage_mb,
            addrs=tuple(self.full_addrs()),
            issued_at=now,
            expires_at=now + o.ttl_s,
            stake=str(self.money.stake),
        )

    def offer_changed(self) -> None:
        """What this node offers changed (a prover passed its start check):
        publish the offer again now rather than at the next interval."""
        self._republish_now.set()

    async def _offer_loop(self) -> None:
        o = self.config.offers
        last_publish = -1e18
        last_check = -1e18
        # ±10 % jitter: nodes started together (a fleet restart, a devnet) must
        # not republish in lock-step; bursts of offers saturate small machines
        # (docs/BENCHMARKS.md).
        interval = o.republish_interval_s
        while True:
            now = self.clock()
            republish = now - last_publish >= interval
            if now - last_check >= o.capacity_check_interval_s or self._capacity is None:
                last_check = now
                try:
                    cap = await trio.to_thread.run_sync(self._measure)
                except Exception as exc:  # a vanished disk must not end the node
                    log.warning("measuring capacity failed: %s", exc)
                    cap = self._capacity
                if cap is None:
                    await trio.sleep(o.capacity_check_interval_s)
                    continue
                if self._capacity_changed(self._capacity, cap):
                    self._capacity = cap
                    republish = True
            if republish or self._republish_now.is_set():
                self._republish_now = trio.Event()
                await self._publish_offer()
                last_publish = self.clock()
                interval = o.republish_interval_s * (0.9 + 0.2 * self.rng.random())
            with trio.move_on_after(min(interval, o.capacity_check_interval_s) / 2):
                await self._republish_now.wait()

    async def _publish_offer(self) -> None:
        offer = self.build_offer(self._capacity)
        if not offer.executors:
            return  # only zk-groth16 configured and no prover works (yet): nothing to sell
        self._my_offer = offer
        data = encode(sign_gossip(encode(offer), self.identity.peer_key))
        # our own offer is in our book whether or not the library loops it back
        self._emit(self.book.apply(offer, self.clock()))
        ok = await self.mesh.publish(OFFERS_TOPIC, data)
        if not ok:
            log.warning("offer not published (rate or size limit)")

    async def _publish_withdrawal(self) -> None:
        offer = self._my_offer
        now = self.clock()
        withdrawal = OfferWithdrawal(
            offer_id=offer.offer_id,
            peer_id=offer.peer_id,
            seq=self._next_seq(),
            issued_at=now,
            expires_at=now + self.config.offers.ttl_s,
        )
        data = encode(sign_gossip(encode(withdrawal), self.identity.peer_key))
        await self.mesh.publish(OFFERS_TOPIC, data)

    # ----------------------------------------------------------------- RPC
    def node_info(self) -> dict[str, Any]:
        drops = dict(self.validator.drops)
        st = self.mesh.stats
        return {
            "peer_id": self.identity.peer_id,
            "addrs": self.full_addrs(),
            "account": self.identity.account,
            "version": maskd_version(),
            "role": self.config.node.role,
            "peers": self.mesh.connected_count(),
            "uptime_s": round(self.clock() - self.started_at, 3),
            "offers": len(self.book),
            "drops": drops,
            "accepted": self.validator.accepted,
            "task_failures": dict(self.supervisor.failures),
            "mesh": {
                "garbage_frames": st.garbage_frames,
                "validator_errors": st.validator_errors,
                "hung_disconnects": st.hung_disconnects,
                "bans": st.bans,
                "publish_dropped": st.publish_dropped,
                "dials_ok": st.dials_ok,
                "dials_failed": st.dials_failed,
                "topic_mesh_peers": self.mesh.topic_mesh_sizes(),
                "banned_peers": sorted(self.mesh.scores.banned(self.clock())),
            },
            "data_dir": str(self.config.data_path),
            "socket": str(self.config.socket_path),
            "chain": self.money.info(),
            **({"zk_prover": zk} if (zk := self.jobs.zk_status()) is not None else {}),
        }

    def _peer_json(self, peer_id: str) -> dict[str, Any]:
        for view in self.mesh.peers():
            if view.peer_id == peer_id:
                return self._peer_view_json(view)
        return {"peer_id": peer_id, "addrs": [], "latency_ms": None, "score": 0.0, "offer": None}

    def _peer_view_json(self, view) -> dict[str, Any]:
        offer = self.book.get(view.peer_id)
        return {
            "peer_id": view.peer_id,
            "addrs": view.addrs,
            "latency_ms": view.latency_ms,
            "score": view.score,
            "connected_since": view.connected_since,
            "offer": offer_json(offer) if offer else None,
        }

    async def _owed_out(self) -> dict[str, int]:
        """What this node owes each provider account (its cumulative vouchers)."""
        return await self.jobs.store.owed_totals()

    def rpc_methods(self) -> dict[str, Callable[[dict], Awaitable[Any]]]:
        async def info(params: dict) -> dict:
            return self.node_info()

        async def peers(params: dict) -> list:
            return [self._peer_view_json(v) for v in self.mesh.peers()]

        async def offers(params: dict) -> list:
            return [offer_json(o) for o in self.book.offers()]

        return {
            "v1.node.info": info,
            "v1.peers.list": peers,
            "v1.offers.list": offers,
            **self.storage.rpc_methods(),
            **self.jobs.rpc_methods(),
            **self.money.rpc_methods(),
        }

    def rpc_streams(self):
        async def watch(params: dict, send) -> None:
            with self.events.subscribe() as events:
                await send({"type": "node.info", "ts": self.clock(), "node": self.node_info()})
                async for event in events:
                    await send(event)

        return {"v1.watch": watch}


def default_data_dir() -> Path:
    import platformdirs

    return platformdirs.user_data_path("maskd")

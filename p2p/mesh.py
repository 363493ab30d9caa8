"""The libp2p shell: host, gossipsub, DHT, liveness, re-dial, and the guards.

Everything py-libp2p-specific lives here (see ../shared/notes/libp2p.md for the
measured facts behind each choice). The node above talks to ``Mesh`` through
a small surface: ``publish()``, ``peers()``, ``addrs``, and the callbacks in
``MeshHandlers`` (connected, disconnected, accepted gossip). Validation
verdicts and scores come from the pure modules ``validation`` and ``scoring``.

Choices, each because the library's default bites:
- Noise only, Yamux, one connection per peer (3 per peer costs 250 ms a dial).
- Gossipsub: explicit heartbeat, adaptive gossip off, its spam limiter off (we
  rate-limit our own publishing), eclipse protection off on loopback (every
  peer has the same IP there), meshsub 1.1 (1.2's IDONTWANT costs CPU).
- The per-peer outbound RPC queue is raised from a hard-wired 32.
- Crash bug 1 (a garbage pubsub frame ends the process) is caught in
  ``GuardedPubsub``; crash bug 2 (a raising validator) in ``_gossip_validator``.
- A hung peer is never noticed by the library: ``_liveness_loop`` pings.
- Nothing re-dials: ``_redial_loop`` does, evicting the negative dial cache.
"""

from __future__ import annotations

import functools
import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import INotifee
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.host.ping import ID as PING_PROTOCOL
from libp2p.host.ping import PING_LENGTH
from libp2p.io.utils import read_exactly
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.tools.anyio_service import background_trio_service

from p2p import patches
from p2p.scoring import Ban, PeerScores
from p2p.settings import MeshSettings
from p2p.validation import GossipValidator
from protocol.supervisor import Supervisor
from protocol.verdict import Outcome, Reason, Verdict

log = logging.getLogger("maskd.p2p")

MESHSUB_11 = TProtocol("/meshsub/1.1.0")
MESHSUB_10 = TProtocol("/meshsub/1.0.0")
REMEMBERED_MAX_BACKOFF_S = 300.0


@dataclass
class MeshHandlers:
    """Synchronous callbacks into the node: state changes are sync, so atomic."""

    peer_connected: Callable[[str], None] = lambda peer_id: None
    peer_disconnected: Callable[[str], None] = lambda peer_id: None
    gossip_accepted: Callable[[str, Outcome], None] = lambda topic, outcome: None


@dataclass
class PeerView:
    peer_id: str
    addrs: list[str]
    latency_ms: float | None
    score: float
    connected_since: float


@dataclass
class _PeerState:
    connected_since: float
    latency_ms: float | None = None
    failed_pings: int = 0
    ping_stream: Any = None


@dataclass
class MeshStats:
    garbage_frames: int = 0
    validator_errors: int = 0
    hung_disconnects: int = 0
    bans: int = 0
    publish_dropped: int = 0
    dials_ok: int = 0
    dials_failed: int = 0
    enforcement_dropped: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class GuardedPubsub(Pubsub):
    """Pubsub whose stream reader survives a peer's malformed frame.

    py-libp2p 0.8.1 lets ``google.protobuf.message.DecodeError`` escape
    ``continuously_read_stream`` and end ``trio.run``. We catch any error of
    reading a peer's frame, reset that peer's stream and report the peer.
    """

    on_garbage: Callable[[ID, BaseException], None] = staticmethod(lambda peer, exc: None)

    async def continuously_read_stream(self, stream) -> None:  # type: ignore[override]
        peer_id = stream.muxed_conn.peer_id
        try:
            await super().continuously_read_stream(stream)
        except trio.Cancelled:
            raise
        except Exception as exc:  # a peer's bytes must never end the process
            self.on_garbage(peer_id, exc)
            try:
                await stream.reset()
            except Exception:
                pass
            self._handle_dead_peer(peer_id)


class _Notifee(INotifee):
    def __init__(self, mesh: Mesh):
        self.mesh = mesh

    async def opened_stream(self, network, stream) -> None:
        pass

    async def closed_stream(self, network, stream) -> None:
        pass

    async def connected(self, network, conn) -> None:
        self.mesh._on_connected(conn.muxed_conn.peer_id)

    async def disconnected(self, network, conn) -> None:
        self.mesh._on_disconnected(conn.muxed_conn.peer_id)

    async def listen(self, network, multiaddr) -> None:
        pass

    async def listen_close(self, network, multiaddr) -> None:
        pass


def make_host(key_pair, *, mdns: bool = False, dial_timeout: float = 5.0):
    """A libp2p host as maskd runs it: TCP, Noise only, Yamux, one connection per peer."""
    noise = NoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)
    return new_host(
        key_pair=key_pair,
        sec_opt={NOISE_PROTOCOL_ID: noise},
        muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
        enable_mDNS=mdns,
        connection_config=ConnectionConfig(max_connections_per_peer=1, dial_timeout=dial_timeout),
    )


def _is_loopback(addrs: tuple[str, ...]) -> bool:
    return all("/ip4/127." in a or "/ip6/::1/" in a for a in addrs)


class Mesh:
    def __init__(
        self,
        settings: MeshSettings,
        peer_seed: bytes,
        *,
        validator: GossipValidator,
        handlers: MeshHandlers,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        topics: dict[str, str],
        supervisor: Supervisor | None = None,
    ):
        """``topics`` maps a gossip topic to the validator's kind for it; the mesh's
        loops run under ``supervisor`` (restarted after a failure)."""
        self.supervisor = supervisor or Supervisor("mesh", logger=log)
        self.settings = settings
        self.validator = validator
        self.handlers = handlers
        self.clock = clock
        self.rng = rng or random.Random()
        self.topics = topics
        self.scores = PeerScores(
            threshold=settings.ban_threshold,
            ban_duration_s=settings.ban_duration_s,
            half_life_s=settings.score_half_life_s,
        )
        self.stats = MeshStats()
        self._key_pair = create_new_key_pair(peer_seed)
        self.peer_id = ID.from_pubkey(self._key_pair.public_key)
        self._my_id_bytes = self.peer_id.to_bytes()
        self._peers: dict[str, _PeerState] = {}
        self._bootstrap = [info_from_p2p_addr(multiaddr.Multiaddr(a)) for a in settings.bootstrap]
        self._extra_dial: list[PeerInfo] = []
        # peers from an earlier run (maskd/known_peers.py): redialled with back-off
        self._remembered: dict[str, PeerInfo] = {}
        self._remembered_retry: dict[str, tuple[float, float]] = {}  # next try, back-off
        self._enforce_send, self._enforce_recv = trio.open_memory_channel[tuple[str, str]](256)
        self._publish_tokens = settings.publish_rate_per_s
        self._publish_at = clock()
        self._stream_handlers: dict[str, Callable] = {}
        self.host = None
        self.pubsub: GuardedPubsub | None = None
        self.dht = None
        self.addrs: list[str] = []
        self.started = trio.Event()
        # kind -> fn(data, source, now) -> (verdict, reason), for topics the
        # offer pipeline does not own (the market's bids)
        self.topic_validators: dict[str, Callable[[bytes, str, float], tuple[str, str]]] = {}
        # accepted-by-validator outcomes awaiting delivery, keyed by (from, seqno)
        self._pending: dict[tuple[bytes, bytes], Outcome] = {}

    # ------------------------------------------------------------------ run
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        s = self.settings
        loopback = _is_loopback(s.listen)
        # py-libp2p logs peers' ordinary failures at WARNING/ERROR from many
        # modules; ours say what matters. --log-level debug shows them.
        if not log.isEnabledFor(logging.DEBUG):
            logging.getLogger("libp2p").setLevel(logging.CRITICAL)
        host = make_host(self._key_pair, mdns=s.mdns, dial_timeout=max(2.0, s.ping_timeout_s))
        self.host = host
        patches.apply(outbound_queue=s.outbound_queue)
        router = GossipSub(
            protocols=[MESHSUB_11, MESHSUB_10],
            degree=s.degree,
            degree_low=s.degree_low,
            degree_high=s.degree_high,
            heartbeat_initial_delay=0.1,
            heartbeat_interval=s.heartbeat_interval_s,
            adaptive_gossip_enabled=False,
            spam_protection_enabled=False,
            eclipse_protection_enabled=not loopback,
        )
        pubsub = GuardedPubsub(
            host,
            router,
            strict_signing=True,
            max_inbound_rpc_size=max(s.max_message_bytes * 4, 1 << 20),
        )
        pubsub.on_garbage = self._on_garbage
        self.pubsub = pubsub
        for topic in self.topics:
            pubsub.set_topic_validator(topic, self._make_validator(topic), is_async_validator=False)
        listen = [multiaddr.Multiaddr(a) for a in s.listen]
        async with host.run(listen_addrs=listen), trio.open_nursery() as nursery:
            host.get_network().register_notifee(_Notifee(self))
            for proto, handler in self._stream_handlers.items():
                host.set_stream_handler(TProtocol(proto), handler)
            async with background_trio_service(pubsub), background_trio_service(router):
                await pubsub.wait_until_ready()
                subscriptions = {topic: await pubsub.subscribe(topic) for topic in self.topics}
                dht_cm = None
                if s.dht:
                    from libp2p.kad_dht.kad_dht import DHTMode, KadDHT

                    self.dht = KadDHT(
                        host,
                        DHTMode.SERVER,
                        enable_random_walk=False,
                        max_peers_per_subnet=0 if loopback else None,
                    )
                    dht_cm = background_trio_service(self.dht)
                    await dht_cm.__aenter__()
                try:
                    self.addrs = [str(a) for a in host.get_addrs()]
                    keep = self.supervisor.keep_running
                    for topic, sub in subscriptions.items():
                        drain = functools.partial(self._drain_subscription, topic, sub)
                        nursery.start_soon(keep, f"drain {topic}", drain)
                    cleanup = functools.partial(host.get_peerstore().start_cleanup_task, 60)
                    nursery.start_soon(keep, "peerstore_cleanup", cleanup)
                    nursery.start_soon(keep, "redial_loop", self._redial_loop)
                    nursery.start_soon(keep, "liveness_loop", self._liveness_loop)
                    nursery.start_soon(keep, "enforcer_loop", self._enforcer_loop)
                    if self.dht is not None:
                        nursery.start_soon(keep, "discovery_loop", self._discovery_loop)
                    self.started.set()
                    task_status.started(self)
                    await trio.sleep_forever()
                finally:
                    nursery.cancel_scope.cancel()
                    if dht_cm is not None:
                        with trio.CancelScope(shield=True), trio.move_on_after(2):
                            try:
                                await dht_cm.__aexit__(None, None, None)
                            except Exception:
                                pass

    def set_stream_handler(self, protocol: str, handler: Callable) -> None:
        """Register a direct-stream protocol (before or after ``run`` starts)."""
        self._stream_handlers[protocol] = handler
        if self.host is not None:
            self.host.set_stream_handler(TProtocol(protocol), handler)

    async def new_stream(self, peer_id: str, protocol: str):
        return await self.host.new_stream(ID.from_base58(peer_id), [TProtocol(protocol)])

    # ------------------------------------------------------------- publish
    async def publish(self, topic: str, data: bytes) -> bool:
        """Publish our own gossip; False (and counted) when over size or rate.

        py-libp2p drops oversized messages silently, so the size check is ours.
        """
        if len(data) > self.settings.max_message_bytes:
            self.stats.publish_dropped += 1
            log.warning(
                "not publishing a %d-byte message on %s: over max_message_bytes", len(data), topic
            )
            return False
        now = self.clock()
        rate = self.settings.publish_rate_per_s
        self._publish_tokens = min(rate, self._publish_tokens + (now - self._publish_at) * rate)
        self._publish_at = now
        if self._publish_tokens < 1:
            self.stats.publish_dropped += 1
            return False
        self._publish_tokens -= 1
        await self.pubsub.publish(topic, data)
        return True

    # --------------------------------------------------------------- views
    def peers(self) -> list[PeerView]:
        now = self.clock()
        out = []
        store = self.host.get_peerstore() if self.host else None
        for peer_id, st in sorted(self._peers.items()):
            addrs: list[str] = []
            if store is not None:
                try:
                    addrs = [str(a) for a in store.addrs(ID.from_base58(peer_id))]
                except Exception:
                    addrs = []
            out.append(
                PeerView(
                    peer_id=peer_id,
                    addrs=addrs,
                    latency_ms=st.latency_ms,
                    score=round(-self.scores.score(peer_id, now), 3),
                    connected_since=st.connected_since,
                )
            )
        return out

    def topic_mesh_sizes(self) -> dict[str, int]:
        """Per topic: how many peers we forward to at once (gossipsub mesh)."""
        router = self.pubsub.router if self.pubsub is not None else None
        mesh = getattr(router, "mesh", None) or {}
        return {topic: len(mesh.get(topic, ())) for topic in self.topics}

    def latency_ms(self, peer_id: str) -> float | None:
        """Last ping round trip to a connected peer (None: not connected or not yet pinged)."""
        state = self._peers.get(peer_id)
        return None if state is None else state.latency_ms

    def connected_count(self) -> int:
        return len(self._peers)

    def add_dial_target(self, addr: str) -> None:
        """Another address to keep dialled (like a bootstrap peer)."""
        self._extra_dial.append(info_from_p2p_addr(multiaddr.Multiaddr(addr)))

    def remember(self, peers: Iterable[tuple[str, Sequence[str]]]) -> int:
        """Peers known from an earlier run, to dial again until they answer.

        A node restarted on a new port (or after its bootstrap peers moved)
        would otherwise know nobody; these are dialled like bootstrap peers,
        but a failure backs off (doubling up to ``REMEMBERED_MAX_BACKOFF_S``).
        Malformed entries are skipped. Returns how many were taken.
        """
        taken = 0
        for peer_id, addrs in peers:
            try:
                pid = ID.from_base58(peer_id)
                maddrs = [multiaddr.Multiaddr(a) for a in addrs]
            except Exception:
                continue
            if pid == self.peer_id or not maddrs:
                continue
            self._remembered[peer_id] = PeerInfo(pid, maddrs)
            taken += 1
        return taken

    def dialable_peers(self) -> list[tuple[str, list[str]]]:
        """Connected peers and the addresses the peerstore holds for them."""
        if self.host is None:
            return []
        store = self.host.get_peerstore()
        out = []
        for peer_id in sorted(self._peers):
            try:
                addrs = [str(a) for a in store.addrs(ID.from_base58(peer_id))]
            except Exception:
                continue
            if addrs:
                out.append((peer_id, addrs))
        return out

    # ------------------------------------------------------- notifications
    def _on_connected(self, peer: ID) -> None:
        peer_id = peer.to_base58()
        if self.scores.is_banned(peer_id, self.clock()):
            self._enforce(peer_id, "banned")
            return
        if peer_id not in self._peers:
            self._peers[peer_id] = _PeerState(connected_since=self.clock())
            self.handlers.peer_connected(peer_id)

    def _on_disconnected(self, peer: ID) -> None:
        peer_id = peer.to_base58()
        if self.host is not None and self.host.get_network().get_connections(peer):
            return  # another connection to the same peer is still up
        if self._peers.pop(peer_id, None) is not None:
            self.handlers.peer_disconnected(peer_id)

    # ------------------------------------------------------------ gossip in
    def _make_validator(self, topic: str):
        kind = self.topics[topic]

        def validator(forwarder: ID, msg) -> bool:
            # Guard for crash bug 2: a raising validator ends the node.
            try:
                return self._validate(kind, forwarder, msg)
            except Exception:
                self.stats.validator_errors += 1
                self.validator.count_drop(Reason.VALIDATOR_ERROR)
                log.exception("gossip validator failed; message dropped")
                return False

        return validator

    def _validate(self, kind: str, forwarder: ID, msg) -> bool:
        if msg.from_id == self._my_id_bytes:
            # Our own publish: built and signed here; the node applied it
            # already. (Rejecting it would make py-libp2p drop it silently.)
            return True
        now = self.clock()
        source = ID(msg.from_id).to_base58()
        other = self.topic_validators.get(kind)
        if other is not None:  # e.g. bids: validated (and consumed) by the market
            verdict_str, reason = other(msg.data, source, now)
            verdict = Verdict(verdict_str)
            if verdict.delivers:
                return True
            self.validator.drops[f"{kind}_{reason}"] += 1
            fwd = forwarder.to_base58()
            if verdict.penalises and fwd != self.peer_id.to_base58():
                self.penalise(fwd, reason)
            return False
        outcome = self.validator.validate(msg.data, source=source, topic_kind=kind, now=now)
        if outcome.verdict.delivers:
            self._pending[(msg.from_id, msg.seqno)] = outcome
            if len(self._pending) > 4096:
                self._pending.pop(next(iter(self._pending)))
            return True
        fwd = forwarder.to_base58()
        if outcome.verdict.penalises and fwd != self.peer_id.to_base58():
            log.info(
                "rejected gossip from %s (forwarded by %s): %s %s",
                source,
                fwd,
                outcome.reason,
                outcome.detail,
            )
            self.penalise(fwd, outcome.reason.value)
        return False

    async def _drain_subscription(self, topic: str, sub) -> None:
        """Drain the library's 32-slot channel promptly; apply accepted messages."""
        while True:
            msg = await sub.get()
            outcome = self._pending.pop((msg.from_id, msg.seqno), None)
            if outcome is None:  # accepted before we cached it (own publish race)
                continue
            try:
                self.handlers.gossip_accepted(topic, outcome)
            except Exception:
                log.exception("applying gossip failed")

    # ------------------------------------------------------- misbehaviour
    def _on_garbage(self, peer: ID, exc: BaseException) -> None:
        self.stats.garbage_frames += 1
        self.validator.count_drop(Reason.GARBAGE_FRAME)
        peer_id = peer.to_base58()
        log.warning("garbage pubsub frame from %s (%s): stream reset", peer_id, type(exc).__name__)
        self.penalise(peer_id, Reason.GARBAGE_FRAME.value)

    def penalise(self, peer_id: str, reason: str) -> None:
        """Score ``peer_id`` down for ``reason`` (protocol.verdict); bans past the threshold."""
        ban = self.scores.penalise(peer_id, reason, self.clock())
        if ban is not None:
            self._apply_ban(ban)

    def _apply_ban(self, ban: Ban) -> None:
        self.stats.bans += 1
        log.warning(
            "banning %s for %.0f s (score %.0f)", ban.peer_id, ban.until - self.clock(), ban.score
        )
        try:
            self.pubsub.add_to_blacklist(ID.from_base58(ban.peer_id))
        except Exception:
            pass
        self._enforce(ban.peer_id, "banned")

    def _enforce(self, peer_id: str, why: str) -> None:
        try:
            self._enforce_send.send_nowait((peer_id, why))
        except trio.WouldBlock:
            self.stats.enforcement_dropped += 1

    async def _enforcer_loop(self) -> None:
        async for peer_id, why in self._enforce_recv:
            await self._disconnect(peer_id, why)

    async def _disconnect(self, peer_id: str, why: str) -> None:
        log.info("disconnecting %s: %s", peer_id, why)
        with trio.move_on_after(max(1.0, self.settings.ping_timeout_s)):
            try:
                await self.host.disconnect(ID.from_base58(peer_id))
            except Exception as exc:
                log.debug("disconnect %s failed: %s", peer_id, exc)
        # A hung peer's close may never finish: forget it regardless.
        if self._peers.pop(peer_id, None) is not None:
            self.handlers.peer_disconnected(peer_id)

    # ---------------------------------------------------------- liveness
    async def _liveness_loop(self) -> None:
        s = self.settings
        while True:
            await trio.sleep(s.ping_interval_s * (0.8 + 0.4 * self.rng.random()))
            async with trio.open_nursery() as nursery:
                for peer_id in list(self._peers):
                    nursery.start_soon(self._ping_one, peer_id)

    async def _ping_one(self, peer_id: str) -> None:
        """One round trip of the standard ping protocol on a long-lived stream.

        Not py-libp2p's PingService: it opens a new stream per ping under one
        lock shared by all peers, so on a busy machine pings queue behind each
        other and healthy peers time out. A kept stream costs one write and
        one read per ping.
        """
        state = self._peers.get(peer_id)
        if state is None:
            return
        rtt = None
        with trio.move_on_after(self.settings.ping_timeout_s):
            for _attempt in range(2):  # the peer may have closed an idle stream
                try:
                    if state.ping_stream is None:
                        state.ping_stream = await self.host.new_stream(
                            ID.from_base58(peer_id), [PING_PROTOCOL]
                        )
                    payload = self.rng.randbytes(PING_LENGTH)
                    started = time.perf_counter()
                    await state.ping_stream.write(payload)
                    if await read_exactly(state.ping_stream, PING_LENGTH) != payload:
                        raise ValueError("ping answered with other bytes")
                    rtt = (time.perf_counter() - started) * 1000.0
                    break
                except Exception as exc:
                    log.debug("ping %s failed: %s", peer_id, exc)
                    await self._drop_ping_stream(state)
        if rtt is not None:
            state.latency_ms = round(rtt, 3)
            state.failed_pings = 0
            return
        await self._drop_ping_stream(state)  # a half-done exchange leaves it unusable
        state.failed_pings += 1
        if state.failed_pings < self.settings.ping_failures:
            return  # one slow answer on a busy machine is not a hung peer
        self.stats.hung_disconnects += 1
        await self._disconnect(
            peer_id,
            f"{state.failed_pings} pings unanswered within {self.settings.ping_timeout_s} s",
        )

    @staticmethod
    async def _drop_ping_stream(state: _PeerState) -> None:
        stream, state.ping_stream = state.ping_stream, None
        if stream is not None:
            with trio.move_on_after(1):
                try:
                    await stream.reset()
                except Exception:
                    pass

    # ------------------------------------------------------------ dialling
    async def _redial_loop(self) -> None:
        s = self.settings
        while True:
            targets = [*self._bootstrap, *self._extra_dial]
            always = {info.peer_id.to_base58() for info in targets}
            now = trio.current_time()
            async with trio.open_nursery() as nursery:
                for info in targets:
                    if info.peer_id == self.peer_id:
                        continue
                    if info.peer_id.to_base58() in self._peers:
                        continue
                    nursery.start_soon(self._dial, info)
                for peer_id, info in self._remembered.items():
                    if peer_id in self._peers or peer_id in always:
                        continue
                    next_try, _ = self._remembered_retry.get(peer_id, (0.0, 0.0))
                    if now >= next_try:
                        nursery.start_soon(self._dial_remembered, peer_id, info)
            await trio.sleep(s.redial_interval_s)

    async def _dial_remembered(self, peer_id: str, info: PeerInfo) -> None:
        if await self._dial(info):
            self._remembered_retry.pop(peer_id, None)
            return
        _, backoff = self._remembered_retry.get(peer_id, (0.0, 0.0))
        backoff = min(max(2 * backoff, self.settings.redial_interval_s), REMEMBERED_MAX_BACKOFF_S)
        self._remembered_retry[peer_id] = (trio.current_time() + backoff, backoff)

    async def _dial(self, info: PeerInfo) -> bool:
        peer_id = info.peer_id.to_base58()
        if self.scores.is_banned(peer_id, self.clock()):
            return False
        network = self.host.get_network()
        # The swarm refuses to redial a peer for 60 s after one failed dial;
        # a bootstrap peer that starts late would be unreachable for a minute.
        unblock = getattr(network, "unblock_peer", None)
        if unblock is not None:
            unblock(info.peer_id)
        with trio.move_on_after(max(2.0, self.settings.ping_timeout_s)):
            try:
                await self.host.connect(info)
                self.stats.dials_ok += 1
                if self.dht is not None:
                    try:
                        await self.dht.add_peer(info.peer_id)
                    except Exception:
                        pass
                return True
            except Exception as exc:
                log.debug("dial %s failed: %s", peer_id, exc)
        self.stats.dials_failed += 1
        return False

    async def _discovery_loop(self) -> None:
        """Learn peers through the DHT and connect to them, up to max_peers.

        A lookup opens a stream to every peer it asks, so it is not free:
        the interval doubles (to 8x) while lookups find nobody new, and
        drops back when they do.
        """
        s = self.settings
        base = s.discovery_interval_s
        interval = min(2.0, base)  # the first lookup soon after joining
        while True:
            await trio.sleep(interval * (0.8 + 0.4 * self.rng.random()))
            if len(self._peers) >= s.max_peers:
                continue
            try:
                with trio.move_on_after(max(5.0, base)):
                    await self.dht.peer_routing.find_closest_peers_network(self.peer_id.to_bytes())
            except Exception as exc:
                log.debug("dht lookup failed: %s", exc)
            store = self.host.get_peerstore()
            candidates = [
                p
                for p in self.dht.routing_table.get_peer_ids()
                if p.to_base58() not in self._peers and p != self.peer_id
            ]
            interval = base if candidates else min(base * 8, interval * 2)
            self.rng.shuffle(candidates)
            room = max(0, s.max_peers - len(self._peers))
            async with trio.open_nursery() as nursery:
                for peer in candidates[: min(room, 8)]:
                    addrs = store.addrs(peer)
                    if addrs:
                        nursery.start_soon(self._dial, PeerInfo(peer, addrs))


def backoff(attempt: int, base: float = 0.5, cap: float = 10.0) -> float:
    return min(cap, base * math.pow(2, attempt))

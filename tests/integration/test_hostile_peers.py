"""Hostile input from peers and RPC clients never takes a maskd down.

Regression tests for py-libp2p 0.8.1's crash bugs (../shared/notes/libp2p.md):
(1) a garbage pubsub frame ends the process, (2) a raising validator ends it.
"""

from __future__ import annotations

import json
import os
import socket
import struct

import multiaddr
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import background_trio_service
from libp2p.utils.varint import encode_uvarint

from maskd.devnet import offers_seen, wait_until
from p2p.mesh import MESHSUB_11, Mesh, MeshHandlers, MeshSettings, make_host
from p2p.validation import GossipValidator
from protocol.messages import BLOCKS_PROTOCOL, JOB_PROTOCOL, MARKET_PROTOCOL, OFFERS_TOPIC


async def _wait(cond, timeout: float = 15.0) -> None:
    with trio.fail_after(timeout):
        while not cond():
            await trio.sleep(0.05)


def _alive_and_answering(node) -> dict:
    assert node.alive(), node.stderr_tail()
    return node.call("v1.node.info")


async def _send_raw(node, protocol, frames: list[bytes]) -> str:
    """Open one stream per frame to ``node`` on ``protocol`` from a fresh peer, write
    the frame as is, wait for the node to end the stream; our peer id."""
    host = make_host(create_new_key_pair(os.urandom(32)))
    async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        target = info_from_p2p_addr(multiaddr.Multiaddr(node.addrs[0]))
        await host.connect(target)
        for frame in frames:
            try:
                stream = await host.new_stream(target.peer_id, [protocol])
                await stream.write(frame)
                with trio.move_on_after(2):
                    await stream.read(1)  # until the node closes or resets the stream
            except Exception:
                pass  # a banned peer's streams are refused: that is the point
        return host.get_id().to_base58()


async def _send_raw_pubsub_frame(node, payload: bytes) -> None:
    await _send_raw(node, MESHSUB_11, [encode_uvarint(len(payload)) + payload])


async def test_a_garbage_pubsub_frame_does_not_take_the_node_down(cluster):
    node = cluster.node("victim")
    # 0xff: field 31 with wire type 7, which protobuf cannot parse
    await _send_raw_pubsub_frame(node, b"\xff" * 20)
    await _wait(lambda: _alive_and_answering(node)["drops"].get("garbage_frame", 0) >= 1)
    info = _alive_and_answering(node)
    assert info["mesh"]["garbage_frames"] >= 1
    assert info["mesh"]["bans"] >= 1  # a garbage frame is as bad as it gets


async def test_a_2_mib_pubsub_frame_does_not_take_the_node_down(cluster):
    node = cluster.node("victim")
    await _send_raw_pubsub_frame(node, os.urandom(2 * 1024 * 1024))
    _alive_and_answering(node)
    # and the node still serves honest peers afterwards
    other = cluster.node("honest", bootstrap=[node.addrs[0]])
    wait_until(
        lambda: other.peer_id in offers_seen(node),
        20,
        "an honest offer",
    )


async def test_an_oversized_gossip_message_is_rejected_and_counted(cluster):
    node = cluster.node("victim")
    key_pair = create_new_key_pair(os.urandom(32))
    host = make_host(key_pair)
    router = GossipSub(
        protocols=[MESHSUB_11],
        degree=6,
        degree_low=4,
        degree_high=12,
        heartbeat_interval=1,
        adaptive_gossip_enabled=False,
        spam_protection_enabled=False,
        eclipse_protection_enabled=False,
    )
    pubsub = Pubsub(host, router, strict_signing=True)
    async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        async with background_trio_service(pubsub), background_trio_service(router):
            await pubsub.wait_until_ready()
            await pubsub.subscribe(OFFERS_TOPIC)
            info = info_from_p2p_addr(multiaddr.Multiaddr(node.addrs[0]))
            await host.connect(info)
            await _wait(lambda: info.peer_id in pubsub.peer_topics.get(OFFERS_TOPIC, set()))
            await pubsub.publish(OFFERS_TOPIC, b"\x00" * (200 * 1024))  # over 64 KiB, under 1 MiB
            await _wait(lambda: _alive_and_answering(node)["drops"].get("too_large", 0) >= 1)
            await pubsub.publish(OFFERS_TOPIC, b"not msgpack at all")
            await _wait(lambda: _alive_and_answering(node)["drops"].get("undecodable", 0) >= 1)


class _RaisingValidator(GossipValidator):
    def validate(self, data, *, source, topic_kind, now):
        raise RuntimeError("a bug in a validator")


async def test_a_validator_that_raises_does_not_take_the_node_down():
    settings = MeshSettings(
        listen=("/ip4/127.0.0.1/tcp/0",), dht=False, ping_interval_s=30, redial_interval_s=0.2
    )
    victim = Mesh(
        settings,
        os.urandom(32),
        validator=_RaisingValidator(),
        handlers=MeshHandlers(),
        topics={OFFERS_TOPIC: "offers"},
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(victim.run)
        sender = Mesh(
            MeshSettings(
                listen=("/ip4/127.0.0.1/tcp/0",),
                dht=False,
                ping_interval_s=30,
                redial_interval_s=0.2,
                bootstrap=(
                    f"{victim.addrs[0]}"
                    if "/p2p/" in victim.addrs[0]
                    else f"{victim.addrs[0]}/p2p/{victim.peer_id.to_base58()}",
                ),
            ),
            os.urandom(32),
            validator=GossipValidator(),
            handlers=MeshHandlers(),
            topics={OFFERS_TOPIC: "offers"},
        )
        await nursery.start(sender.run)
        await _wait(lambda: victim.peer_id in sender.pubsub.peer_topics.get(OFFERS_TOPIC, set()))
        for i in range(3):
            await sender.publish(OFFERS_TOPIC, b"anything %d" % i)
        await _wait(lambda: victim.stats.validator_errors >= 3)
        assert victim.validator.drops["validator_error"] >= 3
        assert victim.connected_count() == 1  # still up, still connected
        nursery.cancel_scope.cancel()


def _rpc_lines(sock_path, payloads: list[bytes], read: bool = True) -> list[dict]:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(str(sock_path))
    out = []
    f = s.makefile("rb")
    for p in payloads:
        try:
            s.sendall(p)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon may close on us mid-send (oversized line); read its answer
        if read:
            line = f.readline()
            if line:
                out.append(json.loads(line))
    s.close()
    return out


def test_a_malformed_rpc_stream_does_not_take_the_daemon_down(cluster):
    node = cluster.node("rpc")
    replies = _rpc_lines(
        node.socket,
        [
            b"{this is not json\n",
            b"[1, 2, 3]\n",
            b'{"jsonrpc": "2.0", "id": 1, "method": "v1.no.such"}\n',
            b'{"jsonrpc": "2.0", "id": 2, "method": "v1.node.info", "params": 7}\n',
            b'"just a string"\n',
        ],
    )
    codes = [r["error"]["code"] for r in replies]
    assert codes == [-32700, -32600, -32601, -32602, -32600]
    # an oversized line: an error, then the connection is closed
    replies = _rpc_lines(node.socket, [b'{"x": "' + b"a" * (2 * 1024 * 1024) + b'"}\n'])
    assert replies and replies[0]["error"]["code"] == -32600
    # a client that goes away in the middle of a watch stream
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(node.socket))
    s.sendall(b'{"jsonrpc": "2.0", "id": 9, "method": "v1.watch"}\n')
    s.recv(100)
    s.close()
    # binary garbage and an abrupt close mid-line
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(node.socket))
    s.sendall(os.urandom(4096))
    s.close()
    info = _alive_and_answering(node)
    assert info["peer_id"] == node.peer_id


GARBAGE = b"\xc1" * 16  # 0xc1 is never valid MessagePack


async def test_garbage_on_the_direct_protocols_is_scored_and_the_node_keeps_serving(cluster):
    """/mask/market/1 (varint frames), /mask/job/1 (4-byte frames) and /mask/blocks/1
    (varint frames): each malformed frame costs the sender 25 points, so five get
    it banned (with decay, four stay just under 100), and the node answers honest
    peers throughout."""
    node = cluster.node("victim")
    frames = {
        MARKET_PROTOCOL: encode_uvarint(len(GARBAGE)) + GARBAGE,
        JOB_PROTOCOL: struct.pack(">I", len(GARBAGE)) + GARBAGE,
        BLOCKS_PROTOCOL: encode_uvarint(len(GARBAGE)) + GARBAGE,
    }
    for protocol, frame in frames.items():
        attacker = await _send_raw(node, TProtocol(protocol), [frame] * 5)
        await _wait(lambda a=attacker: a in _alive_and_answering(node)["mesh"]["banned_peers"])
    other = cluster.node("honest", bootstrap=[node.addrs[0]])
    wait_until(
        lambda: other.peer_id in offers_seen(node),
        20,
        "an honest offer after the garbage",
    )

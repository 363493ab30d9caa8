"""The foundation as a user meets it: real maskd processes on loopback."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

from maskd.devnet import offers_seen, peers_seen, wait_until

OFFER_KEYS = {
    "offer_id",
    "peer_id",
    "account",
    "cpu",
    "memory_mb",
    "disk_mb",
    "gpus",
    "executors",
    "prices",
    "expires_at",
}
TTL = 6.0  # configs/devnet/node.toml


def test_five_nodes_see_every_offer_and_a_killed_nodes_offer_disappears(cluster):
    nodes = cluster.devnet(5)  # returns once every node sees all 5 offers
    ids = {n.peer_id for n in nodes}
    for node in nodes:
        offers = node.call("v1.offers.list")
        assert {o["peer_id"] for o in offers} == ids
        for offer in offers:
            assert OFFER_KEYS <= offer.keys()
            assert offer["account"].startswith("0x")
            # devnet nodes add zk-groth16 once their prover check passes (seconds)
            assert offer["executors"] in (["wasm"], ["wasm", "zk-groth16"])
    # Every node was given only node0 to bootstrap from; the DHT finds the rest.
    wait_until(
        lambda: all(len(peers_seen(n)) == 4 for n in nodes),
        30,
        "a full mesh learned through the DHT",
    )
    victim = nodes[4]
    victim.kill()  # SIGKILL: no withdrawal, only expiry or departure can remove it
    survivors = nodes[:4]
    wait_until(
        lambda: all(victim.peer_id not in offers_seen(n) for n in survivors),
        TTL + 5,
        "the killed node's offer to disappear everywhere",
    )


def test_a_sigstopped_node_is_dropped_by_liveness(cluster):
    a, b, c = cluster.devnet(3)
    c.signal(signal.SIGSTOP)
    try:
        # devnet config: ping every 1 s, 2 s timeout, dropped after 2 misses in a row
        wait_until(
            lambda: c.peer_id not in peers_seen(a) | peers_seen(b),
            25,
            "the hung node to be dropped",
        )
        assert c.peer_id not in offers_seen(a)
        assert (
            a.call("v1.node.info")["mesh"]["hung_disconnects"]
            + b.call("v1.node.info")["mesh"]["hung_disconnects"]
            >= 1
        )
    finally:
        c.signal(signal.SIGCONT)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_node_started_before_its_bootstrap_peer_joins_when_it_comes_up(cluster):
    from maskd.identity import load_or_create

    # Know the bootstrap peer's id and port before it exists.
    boot_dir = cluster.root / "boot"
    ident = load_or_create(boot_dir, passphrase="", scrypt_n=16384, now=0)
    port = _free_port()
    boot_addr = f"/ip4/127.0.0.1/tcp/{port}/p2p/{ident.peer_id}"
    early = cluster.node("early", bootstrap=[boot_addr])
    # at least one dial has failed (so py-libp2p's 60 s negative cache is armed)
    wait_until(lambda: early.call("v1.node.info")["mesh"]["dials_failed"] >= 2, 15, "a failed dial")
    boot = cluster.node("boot", extra_args=["--listen", f"/ip4/127.0.0.1/tcp/{port}"])
    assert boot.peer_id == ident.peer_id
    # well inside the 60 s negative-cache window
    wait_until(
        lambda: boot.peer_id in peers_seen(early), 20, "the late bootstrap peer to be joined"
    )
    wait_until(lambda: boot.peer_id in offers_seen(early), 15, "the late peer's offer")


def test_sigterm_withdraws_the_offer_removes_the_socket_and_exits_0(cluster):
    long_ttl = {"MASK_OFFERS_TTL_S": "120", "MASK_OFFERS_REPUBLISH_INTERVAL_S": "40"}
    a, b = cluster.devnet(2, env=long_ttl)
    assert b.socket.exists()
    code = b.stop()
    assert code == 0
    assert not b.socket.exists()
    # withdrawn, not expired: the TTL is 120 s
    wait_until(lambda: b.peer_id not in offers_seen(a), 5, "the withdrawn offer to disappear")


def test_one_daemon_per_data_dir_and_a_stale_socket_is_replaced(cluster):
    a = cluster.node("a")
    second = subprocess.run(
        [
            sys.executable,
            "-m",
            "maskd.daemon",
            "--data-dir",
            str(a.data_dir),
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 1
    assert "already running" in second.stderr and "hint:" in second.stderr
    assert "Traceback" not in second.stderr
    peer_id = a.peer_id
    a.kill()  # leaves maskd.sock behind
    assert a.socket.exists()
    a.start().wait_ready()
    assert a.peer_id == peer_id  # same keys reused
    assert a.call("v1.node.info")["peer_id"] == peer_id


def test_a_bad_config_exits_2_with_the_key_and_a_hint(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[p2p]\nping_timeout_s = 'never'\n")
    r = subprocess.run(
        [sys.executable, "-m", "maskd.daemon", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert "p2p.ping_timeout_s" in r.stderr and "hint:" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "maskd.daemon",
            "--data-dir",
            str(tmp_path / "d"),
            "--listen",
            "/ip4/127.0.0.1/tcp/99999",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "p2p.listen[0]" in r.stderr


def test_a_bootstrap_node_restarted_on_a_new_port_finds_its_peers_again(cluster):
    # node0 is everyone's bootstrap peer and listens on port 0: after a restart
    # its address is new, so only the peers it remembers can bring it back
    a, b, c = cluster.devnet(3)
    old_addrs = set(a.call("v1.node.info")["addrs"])
    wait_until(lambda: (a.data_dir / "peers.json").exists(), 20, "node0 to record its peers")
    assert a.stop() == 0
    wait_until(lambda: a.peer_id not in peers_seen(b) | peers_seen(c), 20, "node0 to be gone")
    a.start().wait_ready()
    assert set(a.call("v1.node.info")["addrs"]).isdisjoint(old_addrs)
    wait_until(
        lambda: peers_seen(a) >= {b.peer_id, c.peer_id}, 30, "node0 to redial its remembered peers"
    )
    wait_until(lambda: a.peer_id in offers_seen(b), 20, "node0's offer to reach node1 again")

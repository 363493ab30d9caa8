"""mDNS discovery (``p2p.mdns``) between two maskd processes in network namespaces.

mDNS needs multicast, which the loopback interface does not carry, so the test
makes two network namespaces joined by a veth pair (10.77.x.1 <-> 10.77.x.2)
and starts one daemon in each, with no bootstrap peers: they can only find
each other by mDNS. Needs root and iproute2 (``scripts/system-deps.sh``
installs it); where namespaces cannot be made (no CAP_SYS_ADMIN) it skips and
says why. The namespaces are deleted and both processes stopped by pid.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from maskd.devnet import DevNode, devnet_config_path, offers_seen, peers_seen, wait_until


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def namespaces():
    if shutil.which("ip") is None or os.geteuid() != 0:
        pytest.skip("needs root and iproute2's `ip` to make network namespaces")
    tag = f"mk{os.getpid() % 100000}"
    ns = [f"{tag}a", f"{tag}b"]
    net = 10 + os.getpid() % 200
    addrs = [f"10.77.{net}.1", f"10.77.{net}.2"]
    try:
        for name in ns:
            _ip("netns", "add", name)
    except subprocess.CalledProcessError as exc:
        for name in ns:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        pytest.skip(f"cannot make network namespaces here: {exc.stderr.decode().strip()}")
    try:
        _ip("link", "add", f"{tag}va", "type", "veth", "peer", "name", f"{tag}vb")
        for name, dev, addr in zip(ns, (f"{tag}va", f"{tag}vb"), addrs, strict=True):
            _ip("link", "set", dev, "netns", name)
            _ip("-n", name, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", name, "link", "set", dev, "up")
            _ip("-n", name, "link", "set", "lo", "up")
        yield list(zip(ns, addrs, strict=True))
    finally:
        for name in ns:  # deleting a namespace deletes its end of the veth pair
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_two_nodes_with_no_bootstrap_find_each_other_by_mdns(namespaces, cluster):
    nodes = []
    for i, (ns, addr) in enumerate(namespaces):
        node = DevNode(
            cluster.root / f"mdns{i}",
            config=devnet_config_path(),
            extra_args=["--listen", f"/ip4/{addr}/tcp/4001"],
            env={"MASK_P2P_MDNS": "true", "MASK_P2P_DHT": "false"},
            prefix=["ip", "netns", "exec", ns],
        )
        cluster.nodes.append(node)  # stopped by pid at teardown
        nodes.append(node.start().wait_ready())
    a, b = nodes
    wait_until(lambda: b.peer_id in peers_seen(a), 30, "node a to discover node b by mDNS")
    wait_until(lambda: a.peer_id in peers_seen(b), 30, "node b to see node a")
    # and the mesh works over that link: b's offer reaches a by gossip
    wait_until(
        lambda: b.peer_id in offers_seen(a),
        30,
        "node b's offer to reach node a",
    )

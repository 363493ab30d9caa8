"""The data plane between real maskd processes on 127.0.0.1.

Every wait is on a condition under a deadline (``wait_until``); data comes
from seeded PRNGs. Each test names the node it talks to by its socket.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from maskd.devnet import DevNode, wait_full_view, wait_until
from protocol.errors import MaskError, RpcError
from storage.cid import RAW, parse_cid

pytestmark = pytest.mark.integration

MiB = 1 << 20
LONG = 120.0


def make_file(path: Path, size: int, seed: int) -> Path:
    path.write_bytes(random.Random(seed).randbytes(size))
    return path


def put(node: DevNode, path: Path) -> dict:
    return node.call("v1.storage.put", {"path": str(path)}, timeout=LONG)


def get(node: DevNode, cid: str, dest: Path, peers=None) -> dict:
    params = {"cid": cid, "dest": str(dest)}
    if peers is not None:
        params["peers"] = peers
    return node.call("v1.storage.get", params, timeout=LONG)


def mesh(cluster, n: int, envs: dict[int, dict] | None = None) -> list[DevNode]:
    envs = envs or {}
    first = cluster.node("n0", env=envs.get(0))
    rest = [cluster.node(f"n{i}", bootstrap=[first.addrs[0]], env=envs.get(i)) for i in range(1, n)]
    nodes = [first, *rest]
    wait_full_view(nodes, 60)

    def fully_connected() -> bool:
        for node in nodes:
            connected = {p["peer_id"] for p in node.call("v1.peers.list")}
            if not {n.peer_id for n in nodes if n is not node} <= connected:
                return False
        return True

    # offers travel by gossip through the first node; the exchange needs direct links
    wait_until(fully_connected, 60, "every node to connect to every other", interval=0.2)
    return nodes


def test_put_on_one_node_get_on_another_is_byte_identical(cluster, tmp_path):
    a, b = mesh(cluster, 2)
    src = make_file(tmp_path / "in.bin", 3 * MiB + 12345, seed=1)
    put_result = put(a, src)
    assert put_result["size"] == src.stat().st_size
    result = get(b, put_result["cid"], tmp_path / "out.bin")
    assert (tmp_path / "out.bin").read_bytes() == src.read_bytes()
    assert result["fetched_blocks"] == put_result["blocks"]
    assert result["peers_used"] == {a.peer_id: put_result["blocks"]}
    # a directory, too
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    make_file(tree / "sub" / "x.bin", 300_000, seed=2)
    (tree / "y.txt").write_text("hello\n")
    cid = put(a, tree)["cid"]
    get(b, cid, tmp_path / "tree-out")
    assert (tmp_path / "tree-out" / "sub" / "x.bin").read_bytes() == (
        tree / "sub" / "x.bin"
    ).read_bytes()
    assert (tmp_path / "tree-out" / "y.txt").read_text() == "hello\n"
    # and a directory big enough to be a HAMT (4,000 x (40 + 36) bytes > 256 KiB)
    wide = tmp_path / "wide"
    wide.mkdir()
    for i in range(4000):
        (wide / f"{i:040d}").write_text(f"{i}\n")
    cid = put(a, wide)["cid"]
    get(b, cid, tmp_path / "wide-out")
    out = sorted(p.name for p in (tmp_path / "wide-out").iterdir())
    assert out == sorted(p.name for p in wide.iterdir())
    assert (tmp_path / "wide-out" / f"{3999:040d}").read_text() == "3999\n"


def test_a_dag_is_fetched_from_two_peers_at_once(cluster, tmp_path):
    a, b, c = mesh(cluster, 3)
    src = make_file(tmp_path / "in.bin", 24 * MiB, seed=3)
    cid = put(a, src)["cid"]
    assert put(b, src)["cid"] == cid
    result = get(c, cid, tmp_path / "out.bin", peers=[a.peer_id, b.peer_id])
    assert (tmp_path / "out.bin").read_bytes() == src.read_bytes()
    assert set(result["peers_used"]) == {a.peer_id, b.peer_id}, result["peers_dropped"]
    assert all(n > 0 for n in result["peers_used"].values())


def corrupt_leaves(node: DevNode) -> int:
    """Flip a byte in every raw block file of ``node``'s store; return how many."""
    count = 0
    for shard in (node.data_dir / "blocks").iterdir():
        if not shard.is_dir():
            continue
        for block in shard.iterdir():
            if not block.name.startswith(".") and parse_cid(block.name).codec == RAW:
                data = bytearray(block.read_bytes())
                data[len(data) // 2] ^= 0xFF
                block.write_bytes(bytes(data))
                count += 1
    return count


def test_a_peer_serving_corrupt_blocks_is_penalised_and_the_fetch_completes(cluster, tmp_path):
    # The liar does not re-hash what it serves, so its corrupt blocks reach the
    # client, whose own re-hash must catch them.
    liar_env = {"MASK_STORAGE_VERIFY_ON_SERVE": "false"}
    honest, liar, client = mesh(cluster, 3, envs={1: liar_env})
    src = make_file(tmp_path / "in.bin", 12 * MiB, seed=4)
    cid = put(honest, src)["cid"]
    assert put(liar, src)["cid"] == cid
    assert corrupt_leaves(liar) == 48
    result = get(client, cid, tmp_path / "out.bin", peers=[liar.peer_id, honest.peer_id])
    assert (tmp_path / "out.bin").read_bytes() == src.read_bytes()
    assert "does not match its CID" in result["peers_dropped"][liar.peer_id]
    stat = client.call("v1.storage.stat")
    assert stat["exchange"]["corrupt_blocks"] >= 1
    scores = {p["peer_id"]: p["score"] for p in client.call("v1.peers.list")}
    assert scores[liar.peer_id] < 0 <= scores[honest.peer_id]


def test_a_corrupt_block_on_a_verifying_server_is_never_sent(cluster, tmp_path):
    honest, careful, client = mesh(cluster, 3)
    src = make_file(tmp_path / "in.bin", 4 * MiB, seed=5)
    cid = put(honest, src)["cid"]
    put(careful, src)
    corrupt_leaves(careful)
    # Asked alone, the careful server refuses its corrupt blocks ("don't have"),
    # so the fetch fails cleanly and nothing corrupt reaches the client.
    with pytest.raises(MaskError):
        get(client, cid, tmp_path / "partial.bin", peers=[careful.peer_id])
    assert careful.call("v1.storage.stat")["served_corrupt"] >= 1
    assert client.call("v1.storage.stat")["exchange"]["corrupt_blocks"] == 0
    result = get(client, cid, tmp_path / "out.bin", peers=[careful.peer_id, honest.peer_id])
    assert (tmp_path / "out.bin").read_bytes() == src.read_bytes()
    assert careful.peer_id not in result["peers_dropped"]  # it said "don't have"
    assert client.call("v1.storage.stat")["exchange"]["corrupt_blocks"] == 0


def test_a_peer_killed_mid_transfer_is_replaced_by_the_other(cluster, tmp_path):
    a, doomed, client = mesh(cluster, 3)
    src = make_file(tmp_path / "in.bin", 192 * MiB, seed=6)
    cid = put(a, src)["cid"]
    assert put(doomed, src)["cid"] == cid
    outcome: dict = {}

    def fetch() -> None:
        try:
            outcome["result"] = get(client, cid, tmp_path / "out.bin", [doomed.peer_id, a.peer_id])
        except Exception as exc:  # reported by the assertions below
            outcome["error"] = exc

    worker = threading.Thread(target=fetch)
    worker.start()
    fetched = lambda: client.call("v1.storage.stat")["exchange"]["fetched_blocks"]  # noqa: E731
    wait_until(lambda: fetched() > 0 or not worker.is_alive(), 60, "the fetch to start")
    assert worker.is_alive(), outcome
    os.kill(doomed.pid, signal.SIGKILL)
    worker.join(LONG)
    assert not worker.is_alive() and "error" not in outcome, outcome
    assert (tmp_path / "out.bin").read_bytes() == src.read_bytes()
    result = outcome["result"]
    assert doomed.peer_id in result["peers_dropped"], result
    assert result["peers_used"][a.peer_id] > 0


def test_quota_full_on_put_is_a_clear_cli_error(cluster, tmp_path):
    node = cluster.node("small", env={"MASK_STORAGE_QUOTA_MB": "1"})
    src = make_file(tmp_path / "big.bin", 3 * MiB, seed=7)
    proc = subprocess.run(
        [sys.executable, "-m", "maskd.cli", "--socket", str(node.socket), "put", str(src)],
        capture_output=True,
        text=True,
        timeout=LONG,
    )
    assert proc.returncode == 1, proc
    assert proc.stdout == ""
    assert "error: block store full" in proc.stderr
    assert "hint: raise storage.quota_mb" in proc.stderr
    stat = node.call("v1.storage.stat")
    assert stat["bytes"] <= stat["quota_bytes"] == MiB
    assert stat["pinned_roots"] == 0
    # a small file still fits once gc freed the partial import
    node.call("v1.storage.gc")
    small = make_file(tmp_path / "small.bin", 100_000, seed=8)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "maskd.cli",
            "--socket",
            str(node.socket),
            "put",
            "--json",
            str(small),
        ],
        capture_output=True,
        text=True,
        timeout=LONG,
        check=True,
    )
    assert json.loads(out.stdout)["size"] == 100_000


def test_replicate_asks_a_provider_to_pin_and_records_what_is_owed(cluster, tmp_path):
    a, b = mesh(cluster, 2)
    src = make_file(tmp_path / "in.bin", 2 * MiB, seed=9)
    cid = put(a, src)["cid"]
    result = a.call(
        "v1.storage.replicate", {"cid": cid, "copies": 1, "duration_s": 3600}, timeout=LONG
    )
    assert [p["provider"] for p in result["placed"]] == [b.peer_id]
    assert int(result["owed_total"]) > 0
    ledger = (a.data_dir / "storage" / "replicas.jsonl").read_text().splitlines()
    assert json.loads(ledger[-1])["provider"] == b.peer_id
    assert b.call("v1.storage.stat")["pinned_roots"] == 1
    with pytest.raises(RpcError) as err:
        a.call("v1.storage.replicate", {"cid": cid, "copies": 1, "duration_s": 1})
    assert err.value.code == "invalid_params"

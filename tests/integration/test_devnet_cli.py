"""`mask devnet up/status/down` as a user runs them: 3 nodes on one embedded
chain, node0 its gateway, a few hello jobs, each provider settles, and the
escrow on chain (read directly, not through a daemon) pays every provider
exactly what the requester owes it; `down` leaves no process behind."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ledger.chain import ChainClient
from ledger.contracts import ESCROW, load_artifact
from maskd.demo_settlement import wait_vouchers
from maskd.devnet import (
    DevnetError,
    pid_alive,
    read_chain,
    read_state,
    start_devnet,
    stop_devnet,
    wait_until,
)

HELLO = Path(__file__).resolve().parents[2] / "examples" / "hello" / "job.toml"
JOBS = 4


def mask(*args):
    return subprocess.run(
        [sys.executable, "-c", "from maskd.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=180,
    )


def run_jobs(requester, n: int) -> list[str]:
    ids = [requester.call("v1.jobs.submit", {"path": str(HELLO)})["job_id"] for _ in range(n)]

    def done() -> bool:
        rows = requester.call("v1.jobs.list")
        states = {r["job_id"]: r["state"] for r in rows if r["role"] == "requester"}
        return all(states.get(i) in ("completed", "failed", "cancelled") for i in ids)

    wait_until(done, 90, f"{n} hello jobs to finish", interval=0.2)
    for job_id in ids:
        info = requester.call("v1.jobs.get", {"job_id": job_id})
        assert info["state"] == "completed", info
    return ids


def test_devnet_up_pays_providers_on_chain_and_down_stops_everything():
    root = Path(tempfile.mkdtemp(prefix="mkd", dir="/tmp"))
    try:
        up = mask(
            "devnet", "up", "--nodes", "3", "--dir", str(root), "--chain", "embedded", "--json"
        )
        assert up.returncode == 0, up.stderr
        shown = json.loads(up.stdout)
        assert len(shown["nodes"]) == 3 and len({n["peer_id"] for n in shown["nodes"]}) == 3
        assert shown["chain"]["kind"] == "embedded"
        assert "every node deposited 1000 MASK" in up.stderr
        requests = shown["chain"]["requests"]
        assert (
            f"node0 is the gateway: it answers DApps' requests on ComputeRequests {requests}"
            in (up.stderr)
        )
        again = mask("devnet", "up", "--nodes", "3", "--dir", str(root))
        assert again.returncode == 1 and "already running" in again.stderr
        nodes, chain = read_state(root), read_chain(root)
        assert chain is not None and chain.pid == shown["chain"]["pid"]
        assert chain.requests == requests
        # node0 answers DApps' requests; every node knows the contract (providers check
        # relayed jobs there)
        wait_until(
            lambda: nodes[0].call("v1.gateway.show", {"limit": 1})["state"] == "ok",
            30,
            "node0's gateway to watch the chain",
        )
        assert nodes[0].call("v1.gateway.show", {"limit": 1})["contract"] == requests
        assert not nodes[1].call("v1.gateway.show", {"limit": 1})["enabled"]
        for node in nodes:
            assert f'requests = "{requests}"' in (node.data_dir / "node.toml").read_text()
        status = json.loads(mask("devnet", "status", "--dir", str(root), "--json").stdout)
        assert all(
            s["alive"] and s["offers"] == 3 and s["chain_connected"] for s in status["nodes"]
        )
        assert [s["gateway"] for s in status["nodes"]] == ["ok", None, None]
        assert status["chain"]["alive"] and status["chain"]["requests"] == requests

        requester = nodes[0]
        run_jobs(requester, JOBS)
        expected: dict[str, int] = {}
        for e in requester.call("v1.jobs.owed")["entries"]:
            expected[e["provider_account"]] = expected.get(e["provider_account"], 0) + int(
                e["amount"]
            )
        assert sum(expected.values()) > 0 and len(requester.call("v1.jobs.owed")["entries"]) == JOBS
        accounts = {n.call("v1.wallet.show")["address"]: n for n in nodes}
        me = requester.call("v1.wallet.show")["address"]
        providers = {a.lower(): accounts[a] for a in expected}
        owed = {a.lower(): v for a, v in expected.items()}
        assert wait_vouchers(providers, me, owed, timeout=30) == []
        for account in expected:
            accounts[account].call("v1.ledger.settle", {"wait": True}, timeout=60)

        client = ChainClient.rpc(chain.url, chain.chain_id)
        escrow = client.contract(chain.escrow, load_artifact(ESCROW).abi)
        for account in accounts:
            assert client.call(escrow, "earnings", account) == expected.get(account, 0), account
            assert client.call(escrow, "settled", me, account) == expected.get(account, 0)
        assert client.call(escrow, "deposits", me) == 1000 * 10**18 - sum(expected.values())

        down = mask("devnet", "down", "--dir", str(root))
        assert down.returncode == 0, down.stderr
        assert down.stdout.count(": stopped") == 4 and "chain (embedded): stopped" in down.stdout
        assert not any(n.alive() for n in nodes)  # gone (or a zombie awaiting its reaper)
        assert not pid_alive(chain.pid)
        missing = mask("devnet", "down", "--dir", str(root))
        assert missing.returncode == 1 and "no devnet" in missing.stderr
    finally:
        if (root / "devnet.json").exists():
            stop_devnet(root)
        shutil.rmtree(root, ignore_errors=True)


def processes_naming(path: Path) -> list[int]:
    """Live pids whose command line names ``path`` (the chain's ready file, a
    node's data dir)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if str(path).encode() in cmdline and pid_alive(int(entry)):
            found.append(int(entry))
    return found


def test_a_devnet_that_fails_halfway_stops_its_chain(tmp_path):
    root = Path(tempfile.mkdtemp(prefix="mkf", dir="/tmp"))
    steps: list[str] = []
    try:
        try:
            start_devnet(
                2, root, chain="embedded", extra_args=["--no-such-flag"], progress=steps.append
            )
        except DevnetError as e:
            assert "exited during start-up" in e.message
        else:
            raise AssertionError("a node with a bad flag started")
        assert any(s.startswith("embedded chain up") for s in steps)
        assert any(s.startswith("contracts deployed") for s in steps)
        assert processes_naming(root) == []
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_devnet_up_on_anvil_funds_and_connects_every_node_then_down_stops_anvil():
    """`mask devnet up --chain anvil`: anvil installed if missing (as `make test`
    does), the contracts deployed on it, each node connected, funded and
    deposited, then everything stopped by `down`."""
    root = Path(tempfile.mkdtemp(prefix="mka", dir="/tmp"))
    try:
        up = mask("devnet", "up", "--nodes", "2", "--dir", str(root), "--chain", "anvil", "--json")
        assert up.returncode == 0, up.stderr
        shown = json.loads(up.stdout)
        assert shown["chain"]["kind"] == "anvil"
        nodes, chain = read_state(root), read_chain(root)
        assert chain is not None and chain.kind == "anvil"
        client = ChainClient.rpc(chain.url, chain.chain_id)
        escrow = client.contract(chain.escrow, load_artifact(ESCROW).abi)
        for node in nodes:
            info = node.call("v1.node.info")["chain"]
            assert info["connected"] and info["escrow"] == chain.escrow
            address = node.call("v1.wallet.show")["address"]
            assert client.call(escrow, "deposits", address) == 1000 * 10**18
            ledger = node.call("v1.ledger.show")
            assert ledger["chain"]["rpc_url"] == chain.url and ledger["status"]["state"] == "ok"
        down = mask("devnet", "down", "--dir", str(root))
        assert down.returncode == 0, down.stderr
        assert "chain (anvil): stopped" in down.stdout
        assert not pid_alive(chain.pid)
        assert processes_naming(root) == []
    finally:
        if (root / "devnet.json").exists():
            stop_devnet(root)
        shutil.rmtree(root, ignore_errors=True)

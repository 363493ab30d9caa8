"""A DApp request answered on chain by real daemons (issue 10 part 6): anvil
with the contracts, the example StatsConsumer, a maskd with ``[gateway]
enabled`` (role requester) and a provider maskd with a real prover.

The DApp's user asks for statistics over a dataset the gateway node holds
(``v1.storage.put``, as ``mask put`` does); the gateway places the request on
the mesh, the provider proves it, the gateway fulfils it: the test, reading
the chain with its own client, finds the provider's account paid the
request's payment and the DApp storing the right statistics; ``mask gateway``
shows the request fulfilled. A request whose input CID names nothing, and
one for a circuit no gateway knows, are recorded with their reasons.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from eth_account import Account

from ledger.anvil import install_anvil
from ledger.contracts import STATS_CONSUMER, TOKEN, load_artifact
from ledger.ports import ChainError
from ledger.zkchain import ZkChain
from maskd.devnet import DevNode, wait_until
from tests.integration.money import MASK, Anvil, account, wait_connected
from tests.integration.test_zk_devnet import offers_zk
from zkp.circuit import load_circuit, shipped_circuits
from zkp.formats import vk_calldata, vk_id
from zkp.poseidon import poseidon
from zkp.testing import TrapdoorSetup

PAYMENT = 3 * MASK
VALUES = [4210, 5120, 3980, 6450, 7020, 4890, 5560, 6100,
          3720, 8150, 4475, 5930, 6780, 4060, 5340, 7300]  # fmt: skip
THRESHOLD = 5000
NOWHERE = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"


@pytest.fixture
def anvil(tmp_path: Path) -> Iterator[Anvil]:
    try:
        install_anvil()
    except (ChainError, OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"anvil is not installed and cannot be: {e}")
    chain = Anvil(tmp_path / "anvil")
    try:
        yield chain
    finally:
        chain.stop()


def treasury_zk(anvil: Anvil) -> ZkChain:
    d = anvil.deployment
    return ZkChain(
        anvil.chain, d.token, d.escrow, d.requests, anvil.treasury, trio.CapacityLimiter(1)
    )


def register(anvil: Anvil, vk) -> str:
    async def go() -> str:
        return await treasury_zk(anvil).register_circuit(vk_calldata(vk))

    return trio.run(go)


def send(anvil: Anvil, contract: Any, fn: str, *args: Any, key: bytes):
    chain = anvil.chain
    address = Account.from_key(key).address
    tx = chain.transact(contract, fn, *args, key=key, nonce=chain.pending_nonce(address))
    mined = chain.wait_receipt(tx, [contract])
    assert mined.status, fn
    return mined


def request_state(gateway: DevNode, request_id: int) -> dict | None:
    shown = gateway.call("v1.gateway.show")
    found = [r for r in shown["requests"] if r["request_id"] == str(request_id)]
    return found[0] if found else None


def wait_final(gateway: DevNode, request_id: int, timeout: float) -> dict:
    final = {"fulfilled", "failed", "expired", "skipped"}

    def done() -> bool:
        r = request_state(gateway, request_id)
        return r is not None and r["state"] in final

    wait_until(done, timeout, f"request {request_id} to end on the gateway", interval=0.25)
    return request_state(gateway, request_id)


def test_a_dapp_request_is_answered_on_chain_by_the_mesh(cluster, anvil: Anvil, tmp_path: Path):
    d, chain = anvil.deployment, anvil.chain
    assert d.requests is not None
    stats = load_circuit(shipped_circuits()["private_stats"])
    circuit_id = register(anvil, stats.vk)
    assert circuit_id == vk_id(stats.vk)

    # both know the ComputeRequests contract: the gateway answers its requests, the
    # provider checks each relayed job's request there before it proves
    env = anvil.node_env(MASK_GATEWAY_REQUESTS=d.requests)
    gateway_env = {**env, "MASK_GATEWAY_ENABLED": "true", "MASK_GATEWAY_POLL_INTERVAL_S": "0.5"}
    g = cluster.node("g", env=gateway_env, extra_args=["--role", "requester"])
    p = cluster.node("p", bootstrap=[g.addrs[0]], env=env, extra_args=["--role", "provider"])
    wait_connected([g, p])
    # the gateway pays gas, and its escrow backs its bids as any requester's does
    anvil.fund(account(g), mask=10 * MASK)
    g.call("v1.wallet.deposit", {"amount": str(MASK)}, timeout=30)
    offers_zk(g, p)

    dataset = tmp_path / "dataset.json"
    dataset.write_text(json.dumps({"values": [str(v) for v in VALUES]}))
    dataset_cid = g.call("v1.storage.put", {"path": str(dataset)})["cid"]

    commitment = poseidon(VALUES)
    dapp_address = chain.deploy(
        load_artifact(STATS_CONSUMER),
        [d.requests, bytes.fromhex(circuit_id), commitment, dataset_cid],
        anvil.treasury,
    )
    dapp = chain.contract(dapp_address, load_artifact(STATS_CONSUMER).abi)
    user = chain.dev_keys()[5]
    anvil.fund(Account.from_key(user).address, eth=0, mask=100 * MASK)
    token = chain.contract(d.token, load_artifact(TOKEN).abi)
    send(anvil, token, "approve", dapp_address, 100 * MASK, key=user)
    provider = account(p)
    before = int(chain.call(token, "balanceOf", provider))

    deadline = chain.block_timestamp() + 3600
    mined = send(anvil, dapp, "ask", THRESHOLD, PAYMENT, deadline, key=user)
    [asked] = [e for e in mined.events if e.name == "Asked"]
    request_id = int(asked.args["requestId"])

    done = wait_final(g, request_id, 120)
    assert (done["state"], done["by_us"], done["provider"]) == ("fulfilled", True, provider), done
    # the chain, read by the test: the provider was paid, the DApp called back
    assert int(chain.call(token, "balanceOf", provider)) == before + PAYMENT
    total = sum(VALUES)
    assert list(chain.call(dapp, "results", request_id)) == [
        total,
        sum(v > THRESHOLD for v in VALUES),
        total // 16,
        THRESHOLD,
        True,
    ]
    # the job: relayed, its proof checked by the gateway's node, nothing owed
    job = g.call("v1.jobs.get", {"job_id": done["job_id"]})
    assert job["state"] == "completed" and job["verification"]["attempts"][-1]["valid"]
    assert g.call("v1.jobs.owed")["entries"] == []
    explained = p.call("v1.jobs.explain", {"job_id": done["job_id"]})
    assert explained["payment"]["state"] == "by_request"

    # a request whose input is nowhere, one for a circuit no gateway knows
    trapdoor = register(anvil, TrapdoorSetup.new(6, seed=44).vk)

    async def more() -> tuple[int, int]:
        zk = treasury_zk(anvil)
        late = chain.block_timestamp() + 3600
        a = await zk.request(circuit_id, [THRESHOLD, commitment], 3, NOWHERE, MASK, late)
        b = await zk.request(trapdoor, [1, 2], 3, dataset_cid, MASK, late)
        return a.request_id, b.request_id

    nowhere, unknown = trio.run(more)
    assert wait_final(g, nowhere, 60)["reason"] == "input_unavailable"
    assert wait_final(g, unknown, 60)["reason"] == "unknown_circuit"

    shown = subprocess.run(
        [sys.executable, "-m", "maskd.cli", "--socket", str(g.socket), "gateway"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        env={**os.environ, "COLUMNS": "200"},  # one table row per line
    ).stdout
    assert "fulfilled" in shown and "input_unavailable" in shown and "unknown_circuit" in shown

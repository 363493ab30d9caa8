"""zk jobs on a devnet with a chain (issue 10's acceptance tests): real maskd
processes, real proofs (the native prover), anvil with the contracts.

One market for the module: a requester R, an honest provider P, and Q, a
requester that checks every proof and never pays (``zk_refuse_pay``). Then:

(a) zk jobs of both shipped circuits are placed, proved, verified and paid,
    their vouchers settled on chain;
(c) P, whose requester Q never pays, claims the job on chain with its proof
    and the contract pays it (P's earnings rise by the price); Q's daemon
    sees the claim and says its job was paid on chain by the provider's proof;
(b) H, a provider that sends a wrong output with a made-up proof
    (``zk_wrong_output``, and cheaper, so R takes it first), is caught: not
    paid, its own claim refused on chain (invalid proof), the job completes
    on P; the test, acting as anyone, slashes H's stake with H's signed
    zk_result.json as evidence.

The test reads the chain itself (earnings, settled, stakes) with its own
client, never through a daemon. Every process is stopped by pid.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from eth_account import Account

from ledger.anvil import install_anvil
from ledger.ports import ChainError
from ledger.zkchain import ZkChain
from maskd.devnet import DevnetError, DevNode, wait_until
from storage.carfile import read_file_at
from tests.integration.conftest import ROOT, Cluster
from tests.integration.money import MASK, Anvil, account, ledger_view, wait_connected
from tests.integration.test_jobs import job, submit, wait_done
from zkp.formats import parse_proof, parse_public, proof_calldata

PRICE_ENV = "MASK_OFFERS_PRICES_CPU_CORE_HOUR"
DEPOSIT = MASK
STAKE = 10 * MASK
PREIMAGE = ROOT / "examples" / "zk-preimage" / "job.toml"
STATS = ROOT / "examples" / "zk-stats" / "job.toml"
ZK = "zk-groth16"


class Market:
    def __init__(self, cluster: Cluster, anvil: Anvil):
        self.cluster, self.anvil = cluster, anvil
        # P waits 10 s for a voucher before it is missing (R pays within ms)
        self.env = anvil.node_env(MASK_LEDGER_VOUCHER_TIMEOUT_S="10")
        self.r = cluster.node("r", env=self.env, extra_args=["--role", "requester"])
        boot = [self.r.addrs[0]]
        self.p = cluster.node(
            "p", bootstrap=boot, env=self.env, extra_args=["--role", "provider"], start=False
        )
        self.q = cluster.node(
            "q",
            bootstrap=boot,
            env=self.env,
            extra_args=["--role", "requester"],
            behaviour="zk_refuse_pay",
            start=False,
        )
        for node in (self.p, self.q):
            node.start()
        for node in (self.p, self.q):
            node.wait_ready(60)
        wait_connected([self.r, self.p, self.q])
        anvil.fund(account(self.p))
        for requester in (self.r, self.q):
            anvil.fund(account(requester), mask=10 * MASK)
            requester.call("v1.wallet.deposit", {"amount": str(DEPOSIT)}, timeout=30)
        for requester in (self.r, self.q):
            offers_zk(requester, self.p)


def offers_zk(requester: DevNode, provider: DevNode, timeout: float = 90) -> None:
    """Until ``requester`` sees ``provider`` offer zk-groth16 (its prover check passed)."""

    def seen() -> bool:
        return any(
            o["peer_id"] == provider.peer_id and ZK in o["executors"]
            for o in requester.call("v1.offers.list")
        )

    wait_until(seen, timeout, f"{provider.data_dir.name}'s zk-groth16 offer", interval=0.2)


@pytest.fixture(scope="module")
def anvil() -> Iterator[Anvil]:
    try:
        install_anvil()
    except (ChainError, OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"anvil is not installed and cannot be: {e}")
    root = Path(tempfile.mkdtemp(prefix="mkzk", dir="/tmp"))
    chain = Anvil(root / "anvil")
    try:
        yield chain
    finally:
        chain.stop()


@pytest.fixture(scope="module")
def market(anvil: Anvil) -> Iterator[Market]:
    # short paths: a Unix socket path must fit in 108 bytes
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="mk", dir="/tmp")))
    try:
        yield Market(cluster, anvil)
    finally:
        cluster.close()


def stakes(anvil: Anvil, provider: str) -> int:
    from ledger.contracts import ESCROW, load_artifact

    escrow = anvil.chain.contract(anvil.deployment.escrow, load_artifact(ESCROW).abi)
    return int(anvil.chain.call(escrow, "stakes", provider))


def token_balance(anvil: Anvil, holder: str) -> int:
    from ledger.contracts import TOKEN, load_artifact

    token = anvil.chain.contract(anvil.deployment.token, load_artifact(TOKEN).abi)
    return int(anvil.chain.call(token, "balanceOf", holder))


def waited(node: DevNode, cond: Any, timeout: float, what: str) -> None:
    """``wait_until``, and on a timeout what the node's ledger says."""
    try:
        wait_until(cond, timeout, what, interval=0.25)
    except DevnetError as e:
        view = ledger_view(node)
        keys = ("claims", "missing", "status", "counters")
        raise AssertionError(f"{e}: {json.dumps({k: view.get(k) for k in keys})}") from None


def completed(node: DevNode, ids: list[str], timeout: float = 120) -> dict[str, dict]:
    done = wait_done(node, ids, timeout)
    bad = {j: (r["state"], r["error"]) for j, r in done.items() if r["state"] != "completed"}
    assert not bad, bad
    return done


def owed_to(requester: DevNode, provider: DevNode) -> int:
    return sum(
        int(e["amount"])
        for e in requester.call("v1.jobs.owed")["entries"]
        if e["provider_account"] == account(provider)
    )


def test_a_zk_jobs_of_both_circuits_are_proved_verified_and_paid(market: Market):
    r, p, anvil = market.r, market.p, market.anvil
    ids = [submit(r, PREIMAGE), submit(r, STATS)]
    done = completed(r, ids)
    for j in ids:
        row = done[j]
        assert row["provider"] == p.peer_id
        attempts = row["verification"]["attempts"]
        assert [a["valid"] for a in attempts] == [True], attempts
        assert attempts[0]["public"]["binding"]
    stats = done[ids[1]]["verification"]["attempts"][0]["public"]
    assert int(stats["count_above"]) >= 0 and int(stats["sum"]) > 0
    # paid with vouchers, settled on chain by P's batcher (no claim needed)
    owed = owed_to(r, p)
    assert owed > 0
    wait_until(
        lambda: anvil.settled(account(r), account(p)) == owed,
        60,
        "R's vouchers to be settled on chain",
        interval=0.25,
    )
    assert anvil.earnings(account(p)) == owed
    assert ledger_view(p)["claims"] == []


def test_c_an_honest_provider_whose_requester_never_pays_is_paid_by_its_claim(market: Market):
    q, p, anvil = market.q, market.p, market.anvil
    before = anvil.earnings(account(p))
    j = submit(q, PREIMAGE)
    row = completed(q, [j])[j]
    assert row["provider"] == p.peer_id and row["verification"]["attempts"][-1]["valid"]
    price = int(row["price"])

    def claimed() -> list[dict[str, Any]]:
        return [c for c in ledger_view(p)["claims"] if c["job_id"] == j]

    # 10 s without a voucher, then the claim: registered circuit, dry run, transaction
    waited(p, lambda: [c["status"] for c in claimed()] == ["paid"], 60, "P's claim to be paid")
    (claim,) = claimed()
    assert claim["amount"] == str(price) and claim["tx_hash"] and claim["reason"] is None
    assert anvil.earnings(account(p)) == before + price
    assert anvil.settled(account(q), account(p)) == price  # the contract raised settled
    channel = [c for c in ledger_view(p)["channels"] if c["requester"] == account(q)][0]
    assert channel["standing"]["claimed"] == 1 and channel["standing"]["voucher_missing"] == 0
    explained = p.call("v1.jobs.explain", {"job_id": j})["text"]
    assert "paid on chain by this provider's proof" in explained
    # the requester's daemon reads the ProofClaimed event
    wait_until(
        lambda: (job(q, j).get("payment") or {}).get("state") == "paid_by_proof",
        30,
        "Q to see the claim",
        0.25,
    )
    assert job(q, j)["payment"]["claims"][0]["amount"] == str(price)
    seen = ledger_view(q)["claims_seen"]
    assert [(c["job_id"], c["provider"]) for c in seen] == [(j, account(p))]


def test_b_a_wrong_output_is_caught_not_paid_and_slashed(market: Market):
    r, p, anvil, cluster = market.r, market.p, market.anvil, market.cluster
    h = cluster.node(
        "h",
        bootstrap=[r.addrs[0]],
        env={**market.env, PRICE_ENV: "500000000000000"},  # half P's: R takes it first
        extra_args=["--role", "provider"],
        behaviour="zk_wrong_output",
    )
    wait_connected([h])
    anvil.fund(account(h), mask=2 * STAKE)
    h.call("v1.wallet.stake", {"amount": str(STAKE)}, timeout=30)
    assert stakes(anvil, account(h)) == STAKE
    offers_zk(r, h)
    p_before = anvil.earnings(account(p))

    # two jobs: H's first result carries its honest proof of the true output,
    # the second a random proof (tests/hostile/behaviours.py, zk_wrong_output)
    # (one after the other, so that H is free and the cheapest for each)
    ids, done = [], {}
    for _ in range(2):
        ids.append(submit(r, PREIMAGE))
        done.update(completed(r, ids[-1:]))
    for j in ids:
        attempts = done[j]["verification"]["attempts"]
        # H first (cheapest): its proof does not verify; the job completes on P
        assert [(a["provider_peer"], a["valid"]) for a in attempts] == [
            (h.peer_id, False),
            (p.peer_id, True),
        ], attempts
        assert "does not verify" in attempts[0]["reason"]
        assert done[j]["provider"] == p.peer_id
        explained = r.call("v1.jobs.explain", {"job_id": j})
        assert h.peer_id in json.dumps(explained.get("verification_failures", []))
    assert owed_to(r, h) == 0  # H is owed nothing

    # H's own claims (the requester refused its results) are refused on chain
    def h_claims() -> list[tuple[str, str | None]]:
        return sorted((c["status"], c["reason"]) for c in ledger_view(h)["claims"])

    waited(
        h,
        lambda: len(h_claims()) == 2 and "planned" not in {c[0] for c in h_claims()},
        60,
        "H's claims",
    )
    assert h_claims() == [("reverted", "invalid_proof")] * 2
    assert anvil.earnings(account(h)) == 0
    assert ledger_view(h)["missing"] == []  # written off: not held against R
    price = sum(int(done[j]["price"]) for j in ids)
    wait_until(
        lambda: anvil.earnings(account(p)) == p_before + price, 60, "P to be paid", interval=0.25
    )

    # anyone holding H's signed result slashes its stake
    j = ids[0]
    bad = done[j]["verification"]["attempts"][0]["output_cid"]
    car = r.data_dir / "jobs" / "private" / "results" / f"{bad}.car"

    def read(name: str) -> Any:
        data, cut = read_file_at(car, bad, name, max_bytes=1 << 20)
        assert not cut
        return json.loads(data)

    claim = read("zk_result.json")
    proof = proof_calldata(parse_proof(read("proof.json")))
    public = list(parse_public(read("public.json")))
    assert (claim["job_id"], claim["provider"]) == (j, account(h))
    reporter_key = anvil.chain.dev_keys()[5]
    reporter = Account.from_key(reporter_key).address
    balance = token_balance(anvil, reporter)

    async def slash() -> Any:
        d = anvil.deployment
        zk = ZkChain(
            anvil.chain, d.token, d.escrow, d.requests, reporter_key, trio.CapacityLimiter(1)
        )
        signature = bytes.fromhex(claim["signature"].removeprefix("0x"))
        return await zk.slash(
            j, claim["requester"], claim["provider"], claim["circuit_id"], signature, proof, public
        )

    slashed = trio.run(slash)
    assert (slashed.provider, slashed.amount, slashed.reporter) == (account(h), STAKE, reporter)
    assert stakes(anvil, account(h)) == 0
    assert token_balance(anvil, reporter) == balance + STAKE // 2

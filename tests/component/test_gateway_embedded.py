"""A DApp buys a verified result from the mesh, on the in-process EVM.

py-evm (eth-tester) runs MaskToken, SettlementEscrow, ComputeRequests and the
example StatsConsumer, with the shipped private_stats circuit registered. A
requester node with ``[gateway] enabled`` (the real RequesterService, the
real job submission path, the real Gateway over the chain) and a provider
node (the real ProviderService, WasmWorker and ZkExecutor with the fastest
installed prover) talk over the harness's in-memory bus and streams; only
the payload transfer is a fake that copies CARs between their private
stores. The DApp asks, the gateway places the request, the provider proves
it, the requester checks the proof, the gateway fulfils: the provider's
account holds the payment and the DApp's storage holds the statistics.

The hostile cases need no provider: an input CID that names a huge object
or nothing at all, a circuit nobody here knows.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio
from eth_account import Account

from ledger.agreement import AccountKeys
from ledger.chain import EmbeddedChain
from ledger.contracts import STATS_CONSUMER, TOKEN, load_artifact
from ledger.deploy import deploy, fund
from ledger.escrow import TxSender
from ledger.vouchers import Domain
from ledger.zkchain import ZkChain
from maskd.config import load_config
from maskd.gateway import Gateway
from maskd.gateway_core import State
from maskd.gateway_work import build_spec, known_circuits
from maskd.jobfiles import BundleCache, PrivateFiles
from maskd.jobs_rpc import JobsRpc
from maskd.payloads import StorageOutputs
from maskd.relay_check import RelayChecker
from maskd.wasm_worker import WasmWorker
from maskd.zk_worker import ZkExecutor, claim_signer
from protocol.messages import BIDS_TOPIC
from protocol.supervisor import Supervisor
from scheduler.async_store import ThreadedStore
from scheduler.jobstate import JobState
from scheduler.market import ProviderService, RequesterService
from scheduler.provider import ProviderConfig, ProviderCore
from scheduler.requester import RequesterConfig, RequesterCore
from scheduler.spec import Relay
from scheduler.store import JobStore
from scheduler.testing import FakeLedger
from storage.blockstore import BlockStore
from tests.component.harness import PRICES, Market
from tests.factories import Peer
from zkp.circuit import load_circuit, shipped_circuits
from zkp.formats import vk_calldata, vk_id
from zkp.poseidon import poseidon
from zkp.prover import select_prover
from zkp.testing import TrapdoorSetup

pytestmark = pytest.mark.trio

MASK = 10**18
PAYMENT = 5 * MASK
#: real time: the prover runs in a thread, py-evm takes ~1 s per pairing
LIMIT_S = 240
HOSTILE_LIMIT_S = 90
STATS = shipped_circuits()["private_stats"]
VALUES = [4210, 5120, 3980, 6450, 7020, 4890, 5560, 6100,
          3720, 8150, 4475, 5930, 6780, 4060, 5340, 7300]  # fmt: skip
THRESHOLD = 5500
REQ, PROV = Peer(1), Peer(11)


@pytest.fixture(scope="module")
def prover():
    return select_prover("auto")


class CrossPayloads:
    """Stands in for PayloadClient: a bundle comes out of the requester's
    private files, a result out of the provider's (CARs copied as they are)."""

    def __init__(self, files: PrivateFiles, other: PrivateFiles):
        self.files, self.other = files, other

    async def fetch(self, peer, job_id, kind, root, dest, *, max_bytes=None):
        source = self.other.bundle(root) if kind == "bundle" else self.other.result(root)
        await trio.to_thread.run_sync(shutil.copyfile, source, dest)


async def chain_with_dapp(tmp: Path, dataset_cid: str):
    """The contracts, private_stats registered, StatsConsumer over it, and a
    user with MASK who approved the DApp."""
    chain = EmbeddedChain()
    keys = chain.dev_keys()
    key0, user = keys[0], keys[2]
    d = await trio.to_thread.run_sync(
        deploy, chain, key0, Account.from_key(key0).address, 10**9 * MASK, 3600, 3600
    )
    vk = load_circuit(STATS).vk
    circuit_id = vk_id(vk)
    commitment = poseidon(VALUES)

    def setup() -> str:
        dapp = chain.deploy(
            load_artifact(STATS_CONSUMER),
            [d.requests, bytes.fromhex(circuit_id), commitment, dataset_cid],
            key0,
        )
        user_address = Account.from_key(user).address
        fund(chain, key0, user_address, 0, 100 * MASK, token=d.token)
        fund(chain, key0, REQ.record.account, 10 * MASK, 0, token=d.token)  # the gateway's gas
        token = chain.contract(d.token, load_artifact(TOKEN).abi)
        tx = chain.transact(
            token, "approve", dapp, 100 * MASK, key=user, nonce=chain.pending_nonce(user_address)
        )
        assert chain.wait_receipt(tx).status
        return dapp

    dapp = await trio.to_thread.run_sync(setup)
    # from here on key0 sends only through this (one nonce owner per key)
    admin = ZkChain(chain, d.token, d.escrow, d.requests, key0, trio.CapacityLimiter(1))
    assert await admin.register_circuit(vk_calldata(vk)) == circuit_id
    contract = chain.contract(dapp, load_artifact(STATS_CONSUMER).abi)
    return SimpleNamespace(
        chain=chain,
        d=d,
        admin=admin,
        circuit_id=circuit_id,
        commitment=commitment,
        dapp=contract,
        user=user,
    )


async def ask(world, threshold: int, *, payment: int = PAYMENT, seconds: int = 3600) -> int:
    """The DApp's user asks for the statistics above ``threshold``: the request id."""
    chain = world.chain

    def send() -> int:
        address = Account.from_key(world.user).address
        deadline = chain.block_timestamp() + seconds
        tx = chain.transact(
            world.dapp,
            "ask",
            threshold,
            payment,
            deadline,
            key=world.user,
            nonce=chain.pending_nonce(address),
        )
        mined = chain.wait_receipt(tx, [world.dapp])
        assert mined.status
        [asked] = [e for e in mined.events if e.name == "Asked"]
        return int(asked.args["requestId"])

    return await world.admin.sender.run(send)


async def request(world, circuit_id: str, inputs, input_cid: str, payment: int) -> int:
    """A request made directly (an EOA, the treasury), not through the DApp."""
    deadline = await world.admin.sender.run(world.chain.block_timestamp) + 3600
    asked = await world.admin.request(circuit_id, inputs, 3, input_cid, payment, deadline)
    return asked.request_id


class Node(SimpleNamespace):
    pass


async def requester_node(market: Market, world, tmp: Path) -> Node:
    """The requester node: its job store, blocks, requester service and submission path."""
    chain, d = world.chain, world.d
    domain = Domain(chain.chain_id, d.escrow)
    store = ThreadedStore(JobStore(tmp / "jobs.db"))
    files = PrivateFiles(tmp / "private")
    node = Node(store=store, files=files, blocks=BlockStore(tmp / "blocks", fsync=False))
    node.provider_files = PrivateFiles(tmp / "provider-private")
    service = RequesterService(
        RequesterCore(
            RequesterConfig(
                peer_id=REQ.peer_id,
                identity=REQ.record,
                chain_id=chain.chain_id,
                verifying_contract=d.escrow,
            ),
            AccountKeys(REQ.account_key, domain),
        ),
        store=store,
        gossip=market.bus.endpoint(REQ.peer_id),
        transport=market.streams.endpoint(REQ.peer_id),
        outputs=StorageOutputs(CrossPayloads(files, node.provider_files), store),
        peer_key=REQ.key,
        clock=time.time,
    )
    market.streams.register(REQ.peer_id, service.deliver)
    await market.nursery.start(service.run)
    node.work = tmp / "work"
    node.work.mkdir(exist_ok=True)
    node.rpc = JobsRpc(
        store=store,
        requester=service,
        private=files,
        storage=SimpleNamespace(store=node.blocks),
        connected_peers=list,
        work_dir=node.work,
        clock=time.time,
        stats=dict,
    )
    node.service, node.tmp, node.domain = service, tmp, domain
    return node


async def start_gateway(market: Market, world, node: Node, **gateway) -> Gateway:
    """The node's [gateway], over the chain through its own nonce owner; it
    runs until ``node.gateway_scope`` is cancelled (a daemon that stops)."""
    config = load_config(
        env={},
        overrides={
            "node": {"data_dir": str(node.tmp)},
            "gateway": {"enabled": True, "poll_interval_s": 0.2, **gateway},
        },
    )
    money = SimpleNamespace(
        chain=world.chain,
        token=world.d.token,
        domain=node.domain,
        escrow=SimpleNamespace(
            sender=TxSender(world.chain, REQ.account_key, trio.CapacityLimiter(1))
        ),
        connected=trio.Event(),
        address=REQ.record.account,
    )
    money.connected.set()
    gw = Gateway(
        config,
        money=money,
        account_key=REQ.account_key,
        jobs_store=node.store,
        submit_spec=node.rpc.submit_spec,
        cancel_job=node.service.cancel,
        result_car=node.files.result,
        storage=SimpleNamespace(store=node.blocks, exchange=None),
        connected_peers=list,
        work_dir=node.work,
        supervisor=Supervisor("gateway-test"),
    )
    node.gateway, node.gateway_scope = gw, trio.CancelScope()

    async def run(task_status=trio.TASK_STATUS_IGNORED) -> None:
        with node.gateway_scope:
            await gw.run(task_status=task_status)

    await market.nursery.start(run)
    return gw


async def add_provider(market: Market, world, node: Node, prover) -> Node:
    chain, d = world.chain, world.d
    domain = node.domain
    files = node.provider_files
    ledger = FakeLedger({REQ.record.account: 10**30})  # the gateway's escrow covers a quote
    ledger.fresh.add(REQ.record.account)
    # the provider reads each relayed job's request on the chain before proving it
    money = SimpleNamespace(
        chain=chain,
        token=d.token,
        domain=domain,
        escrow=SimpleNamespace(sender=TxSender(chain, PROV.account_key, trio.CapacityLimiter(1))),
        connected=trio.Event(),
    )
    money.connected.set()
    check = RelayChecker(money, lambda chain: d.requests)
    worker = WasmWorker(
        CrossPayloads(files, node.files),
        market.root / "provider-work",
        BundleCache(files.cache_root, max_bytes=1 << 30),
        zk=lambda limiter: ZkExecutor(
            claim_signer(domain, PROV.account_key), limiter, prover=prover, check_relay=check
        ),
    )
    store = ThreadedStore(JobStore(market.root / "provider.db"))
    service = ProviderService(
        ProviderCore(
            ProviderConfig(
                peer_id=PROV.peer_id,
                identity=PROV.record,
                cpu=4,
                memory_mb=64 * 1024,
                prices=PRICES,
                executors=frozenset({"zk-groth16"}),
                chain_id=chain.chain_id,
                verifying_contract=d.escrow,
                paid=True,
            ),
            AccountKeys(PROV.account_key, domain),
            funds=ledger.funds,
        ),
        store=store,
        transport=market.streams.endpoint(PROV.peer_id),
        worker=worker,
        clock=time.time,
        ledger=ledger,
    )
    market.streams.register(PROV.peer_id, service.deliver)
    market.bus.subscribe(PROV.peer_id, BIDS_TOPIC, service.deliver_bid)
    await market.nursery.start(service.run)
    return Node(service=service, ledger=ledger, store=store)


async def wait_for(gateway: Gateway, done) -> None:
    """Until ``done()`` holds: checked after each record saved and each look at the chain."""
    while not done():
        await gateway.changed.wait()


async def wait_request(gateway: Gateway, request_id: int, *states: State):
    def there() -> bool:
        record = gateway.core.get(request_id)
        return record is not None and record.state in states

    await wait_for(gateway, there)
    return gateway.core.get(request_id)


def put(blocks: BlockStore, path: Path) -> str:
    return blocks.add_path(str(path)).cid


async def balance(world, account: str) -> int:
    token = world.chain.contract(world.d.token, load_artifact(TOKEN).abi)
    return await world.admin.sender.run(world.chain.call, token, "balanceOf", account)


async def test_a_dapp_request_is_placed_proved_fulfilled_and_paid(tmp_path, prover):
    dataset = tmp_path / "dataset.json"
    dataset.write_text(json.dumps({"values": [str(v) for v in VALUES]}))
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            market = Market(nursery, tmp_path)
            node_dir = tmp_path / "node"
            node_dir.mkdir()
            dataset_cid = put(BlockStore(node_dir / "blocks", fsync=False), dataset)  # mask put
            world = await chain_with_dapp(tmp_path, dataset_cid)
            node = await requester_node(market, world, node_dir)
            gateway = await start_gateway(market, world, node)
            provider = await add_provider(market, world, node, prover)
            before = await balance(world, PROV.record.account)
            request_id = await ask(world, THRESHOLD)
            gateway.poke()
            done = await wait_request(
                gateway, request_id, State.FULFILLED, State.FAILED, State.EXPIRED
            )
            assert (done.state, done.by_us, done.reason) == (State.FULFILLED, True, ""), done
            assert done.provider == PROV.record.account and done.tx_hash.startswith("0x")
            # the contract paid the provider's account the request's payment
            assert await balance(world, PROV.record.account) == before + PAYMENT
            # and called the DApp back with the statistics of the private values
            results = await world.admin.sender.run(
                world.chain.call, world.dapp, "results", request_id
            )
            s, above, mean, threshold, answered = results
            assert answered and threshold == THRESHOLD
            assert (s, above, mean) == (
                sum(VALUES),
                sum(v > THRESHOLD for v in VALUES),
                sum(VALUES) // 16,
            )
            # a relayed job: its proof checked here, nothing owed, no voucher signed
            row = await node.store.get(done.job_id, role="requester")
            assert row.state is JobState.COMPLETED
            assert row.spec["spec"]["relay"]["request_id"] == str(request_id)
            [attempt] = row.verification["attempts"]
            assert attempt["valid"], attempt
            assert await node.store.owed() == []
            assert node.service.core.counters["vouchers_signed"] == 0
            # the provider expected no voucher and knows which request pays it
            assert provider.ledger.expected == []
            [prow] = await provider.store.jobs()
            assert prow.explanation["paid_by"]["request_id"] == str(request_id)
            shown = await gateway.rpc_show({})
            assert shown["state"] == "ok" and shown["contract"] == world.d.requests
            [r] = shown["requests"]
            assert (r["request_id"], r["state"], r["circuit"], r["payment"]) == (
                str(request_id),
                "fulfilled",
                "private_stats",
                str(PAYMENT),
            )
            assert r["input_cid"] == dataset_cid
            nursery.cancel_scope.cancel()


async def test_hostile_requests_are_recorded_with_reasons_and_a_restart_places_nothing_twice(
    tmp_path,
):
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (9 << 20))  # over a provider's 8 MiB input.json
    missing_cid = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
    with trio.fail_after(HOSTILE_LIMIT_S):
        async with trio.open_nursery() as nursery:
            market = Market(nursery, tmp_path)
            node_dir = tmp_path / "node"
            node_dir.mkdir()
            big_cid = put(BlockStore(node_dir / "blocks", fsync=False), big)
            world = await chain_with_dapp(tmp_path, missing_cid)  # the DApp's CID is nowhere
            trapdoor = TrapdoorSetup.new(6, seed=31)  # a circuit the chain knows, we do not
            unknown = await world.admin.register_circuit(vk_calldata(trapdoor.vk))
            node = await requester_node(market, world, node_dir)
            gateway = await start_gateway(market, world, node, min_payment="1000")
            inputs = [THRESHOLD, world.commitment]
            want = {
                # no peer is connected and it is not stored here
                await ask(world, THRESHOLD): (State.FAILED, "input_unavailable"),
                await request(world, world.circuit_id, inputs, big_cid, MASK): (
                    State.FAILED,
                    "input_too_large",
                ),
                await request(world, unknown, [1, 2], "\x1b[31mbafy\u202e", MASK): (
                    State.SKIPPED,
                    "unknown_circuit",
                ),
                await ask(world, THRESHOLD, seconds=100): (State.SKIPPED, "deadline_too_close"),
                await request(world, world.circuit_id, inputs, big_cid, 999): (
                    State.SKIPPED,
                    "payment_too_low",
                ),
            }
            gateway.poke()
            finished = (State.FAILED, State.SKIPPED, State.PLACED, State.FULFILLED)
            for rid, (state, reason) in want.items():
                got = await wait_request(gateway, rid, *finished)
                assert (got.state, got.reason) == (state, reason), got
                assert got.detail
            assert await node.store.jobs() == []  # nothing was placed
            shown = await gateway.rpc_show({})
            assert shown["states"] == {"failed": 2, "skipped": 3}
            assert "\x1b[31mbafy\u202e" in {r["input_cid"] for r in shown["requests"]}

            # the daemon stops and starts again: every request is known, none is
            # placed again, and the blocks it had read are not read again
            scanned = gateway.next_block
            node.gateway_scope.cancel()
            again = await start_gateway(market, world, node, min_payment="1000")
            await wait_for(again, lambda: again.steps >= 1)
            assert again.next_block >= scanned
            assert {rid: r.state for rid, r in again.core.records.items()} == {
                rid: state for rid, (state, _) in want.items()
            }
            assert again.core.counters["requests_accepted"] == 0
            assert await node.store.jobs() == []
            nursery.cancel_scope.cancel()


async def test_a_job_claiming_a_relay_it_does_not_have_is_not_proved(tmp_path, prover):
    """A requester that marks its job relayed to have it proved for nothing (no
    voucher is expected for a relayed job): the provider reads the request on
    chain first and refuses, with the reason, for each way it is not real."""
    dataset = tmp_path / "dataset.json"
    dataset.write_text(json.dumps({"values": [str(v) for v in VALUES]}))
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            market = Market(nursery, tmp_path)
            node_dir = tmp_path / "node"
            node_dir.mkdir()
            world = await chain_with_dapp(tmp_path, "bafkreinothere")
            node = await requester_node(market, world, node_dir)
            provider = await add_provider(market, world, node, prover)
            cheap = await ask(world, THRESHOLD, payment=1)  # real, but pays one base unit
            real = await ask(world, THRESHOLD)
            circuits, _ = await trio.to_thread.run_sync(known_circuits)
            circuit = circuits[world.circuit_id]
            chain_id, contract = world.chain.chain_id, world.d.requests

            def relay(request_id: int, where: str = contract) -> Relay:
                return Relay(chain_id=chain_id, contract=where, request_id=str(request_id))

            forged = [  # (what the provider says, the relay, the job's threshold)
                ("request 999 is none, not open", relay(999), THRESHOLD),
                (f"request {cheap} pays 1, below the agreed price", relay(cheap), THRESHOLD),
                ("this provider knows ComputeRequests", relay(real, world.d.escrow), THRESHOLD),
                (f"public inputs are not request {real}'s", relay(real), THRESHOLD + 1),
            ]
            jobs = []
            for i, (words, forged_relay, threshold) in enumerate(forged):
                record = SimpleNamespace(
                    request_id=int(forged_relay.request_id),
                    inputs=(threshold, world.commitment),
                    payment=PAYMENT,
                )
                work = tmp_path / f"spec{i}"
                work.mkdir()
                spec = build_spec(dataset.read_bytes(), record, circuit, 600, forged_relay, work)
                jobs.append((words, (await node.rpc.submit_spec(spec))["job_id"]))
            for words, job_id in jobs:
                while (row := await node.store.get(job_id, role="requester")).state not in (
                    JobState.FAILED,
                    JobState.COMPLETED,
                ):
                    await node.service.changed.wait()
                assert row.state is JobState.FAILED, (words, row)
                assert row.error["code"] == "zk_relay_invalid", row.error
                assert words in row.error["message"], (words, row.error)
            assert provider.ledger.expected == []
            nursery.cancel_scope.cancel()
